"""Kill and resume: a `s3prl-star pretrain` run killed with SIGKILL after a checkpoint and resumed with
`-a` ends with exactly the student of an uninterrupted run (deterministic CPU, one thread).

8 steps of 6 batches per epoch, a checkpoint every 2 steps: the kill lands mid-epoch and the resumed
run crosses the epoch boundary, so the optimiser, scheduler, data position (data order) and the RNG
state (dropout stays on) must all be restored for the parameters to agree.
"""
from __future__ import annotations

import signal
import subprocess
import time

import pytest
import torch

from helpers import CLI, load_checkpoint, run_pretrain, subprocess_env, write_configs

RUNNER = {"n_epochs": -1, "total_steps": 8, "gradient_accumulate_steps": 1, "log_step": 1, "save_step": 2}


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_parameters(
    mini_librispeech, tiny_hubert_teacher, csv_dir, tmp_path
):
    model_yaml, runner_yaml = write_configs(
        tmp_path / "configs", teacher=tiny_hubert_teacher, corpus=mini_librispeech, csv_dir=csv_dir,
        runner=RUNNER, datarc={"train_batch_size": 4, "num_workers": 1},
    )
    args = ["-u", "star_hubert", "-g", str(model_yaml), "-c", str(runner_yaml)]
    run_pretrain([*args, "-n", "uninterrupted"], cwd=tmp_path)

    expdir = tmp_path / "result" / "pretrain" / "killed"
    command = [CLI, "pretrain", *args, "-n", "killed", "--device", "cpu"]
    process = subprocess.Popen(command, cwd=tmp_path, env=subprocess_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (expdir / "states-2.ckpt").exists():
        assert process.poll() is None, f"the run to kill exited early with {process.returncode}"
        assert time.monotonic() < deadline, "no checkpoint after 300 s"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    written = sorted(path.name for path in expdir.glob("states-*.ckpt"))
    assert "states-epoch-1.ckpt" not in written, f"the run finished before the kill: {written}"
    for path in expdir.glob("states-*.ckpt"):  # atomic writes: every visible checkpoint is complete
        load_checkpoint(path)

    resumed = run_pretrain(["-a", "-n", "killed"], cwd=tmp_path)
    assert "Resume from" in resumed.stdout + resumed.stderr

    final = load_checkpoint(expdir / "states-epoch-1.ckpt")
    reference = load_checkpoint(tmp_path / "result" / "pretrain" / "uninterrupted" / "states-epoch-1.ckpt")
    assert final["Step"] == reference["Step"] and final["Data"] == reference["Data"] == {"batches_done": 8}
    for name, value in reference["Student"]["state_dict"].items():
        assert torch.equal(final["Student"]["state_dict"][name], value), name
    for name, value in reference["Optimizer"]["state"].items():
        assert all(torch.equal(final["Optimizer"]["state"][name][key], tensor) for key, tensor in value.items())
    assert final["Scheduler"]["last_epoch"] == reference["Scheduler"]["last_epoch"] == 8

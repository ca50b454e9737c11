"""Distillation and the SUPERB suite through a real SLURM (the single-node cluster of `slurm_cluster`).

Distillation: the shipped `distill.sbatch` (srun + torchrun, rendezvous from the allocation's variables),
two gloo processes on one node as two tasks of the allocation, against one local process with the doubled
batch (tests/test_distill_ddp.py's comparison); then the same job requeued after its first checkpoint
resumes (`-a`) to the same student.

The suite: KS and IC of the tiny student through `s3prl-star superb --launcher slurm`, against the same
run with `--launcher local`; the driver SIGKILLed mid-task and started again; a job cancelled from outside.
"""
from __future__ import annotations

import fcntl
import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import (CLI, load_checkpoint, make_fluent_commands, run_pretrain, speech_commands_entry, subprocess_env,
                     write_configs, write_data)
from s3prl_star import resources
from s3prl_star.superb.launch import job_name_prefix

pytestmark = pytest.mark.slow

NO_DROPOUT = {"dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0, "dropout_input": 0.0}
RUNNER = {"n_epochs": -1, "total_steps": 3, "gradient_accumulate_steps": 1, "log_step": 1, "save_step": 1}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def squeue_state(job: str, env: dict) -> str:
    result = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True, env=env)
    return result.stdout.strip()


def wait_until_gone(job: str, env: dict, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while squeue_state(job, env):
        assert time.monotonic() < deadline, f"job {job} still queued or running after {timeout} s"
        time.sleep(0.5)


def submit_distillation(folder: Path, configs: tuple[Path, Path], env: dict) -> str:
    """`sbatch distill.sbatch` as a user submits it (two tasks on this node, one CPU process each); the job id."""
    model_yaml, runner_yaml = configs
    script = resources.pretrain_plugin() / "distill.sbatch"
    job_env = {**env, "MODEL_CONFIG": str(model_yaml), "EXPDIR": str(folder / "exp"), "PROCS_PER_TASK": "1",
               "PYTHON": sys.executable, "RDZV_PORT": str(free_port())}
    submitted = subprocess.run(
        ["sbatch", "--parsable", "--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1", "--gpus-per-node=0",
         f"--output={folder}/slurm-%j.out", str(script), "-c", str(runner_yaml), "--device", "cpu"],
        cwd=folder, env=job_env, capture_output=True, text=True, timeout=60)
    assert submitted.returncode == 0, submitted.stderr + subprocess.run(["scontrol", "show", "node"], env=env, capture_output=True, text=True).stdout
    return submitted.stdout.strip().split(";")[0]


@pytest.fixture(scope="module")
def distillation_configs(mini_librispeech, tiny_hubert_teacher, csv_dir, tmp_path_factory):
    folders = {}
    for name, batch_size in (("single", 4), ("slurm", 2)):
        folders[name] = write_configs(tmp_path_factory.mktemp(name), teacher=tiny_hubert_teacher,
                                      corpus=mini_librispeech, csv_dir=csv_dir, runner=RUNNER,
                                      datarc={"train_batch_size": batch_size}, student=NO_DROPOUT)
    return folders


@pytest.fixture(scope="module")
def single_process_student(distillation_configs, tmp_path_factory):
    folder = tmp_path_factory.mktemp("single-run")
    model_yaml, runner_yaml = distillation_configs["single"]
    run_pretrain(["-u", "star_hubert", "-g", str(model_yaml), "-c", str(runner_yaml), "-p", str(folder / "exp")],
                 cwd=folder)
    return load_checkpoint(folder / "exp" / "states-3.ckpt")


def assert_same_student(found: dict, expected: dict) -> None:
    assert found["Step"] == expected["Step"] and found["Data"]["batches_done"] == expected["Data"]["batches_done"]
    for name, value in expected["Student"]["state_dict"].items():
        torch.testing.assert_close(found["Student"]["state_dict"][name], value, rtol=1e-4, atol=1e-6,
                                   msg=lambda message, name=name: f"{name}: {message}")


def test_distillation_under_srun_and_torchrun_equals_one_process(slurm_cluster, distillation_configs,
                                                               single_process_student, tmp_path):
    job = submit_distillation(tmp_path, distillation_configs["slurm"], slurm_cluster)
    wait_until_gone(job, slurm_cluster)
    log = (tmp_path / f"slurm-{job}.out").read_text()
    final = tmp_path / "exp" / "states-3.ckpt"
    assert final.is_file(), log[-4000:]
    student = load_checkpoint(final)
    assert len(student["RNG"]["torch"]) == 2, "not two processes"
    assert_same_student(student, single_process_student)


def test_a_requeued_distillation_resumes_to_the_same_student(slurm_cluster, distillation_configs,
                                                           single_process_student, tmp_path):
    """Requeued (as a preemption does) once its first checkpoint is written: the job starts again with the
    same command, `-a` resumes from the checkpoint, and the student ends as the uninterrupted one."""
    job = submit_distillation(tmp_path, distillation_configs["slurm"], slurm_cluster)
    deadline = time.monotonic() + 600
    while not (tmp_path / "exp" / "states-1.ckpt").exists():
        assert squeue_state(job, slurm_cluster), (tmp_path / f"slurm-{job}.out").read_text()[-4000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    subprocess.run(["scontrol", "requeue", job], env=slurm_cluster, check=True, capture_output=True)
    while squeue_state(job, slurm_cluster) != "PENDING":  # SLURM holds a requeued job back for 121 s: start it now
        assert time.monotonic() < deadline
        time.sleep(0.1)
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=slurm_cluster, check=True,
                   capture_output=True)
    wait_until_gone(job, slurm_cluster)
    log = (tmp_path / f"slurm-{job}.out").read_text()
    assert "the newest readable checkpoint" in log, log[-4000:]
    assert_same_student(load_checkpoint(tmp_path / "exp" / "states-3.ckpt"), single_process_student)


# --- the SUPERB suite through --launcher slurm ---------------------------------------------------------

def suite_data(root: Path) -> Path:
    """DATA.yaml of KS and IC on tiny corpora, 4 steps each (KS: a checkpoint every step, so a kill lands
    between its first checkpoint and its end)."""
    ks = speech_commands_entry(root / "speech_commands")
    ks["overrides"] += ",,config.runner.total_steps=8,,config.runner.save_step=1"
    ic = {"datarc.file_path": str(make_fluent_commands(root / "fluent")),
          "overrides": "config.downstream_expert.datarc.num_workers=0,,config.downstream_expert.datarc.train_batch_size=4,,"
                       "config.downstream_expert.datarc.eval_batch_size=4"}
    return write_data(root / "data.yaml", {"ks": ks, "ic": ic})


def superb_command(student: Path, data: Path, out: Path, *options: str) -> list[str]:
    return [CLI, "superb", "-u", "star_hubert", "-k", str(student), "--data", str(data), "--tasks", "ks,ic",
            "-o", str(out), "--device", "cpu", "--progress-every", "0", *options]


def metrics(out: Path) -> dict:
    report = json.loads((out / "results.json").read_text())
    assert {name: report["tasks"][name]["status"] for name in ("KS", "IC")} == {"KS": "done", "IC": "done"}, report
    return report["metrics"]


def jobs_of(out: Path, env: dict) -> list[str]:
    """Names of the queued or running jobs of OUT's suite."""
    listed = subprocess.run(["squeue", "-h", "-o", "%j"], env=env, capture_output=True, text=True, check=True)
    return [name for name in listed.stdout.split() if name.startswith(job_name_prefix(out))]


@pytest.fixture(scope="module")
def suite(tmp_path_factory, tiny_student_checkpoint):
    root = tmp_path_factory.mktemp("suite")
    data = suite_data(root)
    local = subprocess.run(superb_command(tiny_student_checkpoint, data, root / "local"), cwd=root,
                           capture_output=True, text=True, timeout=900, env=subprocess_env())
    assert local.returncode == 0, local.stdout[-3000:] + local.stderr[-3000:]
    return {"root": root, "data": data, "student": tiny_student_checkpoint, "local": metrics(root / "local")}


def test_two_tasks_through_slurm_equal_the_local_run(slurm_cluster, suite, tmp_path):
    out = tmp_path / "out"
    result = subprocess.run(superb_command(suite["student"], suite["data"], out, "--launcher", "slurm",
                                           "--slurm-args", "--cpus-per-task=1"),
                            cwd=tmp_path, capture_output=True, text=True, timeout=900, env=slurm_cluster)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert re.search(r"KS/lr0\.0001: submitted SLURM job \d+", result.stdout)
    assert metrics(out) == pytest.approx(suite["local"], abs=1e-9)
    assert jobs_of(out, slurm_cluster) == []


def test_a_killed_driver_adopts_its_running_job_and_loses_nothing(slurm_cluster, suite, tmp_path):
    """SIGKILLed once KS's job has written a checkpoint: the job goes on, holding its run folder's lock; the
    driver started again adopts it (no second job), and the results equal the local run's. The job is
    suspended (SIGSTOP) from its first checkpoint until the second driver has adopted it, so that it cannot
    end before the second driver looks (it then counts as done, also right, but not what this tests)."""
    out = tmp_path / "out"
    command = superb_command(suite["student"], suite["data"], out, "--launcher", "slurm")
    first = subprocess.Popen(command, cwd=tmp_path, env=slurm_cluster, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, start_new_session=True)
    trial = out / "ks" / "lr0.0001"
    deadline = time.monotonic() + 600
    while not (any(trial.glob("states-*.ckpt")) and (trial / "train.log.job").exists()):  # the job may write first
        assert first.poll() is None, first.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "no KS checkpoint"
        time.sleep(0.05)
    job = json.loads((trial / "train.log.job").read_text())["job_id"]
    subprocess.run(["scontrol", "suspend", job], env=slurm_cluster, check=True, capture_output=True)
    first.kill()
    first.wait()
    assert squeue_state(job, slurm_cluster) == "SUSPENDED"
    with open(trial / ".run.lock") as lock:  # the orphaned job still holds its folder
        with pytest.raises(BlockingIOError):
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)

    log = tmp_path / "second.log"
    with open(log, "w") as stdout:
        second = subprocess.Popen(command, cwd=tmp_path, env=slurm_cluster, stdout=stdout, stderr=subprocess.STDOUT)
        while f"KS/lr0.0001: adopting SLURM job {job} (suspended)" not in log.read_text():
            assert second.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            assert "KS/lr0.0001: submitted" not in log.read_text(), log.read_text()[-3000:]
            time.sleep(0.1)
        subprocess.run(["scontrol", "resume", job], env=slurm_cluster, check=True, capture_output=True)
        second.wait(timeout=900)
    output = log.read_text()
    assert second.returncode == 0, output[-3000:]
    assert "KS/lr0.0001: submitted SLURM job" not in output and "KS/lr0.0001: resuming" not in output
    assert metrics(out) == pytest.approx(suite["local"], abs=1e-9)


def test_a_job_cancelled_from_outside_is_reported_as_failed_naming_it(slurm_cluster, suite, tmp_path):
    out = tmp_path / "out"
    process = subprocess.Popen(superb_command(suite["student"], suite["data"], out, "--launcher", "slurm"),
                               cwd=tmp_path, env=slurm_cluster, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    record = out / "ks" / "lr0.0001" / "train.log.job"
    deadline = time.monotonic() + 300
    while not record.exists():
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    job = json.loads(record.read_text())["job_id"]
    cancelled = subprocess.run([CLI, "superb", "--cancel", "-o", str(out)], env=slurm_cluster, capture_output=True,
                               text=True, timeout=60)
    assert cancelled.returncode == 0 and f"cancelled SLURM job {job}" in cancelled.stdout, cancelled.stdout
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 1, output[-3000:]
    entry = json.loads((out / "results.json").read_text())["tasks"]["KS"]
    assert entry["status"] == "failed" and f"SLURM job {job}" in entry["reason"], entry
    assert jobs_of(out, slurm_cluster) == []


def test_a_driver_killed_while_its_job_waits_keeps_the_jobs_folder(slurm_cluster, suite, tmp_path):
    """SIGKILLed while KS's job is still queued (held), before its first checkpoint: the driver started again
    leaves the run folder the job will write as it is, adopts the job, and the results equal the local run's."""
    out = tmp_path / "out"
    command = superb_command(suite["student"], suite["data"], out, "--launcher", "slurm", "--slurm-args", "--hold")
    first = subprocess.Popen(command, cwd=tmp_path, env=slurm_cluster, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    record = out / "ks" / "lr0.0001" / "train.log.job"
    deadline = time.monotonic() + 300
    while not record.exists():
        assert first.poll() is None and time.monotonic() < deadline, "KS's job was not submitted"
        time.sleep(0.05)
    first.kill()
    first.wait()
    job = json.loads(record.read_text())["job_id"]
    assert squeue_state(job, slurm_cluster) == "PENDING"
    script = record.with_suffix(".sh")
    assert script.is_file()

    log = tmp_path / "second.log"
    with open(log, "w") as stdout:
        second = subprocess.Popen(command, cwd=tmp_path, env=slurm_cluster, stdout=stdout, stderr=subprocess.STDOUT)
        while f"KS/lr0.0001: adopting SLURM job {job}" not in log.read_text():
            assert second.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
        assert script.is_file() and json.loads(record.read_text())["job_id"] == job  # the folder was kept
        while second.poll() is None:  # release the held jobs, the adopted one and any the driver submits
            listed = subprocess.run(["squeue", "-h", "-t", "PENDING", "-o", "%i %j"], env=slurm_cluster,
                                    capture_output=True, text=True, check=True).stdout.split("\n")
            for line in filter(None, listed):
                held, name = line.split()
                if name.startswith(job_name_prefix(out)):
                    subprocess.run(["scontrol", "release", held], env=slurm_cluster, capture_output=True)
            assert time.monotonic() < deadline + 600, log.read_text()[-3000:]
            time.sleep(0.5)
    output = log.read_text()
    assert second.returncode == 0, output[-3000:]
    assert "KS/lr0.0001: submitted SLURM job" not in output
    assert metrics(out) == pytest.approx(suite["local"], abs=1e-9)

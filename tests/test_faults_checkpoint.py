"""Checkpoints survive kills, damage and full disks: `s3prl-star pretrain` and `s3prl-star downstream`
(s3prl's own runners), run as a user runs them.

s3prl's runners delete old checkpoints before writing the new one in place; with `max_keep: 1` a kill
during the write left nothing to resume from. Here every save is atomic, old checkpoints go only once
the new one reads back complete, and `-a` / `-e DIR` resume from the newest readable checkpoint.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import (CLI, STEPS, corrupt_middle, kill_while_writing, load_checkpoint, run_pretrain, subprocess_env,
                     tmpfs, train_args, truncate_to_half, write_configs)
from s3prl_star.integration.resume import checkpoint_problem

TEMPORARY = ".states-*.ckpt.*.tmp"
COMPLETE = "states-*.ckpt"
DAMAGES = {"truncated": (truncate_to_half, "incomplete or not a torch checkpoint"),
           "corrupt-middle": (corrupt_middle, "fails its CRC check")}


def pretrain_configs(directory, teacher, corpus, csvs, **runner):
    return write_configs(directory, teacher=teacher, corpus=corpus, csv_dir=csvs,
                         runner={"n_epochs": -1, "gradient_accumulate_steps": 1, "log_step": 1, **runner},
                         datarc={"train_batch_size": 4})


def pretrain_command(*args: str) -> list[str]:
    return [CLI, "pretrain", *args, "--device", "cpu"]


def checkpoints(folder) -> list[str]:
    return sorted(path.name for path in folder.glob(COMPLETE))


@pytest.mark.slow
def test_pretrain_killed_while_saving_with_max_keep_1_resumes_with_p_alone(
    mini_librispeech, tiny_hubert_teacher, csv_dir, tmp_path
):
    """A checkpoint every step, `max_keep: 1`, SIGKILL while a checkpoint is being written: the previous
    one is still there and complete; `-a -p DIR` alone removes the killed write's temporary file and
    resumes from it to the end, keeping one checkpoint."""
    model_yaml, runner_yaml = pretrain_configs(tmp_path / "configs", tiny_hubert_teacher, mini_librispeech, csv_dir,
                                               total_steps=4, save_step=1, max_keep=1)
    expdir = tmp_path / "run"
    process = subprocess.Popen(pretrain_command("-u", "star_hubert", "-g", str(model_yaml), "-c", str(runner_yaml),
                                                "-p", str(expdir)),
                               cwd=tmp_path, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    temporary = kill_while_writing(process, expdir, TEMPORARY, COMPLETE)
    survivors = checkpoints(expdir)
    assert survivors and all(checkpoint_problem(expdir / name) is None for name in survivors), survivors

    resumed = run_pretrain(["-a", "-p", str(expdir)], cwd=tmp_path)
    output = resumed.stdout + resumed.stderr
    assert f"removed {temporary}" in output
    assert f"using {expdir / survivors[-1]}, the newest readable checkpoint" in output
    assert checkpoints(expdir) == ["states-4.ckpt"] and not list(expdir.glob(TEMPORARY))
    assert load_checkpoint(expdir / "states-4.ckpt")["Step"] == 3


@pytest.fixture(scope="module")
def finished_pretrain(mini_librispeech, tiny_hubert_teacher, csv_dir, tmp_path_factory):
    """(experiment folder, pristine copy): a 4-step run keeping states-2.ckpt and states-4.ckpt. The
    checkpoints store the folder's path (s3prl resumes into it), so tests restore it from the copy."""
    root = tmp_path_factory.mktemp("pretrain_damage")
    model_yaml, runner_yaml = pretrain_configs(root / "configs", tiny_hubert_teacher, mini_librispeech, csv_dir,
                                               total_steps=4, save_step=2, max_keep=10)
    expdir = root / "run"
    run_pretrain(["-u", "star_hubert", "-g", str(model_yaml), "-c", str(runner_yaml), "-p", str(expdir)], cwd=root)
    assert checkpoints(expdir) == ["states-2.ckpt", "states-4.ckpt"]
    pristine = root / "pristine"
    shutil.copytree(expdir, pristine)
    return expdir, pristine


@pytest.mark.slow
@pytest.mark.parametrize("damage", DAMAGES)
def test_pretrain_resume_falls_back_past_a_damaged_newest_checkpoint(finished_pretrain, damage, tmp_path):
    expdir, pristine = finished_pretrain
    shutil.rmtree(expdir)
    shutil.copytree(pristine, expdir)
    damage_file, problem = DAMAGES[damage]
    damage_file(expdir / "states-4.ckpt")

    resumed = run_pretrain(["-a", "-p", str(expdir)], cwd=tmp_path)
    output = resumed.stdout + resumed.stderr
    assert f"skipping {expdir / 'states-4.ckpt'}: " in output and problem in output
    assert f"using {expdir / 'states-2.ckpt'}" in output
    assert load_checkpoint(expdir / "states-4.ckpt")["Step"] == 3  # steps 3 and 4 trained again


def test_pretrain_resume_with_no_readable_checkpoint_is_a_named_error(tmp_path):
    expdir = tmp_path / "run"
    expdir.mkdir()
    (expdir / "states-3.ckpt").write_bytes(b"PK\x03\x04 cut short")
    result = subprocess.run(pretrain_command("-a", "-p", str(expdir)), cwd=tmp_path, capture_output=True, text=True,
                            timeout=120, env=subprocess_env())
    assert result.returncode == 2, result.stderr
    assert f"skipping {expdir / 'states-3.ckpt'}: incomplete" in result.stderr
    assert f"no readable checkpoint in {expdir}" in result.stderr


def test_pretrain_a_with_nothing_to_resume_and_no_upstream_is_a_named_error(tmp_path):
    """`-a -p DIR` alone on a folder without checkpoints (s3prl: `TypeError ... NoneType`)."""
    result = subprocess.run(pretrain_command("-a", "-p", str(tmp_path / "empty")), cwd=tmp_path, capture_output=True,
                            text=True, timeout=120, env=subprocess_env())
    assert result.returncode == 2, result.stderr
    assert f"nothing to resume in {tmp_path / 'empty'}" in result.stderr and "TypeError" not in result.stderr


@pytest.mark.slow
def test_pretrain_full_disk_at_a_save_keeps_the_previous_checkpoint(
    mini_librispeech, tiny_hubert_teacher, csv_dir, tmp_path
):
    """`max_keep: 1` on a disk with room for one checkpoint only: the second save fails with ENOSPC
    and the first checkpoint stays, complete (s3prl would have deleted it first)."""
    model_yaml, runner_yaml = pretrain_configs(tmp_path / "configs", tiny_hubert_teacher, mini_librispeech, csv_dir,
                                               total_steps=4, save_step=2, max_keep=1)
    size = _checkpoint_kib(tmp_path, model_yaml, runner_yaml)
    with tmpfs(tmp_path / "disk", size_kib=size * 3 // 2 + 64) as disk:
        expdir = disk / "run"
        result = subprocess.run(pretrain_command("-u", "star_hubert", "-g", str(model_yaml), "-c", str(runner_yaml),
                                                 "-p", str(expdir)),
                                cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300)
        assert result.returncode != 0 and "No space left on device" in result.stderr, result.stderr[-3000:]
        assert checkpoints(expdir) == ["states-2.ckpt"] and checkpoint_problem(expdir / "states-2.ckpt") is None
        assert not list(expdir.glob(TEMPORARY))


def _checkpoint_kib(cwd, model_yaml, runner_yaml) -> int:
    """Size in KiB of a checkpoint of this configuration (a 2-step run)."""
    expdir = cwd / "measure"
    run_pretrain(["-u", "star_hubert", "-g", str(model_yaml), "-c", str(runner_yaml), "-p", str(expdir),
                  "-o", "config.runner.total_steps=2,,config.runner.save_step=1"], cwd=cwd)
    return max(path.stat().st_size for path in expdir.glob(COMPLETE)) // 1024 + 1


# --- downstream ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def asr_data(mini_librispeech, tmp_path_factory):
    """(corpus, `-o` data overrides) for s3prl's ASR recipe on the shared espeak-ng corpus."""
    csvs = tmp_path_factory.mktemp("asr_len_for_bucket")
    subprocess.run([CLI, "prepare-librispeech", str(mini_librispeech), "-o", str(csvs),
                    "--splits", "train-clean-100", "dev-clean"], check=True, capture_output=True, env=subprocess_env())
    return (
        f"config.downstream_expert.datarc.libri_root={mini_librispeech},,"
        f"config.downstream_expert.datarc.bucket_file={csvs},,config.downstream_expert.datarc.num_workers=0,,"
        "config.downstream_expert.datarc.train_batch_size=4,,config.downstream_expert.datarc.batch_size=4,,"
        "config.downstream_expert.modelrc.project_dim=32,,config.downstream_expert.modelrc.RNNs.dim=[32, 32]"
    )


def downstream_command(*args: str) -> list[str]:
    return [CLI, "downstream", *args, "--device", "cpu"]


def asr_train(checkpoint, expdir, data: str, runner: str) -> list[str]:
    return downstream_command(*train_args("asr", checkpoint, expdir, f"{data},,{runner}"))


@pytest.mark.slow
def test_downstream_killed_while_saving_with_max_keep_1_resumes(asr_data, tiny_student_checkpoint, tmp_path):
    """The shipped recipes' `max_keep: 1`, a checkpoint every step, SIGKILL during a save: the previous
    checkpoint survives complete and `-m train -a -p DIR` resumes from it to the end."""
    expdir = tmp_path / "asr"
    runner = "config.runner.total_steps=10,,config.runner.save_step=1,,config.runner.eval_step=1000"
    process = subprocess.Popen(asr_train(tiny_student_checkpoint, expdir, asr_data, runner), cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=subprocess_env())
    temporary = kill_while_writing(process, expdir, TEMPORARY, COMPLETE)
    survivors = checkpoints(expdir)
    assert survivors and all(checkpoint_problem(expdir / name) is None for name in survivors), survivors

    resumed = subprocess.run(downstream_command("-m", "train", "-a", "-p", str(expdir)), cwd=tmp_path,
                             capture_output=True, text=True, timeout=300, env=subprocess_env())
    output = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, output[-3000:]
    assert f"removed {temporary}" in output and f"using {expdir / survivors[-1]}" in output
    assert checkpoints(expdir) == ["states-10.ckpt"] and not list(expdir.glob(TEMPORARY))


@pytest.mark.slow
def test_downstream_evaluate_dir_skips_a_truncated_newest_checkpoint(asr_data, tiny_student_checkpoint, tmp_path):
    expdir = tmp_path / "asr"
    runner = f"config.runner.save_step={STEPS // 2},,config.runner.max_keep=2"
    trained = subprocess.run(asr_train(tiny_student_checkpoint, expdir, asr_data, runner), cwd=tmp_path,
                             capture_output=True, text=True, timeout=300, env=subprocess_env())
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert checkpoints(expdir) == [f"states-{STEPS // 2}.ckpt", f"states-{STEPS}.ckpt"]
    truncate_to_half(expdir / f"states-{STEPS}.ckpt")

    evaluated = subprocess.run(downstream_command("-m", "evaluate", "-t", "dev-clean", "-e", str(expdir)), cwd=tmp_path,
                               capture_output=True, text=True, timeout=300, env=subprocess_env())
    output = evaluated.stdout + evaluated.stderr
    assert evaluated.returncode == 0, output[-3000:]
    assert f"skipping {expdir / f'states-{STEPS}.ckpt'}: incomplete" in output
    assert f"using {expdir / f'states-{STEPS // 2}.ckpt'}" in output and "dev-clean wer:" in output


# --- the rules, in-process ------------------------------------------------------------------------

def test_a_pruned_checkpoint_is_deleted_only_once_the_next_one_is_complete(tmp_path):
    """s3prl's runner calls os.remove on the old checkpoint before saving the new one: the removal waits."""
    import torch

    from s3prl_star.integration.patches.runner_checkpoints import CheckpointFiles

    files = CheckpointFiles()
    torch.save({"Step": 2}, tmp_path / "states-2.ckpt")
    files.remove(str(tmp_path / "states-2.ckpt"))
    assert (tmp_path / "states-2.ckpt").is_file()  # pruned, but nothing newer is complete yet
    files.save({"Step": 4}, str(tmp_path / "states-4.ckpt"))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["states-4.ckpt"]


def test_a_checkpoint_that_does_not_read_back_keeps_the_older_ones(tmp_path, monkeypatch):
    import torch

    from s3prl_star.integration.patches import runner_checkpoints

    torch.save({"Step": 2}, tmp_path / "states-2.ckpt")
    files = runner_checkpoints.CheckpointFiles()
    files.remove(str(tmp_path / "states-2.ckpt"))
    monkeypatch.setattr(runner_checkpoints, "save_atomic", lambda obj, path: open(path, "wb").write(b"PK\x03\x04 cut"))
    with pytest.raises(OSError, match=r"states-4\.ckpt did not read back after writing"):
        files.save({"Step": 4}, str(tmp_path / "states-4.ckpt"))
    assert (tmp_path / "states-2.ckpt").is_file()


def test_resume_takes_the_highest_step_that_reads_back(tmp_path):
    import torch

    from s3prl_star.integration.resume import newest_readable

    for step in (2, 10, 4):
        torch.save({"Step": step}, tmp_path / f"states-{step}.ckpt")
    (tmp_path / "states-12.ckpt").write_bytes(b"not a checkpoint")
    newest, skipped = newest_readable(tmp_path)
    assert Path(newest).name == "states-10.ckpt" and [Path(path).name for path, _ in skipped] == ["states-12.ckpt"]

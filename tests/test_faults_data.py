"""Bad data is named, never a crash hours in: `s3prl-star prepare-librispeech --verify full|quick`, a
non-UTF-8 transcript, an unwritable output folder, and the distiller's loader meeting a file that
no longer decodes (it stops naming the file, or with `skip_unreadable: true` skips and names it)."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from helpers import CLI, corrupt_middle, length_csvs, read_only_folder, subprocess_env, write_configs


@pytest.fixture
def corpus(mini_librispeech, tmp_path):
    """A private copy of the shared corpus's dev-clean (8 utterances), free to damage."""
    root = tmp_path / "LibriSpeech"
    shutil.copytree(mini_librispeech / "dev-clean", root / "dev-clean")
    return root


def prepare(root, output, *options) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, "prepare-librispeech", str(root), "-o", str(output), "--splits", "dev-clean",
                           *options], capture_output=True, text=True, timeout=300, env=subprocess_env())


def test_full_verification_catches_a_flac_corrupted_in_the_middle(corpus, tmp_path):
    """`--verify quick` (header and end) passes it, as the issue found; the default `full` names it."""
    damaged = sorted(corpus.rglob("*.flac"))[3]
    corrupt_middle(damaged)
    quick = prepare(corpus, tmp_path / "quick", "--verify", "quick")
    assert quick.returncode == 0, quick.stderr
    full = prepare(corpus, tmp_path / "full")
    assert full.returncode == 1
    assert f"{damaged}: truncated or corrupt: the header says" in full.stderr and "decoding it failed" in full.stderr
    assert not (tmp_path / "full").exists()


def test_non_utf8_transcript_names_the_file_and_line(corpus, tmp_path):
    transcript = sorted(corpus.rglob("*.trans.txt"))[0]
    lines = transcript.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b" ", " CAF\xc9 ".encode("latin-1"), 1)  # Latin-1 'É'
    transcript.write_bytes(b"".join(lines))
    result = prepare(corpus, tmp_path / "out")
    assert result.returncode == 1
    assert f"{transcript}: line 2 is not UTF-8 (byte 0xc9" in result.stderr and "UnicodeDecodeError" not in result.stderr


def test_unwritable_output_folder_is_a_named_error(corpus, tmp_path):
    with read_only_folder(tmp_path / "read-only") as folder:
        result = prepare(corpus, folder)
    assert result.returncode == 1
    assert f"error: cannot write {folder / 'dev-clean.csv'}: " in result.stderr, result.stderr
    # a read-only tmpfs as root, a 0555 folder otherwise (`read_only_folder`)
    assert "Read-only file system" in result.stderr or "Permission denied" in result.stderr, result.stderr


@pytest.fixture
def distillation(mini_librispeech, tiny_hubert_teacher, tmp_path):
    """(configs folder, the corrupted file): length CSVs of a private corpus copy, then one of its
    files corrupted in the middle, as disk damage after `prepare-librispeech` would."""
    root = tmp_path / "LibriSpeech"
    shutil.copytree(mini_librispeech / "train-clean-100", root / "train-clean-100")
    csvs = length_csvs(root, tmp_path / "len_for_bucket")
    damaged = sorted(root.rglob("*.flac"))[5]
    corrupt_middle(damaged)
    return root, csvs, damaged


def distil(tmp_path, teacher, root, csvs, **datarc) -> subprocess.CompletedProcess:
    """Two steps of 12 utterances (every file read once) with `datarc` added."""
    model_yaml, runner_yaml = write_configs(
        tmp_path / "configs", teacher=teacher, corpus=root, csv_dir=csvs,
        runner={"n_epochs": -1, "total_steps": 2, "log_step": 1, "save_step": 1, "gradient_accumulate_steps": 1},
        datarc={"train_batch_size": 12, **datarc},
    )
    command = [CLI, "pretrain", "-u", "star_hubert", "-g", str(model_yaml), "-c", str(runner_yaml), "-n", "run",
               "--device", "cpu"]
    return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=subprocess_env())


@pytest.mark.slow
def test_distillation_stops_naming_a_file_that_does_not_decode(distillation, tiny_hubert_teacher, tmp_path):
    root, csvs, damaged = distillation
    result = distil(tmp_path, tiny_hubert_teacher, root, csvs)
    assert result.returncode != 0
    assert f"UnreadableAudioError: {damaged}: cannot decode (Error : flac decoder" in result.stderr, result.stderr[-3000:]


@pytest.mark.slow
def test_distillation_skips_and_names_it_with_skip_unreadable(distillation, tiny_hubert_teacher, tmp_path):
    root, csvs, damaged = distillation
    result = distil(tmp_path, tiny_hubert_teacher, root, csvs, skip_unreadable=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"[data] skipped: {damaged}: cannot decode" in result.stderr
    assert (tmp_path / "result" / "pretrain" / "run" / "states-epoch-1.ckpt").is_file()  # both steps trained

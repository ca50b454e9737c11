"""`s3prl-star demo`, the README's main command: the whole pipeline as a user runs it."""
import re
import subprocess
import sys

import pytest


def demo(*args):
    return subprocess.run([sys.executable, "-m", "s3prl_star.cli", "demo", *args], capture_output=True, text=True)


def test_demo_refuses_a_folder_with_something_in_it(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    result = demo(str(tmp_path))
    assert result.returncode == 2 and "is not empty" in result.stderr
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_demo_corpus_must_hold_every_split(tmp_path):
    corpus = tmp_path / "LibriSpeech"
    (corpus / "train-clean-100").mkdir(parents=True)
    result = demo(str(tmp_path / "out"), "--corpus", str(corpus))
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"--corpus {corpus}: no dev-clean, test-clean folder" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path):
    """Corpus, CSVs, random HuBERT Base-shaped teacher, STaRHuBERT distilled through s3prl's pretrain
    runner, profile, ASR trained and evaluated through s3prl's downstream runner (steps cut short)."""
    out = tmp_path / "demo"
    result = demo(str(out), "--steps", "2", "--asr-steps", "2")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert sorted(p.name for p in (out / "pretrain").glob("states-*.ckpt"))
    assert (out / "asr" / "states-2.ckpt").is_file()
    summary = result.stdout[result.stdout.index("=== demo summary ===") :]
    assert "22,308,592 parameters" in summary and "463.5 G MACs" in summary
    assert re.search(r"test-clean wer: [0-9.]+", summary)
    assert re.search(r"STaR loss: +[0-9.e+-]+ at the first logged step -> [0-9.e+-]+ at the last", summary)

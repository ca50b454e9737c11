"""`s3prl-star downstream` trains and then evaluates star_hubert through s3prl's own runner.

Two SUPERB tasks with this repository's recipes (downstream_recipes/<task>/config.yaml), each
in two subprocesses as a user runs them: `-m train` (a few steps, dev/test evaluation, a
checkpoint), then `-m evaluate -e CKPT` in a fresh process (which must re-register the
upstream from the name stored in the checkpoint) printing the task's metric line.
- IC (`fluent_commands`, utterance level): espeak-ng commands in Fluent Speech Commands layout.
- ASR (`asr`, sequence level): espeak-ng LibriSpeech + `s3prl-star prepare-librispeech` CSVs.
Only step counts, batch sizes, workers and model widths are overridden (-o), to fit CI.
"""
import csv
import re
import subprocess
from pathlib import Path

import editdistance
import pytest

from helpers import CLI, RECIPES, make_fluent_commands, printed_accuracy, train_then_evaluate

@pytest.mark.slow
def test_intent_classification_trains_then_evaluates(tmp_path, tiny_student_checkpoint, superb_metric):
    corpus = make_fluent_commands(tmp_path)
    overrides = (
        f"config.downstream_expert.datarc.file_path={corpus},,config.downstream_expert.datarc.num_workers=0,,"
        "config.downstream_expert.datarc.train_batch_size=4,,config.downstream_expert.datarc.eval_batch_size=4"
    )
    output = train_then_evaluate("fluent_commands", tiny_student_checkpoint, tmp_path / "ic", overrides,
                                 train_line=r"Take a list of 12 features", evaluate_line=r"test acc: [0-9.]+")
    accuracy = printed_accuracy(output)
    superb_metric("IC_acc", 100 * accuracy)
    # The same evaluation's per-utterance predictions (test_predict.csv / test_truth.csv, one
    # `name,action,object,location` row per test utterance): the printed accuracy is their exact-match rate.
    predicted, truth = (read_rows(tmp_path / "ic" / f"test_{kind}.csv") for kind in ("predict", "truth"))
    test_rows = list(csv.reader(open(corpus / "data" / "test_data.csv")))[1:]
    assert list(truth) == [Path(row[1]).stem for row in test_rows] == list(predicted)  # s3prl names them by stem
    assert list(truth.values()) == [tuple(row[4:]) for row in test_rows]
    assert accuracy == pytest.approx(sum(predicted[path] == truth[path] for path in truth) / len(truth), abs=1e-6)


def read_rows(path: Path) -> dict[str, tuple]:
    """{first column: the other columns} of a headerless CSV, in file order."""
    return {row[0]: tuple(row[1:]) for row in csv.reader(open(path))}


@pytest.mark.slow
def test_asr_trains_then_evaluates_on_test_clean(tmp_path, tiny_student_checkpoint, superb_metric):
    from s3prl_star.mini_superb.synthetic import make_librispeech

    root = make_librispeech(tmp_path / "LibriSpeech", {"train-clean-100": 8, "dev-clean": 4, "test-clean": 4}, seed=3)
    splits = ["train-clean-100", "dev-clean", "test-clean"]
    prepared = subprocess.run(
        [CLI, "prepare-librispeech", str(root), "-o", str(tmp_path / "len_for_bucket"), "--splits", *splits],
        capture_output=True, text=True,
    )
    assert prepared.returncode == 0, prepared.stdout + prepared.stderr

    # The shipped character dictionary covers every transcript character (else they map to <unk>).
    symbols = {line.split(" ")[0] for line in (RECIPES / "asr" / "char.dict").read_text().splitlines()}
    transcripts = [line.split(" ", 1)[1] for path in root.rglob("*.trans.txt") for line in path.read_text().splitlines()]
    assert set("".join(transcripts).replace(" ", "|")) <= symbols

    overrides = (
        f"config.downstream_expert.datarc.libri_root={root},,"
        f"config.downstream_expert.datarc.bucket_file={tmp_path / 'len_for_bucket'},,"
        "config.downstream_expert.datarc.num_workers=0,,"
        "config.downstream_expert.datarc.train_batch_size=4,,config.downstream_expert.datarc.batch_size=4,,"
        "config.downstream_expert.modelrc.project_dim=32,,config.downstream_expert.modelrc.RNNs.dim=[32, 32]"
    )
    # The ASR recipe evaluates only dev-clean during training; test-clean is evaluated from the checkpoint.
    output = train_then_evaluate("asr", tiny_student_checkpoint, tmp_path / "asr", overrides,
                                 train_line=r"dev-clean wer: [0-9.]+", evaluate_line=r"test-clean wer: [0-9.]+",
                                 evaluate_options=("-t", "test-clean"), dev_and_test_logged=False)
    wer = float(re.search(r"test-clean wer: ([0-9.]+)", output).group(1))
    superb_metric("ASR_wer", wer)
    # The same evaluation's hypotheses and references (test-clean-noLM-{hyp,ref}.ark, `name words...`):
    # the references are the test-clean transcripts, and the printed WER is their word edit distance.
    hypotheses, references = (read_ark(tmp_path / "asr" / f"test-clean-noLM-{kind}.ark") for kind in ("hyp", "ref"))
    spoken = [line.split(" ", 1)[1].split() for path in (root / "test-clean").rglob("*.trans.txt")
              for line in path.read_text().splitlines()]
    assert sorted(references.values()) == sorted(spoken) and set(hypotheses) == set(references)
    errors = sum(editdistance.eval(hypotheses[name], words) for name, words in references.items())
    assert wer == pytest.approx(100 * errors / sum(map(len, references.values())), abs=1e-6)


def read_ark(path: Path) -> dict[str, list[str]]:
    """{utterance: words} of a Kaldi-style text ark (`name word word ...` per line)."""
    return {name: words for name, *words in (line.split() for line in path.read_text().splitlines())}

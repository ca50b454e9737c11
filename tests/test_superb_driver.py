"""`s3prl-star superb` runs SUPERB tasks end to end through s3prl's runner; `s3prl-star score` reads them.

- Fast: the shipped DATA.yaml template names every task's data keys; bad DATA.yaml / --tasks input
  fails with a message naming the file, key or option.
- Slow: the tiny random student (`tiny_student_checkpoint`) through the console script, run from a folder
  outside the source tree, on espeak-ng corpora in each task's layout (the generators in helpers.py): ASR, KS, SID and IC (and PR when its recipe runs) in one driver run that is
  SIGKILLed mid-training and resumed, a task with missing data skipped; ER's five folds; `score`
  reads what the driver wrote. Each metric is checked against a second source s3prl writes
  (TensorBoard events, the hypothesis/reference files). Only steps, batch sizes, workers and model
  widths are overridden, through DATA.yaml's `overrides`.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import subprocess
import time
import zipfile
from pathlib import Path

import pytest

from helpers import error_rate, CLI, RECIPES, scalars, superb, write_data
from s3prl_star.superb.tasks import TASKS


def score(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, "score", *args], capture_output=True, text=True, timeout=120)


# --- fast ----------------------------------------------------------------------------------------

def test_data_template_names_every_task_and_its_data_keys():
    from s3prl_star.superb.data_file import read_data_file

    common, entries = read_data_file(RECIPES / "data.yaml")
    assert common == ""
    assert set(entries) == set(TASKS)
    for key, task in TASKS.items():
        assert set(entries[key].paths) == set(task.data_keys), key


@pytest.mark.parametrize("content, expected", [
    ("kws:\n  datarc.root: /x\n", "unknown task 'kws'"),
    ("ks:\n  datarc.speech_commands_rot: /x\n", "ks: unknown key(s) datarc.speech_commands_rot"),
    ("ic:\n  datarc.file_path: 3\n", "ic.datarc.file_path: expected a path"),
    ("ic:\n  datarc.file_path: /a,,b\n", "contains ',,' or '='"),
    ("overrides: [1]\n", "overrides: expected an s3prl -o string"),
])
def test_bad_data_file_is_refused_naming_the_key(tmp_path, content, expected):
    data = tmp_path / "data.yaml"
    data.write_text(content)
    result = superb("-u", "fbank", "--data", str(data), "-o", str(tmp_path / "out"))
    assert result.returncode == 2 and expected in result.stderr and str(data) in result.stderr, result.stderr


@pytest.mark.parametrize("kind, expected", [
    ("folder", "a folder; expected a DATA.yaml file"),
    ("binary", "not UTF-8 text (byte 0xff at offset 2); expected a DATA.yaml file"),
])
def test_data_file_that_is_a_folder_or_binary_is_refused(tmp_path, kind, expected):
    data = tmp_path / "data.yaml"
    if kind == "folder":
        data.mkdir()
    else:
        data.write_bytes(b"ks\xff\x00\x01 checkpoint bytes")
    result = superb("-u", "fbank", "--data", str(data), "-o", str(tmp_path / "out"))
    assert result.returncode == 2 and f"s3prl-star superb: {data}: {expected}" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


def test_unknown_task_is_refused(tmp_path):
    data = write_data(tmp_path / "data.yaml", {})
    result = superb("-u", "fbank", "--data", str(data), "--tasks", "pr,kws", "-o", str(tmp_path / "out"))
    assert result.returncode == 2 and "--tasks: unknown kws" in result.stderr, result.stderr


def test_an_output_folder_in_use_is_refused(tmp_path):
    """While a driver (or a run it started, which inherits the lock) works in OUT, another one stops."""
    data = write_data(tmp_path / "data.yaml", {})
    out = tmp_path / "out"
    out.mkdir()
    with open(out / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        result = superb("-u", "fbank", "--data", str(data), "--tasks", "ks", "-o", str(out))
    assert result.returncode == 2 and f"{out} is in use by another `s3prl-star superb`" in result.stderr, result.stderr


def test_lr_search_grid_is_around_the_recipe_learning_rate():
    from s3prl_star.superb.policy import learning_rates

    assert learning_rates(TASKS["sid"], lr_search=False, user_overrides=[]) == [1.0e-3]  # the paper's 10x
    assert learning_rates(TASKS["ks"], lr_search=True, user_overrides=[]) == pytest.approx([1.0e-5, 1.0e-4, 1.0e-3])
    assert learning_rates(TASKS["asv"], lr_search=True, user_overrides=[]) == [1.0e-4]  # no dev set to choose on
    # a DATA.yaml learning rate (the last one assigned) replaces the recipe's, as base of the grid too
    user = ["config.optimizer.lr=5e-3", "config.runner.total_steps=9,, config.optimizer.lr = 2e-3"]
    assert learning_rates(TASKS["ks"], lr_search=False, user_overrides=user) == [2.0e-3]
    assert learning_rates(TASKS["ks"], lr_search=True, user_overrides=user) == pytest.approx([2.0e-4, 2.0e-3, 2.0e-2])


# --- slow: tiny corpora --------------------------------------------------------------------------

def make_asr_data(root: Path) -> dict:
    from s3prl_star.mini_superb.synthetic import make_librispeech

    corpus = make_librispeech(root / "LibriSpeech", {"train-clean-100": 8, "dev-clean": 4, "test-clean": 4}, seed=3)
    prepared = subprocess.run([CLI, "prepare-librispeech", str(corpus), "-o", str(root / "len_for_bucket"),
                               "--splits", "train-clean-100", "dev-clean", "test-clean"], capture_output=True, text=True)
    assert prepared.returncode == 0, prepared.stdout + prepared.stderr
    return {"datarc.libri_root": str(corpus), "datarc.bucket_file": str(root / "len_for_bucket"),
            "overrides": "config.downstream_expert.datarc.num_workers=0,,config.downstream_expert.datarc.train_batch_size=4,,"
                         "config.downstream_expert.datarc.batch_size=4,,config.downstream_expert.modelrc.project_dim=32,,"
                         "config.downstream_expert.modelrc.RNNs.dim=[32, 32]"}


def make_ks_data(root: Path) -> dict:
    from helpers import make_speech_commands

    train_root, test_root = make_speech_commands(root / "speech_commands")
    # KS trains 40 steps, so that the driver can be killed between its first checkpoint and its end.
    return {"datarc.speech_commands_root": str(train_root), "datarc.speech_commands_test_root": str(test_root),
            "overrides": "config.downstream_expert.datarc.num_workers=0,,config.downstream_expert.datarc.batch_size=4,,"
                         "config.runner.total_steps=40,,config.runner.eval_step=20,,config.runner.save_step=2"}


def make_sid_data(root: Path) -> dict:
    from helpers import make_voxceleb1

    corpus = make_voxceleb1(root, 3, {"train": 2, "dev": 1, "test": 1}, seed=1)
    return {"datarc.file_path": str(corpus.root), "datarc.meta_data": str(corpus.split_list),
            "overrides": "config.downstream_expert.datarc.num_workers=0,,config.downstream_expert.datarc.train_batch_size=4"}


def make_ic_data(root: Path) -> dict:
    from helpers import make_fluent_commands

    corpus = make_fluent_commands(root)
    return {"datarc.file_path": str(corpus),
            "overrides": "config.downstream_expert.datarc.num_workers=0,,config.downstream_expert.datarc.train_batch_size=4,,"
                         "config.downstream_expert.datarc.eval_batch_size=4"}


def make_er_data(root: Path) -> dict:
    """make_iemocap's corpus and its five folds' metadata."""
    from helpers import make_iemocap

    corpus, meta = make_iemocap(root)
    return {"datarc.root": str(corpus), "datarc.meta_data": str(meta),
            "overrides": "config.downstream_expert.datarc.num_workers=0,,config.downstream_expert.datarc.pre_load=False"}


def wait_for(folder: Path, pattern: str, process: subprocess.Popen, timeout: float) -> None:
    """Until a file matching `pattern` is in `folder` (checkpoints replace each other: any one will do)."""
    deadline = time.monotonic() + timeout
    while not any(folder.glob(pattern)):
        assert process.poll() is None, f"the driver ended before {folder}/{pattern}:\n{process.stdout.read()[-4000:]}"
        assert time.monotonic() < deadline, f"no {folder}/{pattern} after {timeout} s"
        time.sleep(0.02)


def wait_for_unlocked(lock: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with open(lock) as file:
        while True:
            try:
                fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(file, fcntl.LOCK_UN)
                return
            except BlockingIOError:
                assert time.monotonic() < deadline, f"{lock} still locked {timeout} s after the kill"
                time.sleep(0.1)


def best_dev_step_test(expdir: Path, tag: str) -> float:
    """From the TensorBoard events: the test score at the first step of the highest dev score (s3prl's
    experts save 'New best' only on a strict improvement over 0), else at the last step."""
    logged = scalars(expdir)
    dev, test = logged[f"{tag}/dev-acc"], dict(logged[f"{tag}/test-acc"])
    best_step, best = None, 0.0
    for step, value in dev:
        if value > best:
            best_step, best = step, value
    return test[best_step if best_step is not None else max(test)]


@pytest.mark.slow
def test_driver_runs_tasks_survives_a_kill_and_skips_missing_data(tmp_path, tiny_student_checkpoint):
    data = write_data(tmp_path / "data.yaml", {
        "ks": make_ks_data(tmp_path), "asr": make_asr_data(tmp_path), "sid": make_sid_data(tmp_path),
        "ic": make_ic_data(tmp_path), "qbe": {"datarc.dataset_root": str(tmp_path / "no_quesst14")},
    })
    out = tmp_path / "out"
    command = [CLI, "superb", "-u", "star_hubert", "-k", str(tiny_student_checkpoint), "--data", str(data),
               "--tasks", "ks,asr,sid,ic,qbe", "-o", str(out), "--device", "cpu", "--progress-every", "0"]
    # Killed (the driver and its runs, as a preemption does) once KS has saved its first checkpoint.
    first = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
    wait_for(out / "ks" / "lr0.0001", "states-*.ckpt", first, timeout=900)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    wait_for_unlocked(out / ".lock", timeout=60)  # the killed runs are gone (they hold OUT's lock while alive)
    assert not (out / "results.json").exists()

    second = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=1800)
    output = second.stdout + second.stderr
    assert second.returncode == 0, output[-6000:]
    assert re.search(r"KS/lr0.0001: resuming training from states-\d+\.ckpt", output), output[-6000:]
    assert re.search(r"KS/lr0.0001: overall step \d+/40 \(\d+%\), [\d:?]+ left", output), output[-6000:]
    assert f"QbE: skipped, qbe.datarc.dataset_root: {tmp_path / 'no_quesst14'} does not exist" in output

    report = json.loads((out / "results.json").read_text())
    assert {name: entry["status"] for name, entry in report["tasks"].items()} == {
        "PR": "not run", "ASR": "done", "KS": "done", "QbE": "skipped", "SID": "done", "ASV": "not run",
        "SD": "not run", "IC": "done", "SF": "not run", "ER": "not run"}
    metrics = report["metrics"]
    assert report["overall"] is None and report["superb_score"] is None and report["partial_overall"] is not None

    # KS resumed: its log has the steps after the kill once, and the metric is the TensorBoard test
    # score at the dev-best step.
    ks = out / "ks" / "lr0.0001"
    assert [step for step, _ in scalars(ks)["speech_commands/dev-acc"]].count(40) == 1
    assert metrics["KS_acc"] == pytest.approx(100 * best_dev_step_test(ks, "speech_commands"), abs=1e-4)
    assert metrics["SID_acc"] == pytest.approx(100 * best_dev_step_test(out / "sid" / "lr0.001", "voxceleb1"), abs=1e-4)
    assert metrics["IC_acc"] == pytest.approx(100 * best_dev_step_test(out / "ic" / "lr0.0001", "fluent_commands"), abs=1e-4)
    # ASR: the WER of the hypotheses s3prl wrote for test-clean.
    assert metrics["ASR_wer"] == pytest.approx(error_rate(out / "asr" / "lr0.0001", "test-clean-noLM"), abs=1e-3)

    # A finished task is not run again; --submission evaluates the logged tasks' dev-best checkpoints
    # (KS, IC: their test prediction file is from the last evaluation otherwise) and gathers the files.
    submission = tmp_path / "submission"
    again = superb("-u", "star_hubert", "-k", str(tiny_student_checkpoint), "--data", str(data),
                   "--tasks", "asr,ks,ic", "-o", str(out), "--submission", str(submission))
    assert again.returncode == 0, again.stdout + again.stderr
    assert "ASR: finished in an earlier run" in again.stdout and ": training" not in again.stdout, again.stdout
    assert re.search(r"SID not included: the dev-best checkpoint of .* has no test evaluation", again.stdout)
    for task, expdir in (("KS", ks), ("IC", out / "ic" / "lr0.0001")):
        # The logged score at the dev-best step is the score of the dev-best checkpoint's evaluation.
        evaluated = float(re.search(r"^test acc: (\S+)$", (expdir / "evaluate.log").read_text(), re.MULTILINE)[1])
        assert metrics[f"{task}_acc"] == pytest.approx(100 * evaluated, abs=1e-4)
    predict = submission / "predict"
    assert sorted(p.relative_to(predict).as_posix() for p in predict.rglob("*") if p.is_file()) == [
        "asr_public/predict.ark", "ic_public/predict.csv", "ks_public/predict.txt"]
    assert (predict / "ks_public" / "predict.txt").read_text() == (ks / "test_predict.txt").read_text()
    with zipfile.ZipFile(submission / "predict.zip") as archive:
        assert sorted(archive.namelist()) == ["predict/asr_public/predict.ark", "predict/ic_public/predict.csv",
                                              "predict/ks_public/predict.txt"]

    # score reads the task folders (s3prl's outputs) and results.json alike.
    from_dir, from_json = score(str(out), "--json"), score(str(out / "results.json"), "--json")
    assert from_dir.returncode == 0 and from_json.returncode == 0, from_dir.stderr + from_json.stderr
    for scored in (json.loads(from_dir.stdout), json.loads(from_json.stdout)):
        assert {key: scored[key] for key in metrics} == pytest.approx(metrics)
        assert scored["overall"] is None and scored["partial_overall"] == pytest.approx(report["partial_overall"])
        assert set(scored["missing_tasks"]) == {"PR", "QbE", "ASV", "SD", "SF", "ER"}
    table = score(str(out), "--plot", str(tmp_path / "points.png"))
    assert table.returncode == 0 and "(partial)" in table.stdout and "missing" in table.stdout, table.stdout
    assert (tmp_path / "points.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_driver_runs_the_five_er_folds_and_pr(tmp_path, tiny_student_checkpoint):
    from helpers import make_libriphone_corpus

    corpus = make_libriphone_corpus(tmp_path / "pr")
    data = write_data(tmp_path / "data.yaml", {
        "er": make_er_data(tmp_path),
        "pr": {"corpus.path": str(corpus["path"]), "corpus.lexicon": [str(corpus["lexicon"])],
               "overrides": f"config.downstream_expert.text.vocab_file={corpus['vocab_file']},,"
                            "config.downstream_expert.corpus.batch_size=4,,config.downstream_expert.corpus.num_workers=0"},
    })
    out = tmp_path / "out"
    result = superb("-u", "star_hubert", "-k", str(tiny_student_checkpoint), "--data", str(data), "--tasks", "er,pr",
                    "-o", str(out))
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    for fold in ("fold1", "fold2", "fold3", "fold4", "fold5"):
        assert f"ER/lr0.0001/{fold}: training" in result.stdout
    metrics = json.loads((out / "results.json").read_text())["metrics"]
    trial = out / "er" / "lr0.0001"
    folds = [best_dev_step_test(trial / f"fold{n}", f"emotion-fold{n}") for n in range(1, 6)]
    assert metrics["ER_acc"] == pytest.approx(100 * sum(folds) / 5, abs=1e-4)
    pr = out / "pr" / "lr0.01"
    assert metrics["PR_per"] == pytest.approx(error_rate(pr, "test"), abs=1e-3)
    scored = json.loads(score(str(out), "--json").stdout)
    assert scored["ER_acc"] == pytest.approx(metrics["ER_acc"]) and scored["PR_per"] == pytest.approx(metrics["PR_per"])


def test_only_tasks_scored_by_a_test_evaluation_evaluate_their_dev_best_checkpoint_without_submission():
    from s3prl_star.superb.policy import evaluates_dev_best

    assert evaluates_dev_best(TASKS["asr"], submission=False) and evaluates_dev_best(TASKS["sd"], submission=False)
    assert not evaluates_dev_best(TASKS["ks"], submission=False) and not evaluates_dev_best(TASKS["er"], submission=False)
    assert evaluates_dev_best(TASKS["ks"], submission=True) and evaluates_dev_best(TASKS["er"], submission=True)
    assert not evaluates_dev_best(TASKS["asv"], submission=True) and not evaluates_dev_best(TASKS["qbe"], submission=True)


def test_the_latest_checkpoint_is_the_highest_step(tmp_path):
    from s3prl_star.superb.runs import latest_checkpoint

    for step in (2, 10, 4):
        (tmp_path / f"states-{step}.ckpt").write_bytes(b"")
    assert latest_checkpoint(tmp_path).name == "states-10.ckpt" and latest_checkpoint(tmp_path / "none") is None

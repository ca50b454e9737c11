"""`s3prl-star score`: the Overall and SUPERB score of docs/superb.md, partial scores, outputs.

- The formulas: 0 points at FBANK and 1000 at SOTA for every metric (either direction, QbE x 100);
  the HuBERT Base worked example reproduces (Overall 80.80, SUPERB score 941.0) through the CLI.
- A missing task gives no Overall/SUPERB score but a partial one that names it.
- Outputs: text, --json, --md, --csv side by side for several models, --plot writes a PNG.
- Bad inputs fail naming the file and key.
- The readers of `s3prl_star.superb.results` on lines written by s3prl's own experts: their real
  `log_records` (called with a minimal stand-in for the expert's state) write log.log and print the
  metric lines, exactly as during a run.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import struct
import subprocess
import types
from pathlib import Path
from statistics import mean

import pytest

from helpers import CLI
from s3prl_star.superb.score import ERROR_RATES, REFERENCE_POINTS, overall_value, superb_points

HUBERT_BASE = {"PR_per": 5.41, "ASR_wer": 6.42, "KS_acc": 96.30, "QbE_mtwv": 0.0736, "SID_acc": 81.42,
               "ASV_eer": 5.11, "SD_der": 5.88, "IC_acc": 98.34, "SF_f1": 88.53, "SF_cer": 25.20, "ER_acc": 64.92}


def score(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, "score", *args], capture_output=True, text=True, timeout=120)


def metrics_file(path: Path, metrics: dict, name: str | None = None) -> str:
    path.write_text(json.dumps({**({"name": name} if name else {}), **metrics}))
    return str(path)


@pytest.mark.parametrize("key", sorted(REFERENCE_POINTS))
def test_points_are_0_at_fbank_and_1000_at_sota(key):
    fbank, sota = REFERENCE_POINTS[key]
    scale = 100.0 if key == "QbE_mtwv" else 1.0  # QbE's reference points are MTWV x 100
    assert superb_points(key, fbank / scale) == pytest.approx(0.0)
    assert superb_points(key, sota / scale) == pytest.approx(1000.0)
    better = sota / scale + (-0.01 if key in ERROR_RATES else 0.01)  # past the state of the art
    assert superb_points(key, better) > 1000.0


def test_overall_turns_error_rates_and_mtwv_into_higher_is_better_percent():
    assert overall_value("ASR_wer", 6.42) == pytest.approx(93.58)
    assert overall_value("QbE_mtwv", 0.0736) == pytest.approx(7.36)
    assert overall_value("KS_acc", 96.3) == pytest.approx(96.3)


def test_hubert_base_worked_example(tmp_path):
    result = score("--metrics", metrics_file(tmp_path / "hubert.json", HUBERT_BASE, "hubert_base"), "--json")
    assert result.returncode == 0, result.stderr
    scored = json.loads(result.stdout)
    assert scored["overall"] == pytest.approx(80.80, abs=0.05)
    assert scored["superb_score"] == pytest.approx(941.0, abs=0.05)
    assert {key: scored[key] for key in HUBERT_BASE} == HUBERT_BASE and scored["missing_tasks"] == {}
    assert scored["task_points"]["SF"] == pytest.approx(mean([superb_points("SF_f1", 88.53), superb_points("SF_cer", 25.20)]))


def test_missing_tasks_give_a_partial_score_that_names_them(tmp_path):
    partial = {key: value for key, value in HUBERT_BASE.items() if key not in ("QbE_mtwv", "SF_cer")}
    path = metrics_file(tmp_path / "partial.json", partial)
    scored = json.loads(score("--metrics", path, "--json").stdout)
    assert scored["overall"] is None and scored["superb_score"] is None
    assert set(scored["missing_tasks"]) == {"QbE", "SF"}
    complete = {key: value for key, value in partial.items() if key != "SF_f1"}  # SF lacks one of its two
    assert scored["partial_overall"] == pytest.approx(mean(overall_value(k, v) for k, v in complete.items()))
    assert scored["partial_superb_score"] == pytest.approx(mean(superb_points(k, v) for k, v in complete.items()))
    text = score("--metrics", path).stdout
    assert "(partial)" in text and "missing QbE (no QbE_mtwv); SF (no SF_cer)" in text, text


def test_models_side_by_side_in_markdown_and_csv(tmp_path):
    student = {**HUBERT_BASE, "ASR_wer": 8.0, "KS_acc": 95.0}
    paths = ["--metrics", metrics_file(tmp_path / "hubert.json", HUBERT_BASE, "hubert_base"),
             "--metrics", metrics_file(tmp_path / "star.json", student, "star_hubert")]
    markdown = score(*paths, "--md").stdout.splitlines()
    assert markdown[0] == "| task | metric | hubert_base | star_hubert |"
    assert "| ASR | WER % | 6.42 | 8.00 |" in markdown and markdown[-1] == "| SUPERB score |  | 941.0 | 930.6 |"
    rows = list(csv.DictReader(io.StringIO(score(*paths, "--csv").stdout)))
    assert [row["model"] for row in rows] == ["hubert_base", "star_hubert"]
    assert float(rows[0]["superb_score"]) == pytest.approx(941.0, abs=0.05) and rows[1]["ASR_wer"] == "8.0"
    assert float(rows[1]["superb_score"]) < float(rows[0]["superb_score"])
    several = json.loads(score(*paths, "--json").stdout)
    assert [model["model"] for model in several["models"]] == ["hubert_base", "star_hubert"]


def test_plot_is_written_as_png(tmp_path):
    partial = {key: value for key, value in HUBERT_BASE.items() if key != "QbE_mtwv"}
    plot = tmp_path / "plots" / "points.png"
    result = score("--metrics", metrics_file(tmp_path / "a.json", HUBERT_BASE, "hubert_base"),
                   "--metrics", metrics_file(tmp_path / "b.json", partial, "partial"), "--plot", str(plot))
    assert result.returncode == 0, result.stderr
    data = plot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
    assert width >= 800 and height >= 400
    raw = tmp_path / "plots" / "metrics.png"
    result = score("--metrics", metrics_file(tmp_path / "a.json", HUBERT_BASE, "hubert_base"),
                   "--plot", str(raw), "--plot-metrics")
    assert result.returncode == 0, result.stderr
    assert raw.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and raw.read_bytes() != data


@pytest.mark.parametrize("content, expected", [
    ({"PR_pre": 5.0}, "unknown metric key 'PR_pre'"),
    ({"QbE_mtwv": 7.36}, "QbE_mtwv is the raw MTWV (0..1), got 7.36"),
    ({"KS_acc": 0.9630 * 1000}, "KS_acc is a percentage (0..100)"),
    ({"ASR_wer": "6.4"}, "ASR_wer must be a finite number"),
])
def test_bad_metrics_are_refused_naming_file_and_key(tmp_path, content, expected):
    path = metrics_file(tmp_path / "bad.json", content)
    result = score("--metrics", path)
    assert result.returncode == 2 and expected in result.stderr and path in result.stderr, result.stderr


def test_unreadable_inputs_are_refused(tmp_path):
    (tmp_path / "broken.json").write_text("{")
    assert "not JSON" in score("--metrics", str(tmp_path / "broken.json")).stderr
    missing = score(str(tmp_path / "nothing_here"))
    assert missing.returncode == 2 and f"{tmp_path / 'nothing_here'}: not found" in missing.stderr
    plain = metrics_file(tmp_path / "plain.json", HUBERT_BASE)
    assert "goes with --metrics" in score(plain).stderr


# --- readers on lines written by s3prl's experts ---------------------------------------------------

class Logger:
    def add_scalar(self, *args, **kwargs):
        pass


def write_logged_evaluations(expdir: Path, evaluations: list[tuple[str, int, float]]) -> None:
    """Run s3prl's speech_commands `log_records` for each (split, step, accuracy), as the runner does."""
    import torch

    from s3prl_star.integration import patches

    patches.apply()
    from s3prl.downstream.speech_commands.expert import DownstreamExpert

    expert = types.SimpleNamespace(expdir=str(expdir), best_score=torch.zeros(1))
    for split, step, accuracy in evaluations:
        records = {"loss": [1.0], "acc": [accuracy], "filename": ["a.wav"], "predict": ["yes"], "truth": ["yes"]}
        DownstreamExpert.log_records(expert, split, records, Logger(), step)


def test_logged_score_is_the_test_at_the_last_dev_improvement(tmp_path):
    from s3prl_star.superb.results import logged_test_at_dev_best

    write_logged_evaluations(tmp_path, [
        ("dev", 2, 0.5), ("test", 2, 0.4), ("dev", 4, 0.25), ("test", 4, 0.9),
        ("dev", 6, 0.75), ("test", 6, 0.6), ("dev", 8, 0.75), ("test", 8, 0.1),  # 8 ties: no improvement
        ("test", 0, 0.7),  # a later `-m evaluate` of dev-best.ckpt logs at step 0
    ])
    assert logged_test_at_dev_best(tmp_path) == (0.6, [])


def test_logged_score_without_dev_improvement_is_the_last_test_and_says_so(tmp_path):
    from s3prl_star.superb.results import logged_test_at_dev_best

    write_logged_evaluations(tmp_path, [("dev", 2, 0.0), ("test", 2, 0.4), ("dev", 4, 0.0), ("test", 4, 0.3)])
    value, notes = logged_test_at_dev_best(tmp_path)
    assert value == 0.3 and "dev never improved" in notes[0] and "step 4" in notes[0]


def test_lr_search_chooses_the_trial_with_the_best_dev_score(tmp_path):
    from s3prl_star.superb.results import chosen_trial
    from s3prl_star.superb.tasks import TASKS

    for trial, dev in (("lr1e-05", 0.5), ("lr0.0001", 0.75), ("lr0.001", 0.25)):
        (tmp_path / trial).mkdir()
        write_logged_evaluations(tmp_path / trial, [("dev", 2, dev), ("test", 2, 0.1)])
    chosen, notes = chosen_trial(TASKS["ks"], sorted(tmp_path.iterdir()))
    assert chosen.name == "lr0.0001" and "lr0.0001 chosen on dev" in notes[0]


def printed_log_records(expert_class, expert, split: str, records: dict) -> str:
    """What `expert_class.log_records` prints when the runner calls it after evaluating `split`."""
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        expert_class.log_records(expert, split, records=records, logger=Logger(), global_step=0, batch_ids=[0],
                                 total_batch_num=1)
    return output.getvalue()


@pytest.mark.parametrize("task, metric, expected", [
    ("PR", "per", {"PR_per": 25.0}),  # one phoneme wrong of four
    ("SF", "slot_type_f1", None),
])
def test_ctc_test_lines_are_read(tmp_path, task, metric, expected):
    """s3prl's ctc expert prints `test KEY: v` for each metric; PR's PER (a fraction) becomes percent."""
    import torch

    from s3prl_star.integration import patches

    patches.apply()
    from s3prl.downstream.ctc import metric as ctc_metric
    from s3prl.downstream.ctc.expert import DownstreamExpert

    from s3prl_star.superb.results import EVALUATE_LOG, _evaluated
    from s3prl_star.superb.tasks import TASKS

    if task == "PR":
        metrics, hypothesis, groundtruth = ["per"], ["AH B K D"], ["AH B C D"]
    else:
        metrics = ["slot_type_f1", "slot_value_cer"]
        hypothesis = ["B-date 3 pm E-date play"]
        groundtruth = ["B-date 3 pm E-date play"]
    expert = types.SimpleNamespace(metrics=metrics, metric_higher_better=task == "SF", save_best_on=["dev"],
                                   best_score=torch.zeros(1), expdir=str(tmp_path), corpus={"name": task},
                                   _get_task_name=lambda: task)
    records = {"loss": [1.0], "hypothesis": hypothesis, "groundtruth": groundtruth, "filename": ["u1"]}
    (tmp_path / EVALUATE_LOG).write_text(printed_log_records(DownstreamExpert, expert, "test", records))
    read = _evaluated(tmp_path, TASKS[task.lower()])
    if expected is None:
        expected = {"SF_f1": 100 * ctc_metric.slot_type_f1(hypothesis, groundtruth),
                    "SF_cer": 100 * ctc_metric.slot_value_cer(hypothesis, groundtruth)}
    assert read == pytest.approx(expected)


def test_asr_test_clean_wer_line_is_read(tmp_path):
    """s3prl's asr expert prints `test-clean wer: v` in percent."""
    import torch

    from s3prl_star.integration import patches

    patches.apply()
    from s3prl.downstream.asr.expert import DownstreamExpert

    from s3prl_star.superb.results import EVALUATE_LOG, _evaluated
    from s3prl_star.superb.tasks import TASKS

    expert = types.SimpleNamespace(expdir=str(tmp_path), best_score=torch.ones(1) * 100, decoder=None)
    expert._compute_metrics = lambda *args: DownstreamExpert._compute_metrics(expert, *args)
    records = {"loss": [1.0], "pred_tokens": ["A B"], "pred_words": [["THE", "CAT"]], "target_tokens": ["A B"],
               "target_words": [["THE", "CAT", "SAT"]], "filenames": ["u1"]}
    text = printed_log_records(DownstreamExpert, expert, "test-clean", records)
    (tmp_path / EVALUATE_LOG).write_text(text)
    assert _evaluated(tmp_path, TASKS["asr"]) == pytest.approx({"ASR_wer": 100 / 3})


# --- rules of results.py that choose among runs ----------------------------------------------------

def test_pr_chooses_the_learning_rate_of_the_lowest_dev_per(tmp_path):
    """PR's dev score is an error rate: --lr-search keeps the trial whose training printed the lowest dev PER."""
    from s3prl_star.superb.results import TRAIN_LOG, chosen_trial
    from s3prl_star.superb.tasks import TASKS

    trials = []
    for name, pers in (("lr0.0001", [0.9, 0.5]), ("lr0.001", [0.8, 0.3]), ("lr0.01", [0.95, 0.7])):
        (tmp_path / name).mkdir()
        (tmp_path / name / TRAIN_LOG).write_text("".join(f"dev per: {per}\n" for per in pers))
        trials.append(tmp_path / name)
    chosen, notes = chosen_trial(TASKS["pr"], trials)
    assert chosen.name == "lr0.001" and "lr0.001 chosen on dev" in notes[0]


def test_only_step_zero_test_lines_are_no_result(tmp_path):
    """A log whose only test line is the step-0 evaluation (before any training) has no logged result."""
    from s3prl_star.superb.results import MissingOutput, logged_test_at_dev_best

    (tmp_path / "log.log").write_text("test at step 0: 0.9\n")
    with pytest.raises(MissingOutput, match="no 'test at step N: v' line"):
        logged_test_at_dev_best(tmp_path)


def test_er_is_the_mean_of_its_five_folds(tmp_path):
    """ER trains once per IEMOCAP session held out (fold1..fold5) and reports the mean of their logged scores."""
    from s3prl_star.superb import policy
    from s3prl_star.superb.results import TRAIN_DONE, trial_result
    from s3prl_star.superb.tasks import TASKS

    task, trial = TASKS["er"], tmp_path / "er" / "lr0.0001"
    runs = policy.expdirs(task, trial)
    assert [fold for _, fold in runs] == [f"fold{index}" for index in range(1, 6)]
    assert policy.fold_overrides(task, "fold3") == ["config.downstream_expert.datarc.test_fold=fold3"]
    for (expdir, _), value in zip(runs, (0.40, 0.50, 0.60, 0.70, 0.80)):
        expdir.mkdir(parents=True)
        (expdir / TRAIN_DONE).write_text("done\n")
        (expdir / "log.log").write_text(f"New best on dev at step 4: 0.5\ntest at step 4: {value}\n")
    assert trial_result(task, trial).metrics == {"ER_acc": pytest.approx(60.0)}


def test_qbe_ties_on_dev_go_to_the_lowest_layer(tmp_path):
    from s3prl_star.superb.results import read_task
    from s3prl_star.superb.tasks import TASKS

    (tmp_path / "qbe").mkdir()
    (tmp_path / "qbe" / "metric.json").write_text(json.dumps(
        {"dev": {"3": 0.5, "1": 0.5, "2": 0.4}, "test": {"1": 0.7, "3": 0.9}}))
    result = read_task(tmp_path, TASKS["qbe"])
    assert result.metrics == {"QbE_mtwv": 0.7} and result.chosen == "qbe/layer1-test"


def test_each_dev_best_checkpoint_is_the_file_s3prls_expert_saves():
    """The name the driver evaluates is the one s3prl 0.4.18's expert of the task writes when dev improves
    (`f"{split}-best.ckpt"`, diarization's `f"best-states-{mode}.ckpt"`, the split being dev or dev-clean)."""
    import re
    from pathlib import Path

    import s3prl

    from s3prl_star.superb.tasks import TASKS

    downstream = Path(s3prl.__file__).parent / "downstream"
    for task in TASKS.values():
        if task.dev_best_checkpoint is None:
            continue
        split = "dev-clean" if "dev-clean" in task.dev_best_checkpoint else "dev"
        saved = re.escape(task.dev_best_checkpoint).replace(re.escape(split), r"\{\w+\}")
        source = (downstream / task.downstream / "expert.py").read_text()
        assert re.search(rf"f[\"']{saved}[\"']", source), f"{task.name}: s3prl's expert saves no {task.dev_best_checkpoint}"

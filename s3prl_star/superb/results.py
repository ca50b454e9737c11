"""Read each SUPERB task's metric (the metric keys of docs/superb.md) from what s3prl wrote for it.

The layout is the one `s3prl-star superb` writes under OUT (`task_dir`, `trial_dirs`, `fold_dir`,
`qbe_dir`); the files in it are s3prl's own:
- stdout of the test evaluation, saved by the driver as `EXPDIR/evaluate.log`: `test per: v` (PR,
  fraction), `test-clean wer: v` (ASR, percent), `test slot_type_f1: v` / `test slot_value_cer: v` (SF,
  fractions), the lines the `ctc` and `asr` experts print;
- `EXPDIR/log.log` of the utterance-level experts (KS, SID, IC, ER): `test at step N: v` at the step of
  the last `New best on dev at step N: v` line (fractions);
- ASV: `EXPDIR/states-STEP/log.txt`, one `-m evaluate` per checkpoint (`s3prl_star.superb.scorers.asv`'s
  layout), the lowest `sv-voxceleb1/test-EER: v`;
- QbE and SD need the corpus to be scored (`s3prl_star.superb.scorers.qbe`, `.diarization`): the driver scores
  them and stores the scorer's value in `metric.json` beside s3prl's files.
With `--lr-search`, a task has one trial folder per learning rate; the one with the best dev score wins.
Values are returned in the metric keys' units: percent, raw MTWV for QbE.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean

from s3prl_star.superb.tasks import TASKS, Selection, Task

TRAIN_LOG = "train.log"  # stdout of the `-m train` run(s), appended on resume
TRAIN_DONE = "train.done"  # the training finished (a run without it is unfinished: not read)
EVALUATE_LOG = "evaluate.log"  # stdout of the test evaluation
EVALUATE_DONE = "evaluate.done"  # the test evaluation finished; holds the checkpoint's name
METRIC_FILE = "metric.json"  # a scorer's value, for the tasks scored from the corpus (QbE, SD)
TRIAL_PREFIX = "lr"


class MissingOutput(FileNotFoundError):
    """A task's output is not there (not run, or not finished); the message names the file."""


@dataclass
class TaskResult:
    """A task's metrics (metric keys) and how they were chosen."""

    metrics: dict[str, float]
    chosen: str  # the run the metrics come from, relative to OUT
    notes: list[str] = field(default_factory=list)  # departures from the protocol's usual path


# --- layout ------------------------------------------------------------------------------------

def task_dir(out: Path, task: Task) -> Path:
    return Path(out) / task.key


def trial_name(learning_rate: float) -> str:
    return f"{TRIAL_PREFIX}{learning_rate:g}"


def trial_dirs(out: Path, task: Task) -> list[Path]:
    """The trial folders (one per learning rate) of a task that trains, in name order."""
    folder = task_dir(out, task)
    return sorted(path for path in folder.glob(f"{TRIAL_PREFIX}*") if path.is_dir())


def fold_dir(trial: Path, fold: str) -> Path:
    return trial / fold


def qbe_dir(out: Path, layer: int, split: str) -> Path:
    return task_dir(out, TASKS["qbe"]) / f"layer{layer}-{split}"


# --- s3prl's lines -----------------------------------------------------------------------------

def _read(path: Path) -> str:
    if not path.is_file():
        raise MissingOutput(f"{path}: not found")
    return path.read_text(errors="replace")


def printed_metric(path: Path, split: str, name: str) -> float:
    """The value of the last `SPLIT NAME: v` line s3prl printed (the runner's `print(f"{split} {key}: {value}")`)."""
    found = re.findall(rf"^{re.escape(split)} {re.escape(name)}: (\S+)$", _read(path), re.MULTILINE)
    if not found:
        raise MissingOutput(f"{path}: no line '{split} {name}: v'")
    return float(found[-1])


def printed_metrics(path: Path, split: str, name: str) -> list[float]:
    """Every `SPLIT NAME: v` value in `path` (all evaluations of a training), in order; may be empty."""
    if not path.is_file():
        return []
    return [float(v) for v in re.findall(rf"^{re.escape(split)} {re.escape(name)}: (\S+)$", path.read_text(errors="replace"), re.MULTILINE)]


NEW_BEST = re.compile(r"^New best on dev at step (\d+): (\S+)$")


def logged_test_at_dev_best(expdir: Path) -> tuple[float, list[str]]:
    """(test score, notes) from an utterance-level expert's `log.log`: the `test at step N: v` written
    after the last `New best on dev at step N` line. When dev never beat the expert's initial best (no
    such line), the last logged test score is taken and a note says so."""
    log = expdir / "log.log"
    lines = _read(log).splitlines()
    best = [(index, match) for index, line in enumerate(lines) if (match := NEW_BEST.match(line))]
    if best:
        index, match = best[-1]
        step = match.group(1)
        for line in lines[index + 1:]:
            if line.startswith(f"test at step {step}: "):
                return float(line.split(": ", 1)[1]), []
        raise MissingOutput(f"{log}: no 'test at step {step}: v' after the last 'New best on dev' line "
                            "(is test in runner.eval_dataloaders?)")
    tests = [line for line in lines if re.match(r"^test at step [1-9]\d*: ", line)]
    if not tests:
        raise MissingOutput(f"{log}: no 'test at step N: v' line")
    step = tests[-1].split()[3].rstrip(":")
    return float(tests[-1].split(": ", 1)[1]), [
        f"{log}: dev never improved on the expert's initial best; the last logged test score (step {step}) is used"]


def logged_dev_best(expdir: Path) -> float | None:
    """The dev score of the last `New best on dev` line of `log.log`, or None (no line or no file)."""
    log = expdir / "log.log"
    if not log.is_file():
        return None
    values = [NEW_BEST.match(line).group(2) for line in log.read_text().splitlines() if NEW_BEST.match(line)]
    return float(values[-1]) if values else None


def read_metric_file(expdir: Path, key: str) -> float:
    """A scorer's value stored by the driver in `EXPDIR/metric.json`."""
    values = json.loads(_read(expdir / METRIC_FILE))
    if key not in values:
        raise MissingOutput(f"{expdir / METRIC_FILE}: no {key}")
    return float(values[key])


# --- per task: test metrics of one trial, and its dev score ----------------------------------------

def _evaluated(expdir: Path, task: Task) -> dict[str, float]:
    """Section-4 metrics of a task scored by its test evaluation: the lines it printed, or its scorer's
    values in `metric.json` (SD)."""
    if task.scorer is not None:
        return {key: read_metric_file(expdir, key) for key in task.metric_keys}
    log = expdir / EVALUATE_LOG
    return {metric.key: metric.scale * printed_metric(log, metric.split, metric.name) for metric in task.printed}


def _asv_lowest(expdir: Path) -> tuple[dict[str, float], str]:
    from s3prl_star.superb.scorers.asv import lowest_eer

    try:
        eer, checkpoint = lowest_eer(expdir)
    except FileNotFoundError as error:
        raise MissingOutput(str(error)) from None
    return {"ASV_eer": eer}, checkpoint


def trial_result(task: Task, trial: Path) -> TaskResult:
    """The metrics of one trial (a training at one learning rate) of a task that trains."""
    name = f"{trial.parent.name}/{trial.name}"
    expdirs = [fold_dir(trial, fold) for fold in task.folds] or [trial]
    unfinished = [str(expdir) for expdir in expdirs if not (expdir / TRAIN_DONE).is_file()]
    if unfinished:
        raise MissingOutput(f"training not finished in {', '.join(unfinished)} (no {TRAIN_DONE})")
    if task.selection is Selection.EVALUATE_DEV_BEST:
        return TaskResult(_evaluated(trial, task), name, _notes_of(trial))
    if task.selection is Selection.LOGGED_AT_DEV_BEST:
        value, notes = logged_test_at_dev_best(trial)
        return TaskResult({task.metric_keys[0]: 100.0 * value}, name, notes)
    if task.selection is Selection.FOLDS:
        values, notes = [], []
        for fold in task.folds:
            value, fold_notes = logged_test_at_dev_best(fold_dir(trial, fold))
            values.append(value)
            notes += fold_notes
        return TaskResult({task.metric_keys[0]: 100.0 * mean(values)}, name, notes)
    if task.selection is Selection.LOWEST_OVER_CHECKPOINTS:
        metrics, checkpoint = _asv_lowest(trial)
        return TaskResult(metrics, f"{name}/{checkpoint}")
    raise ValueError(f"{task.name} has no training trials")


NOTES_FILE = "notes.txt"  # the driver's notes on a run (e.g. no dev-best checkpoint: the last one evaluated)


def _notes_of(expdir: Path) -> list[str]:
    path = expdir / NOTES_FILE
    return path.read_text().splitlines() if path.is_file() else []


def dev_score(task: Task, trial: Path) -> tuple[float, bool] | None:
    """(the trial's best dev score, higher is better), what `--lr-search` compares; None when not logged."""
    if task.dev_line is not None:
        log = trial / TRAIN_LOG
        values = task.dev_line.values(log.read_text(errors="replace")) if log.is_file() else []
        higher = task.dev_line.higher_is_better
        return ((max if higher else min)(values), higher) if values else None
    if task.selection is Selection.LOGGED_AT_DEV_BEST:
        value = logged_dev_best(trial)
        return None if value is None else (value, True)
    if task.selection is Selection.FOLDS:
        values = [logged_dev_best(fold_dir(trial, fold)) for fold in task.folds]
        return None if None in values else (mean(values), True)
    return None  # ASV: no dev set


def chosen_trial(task: Task, trials: list[Path]) -> tuple[Path, list[str]]:
    """The trial with the best dev score (the only one without `--lr-search`), and a note on the choice."""
    if len(trials) == 1:
        return trials[0], []
    scored = {trial: dev_score(task, trial) for trial in trials}
    unscored = [trial.name for trial, score in scored.items() if score is None]
    if unscored:
        raise MissingOutput(f"{task.name}: no dev score logged for {', '.join(unscored)}; cannot choose the learning rate")
    higher = next(iter(scored.values()))[1]
    best = (max if higher else min)(scored, key=lambda trial: scored[trial][0])
    summary = ", ".join(f"{trial.name} {score[0]:.4g}" for trial, score in scored.items())
    return best, [f"{task.name}: learning rate {best.name} chosen on dev ({summary})"]


def read_task(out: Path, task: Task) -> TaskResult:
    """A task's metrics from the outputs under OUT; MissingOutput when they are not there."""
    if task.selection is Selection.LAYER_ON_DEV:
        folder = task_dir(out, task)
        values = json.loads(_read(folder / METRIC_FILE))
        dev, test = {int(k): v for k, v in values["dev"].items()}, {int(k): v for k, v in values["test"].items()}
        layer = max(dev, key=lambda key: (dev[key], -key))
        if layer not in test:
            raise MissingOutput(f"{folder / METRIC_FILE}: no test MTWV of layer {layer}, the best on dev")
        return TaskResult({"QbE_mtwv": test[layer]}, f"{task.key}/layer{layer}-test",
                          [f"QbE: layer {layer} chosen on dev (MTWV {dev[layer]:.4f})"])
    trials = trial_dirs(out, task)
    if not trials:
        raise MissingOutput(f"{task_dir(out, task)}/{TRIAL_PREFIX}*: no run")
    trial, notes = chosen_trial(task, trials)
    result = trial_result(task, trial)
    result.notes = notes + result.notes
    return result


def read_out(out: Path) -> tuple[dict[str, TaskResult], dict[str, str]]:
    """({task: result} for every task with outputs under OUT, {task: why missing} for the others)."""
    found, missing = {}, {}
    for task in TASKS.values():
        try:
            found[task.name] = read_task(out, task)
        except MissingOutput as error:
            missing[task.name] = str(error)
    return found, missing

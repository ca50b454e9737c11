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
import math
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
INPUTS_FILE = "inputs.json"  # what produced the task's runs, its learning rates too (s3prl_star.superb.provenance)


class MissingOutput(FileNotFoundError):
    """A task's output is not there (not run, or not finished); the message names the file."""


class MalformedOutput(MissingOutput):
    """A task's output is there but not as s3prl (or the driver) writes it: a metric line whose value is
    not a finite number, a metric.json that is not UTF-8 JSON of the expected shape. The message names
    the file, the line or key, and what was expected; `read_out` (`s3prl-star score`) raises it, the
    driver and the submission report the task as failed / not included with it."""


def _finite(text: str, where: str, expected: str) -> float:
    """`text` as a finite float, else MalformedOutput naming `where` and `expected`."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise MalformedOutput(f"{where}: {text!r} is not a finite number; expected {expected}")
    return value


def json_object(path: Path, expected: str = "an object of metric values") -> dict:
    """The JSON object in `path` (strict UTF-8); MissingOutput when there is no file, MalformedOutput naming
    the file and `expected` when it is not UTF-8 JSON of an object."""
    if not path.is_file():
        raise MissingOutput(f"{path}: not found")
    data = path.read_bytes()
    try:
        values = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise MalformedOutput(f"{path}: not UTF-8 (byte 0x{data[error.start]:02x} at offset {error.start}); "
                              f"expected {expected}") from None
    except json.JSONDecodeError as error:
        raise MalformedOutput(f"{path}: not JSON ({error}); expected {expected}") from None
    if not isinstance(values, dict):
        raise MalformedOutput(f"{path}: a JSON {type(values).__name__}; expected {expected}")
    return values


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


def recorded_learning_rates(out: Path, task: Task) -> list[float] | None:
    """The learning rates of the trials OUT/<task>/inputs.json records (the driver's grid), or None when
    there is no record (an OUT of an older s3prl-star); MalformedOutput when it cannot be read."""
    path = task_dir(out, task) / INPUTS_FILE
    if not path.exists():
        return None
    rates = json_object(path, "the object of a task's inputs the driver writes").get("learning_rates")
    if not isinstance(rates, list) or not all(isinstance(rate, (int, float)) and not isinstance(rate, bool)
                                              and math.isfinite(rate) for rate in rates):
        raise MalformedOutput(f"{path}: learning_rates is {rates!r}; expected a list of learning rates")
    return rates


def current_trials(out: Path, task: Task, learning_rates: list[float] | None) -> tuple[list[Path], list[str]]:
    """(the trial folders of `learning_rates`, by default the recorded ones, and a note naming each other
    `lr*` folder, left out: a leftover of another grid must not be chosen). Without a grid (no record),
    every trial folder. MissingOutput when a trial of the grid has no folder."""
    found = trial_dirs(out, task)
    grid = learning_rates if learning_rates is not None else recorded_learning_rates(out, task)
    if grid is None:
        return found, []
    names = [trial_name(rate) for rate in grid]
    absent = [name for name in names if not (task_dir(out, task) / name).is_dir()]
    if absent:
        raise MissingOutput(f"{task_dir(out, task)}: no run {', '.join(absent)} (its learning rates: {', '.join(names)})")
    ignored = [path.name for path in found if path.name not in names]
    notes = [f"{task.name}: {', '.join(ignored)} left out, not among this run's learning rates ({', '.join(names)})"]
    return [path for path in found if path.name in names], notes if ignored else []


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
    text = _read(path)
    found = list(re.finditer(rf"^{re.escape(split)} {re.escape(name)}: (\S+)$", text, re.MULTILINE))
    if not found:
        raise MissingOutput(f"{path}: no line '{split} {name}: v'")
    line = text.count("\n", 0, found[-1].start()) + 1
    return _finite(found[-1].group(1), f"{path} line {line}", f"'{split} {name}: <number>'")


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
        for number, line in enumerate(lines[index + 1:], start=index + 2):
            if line.startswith(f"test at step {step}: "):
                return _finite(line.split(": ", 1)[1], f"{log} line {number}",
                               f"'test at step {step}: <accuracy>'"), []
        raise MissingOutput(f"{log}: no 'test at step {step}: v' after the last 'New best on dev' line "
                            "(is test in runner.eval_dataloaders?)")
    tests = [(number, line) for number, line in enumerate(lines, start=1)
             if re.match(r"^test at step [1-9]\d*: ", line)]
    if not tests:
        raise MissingOutput(f"{log}: no 'test at step N: v' line")
    number, line = tests[-1]
    step = line.split()[3].rstrip(":")
    value = _finite(line.split(": ", 1)[1], f"{log} line {number}", f"'test at step {step}: <accuracy>'")
    return value, [
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
    path = expdir / METRIC_FILE
    values = json_object(path)
    if key not in values:
        raise MissingOutput(f"{path}: no {key}")
    value = values[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise MalformedOutput(f"{path}: {key} is {value!r}; expected a finite number")
    return float(value)


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


def _qbe_scores(path: Path) -> tuple[dict[int, float], dict[int, float]]:
    """({layer: dev MTWV}, {layer: test MTWV}) of QbE's metric.json (`runs.run_qbe`: {"dev": {"0": v, ...},
    "test": {...}}, both written from the start); MalformedOutput naming the file and key when it is not
    that, MissingOutput when no layer was scored on dev yet."""
    values = json_object(path)
    scores = []
    for split in ("dev", "test"):
        layers = values.get(split)
        if not isinstance(layers, dict):
            found = "missing" if layers is None else f"{layers!r}"
            raise MalformedOutput(f"{path}: {split!r} is {found}; expected an object {{layer: MTWV}}")
        checked = {}
        for layer, mtwv in layers.items():
            if not layer.isdigit():
                raise MalformedOutput(f"{path}: {split} key {layer!r}; expected a layer number (0, 1, ...)")
            if isinstance(mtwv, bool) or not isinstance(mtwv, (int, float)) or not math.isfinite(mtwv):
                raise MalformedOutput(f"{path}: {split} layer {layer} is {mtwv!r}; expected a finite MTWV")
            checked[int(layer)] = float(mtwv)
        scores.append(checked)
    if not scores[0]:
        raise MissingOutput(f"{path}: no layer scored on dev")
    return scores[0], scores[1]


def read_task(out: Path, task: Task, learning_rates: list[float] | None = None) -> TaskResult:
    """A task's metrics from the outputs under OUT; MissingOutput when they are not there. Only the trials
    of `learning_rates` (by default those OUT/<task>/inputs.json records) count (`current_trials`)."""
    if task.selection is Selection.LAYER_ON_DEV:
        folder = task_dir(out, task)
        dev, test = _qbe_scores(folder / METRIC_FILE)
        layer = max(dev, key=lambda key: (dev[key], -key))
        if layer not in test:
            raise MissingOutput(f"{folder / METRIC_FILE}: no test MTWV of layer {layer}, the best on dev")
        return TaskResult({"QbE_mtwv": test[layer]}, f"{task.key}/layer{layer}-test",
                          [f"QbE: layer {layer} chosen on dev (MTWV {dev[layer]:.4f})"])
    trials, left_out = current_trials(out, task, learning_rates)
    if not trials:
        raise MissingOutput(f"{task_dir(out, task)}/{TRIAL_PREFIX}*: no run")
    trial, notes = chosen_trial(task, trials)
    result = trial_result(task, trial)
    result.notes = left_out + notes + result.notes
    return result


def read_out(out: Path) -> tuple[dict[str, TaskResult], dict[str, str]]:
    """({task: result} for every task with outputs under OUT, {task: why missing} for the others)."""
    found, missing = {}, {}
    for task in TASKS.values():
        try:
            found[task.name] = read_task(out, task)
        except MalformedOutput:
            raise  # damaged, not missing: the caller names it
        except MissingOutput as error:
            missing[task.name] = str(error)
    return found, missing

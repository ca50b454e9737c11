"""`s3prl-star score OUT|results.json... [--metrics FILE]`: the per-task table, Overall and SUPERB score.

Formulas and reference points: docs/superb.md (Scores).
- Overall (the STaR paper's "Overall"): the mean of the 11 metric values after the error rates
  (PER, WER, EER, DER, SF-CER) become 100 - x and MTWV becomes 100 x MTWV.
- SUPERB score (the leaderboard's "Score"): per metric 1000 (x - FBANK) / (SOTA - FBANK) on the raw
  value (MTWV as 100 x MTWV), averaged within a task (SF has two metrics), then over the 10 tasks.
A model lacking a task gets no Overall and no SUPERB score (`null` in JSON): it gets a partial score
over the tasks it has, printed as partial with the missing tasks named.

Inputs: an OUT folder of `s3prl-star superb` (its tasks' s3prl outputs are read anew, see
`s3prl_star.superb.results`), its `results.json`, or with `--metrics` a JSON object of metric keys
(e.g. published numbers). Several inputs are compared side by side; the label of each is its folder
name (OUT, or the folder of results.json) or the `--metrics` file's `name` key, else its stem.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean

from s3prl_star.superb.tasks import METRIC_KEYS, TASKS, task_of_metric

# The SUPERB leaderboard's [FBANK, SOTA] per metric, QbE as MTWV x 100 (docs/superb.md).
REFERENCE_POINTS = {
    "PR_per": (82.01, 3.53),
    "KS_acc": (41.3826674, 96.66),
    "IC_acc": (9.649354219, 98.76),
    "SID_acc": (20.058174, 90.3),
    "ER_acc": (48.23672168, 67.62),
    "ASR_wer": (23.18, 3.62),
    "QbE_mtwv": (0.58, 7.36),
    "SF_f1": (69.64, 89.81),
    "SF_cer": (52.94, 21.76),
    "ASV_eer": (9.56, 5.11),
    "SD_der": (10.05, 5.62),
}
ERROR_RATES = ("PR_per", "ASR_wer", "ASV_eer", "SD_der", "SF_cer")
UNITS = {"PR_per": "PER %", "ASR_wer": "WER %", "KS_acc": "acc %", "QbE_mtwv": "MTWV", "SID_acc": "acc %",
         "ASV_eer": "EER %", "SD_der": "DER %", "IC_acc": "acc %", "SF_f1": "F1 %", "SF_cer": "CER %",
         "ER_acc": "acc %"}


class InputError(ValueError):
    """An input file or folder that cannot be scored; the message names it."""


def overall_value(key: str, value: float) -> float:
    """The metric as the Overall score averages it: higher is better, in percent."""
    if key in ERROR_RATES:
        return 100.0 - value
    return 100.0 * value if key == "QbE_mtwv" else value


def superb_points(key: str, value: float) -> float:
    """1000 (x - FBANK) / (SOTA - FBANK): 0 at FBANK, 1000 at the state of the art (either direction)."""
    fbank, sota = REFERENCE_POINTS[key]
    raw = 100.0 * value if key == "QbE_mtwv" else value
    return 1000.0 * (raw - fbank) / (sota - fbank)


@dataclass
class ModelScore:
    label: str
    metrics: dict[str, float]
    task_points: dict[str, float]  # SUPERB points per complete task (SF: the mean of its two)
    missing: dict[str, str]  # task -> why it is missing (absent metric keys, or the unread output)
    overall: float | None  # None when a task is missing
    superb_score: float | None
    partial_overall: float | None  # over the complete tasks, when some are missing
    partial_superb_score: float | None
    notes: list[str] = field(default_factory=list)


def score_model(label: str, metrics: dict[str, float], missing_reasons: dict[str, str] | None = None,
                notes: list[str] | None = None) -> ModelScore:
    """Overall and SUPERB score of one model; a task with any metric key absent is missing."""
    missing = {}
    for task in TASKS.values():
        absent = [key for key in task.metric_keys if key not in metrics]
        if absent:
            missing[task.name] = (missing_reasons or {}).get(task.name) or f"no {', '.join(absent)}"
    complete = [task for task in TASKS.values() if task.name not in missing]
    task_points = {task.name: mean(superb_points(key, metrics[key]) for key in task.metric_keys) for task in complete}
    values = [overall_value(key, metrics[key]) for task in complete for key in task.metric_keys]
    overall = mean(values) if values else None
    superb = mean(task_points.values()) if task_points else None
    if missing:
        return ModelScore(label, metrics, task_points, missing, None, None, overall, superb, notes or [])
    return ModelScore(label, metrics, task_points, {}, overall, superb, None, None, notes or [])


# --- inputs ------------------------------------------------------------------------------------

def check_metrics(metrics: dict, source: str) -> dict[str, float]:
    """Section-4 keys with finite numbers in their range; anything else is an InputError naming `source`."""
    checked = {}
    for key, value in metrics.items():
        if key not in METRIC_KEYS:
            raise InputError(f"{source}: unknown metric key {key!r}; expected some of {', '.join(METRIC_KEYS)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InputError(f"{source}: {key} must be a finite number, got {value!r}")
        if key == "QbE_mtwv" and not 0.0 <= value <= 1.0:
            raise InputError(f"{source}: QbE_mtwv is the raw MTWV (0..1), got {value} (percent given?)")
        if key not in ERROR_RATES and key != "QbE_mtwv" and not 0.0 <= value <= 100.0:
            raise InputError(f"{source}: {key} is a percentage (0..100), got {value}")
        if key in ERROR_RATES and value < 0.0:
            raise InputError(f"{source}: {key} is an error rate in percent (>= 0), got {value}")
        checked[key] = float(value)
    return checked


def _load_json(path: Path) -> dict:
    from s3prl_star.superb.results import MissingOutput, json_object

    try:
        return json_object(path, "a UTF-8 JSON object")
    except MissingOutput as error:  # and MalformedOutput
        raise InputError(str(error)) from None


def check_not_fractions(metrics: dict[str, float], source: str) -> None:
    """InputError for a percent metric (every key but QbE_mtwv) strictly between 0 and 1 in a user's file:
    the fraction s3prl prints (`test per: 0.054`, `test-EER: 0.05`) or logs (`test at step N: 0.96`)
    copied as it is. No SUPERB system has a published error rate or an accuracy below 1 %, so such a
    value is far likelier a fraction than a percentage; `--percent` accepts it as written."""
    for key, value in metrics.items():
        if key != "QbE_mtwv" and 0.0 < value < 1.0:
            raise InputError(f"{source}: {key} is {value:g}, a fraction? The metric keys are percent: write "
                             f"{100 * value:g} for {100 * value:g} % (or pass --percent if {value:g} % is meant)")


def from_metrics_file(path: Path, percent: bool = False) -> ModelScore:
    """A `--metrics` JSON object: metric keys (docs/superb.md), and optionally `name` (the label). Values
    strictly between 0 and 1 are refused as fractions (`check_not_fractions`) unless `percent`."""
    data = _load_json(path)
    label = data.pop("name", path.stem)
    metrics = check_metrics(data, str(path))
    if not percent:
        check_not_fractions(metrics, str(path))
    return score_model(str(label), metrics)


def from_results_json(path: Path) -> ModelScore:
    """The driver's results.json: its `metrics` object, and each missing task's reason from `tasks`."""
    data = _load_json(path)
    if not isinstance(data.get("metrics"), dict) or not isinstance(data.get("tasks"), dict):
        raise InputError(f"{path}: not a results.json of `s3prl-star superb` (no 'metrics' and 'tasks' objects); "
                         "a plain object of metric keys goes with --metrics")
    reasons = {name: entry.get("reason", entry.get("status", "")) for name, entry in data["tasks"].items()
               if isinstance(entry, dict)}
    notes = [note for entry in data["tasks"].values() if isinstance(entry, dict) for note in entry.get("notes", [])]
    return score_model(path.parent.name, check_metrics(data["metrics"], str(path)), reasons, notes)


def from_out_dir(out: Path) -> ModelScore:
    """Read every task's s3prl outputs under an OUT folder of `s3prl-star superb`."""
    from s3prl_star.superb.results import MalformedOutput, read_out

    try:
        found, missing = read_out(out)
    except MalformedOutput as error:
        raise InputError(str(error)) from None
    metrics = {key: value for result in found.values() for key, value in result.metrics.items()}
    notes = [note for result in found.values() for note in result.notes]
    return score_model(out.resolve().name, check_metrics(metrics, str(out)), missing, notes)


def load_input(path: Path) -> ModelScore:
    if path.is_dir():
        return from_out_dir(path)
    if path.suffix == ".json" or path.is_file():
        return from_results_json(path)
    raise InputError(f"{path}: not found (expected an OUT folder of `s3prl-star superb` or its results.json)")


# --- outputs -----------------------------------------------------------------------------------

def _number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _digits(key: str) -> int:
    return 4 if key == "QbE_mtwv" else 2


def table_rows(models: list[ModelScore]) -> list[list[str]]:
    """Header, one row per metric, then Overall and SUPERB score (partial ones marked)."""
    rows = [["task", "metric", *(model.label for model in models)]]
    for key in METRIC_KEYS:
        rows.append([task_of_metric(key).name, UNITS[key],
                     *(_number(model.metrics.get(key), _digits(key)) for model in models)])

    def total(full: float | None, partial: float | None, digits: int) -> str:
        return _number(full, digits) if partial is None else f"{_number(partial, digits)} (partial)"

    rows.append(["Overall", "", *(total(m.overall, m.partial_overall, 2) for m in models)])
    rows.append(["SUPERB score", "", *(total(m.superb_score, m.partial_superb_score, 1) for m in models)])
    return rows


def footnotes(models: list[ModelScore]) -> list[str]:
    lines = []
    for model in models:
        if model.missing:
            lines.append(f"{model.label}: partial score over {10 - len(model.missing)} of 10 tasks; missing "
                         + "; ".join(f"{task} ({reason})" for task, reason in model.missing.items()))
        lines += [f"{model.label}: {note}" for note in model.notes]
    return lines


def format_text(models: list[ModelScore]) -> str:
    rows = table_rows(models)
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) if column < 2 else cell.rjust(width)
                       for column, (cell, width) in enumerate(zip(row, widths))).rstrip() for row in rows]
    return "\n".join(lines + footnotes(models)) + "\n"


def format_markdown(models: list[ModelScore]) -> str:
    rows = table_rows(models)
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * 2 + "---:|" * len(models)]
    lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    notes = footnotes(models)
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def format_csv(models: list[ModelScore]) -> str:
    """One row per model: label, every metric key, overall, superb_score, partial scores, missing tasks."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = ["model", *METRIC_KEYS, "overall", "superb_score", "partial_overall", "partial_superb_score",
              "missing_tasks"]
    writer.writerow(header)
    for model in models:
        row = [model.label, *(model.metrics.get(key, "") for key in METRIC_KEYS), model.overall, model.superb_score,
               model.partial_overall, model.partial_superb_score, " ".join(model.missing)]
        writer.writerow(["" if value is None else value for value in row])
    return buffer.getvalue()


def as_json(model: ModelScore) -> dict:
    return {"model": model.label, **model.metrics, "overall": model.overall, "superb_score": model.superb_score,
            "partial_overall": model.partial_overall, "partial_superb_score": model.partial_superb_score,
            "missing_tasks": model.missing, "task_points": model.task_points, "notes": model.notes}


def format_json(models: list[ModelScore]) -> str:
    """One model: its object; several: {"models": [...]}."""
    data = as_json(models[0]) if len(models) == 1 else {"models": [as_json(model) for model in models]}
    return json.dumps(data, indent=2) + "\n"


def plot(models: list[ModelScore], path: Path, metrics: bool = False) -> None:
    """Grouped bars of each model's SUPERB points per task (0 = FBANK, 1000 = state of the art), or with
    `metrics` of its raw metric values per metric key (for data other than SUPERB's, such as the
    mini-SUPERB, where the reference points mean nothing), written atomically to `path` (PNG); a
    missing task shows as an empty slot marked 'n/a'."""
    try:
        import matplotlib
    except ImportError:
        raise InputError("--plot needs matplotlib: pip install -e '.[superb]' (or pip install matplotlib)") from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from s3prl_star.atomic import write_atomically

    if metrics:
        names = [key for key in METRIC_KEYS if any(key in model.metrics for model in models)]
        values = [{key: 100.0 * v if key == "QbE_mtwv" else v for key, v in model.metrics.items()} for model in models]
    else:
        names = [task.name for task in TASKS.values()]
        values = [model.task_points for model in models]
    width = 0.8 / len(models)
    figure, axes = plt.subplots(figsize=(10.0, 5.0))
    for index, (model, heights_of) in enumerate(zip(models, values)):
        offsets = [position - 0.4 + width * (index + 0.5) for position in range(len(names))]
        heights = [heights_of.get(name, 0.0) for name in names]
        if metrics:
            label = model.label
        elif model.superb_score is not None:
            label = f"{model.label} (SUPERB score {model.superb_score:.0f})"
        else:
            label = f"{model.label} (partial {_number(model.partial_superb_score, 0)}; missing {', '.join(model.missing)})"
        axes.bar(offsets, heights, width, label=label)
        for offset, name in zip(offsets, names):
            if name not in heights_of:
                axes.text(offset, 0, "n/a", ha="center", va="bottom", fontsize=7, rotation=90)
    axes.axhline(0, color="black", linewidth=0.8)
    axes.set_xticks(range(len(names)), names)
    if metrics:
        axes.set_ylabel("metric (%; QbE: MTWV x 100); error rates: lower is better")
        axes.set_title("Metric per task")
    else:
        axes.axhline(1000, color="grey", linewidth=0.8, linestyle="--")
        axes.text(len(names) - 0.5, 1000, "SOTA", ha="right", va="bottom", fontsize=8, color="grey")
        axes.set_ylabel("SUPERB points (0 = FBANK, 1000 = SOTA)")
        axes.set_title("SUPERB points per task")
    axes.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=min(3, len(models)), frameon=False)
    figure.tight_layout()
    write_atomically(path, lambda temporary: figure.savefig(temporary, format="png", dpi=120))
    plt.close(figure)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="s3prl-star score", description=__doc__.split("\n")[0])
    parser.add_argument("inputs", nargs="*", type=Path, help="OUT folders of `s3prl-star superb`, or their results.json")
    parser.add_argument("--metrics", action="append", type=Path, default=[], metavar="FILE",
                        help="a JSON object of SUPERB metric keys, e.g. {\"ASR_wer\": 6.42} (docs/superb.md; repeatable)")
    parser.add_argument("--percent", action="store_true",
                        help="accept --metrics values between 0 and 1 as percent (refused by default: the "
                             "fractions s3prl prints, e.g. ASV_eer 0.05 for 5 %%)")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print JSON instead of the table")
    output.add_argument("--md", action="store_true", help="print a Markdown table")
    output.add_argument("--csv", action="store_true", help="print CSV, one row per model")
    parser.add_argument("--plot", type=Path, metavar="FILE.png", help="write each model's SUPERB points per task")
    parser.add_argument("--plot-metrics", action="store_true",
                        help="plot the raw metric values instead of SUPERB points (for data other than SUPERB's)")
    args = parser.parse_args(argv)
    if not args.inputs and not args.metrics:
        parser.error("give at least one OUT folder, results.json or --metrics FILE")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        models = ([load_input(path) for path in args.inputs]
                  + [from_metrics_file(path, args.percent) for path in args.metrics])
    except InputError as error:
        print(f"s3prl-star score: {error}", file=sys.stderr)
        return 2
    formatter = format_json if args.json else format_markdown if args.md else format_csv if args.csv else format_text
    sys.stdout.write(formatter(models))
    sys.stdout.flush()  # the table before the plot's message on a shared terminal
    if args.plot:
        try:
            plot(models, args.plot, metrics=args.plot_metrics)
        except InputError as error:
            print(f"s3prl-star score: {error}", file=sys.stderr)
            return 2
        print(f"s3prl-star score: wrote {args.plot}", file=sys.stderr)
    return 0

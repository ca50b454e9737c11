"""What a task's result needs: its learning-rate trials, its folds, which checkpoints get a test evaluation."""
from __future__ import annotations

from pathlib import Path

import yaml

from s3prl_star.superb import results
from s3prl_star.superb.tasks import Selection, Task

LR_GRID = (0.1, 1.0, 10.0)  # --lr-search: these multiples of the recipe's learning rate


def learning_rates(task: Task, lr_search: bool, user_overrides: list[str]) -> list[float]:
    """The learning rate (the last `config.optimizer.lr=` of DATA.yaml's overrides, else the recipe's), or
    with --lr-search the grid around it (ASV: no dev set to choose on)."""
    assigned = [piece.split("=", 1)[1] for text in user_overrides for piece in text.split(",,")
                if piece.split("=", 1)[0].strip() == "config.optimizer.lr"]
    base = float(assigned[-1]) if assigned else float(yaml.safe_load(task.config.read_text())["optimizer"]["lr"])
    if not lr_search or task.selection is Selection.LOWEST_OVER_CHECKPOINTS:
        return [base]
    return [base * factor for factor in LR_GRID]


def evaluates_dev_best(task: Task, submission: bool) -> bool:
    """Whether the dev-best checkpoint gets a test evaluation: always where it gives the metric, and for
    the logged tasks when their prediction file is wanted (the logged one is from the last evaluation)."""
    logged = task.selection in (Selection.LOGGED_AT_DEV_BEST, Selection.FOLDS)
    return task.selection is Selection.EVALUATE_DEV_BEST or (submission and logged)


def needs_predictions(task: Task, submission: bool) -> bool:
    """Whether a finished task must be run again for `--submission`: the tasks whose metric is logged during
    training have their prediction file from the last evaluation until the dev-best one is evaluated."""
    return submission and task.selection in (Selection.LOGGED_AT_DEV_BEST, Selection.FOLDS)


def expdirs(task: Task, trial: Path) -> list[tuple[Path, str | None]]:
    """(experiment folder, fold) of every training of one trial: one per fold, else the trial folder."""
    return [(results.fold_dir(trial, fold), fold) for fold in task.folds] or [(trial, None)]


def fold_overrides(task: Task, fold: str | None) -> list[str]:
    return [f"config.downstream_expert.{task.fold_key}={fold}"] if fold else []

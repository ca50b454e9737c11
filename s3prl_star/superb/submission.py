"""The SUPERB leaderboard submission: each task's test prediction file in `DIR/predict/<task>_public/`,
zipped to `DIR/predict.zip`.

The layout is s3prl's own `s3prl/submit/submit.py` (GitHub, s3prl 0.4.18 tag; documented in
`s3prl/downstream/docs/superb.md`, section "Leaderboard submission"): which file of which expdir
goes where, and the zip of the `predict/` folder that superbbenchmark.org takes. The files are
what s3prl's experts write at their test evaluation; this module copies them from the run each
task's metric was read from (`s3prl_star.superb.results`), so the submission matches results.json.
"""
from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

from s3prl_star.superb import results
from s3prl_star.superb.tasks import TASKS, Selection, Task


def gather(out: Path, directory: Path) -> list[str]:
    """Copy every finished task's prediction files from OUT into `directory/predict/` and zip it to
    `directory/predict.zip`; returns one line per task saying what was included or why not."""
    predict = directory / "predict"
    if predict.exists():
        shutil.rmtree(predict)  # a task no longer finished must not linger in a new submission
    predict.mkdir(parents=True)
    lines = []
    for task in TASKS.values():
        try:
            run = out / results.read_task(out, task).chosen
        except results.MissingOutput as error:
            lines.append(f"submission: {task.name} not included ({error})")
            continue
        unevaluated = [str(path) for path in _logged_runs(task, run) if not (path / results.EVALUATE_DONE).is_file()]
        if unevaluated:
            lines.append(f"submission: {task.name} not included: the dev-best checkpoint of {', '.join(unevaluated)} "
                         f"has no test evaluation (run `s3prl-star superb --tasks {task.key} --submission DIR` again)")
            continue
        copied = _copy_task(task, run, predict)
        lines.append(f"submission: {task.name} " + (f"included ({', '.join(copied)})" if copied else
                                                   f"not included: no prediction file in {run}"))
    _zip(predict, directory / "predict.zip")
    lines.append(f"submission: {directory / 'predict.zip'} is the file to submit")
    return lines


def _logged_runs(task: Task, run: Path) -> list[Path]:
    """The runs whose test prediction file the training left at its last evaluation, not at dev-best:
    they need the driver's dev-best evaluation first (`EVALUATE_DONE`)."""
    if task.selection is Selection.LOGGED_AT_DEV_BEST:
        return [run]
    return [results.fold_dir(run, fold) for fold in task.folds]


def _copy_task(task: Task, run: Path, predict: Path) -> list[str]:
    """Copy the task's prediction files and folders present in `run` (none when no required one is);
    returns the folders written under `predict`."""
    present = [prediction for prediction in task.predictions if (run / prediction.source).exists()]
    if all(prediction.optional for prediction in present):
        return []
    for prediction in present:
        source, target = run / prediction.source, predict / prediction.folder / prediction.target
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
    return list(dict.fromkeys(prediction.folder for prediction in present))


def _zip(folder: Path, path: Path) -> None:
    """The files of `zip -r predict.zip predict/` (entries under `predict/`), written atomically."""
    from s3prl_star.atomic import write_atomically

    def write(temporary: str) -> None:
        with zipfile.ZipFile(temporary, "w", zipfile.ZIP_DEFLATED) as archive:
            for file in sorted(path for path in folder.rglob("*") if path.is_file()):
                archive.write(file, file.relative_to(folder.parent).as_posix())

    write_atomically(path, write)

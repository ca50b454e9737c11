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
from s3prl_star.superb.tasks import ER_FOLDS, TASKS, Selection

# task -> [(file under the chosen run, folder under predict/, name there)], as submit.py copies them.
FILES = {
    "PR": [("test-hyp.ark", "pr_public", "predict.ark")],
    "ASR": [("test-clean-noLM-hyp.ark", "asr_public", "predict.ark")],
    "KS": [("test_predict.txt", "ks_public", "predict.txt")],
    "SID": [("test_predict.txt", "sid_public", "predict.txt")],
    "IC": [("test_predict.csv", "ic_public", "predict.csv")],
    "SF": [("test-hyp.ark", "sf_public", "predict.ark")],
    "ASV": [("test_predict.txt", "sv_public", "predict.txt")],
    "QbE": [("benchmark.stdlist.xml", "qbe_public", "benchmark.stdlist.xml")],
    "ER": [(f"{fold}/test_{fold}_predict.txt", f"er_{fold}_public", "predict.txt") for fold in ER_FOLDS],
}
ASR_WITH_LM = ("test-clean-LM-hyp.ark", "asr_lm_public", "predict.ark")  # only when decoded with an LM


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
        copied = _copy_task(task.name, run, predict)
        lines.append(f"submission: {task.name} " + (f"included ({', '.join(copied)})" if copied else
                                                   f"not included: no prediction file in {run}"))
    _zip(predict, directory / "predict.zip")
    lines.append(f"submission: {directory / 'predict.zip'} is the file to submit")
    return lines


def _logged_runs(task, run: Path) -> list[Path]:
    """The runs whose test prediction file the training left at its last evaluation, not at dev-best:
    they need the driver's dev-best evaluation first (`EVALUATE_DONE`)."""
    if task.selection is Selection.LOGGED_AT_DEV_BEST:
        return [run]
    return [results.fold_dir(run, fold) for fold in ER_FOLDS] if task.selection is Selection.FOLDS else []


def _copy_task(name: str, run: Path, predict: Path) -> list[str]:
    if name == "SD":
        source = run / "scoring" / "predictions"
        if not source.is_dir():
            return []
        shutil.copytree(source, predict / "sd_public" / "scoring" / "predictions")
        if (run / "frame_shift").is_file():
            shutil.copyfile(run / "frame_shift", predict / "sd_public" / "frame_shift")
        return ["sd_public"]
    files = FILES[name] + ([ASR_WITH_LM] if name == "ASR" and (run / ASR_WITH_LM[0]).is_file() else [])
    copied = []
    for source, folder, target in files:
        if (run / source).is_file():
            (predict / folder).mkdir(exist_ok=True)
            shutil.copyfile(run / source, predict / folder / target)
            copied.append(folder)
    return copied


def _zip(folder: Path, path: Path) -> None:
    """The files of `zip -r predict.zip predict/` (entries under `predict/`), written atomically."""
    from s3prl_star.atomic import write_atomically

    def write(temporary: str) -> None:
        with zipfile.ZipFile(temporary, "w", zipfile.ZIP_DEFLATED) as archive:
            for file in sorted(path for path in folder.rglob("*") if path.is_file()):
                archive.write(file, file.relative_to(folder.parent).as_posix())

    write_atomically(path, write)

"""The SUPERB leaderboard submission: each task's test prediction file in `DIR/predict/<task>_public/`,
zipped to `DIR/predict.zip`.

The layout is s3prl's own `s3prl/submit/submit.py` (GitHub, s3prl 0.4.18 tag; documented in
`s3prl/downstream/docs/superb.md`, section "Leaderboard submission"): which file of which expdir
goes where, and the zip of the `predict/` folder that superbbenchmark.org takes. The files are
what s3prl's experts write at their test evaluation; this module copies them from the run each
task's metric was read from (the `chosen` run of its results.json entry), so the submission matches
results.json.

Only files this tool wrote are ever replaced or removed: `DIR/.s3prl-star-submission.json` lists them
with their sha256, and a `DIR/predict/` or `DIR/predict.zip` holding anything else (a file not listed,
one changed since, a link) is refused, naming it, before any task runs (`check_target`) and again
before the files are written. DIR may not be OUT, be inside it or contain it.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import zipfile
from pathlib import Path

from s3prl_star.superb import results
from s3prl_star.superb.tasks import TASKS, Selection, Task

MANIFEST = ".s3prl-star-submission.json"  # {"files": {path relative to DIR: sha256, or null while being written}}
PREDICT, ZIP = "predict", "predict.zip"
LISTED = 5  # files named in a refusal, then a count


class SubmissionError(ValueError):
    """`--submission DIR` cannot be used without touching what s3prl-star did not write; the message names it."""


def check_target(directory: Path, out: Path) -> None:
    """Refuse `--submission DIR` when it is a symbolic link or a file, is OUT, lies inside OUT or contains
    it, or when DIR/predict or DIR/predict.zip holds anything this tool did not write."""
    if directory.is_symlink():
        raise SubmissionError(f"--submission {directory}: a symbolic link (to {os.readlink(directory)}); "
                              "give the folder itself")
    if directory.exists() and not directory.is_dir():
        raise SubmissionError(f"--submission {directory}: not a folder; expected a folder for predict/ and predict.zip")
    real = directory.resolve()
    if real == out or out in real.parents:
        where = "is the output folder" if real == out else "is inside the output folder"
        raise SubmissionError(f"--submission {directory}: {where} {out}; expected a folder outside it")
    if real in out.parents:
        raise SubmissionError(f"--submission {directory}: contains the output folder {out}; "
                              "expected a folder outside it")
    foreign = foreign_files(real)
    if foreign:
        shown = ", ".join(foreign[:LISTED]) + (f" and {len(foreign) - LISTED} more" if len(foreign) > LISTED else "")
        raise SubmissionError(f"--submission {directory}: {shown} not written by s3prl-star (or changed since); "
                              "move them away or choose another folder: nothing of them is replaced or deleted")


def prepare(directory: Path) -> None:
    """Create DIR and its manifest before any task runs, so that an unwritable DIR is found then."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        if not (directory / MANIFEST).exists():
            _write_manifest(directory, {})
    except OSError as error:
        raise SubmissionError(f"--submission {directory}: cannot write there ({error.strerror or error})") from None


def written(directory: Path) -> dict[str, str | None]:
    """{path relative to DIR: sha256 (None: being written when last seen)} of the files this tool wrote in DIR."""
    path = directory / MANIFEST
    if not path.exists():
        return {}
    try:
        files = json.loads(path.read_bytes().decode("utf-8"))["files"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise SubmissionError(f"{path}: unreadable ({type(error).__name__}: {error}); it lists the files s3prl-star "
                              f"wrote in {directory}: restore it, or move {PREDICT} and {ZIP} away") from None
    if not isinstance(files, dict) or not all(isinstance(value, (str, type(None))) for value in files.values()):
        raise SubmissionError(f"{path}: 'files' is not an object of sha256 values; restore it, or move "
                              f"{PREDICT} and {ZIP} away")
    return files


def foreign_files(directory: Path) -> list[str]:
    """What in DIR/predict and DIR/predict.zip this tool did not write (not in the manifest, changed since,
    a link or a special file), relative to DIR; folders count only through what they hold."""
    ours = written(directory)
    found = []
    for path in _entries(directory):
        relative = path.relative_to(directory).as_posix()
        if path.is_symlink() or not path.is_file():
            found.append(f"{relative} (a link or not a plain file)")
        elif relative not in ours or ours[relative] not in (None, _sha256(path)):
            found.append(relative)
    return found


def _entries(directory: Path) -> list[Path]:
    """DIR/predict.zip and everything under DIR/predict that is not a folder (links not followed)."""
    entries = [directory / ZIP] if os.path.lexists(directory / ZIP) else []
    pending = [directory / PREDICT]
    while pending:
        folder = pending.pop()
        if not os.path.lexists(folder):
            continue
        if folder.is_symlink() or not folder.is_dir():
            entries.append(folder)
            continue
        for entry in sorted(folder.iterdir()):
            (pending if entry.is_dir() and not entry.is_symlink() else entries).append(entry)
    return entries


def gather(out: Path, directory: Path, tasks: dict[str, dict]) -> list[str]:
    """Copy the prediction files of every task done in `tasks` (results.json's entries) from OUT into
    `directory/predict/` and zip them to `directory/predict.zip`, replacing what an earlier gather wrote
    there and nothing else (SubmissionError, before anything is written, otherwise); returns one line
    per task saying what was included or why not."""
    check_target(directory, out)
    directory = directory.resolve()
    lines, planned = [], {}
    for task in TASKS.values():
        entry = tasks.get(task.name, {"status": "not run"})
        if entry["status"] != "done":
            lines.append(f"submission: {task.name} not included ({entry['status']}"
                         + (f": {entry['reason']})" if entry.get("reason") else ")"))
            continue
        run = out / entry["chosen"]
        unevaluated = [str(path) for path in _logged_runs(task, run) if not (path / results.EVALUATE_DONE).is_file()]
        if unevaluated:
            lines.append(f"submission: {task.name} not included: the dev-best checkpoint of {', '.join(unevaluated)} "
                         f"has no test evaluation (run `s3prl-star superb --tasks {task.key} --submission DIR` again)")
            continue
        files, folders = _task_files(task, run)
        planned.update(files)
        lines.append(f"submission: {task.name} " + (f"included ({', '.join(folders)})" if folders else
                                                   f"not included: no prediction file in {run}"))
    _replace(directory, planned)
    lines.append(f"submission: {directory / ZIP} is the file to submit")
    return lines


def _replace(directory: Path, planned: dict[str, Path]) -> None:
    """Remove the files an earlier gather wrote, copy `planned` ({relative target: source}) and zip them;
    the manifest marks every file touched as being written first, so a kill midway leaves none unclaimed."""
    ours = written(directory)
    _write_manifest(directory, {**dict.fromkeys(ours), **dict.fromkeys(planned), ZIP: ours.get(ZIP)})
    removed = [directory / relative for relative in ours if relative != ZIP]
    for path in removed:
        path.unlink(missing_ok=True)
    _prune(directory / PREDICT, removed)
    (directory / PREDICT).mkdir(parents=True, exist_ok=True)
    for relative, source in planned.items():
        (directory / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, directory / relative)
    _zip(directory, sorted(planned), directory / ZIP)
    _write_manifest(directory, {relative: _sha256(directory / relative) for relative in [*planned, ZIP]})


def _prune(predict: Path, removed: list[Path]) -> None:
    """Remove the folders under `predict` that held `removed` files and are now empty (never a non-empty one)."""
    folders = {parent for path in removed for parent in path.parents if predict in parent.parents}
    for folder in sorted(folders, key=lambda path: len(path.parts), reverse=True):
        try:
            folder.rmdir()
        except OSError:
            pass  # not empty (or gone): it stays


def _write_manifest(directory: Path, files: dict[str, str | None]) -> None:
    from s3prl_star.atomic import write_atomically

    text = json.dumps({"files": files}, indent=2) + "\n"
    write_atomically(directory / MANIFEST, lambda temporary: Path(temporary).write_text(text))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _logged_runs(task: Task, run: Path) -> list[Path]:
    """The runs whose test prediction file the training left at its last evaluation, not at dev-best:
    they need the driver's dev-best evaluation first (`EVALUATE_DONE`)."""
    if task.selection is Selection.LOGGED_AT_DEV_BEST:
        return [run]
    return [results.fold_dir(run, fold) for fold in task.folds]


def _task_files(task: Task, run: Path) -> tuple[dict[str, Path], list[str]]:
    """({target relative to DIR: source file} of the task's prediction files and folders present in `run`,
    the folders of predict/ they fill); none when no required one is present."""
    present = [prediction for prediction in task.predictions if (run / prediction.source).exists()]
    if all(prediction.optional for prediction in present):
        return {}, []
    files = {}
    for prediction in present:
        source, target = run / prediction.source, f"{PREDICT}/{prediction.folder}/{prediction.target}"
        if source.is_dir():
            files.update({f"{target}/{file.relative_to(source).as_posix()}": file
                          for file in sorted(source.rglob("*")) if file.is_file()})
        else:
            files[target] = source
    return files, list(dict.fromkeys(prediction.folder for prediction in present))


def _zip(directory: Path, files: list[str], path: Path) -> None:
    """The files of `zip -r predict.zip predict/` (entries under `predict/`), of `files` (relative to
    `directory`) only, written atomically."""
    from s3prl_star.atomic import write_atomically

    def write(temporary: str) -> None:
        with zipfile.ZipFile(temporary, "w", zipfile.ZIP_DEFLATED) as archive:
            for relative in files:
                archive.write(directory / relative, relative)

    write_atomically(path, write)

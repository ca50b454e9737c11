"""What produced a task's result: recorded in `OUT/<task>/inputs.json` before the task's first run and
compared on every later one, so that a rerun with other inputs neither reports nor resumes the old runs.

The inputs of a task: the upstream's `-u/-k/-g`, the sha256 of the `-k` and `-g` files' content when they
are local files (a checkpoint rewritten at the same path is caught), the sha256 of the task's recipe, its
DATA.yaml entry (the resolved data paths and its `overrides`), DATA.yaml's common `overrides`, and the
learning rates of its trials (`--lr-search`, a `config.optimizer.lr` override). `--submission` is not an
input: it adds a test evaluation of the dev-best checkpoint for the prediction file, and the metric stays
the one read before. A task whose inputs changed is refused by the driver, naming what changed, until
`--redo TASK` moves its folder aside (`set_aside`: nothing is deleted).
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

from s3prl_star.superb import policy, results
from s3prl_star.superb.runs import Context, write_json
from s3prl_star.superb.tasks import Selection, Task

CONTENT_FLAGS = ("-k", "-g")  # the upstream flags whose file content, not only the path, makes the result
ASIDE = ".old-"  # `--redo ks`: OUT/ks becomes OUT/ks.old-1 (then .old-2, ...)
SHOWN = 120  # characters of one value in a message


@functools.lru_cache(maxsize=None)
def file_sha256(path: str) -> str:
    """The sha256 of a file's content, read once per driver invocation (a checkpoint is hashed once, not per task)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def upstream_content(upstream: list[str]) -> dict[str, str | None]:
    """{flag: sha256 of its file} for `-k` / `-g` (None for a URL or a hub name: only the text is compared)."""
    values = dict(zip(upstream[::2], upstream[1::2]))
    return {flag: file_sha256(values[flag]) if os.path.isfile(values[flag]) else None
            for flag in CONTENT_FLAGS if flag in values}


def task_inputs(ctx: Context, task: Task) -> dict:
    """The inputs of the task's result in this driver invocation, as `inputs.json` records them."""
    entry = ctx.data.get(task.key)
    user = [text for text in (ctx.common_overrides, entry.overrides if entry else "") if text]
    trains = task.selection is not Selection.LAYER_ON_DEV
    return json.loads(json.dumps({  # as read back from the file (tuples become lists)
        "upstream": ctx.upstream,
        "upstream_content_sha256": upstream_content(ctx.upstream),
        "recipe_sha256": file_sha256(str(task.config)),
        "data": entry.paths if entry else None,
        "task_overrides": entry.overrides if entry else None,
        "common_overrides": ctx.common_overrides,
        "learning_rates": policy.learning_rates(task, ctx.lr_search, user) if trains else None,
    }))


def changed_inputs(ctx: Context, task: Task, current: dict) -> str | None:
    """Why the runs in OUT/<task> are not those of the inputs `current` (what changed, or that it is
    unknown), or None when they are (or there are none yet)."""
    folder = results.task_dir(ctx.out, task)
    record = folder / results.INPUTS_FILE
    if not record.exists():
        if folder.is_dir() and any(folder.iterdir()):
            return (f"{folder} has no {results.INPUTS_FILE} (made by an older s3prl-star or by hand): "
                    "what produced its runs is unknown")
        return None
    try:
        recorded = json.loads(record.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        return f"{record} is unreadable ({error}): what produced the runs in {folder} is unknown"
    if not isinstance(recorded, dict):
        return f"{record} is not a JSON object: what produced the runs in {folder} is unknown"
    changes = differences(task, recorded, current)
    return f"{folder} was made with other inputs: {'; '.join(changes)}" if changes else None


def record_inputs(ctx: Context, task: Task, current: dict) -> None:
    """Write the inputs `current` to OUT/<task>/inputs.json (atomically) unless it is there: before the
    task's first run. WriteFailed when it cannot."""
    record = results.task_dir(ctx.out, task) / results.INPUTS_FILE
    if not record.exists():
        write_json(record, current)


def differences(task: Task, recorded: dict, current: dict) -> list[str]:
    """One phrase per input that differs: what it is, then its recorded and its current value."""
    found = []
    for key in sorted(set(recorded) | set(current)):
        old, new = recorded.get(key), current.get(key)
        if old != new:
            found.append(_describe(task, key, old, new))
    return found


def _describe(task: Task, key: str, old, new) -> str:
    if key == "upstream":
        return f"the upstream {_shown(' '.join(old or []))} -> {_shown(' '.join(new or []))}"
    if key == "upstream_content_sha256":
        flags = sorted(set(old or {}) | set(new or {}))
        return "; ".join(f"the content of the {flag} file (sha256 {_digest((old or {}).get(flag))} -> "
                         f"{_digest((new or {}).get(flag))})" for flag in flags
                         if (old or {}).get(flag) != (new or {}).get(flag))
    if key == "recipe_sha256":
        return f"the recipe {task.config} (sha256 {_digest(old)} -> {_digest(new)})"
    if key == "data" and isinstance(old, dict) and isinstance(new, dict):
        names = sorted(name for name in set(old) | set(new) if old.get(name) != new.get(name))
        return "; ".join(f"DATA.yaml {task.key}.{name} {_shown(old.get(name))} -> {_shown(new.get(name))}"
                         for name in names)
    if key == "data":
        return f"DATA.yaml's {task.key} entry {'(none)' if old is None else 'present'} -> {'(none)' if new is None else 'present'}"
    if key in ("task_overrides", "common_overrides"):
        where = f"DATA.yaml {task.key}.overrides" if key == "task_overrides" else "DATA.yaml overrides"
        return f"{where} {_override_change(old, new)}"
    if key == "learning_rates":
        return f"the learning rates (--lr-search, config.optimizer.lr) {_rates(old)} -> {_rates(new)}"
    return f"{key} {_shown(old)} -> {_shown(new)}"


def _override_change(old, new) -> str:
    """The `-o` pieces removed and added ('a=1' -> 'a=2'), or both whole when only their order differs."""
    pieces = [[piece.strip() for piece in (text or "").split(",,") if piece.strip()] for text in (old, new)]
    removed = [piece for piece in pieces[0] if piece not in pieces[1]]
    added = [piece for piece in pieces[1] if piece not in pieces[0]]
    if not removed and not added:
        return f"{_shown(old)} -> {_shown(new)} (reordered)"
    return f"{_shown(',,'.join(removed) or '(none)')} -> {_shown(',,'.join(added) or '(none)')}"


def _rates(rates) -> str:
    return "(none)" if rates is None else "[" + ", ".join(f"{rate:g}" for rate in rates) + "]"


def _digest(value) -> str:
    return "(not a local file)" if value is None else f"{value[:12]}…"


def _shown(value) -> str:
    text = repr(value) if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= SHOWN else text[:SHOWN - 1] + "…"


def set_aside(folder: Path) -> Path:
    """Rename `folder` to the first free `<folder>.old-N` beside it (for `--redo`), and return that name."""
    for number in range(1, 10_000):
        target = folder.with_name(f"{folder.name}{ASIDE}{number}")
        if not target.exists():
            os.rename(folder, target)
            return target
    raise FileExistsError(f"{folder}{ASIDE}1..9999 all exist")

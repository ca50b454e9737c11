"""DATA.yaml: where the user's corpora are, per task, and the `-o` overrides to add (template:
downstream_recipes/data.yaml). Read and checked before any run starts.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from s3prl_star.integration.config_check import ConfigError, check_override
from s3prl_star.superb.tasks import TASKS, Task


class DataError(ValueError):
    """DATA.yaml is malformed; the message names the file and the key."""


@dataclass(frozen=True)
class TaskData:
    """A task's entry of DATA.yaml: its data paths (absolute) and its extra `-o` overrides."""

    paths: dict[str, str | list[str]]
    overrides: str


def _check_overrides(value, where: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataError(f"{where}: expected an s3prl -o string ('config.a.b=v,,config.c=w'), got {value!r}")
    try:  # s3prl evaluates every value: data only, checked before any run starts
        check_override(value.strip() or None, where)
    except ConfigError as error:
        raise DataError(str(error)) from None
    return value.strip()


def _absolute(value, base: Path, where: str):
    if isinstance(value, list) and value and all(isinstance(item, str) for item in value):
        return [_absolute(item, base, where) for item in value]
    if not isinstance(value, str) or not value:
        raise DataError(f"{where}: expected a path (or a list of paths), got {value!r}")
    if ",," in value or "=" in value:
        raise DataError(f"{where}: {value!r} contains ',,' or '=', which s3prl's -o cannot carry")
    return str((base / value).resolve())


def read_data_file(path: Path) -> tuple[str, dict[str, TaskData]]:
    """(overrides for every task, {task key: TaskData}) from DATA.yaml; relative paths are taken from
    its folder. Unknown task names and keys are errors; a task may be absent (it is then skipped)."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise DataError(f"{path}: not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: a folder; expected a DATA.yaml file (template: downstream_recipes/data.yaml)") from None
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text (byte 0x{error.object[error.start]:02x} at offset {error.start}); "
                        "expected a DATA.yaml file (template: downstream_recipes/data.yaml)") from None
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror or error})") from None
    except yaml.YAMLError as error:
        raise DataError(f"{path}: not YAML ({error})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a mapping of task names (and 'overrides')")
    common = _check_overrides(data.pop("overrides", None), f"{path}: overrides")
    entries = {}
    for key, entry in data.items():
        if key not in TASKS:
            raise DataError(f"{path}: unknown task {key!r}; expected some of {', '.join(TASKS)} and 'overrides'")
        if entry is None:
            entry = {}
        if not isinstance(entry, dict):
            raise DataError(f"{path}: {key}: expected a mapping of data keys")
        entry = dict(entry)
        overrides = _check_overrides(entry.pop("overrides", None), f"{path}: {key}.overrides")
        unknown = sorted(set(entry) - set(TASKS[key].data_keys))
        if unknown:
            raise DataError(f"{path}: {key}: unknown key(s) {', '.join(unknown)}; expected "
                            f"{', '.join(TASKS[key].data_keys)} and 'overrides'")
        paths = {name: _absolute(value, path.parent, f"{path}: {key}.{name}") for name, value in entry.items()}
        entries[key] = TaskData(paths, overrides)
    return common, entries


def missing_data(task: Task, entry: TaskData | None, data_file: Path) -> str | None:
    """Why the task's data is not there (naming the key or path looked for), or None."""
    if entry is None:
        return f"{data_file} has no '{task.key}' entry"
    for key in task.data_keys:
        if key not in entry.paths:
            return f"{data_file}: no {task.key}.{key}"
        value = entry.paths[key]
        for path in value if isinstance(value, list) else [value]:
            if not os.path.exists(path):
                return f"{task.key}.{key}: {path} does not exist"
    for path in task.files_needed(entry.paths):
        if not os.path.exists(path):
            return f"{task.key}: {path} does not exist"
    return None


def data_overrides(entry: TaskData) -> list[str]:
    return [f"config.downstream_expert.{key}={value}" for key, value in entry.paths.items()]

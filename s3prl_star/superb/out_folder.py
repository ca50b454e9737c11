"""The output folder of `s3prl-star superb`: made and checked, locked for one driver, and kept to one upstream."""
from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

from s3prl_star.superb.data_file import DataError
from s3prl_star.superb.runs import write_json

SETTINGS_FILE = "superb.json"  # the upstream OUT was made with


def check_settings(out: Path, upstream: list[str]) -> None:
    """OUT belongs to one upstream: refuse to mix another one's runs into it. A damaged superb.json is an
    error (not rewritten: it is what tells which upstream OUT's runs are of)."""
    path = out / SETTINGS_FILE
    if path.is_file():
        stored = _stored_upstream(path)
        if stored != upstream:
            raise DataError(f"{out} holds the runs of {' '.join(stored)}, not {' '.join(upstream)}: use another -o")
    else:
        write_json(path, {"upstream": upstream})


def _stored_upstream(path: Path) -> list[str]:
    """The upstream arguments superb.json records; DataError naming the file when it is damaged."""
    try:
        stored = json.loads(path.read_bytes().decode("utf-8")).get("upstream")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as error:
        stored, why = None, f"{type(error).__name__}: {error}"
    else:
        why = "no list of upstream arguments under 'upstream'"
    if not isinstance(stored, list) or not all(isinstance(item, str) for item in stored):
        raise DataError(f"{path}: unreadable ({why}); it records the upstream {path.parent} holds the runs of: "
                        "restore it, or use another -o")
    return stored


def check_out(out: Path) -> None:
    """`-o` names a folder (made if absent); DataError naming it otherwise."""
    if out.exists() and not out.is_dir():
        raise DataError(f"-o {out}: not a folder; expected an output folder (new, or of an earlier `s3prl-star superb`)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataError(f"-o {out}: cannot create it ({error.strerror or error})") from None


def lock(out: Path) -> int:
    """An exclusive lock on OUT, inherited by the runs this driver starts (so a killed driver's orphans
    still hold it); exits with a message when another driver holds it."""
    try:
        fd = os.open(out / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise DataError(f"-o {out}: cannot create {out / '.lock'} ({error.strerror or error}); "
                        "expected a folder this user can write") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise DataError(f"{out} is in use by another `s3prl-star superb` (or a run it started); "
                        "wait for it or end it first") from None
    os.set_inheritable(fd, True)
    return fd

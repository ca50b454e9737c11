"""Atomic file writes: into a temporary file beside the target, flushed to disk, then renamed over it.

A run killed mid-write (SIGKILL, preemption, a full disk) leaves the previous file intact and no
partial one; the rename is atomic on POSIX file systems.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch


def write_atomically(path, write: Callable[[str], None]) -> None:
    """`write(temporary_path)` in `path`'s folder, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(temporary)
        with open(temporary, "rb") as file:
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)


def save_atomic(obj: Any, path) -> None:
    """`torch.save(obj, path)`, atomically."""
    write_atomically(path, lambda temporary: torch.save(obj, temporary))

"""Atomic file writes: into a temporary file beside the target, flushed to disk, then renamed over it.

A run killed mid-write (SIGKILL, preemption, a full disk) leaves the previous file intact and no
partial one; the rename is atomic on POSIX file systems.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable


def write_atomically(path, write: Callable[[str], None]) -> None:
    """`write(temporary_path)` in `path`'s folder, then rename over `path`.

    The result keeps the mode of the file it replaces, or gets the umask's default for a new file
    (not mkstemp's owner-only 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~_umask()
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(temporary)
        os.chmod(temporary, mode)
        with open(temporary, "rb") as file:
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_atomic(obj: Any, path) -> None:
    """`torch.save(obj, path)`, atomically."""
    import torch  # here, not at the top: `s3prl-star link-s3prl` writes files atomically without torch

    write_atomically(path, lambda temporary: torch.save(obj, temporary))

"""s3prl's runners prune old checkpoints with `os.remove` *before* writing the new one in place with
`torch.save`: with `max_keep: 1`, a kill during the write leaves only a truncated file. Without forking
the runners, `install` replaces the two names their module calls:
- `torch.save` writes atomically (`s3prl_star.atomic`) and checks that the file reads back complete;
- `os.remove` of a `states-*.ckpt` is deferred until the next checkpoint is complete.
"""
from __future__ import annotations

import fnmatch
import os
import types
from pathlib import Path
from typing import Any

import torch

from s3prl_star.atomic import save_atomic
from s3prl_star.integration.resume import CHECKPOINT_PATTERN, checkpoint_problem


class CheckpointFiles:
    """`torch.save` and `os.remove` as a runner module sees them: atomic, verified saves (none when
    `writes` is False, e.g. on DDP ranks > 0), and checkpoint deletions done only once the next
    checkpoint is complete."""

    def __init__(self, writes: bool = True):
        self.writes = writes
        self.pending_removals: list[str] = []

    def remove(self, path: str) -> None:
        if fnmatch.fnmatch(os.path.basename(path), CHECKPOINT_PATTERN):
            self.pending_removals.append(path)
        else:
            os.remove(path)

    def save(self, obj: Any, path: str) -> None:
        if not self.writes:
            return
        save_atomic(obj, path)
        problem = checkpoint_problem(path)
        if problem is not None:
            raise OSError(f"checkpoint {path} did not read back after writing: {problem}; older checkpoints kept")
        if fnmatch.fnmatch(os.path.basename(path), CHECKPOINT_PATTERN):
            for old in self.pending_removals:
                if os.path.abspath(old) != os.path.abspath(path):
                    Path(old).unlink(missing_ok=True)
            self.pending_removals.clear()


class _ModuleWith(types.ModuleType):
    """`base` with some attributes replaced (what a runner module's global `torch` / `os` become)."""

    def __init__(self, base: types.ModuleType, **replaced: Any):
        super().__init__(base.__name__)
        self.__dict__.update(replaced)
        self._base = base

    def __getattr__(self, name: str) -> Any:
        return getattr(self._base, name)


def install(runner_module: types.ModuleType, writes: bool = True) -> CheckpointFiles:
    """Route `runner_module`'s `torch.save` and `os.remove` through a `CheckpointFiles`."""
    files = CheckpointFiles(writes)
    runner_module.torch = _ModuleWith(torch, save=files.save)
    runner_module.os = _ModuleWith(os, remove=files.remove)
    return files

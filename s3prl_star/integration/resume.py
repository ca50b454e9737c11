"""Resuming s3prl's runners from their `states-*.ckpt` files so that no kill loses a run.

They are written atomically by `s3prl_star.integration.patches.runner_checkpoints`. Resuming
(`resume_argv`: `-a`, or `-e DIR`) takes the newest checkpoint that reads back complete, says which
newer ones it skipped and why, and removes the temporary files killed writes left.
"""
from __future__ import annotations

import glob
import os
import sys
import zipfile
from pathlib import Path
from typing import Sequence

from s3prl_star.integration.argv import flag_value

CHECKPOINT_PATTERN = "states-*.ckpt"
# `write_atomically`'s temporary names for a `NAME.ckpt` target: `.NAME.ckpt.<random>.tmp`
TEMPORARY_PATTERN = ".*.ckpt.*.tmp"


class ResumeError(RuntimeError):
    """Nothing can be resumed from what `-a` / `-e DIR` points at."""


def checkpoint_step(path: str) -> int:
    """The number s3prl's runners sort checkpoints by (after the last '-'; `states-epoch-200` is 200)."""
    return int(os.path.basename(path).split("-")[-1].split(".")[0])


def checkpoint_problem(path: str | os.PathLike) -> str | None:
    """None when `path` is a complete torch checkpoint (a zip whose every member matches its CRC),
    else what is wrong. `torch.load` itself does not check CRCs: a flipped byte loads silently."""
    try:
        with zipfile.ZipFile(path) as archive:
            corrupt = archive.testzip()
    except (OSError, zipfile.BadZipFile, EOFError) as error:
        return f"incomplete or not a torch checkpoint ({error})"
    if corrupt is not None:
        return f"corrupt: its member {corrupt} fails its CRC check"
    return None


def newest_readable(directory: str | os.PathLike) -> tuple[str | None, list[tuple[str, str]]]:
    """The newest `states-*.ckpt` of `directory` (s3prl's order) that reads back complete, or None,
    and the newer ones skipped, each with its problem."""
    skipped = []
    for path in sorted(glob.glob(os.path.join(directory, CHECKPOINT_PATTERN)), key=checkpoint_step, reverse=True):
        problem = checkpoint_problem(path)
        if problem is None:
            return path, skipped
        skipped.append((path, problem))
    return None, skipped


def remove_stale_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporary checkpoint files that killed writes left in `directory`; returns them."""
    stale = sorted(Path(directory).glob(TEMPORARY_PATTERN))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def resume_argv(argv: Sequence[str], default_expdir: str, command: str, clean: bool = True) -> list[str]:
    """`argv` with what s3prl would resume from made explicit and safe: `-e DIR` becomes its newest
    readable checkpoint; `-a` with checkpoints in the experiment folder (`-p`, else `default_expdir`)
    becomes `-e` that checkpoint. Skipped files are named on stderr; with `clean`, stale temporaries
    are removed from the folder resumed. Raises ResumeError when nothing readable is left, or when
    `-a` finds nothing to resume and no `-u` to start a new experiment with."""
    argv = list(argv)
    past = flag_value(argv, ("-e", "--past_exp"))
    auto = any(token in ("-a", "--auto_resume") for token in argv)
    if past is not None and os.path.isdir(past[2]):
        directory = past[2]
    elif past is None and auto:
        expdir = flag_value(argv, ("-p", "--expdir"))
        directory = expdir[2] if expdir else default_expdir
    else:
        return argv
    if clean and os.path.isdir(directory):
        for path in remove_stale_temporaries(directory):
            print(f"{command}: removed {path}, a temporary file of a checkpoint write that was killed", file=sys.stderr)
    checkpoint, skipped = newest_readable(directory)
    for path, problem in skipped:
        print(f"{command}: skipping {path}: {problem}", file=sys.stderr)
    if checkpoint is None and skipped:
        raise ResumeError(f"no readable checkpoint in {directory}: every {CHECKPOINT_PATTERN} is damaged (above); "
                          "move them away to start a new experiment")
    if checkpoint is None and past is not None:
        raise ResumeError(f"-e {directory}: no {CHECKPOINT_PATTERN} in this folder")
    if checkpoint is None:
        if flag_value(argv, ("-u", "--upstream")) is None:
            raise ResumeError(f"-a: nothing to resume in {directory} (no {CHECKPOINT_PATTERN}) and no -u "
                              "to start a new experiment with")
        print(f"{command}: -a: no checkpoint in {directory}; starting a new experiment", file=sys.stderr)
        return argv
    print(f"{command}: using {checkpoint}, the newest readable checkpoint in {directory}", file=sys.stderr)
    if past is not None:
        argv[past[0]] = past[1] + checkpoint
        return argv
    return [token for token in argv if token not in ("-a", "--auto_resume")] + ["-e", checkpoint]

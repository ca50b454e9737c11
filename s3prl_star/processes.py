"""The one way this package runs its own commands as subprocesses: `s3prl-star SUBCOMMAND ...`, its output
kept in files, its progress followed from tqdm's bars, and a failure that quotes the error.

The suite driver runs one `s3prl-star downstream` per training or evaluation, the demo one subcommand
per stage; both go through `run_cli`.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

# tqdm's bar: "overall:  42%|####      | 42/100 [00:10<00:14, 4.1it/s]"
PROGRESS = re.compile(r"(?P<desc>[\w-]+):\s+(?P<percent>\d+)%\|[^|]*\|\s*(?P<n>\d+)/(?P<total>\d+)"
                      r" \[(?P<elapsed>[\d:]+)<(?P<left>[\d:?]+)")
_CURSOR_CODES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@dataclass(frozen=True)
class Progress:
    """One state of a tqdm bar: its description, steps done and in all, percent, time left."""

    desc: str
    n: int
    total: int
    percent: int
    left: str

    def __str__(self) -> str:
        return f"{self.desc} step {self.n}/{self.total} ({self.percent}%), {self.left} left"


def last_progress(text: str, skip: Sequence[str] = ()) -> Progress | None:
    """The last tqdm bar state in `text` whose description is not in `skip`."""
    for segment in reversed(re.split(r"[\r\n]", text)):
        match = PROGRESS.search(segment)
        if match and match["desc"] not in skip:
            return Progress(match["desc"], int(match["n"]), int(match["total"]), int(match["percent"]), match["left"])
    return None


def _lines(text: str) -> list[str]:
    """The non-blank lines of `text`, tqdm's updates (carriage returns) and cursor codes counted as line ends."""
    return [line.strip() for line in re.split(r"[\r\n]", _CURSOR_CODES.sub("", text)) if line.strip()]


def last_line(text: str) -> str:
    """The last non-blank line (or tqdm update) of `text`."""
    lines = _lines(text)
    return lines[-1] if lines else ""


def error_line(text: str) -> str:
    """What a failed command said last: its last line that is not a progress bar (after a traceback, the
    exception and its message), at most 300 characters."""
    said = [line for line in _lines(text) if not PROGRESS.search(line)]
    return said[-1][:300] if said else ""


def tail(path: Path, size: int = 65536) -> str:
    """The last `size` bytes of `path`, decoded ("" when it does not exist)."""
    if not path.is_file():
        return ""
    with path.open("rb") as file:
        file.seek(max(0, path.stat().st_size - size))
        return file.read().decode(errors="replace")


class CommandFailed(RuntimeError):
    """A subcommand exited with a non-zero status; the message names it, its log and its last error line."""

    def __init__(self, command: str, returncode: int, log: Path | None, said: str):
        where = f"; its output: {log}" if log is not None else ""
        super().__init__(f"`{command}` exited with {returncode}{where}" + (f": {said}" if said else ""))
        self.returncode, self.log, self.said = returncode, log, said


RUNNING: set[subprocess.Popen] = set()
_RUNNING_LOCK = threading.Lock()


def terminate_running() -> None:
    """Ask every subcommand still running to stop (SIGTERM), e.g. when another stage failed."""
    with _RUNNING_LOCK:
        for process in list(RUNNING):
            process.terminate()


def run_cli(args: Sequence[str], *, stdout: Path | None = None, stderr: Path | None = None, append: bool = False,
            env: Mapping[str, str] | None = None, cwd: Path | None = None,
            on_progress: Callable[[Progress], None] | None = None, progress_skip: Sequence[str] = (),
            pass_fds: Sequence[int] = ()) -> None:
    """Run `s3prl-star ARGS` (this Python's `-m s3prl_star.cli`) to its end.

    stdout goes to the file `stdout` (appended after a line naming the command when `append`), or to this
    process's stdout when None; stderr to the file `stderr`, or with stdout when None. `on_progress` is
    called with each new state of the last tqdm bar the command writes (bars named in `progress_skip`
    left out, e.g. s3prl's per-epoch `train` bar). `env` adds to this process's environment.
    Raises CommandFailed on a non-zero exit, quoting the last line the command wrote that is not a
    progress bar."""
    command = [sys.executable, "-m", "s3prl_star.cli", *args]
    shown = "s3prl-star " + " ".join(args)
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    for path in (stdout, stderr):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
    mode = "ab" if append else "wb"
    out = open(stdout, mode) if stdout is not None else None
    err = open(stderr, mode) if stderr is not None else None
    try:
        if append and out is not None:
            out.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} $ {shown}\n".encode())
            out.flush()
        followed = err if err is not None else out  # the file the followed stream is copied to (None: terminal)
        process = subprocess.Popen(
            command, cwd=cwd, env=environment, pass_fds=tuple(pass_fds),
            stdout=out if err is not None else subprocess.PIPE,
            stderr=subprocess.PIPE if err is not None else subprocess.STDOUT,
        )
        with _RUNNING_LOCK:
            RUNNING.add(process)
        try:
            stream = process.stderr if err is not None else process.stdout
            recent = _follow(stream, followed, on_progress, progress_skip)
            returncode = process.wait()
        finally:
            with _RUNNING_LOCK:
                RUNNING.discard(process)
    finally:
        for file in (out, err):
            if file is not None:
                file.close()
    if returncode != 0:
        raise CommandFailed(shown, returncode, stderr or stdout, error_line(recent))


def _follow(stream, copy_to, on_progress: Callable[[Progress], None] | None, skip: Sequence[str]) -> str:
    """Copy `stream` to `copy_to` (a binary file, or this process's stdout when None) until it ends,
    calling `on_progress` on each new bar state; returns the last 64 KiB written."""
    sink = copy_to if copy_to is not None else sys.stdout.buffer
    recent, last = b"", None
    while chunk := stream.read1(65536):
        sink.write(chunk)
        sink.flush()
        recent = (recent + chunk)[-65536:]
        if on_progress is not None:
            progress = last_progress(recent[-4096:].decode(errors="replace"), skip)
            if progress is not None and progress != last:
                last = progress
                on_progress(progress)
    return recent.decode(errors="replace")

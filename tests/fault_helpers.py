"""Fault injection shared by the tests/test_faults_*.py files: small or read-only file systems, a
process killed while a file it writes is open, damaged files.

Root ignores file modes, so as root a read-only folder is a read-only tmpfs mount; a full disk is a
small tmpfs mount, which needs root (the test is skipped, saying so, where `mount` is refused).
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest


@contextlib.contextmanager
def tmpfs(path: Path, size_kib: int, read_only: bool = False):
    """A tmpfs of `size_kib` KiB mounted on `path` for the duration; skips the test without mount rights."""
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size_kib}k" + (",ro" if read_only else "")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs on this machine (needs root): {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


@contextlib.contextmanager
def read_only_folder(path: Path):
    """An empty folder no file can be created in: mode 0555, or a read-only tmpfs for root."""
    if os.geteuid() == 0:
        with tmpfs(path, 64, read_only=True):
            yield path
        return
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o555)
    try:
        yield path
    finally:
        path.chmod(0o755)


def kill_while_writing(process: subprocess.Popen, folder: Path, temporary: str, complete: str,
                       timeout: float = 300) -> Path:
    """SIGKILL `process` as soon as a file matching `temporary` appears in `folder` while one matching
    `complete` already exists (a save in progress with an earlier one done); returns the temporary
    file seen. Fails if the process exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, (f"the run exited ({process.returncode}) before a save was seen in progress "
                                        "beside a complete earlier checkpoint")
        if folder.is_dir():
            writing = sorted(folder.glob(temporary))
            if writing and any(folder.glob(complete)):
                process.send_signal(signal.SIGKILL)
                assert process.wait() == -signal.SIGKILL
                return writing[0]
        time.sleep(0.001)
    process.kill()
    raise AssertionError(f"no {temporary} in {folder} after {timeout} s")


def truncate_to_half(path: Path) -> None:
    """Keep the first half of `path` (a write cut short)."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def corrupt_middle(path: Path, count: int = 64) -> None:
    """Flip `count` bytes in the middle of `path`; its size and both ends stay intact."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    for index in range(middle, middle + count):
        data[index] ^= 0x5A
    path.write_bytes(bytes(data))

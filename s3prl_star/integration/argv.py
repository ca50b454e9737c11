"""Reading the command lines of s3prl's runners (`run_pretrain.py`, `run_downstream.py`), which this
package's wrappers take unchanged and pass on: the value of a flag, and the device a run will use.
"""
from __future__ import annotations

from typing import Sequence


def flag_value(argv: Sequence[str], flags: tuple[str, ...]) -> tuple[int, str, str] | None:
    """(index of the token holding the value, the text before the value in it, value) of the last of
    `flags` in argv (`-f V` or `-f=V`), else None."""
    found = None
    for index, token in enumerate(argv):
        flag, equals, value = token.partition("=")
        if flag in flags:
            if equals:
                found = (index, flag + equals, value)
            elif index + 1 < len(argv):
                found = (index + 1, "", argv[index + 1])
    return found


class NoCudaError(RuntimeError):
    """A run would use CUDA on a machine without it."""


def check_device(argv: Sequence[str], command: str, stored: str | None = None) -> None:
    """Refuse, naming the flag, a run whose device is CUDA where torch sees none: s3prl's runners default
    to `--device cuda` and would stop with torch's bare "Found no NVIDIA driver". `stored` is the device a
    resumed checkpoint's arguments hold, which `run_pretrain.py` uses over the command line."""
    import torch

    given = flag_value(argv, ("--device",))
    device = stored if stored is not None else given[2] if given is not None else "cuda"
    if device.startswith("cuda") and not torch.cuda.is_available():
        origin = ("the resumed checkpoint's arguments" if stored is not None else
                  "--device" if given is not None else "s3prl's default, as no --device was given")
        raise NoCudaError(f"{command}: the run would use {device} ({origin}), but torch finds no CUDA device on "
                          "this machine; add --device cpu" + (" (a resumed run keeps its device: resume it on a "
                                                              "machine with a GPU)" if stored is not None else ""))

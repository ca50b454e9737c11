"""Student checkpoints: the formats `load_student` reads, weights-only (docs/checkpoints.md).

- this project's distiller checkpoint (s3prl's `states-<step>.ckpt`): `{"Student": {"config", "state_dict"}, ...}`;
- a plain student file written by `save_student`: `{"config", "state_dict"}`;
- a released STaRHuBERT Lightning `.ckpt` (+ its `.yaml`), converted by `s3prl_star.model.released`.
Every file is read with `torch.load(weights_only=True)`: no pickled code runs.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from s3prl_star.atomic import save_atomic
from s3prl_star.model.config import StarHubertConfig
from s3prl_star.model.released import (RELEASED_PICKLED_CLASSES, ReleasedTrainingObject, convert_released_state_dict, released_config)
from s3prl_star.model.star_hubert import StarHubert


class CheckpointError(ValueError):
    """A file cannot be read as a weights-only checkpoint (truncated, not a torch file, or a pickle that
    would run code), or holds a value this project will not hand to code that evaluates it; the message
    names the file (and the key). Commands report it in one line and exit with status 2."""


def read_checkpoint(path) -> dict:
    """`torch.load(weights_only=True)` of a checkpoint dict; s3prl's runners also pickle their `Namespace`
    args, released checkpoints s3prl's LR schedules (`RELEASED_PICKLED_CLASSES`). Raises CheckpointError
    for anything else, so a crafted pickle never runs."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path}: no such file")
    # safe_globals removes what it added on exit: add Namespace only if nobody (patches.apply) has
    allowed = [] if argparse.Namespace in torch.serialization.get_safe_globals() else [argparse.Namespace]
    allowed += [(ReleasedTrainingObject, f"s3prl.optimizers.{name}") for name in RELEASED_PICKLED_CLASSES]
    try:
        with torch.serialization.safe_globals(allowed):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated files, foreign pickles
        raise CheckpointError(f"checkpoint {path}: cannot be read as a weights-only torch checkpoint "
                              f"({load_failure(error)})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path}: expected a dict, found {type(state).__name__}")
    return state


def load_failure(error: Exception) -> str:
    """Why `torch.load(weights_only=True)` failed, in one line and without torch's advice to load
    unsafely: a pickle naming a global it does not allow (code a crafted file would run), a truncated
    or foreign file."""
    message = str(error).strip()
    if "WeightsUnpickler error:" in message:
        lines = [line.strip() for line in message.split("WeightsUnpickler error:", 1)[1].splitlines()]
        detail = next((line for line in lines if line), "").split(". Please use")[0]
        return f"a pickle of objects other than tensors and plain data, which is not run ({detail})"
    first = message.splitlines()[0].split(". ")[0] if message else ""
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def save_student(path, model: StarHubert) -> None:
    save_atomic({"config": model.config.to_dict(), "state_dict": model.state_dict()}, path)


def load_student(path, model_config=None) -> StarHubert:
    """A student in eval mode from any supported checkpoint; `model_config` is a released `.yaml` (or None)."""
    state = read_checkpoint(path)
    if "Student" in state:
        student = state["Student"]
        config = StarHubertConfig.from_dict(student["config"], source=f"{path} Student.config")
        weights = student["state_dict"]
    elif "config" in state and "state_dict" in state:
        config = StarHubertConfig.from_dict(state["config"], source=f"{path} config")
        weights = state["state_dict"]
    elif "state_dict" in state and any(key.startswith("student_model.") for key in state["state_dict"]):
        config = released_config(path, state, model_config)
        weights = convert_released_state_dict(state["state_dict"], source=str(path))
    else:
        raise ValueError(
            f"checkpoint {path}: not a STaRHuBERT checkpoint; expected 'Student' (distiller), "
            f"'config' + 'state_dict' (student file) or a Lightning 'state_dict' with 'student_model.' keys, "
            f"found keys {sorted(state)}"
        )
    model = StarHubert(config)
    load_state_dict_strict(model, weights, source=str(path))
    return model.eval()



def load_state_dict_strict(model: StarHubert, state_dict: dict, source: str = "checkpoint") -> None:
    """`load_state_dict(strict=True)` with an error listing missing, unexpected and mis-shaped keys, or the
    tensors holding NaN or infinite values (a diverged run must not load silently)."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mis_shaped = [
        f"{key}: checkpoint {tuple(state_dict[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in sorted(set(expected) & set(state_dict))
        if tuple(state_dict[key].shape) != tuple(expected[key].shape)
    ]
    if missing or unexpected or mis_shaped:
        raise ValueError(
            f"{source}: state dict does not match the StarHubert config"
            + (f"\n  missing keys: {missing}" if missing else "")
            + (f"\n  unexpected keys: {unexpected}" if unexpected else "")
            + (f"\n  shape mismatches: {mis_shaped}" if mis_shaped else "")
        )
    non_finite = [key for key in sorted(expected) if not bool(torch.isfinite(state_dict[key]).all())]
    if non_finite:
        raise ValueError(f"{source}: NaN or infinite values in weight tensor(s) {non_finite}")
    model.load_state_dict(state_dict, strict=True)

"""Student checkpoints: the formats this project writes and the released STaRHuBERT ones, kept apart from the model.

Formats read by `load_student`:
- this project's distiller checkpoint (s3prl's `states-<step>.ckpt`): `{"Student": {"config", "state_dict"}, ...}`;
- a plain student file written by `save_student`: `{"config", "state_dict"}`;
- a released STaRHuBERT PyTorch-Lightning `.ckpt` (STAR_SPEC.md section 1): `state_dict` with
  `student_model.` / `teacher_model.model.` prefixes; the model shape from its `.yaml` (`distiller:`)
  or, failing that, the training yaml stored under `hyper_parameters`.
Every file is read with `torch.load(weights_only=True)`: no arbitrary pickle runs.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from s3prl_star.atomic import save_atomic
from s3prl_star.model import StarHubert, StarHubertConfig

# Released Lightning key rules, applied in order; each maps a source prefix to a student prefix.
_RELEASED_KEY_RULES = (
    ("student_model.final_proj.", None),  # HuBERT-style prediction head: not part of the encoder
    ("student_model.", ""),  # the student, fairseq names
    ("teacher_model.", None),  # the frozen teacher the student was distilled from
)
# torch's parametrized weight norm names for the positional conv, as fairseq's old ones.
_WEIGHT_NORM_RENAMES = {
    "encoder.pos_conv.0.parametrizations.weight.original0": "encoder.pos_conv.0.weight_g",
    "encoder.pos_conv.0.parametrizations.weight.original1": "encoder.pos_conv.0.weight_v",
}


def read_checkpoint(path) -> dict:
    """`torch.load(weights_only=True)` of a checkpoint dict; s3prl's runners also pickle their `Namespace` args."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path}: no such file")
    # safe_globals removes what it added on exit: add Namespace only if nobody (compat.apply) has
    allowed = [] if argparse.Namespace in torch.serialization.get_safe_globals() else [argparse.Namespace]
    try:
        with torch.serialization.safe_globals(allowed):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated files, foreign pickles
        raise ValueError(f"checkpoint {path}: cannot be read as a weights-only torch checkpoint ({error})") from None
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path}: expected a dict, found {type(state).__name__}")
    return state


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
        config = _released_config(path, state, model_config)
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


def _released_config(path, state: dict, model_config) -> StarHubertConfig:
    if model_config is not None:
        return StarHubertConfig.from_distiller_yaml(model_config)
    stored = state.get("hyper_parameters", {})
    stored = stored.get("cfg", stored) if isinstance(stored, dict) else None
    if isinstance(stored, dict) and isinstance(stored.get("distiller"), dict):
        return StarHubertConfig.from_distiller_yaml(stored)
    raise ValueError(
        f"checkpoint {path}: a released Lightning checkpoint without a 'distiller' config in its "
        f"hyper_parameters; pass the model's .yaml (s3prl: -g / --upstream_model_config)"
    )


def convert_released_state_dict(state_dict: dict, source: str = "checkpoint") -> dict:
    """Released Lightning `state_dict` -> the student's own keys (rules in `_RELEASED_KEY_RULES`)."""
    converted, unknown = {}, []
    for key, value in state_dict.items():
        for prefix, replacement in _RELEASED_KEY_RULES:
            if key.startswith(prefix):
                if replacement is not None:
                    name = replacement + key[len(prefix):]
                    converted[_WEIGHT_NORM_RENAMES.get(name, name)] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"{source}: unexpected keys outside student_model./teacher_model.: {unknown[:10]}")
    return converted


def load_state_dict_strict(model: StarHubert, state_dict: dict, source: str = "checkpoint") -> None:
    """`load_state_dict(strict=True)` with an error listing missing, unexpected and mis-shaped keys."""
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
    model.load_state_dict(state_dict, strict=True)

"""Released STaRHuBERT checkpoints (docs/checkpoints.md): their training template and Lightning keys,
converted to this project's `StarHubertConfig` and state dict, kept apart from the model.

A released `.ckpt` is a PyTorch-Lightning checkpoint: `state_dict` with `student_model.` /
`teacher_model.model.` prefixes; the model shape is the `distiller:` section of its `.yaml` or, failing
that, of the same training template stored under `hyper_parameters`.
"""
from __future__ import annotations

import ast
from typing import Any, Callable

import yaml

from s3prl_star.model.config import ConvLayers, StarHubertConfig

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


# --- the released training template --------------------------------------------------------------
# The released `.yaml`, and the `cfg` under the `.ckpt`'s `hyper_parameters`, is the whole training
# template of the code STaR was built on (ARMHuBERT's `train.py`): the sections below, `model` (the
# model name train.py adds), and `distiller:` rewritten at start with every field of the student's
# config dataclass (`CustomStudentModelConfig`; ARMHuBERT's has more fields than STaRHuBERT's).
# Only `distiller:` describes the student.
RELEASED_SECTIONS = frozenset({"teacher", "train", "distiller", "optimizer", "data", "specaug", "model"})
# distiller fields that are StarHubertConfig fields under another name
_RENAMED_DISTILLER_FIELDS = {"conv_feature_layers": "conv_layers"}


def _no_attention_reuse(pattern) -> bool:
    """ARMHuBERT's `reuse_pattern`, a per-layer list of bools written as a string: no layer reuses."""
    try:
        layers = ast.literal_eval(pattern) if isinstance(pattern, str) else pattern
    except (ValueError, SyntaxError):
        return False
    return isinstance(layers, list) and not any(layers)


# distiller fields that shape the network, where this student implements one value: (accepts, expected)
_FIXED_DISTILLER_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "activation_fn": (lambda value: value == "gelu", "'gelu'"),
    "layer_type": (lambda value: value == "transformer", "'transformer' (conformer layers are not implemented)"),
    "pos_conv_depth": (lambda value: value == 1, "1 (one weight-normed positional conv)"),
    "crop_seq_to_multiple": (lambda value: value == 1, "1 (no frames cropped)"),
    "enable_tr_layer": (lambda value: value is False, "false (the time-reduction layer is not implemented)"),
    "reuse_pattern": (_no_attention_reuse, "no true entry (attention-map reusing is not implemented)"),
}
# distiller fields that do not change what a trained student computes: training-time options,
# distillation heads (their weights, if saved, fail the strict load), initialisation from the teacher,
# padding that is masked and undone (`required_seq_len_multiple`), and options that only matter for a
# value refused above (conformer, time-reduction layer).
_TRAINING_ONLY_DISTILLER_FIELDS = frozenset(
    """feature_grad_mult layer_grad_scale encoder_layerdrop checkpoint_activations max_positions
    required_seq_len_multiple final_dim pred_head_final_dim pred_head_inter_dim pred_layer_id layerwise_proj
    init_conv_layers init_encoder_layers freeze_student_mask update_teacher_mask
    depthwise_conv_kernel_size attn_type pos_enc_type fp16
    tr_conv1d_kernel tr_layer_index tr_reduce_factor tr_layer_type""".split()
)
# Classes the released `.ckpt` pickles besides tensors: s3prl's LR schedule objects, which its
# `AdamW_with_schedule` optimizer keeps in every param group (so in `optimizer_states`). They are
# unpickled as an inert stand-in: only their attributes are restored and no s3prl code runs.
RELEASED_PICKLED_CLASSES = (
    "ConstantLR", "WarmupCosineSchedule", "WarmupConstantSchedule", "WarmupLinearSchedule",
    "WarmupCosineWithHardRestartsSchedule", "WarmupCosineWithWarmupRestartsSchedule",
)


class ReleasedTrainingObject:
    """What a pickled s3prl LR schedule in a released checkpoint's optimizer state loads as."""



MAX_CONV_LAYERS = 1024  # fairseq's extractors have 7; a crafted "[...] * 10**9" must not take the memory


def parse_conv_layers(text: str) -> ConvLayers:
    """Parse fairseq's `"[(512,10,5)] + [(512,3,2)] * 4"` notation without `eval`."""

    def value(node):
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            return [value(element) for element in node.elts]
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            left, right = value(node.left), value(node.right)
            if isinstance(node.op, ast.Add):
                return left + right
            items, count = (left, right) if isinstance(left, list) else (right, left)
            if isinstance(items, list) and isinstance(count, int) and len(items) * count > MAX_CONV_LAYERS:
                raise ValueError(f"conv layers {text!r}: more than {MAX_CONV_LAYERS} entries")  # memory
            return left * right
        raise ValueError(f"conv layers {text!r}: only int lists and tuples joined by + and * are allowed")

    try:
        layers = value(ast.parse(text, mode="eval").body)
    except SyntaxError:
        raise ValueError(f"conv layers {text!r}: not a list expression") from None
    if not isinstance(layers, list) or not all(isinstance(layer, list) and len(layer) == 3 for layer in layers):
        raise ValueError(f"conv layers {text!r}: expected a list of (channels, kernel, stride)")
    return tuple(tuple(layer) for layer in layers)



def released_config(path, state: dict, model_config) -> StarHubertConfig:
    """From the released `.yaml` when given, else from the template Lightning saved as `hyper_parameters["cfg"]`."""
    if model_config is not None:
        with open(model_config) as file:
            return released_student_config(yaml.safe_load(file), source=str(model_config))
    stored = state.get("hyper_parameters", {})
    stored = stored.get("cfg", stored) if isinstance(stored, dict) else None
    if isinstance(stored, dict) and isinstance(stored.get("distiller"), dict):
        return released_student_config(stored, source=f"{path} hyper_parameters.cfg")
    raise ValueError(
        f"checkpoint {path}: a released Lightning checkpoint without a 'distiller' config in its "
        f"hyper_parameters; pass the model's .yaml (s3prl: -g / --upstream_model_config)"
    )


def released_student_config(template: Any, source: str = "released config") -> StarHubertConfig:
    """The student's shape from a released training template (a loaded `.yaml` or the `.ckpt`'s cfg).

    Every `distiller:` field is known: StarHubertConfig fields are taken, fields that shape the network
    must hold the value this student implements (`_FIXED_DISTILLER_FIELDS`), training-only fields are
    ignored; anything else, and an unknown top-level section, is an error naming it."""
    if not isinstance(template, dict) or not isinstance(template.get("distiller"), dict):
        raise ValueError(f"{source}: expected a released training template, a mapping with a 'distiller:' section")
    unknown = sorted(set(template) - RELEASED_SECTIONS)
    if unknown:
        raise ValueError(f"{source}: unknown top-level section(s) {unknown}; expected {sorted(RELEASED_SECTIONS)}")
    fields = {}
    for key, value in template["distiller"].items():
        if key in _TRAINING_ONLY_DISTILLER_FIELDS:
            continue
        if key in _FIXED_DISTILLER_FIELDS:
            accepts, expected = _FIXED_DISTILLER_FIELDS[key]
            if not accepts(value):
                raise ValueError(f"{source}: distiller.{key} = {value!r}: this student implements only {expected}")
            continue
        target = _RENAMED_DISTILLER_FIELDS.get(key, key)
        if target not in StarHubertConfig.__dataclass_fields__:
            raise ValueError(f"{source}: unknown distiller field {key!r}")
        fields[target] = parse_conv_layers(value) if target == "conv_layers" and isinstance(value, str) else value
    return StarHubertConfig.from_dict(fields, source=f"{source} distiller")


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

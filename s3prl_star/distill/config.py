"""config_model.yaml (the expert's `upstream_config`) and the runner yaml's `pretrain_expert.datarc`, checked.

config_model.yaml: `student` (a `preset` of `s3prl_star.model.PRESETS` with optional field overrides,
or every StarHubertConfig field), `teacher` (`name`, `ckpt`, `model_config`, `layer_map`: STaR only),
`objective` (`kind`: star (default) with StarLossConfig fields, or distilhubert with
DistilHubertLossConfig fields; `s3prl_star.distill.objectives`), `precision` (bf16 | fp32).
datarc: `libri_root`, `file_path` (folder of the length CSVs), `sets` (CSV names), `train_batch_size`
(per process), `max_length` (samples; longer utterances are dropped, null keeps all), `num_workers`,
`skip_unreadable` (false: an audio file that cannot be decoded stops the run, named; true: it is named
on stderr and left out of its batch). Relative paths are relative to the folder `s3prl-star pretrain`
runs in.
"""
from __future__ import annotations

from typing import Any

import yaml

from s3prl_star.integration.config_check import DATARC_TYPES
from s3prl_star.model.config import PRESETS, StarHubertConfig

MODEL_KEYS = {"student", "teacher", "objective", "precision"}
TEACHER_KEYS = {"name", "ckpt", "model_config", "layer_map"}
PRECISIONS = ("bf16", "fp32")
DATARC_OPTIONAL = {"max_length", "skip_unreadable"}


def check_datarc(datarc: Any) -> dict:
    """The runner yaml's `pretrain_expert.datarc` with its required keys (types are checked by
    `config_check.check_pretrain_config` before the runner starts)."""
    return check_keys(datarc, set(DATARC_TYPES), set(DATARC_TYPES) - DATARC_OPTIONAL, "pretrain_expert.datarc")


def load_model_config(upstream_config: str | dict) -> tuple[dict, str]:
    """config_model.yaml (a path, or the dict a checkpoint saved) checked for its keys, and its name."""
    if isinstance(upstream_config, dict):
        config, source = upstream_config, "checkpoint Upstream_Config"
    else:
        with open(upstream_config) as file:
            config, source = yaml.safe_load(file), str(upstream_config)
    check_keys(config, MODEL_KEYS, MODEL_KEYS, source)
    check_keys(config["teacher"], TEACHER_KEYS, {"name"}, f"{source}: teacher")
    if config["precision"] not in PRECISIONS:
        raise ValueError(f"{source}: precision {config['precision']!r}; expected one of {PRECISIONS}")
    config["teacher"] = {key: config["teacher"].get(key) for key in TEACHER_KEYS}
    return config, source


def student_config(section: dict, source: str) -> StarHubertConfig:
    """`{preset: NAME, field: value...}` (a preset with overrides) or every StarHubertConfig field."""
    if not isinstance(section, dict):
        raise ValueError(f"{source}: expected a mapping, found {section!r}")
    fields = dict(section)
    preset = fields.pop("preset", None)
    if preset is None:
        return StarHubertConfig.from_dict(fields, source=source)
    if preset not in PRESETS:
        raise ValueError(f"{source}: preset {preset!r}; expected one of {sorted(PRESETS)}")
    return StarHubertConfig.from_dict({**PRESETS[preset].to_dict(), **fields}, source=source)


def check_keys(section: Any, known: set[str], required: set[str], source: str) -> dict:
    if not isinstance(section, dict):
        raise ValueError(f"{source}: expected a mapping, found {section!r}")
    unknown, missing = sorted(set(section) - known), sorted(required - set(section))
    if unknown or missing:
        raise ValueError(f"{source}: unknown keys {unknown}, missing keys {missing}; expected {sorted(known)}")
    return section



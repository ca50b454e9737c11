"""The model card (`README.md`) of a Hugging Face export folder: architecture, sizes, provenance, usage.

What the card says about training is read from the checkpoint, never assumed: a distiller
`states-*.ckpt` records the teacher, objective and precision (`Upstream_Config`), the runner,
optimiser and data settings (`Config`) and its step; a released STaRHuBERT checkpoint its training
template (`hyper_parameters.cfg`, or the `.yaml` given with `-g`); a `save_student` file only the
student. What is absent is written "not recorded". No license is stated: the checkpoint records none.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

import torch
import yaml

from s3prl_star.model.config import SAMPLE_RATE, StarHubertConfig
from s3prl_star.model.hf import identity_projection_parameters
from s3prl_star.model.profile import SUPERB_PROTOCOL_LENGTHS, count_macs, count_parameters, meta_preset
from s3prl_star.model.star_hubert import StarHubert

NOT_RECORDED = "not recorded"
# keys of a released template's `train:` section that are local paths, not settings
_RELEASED_PATH_KEYS = frozenset({"base_dir", "output_dir", "checkpoint"})


@dataclass(frozen=True)
class Provenance:
    """Where the weights come from: the checkpoint's format, and (setting, value) rows as recorded."""

    source: str  # the checkpoint's file name
    sha256: str
    format: str
    teacher: list[tuple[str, str]]
    training: list[tuple[str, str]]


def file_sha256(path) -> str:
    """The sha256 of a file's content, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _text(value: Any) -> str:
    """A recorded value on one line: plain scalars as they are, lists and mappings in YAML flow style."""
    if isinstance(value, (dict, list, tuple)):
        value = yaml.safe_dump(json.loads(json.dumps(value, default=str)), default_flow_style=True, width=10**6).strip()
    return str(value)


def _path_name(value: Any) -> str:
    """A recorded file path as its file name (a card is published: local folders stay out of it)."""
    return os.path.basename(str(value)) if isinstance(value, str) and value else _text(value)


def _get(section: Any, *keys: str) -> Any:
    """`section[k1][k2]...`, or None where a level is missing or not a mapping."""
    for key in keys:
        if not isinstance(section, dict) or key not in section:
            return None
        section = section[key]
    return section


def _rows(pairs: list[tuple[str, Any]]) -> list[tuple[str, str]]:
    """(setting, value) rows of the values recorded (None: left out)."""
    return [(name, _text(value)) for name, value in pairs if value is not None]


def distiller_provenance(state: dict) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Teacher and training rows of a distiller `states-*.ckpt` (this project's `s3prl-star pretrain`)."""
    model, run = state.get("Upstream_Config"), state.get("Config")
    teacher = _rows([
        ("teacher upstream", _get(model, "teacher", "name")),
        ("teacher checkpoint (file name)", _path_name(_get(model, "teacher", "ckpt"))
         if _get(model, "teacher", "ckpt") else None),
        ("teacher layer per student layer", _get(model, "teacher", "layer_map")),
    ])
    training = _rows([
        ("objective", _get(model, "objective")),
        ("precision (CUDA autocast)", _get(model, "precision")),
        ("student (config_model.yaml)", _get(model, "student")),
        ("step saved", state.get("Step")),
        ("runner", _get(run, "runner")),
        ("optimizer", _get(run, "optimizer")),
        ("scheduler", _get(run, "scheduler")),
        ("data sets", _get(run, "pretrain_expert", "datarc", "sets")),
        ("batch size per process", _get(run, "pretrain_expert", "datarc", "train_batch_size")),
        ("longest utterance (samples)", _get(run, "pretrain_expert", "datarc", "max_length")),
    ])
    return teacher, training


def released_provenance(state: dict, template: Any) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Teacher and training rows of a released STaRHuBERT checkpoint from its training template."""
    teacher_model = _get(template, "teacher", "teacher_model")
    teacher = _rows([("teacher checkpoint (file name)", _path_name(teacher_model) if teacher_model else None)])
    train = _get(template, "train")
    training = _rows([
        ("epoch saved", state.get("epoch")),
        ("global step saved", state.get("global_step")),
        ("training settings (`train:`)",
         {key: value for key, value in train.items() if key not in _RELEASED_PATH_KEYS} if isinstance(train, dict) else None),
        ("optimizer", _get(template, "optimizer")),
        ("training sets", _get(template, "data", "train_set")),
    ])
    return teacher, training


def provenance(path, state: dict, model_config=None) -> Provenance:
    """What the checkpoint at `path` (read as `state`) records of its training; `model_config` is the
    released `.yaml` given with `-g`, which takes the place of the stored template as it does for
    `load_student`."""
    if "Student" in state:
        kind = "distiller checkpoint (`s3prl-star pretrain`)"
        teacher, training = distiller_provenance(state)
    elif "config" in state and "state_dict" in state:
        kind, teacher, training = "student file (`save_student`)", [], []
    else:
        kind = "released STaRHuBERT Lightning checkpoint"
        if model_config is not None:
            with open(model_config) as file:
                template = yaml.safe_load(file)
            kind += f" with {os.path.basename(str(model_config))}"
        else:
            template = _get(state, "hyper_parameters", "cfg") or _get(state, "hyper_parameters")
        teacher, training = released_provenance(state, template)
    return Provenance(os.path.basename(str(path)), file_sha256(path), kind, teacher, training)


def _cell(text: str) -> str:
    """A value safe in a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def _table(rows: list[tuple[str, str]]) -> str:
    """(setting, value) rows as a Markdown table, values as recorded; "not recorded" without any."""
    if not rows:
        return f"{NOT_RECORDED.capitalize()} in the checkpoint.\n"
    return "| setting | value |\n|---|---|\n" + "".join(
        f"| {_cell(a)} | `{_cell(b).replace('`', chr(39))}` |\n" for a, b in rows)


def _conv_stack(config: StarHubertConfig) -> str:
    return ", ".join(f"({c}, {k}, {s})" for c, k, s in config.conv_layers)


def architecture(config: StarHubertConfig) -> str:
    """The architecture table of the card."""
    norm = ("GroupNorm after the first conv only (fairseq's `default`; HF `feat_extract_norm=\"group\"`)"
            if config.extractor_mode == "default" else "LayerNorm after every conv (HF `feat_extract_norm=\"layer\"`)")
    width = config.conv_layers[-1][0]
    projection = ("none: HF's `feature_projection.projection` is the identity (see below)"
                  if width == config.encoder_embed_dim else f"Linear({width}, {config.encoder_embed_dim})")
    rows = [
        ("conv feature extractor (channels, kernel, stride)", f"{_conv_stack(config)}; "
         f"{'with' if config.conv_bias else 'no'} bias; {norm}; GELU"),
        ("after the extractor", f"LayerNorm({width}); projection: {projection}"),
        ("positional conv", f"weight-normed Conv1d, kernel {config.conv_pos}, {config.conv_pos_groups} groups, GELU"),
        ("transformer", f"{config.encoder_layers} {'pre' if config.layer_norm_first else 'post'}-LN layers, "
         f"width {config.encoder_embed_dim}, feed-forward {config.encoder_ffn_embed_dim}, "
         f"{config.encoder_attention_heads} heads, GELU"),
        ("dropout (training only)", f"input {config.dropout_input}, hidden {config.dropout}, "
         f"attention {config.attention_dropout}, activation {config.activation_dropout}"),
        ("frame rate", f"{_hop(config)} samples per frame at {SAMPLE_RATE} Hz"),
    ]
    return "| part | |\n|---|---|\n" + "".join(f"| {a} | {b} |\n" for a, b in rows)


def _hop(config: StarHubertConfig) -> int:
    hop = 1
    for _, _, stride in config.conv_layers:
        hop *= stride
    return hop


@functools.lru_cache(maxsize=8)
def protocol_macs(config: StarHubertConfig) -> int:
    """SUPERB-protocol MACs of a student of this shape (counted on the meta device, some seconds): once per
    shape and process."""
    return count_macs(meta_preset(config))


def sizes(model: StarHubert) -> dict[str, int]:
    """Parameters of the student and of the HF model, and SUPERB-protocol MACs (s3prl_star.model.profile)."""
    extra, width = identity_projection_parameters(model.config), model.config.encoder_embed_dim
    params = count_parameters(model)
    frames = int(model.frame_lengths(torch.tensor(SUPERB_PROTOCOL_LENGTHS)).sum())
    return {"params": params, "hf_params": params + extra, "identity_params": extra, "macs": protocol_macs(model.config),
            "identity_macs": frames * width * width if extra else 0}


def model_card(model: StarHubert, origin: Provenance, parity: float, parity_batch: tuple[int, ...],
               folder: str = "PATH") -> str:
    """The card's Markdown: front matter, what the model is, its sizes, its provenance and how to load it
    from `folder`. `parity` is the largest difference the export measured between the HF model and the
    student over every hidden state of a padded batch of `parity_batch` samples."""
    config, size = model.config, sizes(model)
    layers = config.encoder_layers
    seconds = sum(SUPERB_PROTOCOL_LENGTHS) / SAMPLE_RATE
    identity = (
        f"HF's `HubertModel` always has `feature_projection.projection` (conv width -> hidden size). This student "
        f"has no projection there (its extractor ends at the encoder width), so the export sets it to the identity "
        f"matrix: the same outputs, {size['identity_params']:,} more parameters ({size['params']:,} -> "
        f"{size['hf_params']:,}) and {size['identity_macs'] / 1e9:.2f} G more MACs that change nothing."
        if size["identity_params"] else
        "The student's `post_extract_proj` is HF's `feature_projection.projection`: the parameter counts are equal.")
    return f"""---
library_name: transformers
tags:
- audio
- speech
- hubert
- knowledge-distillation
- s3prl
---

# STaRHuBERT student ({layers} layers, width {config.encoder_embed_dim})

A HuBERT-shaped speech encoder distilled with **STaR** (Jang, Kim, Kim, "STaR: Distilling Speech Temporal
Relation for Lightweight Speech Self-Supervised Learning Models", ICASSP 2024), exported by
`s3prl-star export --format hf` from `{_cell(origin.source)}`, a {origin.format} (sha256 `{origin.sha256}`).
It loads as `transformers.HubertModel`; with the same weights it computes what the s3prl-star student
computes: the export checked every hidden state on a zero-padded batch of {', '.join(map(str, parity_batch))}
samples with its attention mask (largest difference {parity:.1e}).

## Architecture

{architecture(config)}
## Size

| | |
|---|---:|
| parameters (the student) | {size['params']:,} |
| parameters (this HF model) | {size['hf_params']:,} |
| MACs, SUPERB protocol (the student) | {size['macs'] / 1e9:.2f} G |

{identity}
MACs follow the SUPERB challenge protocol: the sum over {len(SUPERB_PROTOCOL_LENGTHS)} LibriSpeech test-clean
utterances ({seconds:.2f} s of audio) of the matrix-product and convolution MACs.

## Teacher

{_table(origin.teacher)}
## Distillation settings

{_table(origin.training)}
## License

The checkpoint records no license: whoever publishes these weights states theirs here (and the terms of the
teacher and data it was distilled from).

## Usage

Raw 16 kHz mono waveforms, not normalised; pass the attention mask (the feature extractor returns it), so that
padded frames are left out of attention as in the student.

```python
import torch
from transformers import AutoFeatureExtractor, AutoModel

extractor = AutoFeatureExtractor.from_pretrained({json.dumps(folder)})
model = AutoModel.from_pretrained({json.dumps(folder)}).eval()
waveforms = [torch.randn(16000).numpy(), torch.randn(24000).numpy()]  # 16 kHz
inputs = extractor(waveforms, sampling_rate=16000, padding=True, return_tensors="pt")
with torch.no_grad():
    hidden_states = model(**inputs, output_hidden_states=True).hidden_states  # {layers + 1} x (B, T, {config.encoder_embed_dim})
layers = hidden_states[1:]  # the {layers} layer outputs s3prl's star_hubert upstream returns
frames = model._get_feat_extract_output_lengths(inputs["attention_mask"].sum(-1))  # valid frames per item
```

`hidden_states[0]` is the input of layer 1 (after the positional conv{'' if config.layer_norm_first else ' and LayerNorm'}), as
the s3prl-star student's `hidden_states[0]`. The first conv's GroupNorm (when present) normalises over the whole
padded time axis, as HuBERT's does: an utterance inside a longer batch gives slightly different values than alone.
"""

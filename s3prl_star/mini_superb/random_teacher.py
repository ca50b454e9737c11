"""Random-initialised HuBERT / wav2vec 2.0 / WavLM checkpoints in the formats s3prl's `*_local` upstreams read.

No real teacher weights can be downloaded here, so tests and the demo distil from these instead: the
model is built with s3prl's own classes (so the file loads through `s3prl.hub.hubert_local`,
`wav2vec2_local`, `wavlm_local` exactly as a converted release checkpoint does) and its weights are
the classes' own random initialisation under a fixed seed. The outputs mean nothing; the shapes,
file format and loading path are the real ones.

File formats, as read by s3prl 0.4.18:
- hubert (`upstream/hubert/convert.py: load_converted_model`): `{"task_cfg", "model_cfg",
  "model_weight", "dictionaries_symbols"}`; configs are plain dicts merged into
  `HubertPretrainingConfig` / `HubertConfig` (unknown keys dropped).
- wav2vec2 (`upstream/wav2vec2/convert.py: load_converted_model`): `{"task_cfg", "model_cfg",
  "model_weight"}` merged into `AudioPretrainingConfig` / `Wav2Vec2Config`.
- wavlm (`upstream/wavlm/expert.py: UpstreamExpert`): `{"cfg", "model"}`, `cfg` a plain dict
  applied to `WavLMConfig`.
All values are plain Python data and tensors, so the files load with `torch.load(weights_only=True)`,
the default the loaders get on torch >= 2.6.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Literal, Sequence

import torch

from s3prl_star.atomic import save_atomic

TeacherKind = Literal["hubert", "wav2vec2", "wavlm"]
TEACHER_KINDS: tuple[str, ...] = ("hubert", "wav2vec2", "wavlm")

# (channels, kernel, stride) of the HuBERT / wav2vec 2.0 / WavLM Base feature extractor:
# 400-sample receptive field, 320-sample hop (20 ms at 16 kHz).
BASE_CONV_KERNELS_STRIDES: tuple[tuple[int, int], ...] = ((10, 5),) + ((3, 2),) * 4 + ((2, 2),) * 2
BASE_CONV_CHANNELS = 512

# Projection width of the HuBERT / wav2vec 2.0 Base pre-training heads.
BASE_FINAL_DIM = 256
# HuBERT pre-training labels: one k-means dictionary of 500 clusters (fairseq adds 4 special symbols).
HUBERT_LABEL_RATE = 50.0
HUBERT_NUM_CLUSTERS = 500
FAIRSEQ_SPECIAL_SYMBOLS = ["<s>", "<pad>", "</s>", "<unk>"]

# WavLM Base(+) gated relative position bias.
WAVLM_NUM_BUCKETS = 320
WAVLM_MAX_DISTANCE = 800


def default_conv_layers(embed_dim: int) -> list[tuple[int, int, int]]:
    """HuBERT Base's conv stack when `embed_dim >= 512`; otherwise the same kernels and strides with
    `embed_dim // 2` channels (a tiny model keeps the 320-sample frame rate and the
    extractor-to-encoder projection that HuBERT Base has)."""
    channels = BASE_CONV_CHANNELS if embed_dim >= BASE_CONV_CHANNELS else max(embed_dim // 2, 1)
    return [(channels, kernel, stride) for kernel, stride in BASE_CONV_KERNELS_STRIDES]


def conv_layers_string(conv_layers: Sequence[Sequence[int]]) -> str:
    """fairseq's `conv_feature_layers` string, e.g. "[(512, 10, 5), (512, 3, 2), ...]"."""
    return "[" + ", ".join(f"({int(c)}, {int(k)}, {int(s)})" for c, k, s in conv_layers) + "]"


def save_random_teacher(
    kind: TeacherKind,
    path: str | os.PathLike,
    *,
    layers: int,
    embed_dim: int,
    ffn_dim: int,
    heads: int,
    seed: int = 0,
    conv_layers: Sequence[Sequence[int]] | None = None,
    layer_norm_first: bool = False,
    normalize: bool = False,
) -> Path:
    """Build a random `kind` model with s3prl's classes and save it where `{kind}_local` loads it.

    `layers`, `embed_dim`, `ffn_dim`, `heads`: transformer shape (HuBERT Base: 12, 768, 3072, 12).
    `conv_layers`: (channels, kernel, stride) per conv layer; default `default_conv_layers(embed_dim)`.
    `layer_norm_first`: pre-LN transformer (as HuBERT / WavLM Large) instead of post-LN (the Base models).
    `normalize`: the task's waveform normalisation flag, which the upstream applies before the model.
    `seed` fixes the initialisation; the global RNG state is left untouched. The write is atomic.
    Returns the path.
    """
    if kind not in TEACHER_KINDS:
        raise ValueError(f"unknown teacher kind {kind!r}: expected one of {', '.join(TEACHER_KINDS)}")
    if embed_dim % heads != 0:
        raise ValueError(f"embed_dim={embed_dim} must be divisible by heads={heads}")
    conv = [tuple(int(v) for v in layer) for layer in (conv_layers or default_conv_layers(embed_dim))]
    if not conv or any(len(layer) != 3 for layer in conv):
        raise ValueError(f"conv_layers must be a non-empty list of (channels, kernel, stride), got {conv_layers!r}")
    architecture = dict(
        extractor_mode="default",
        encoder_layers=layers,
        encoder_embed_dim=embed_dim,
        encoder_ffn_embed_dim=ffn_dim,
        encoder_attention_heads=heads,
        layer_norm_first=layer_norm_first,
        conv_feature_layers=conv_layers_string(conv),
        conv_bias=False,
    )
    builders = {"hubert": _hubert_checkpoint, "wav2vec2": _wav2vec2_checkpoint, "wavlm": _wavlm_checkpoint}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        checkpoint = builders[kind](architecture, normalize)
    path = Path(path)
    save_atomic(checkpoint, path)
    return path


def _hubert_checkpoint(architecture: dict, normalize: bool) -> dict:
    from s3prl.upstream.hubert.hubert_model import HubertConfig, HubertModel, HubertPretrainingConfig

    task_cfg = HubertPretrainingConfig(label_rate=HUBERT_LABEL_RATE, normalize=normalize)
    model_cfg = HubertConfig(label_rate=HUBERT_LABEL_RATE, final_dim=BASE_FINAL_DIM, **architecture)
    symbols = [FAIRSEQ_SPECIAL_SYMBOLS + [str(i) for i in range(HUBERT_NUM_CLUSTERS)]]
    return hubert_checkpoint(HubertModel(model_cfg, task_cfg, symbols), task_cfg, model_cfg, symbols)


def hubert_checkpoint(model, task_cfg, model_cfg, symbols: list[list[str]]) -> dict:
    """A HubertModel and its configs as the file `hubert_local` loads (plain data and tensors)."""
    return {
        "task_cfg": dataclasses.asdict(task_cfg),
        "model_cfg": dataclasses.asdict(model_cfg),
        "model_weight": model.state_dict(),
        "dictionaries_symbols": symbols,
    }


def _wav2vec2_checkpoint(architecture: dict, normalize: bool) -> dict:
    from s3prl.upstream.wav2vec2.wav2vec2_model import AudioPretrainingConfig, Wav2Vec2Config, Wav2Vec2Model

    task_cfg = dataclasses.asdict(AudioPretrainingConfig(normalize=normalize))
    model_cfg = dataclasses.asdict(
        Wav2Vec2Config(quantize_targets=True, final_dim=BASE_FINAL_DIM, **architecture)
    )
    model = Wav2Vec2Model(Wav2Vec2Config(**model_cfg))
    return {"task_cfg": task_cfg, "model_cfg": model_cfg, "model_weight": model.state_dict()}


def _wavlm_checkpoint(architecture: dict, normalize: bool) -> dict:
    from s3prl.upstream.wavlm.WavLM import WavLM, WavLMConfig

    cfg = dict(
        WavLMConfig().__dict__,
        **architecture,
        normalize=normalize,
        relative_position_embedding=True,
        num_buckets=WAVLM_NUM_BUCKETS,
        max_distance=WAVLM_MAX_DISTANCE,
        gru_rel_pos=True,
    )
    model = WavLM(WavLMConfig(cfg))
    return {"cfg": cfg, "model": model.state_dict()}

"""The STaRHuBERT student: a HuBERT-shaped encoder with narrow widths (docs/student.md).

`StarHubert` composes the blocks of `components` from a `StarHubertConfig`; `build_preset` builds a
named shape. Parameter names follow fairseq's HuBERT, so released STaRHuBERT state dicts (and
s3prl's `hubert_model.HubertModel` weights) load strictly; checkpoint formats live in `checkpoint`
and `released`.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple, Sequence

import torch
from torch import Tensor, nn

from s3prl_star.model.components import Encoder, FeatureExtractor
from s3prl_star.model.config import PRESETS, SAMPLE_RATE, StarHubertConfig


class StarHubertOutput(NamedTuple):
    """hidden_states: L + 1 tensors (B, T, D), [0] the input of layer 1, [l] the output of layer l.
    padding_mask: (B, T) bool, True = padding. attentions: L head-averaged maps (B, T, T), or None."""

    hidden_states: list[Tensor]
    padding_mask: Tensor
    attentions: list[Tensor] | None


def _init_linear(module: nn.Module) -> None:
    """BERT-style initialisation of linear layers, as fairseq's `init_bert_params` does for HuBERT."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        nn.init.zeros_(module.bias)


class StarHubert(nn.Module):
    """Waveforms -> the input of layer 1 and every layer's output (STaR distils all of them)."""

    def __init__(self, config: StarHubertConfig):
        super().__init__()
        self.config = config
        extractor_dim = config.conv_layers[-1][0]
        self.feature_extractor = FeatureExtractor(config.conv_layers, config.extractor_mode, config.conv_bias)
        self.layer_norm = nn.LayerNorm(extractor_dim)
        if extractor_dim != config.encoder_embed_dim:
            self.post_extract_proj = nn.Linear(extractor_dim, config.encoder_embed_dim)
        self.dropout_input = nn.Dropout(config.dropout_input)
        self.encoder = Encoder(config)
        self.apply(_init_linear)

    @property
    def receptive_field(self) -> int:
        """Samples one frame sees: the shortest input that yields a frame (400 for HuBERT's stack)."""
        field = 1
        for _, kernel, stride in reversed(self.config.conv_layers):
            field = (field - 1) * stride + kernel
        return field

    @property
    def dtype(self) -> torch.dtype:
        """The parameters' floating dtype, which inputs are cast to."""
        return self.layer_norm.weight.dtype

    def frame_lengths(self, lengths: Tensor) -> Tensor:
        return self.feature_extractor.frame_lengths(lengths)

    def _check_input(self, waveforms: Tensor, lengths: Tensor | None) -> tuple[Tensor, Tensor]:
        """`check_input` for this model: its receptive field and parameter dtype."""
        return check_input(waveforms, lengths, self.receptive_field, self.dtype)

    def forward(self, waveforms: Tensor, lengths: Tensor | None = None, need_attention: bool = False) -> StarHubertOutput:
        """waveforms (B, S) float at 16 kHz (cast to the model's dtype), lengths (B,) integer valid samples
        (None: all S); samples past a length are ignored (zeroed)."""
        waveforms, lengths = self._check_input(waveforms, lengths)
        features = self.layer_norm(self.feature_extractor(waveforms))
        frames = torch.arange(features.size(1), device=features.device)
        padding_mask = frames[None, :] >= self.frame_lengths(lengths)[:, None]
        if hasattr(self, "post_extract_proj"):
            features = self.post_extract_proj(features)
        hidden_states, attentions = self.encoder(self.dropout_input(features), padding_mask, need_attention)
        return StarHubertOutput(hidden_states, padding_mask, attentions)

    def forward_list(self, waveforms: Sequence[Tensor], need_attention: bool = False) -> StarHubertOutput:
        """A non-empty list of 1-D float waveforms (as s3prl upstreams receive them) -> the padded batch output."""
        check_waveform_list(waveforms)
        lengths = torch.tensor([len(w) for w in waveforms], device=waveforms[0].device)
        batch = nn.utils.rnn.pad_sequence([w.to(self.dtype) for w in waveforms], batch_first=True)
        return self(batch, lengths, need_attention=need_attention)


def check_input(waveforms: Tensor, lengths: Tensor | None, receptive_field: int,
                dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """(waveforms cast to `dtype` with every sample past `lengths` zeroed, lengths), or a
    ValueError naming the bad input: not (B, S) float, lengths not (B,) integers in
    receptive_field..S, NaN or infinite samples within lengths. What every way of running the student
    takes (`StarHubert`, the onnxruntime `s3prl_star.model.inference.OnnxStudent`).

    Zeroing first keeps what lies past `lengths` (noise, NaN) out of the valid frames; the padded
    length still reaches them through the first GroupNorm, which HuBERT takes over the whole
    padded time axis (docs/student.md, Padding). The checks are batched tensor ops: one device sync each
    for lengths and finiteness; they are skipped while tracing (export) and on the meta device."""
    if waveforms.dim() != 2 or not waveforms.is_floating_point():
        raise ValueError(
            f"StarHubert expects a (batch, samples) float waveform batch at {SAMPLE_RATE} Hz, "
            f"found shape {tuple(waveforms.shape)} of {waveforms.dtype}"
        )
    batch, samples = waveforms.shape
    if batch == 0:
        raise ValueError("StarHubert expects at least one waveform, found an empty batch")
    if lengths is None:
        lengths = torch.full((batch,), samples, device=waveforms.device)
    if lengths.shape != (batch,) or lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
        raise ValueError(
            f"lengths: expected an integer tensor of shape ({batch},) (valid samples per waveform), "
            f"found {lengths.dtype} of shape {tuple(lengths.shape)}"
        )
    lengths = lengths.to(waveforms.device)
    checkable = not (torch.jit.is_tracing() or waveforms.is_meta)  # meta: the profiler counts shapes only
    if checkable:
        _check_lengths(lengths, samples, receptive_field)
    valid = torch.arange(samples, device=waveforms.device)[None, :] < lengths[:, None]
    waveforms = torch.where(valid, waveforms.to(dtype), 0.0)
    if checkable:
        _check_finite(waveforms)
    return waveforms, lengths


def _check_lengths(lengths: Tensor, samples: int, receptive_field: int) -> None:
    shortest, longest = (int(value) for value in torch.aminmax(lengths))
    if shortest >= receptive_field and longest <= samples:
        return
    if longest > samples:
        bad, expected = lengths > samples, f"at most the {samples} samples of the padded batch"
    elif shortest <= 0:
        bad, expected = lengths <= 0, "positive sample counts"
    else:
        raise ValueError(
            f"input shorter than the conv receptive field ({receptive_field} samples = "
            f"{1000 * receptive_field / SAMPLE_RATE:.0f} ms at {SAMPLE_RATE} Hz): lengths {lengths.tolist()}"
        )
    indices = bad.nonzero().flatten().tolist()
    raise ValueError(f"lengths: waveform(s) {indices} have lengths {lengths[bad].tolist()}; expected {expected}")


def check_waveform_list(waveforms: Sequence[Tensor]) -> None:
    """A ValueError unless `waveforms` is a non-empty list of 1-D float tensors (what s3prl passes upstreams)."""
    if len(waveforms) == 0:
        raise ValueError("expected a non-empty list of 1-D float waveforms at 16 kHz, found an empty list")
    for index, waveform in enumerate(waveforms):
        if not isinstance(waveform, Tensor) or waveform.dim() != 1 or not waveform.is_floating_point():
            found = f"shape {tuple(waveform.shape)} of {waveform.dtype}" if isinstance(waveform, Tensor) else type(waveform).__name__
            raise ValueError(f"waveform {index}: expected a 1-D float tensor, found {found}")


def _check_finite(waveforms: Tensor) -> None:
    """A ValueError naming the waveforms (and the first sample) that hold NaN or infinite values.

    A finite sum proves every sample finite (NaN and infinities propagate) at a quarter of the
    cost of an element-wise test, which runs only when the sum is not finite."""
    if bool(waveforms.sum().isfinite()):
        return
    finite = torch.isfinite(waveforms)
    bad = (~finite.all(dim=1)).nonzero().flatten().tolist()
    if not bad:  # the sum overflowed; every sample is finite
        return
    first = int((~finite[bad[0]]).nonzero()[0])
    raise ValueError(
        f"waveforms: waveform(s) {bad} hold NaN or infinite samples within their lengths "
        f"(waveform {bad[0]} at sample {first}); expected finite audio"
    )


def build_preset(name: str, **overrides) -> StarHubert:
    """A randomly initialised model of a named shape; `overrides` replace config fields."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose from {sorted(PRESETS)}")
    return StarHubert(dataclasses.replace(PRESETS[name], **overrides))

"""The frozen teacher: an s3prl upstream (HuBERT, wav2vec 2.0, WavLM) giving STaR's per-layer targets.

`Teacher.from_s3prl("hubert_local", ckpt=path)` loads the teacher through s3prl's own hub entry
(`hubert_local`, `wav2vec2_local`, `wavlm_local` read a local checkpoint; `hubert_base` and the other
hub names download one where a network exists) and runs the upstream's own forward, so the teacher
keeps its own preprocessing (the task's waveform `normalize` flag) and s3prl's `hidden_states`.

What s3prl's `hidden_states` are for these fairseq-style models (s3prl hooks the input of every
`encoder.layers[i]` and the output of `encoder`), L + 1 entries:
- post-LN models (`layer_norm_first=False`: HuBERT, wav2vec 2.0 and WavLM Base / Base+):
  [0] = input of layer 1 = LayerNorm(x + pos_conv(x)), where x = post_extract_proj(LayerNorm(conv
  features)) with padded frames zeroed (dropout is off in eval); [l] = output of layer l for
  l = 1..L (the encoder adds nothing after the last layer). This is STaR's F^0..F^L
  (docs/distillation.md).
- pre-LN models (`layer_norm_first=True`, e.g. HuBERT Large, WavLM Large): [0] = x + pos_conv(x),
  with no LayerNorm (the encoder's LayerNorm comes after the last layer); [l] = output of layer l
  for l < L; [L] = encoder.layer_norm(output of layer L), the encoder output s3prl reports.

Batch invariance. Run as s3prl runs them, a padded batch changes the valid frames of these models in
two ways, both fixed here through forward hooks so that every utterance gets exactly what it gets
alone (tested for all three models):
- In the "default" extractor mode the first conv layer's GroupNorm normalises each channel over
  the whole padded time axis, so the zero padding shifts every frame's statistics. The hook
  recomputes that GroupNorm over each utterance's valid conv frames only; the frames after it
  that the padding could still reach lie beyond the utterance's frame count (floor division
  through the conv stack), which the padding mask covers.
- HuBERT and WavLM derive the frame padding mask from sample chunks and can leave a frame that
  overlaps the padding unmasked. The encoder's `padding_mask` is replaced by the mask from
  floor-division frame counts (what wav2vec 2.0 computes, and what the student uses).
Padded frames of the returned hidden states and attention rows are set to zero.

Attention maps (only when `need_attention`): every `self_attn` module is called with
`need_weights=True` through a forward pre-hook, so the module's own attention path (including
WavLM's gated relative position bias) returns its softmax weights averaged over heads, which a
forward hook collects. Without the request these modules never materialise the weights (they call
the fused `F.multi_head_attention_forward(need_weights=False)`).
"""
from __future__ import annotations

import contextlib
import os
import re
from typing import Sequence

import torch
from torch import Tensor, nn

from s3prl_star.model.checkpoint import CheckpointError
from s3prl_star.model.star_hubert import StarHubertOutput
from s3prl_star.model.components import conv_output_lengths


class Teacher(nn.Module):
    """A frozen s3prl upstream in eval mode returning `StarHubertOutput`.

    `upstream`: an s3prl fairseq-style upstream (`upstream.model.feature_extractor.conv_layers`,
    `upstream.model.encoder.layers[i].self_attn`) called with a list of 1-D waveforms and returning
    `{"hidden_states": ...}`. `need_attention`: also return head-averaged attention maps.
    """

    def __init__(self, upstream: nn.Module, need_attention: bool = False):
        super().__init__()
        model = getattr(upstream, "model", None)
        missing = [
            attribute
            for attribute in ("feature_extractor", "encoder")
            if not isinstance(getattr(model, attribute, None), nn.Module)
        ]
        if missing or not isinstance(getattr(model.encoder, "layers", None), nn.ModuleList):
            raise TypeError(
                f"{type(upstream).__module__}.{type(upstream).__name__}: a teacher needs a fairseq-style s3prl "
                "upstream (upstream.model.feature_extractor, upstream.model.encoder.layers), as HuBERT, "
                "wav2vec 2.0 and WavLM have"
            )
        self.upstream = upstream
        self.need_attention = need_attention
        self.upstream.requires_grad_(False)
        self.upstream.eval()

    @classmethod
    def from_s3prl(
        cls,
        name: str,
        ckpt: str | None = None,
        model_config: str | None = None,
        need_attention: bool = False,
    ) -> "Teacher":
        """Load the upstream `name` through `s3prl.hub` (e.g. "hubert_local" with `ckpt` a local file)."""
        if ckpt is not None and "://" not in str(ckpt) and not os.path.isfile(ckpt):  # before s3prl's slow import
            raise FileNotFoundError(f"teacher checkpoint {ckpt}: no such file (teacher.ckpt, read by s3prl's {name})")
        import s3prl_star.integration.patches

        s3prl_star.integration.patches.apply()
        import s3prl.hub

        entry = getattr(s3prl.hub, name, None)
        if not callable(entry):
            raise ValueError(f"teacher upstream {name!r} is not an s3prl.hub entry (e.g. hubert_local, hubert_base)")
        options = {key: value for key, value in (("ckpt", ckpt), ("model_config", model_config)) if value is not None}
        return cls(_load_upstream(entry, name, options), need_attention=need_attention)

    @property
    def encoder_layers(self) -> nn.ModuleList:
        return self.upstream.model.encoder.layers

    @property
    def num_layers(self) -> int:
        return len(self.encoder_layers)

    @property
    def embed_dim(self) -> int:
        return self.encoder_layers[0].self_attn.embed_dim

    def train(self, mode: bool = True) -> "Teacher":
        """The teacher stays in eval mode (no dropout, no layer drop) whatever the caller asks."""
        return super().train(False)

    def frame_lengths(self, lengths: Tensor) -> Tensor:
        """Frame counts (B,) of waveforms of `lengths` samples: floor division through each conv layer."""
        return _conv_output_lengths(lengths, self.upstream.model.feature_extractor.conv_layers)

    @torch.no_grad()
    def forward(self, waveforms: Tensor, lengths: Tensor) -> StarHubertOutput:
        """waveforms (B, S) float 16 kHz, lengths (B,) valid samples -> StarHubertOutput with
        hidden_states L + 1 tensors (B, T, D), padding_mask (B, T) True = padding, and attentions
        L tensors (B, T, T) when `need_attention`, else None."""
        if waveforms.dim() != 2 or lengths.shape != waveforms.shape[:1]:
            raise ValueError(
                f"teacher input: expected waveforms (B, S) and lengths (B,), found {tuple(waveforms.shape)} "
                f"and {tuple(lengths.shape)}"
            )
        lengths = lengths.to(device=waveforms.device, dtype=torch.long)
        if (lengths <= 0).any() or (lengths > waveforms.size(1)).any():
            raise ValueError(f"teacher input: lengths must lie in 1..{waveforms.size(1)}, found {lengths.tolist()}")
        frames = self.frame_lengths(lengths)
        if (frames <= 0).any():
            raise ValueError(f"teacher input: utterances of {lengths.tolist()} samples give {frames.tolist()} frames")
        num_frames = int(frames.max())
        padding_mask = torch.arange(num_frames, device=waveforms.device)[None, :] >= frames[:, None]

        attentions: list[Tensor] = []
        with contextlib.ExitStack() as hooks:
            for handle in self._batch_invariance_hooks(lengths, padding_mask):
                hooks.callback(handle.remove)
            if self.need_attention:
                for handle in self._attention_hooks(attentions):
                    hooks.callback(handle.remove)
            result = self.upstream([waveform[:length] for waveform, length in zip(waveforms, lengths.tolist())])

        hidden_states = list(result["hidden_states"])
        if len(hidden_states) != self.num_layers + 1:
            raise RuntimeError(
                f"teacher upstream returned {len(hidden_states)} hidden states, expected {self.num_layers + 1}"
            )
        for index, hidden in enumerate(hidden_states):
            if hidden.shape[:2] != padding_mask.shape:
                raise RuntimeError(
                    f"teacher hidden state {index} has shape {tuple(hidden.shape)}, "
                    f"expected (B, T) = {tuple(padding_mask.shape)}"
                )
            hidden_states[index] = hidden.masked_fill(padding_mask[:, :, None], 0.0)
        maps = None
        if self.need_attention:
            if len(attentions) != self.num_layers:
                raise RuntimeError(f"teacher returned {len(attentions)} attention maps, expected {self.num_layers}")
            # s3prl's HuBERT / wav2vec 2.0 encoder pads T to a multiple of `required_seq_len_multiple`
            maps = [
                attention[:, :num_frames, :num_frames].masked_fill(padding_mask[:, :, None], 0.0)
                for attention in attentions
            ]
        return StarHubertOutput(hidden_states=hidden_states, padding_mask=padding_mask, attentions=maps)

    def _batch_invariance_hooks(self, lengths: Tensor, padding_mask: Tensor) -> list:
        """Hooks making padded-batch outputs equal one-utterance outputs (see the module docstring)."""
        model = self.upstream.model
        handles = []
        first_block = model.feature_extractor.conv_layers[0]
        group_norms = [module for module in first_block if isinstance(module, nn.GroupNorm)]
        if group_norms:
            valid_conv_frames = _conv_output_lengths(lengths, [first_block])

            def per_utterance_group_norm(module: nn.GroupNorm, inputs: tuple, output: Tensor) -> Tensor:
                return _masked_group_norm(inputs[0], valid_conv_frames, module)

            handles.append(group_norms[0].register_forward_hook(per_utterance_group_norm))

        def floor_division_padding_mask(module: nn.Module, args: tuple, kwargs: dict) -> tuple:
            x = args[0] if args else kwargs["x"]
            if "padding_mask" not in kwargs or x.shape[:2] != padding_mask.shape:
                raise RuntimeError(
                    f"{type(module).__name__}: expected encoder(x (B, T, D), padding_mask=...) with (B, T) = "
                    f"{tuple(padding_mask.shape)}, found x {tuple(x.shape)} and arguments {sorted(kwargs)}"
                )
            return args, {**kwargs, "padding_mask": padding_mask}

        handles.append(model.encoder.register_forward_pre_hook(floor_division_padding_mask, with_kwargs=True))
        return handles

    def _attention_hooks(self, attentions: list[Tensor]) -> list:
        """Ask every layer's `self_attn` for its head-averaged weights and append them (B, T, T) in layer order."""

        def request_weights(module: nn.Module, args: tuple, kwargs: dict) -> tuple:
            return args, {**kwargs, "need_weights": True}

        def collect_weights(module: nn.Module, args: tuple, output: Sequence) -> None:
            attentions.append(output[1])

        handles = []
        for layer in self.encoder_layers:
            handles.append(layer.self_attn.register_forward_pre_hook(request_weights, with_kwargs=True))
            handles.append(layer.self_attn.register_forward_hook(collect_weights))
        return handles


def _load_upstream(entry, name: str, options: dict) -> nn.Module:
    """`entry(**options)`, with an unreadable or refused local `ckpt` reported by its path as a
    CheckpointError (torch's weights-only error names no file; `from_s3prl` reports a missing one, where
    s3prl asserts without a message)."""
    ckpt = options.get("ckpt")
    try:
        return entry(**options)
    except Exception as error:
        if ckpt is None or "://" in str(ckpt):
            raise
        raise CheckpointError(
            f"teacher checkpoint {ckpt}: s3prl's {name} cannot load it ({_load_failure(error)}); expected a "
            f"checkpoint in the format {name} reads, e.g. fairseq's HuBERT converted for s3prl"
        ) from None  # torch's own message would advise unsafe loading


def _load_failure(error: Exception) -> str:
    """What went wrong loading a checkpoint, without torch's advice to disable weights-only loading."""
    message = str(error)
    unpickler = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(\n\n|$)", message, re.DOTALL)
    if unpickler:
        return f"not a torch checkpoint it can read: {unpickler.group(1)}"
    first_line = message.strip().splitlines()[0] if message.strip() else repr(error)
    if "weights_only" in first_line:
        first_line = "not a torch checkpoint it can read"
    return f"{type(error).__name__}: {first_line}"


def _conv_output_lengths(lengths: Tensor, blocks: Sequence[nn.Module]) -> Tensor:
    """Output lengths of fairseq conv blocks (`block[0]` an unpadded Conv1d)."""
    return conv_output_lengths(lengths, [(block[0].kernel_size[0], block[0].stride[0]) for block in blocks])


def _masked_group_norm(x: Tensor, valid_frames: Tensor, norm: nn.GroupNorm) -> Tensor:
    """`norm` applied to x (B, C, T) with each utterance's statistics taken over its first
    `valid_frames` frames only; float32 statistics, as fairseq's Fp32GroupNorm. Peak memory is the
    output plus one utterance's frames (the conv-0 output of a batch is large: B x 512 x S/5)."""
    batch, channels, _ = x.shape
    groups = norm.num_groups
    mean = x.new_empty(batch, groups, dtype=torch.float32)
    variance = torch.empty_like(mean)
    for index, frames in enumerate(valid_frames.tolist()):
        grouped = x[index, :, :frames].float().unflatten(0, (groups, -1))  # a view when x is float32
        variance[index], mean[index] = torch.var_mean(grouped, dim=(1, 2), unbiased=False)
    per_channel = channels // groups
    scale = torch.rsqrt(variance + norm.eps).repeat_interleave(per_channel, dim=1)  # (B, C)
    shift = -mean.repeat_interleave(per_channel, dim=1) * scale
    if norm.affine:
        scale = scale * norm.weight.float()
        shift = shift * norm.weight.float() + norm.bias.float()
    return torch.addcmul(shift[:, :, None], x.float(), scale[:, :, None]).type_as(x)


def resolve_layer_map(teacher_layers: int, student_layers: int, layer_map: Sequence[int] | None = None) -> list[int]:
    """Teacher hidden-state index for each student hidden-state index 0..student_layers.

    Entry 0 (the input of layer 1) always maps to 0; student layer l takes teacher layer
    `layer_map[l - 1]` (1-based). Without `layer_map` the depths must match (STaR distils layer l
    into layer l); a different depth raises before any training.
    """
    if layer_map is None:
        if teacher_layers != student_layers:
            raise ValueError(
                f"the teacher has {teacher_layers} layers and the student {student_layers}: set `layer_map` "
                f"(one teacher layer in 1..{teacher_layers} per student layer, {student_layers} entries) "
                "or give the student the teacher's depth"
            )
        return list(range(teacher_layers + 1))
    entries = list(layer_map)
    if len(entries) != student_layers:
        raise ValueError(
            f"layer_map has {len(entries)} entries, expected one per student layer ({student_layers}): {entries}"
        )
    bad = [entry for entry in entries if type(entry) is not int or not 1 <= entry <= teacher_layers]
    if bad:
        raise ValueError(f"layer_map entries must be teacher layers in 1..{teacher_layers}, found {bad} in {entries}")
    return [0] + entries

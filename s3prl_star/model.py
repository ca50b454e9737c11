"""The STaRHuBERT student: a HuBERT-shaped encoder with narrow widths (STAR_SPEC.md section 1).

Blocks are small modules; `StarHubert` composes them from a `StarHubertConfig`; `PRESETS` names the
published shapes. Parameter names follow fairseq's HuBERT, so released STaRHuBERT state dicts (and
s3prl's `hubert_model.HubertModel` weights) load strictly. Checkpoint formats live in `checkpoint.py`.

Conventions: waveforms are (B, S) float 16 kHz with `lengths` (B,); frame padding masks are
(B, T) bool with True = padding; frame counts come from floor division through the conv stack.
"""
from __future__ import annotations

import ast
import dataclasses
import math
from dataclasses import dataclass
from typing import Literal, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SAMPLE_RATE = 16000

ConvLayers = tuple[tuple[int, int, int], ...]

HUBERT_CONV_LAYERS: ConvLayers = ((512, 10, 5),) + ((512, 3, 2),) * 4 + ((512, 2, 2),) * 2


@dataclass(frozen=True)
class StarHubertConfig:
    """Shape and regularisation of the student; field names are fairseq's (as in the released yaml)."""

    # (channels, kernel, stride) per conv layer: STaRHuBERT's, as star_conv_layers(432) builds it
    conv_layers: ConvLayers = ((128, 10, 5), (256, 1, 1)) + ((256, 3, 2),) * 4 + ((432, 1, 1), (432, 2, 2), (432, 2, 2))
    extractor_mode: Literal["default", "layer_norm"] = "default"  # default: GroupNorm after conv 0 only
    conv_bias: bool = False
    encoder_layers: int = 12
    encoder_embed_dim: int = 432
    encoder_ffn_embed_dim: int = 976
    encoder_attention_heads: int = 8
    conv_pos: int = 128
    conv_pos_groups: int = 16
    layer_norm_first: bool = False  # False = post-LN, as HuBERT Base and STaRHuBERT
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.1
    dropout_input: float = 0.05

    def __post_init__(self):
        conv_layers = tuple(tuple(layer) for layer in self.conv_layers)
        object.__setattr__(self, "conv_layers", conv_layers)
        for name, field in self.__dataclass_fields__.items():
            value = getattr(self, name)
            if name == "conv_layers":
                ok = bool(value) and all(
                    len(layer) == 3 and all(type(v) is int and v > 0 for v in layer) for layer in value
                )
                expected = "a non-empty list of (channels, kernel, stride) positive ints"
            elif name == "extractor_mode":
                ok, expected = value in ("default", "layer_norm"), "'default' or 'layer_norm'"
            elif field.type == "bool":
                ok, expected = type(value) is bool, "a bool"
            elif field.type == "int":
                ok, expected = type(value) is int and value > 0, "a positive int"
            else:
                ok = type(value) in (int, float) and 0.0 <= value < 1.0
                expected = "a probability in [0, 1)"
            if not ok:
                raise ValueError(f"StarHubertConfig.{name}: expected {expected}, found {value!r}")
        if self.encoder_embed_dim % self.encoder_attention_heads:
            raise ValueError(
                f"StarHubertConfig: encoder_embed_dim {self.encoder_embed_dim} is not divisible by "
                f"encoder_attention_heads {self.encoder_attention_heads}"
            )
        if self.encoder_embed_dim % self.conv_pos_groups:
            raise ValueError(
                f"StarHubertConfig: encoder_embed_dim {self.encoder_embed_dim} is not divisible by "
                f"conv_pos_groups {self.conv_pos_groups}"
            )

    def to_dict(self) -> dict:
        """Plain data (lists, ints, floats, str): safe for yaml and for `torch.load(weights_only=True)`."""
        data = dataclasses.asdict(self)
        data["conv_layers"] = [list(layer) for layer in self.conv_layers]
        return data

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> "StarHubertConfig":
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(
                f"{source}: unknown StarHubertConfig field(s) {unknown}; "
                f"known: {sorted(cls.__dataclass_fields__)}"
            )
        try:
            return cls(**data)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{source}: {error}") from None


def parse_conv_layers(text: str) -> ConvLayers:
    """Parse fairseq's `"[(512,10,5)] + [(512,3,2)] * 4"` notation without `eval`."""

    def value(node):
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            return [value(element) for element in node.elts]
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            left, right = value(node.left), value(node.right)
            return left + right if isinstance(node.op, ast.Add) else left * right
        raise ValueError(f"conv layers {text!r}: only int lists and tuples joined by + and * are allowed")

    try:
        layers = value(ast.parse(text, mode="eval").body)
    except SyntaxError:
        raise ValueError(f"conv layers {text!r}: not a list expression") from None
    if not isinstance(layers, list) or not all(isinstance(layer, list) and len(layer) == 3 for layer in layers):
        raise ValueError(f"conv layers {text!r}: expected a list of (channels, kernel, stride)")
    return tuple(tuple(layer) for layer in layers)


class StarHubertOutput(NamedTuple):
    """hidden_states: L + 1 tensors (B, T, D), [0] the input of layer 1, [l] the output of layer l.
    padding_mask: (B, T) bool, True = padding. attentions: L head-averaged maps (B, T, T), or None."""

    hidden_states: list[Tensor]
    padding_mask: Tensor
    attentions: list[Tensor] | None


def conv_output_lengths(lengths: Tensor, kernels_and_strides) -> Tensor:
    """Valid output frames of unpadded 1-D convolutions: floor division per layer, as torchaudio's."""
    for kernel, stride in kernels_and_strides:
        lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
    return lengths.clamp(min=0)


class ConvLayerBlock(nn.Module):
    """Conv1d (no padding) -> optional norm -> GELU; registered as fairseq's Sequential(conv, dropout, norm, gelu)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, bias: bool, norm: nn.Module | None):
        super().__init__()
        self.kernel, self.stride = kernel, stride
        self.add_module("0", nn.Conv1d(in_channels, out_channels, kernel, stride=stride, bias=bias))
        if norm is not None:
            self.add_module("2", norm)
        nn.init.kaiming_normal_(self[0].weight)

    def __getitem__(self, index: int) -> nn.Module:
        return self._modules[str(index)]

    def forward(self, x: Tensor) -> Tensor:
        x = self[0](x)
        if "2" in self._modules:
            x = self[2](x)
        return F.gelu(x)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over channels of a (B, C, T) tensor; fairseq's Sequential(TransposeLast, LayerNorm, TransposeLast)."""

    def __init__(self, channels: int):
        super().__init__()
        self.add_module("1", nn.LayerNorm(channels))

    def forward(self, x: Tensor) -> Tensor:
        return self._modules["1"](x.transpose(1, 2)).transpose(1, 2)


class FeatureExtractor(nn.Module):
    """Waveform (B, S) -> conv features (B, T, C); frame counts by floor division per layer."""

    def __init__(self, conv_layers: ConvLayers, mode: str, bias: bool):
        super().__init__()
        blocks, in_channels = [], 1
        for index, (channels, kernel, stride) in enumerate(conv_layers):
            if mode == "layer_norm":
                norm = ChannelLayerNorm(channels)
            elif index == 0:
                norm = nn.GroupNorm(channels, channels)
            else:
                norm = None
            blocks.append(ConvLayerBlock(in_channels, channels, kernel, stride, bias, norm))
            in_channels = channels
        self.conv_layers = nn.ModuleList(blocks)

    def frame_lengths(self, lengths: Tensor) -> Tensor:
        return conv_output_lengths(lengths, [(block.kernel, block.stride) for block in self.conv_layers])

    def forward(self, waveforms: Tensor) -> Tensor:
        x = waveforms.unsqueeze(1)
        for block in self.conv_layers:
            x = block(x)
        return x.transpose(1, 2)


class WeightNormConv1d(nn.Module):
    """Conv1d with weight = g * v / ||v||, the norm taken per kernel position (weight norm over dim 2).

    Stores fairseq's `weight_g` (1, 1, K) and `weight_v`; an explicit module so the forward exports."""

    def __init__(self, channels: int, kernel: int, groups: int):
        super().__init__()
        self.padding, self.groups = kernel // 2, groups
        weight = torch.empty(channels, channels // groups, kernel)
        nn.init.normal_(weight, mean=0.0, std=math.sqrt(4.0 / (kernel * channels)))
        self.weight_g = nn.Parameter(weight.norm(dim=(0, 1), keepdim=True))
        self.weight_v = nn.Parameter(weight)
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        weight = self.weight_v * (self.weight_g / self.weight_v.norm(dim=(0, 1), keepdim=True))
        return F.conv1d(x, weight, self.bias, padding=self.padding, groups=self.groups)


class PositionalConv(nn.Module):
    """Convolutional relative position embedding (B, T, D) -> (B, T, D); an even kernel drops the last frame."""

    def __init__(self, channels: int, kernel: int, groups: int):
        super().__init__()
        self.add_module("0", WeightNormConv1d(channels, kernel, groups))
        self.trim = 1 if kernel % 2 == 0 else 0

    def forward(self, x: Tensor) -> Tensor:
        x = self._modules["0"](x.transpose(1, 2))
        if self.trim:
            x = x[:, :, : -self.trim]
        return F.gelu(x).transpose(1, 2)


class SelfAttention(nn.Module):
    """Multi-head self-attention; the fused kernel unless head-averaged maps are asked for."""

    def __init__(self, embed_dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def forward(self, x: Tensor, key_padding_mask: Tensor, need_attention: bool) -> tuple[Tensor, Tensor | None]:
        batch, frames, dim = x.shape
        q, k, v = (
            proj(x).view(batch, frames, self.heads, dim // self.heads).transpose(1, 2)
            for proj in (self.q_proj, self.k_proj, self.v_proj)
        )
        keep = ~key_padding_mask[:, None, None, :]  # (B, 1, 1, T): True = attend
        dropout = self.dropout if self.training else 0.0
        if need_attention:
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))
            probs = scores.masked_fill(~keep, float("-inf")).softmax(dim=-1)
            out = F.dropout(probs, dropout, self.training) @ v
            attention = probs.mean(dim=1)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=dropout)
            attention = None
        out = out.transpose(1, 2).reshape(batch, frames, dim)
        return self.out_proj(out), attention


class EncoderLayer(nn.Module):
    """Transformer layer: self-attention and a GELU feed-forward, each with a residual; post- or pre-LN."""

    def __init__(self, config: StarHubertConfig):
        super().__init__()
        dim = config.encoder_embed_dim
        self.layer_norm_first = config.layer_norm_first
        self.self_attn = SelfAttention(dim, config.encoder_attention_heads, config.attention_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, config.encoder_ffn_embed_dim)
        self.fc2 = nn.Linear(config.encoder_ffn_embed_dim, dim)
        self.final_layer_norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(config.dropout)
        self.activation_dropout = nn.Dropout(config.activation_dropout)

    def feed_forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.fc2(self.activation_dropout(F.gelu(self.fc1(x)))))

    def forward(self, x: Tensor, padding_mask: Tensor, need_attention: bool) -> tuple[Tensor, Tensor | None]:
        if self.layer_norm_first:
            attended, attention = self.self_attn(self.self_attn_layer_norm(x), padding_mask, need_attention)
            x = x + self.dropout(attended)
            x = x + self.feed_forward(self.final_layer_norm(x))
        else:
            attended, attention = self.self_attn(x, padding_mask, need_attention)
            x = self.self_attn_layer_norm(x + self.dropout(attended))
            x = self.final_layer_norm(x + self.feed_forward(x))
        return x, attention


class Encoder(nn.Module):
    """Positional conv, LayerNorm (post-LN) and the transformer layers; returns every layer boundary."""

    def __init__(self, config: StarHubertConfig):
        super().__init__()
        dim = config.encoder_embed_dim
        self.layer_norm_first = config.layer_norm_first
        self.pos_conv = PositionalConv(dim, config.conv_pos, config.conv_pos_groups)
        self.layer_norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.encoder_layers))

    def forward(self, x: Tensor, padding_mask: Tensor, need_attention: bool) -> tuple[list[Tensor], list[Tensor] | None]:
        x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        x = x + self.pos_conv(x)
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        hidden_states, attentions = [x], []
        x = self.dropout(x)
        for layer in self.layers:
            x, attention = layer(x, padding_mask, need_attention)
            hidden_states.append(x)
            attentions.append(attention)
        if self.layer_norm_first:
            hidden_states[-1] = self.layer_norm(x)
        return hidden_states, (attentions if need_attention else None)


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
        """(waveforms cast to the model's dtype with every sample past `lengths` zeroed, lengths), or a
        ValueError naming the bad input: not (B, S) float, lengths not (B,) integers in
        receptive_field..S, NaN or infinite samples within lengths.

        Zeroing first keeps what lies past `lengths` (noise, NaN) out of the valid frames; the padded
        length still reaches them through the first GroupNorm, which HuBERT takes over the whole
        padded time axis (README: Padding). The checks are batched tensor ops: one device sync each
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
            self._check_lengths(lengths, samples)
        valid = torch.arange(samples, device=waveforms.device)[None, :] < lengths[:, None]
        waveforms = torch.where(valid, waveforms.to(self.dtype), 0.0)
        if checkable:
            _check_finite(waveforms)
        return waveforms, lengths

    def _check_lengths(self, lengths: Tensor, samples: int) -> None:
        shortest, longest = (int(value) for value in torch.aminmax(lengths))
        if shortest >= self.receptive_field and longest <= samples:
            return
        if longest > samples:
            bad, expected = lengths > samples, f"at most the {samples} samples of the padded batch"
        elif shortest <= 0:
            bad, expected = lengths <= 0, "positive sample counts"
        else:
            raise ValueError(
                f"input shorter than the conv receptive field ({self.receptive_field} samples = "
                f"{1000 * self.receptive_field / SAMPLE_RATE:.0f} ms at {SAMPLE_RATE} Hz): lengths {lengths.tolist()}"
            )
        indices = bad.nonzero().flatten().tolist()
        raise ValueError(f"lengths: waveform(s) {indices} have lengths {lengths[bad].tolist()}; expected {expected}")

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
        if len(waveforms) == 0:
            raise ValueError("expected a non-empty list of 1-D float waveforms at 16 kHz, found an empty list")
        for index, waveform in enumerate(waveforms):
            if not isinstance(waveform, Tensor) or waveform.dim() != 1 or not waveform.is_floating_point():
                found = f"shape {tuple(waveform.shape)} of {waveform.dtype}" if isinstance(waveform, Tensor) else type(waveform).__name__
                raise ValueError(f"waveform {index}: expected a 1-D float tensor, found {found}")
        lengths = torch.tensor([len(w) for w in waveforms], device=waveforms[0].device)
        batch = nn.utils.rnn.pad_sequence([w.to(self.dtype) for w in waveforms], batch_first=True)
        return self(batch, lengths, need_attention=need_attention)


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


def star_conv_layers(width: int) -> ConvLayers:
    """STaRHuBERT's extractor with its last three layers at `width` channels (432 gives the paper's)."""
    return ((128, 10, 5), (256, 1, 1)) + ((256, 3, 2),) * 4 + ((width, 1, 1),) + ((width, 2, 2),) * 2


# Published shapes. STaRHuBERT and -L are the paper's (22,308,592 and 26,626,672 parameters).
# The -S (14.1M) and -XS (9.39M) shapes were never published: these are this project's choice,
# keeping the teacher's 12 layers and 8 heads and narrowing the encoder to 288 x 1184
# (14,101,792 parameters) and 192 x 1360 (9,386,752), with the extractor's last layers at the
# encoder width so that no projection is needed. `hubert_base` is the teacher's shape.
PRESETS: dict[str, StarHubertConfig] = {
    "star_hubert": StarHubertConfig(),
    "star_hubert_l": StarHubertConfig(encoder_ffn_embed_dim=1392),
    "star_hubert_s": StarHubertConfig(
        conv_layers=star_conv_layers(288), encoder_embed_dim=288, encoder_ffn_embed_dim=1184
    ),
    "star_hubert_xs": StarHubertConfig(
        conv_layers=star_conv_layers(192), encoder_embed_dim=192, encoder_ffn_embed_dim=1360
    ),
    # The mini-SUPERB's student (`s3prl-star demo`): STaRHuBERT's proportions of HuBERT Base applied to
    # the mini teacher of `s3prl-star teacher-pretrain` (6 layers, 128 x 512, 4 heads, 64 conv channels):
    # the same depth, encoder width x 0.56, FFN x 0.32, conv channels a quarter then a half (345,400
    # parameters, 24 % of the teacher's 1,425,920).
    "star_hubert_mini": StarHubertConfig(
        conv_layers=((16, 10, 5), (32, 1, 1)) + ((32, 3, 2),) * 4 + ((72, 1, 1), (72, 2, 2), (72, 2, 2)),
        encoder_layers=6, encoder_embed_dim=72, encoder_ffn_embed_dim=160, encoder_attention_heads=4,
        conv_pos=32, conv_pos_groups=4,
    ),
    "hubert_base": StarHubertConfig(
        conv_layers=HUBERT_CONV_LAYERS,
        encoder_embed_dim=768,
        encoder_ffn_embed_dim=3072,
        encoder_attention_heads=12,
        dropout_input=0.1,
    ),
}


def build_preset(name: str, **overrides) -> StarHubert:
    """A randomly initialised model of a named shape; `overrides` replace config fields."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose from {sorted(PRESETS)}")
    return StarHubert(dataclasses.replace(PRESETS[name], **overrides))

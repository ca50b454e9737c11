"""The student's blocks: conv feature extractor, positional conv, self-attention, transformer layers.

Conventions: waveforms are (B, S) float 16 kHz with `lengths` (B,); frame padding masks are
(B, T) bool with True = padding; frame counts come from floor division through the conv stack.
Module names follow fairseq's HuBERT, so its state dicts load strictly.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from s3prl_star.model.config import ConvLayers, StarHubertConfig


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


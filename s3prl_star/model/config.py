"""The student's shape: `StarHubertConfig` (fairseq's field names, as in the released yaml) and `PRESETS`.

STaRHuBERT and -L are the paper's shapes; -S and -XS are this project's choice (docs/student.md).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

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


"""The student as a Hugging Face `transformers.HubertModel` (docs/export.md, "Hugging Face folder").

The student is HuBERT's network with other widths, so it maps onto `HubertModel` with no new code:
`hubert_config` spells out every `HubertConfig` field from the `StarHubertConfig`, `convert_state_dict`
renames fairseq's parameter names to HF's by an anchored rule table (`KEY_RULES`), and `to_hf_model`
builds the HF model and loads the renamed weights strictly.

One difference: HF's `HubertFeatureProjection` always holds a `projection` Linear (conv width ->
hidden size) after its LayerNorm. HuBERT Base needs it (512 -> 768); a student whose extractor ends at
the encoder width has none (`post_extract_proj` is absent), so HF's is set to the identity: the same
outputs, and `identity_projection_parameters` more parameters (187,056 for star_hubert: 22,308,592 ->
22,495,648). A student with `post_extract_proj` has it mapped onto HF's projection instead.

Both extractor modes map: `default` (GroupNorm after the first conv only) is HF's
`feat_extract_norm="group"`, `layer_norm` (LayerNorm after every conv) is `"layer"`; pre-LN
(`layer_norm_first`) is HF's `do_stable_layer_norm`. `transformers` is imported inside the functions,
so the rest of the model package does not need it to import.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from s3prl_star.model.config import SAMPLE_RATE, StarHubertConfig
from s3prl_star.model.star_hubert import StarHubert

if TYPE_CHECKING:
    from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

# The student's fairseq names -> HF HubertModel's, in order; each pattern must match a whole key
# (re.fullmatch). A student key no rule matches, or a renamed key HF's model lacks, is an error.
KEY_RULES: tuple[tuple[str, str], ...] = (
    # every conv of the extractor: fairseq's Sequential(conv, dropout, norm, gelu) index 0 -> `.conv`
    (r"feature_extractor\.conv_layers\.(\d+)\.0\.(weight|bias)", r"feature_extractor.conv_layers.\1.conv.\2"),
    # extractor_mode default: the GroupNorm after the first conv (Sequential index 2) -> its `.layer_norm`
    (r"feature_extractor\.conv_layers\.0\.2\.(weight|bias)", r"feature_extractor.conv_layers.0.layer_norm.\1"),
    # extractor_mode layer_norm: Sequential(TransposeLast, LayerNorm, TransposeLast) at index 2 -> `.layer_norm`
    (r"feature_extractor\.conv_layers\.(\d+)\.2\.1\.(weight|bias)", r"feature_extractor.conv_layers.\1.layer_norm.\2"),
    # the LayerNorm over the extractor's output: HF applies it first in its feature projection
    (r"layer_norm\.(weight|bias)", r"feature_projection.layer_norm.\1"),
    # conv width != encoder width: the student's projection is HF's (otherwise HF's is the identity)
    (r"post_extract_proj\.(weight|bias)", r"feature_projection.projection.\1"),
    # positional conv: weight norm over dim 2 as torch's parametrization (g = original0, v = original1)
    (r"encoder\.pos_conv\.0\.weight_g", r"encoder.pos_conv_embed.conv.parametrizations.weight.original0"),
    (r"encoder\.pos_conv\.0\.weight_v", r"encoder.pos_conv_embed.conv.parametrizations.weight.original1"),
    (r"encoder\.pos_conv\.0\.bias", r"encoder.pos_conv_embed.conv.bias"),
    # the encoder's LayerNorm (after the positional conv when post-LN, after the last layer when pre-LN)
    (r"encoder\.layer_norm\.(weight|bias)", r"encoder.layer_norm.\1"),
    # self-attention projections: `self_attn` -> `attention`, the same q/k/v/out names
    (r"encoder\.layers\.(\d+)\.self_attn\.(q|k|v|out)_proj\.(weight|bias)", r"encoder.layers.\1.attention.\2_proj.\3"),
    # the LayerNorm of the attention block
    (r"encoder\.layers\.(\d+)\.self_attn_layer_norm\.(weight|bias)", r"encoder.layers.\1.layer_norm.\2"),
    # the feed-forward block: fc1 / fc2 -> intermediate_dense / output_dense
    (r"encoder\.layers\.(\d+)\.fc1\.(weight|bias)", r"encoder.layers.\1.feed_forward.intermediate_dense.\2"),
    (r"encoder\.layers\.(\d+)\.fc2\.(weight|bias)", r"encoder.layers.\1.feed_forward.output_dense.\2"),
    # the LayerNorm of the feed-forward block: the same name
    (r"encoder\.layers\.(\d+)\.final_layer_norm\.(weight|bias)", r"encoder.layers.\1.final_layer_norm.\2"),
)
IDENTITY_PROJECTION_KEYS = ("feature_projection.projection.weight", "feature_projection.projection.bias")
_COMPILED_RULES = tuple((re.compile(pattern), replacement) for pattern, replacement in KEY_RULES)


class HfConversionError(ValueError):
    """The student cannot be written as a `HubertModel`; the message names the key or field."""


def hubert_config(config: StarHubertConfig) -> HubertConfig:
    """The `HubertConfig` of a student, every field explicit (HF's defaults are HuBERT Base's, not ours)."""
    from transformers import HubertConfig

    channels, kernels, strides = zip(*config.conv_layers)
    return HubertConfig(
        # the shape
        hidden_size=config.encoder_embed_dim,
        num_hidden_layers=config.encoder_layers,
        num_attention_heads=config.encoder_attention_heads,
        intermediate_size=config.encoder_ffn_embed_dim,
        hidden_act="gelu",  # the student's F.gelu (erf), HF's "gelu"
        conv_dim=list(channels),
        conv_kernel=list(kernels),
        conv_stride=list(strides),
        conv_bias=config.conv_bias,
        feat_extract_norm="group" if config.extractor_mode == "default" else "layer",
        feat_extract_activation="gelu",
        feat_proj_layer_norm=True,  # the student's `layer_norm` over the extractor's output
        num_conv_pos_embeddings=config.conv_pos,
        num_conv_pos_embedding_groups=config.conv_pos_groups,
        conv_pos_batch_norm=False,  # weight-normed positional conv, no batch norm
        do_stable_layer_norm=config.layer_norm_first,
        layer_norm_eps=1e-5,  # torch's LayerNorm / GroupNorm default, which the student uses
        # the dropouts the student was trained with (all off in eval mode)
        hidden_dropout=config.dropout,
        attention_dropout=config.attention_dropout,
        activation_dropout=config.activation_dropout,
        feat_proj_dropout=config.dropout_input,
        layerdrop=0.0,  # the student has no LayerDrop
        # no masking: STaR distils unmasked inputs (`mask_time_prob` > 0 turns SpecAugment on to fine-tune)
        apply_spec_augment=True,
        mask_time_prob=0.0,
        mask_time_length=10,
        mask_time_min_masks=2,
        mask_feature_prob=0.0,
        mask_feature_length=10,
        mask_feature_min_masks=0,
        initializer_range=0.02,  # the student's BERT-style init of linear layers
        # fields of HF's task heads (HubertForCTC, HubertForSequenceClassification), which the student
        # has none of: HF's defaults
        vocab_size=32,
        final_dropout=0.1,
        ctc_loss_reduction="sum",
        ctc_zero_infinity=False,
        use_weighted_layer_sum=False,
        classifier_proj_size=256,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )


def rename_key(key: str) -> str | None:
    """The HF name of one student key by the first `KEY_RULES` pattern matching it whole, or None."""
    for pattern, replacement in _COMPILED_RULES:
        if pattern.fullmatch(key):
            return pattern.sub(replacement, key)
    return None


def convert_state_dict(state_dict: dict[str, Tensor], source: str = "student") -> dict[str, Tensor]:
    """The student's state dict under HF's names (`KEY_RULES`); an HfConversionError lists the keys no
    rule knows, or two keys renamed to one name."""
    converted, unknown = {}, []
    for key, value in state_dict.items():
        name = rename_key(key)
        if name is None:
            unknown.append(key)
        elif name in converted:
            raise HfConversionError(f"{source}: keys renamed to the same HF key {name!r} (rule table error)")
        else:
            converted[name] = value
    if unknown:
        raise HfConversionError(f"{source}: student key(s) with no HF HubertModel name: {sorted(unknown)}; "
                                "expected the fairseq names of docs/checkpoints.md")
    return converted


def identity_projection(width: int) -> dict[str, Tensor]:
    """HF's `feature_projection.projection` as the identity: the student has no projection there."""
    return {IDENTITY_PROJECTION_KEYS[0]: torch.eye(width), IDENTITY_PROJECTION_KEYS[1]: torch.zeros(width)}


def has_projection(model: StarHubert) -> bool:
    """Whether the student projects the extractor's output (conv width != encoder width)."""
    return hasattr(model, "post_extract_proj")


def identity_projection_parameters(config: StarHubertConfig) -> int:
    """Parameters HF's model has beyond the student's: the identity projection (0 with `post_extract_proj`)."""
    width = config.conv_layers[-1][0]
    return 0 if width != config.encoder_embed_dim else width * width + width


def hf_state_dict(model: StarHubert, source: str = "student") -> dict[str, Tensor]:
    """Every tensor of the HF model: the renamed student weights, plus the identity projection when the
    student has none."""
    converted = convert_state_dict(model.state_dict(), source)
    if not has_projection(model):
        converted.update(identity_projection(model.config.encoder_embed_dim))
    return converted


def to_hf_model(model: StarHubert, source: str = "student") -> HubertModel:
    """A `transformers.HubertModel` in eval mode computing what `model` computes; the weights are loaded
    strictly, an HfConversionError names missing, unexpected or mis-shaped keys."""
    from transformers import HubertModel

    hf_model = HubertModel(hubert_config(model.config)).eval()
    weights = hf_state_dict(model, source)
    expected = hf_model.state_dict()
    missing, unexpected = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    mis_shaped = [f"{key}: student {tuple(weights[key].shape)} vs HF {tuple(expected[key].shape)}"
                  for key in sorted(set(expected) & set(weights)) if weights[key].shape != expected[key].shape]
    if missing or unexpected or mis_shaped:
        raise HfConversionError(
            f"{source}: the renamed weights do not fit transformers.HubertModel"
            + (f"\n  missing HF keys: {missing}" if missing else "")
            + (f"\n  unexpected keys: {unexpected}" if unexpected else "")
            + (f"\n  shape mismatches: {mis_shaped}" if mis_shaped else ""))
    hf_model.load_state_dict({key: value.detach().clone() for key, value in weights.items()}, strict=True)
    return hf_model


def feature_extractor() -> Wav2Vec2FeatureExtractor:
    """What the student takes: raw 16 kHz mono waveforms, not normalised (as HuBERT Base: fairseq's
    `normalize: false`), zero-padded on the right, with the attention mask (the student masks padded
    frames in attention; without the mask HF's model attends to them)."""
    from transformers import Wav2Vec2FeatureExtractor

    return Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=SAMPLE_RATE, padding_value=0.0,
                                    padding_side="right", do_normalize=False, return_attention_mask=True)


def attention_mask(lengths: Tensor, samples: int) -> Tensor:
    """HF's (B, S) sample mask, 1 = valid, for a zero-padded batch of `lengths` valid samples."""
    return (torch.arange(samples, device=lengths.device)[None, :] < lengths[:, None]).long()

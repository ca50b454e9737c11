"""The student: exact shapes, equivalence with s3prl's fairseq-derived HuBERT, padding, config errors."""
import dataclasses

import pytest
import torch

from helpers import TINY_CONFIG
from s3prl_star.model.config import PRESETS, StarHubertConfig, star_conv_layers
from s3prl_star.model.star_hubert import StarHubert, build_preset
from s3prl_star.model.released import parse_conv_layers


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "name, expected",
    [("star_hubert", 22_308_592), ("star_hubert_l", 26_626_672), ("star_hubert_s", 14_101_792), ("star_hubert_xs", 9_386_752),
     ("star_hubert_mini", 345_400)],
)
def test_preset_parameter_counts(name, expected):
    with torch.device("meta"):
        assert n_params(StarHubert(PRESETS[name])) == expected


def test_small_presets_hit_the_published_sizes():
    """The paper's STaRHuBERT-S and -XS: 14.1M and 9.39M parameters, as build_preset builds them."""
    with torch.device("meta"):
        small, extra_small = n_params(build_preset("star_hubert_s")), n_params(build_preset("star_hubert_xs"))
    assert small == 14_101_792 and round(small / 1e6, 1) == 14.1
    assert extra_small == 9_386_752 and round(extra_small / 1e6, 2) == 9.39
    assert PRESETS["star_hubert"].conv_layers == star_conv_layers(432)


def s3prl_hubert(config: StarHubertConfig):
    """s3prl's fairseq-derived HubertModel built with the student's shape, eval mode."""
    from s3prl.upstream.hubert.hubert_model import HubertConfig, HubertModel, HubertPretrainingConfig

    layers = " + ".join(f"[{tuple(layer)}]" for layer in config.conv_layers)
    cfg = HubertConfig(
        label_rate=50.0,
        extractor_mode=config.extractor_mode,
        conv_feature_layers=layers,
        conv_bias=config.conv_bias,
        encoder_layers=config.encoder_layers,
        encoder_embed_dim=config.encoder_embed_dim,
        encoder_ffn_embed_dim=config.encoder_ffn_embed_dim,
        encoder_attention_heads=config.encoder_attention_heads,
        conv_pos=config.conv_pos,
        conv_pos_groups=config.conv_pos_groups,
        layer_norm_first=config.layer_norm_first,
        final_dim=16,
    )
    return HubertModel(cfg, HubertPretrainingConfig(label_rate=50.0), [list("abcd")]).eval()


def s3prl_layer_states(model, waveforms, lengths):
    """Input of layer 1 and each layer's output from s3prl's model, captured by hooks (as its expert does)."""
    captured = []
    first = model.encoder.layers[0].register_forward_pre_hook(lambda m, args, kwargs: captured.append(args[0]), with_kwargs=True)
    hooks = [first] + [layer.register_forward_hook(lambda m, i, out: captured.append(out[0])) for layer in model.encoder.layers]
    wav_padding = torch.arange(waveforms.size(1))[None, :] >= lengths[:, None]
    with torch.no_grad():
        _, padding_mask = model.extract_features(waveforms, padding_mask=wav_padding)
    for hook in hooks:
        hook.remove()
    frames = padding_mask.size(1)  # its encoder pads to an even length inside; s3prl's expert trims back
    return [state.transpose(0, 1)[:, :frames] for state in captured], padding_mask


@pytest.mark.parametrize(
    "config", [TINY_CONFIG, dataclasses.replace(TINY_CONFIG, layer_norm_first=True, extractor_mode="layer_norm")]
)
def test_equivalent_to_s3prl_hubert_on_a_padded_batch(config):
    torch.manual_seed(0)
    reference = s3prl_hubert(config)
    weights = {k: v for k, v in reference.state_dict().items() if not k.startswith(("final_proj", "label_embs", "mask_emb"))}
    student = StarHubert(config).eval()
    student.load_state_dict(weights, strict=True)

    # HuBERT marks a frame as padding when all samples of its chunk (here 32000 // 99 frames = 323)
    # are padding; the student counts frames by floor division through the conv stack. Both give
    # 99, 75 and 49 frames for these lengths (they differ by one frame for some others).
    lengths = torch.tensor([32000, 24160, 15800])
    waveforms = torch.randn(3, 32000) * (torch.arange(32000)[None, :] < lengths[:, None])
    expected, expected_mask = s3prl_layer_states(reference, waveforms, lengths)
    with torch.no_grad():
        out = student(waveforms, lengths)

    assert torch.equal(out.padding_mask, expected_mask)
    assert len(out.hidden_states) == len(expected) == config.encoder_layers + 1
    valid = ~out.padding_mask[..., None]
    if config.layer_norm_first:  # s3prl's hooks see layer L before the final LayerNorm the student applies
        expected[-1] = reference.encoder.layer_norm(expected[-1])
    for ours, theirs in zip(out.hidden_states, expected):
        assert (ours - theirs).mul(valid).abs().max() <= 1e-4


def test_padded_batch_equals_one_by_one_without_group_norm():
    """With per-frame LayerNorm in the extractor nothing crosses utterances: padding must not leak."""
    torch.manual_seed(0)
    model = StarHubert(dataclasses.replace(TINY_CONFIG, extractor_mode="layer_norm")).eval()
    wavs = [torch.randn(n) for n in (16000, 9001, 4000)]
    with torch.no_grad():
        batch = model.forward_list(wavs, need_attention=True)
        for index, wav in enumerate(wavs):
            single = model.forward_list([wav], need_attention=True)
            frames = single.hidden_states[0].size(1)
            assert int((~batch.padding_mask[index]).sum()) == frames
            for ours, alone in zip(batch.hidden_states, single.hidden_states):
                assert torch.allclose(ours[index, :frames], alone[0], atol=1e-4)
            for ours, alone in zip(batch.attentions, single.attentions):
                assert torch.allclose(ours[index, :frames, :frames], alone[0], atol=1e-5)


def test_explicit_attention_path_matches_fused_and_returns_maps():
    torch.manual_seed(0)
    model = StarHubert(TINY_CONFIG).eval()
    waveforms, lengths = torch.randn(2, 8000), torch.tensor([8000, 5000])
    with torch.no_grad():
        fused = model(waveforms, lengths)
        explicit = model(waveforms, lengths, need_attention=True)
    assert fused.attentions is None
    assert len(explicit.attentions) == TINY_CONFIG.encoder_layers
    frames = fused.padding_mask.size(1)
    assert explicit.attentions[0].shape == (2, frames, frames)
    assert torch.allclose(explicit.attentions[0].sum(-1), torch.ones(2, frames))
    assert explicit.attentions[0][1][:, ~fused.padding_mask[1]].sum() == pytest.approx(explicit.attentions[0][1].sum().item())
    for a, b in zip(fused.hidden_states, explicit.hidden_states):
        assert torch.allclose(a, b, atol=1e-5)


def test_frame_rate_is_20_ms():
    model = build_preset("star_hubert").eval()
    with torch.no_grad():
        out = model(torch.randn(1, 16000))
    assert out.hidden_states[0].shape == (1, 49, 432)
    assert model.receptive_field == 400


@pytest.mark.parametrize(
    "waveforms, lengths, match",
    [
        (torch.randn(1, 399), None, "receptive field"),
        (torch.randn(2, 1000), torch.tensor([1000, 300]), "receptive field"),
        (torch.randn(1, 1, 1000), None, "float waveform"),
        (torch.ones(1, 1000, dtype=torch.int16), None, "float waveform"),
        (torch.randn(2, 1000), torch.tensor([1000]), "lengths"),
    ],
)
def test_bad_input_is_a_clear_error(waveforms, lengths, match):
    with pytest.raises(ValueError, match=match):
        StarHubert(TINY_CONFIG)(waveforms, lengths)


def test_config_round_trip_and_errors():
    assert StarHubertConfig.from_dict(PRESETS["star_hubert"].to_dict()) == PRESETS["star_hubert"]
    with pytest.raises(ValueError, match="encoder_layer"):
        StarHubertConfig.from_dict({"encoder_layer": 12})
    with pytest.raises(ValueError, match="encoder_layers: expected a positive int, found '12'"):
        StarHubertConfig.from_dict({"encoder_layers": "12"})
    with pytest.raises(ValueError, match="dropout"):
        StarHubertConfig(dropout=1.5)
    with pytest.raises(ValueError, match="not divisible"):
        StarHubertConfig(encoder_attention_heads=5)


def test_conv_layer_notation_is_parsed_without_eval():
    assert parse_conv_layers("[(512,10,5)] + [(512,3,2)] * 2") == ((512, 10, 5), (512, 3, 2), (512, 3, 2))
    for text in ("__import__('os').system('true')", "[(1,2)]", "[(1.5,2,3)]"):
        with pytest.raises(ValueError, match="conv layers"):
            parse_conv_layers(text)


@pytest.mark.parametrize("layer_norm_first", [False, True])
def test_attention_maps_are_the_head_mean_of_softmax_qk(layer_norm_first):
    """Each returned map equals mean over heads of softmax(Q K^T / sqrt(d_head)) over valid keys, built
    here from the layer's own q/k projections of the input its attention receives."""
    torch.manual_seed(0)
    model = StarHubert(dataclasses.replace(TINY_CONFIG, layer_norm_first=layer_norm_first)).eval()
    inputs = []
    hooks = [layer.self_attn.register_forward_pre_hook(lambda module, args: inputs.append(args[0]))
             for layer in model.encoder.layers]
    waveforms, lengths = torch.randn(2, 8000), torch.tensor([8000, 5000])
    with torch.no_grad():
        out = model(waveforms, lengths, need_attention=True)
    for hook in hooks:
        hook.remove()
    heads = TINY_CONFIG.encoder_attention_heads
    for layer, x, attention in zip(model.encoder.layers, inputs, out.attentions):
        q, k = (proj(x).unflatten(-1, (heads, -1)).transpose(1, 2) for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj))
        scores = q @ k.transpose(-2, -1) / (q.size(-1) ** 0.5)
        expected = scores.masked_fill(out.padding_mask[:, None, None, :], float("-inf")).softmax(-1).mean(dim=1)
        valid = ~out.padding_mask[:, :, None]
        torch.testing.assert_close(attention * valid, expected * valid, rtol=0, atol=1e-6)

"""Teachers: random HuBERT / wav2vec 2.0 / WavLM checkpoints loaded through s3prl's `*_local` hub entries.

Every reference below is taken from the s3prl model itself (its own hooks, `extract_features`,
padding mask and attention projections), never from the code under test.
"""
import pytest
import torch

from s3prl_star.model.released import parse_conv_layers
from s3prl_star.mini_superb.random_teacher import default_conv_layers, save_random_teacher
from s3prl_star.distill.teacher import Teacher, resolve_layer_map

TINY = dict(layers=2, embed_dim=64, ffn_dim=128, heads=4)
KINDS = ("hubert", "wav2vec2", "wavlm")
LENGTHS = [16000, 12345, 8000, 4001]


@pytest.fixture(scope="module")
def teacher_paths(tmp_path_factory, tiny_hubert_teacher):
    root = tmp_path_factory.mktemp("tiny_teachers")
    return {
        "hubert": tiny_hubert_teacher,
        "wav2vec2": save_random_teacher("wav2vec2", root / "wav2vec2.pt", seed=1, **TINY),
        "wavlm": save_random_teacher("wavlm", root / "wavlm.pt", seed=2, **TINY),
    }


@pytest.fixture(scope="module")
def teachers(teacher_paths):
    return {kind: Teacher.from_s3prl(f"{kind}_local", ckpt=str(path)) for kind, path in teacher_paths.items()}


@pytest.fixture(scope="module")
def batch():
    generator = torch.Generator().manual_seed(0)
    waveforms = 0.1 * torch.randn(len(LENGTHS), max(LENGTHS), generator=generator)
    lengths = torch.tensor(LENGTHS)
    waveforms[torch.arange(max(LENGTHS))[None, :] >= lengths[:, None]] = 0.0
    return waveforms, lengths


def test_saved_formats_are_what_the_s3prl_loaders_read(teacher_paths):
    expected_keys = {
        "hubert": {"task_cfg", "model_cfg", "model_weight", "dictionaries_symbols"},
        "wav2vec2": {"task_cfg", "model_cfg", "model_weight"},
        "wavlm": {"cfg", "model"},
    }
    for kind, path in teacher_paths.items():
        state = torch.load(path, map_location="cpu", weights_only=True)
        assert set(state) == expected_keys[kind], kind
    assert not [p for p in teacher_paths["wavlm"].parent.iterdir() if p.suffix == ".tmp"]


def test_seed_fixes_weights_and_leaves_global_rng_alone(tmp_path):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = save_random_teacher("hubert", tmp_path / "a.pt", seed=5, **TINY)
    assert torch.equal(torch.get_rng_state(), before)
    b = save_random_teacher("hubert", tmp_path / "b.pt", seed=5, **TINY)
    c = save_random_teacher("hubert", tmp_path / "c.pt", seed=6, **TINY)
    weights = [torch.load(p, weights_only=True)["model_weight"] for p in (a, b, c)]
    key = "encoder.layers.0.self_attn.q_proj.weight"
    assert torch.equal(weights[0][key], weights[1][key])
    assert not torch.equal(weights[0][key], weights[2][key])
    with pytest.raises(ValueError, match="unknown teacher kind 'data2vec'"):
        save_random_teacher("data2vec", tmp_path / "d.pt", **TINY)


def test_base_arguments_give_hubert_base(tmp_path):
    from s3prl.upstream.hubert.hubert_model import HubertConfig
    from s3prl.upstream.utils import merge_with_parent

    assert default_conv_layers(768) == [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2
    path = save_random_teacher("hubert", tmp_path / "base.pt", layers=12, embed_dim=768, ffn_dim=3072, heads=12)
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    # HuBERT Base as released: 94.68M parameters with its pre-training heads (final_proj, label embeddings)
    assert sum(tensor.numel() for tensor in state["model_weight"].values()) == 94_697_600
    config = merge_with_parent(HubertConfig, state["model_cfg"])  # as s3prl's loader reads it
    assert (config.encoder_layers, config.encoder_embed_dim, config.encoder_ffn_embed_dim) == (12, 768, 3072)
    assert config.encoder_attention_heads == 12 and not config.layer_norm_first
    assert parse_conv_layers(config.conv_feature_layers) == tuple(default_conv_layers(768))
    assert state["task_cfg"]["normalize"] is False
    del state
    path.unlink()  # 380 MB


@pytest.mark.parametrize("kind", KINDS)
def test_hidden_states_are_layer_inputs_and_encoder_output(kind, teachers, batch):
    teacher = teachers[kind]
    model = teacher.upstream.model
    waveform = batch[0][1, : LENGTHS[1]]
    captured = {}

    def capture_layer1_input(module, args):
        captured["layer1_input"] = args[0].transpose(0, 1)

    handle = model.encoder.layers[0].register_forward_pre_hook(capture_layer1_input)
    try:
        out = teacher(waveform[None], torch.tensor([LENGTHS[1]]))
    finally:
        handle.remove()
    with torch.no_grad():
        reference = model.extract_features(waveform[None], padding_mask=None)
        encoder_output = reference["x"] if kind == "wav2vec2" else reference[0]
        s3prl_states = teacher.upstream([waveform])["hidden_states"]

    frames = int(teacher.frame_lengths(torch.tensor([LENGTHS[1]])))
    assert teacher.num_layers == 2 and teacher.embed_dim == 64
    assert len(out.hidden_states) == teacher.num_layers + 1
    assert all(h.shape == (1, frames, 64) for h in out.hidden_states)
    assert encoder_output.shape == (1, frames, 64)
    torch.testing.assert_close(out.hidden_states[0], captured["layer1_input"][:, :frames])
    torch.testing.assert_close(out.hidden_states[-1], encoder_output)
    for ours, theirs in zip(out.hidden_states, s3prl_states):
        torch.testing.assert_close(ours, theirs)
    assert out.attentions is None
    assert not out.padding_mask.any()


@pytest.mark.parametrize("kind", KINDS)
def test_padded_batch_equals_one_utterance_at_a_time(kind, teachers, batch):
    teacher = teachers[kind]
    waveforms, lengths = batch
    out = teacher(waveforms, lengths)
    frames = teacher.frame_lengths(lengths)
    assert (~out.padding_mask).sum(1).tolist() == frames.tolist()
    for index, length in enumerate(LENGTHS):
        alone = teacher(waveforms[index : index + 1, :length], lengths[index : index + 1])
        valid = int(frames[index])
        assert alone.hidden_states[0].shape[1] == valid
        for batched, single in zip(out.hidden_states, alone.hidden_states):
            torch.testing.assert_close(batched[index, :valid], single[0], atol=1e-4, rtol=1e-4)
            assert not batched[index, valid:].any()


def test_raw_s3prl_batches_are_not_batch_invariant(teachers, batch):
    """Why the teacher hooks exist: s3prl's own forward lets padding change the valid frames."""
    upstream = teachers["hubert"].upstream
    waveforms, lengths = batch
    short = LENGTHS[-1]
    with torch.no_grad():
        batched = upstream([w[:n] for w, n in zip(waveforms, LENGTHS)])["hidden_states"][-1]
        alone = upstream([waveforms[-1, :short]])["hidden_states"][-1]
    valid = alone.shape[1]
    assert (batched[-1, :valid] - alone[0]).abs().max() > 1e-2


@pytest.mark.parametrize("kind", KINDS)
def test_padding_mask_against_s3prl_mask(kind, teachers, batch):
    teacher = teachers[kind]
    waveforms, lengths = batch
    sample_padding = torch.arange(waveforms.size(1))[None, :] >= lengths[:, None]
    with torch.no_grad():
        reference = teacher.upstream.model.extract_features(waveforms, padding_mask=sample_padding)
    s3prl_valid = (~(reference["padding_mask"] if kind == "wav2vec2" else reference[1])).sum(1)
    ours = (~teacher(waveforms, lengths).padding_mask).sum(1)
    if kind == "wav2vec2":  # conv-formula frame counts, as ours
        assert ours.tolist() == s3prl_valid.tolist()
    else:  # sample chunks: may leave one frame overlapping the padding unmasked
        assert ((s3prl_valid - ours) >= 0).all() and ((s3prl_valid - ours) <= 1).all()
        assert (s3prl_valid - ours).tolist() != [0] * len(LENGTHS)


def test_pre_ln_teacher_and_waveform_normalisation(tmp_path, batch):
    path = save_random_teacher("hubert", tmp_path / "pre_ln.pt", layer_norm_first=True, normalize=True, **TINY)
    teacher = Teacher.from_s3prl("hubert_local", ckpt=str(path))
    encoder = teacher.upstream.model.encoder
    captured = {}

    def capture_last_layer_output(module, args, output):
        captured["last_layer"] = output[0].transpose(0, 1)

    handle = encoder.layers[-1].register_forward_hook(capture_last_layer_output)
    waveforms, lengths = batch
    try:
        out = teacher(waveforms[:1], lengths[:1])
    finally:
        handle.remove()
    last_layer = captured["last_layer"][:, : out.hidden_states[-1].shape[1]]
    torch.testing.assert_close(out.hidden_states[-1], encoder.layer_norm(last_layer))
    assert (out.hidden_states[-1] - last_layer).abs().max() > 1e-2
    # task_cfg.normalize: the upstream layer-normalises each waveform, so the scale does not matter
    scaled = teacher(3.0 * waveforms[:1], lengths[:1])
    torch.testing.assert_close(scaled.hidden_states[-1], out.hidden_states[-1], atol=1e-4, rtol=1e-4)


def test_frozen_eval_and_no_grad(teachers, batch):
    teacher = teachers["hubert"]
    teacher.train()
    assert not teacher.training and not any(module.training for module in teacher.modules())
    assert not any(p.requires_grad for p in teacher.parameters())
    waveforms, lengths = batch
    first, second = teacher(waveforms, lengths), teacher(waveforms, lengths)
    assert not first.hidden_states[-1].requires_grad
    torch.testing.assert_close(first.hidden_states[-1], second.hidden_states[-1], rtol=0, atol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_attention_maps(kind, teacher_paths, batch):
    teacher = Teacher.from_s3prl(f"{kind}_local", ckpt=str(teacher_paths[kind]), need_attention=True)
    waveforms, lengths = batch
    out = teacher(waveforms, lengths)
    batch_size, frames = out.padding_mask.shape
    assert len(out.attentions) == teacher.num_layers
    valid = ~out.padding_mask
    for attention in out.attentions:
        assert attention.shape == (batch_size, frames, frames)
        row_sums = attention.sum(-1)
        torch.testing.assert_close(row_sums[valid], torch.ones(int(valid.sum())))
        assert not attention[out.padding_mask].any()  # padded query rows
        assert not attention.transpose(1, 2)[out.padding_mask].any()  # padded keys get no weight
    if kind == "hubert":  # plain softmax(q k^T / sqrt(d)) averaged over heads, from the layer's own projections
        attn = teacher.upstream.model.encoder.layers[0].self_attn
        x = out.hidden_states[0]
        heads, head_dim = attn.num_heads, attn.head_dim
        q = attn.q_proj(x).view(batch_size, frames, heads, head_dim).transpose(1, 2) * head_dim**-0.5
        k = attn.k_proj(x).view(batch_size, frames, heads, head_dim).transpose(1, 2)
        scores = (q @ k.transpose(-1, -2)).masked_fill(out.padding_mask[:, None, None, :], float("-inf"))
        expected = scores.softmax(-1).mean(1) * valid[:, :, None]
        torch.testing.assert_close(out.attentions[0], expected, atol=1e-5, rtol=1e-4)


def test_bad_inputs_and_upstreams(teachers):
    teacher = teachers["hubert"]
    with pytest.raises(ValueError, match="expected waveforms"):
        teacher(torch.zeros(16000), torch.tensor([16000]))
    with pytest.raises(ValueError, match="lengths must lie in"):
        teacher(torch.zeros(1, 16000), torch.tensor([16001]))
    with pytest.raises(ValueError, match="frames"):
        teacher(torch.zeros(1, 16000), torch.tensor([300]))
    with pytest.raises(TypeError, match="fairseq-style"):
        Teacher(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="not an s3prl.hub entry"):
        Teacher.from_s3prl("no_such_upstream")


def test_resolve_layer_map():
    assert resolve_layer_map(12, 12) == list(range(13))
    with pytest.raises(ValueError, match=r"teacher has 12 layers and the student 6: set `layer_map`"):
        resolve_layer_map(12, 6)
    assert resolve_layer_map(12, 3, [4, 8, 12]) == [0, 4, 8, 12]
    with pytest.raises(ValueError, match="expected one per student layer"):
        resolve_layer_map(12, 3, [4, 8])
    with pytest.raises(ValueError, match=r"in 1\.\.12, found \[0, 13\]"):
        resolve_layer_map(12, 3, [0, 6, 13])

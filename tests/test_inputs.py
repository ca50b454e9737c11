"""What the student and the upstream accept: bad inputs are named errors, samples past `lengths` are ignored,
other float dtypes are cast, and checkpoints with non-finite weights do not load.

The upstream is exercised through s3prl's own loader (`s3prl.nn.S3PRLUpstream`) and its hub entry.
"""
import pytest
import torch

from helpers import TINY_CONFIG
from s3prl_star.model.checkpoint import load_student, save_student
from s3prl_star.model.star_hubert import StarHubert

LENGTHS = torch.tensor([8000, 5000, 3200])


@pytest.fixture(scope="module")
def student():
    """The tiny 3-layer student with HuBERT's default extractor (GroupNorm over the padded time axis)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return StarHubert(TINY_CONFIG).eval()


def padded_batch(fill: float | None = 0.0) -> torch.Tensor:
    """(3, 8000) noise within LENGTHS; past them `fill`, or fresh loud noise when None."""
    generator = torch.Generator().manual_seed(1)
    waveforms = torch.randn(len(LENGTHS), int(LENGTHS.max()), generator=generator)
    past = torch.arange(waveforms.size(1))[None, :] >= LENGTHS[:, None]
    padding = torch.randn(waveforms.shape, generator=generator) * 100 if fill is None else torch.full_like(waveforms, fill)
    return torch.where(past, padding, waveforms)


def run(model, waveforms, lengths=LENGTHS):
    with torch.no_grad():
        return model(waveforms, lengths, need_attention=True)


@pytest.mark.parametrize("fill", [float("nan"), float("inf"), None], ids=["nan", "inf", "noise"])
def test_samples_past_lengths_do_not_change_any_output(student, fill):
    """Only the padded length reaches the valid frames (the first GroupNorm, docs/student.md: Padding), never the values."""
    reference, garbage = run(student, padded_batch()), run(student, padded_batch(fill))
    assert torch.equal(reference.padding_mask, garbage.padding_mask)
    for ours, theirs in zip(reference.hidden_states + reference.attentions, garbage.hidden_states + garbage.attentions):
        assert torch.equal(ours, theirs)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_samples_within_lengths_are_named(student, value):
    waveforms = padded_batch()
    waveforms[1, 4321] = value
    with pytest.raises(ValueError, match=r"waveform\(s\) \[1\] hold NaN or infinite samples .*waveform 1 at sample 4321"):
        run(student, waveforms)
    with pytest.raises(ValueError, match=r"waveform\(s\) \[1\] hold NaN or infinite"):
        student.forward_list([waveforms[0], waveforms[1, :5000]])


@pytest.mark.parametrize(
    "lengths, match",
    [
        (torch.tensor([8000, -5, 3200]), r"waveform\(s\) \[1\] have lengths \[-5\]; expected positive"),
        (torch.tensor([0, 5000, 0]), r"waveform\(s\) \[0, 2\] have lengths \[0, 0\]; expected positive"),
        (torch.tensor([8000, 5000, 8001]), r"waveform\(s\) \[2\] have lengths \[8001\]; expected at most the 8000 samples"),
        (torch.tensor([8000, 5000, 300]), r"shorter than the conv receptive field \(400 samples"),
        (torch.tensor([8000.0, 5000.0, 3200.0]), r"lengths: expected an integer tensor of shape \(3,\).*found torch.float32"),
        (torch.tensor([[8000, 5000, 3200]]), r"lengths: expected an integer tensor of shape \(3,\).*shape \(1, 3\)"),
    ],
    ids=["negative", "zero", "too-long", "shorter-than-a-frame", "float", "shape"],
)
def test_lengths_out_of_range_are_named(student, lengths, match):
    with pytest.raises(ValueError, match=match):
        run(student, padded_batch(), lengths)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_other_float_dtypes_are_cast_to_the_models(student, dtype):
    waveforms = padded_batch().to(dtype)
    cast, reference = run(student, waveforms), run(student, waveforms.float())
    listed = student.forward_list([waveforms[0], waveforms[1, :5000]])
    assert cast.hidden_states[-1].dtype == listed.hidden_states[-1].dtype == torch.float32
    for ours, expected in zip(cast.hidden_states, reference.hidden_states):
        assert torch.equal(ours, expected)


def test_a_bfloat16_model_takes_float32_input(student):
    model = StarHubert(TINY_CONFIG).eval()
    model.load_state_dict(student.state_dict())
    output = run(model.to(torch.bfloat16), padded_batch())
    assert output.hidden_states[-1].dtype == torch.bfloat16


@pytest.mark.parametrize(
    "waveforms, match",
    [
        ([], r"expected a non-empty list of 1-D float waveforms at 16 kHz, found an empty list"),
        ([torch.randn(4000), torch.randn(1, 4000)], r"waveform 1: expected a 1-D float tensor, found shape \(1, 4000\)"),
        ([torch.ones(4000, dtype=torch.int16)], r"waveform 0: expected a 1-D float tensor, found shape \(4000,\) of torch.int16"),
        ([torch.randn(4000), torch.randn(0)], r"waveform\(s\) \[1\] have lengths \[0\]; expected positive"),
    ],
    ids=["empty", "2-D item", "int16 item", "empty item"],
)
def test_bad_waveform_lists_are_named(student, waveforms, match):
    with pytest.raises(ValueError, match=match):
        student.forward_list(waveforms)


def test_an_empty_batch_is_named(student):
    with pytest.raises(ValueError, match="at least one waveform, found an empty batch"):
        run(student, torch.zeros(0, 8000), torch.zeros(0, dtype=torch.long))


def test_non_finite_weights_name_the_tensor_and_the_file(student, tmp_path):
    broken = StarHubert(TINY_CONFIG)
    broken.load_state_dict(student.state_dict())
    parameters = dict(broken.named_parameters())
    with torch.no_grad():
        parameters["encoder.layers.1.fc1.weight"][3, 7] = float("nan")
        parameters["encoder.pos_conv.0.bias"][0] = float("inf")
    path = tmp_path / "diverged.pt"
    save_student(path, broken)
    expected = r"diverged\.pt: NaN or infinite values in weight tensor\(s\) \['encoder\.layers\.1\.fc1\.weight', 'encoder\.pos_conv\.0\.bias'\]"
    with pytest.raises(ValueError, match=expected):
        load_student(path)


# --- the upstream, as s3prl loads it --------------------------------------------------------------


@pytest.fixture(scope="module")
def upstream(tiny_student_checkpoint):
    import s3prl_star

    s3prl_star.register()
    from s3prl.nn import S3PRLUpstream

    return S3PRLUpstream("star_hubert_local", str(tiny_student_checkpoint)).eval()


def upstream_run(upstream, waveforms, lengths=LENGTHS):
    with torch.no_grad():
        return upstream(waveforms, lengths)


def test_upstream_names_non_finite_samples_and_ignores_what_lies_past_lengths(upstream):
    reference, _ = upstream_run(upstream, padded_batch())
    garbage, _ = upstream_run(upstream, padded_batch(float("nan")))
    for ours, theirs in zip(reference, garbage):
        assert torch.equal(ours, theirs)
    waveforms = padded_batch()
    waveforms[2, 100] = float("nan")
    with pytest.raises(ValueError, match=r"waveform\(s\) \[2\] hold NaN or infinite samples .*at sample 100"):
        upstream_run(upstream, waveforms)


def test_upstream_casts_float64_and_names_an_empty_utterance(upstream):
    waveforms = padded_batch()
    cast, _ = upstream_run(upstream, waveforms.double())
    reference, _ = upstream_run(upstream, waveforms)
    for ours, expected in zip(cast, reference):
        assert ours.dtype == torch.float32 and torch.equal(ours, expected)
    with pytest.raises(ValueError, match=r"waveform\(s\) \[1\] have lengths \[0\]; expected positive"):
        upstream_run(upstream, waveforms, torch.tensor([8000, 0, 3200]))


def test_upstream_entry_names_an_empty_list_and_a_bad_item(tiny_student_checkpoint):
    import s3prl_star

    s3prl_star.register()
    import s3prl.hub

    expert = s3prl.hub.star_hubert(ckpt=str(tiny_student_checkpoint))
    with pytest.raises(ValueError, match="non-empty list of 1-D float waveforms at 16 kHz, found an empty list"):
        expert([])
    with pytest.raises(ValueError, match=r"waveform 0: expected a 1-D float tensor, found shape \(2, 4000\)"):
        expert([torch.randn(2, 4000)])

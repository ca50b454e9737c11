"""Fast inference (`s3prl_star.model.inference`): onnxruntime fp32 and int8 give the eager student's hidden states,
through the Python API, `s3prl-star export --precision int8` and the `star_hubert_int8` upstream."""
import subprocess

import numpy as np
import pytest
import torch

from helpers import CLI, TINY_STUDENT

# int8 is judged by the cosine similarity of each layer to fp32 (bench/RESULTS.md reports the
# full-size figure); fp32 through onnxruntime must equal the eager model.
INT8_MIN_COSINE = 0.99
FP32_MAX_ABS_ERROR = 1e-4


def batch():
    generator = torch.Generator().manual_seed(0)
    lengths = torch.tensor([16000, 9000])
    waveforms = 0.1 * torch.randn(2, 16000, generator=generator)
    waveforms[1, 9000:] = 0.0
    return waveforms, lengths


def eager_states(model, waveforms, lengths):
    with torch.no_grad():
        output = model(waveforms, lengths)
    return output.hidden_states, output.padding_mask


def layer_cosines(states, reference, padding_mask):
    valid = ~padding_mask[..., None]
    return [float(torch.nn.functional.cosine_similarity((ours * valid).flatten().double(),
                                                        (theirs * valid).flatten().double(), dim=0))
            for ours, theirs in zip(states, reference)]


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_python_api_matches_the_eager_student(tiny_student, precision):
    from s3prl_star.model.inference import load_fast_student

    path, model = tiny_student
    waveforms, lengths = batch()
    reference, padding_mask = eager_states(model, waveforms, lengths)
    output = load_fast_student(path, precision=precision)(waveforms, lengths)
    assert torch.equal(output.padding_mask, padding_mask)
    assert len(output.hidden_states) == len(reference) == 13
    if precision == "fp32":
        valid = ~padding_mask[..., None]
        assert max(float(((a - b) * valid).abs().max()) for a, b in zip(output.hidden_states, reference)) <= FP32_MAX_ABS_ERROR
    else:
        assert min(layer_cosines(output.hidden_states, reference, padding_mask)) >= INT8_MIN_COSINE
        assert any(not torch.equal(a, b) for a, b in zip(output.hidden_states, reference))  # really quantised


def test_making_a_fast_student_leaves_the_model_in_eval_mode():
    from s3prl_star.model.inference import fast_student
    from s3prl_star.model.star_hubert import build_preset

    model = build_preset("star_hubert", **TINY_STUDENT).eval()
    fast_student(model, "fp32")
    assert not any(module.training for module in model.modules())


def test_unknown_precision_is_refused(tiny_student_checkpoint):
    from s3prl_star.model.inference import load_fast_student

    with pytest.raises(ValueError, match=r"precision: expected one of \('fp32', 'int8'\), found 'fp16'"):
        load_fast_student(tiny_student_checkpoint, precision="fp16")


def test_export_int8_writes_a_quantised_graph(tiny_student, tmp_path):
    import onnx
    import onnxruntime

    path, model = tiny_student
    output = tmp_path / "star_hubert_int8.onnx"
    result = subprocess.run([CLI, "export", str(path), "--format", "onnx", "--precision", "int8", "-o", str(output)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    operators = {node.op_type for node in onnx.load(str(output)).graph.node}
    assert "MatMulInteger" in operators, sorted(operators)
    waveforms, lengths = batch()
    reference, padding_mask = eager_states(model, waveforms, lengths)
    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    hidden_states, frame_lengths = session.run(None, {"waveforms": waveforms.numpy(), "lengths": lengths.numpy()})
    assert frame_lengths.tolist() == (~padding_mask).sum(1).tolist()
    assert min(layer_cosines(torch.from_numpy(hidden_states).unbind(0), reference[1:], padding_mask)) >= INT8_MIN_COSINE


def test_export_int8_needs_onnx(tiny_student_checkpoint, tmp_path):
    result = subprocess.run([CLI, "export", str(tiny_student_checkpoint), "--format", "torchscript", "--precision", "int8",
                             "-o", str(tmp_path / "x.pt")], capture_output=True, text=True)
    assert result.returncode == 2 and "--precision int8 needs --format onnx" in result.stderr
    assert not (tmp_path / "x.pt").exists()


def test_int8_upstream_gives_the_star_hubert_features(tiny_student_checkpoint):
    import s3prl_star

    s3prl_star.register()  # makes s3prl importable on this stack, then sets the entries on s3prl.hub
    import s3prl.hub
    wavs = [torch.randn(16000, generator=torch.Generator().manual_seed(1)), torch.randn(12000)]
    with torch.no_grad():
        reference = s3prl.hub.star_hubert(ckpt=str(tiny_student_checkpoint)).eval()(wavs)["hidden_states"]
        fast = s3prl.hub.star_hubert_int8(ckpt=str(tiny_student_checkpoint))(wavs)["hidden_states"]
    assert len(fast) == len(reference) == 12
    cosines = [float(torch.nn.functional.cosine_similarity(a[0].flatten(), b[0].flatten(), dim=0))
               for a, b in zip(fast, reference)]
    assert min(cosines) >= INT8_MIN_COSINE and np.isfinite(cosines).all()

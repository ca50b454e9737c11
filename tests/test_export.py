"""`s3prl-star export`: the TorchScript and ONNX graphs give the eager model's hidden states."""
import subprocess

import numpy as np
import torch

from helpers import CLI

# Two batches whose sample counts differ from each other and from the tracing example (1 s, 0.6 s).
BATCHES = ((24000, 9000), (7000, 13000, 4800))


def padded_batch(lengths):
    generator = torch.Generator().manual_seed(sum(lengths))
    lengths = torch.tensor(lengths)
    waveforms = torch.randn(len(lengths), int(lengths.max()), generator=generator)
    waveforms[torch.arange(waveforms.size(1))[None, :] >= lengths[:, None]] = 0.0
    return waveforms, lengths


def eager(checkpoint, waveforms, lengths):
    from s3prl_star.model.checkpoint import load_student

    model = load_student(checkpoint)
    with torch.no_grad():
        output = model(waveforms, lengths)
    return torch.stack(output.hidden_states[1:]).numpy(), (~output.padding_mask).sum(1).numpy()


def export(checkpoint, format, output):
    result = subprocess.run(
        [CLI, "export", str(checkpoint), "--format", format, "-o", str(output)],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert output.is_file()


def test_torchscript_matches_eager(tiny_student_checkpoint, tmp_path):
    path = tmp_path / "star_hubert.pt"
    export(tiny_student_checkpoint, "torchscript", path)
    scripted = torch.jit.load(str(path))
    for lengths in BATCHES:
        waveforms, lengths = padded_batch(lengths)
        expected, expected_frames = eager(tiny_student_checkpoint, waveforms, lengths)
        with torch.no_grad():
            hidden_states, frame_lengths = scripted(waveforms, lengths)
        assert hidden_states.shape == expected.shape and expected.shape[:2] == (12, len(lengths))
        assert np.abs(hidden_states.numpy() - expected).max() <= 1e-4
        assert frame_lengths.tolist() == expected_frames.tolist()


def test_onnx_matches_eager(tiny_student_checkpoint, tmp_path):
    import onnxruntime

    path = tmp_path / "star_hubert.onnx"
    export(tiny_student_checkpoint, "onnx", path)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["waveforms", "lengths"]
    for lengths in BATCHES:
        waveforms, lengths = padded_batch(lengths)
        expected, expected_frames = eager(tiny_student_checkpoint, waveforms, lengths)
        hidden_states, frame_lengths = session.run(None, {"waveforms": waveforms.numpy(), "lengths": lengths.numpy()})
        assert hidden_states.shape == expected.shape
        assert np.abs(hidden_states - expected).max() <= 1e-4
        assert frame_lengths.tolist() == expected_frames.tolist()


def test_unknown_format_is_refused(tiny_student_checkpoint, tmp_path):
    result = subprocess.run(
        [CLI, "export", str(tiny_student_checkpoint), "--format", "tflite", "-o", str(tmp_path / "x")],
        capture_output=True, text=True,
    )
    assert result.returncode == 2 and "--format" in result.stderr

"""Fast CPU inference of the student for deployment: the exported graph run by onnxruntime, int8 optional.

PyTorch's own CPU switches (bf16 autocast, bf16 weights, dynamic int8 of the linear layers) do not speed
the student up: the time goes to the conv extractor and small matrix products. onnxruntime runs the same
graph (`s3prl_star.model.export`) with its fused kernels; `int8` also quantises the weights of every
MatMul (the linear layers) to int8 (onnxruntime's dynamic quantisation: 7-bit weights per output
channel, activations quantised per call). Conv layers stay float32: onnxruntime's ConvInteger is slower
than its float32 Conv. Measurements: bench/RESULTS.md section 1 (docs/export.md).

Precisions: `fp32` (the graph as exported), `int8` (quantised). Both take and return float32.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from s3prl_star.model.export import PRECISIONS, export, quantise_onnx
from s3prl_star.model.star_hubert import StarHubert, StarHubertOutput, check_input, check_waveform_list



def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {PRECISIONS}, found {precision!r}")


def onnx_bytes(model: StarHubert, precision: str) -> bytes:
    """The student as an ONNX graph (13 hidden states: the layer-1 input, then each layer) in `precision`."""
    check_precision(precision)
    with tempfile.TemporaryDirectory() as scratch:
        path = export(model, Path(scratch) / "fp32.onnx", "onnx", include_feature=True)
        if precision == "int8":
            path = quantise_onnx(path, Path(scratch) / "int8.onnx")
        return path.read_bytes()


class OnnxStudent(nn.Module):
    """The student run by onnxruntime on the CPU, with `StarHubert`'s `forward` / `forward_list` interface
    (inference only: float32 waveforms in, float32 hidden states out, on the input's device). A module
    without parameters, so it can stand where s3prl's upstreams hold a model. Inputs are checked as
    `StarHubert` checks them (`star_hubert.check_input`: shapes, lengths of at least `receptive_field`
    samples, finite samples within them); onnxruntime itself would return NaN features for NaN audio."""

    def __init__(self, graph: bytes, threads: int | None = None, receptive_field: int = 400):
        import onnxruntime

        super().__init__()
        self.receptive_field = receptive_field
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or torch.get_num_threads()
        self.session = onnxruntime.InferenceSession(graph, options, providers=["CPUExecutionProvider"])

    def forward(self, waveforms: Tensor, lengths: Tensor | None = None) -> StarHubertOutput:
        """waveforms (B, S) float at 16 kHz, zero-padded; lengths (B,) valid samples (None: all S)."""
        waveforms, lengths = check_input(waveforms, lengths, self.receptive_field, torch.float32)
        hidden_states, frame_lengths = self.session.run(None, {
            "waveforms": waveforms.detach().float().cpu().numpy(),
            "lengths": lengths.detach().cpu().numpy().astype(np.int64),
        })
        states = torch.from_numpy(hidden_states).to(waveforms.device)
        frames = torch.arange(states.size(2), device=waveforms.device)
        padding_mask = frames[None, :] >= torch.from_numpy(frame_lengths).to(waveforms.device)[:, None]
        return StarHubertOutput(list(states.unbind(0)), padding_mask, None)

    def forward_list(self, waveforms: Sequence[Tensor]) -> StarHubertOutput:
        """A list of 1-D waveforms (as s3prl upstreams receive them) -> the padded batch output."""
        check_waveform_list(waveforms)
        lengths = torch.tensor([len(waveform) for waveform in waveforms])
        return self.forward(torch.nn.utils.rnn.pad_sequence([w.float() for w in waveforms], batch_first=True), lengths)


def fast_student(model: StarHubert, precision: str = "int8", threads: int | None = None) -> OnnxStudent:
    """`model` exported and run by onnxruntime in `precision` (see the module docstring)."""
    return OnnxStudent(onnx_bytes(model, precision), threads=threads, receptive_field=model.receptive_field)


def load_fast_student(ckpt: str | os.PathLike, model_config: str | None = None, precision: str = "int8",
                      threads: int | None = None) -> OnnxStudent:
    """`load_student(ckpt, model_config)` (every checkpoint format it reads), run by onnxruntime."""
    from s3prl_star.model.checkpoint import load_student

    check_precision(precision)
    return fast_student(load_student(str(ckpt), model_config), precision, threads)

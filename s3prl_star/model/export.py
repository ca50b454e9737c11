"""`s3prl-star export CKPT --format torchscript|onnx -o FILE`: the student as one graph for on-device use;
`--format hf -o DIR`: a folder `transformers.AutoModel` loads (`s3prl_star.model.hf_export`).

The exported graph takes `waveforms` (B, S) float32 at 16 kHz, zero-padded, and `lengths` (B,)
int64 valid samples, and returns `hidden_states` (L, B, T, D) float32 (the hidden states the
`star_hubert` upstream gives s3prl, stacked: the 12 transformer-layer outputs, with the
pre-transformer feature first under `--include-feature`) and `frame_lengths` (B,) int64 valid
frames. Batch and sample axes are dynamic. The model is traced in eval mode (dropout off).
"""
import argparse
import io
import os
import sys
from pathlib import Path
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from s3prl_star.atomic import write_atomically
from s3prl_star.model.star_hubert import StarHubert

FORMATS = ("torchscript", "onnx")
HF_FORMAT = "hf"  # a Hugging Face folder, not a traced graph (s3prl_star.model.hf_export)
INPUT_NAMES = ["waveforms", "lengths"]
OUTPUT_NAMES = ["hidden_states", "frame_lengths"]
# ONNX opset of the TorchScript-based exporter (onnxruntime >= 1.17 runs it).
ONNX_OPSET = 17
PRECISIONS = ("fp32", "int8")
# onnxruntime's dynamic quantisation of these operators: weights int8 (per channel), activations uint8
QUANTISED_OPERATORS = ["MatMul"]


class ExportedStudent(nn.Module):
    """(B, S) waveforms + (B,) lengths -> stacked hidden states (L, B, T, D) + frame lengths (B,)."""

    def __init__(self, model: StarHubert, include_feature: bool):
        super().__init__()
        self.model = model
        self.first_layer = 0 if include_feature else 1
        # the wrapper too: torch.onnx.export restores the wrapper's mode on every submodule afterwards,
        # which would leave the caller's model in training mode (dropout on)
        self.eval()

    def forward(self, waveforms: Tensor, lengths: Tensor) -> Tuple[Tensor, Tensor]:
        output = self.model(waveforms, lengths)
        hidden_states = torch.stack(output.hidden_states[self.first_layer:])
        frame_lengths = (~output.padding_mask).sum(dim=1)
        return hidden_states, frame_lengths


def example_inputs(seconds: Tuple[float, float] = (1.0, 0.6), sample_rate: int = 16000) -> Tuple[Tensor, Tensor]:
    """A padded two-item batch of different lengths: tracing sees a real padding mask."""
    lengths = torch.tensor([round(s * sample_rate) for s in seconds], dtype=torch.long)
    generator = torch.Generator().manual_seed(0)
    waveforms = torch.randn(len(seconds), int(lengths.max()), generator=generator)
    waveforms[torch.arange(waveforms.size(1))[None, :] >= lengths[:, None]] = 0.0
    return waveforms, lengths


def export(model: StarHubert, path: Path, format: str, include_feature: bool = False) -> Path:
    """Trace `model` (set to eval) and write it to `path` as TorchScript or ONNX."""
    if format not in FORMATS:
        raise ValueError(f"export format: expected one of {FORMATS}, got {format!r}")
    module = ExportedStudent(model, include_feature)
    inputs = example_inputs()
    path = Path(path)
    buffer = io.BytesIO()
    with torch.no_grad():
        if format == "torchscript":
            torch.jit.save(torch.jit.trace(module, inputs), buffer)
        else:
            torch.onnx.export(
                module, inputs, buffer,
                dynamo=False,
                input_names=INPUT_NAMES,
                output_names=OUTPUT_NAMES,
                dynamic_axes={
                    "waveforms": {0: "batch", 1: "samples"},
                    "lengths": {0: "batch"},
                    "hidden_states": {1: "batch", 2: "frames"},
                    "frame_lengths": {0: "batch"},
                },
                opset_version=ONNX_OPSET,
            )
    # written from Python: torch's C++ writer aborts the process on a full disk instead of raising
    write_atomically(path, lambda temporary: Path(temporary).write_bytes(buffer.getvalue()))
    return path


def quantise_onnx(source: Path, destination: Path) -> Path:
    """Write the int8 version of the ONNX graph `source` to `destination` (atomically)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    def write(temporary: str) -> None:
        # reduce_range: 7-bit weights. x86's u8 x s8 kernels add pairs of products in int16, which saturate
        # with full-range weights: measured on star_hubert, worst-layer cosine 0.944 without, 0.9996 with.
        quantize_dynamic(str(source), temporary, op_types_to_quantize=QUANTISED_OPERATORS,
                         weight_type=QuantType.QInt8, per_channel=True, reduce_range=True)

    write_atomically(destination, write)
    return Path(destination)


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(prog="s3prl-star export", description=__doc__.splitlines()[0])
    parser.add_argument("ckpt", help="a checkpoint load_student reads (distiller states-*.ckpt, save_student file, released .ckpt)")
    parser.add_argument("-g", "--model-config", help="the released .yaml, for a released Lightning .ckpt")
    parser.add_argument("--format", choices=FORMATS + (HF_FORMAT,), required=True)
    parser.add_argument("-o", "--output", required=True, type=Path,
                        help="file to write (.pt for torchscript, .onnx); for hf, the folder")
    parser.add_argument("--include-feature", action="store_true", help="also output the pre-transformer feature (first)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="int8: the linear layers' weights quantised by onnxruntime for faster CPU inference "
                             "(s3prl_star.model.inference; --format onnx only)")
    args = parser.parse_args(argv)
    if args.precision == "int8" and args.format != "onnx":
        parser.error(f"--precision int8 needs --format onnx, found --format {args.format}")
    if args.include_feature and args.format == HF_FORMAT:
        parser.error("--include-feature has no effect with --format hf: its hidden_states hold the "
                     "layer-1 input first (hidden_states[1:] are the layer outputs)")
    for flag, source in (("the checkpoint", args.ckpt), ("-g", args.model_config)):
        if source is not None and _same_file(source, args.output):
            print(f"s3prl-star export: -o {args.output} is {flag} {source} (the same file); "
                  "expected another file, so that the input is not overwritten", file=sys.stderr)
            return 2

    from s3prl_star.model.checkpoint import CheckpointError, load_student

    try:
        model = load_student(args.ckpt, args.model_config)
    except CheckpointError as error:  # weights-only: a crafted or damaged file is refused, never run
        print(f"s3prl-star export: {error}", file=sys.stderr)
        return 2
    if args.format == HF_FORMAT:
        from s3prl_star.model.hf_export import main_hf

        return main_hf(model, args.ckpt, args.output, args.model_config)
    try:
        path = export(model, args.output, args.format, include_feature=args.include_feature)
        if args.precision == "int8":
            quantise_onnx(path, path)
    except OSError as error:
        print(f"s3prl-star export: cannot write {args.output}: {error.strerror or error}", file=sys.stderr)
        return 1
    print(f"wrote {args.format} model to {path}")
    return 0


def _same_file(source: str, output: Path) -> bool:
    """Whether writing `output` would replace `source`: the same file by any path (a symbolic link, `..`,
    a hard link)."""
    try:
        return os.path.samefile(source, output)
    except OSError:  # either one does not exist (yet)
        return False

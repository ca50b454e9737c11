"""s3prl 0.4.18's `sv_voxceleb1` expert moves its attention mask with `.cuda()` in `forward` whatever
`--device` says, so ASV training and evaluation stop on a machine without CUDA (and mix devices under
`--device cpu` on one with it). `run_expert_on_its_device()` wraps that `forward` so that, while it
runs, `Tensor.cuda()` moves to the device of the expert's own parameters instead: the same tensor on
the same device as on a GPU run with `--device cuda`, and no fork of s3prl. Applied by
`s3prl-star downstream -d sv_voxceleb1`.
"""
from __future__ import annotations

import contextlib
import functools

import torch


@contextlib.contextmanager
def _cuda_moves_to(device: torch.device):
    """Within the block, `tensor.cuda()` returns `tensor.to(device)`; afterwards torch's method is back as it was
    (inherited from `torch._C.TensorBase` on current torch, or defined on `torch.Tensor`)."""
    own = torch.Tensor.__dict__.get("cuda")
    torch.Tensor.cuda = lambda tensor, *args, **kwargs: tensor.to(device)
    try:
        yield
    finally:
        if own is None:
            del torch.Tensor.cuda
        else:
            torch.Tensor.cuda = own


def run_expert_on_its_device(expdir: str | None = None) -> str | None:
    """Make s3prl's sv_voxceleb1 `DownstreamExpert.forward` keep its tensors on the expert's device (idempotent)."""
    from s3prl.downstream.sv_voxceleb1.expert import DownstreamExpert

    forward = DownstreamExpert.forward
    if getattr(forward, "runs_on_its_device", False):
        return None

    @functools.wraps(forward)
    def forward_on_its_device(self, *args, **kwargs):
        with _cuda_moves_to(next(self.parameters()).device):
            return forward(self, *args, **kwargs)

    forward_on_its_device.runs_on_its_device = True
    DownstreamExpert.forward = forward_on_its_device
    return "sv_voxceleb1's expert keeps its tensors on its own device (s3prl calls .cuda())"

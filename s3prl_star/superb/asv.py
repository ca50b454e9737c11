"""SUPERB ASV on s3prl 0.4.18's `sv_voxceleb1` expert: any device, and the EER chosen as SUPERB does.

The expert's `forward` moves its attention mask with `.cuda()` whatever `--device` says, so training
and evaluation stop on a machine without CUDA (and mix devices under `--device cpu` on one with it).
`run_expert_on_its_device()` wraps that `forward` so that, while it runs, `Tensor.cuda()` moves to
the device of the expert's own parameters instead: the same tensor on the same device as on a GPU
run with `--device cuda`, and no fork of s3prl. `s3prl-star downstream` applies it for `-d sv_voxceleb1`.

VoxCeleb1 has no dev trials in SUPERB's protocol: every saved `states-*.ckpt` is evaluated on the
test trials and the lowest EER is reported (s3prl's GitHub `sv_voxceleb1/test_expdir.sh`, which this
follows: one `-m evaluate -e CKPT -o args.expdir=EXPDIR/states-STEP` per checkpoint, its output in
`EXPDIR/states-STEP/log.txt`).
"""
from __future__ import annotations

import contextlib
import functools
import re
import subprocess
import sys
from pathlib import Path

import torch

# What s3prl's sv_voxceleb1 expert prints after a test evaluation (a fraction).
TEST_EER_LINE = re.compile(r"^sv-voxceleb1/test-EER: (\S+)$", re.MULTILINE)


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


def run_expert_on_its_device():
    """Make s3prl's sv_voxceleb1 `DownstreamExpert.forward` keep its tensors on the expert's device (idempotent)."""
    from s3prl.downstream.sv_voxceleb1.expert import DownstreamExpert

    forward = DownstreamExpert.forward
    if getattr(forward, "runs_on_its_device", False):
        return

    @functools.wraps(forward)
    def forward_on_its_device(self, *args, **kwargs):
        with _cuda_moves_to(next(self.parameters()).device):
            return forward(self, *args, **kwargs)

    forward_on_its_device.runs_on_its_device = True
    DownstreamExpert.forward = forward_on_its_device


def eer_of_output(text: str) -> float:
    """The test EER (a fraction, as printed) in the output of one sv_voxceleb1 `-m evaluate` run."""
    found = TEST_EER_LINE.findall(text)
    if len(found) != 1:
        raise ValueError(f"expected one 'sv-voxceleb1/test-EER: v' line in the evaluation output, found {len(found)}:\n"
                         f"{text[-2000:]}")
    return float(found[0])


def _step(checkpoint: Path) -> int:
    return int(checkpoint.stem.removeprefix("states-"))


def evaluate_checkpoints(expdir: str | Path, device: str, overrides: str | None = None) -> dict[Path, float]:
    """{checkpoint: test EER (fraction)} for every `states-*.ckpt` of `expdir`, in step order.

    Each runs `s3prl-star downstream -m evaluate -e CKPT --device DEVICE -o args.expdir=EXPDIR/states-STEP[,,OVERRIDES]`
    in its own process (`overrides`: more `-o` assignments, e.g. the data's new location); its output
    goes to `EXPDIR/states-STEP/log.txt`. A failed evaluation raises, naming that log.
    """
    expdir = Path(expdir)
    checkpoints = sorted(expdir.glob("states-*.ckpt"), key=_step)
    if not checkpoints:
        raise FileNotFoundError(f"{expdir}: no states-*.ckpt to evaluate (train with -d sv_voxceleb1 -p {expdir} first)")
    eers = {}
    for checkpoint in checkpoints:
        output_dir = expdir / checkpoint.stem
        output_dir.mkdir(exist_ok=True)
        override = f"args.expdir={output_dir}" + (f",,{overrides}" if overrides else "")
        result = subprocess.run(
            [sys.executable, "-m", "s3prl_star.cli", "downstream", "-m", "evaluate", "-e", str(checkpoint),
             "--device", device, "-o", override],
            capture_output=True, text=True,
        )
        log = output_dir / "log.txt"
        log.write_text(result.stdout + result.stderr)
        if result.returncode != 0:
            raise RuntimeError(f"evaluating {checkpoint} failed (exit status {result.returncode}); output in {log}")
        eers[checkpoint] = eer_of_output(result.stdout)
    return eers


def eer_of_run(expdir: str | Path, device: str, overrides: str | None = None) -> tuple[float, Path]:
    """SUPERB ASV score: (lowest test EER in percent, its checkpoint) over every `states-*.ckpt` of `expdir`.

    Ties go to the earlier checkpoint. See `evaluate_checkpoints` for `device` and `overrides`.
    """
    eers = evaluate_checkpoints(expdir, device, overrides)
    best = min(eers, key=lambda checkpoint: (eers[checkpoint], _step(checkpoint)))
    return 100.0 * eers[best], best

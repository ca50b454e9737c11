"""SUPERB ASV on s3prl 0.4.18's `sv_voxceleb1` expert: the EER chosen as SUPERB does.

VoxCeleb1 has no dev trials in SUPERB's protocol: every saved `states-*.ckpt` is evaluated on the
test trials and the lowest EER is reported (s3prl's GitHub `sv_voxceleb1/test_expdir.sh`, which this
follows: one `-m evaluate -e CKPT -o args.expdir=EXPDIR/states-STEP` per checkpoint, its output in
`EXPDIR/states-STEP/log.txt`).
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path


# What s3prl's sv_voxceleb1 expert prints after a test evaluation (a fraction).
TEST_EER_LINE = re.compile(r"^sv-voxceleb1/test-EER: (\S+)$", re.MULTILINE)


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

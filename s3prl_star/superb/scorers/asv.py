"""SUPERB ASV on s3prl 0.4.18's `sv_voxceleb1` expert: the EER chosen as SUPERB does.

VoxCeleb1 has no dev trials in SUPERB's protocol: every saved `states-*.ckpt` is evaluated on the
test trials and the lowest EER is reported (s3prl's GitHub `sv_voxceleb1/test_expdir.sh`, which the
suite driver follows: one `-m evaluate -e CKPT -o args.expdir=EXPDIR/states-STEP` per checkpoint, its
output in `EXPDIR/states-STEP/log.txt`).
"""
from __future__ import annotations

import re
from pathlib import Path

from s3prl_star.integration.resume import checkpoint_step


# What s3prl's sv_voxceleb1 expert prints after a test evaluation (a fraction).
TEST_EER_LINE = re.compile(r"^sv-voxceleb1/test-EER: (\S+)$", re.MULTILINE)


def eer_of_output(text: str) -> float:
    """The test EER (a fraction, as printed) in the output of one sv_voxceleb1 `-m evaluate` run."""
    found = TEST_EER_LINE.findall(text)
    if len(found) != 1:
        raise ValueError(f"expected one 'sv-voxceleb1/test-EER: v' line in the evaluation output, found {len(found)}:\n"
                         f"{text[-2000:]}")
    return float(found[0])


def lowest_eer(expdir: Path) -> tuple[float, str]:
    """SUPERB's ASV score of one training: (lowest test EER in percent, the `states-STEP` evaluation it comes
    from) over the evaluations of its checkpoints in `EXPDIR/states-STEP/log.txt`; ties go to the earlier
    checkpoint. FileNotFoundError when none was evaluated."""
    logs = sorted(Path(expdir).glob("states-*/log.txt"), key=lambda path: checkpoint_step(path.parent.name))
    if not logs:
        raise FileNotFoundError(f"{expdir}/states-*/log.txt: no checkpoint evaluation")
    eers = {log.parent.name: eer_of_output(log.read_text(errors="replace")) for log in logs}
    best = min(eers, key=eers.get)  # min keeps the first of equal values: the earlier checkpoint
    return 100.0 * eers[best], best

"""SUPERB SD: DER of s3prl's diarization predictions, as s3prl's GitHub `diarization/score.sh` scores them.

s3prl's `diarization` expert writes, for every test recording, `EXPDIR/scoring/predictions/REC.h5`
with `T_hat`, (frames, speakers) speaker-activity probabilities, and the label frame shift (in
samples) to `EXPDIR/frame_shift`. score.sh turns them into RTTM with `make_rttm.py` (a speaker is
active on a frame whose probability is above the threshold; a median filter over frames; frame
index * frame_shift / 16000 s, printed to 2 decimals) for median 1 and 11 and thresholds 0.3 ... 0.7,
scores each with dscore (`score.py -r TEST/rttm -s HYP`) and SUPERB reports the lowest DER of the ten.

DER follows dscore's defaults, i.e. NIST md-eval (RT-09 evaluation plan) with **collar 0** and
**overlapped speech scored**: SUPERB's score.sh passes neither `--collar` nor `--ignore_overlaps`,
so no time around reference boundaries is forgiven and the regions where both Libri2Mix speakers
talk count, for each speaker. Per recording, with the optimal one-to-one mapping of reference to
system speakers (largest total co-activity), over every stretch of time where N_ref reference and
N_sys system speakers are active, of which N_correct are mapped pairs:

    missed = max(0, N_ref - N_sys), false alarm = max(0, N_sys - N_ref),
    confusion = min(N_ref, N_sys) - N_correct, scored = N_ref  (each times the stretch's duration)

and DER = 100 * (missed + false alarm + confusion) / scored, summed over all recordings. The
scoring region (dscore's generated UEM) spans each recording's turns, so all system speech counts.
A speaker's overlapping turns are merged (dscore's `merge_turns`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.signal import medfilt

# s3prl's GitHub diarization/score.sh: the post-processing settings it scores, and its sampling rate
# (make_rttm.py is called with --subsampling=1 --sampling_rate=16000).
MEDIAN_FILTERS = (1, 11)
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)
SAMPLE_RATE = 16000


@dataclass(frozen=True)
class Turn:
    """One speaker's speech from `onset` to `offset` seconds in `recording` (an RTTM SPEAKER line)."""

    recording: str
    speaker: str
    onset: float
    offset: float


@dataclass(frozen=True)
class DiarizationError:
    """Seconds of missed, false-alarm and confused speaker time, and the scored reference speaker time."""

    missed: float
    false_alarm: float
    confusion: float
    scored: float

    def __add__(self, other: DiarizationError) -> DiarizationError:
        return DiarizationError(self.missed + other.missed, self.false_alarm + other.false_alarm,
                                self.confusion + other.confusion, self.scored + other.scored)

    @property
    def rate(self) -> float:
        """DER in percent."""
        if self.scored == 0:
            raise ValueError("DER is undefined: the reference has no speech")
        return 100.0 * (self.missed + self.false_alarm + self.confusion) / self.scored


def read_rttm(path: str | Path) -> list[Turn]:
    """The SPEAKER turns of an RTTM file (`SPEAKER REC CHANNEL ONSET DURATION <NA> <NA> SPEAKER ...`)."""
    turns = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0] != "SPEAKER":
            continue
        try:
            onset, duration = float(fields[3]), float(fields[4])
            turns.append(Turn(fields[1], fields[7], onset, onset + duration))
        except (IndexError, ValueError):
            raise ValueError(f"{path}:{number}: expected 'SPEAKER REC CHANNEL ONSET DURATION <NA> <NA> SPEAKER ...', "
                             f"found {line!r}") from None
    return turns


def write_rttm(path: str | Path, turns: list[Turn]):
    """Write `turns` as make_rttm.py does (onset and duration to 2 decimals)."""
    lines = [f"SPEAKER {t.recording} 1 {t.onset:7.2f} {t.offset - t.onset:7.2f} <NA> <NA> {t.speaker} <NA>\n" for t in turns]
    Path(path).write_text("".join(lines))


def turns_of_prediction(recording: str, probabilities: np.ndarray, threshold: float, median: int,
                        frame_shift: int) -> list[Turn]:
    """make_rttm.py's turns from (frames, speakers) probabilities: above `threshold`, median-filtered over
    `median` frames (zero-padded, scipy's medfilt), frame f at f * frame_shift / SAMPLE_RATE s.

    Speakers are named `REC_0`, `REC_1`, ... by column, as make_rttm.py names them.
    """
    active = (probabilities > threshold).astype(int)
    if median > 1:
        active = medfilt(active, (median, 1))
    seconds_per_frame = frame_shift / SAMPLE_RATE
    turns = []
    for speaker, frames in enumerate(active.T):
        changes = np.flatnonzero(np.diff(np.pad(frames, 1)))
        for start, end in zip(changes[::2], changes[1::2]):
            turns.append(Turn(recording, f"{recording}_{speaker}", start * seconds_per_frame, end * seconds_per_frame))
    return turns


def _merged(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Union of intervals, sorted, overlapping or touching ones merged."""
    merged: list[tuple[float, float]] = []
    for onset, offset in sorted(intervals):
        if merged and onset <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], offset))
        else:
            merged.append((onset, offset))
    return merged


def _activity(turns: list[Turn], midpoints: np.ndarray) -> np.ndarray:
    """(speakers, stretches) bool: whether each speaker of `turns` talks at each stretch's midpoint."""
    speakers = sorted({turn.speaker for turn in turns})
    activity = np.zeros((len(speakers), len(midpoints)), dtype=bool)
    for row, speaker in enumerate(speakers):
        for onset, offset in _merged([(t.onset, t.offset) for t in turns if t.speaker == speaker]):
            activity[row] |= (midpoints > onset) & (midpoints < offset)
    return activity


def recording_error(reference: list[Turn], system: list[Turn]) -> DiarizationError:
    """The diarization error of one recording's system turns against its reference turns (see module doc)."""
    boundaries = np.unique([time for turn in reference + system for time in (turn.onset, turn.offset)])
    durations = np.diff(boundaries)
    midpoints = boundaries[:-1] + durations / 2
    ref, sys = _activity(reference, midpoints), _activity(system, midpoints)
    co_activity = (ref[:, None, :] & sys[None, :, :]) @ durations  # (ref speakers, sys speakers) seconds
    rows, columns = linear_sum_assignment(co_activity, maximize=True)
    n_ref, n_sys = ref.sum(axis=0), sys.sum(axis=0)
    return DiarizationError(
        missed=float(np.maximum(n_ref - n_sys, 0) @ durations),
        false_alarm=float(np.maximum(n_sys - n_ref, 0) @ durations),
        confusion=float(np.minimum(n_ref, n_sys) @ durations - co_activity[rows, columns].sum()),
        scored=float(n_ref @ durations),
    )


def diarization_error_rate(reference: list[Turn], system: list[Turn]) -> float:
    """DER (percent) of `system` against `reference` turns over every recording either has."""
    by_recording: dict[str, tuple[list[Turn], list[Turn]]] = {}
    for index, turns in enumerate((reference, system)):
        for turn in turns:
            by_recording.setdefault(turn.recording, ([], []))[index].append(turn)
    total = DiarizationError(0.0, 0.0, 0.0, 0.0)
    for recording_reference, recording_system in by_recording.values():
        total += recording_error(recording_reference, recording_system)
    return total.rate


def _frame_shift(expdir: Path) -> int:
    path = expdir / "frame_shift"
    try:
        return int(path.read_text().split()[0])
    except (FileNotFoundError, IndexError, ValueError):
        raise ValueError(f"{path}: expected the label frame shift in samples, which s3prl's diarization expert "
                         "writes at construction; run -m evaluate -e CHECKPOINT with this expdir") from None


def der_of_run(expdir: str | Path, reference_dir: str | Path) -> float:
    """SUPERB SD score: the lowest DER (percent) over score.sh's ten settings for one evaluated run.

    `expdir` holds `frame_shift` and `scoring/predictions/*.h5` (from `-m evaluate -e CKPT`);
    `reference_dir` is the Kaldi test dir with `rttm`. Every reference recording needs a prediction and
    every prediction a reference. The hypothesis RTTMs are written as score.sh names them,
    `EXPDIR/scoring/hyp_{threshold}_{median}.rttm`, and scored as read back.
    """
    import h5py

    expdir = Path(expdir)
    frame_shift = _frame_shift(expdir)
    reference = read_rttm(Path(reference_dir) / "rttm")
    predictions = sorted((expdir / "scoring" / "predictions").glob("*.h5"))
    unpredicted = sorted({t.recording for t in reference} - {p.stem for p in predictions})
    unreferenced = sorted({p.stem for p in predictions} - {t.recording for t in reference})
    if unpredicted or unreferenced or not predictions:
        raise ValueError(f"{expdir}/scoring/predictions/*.h5 and {reference_dir}/rttm do not cover the same "
                         f"recordings: no prediction for {unpredicted[:5]}, no reference for {unreferenced[:5]}")
    probabilities = {}
    for path in predictions:
        with h5py.File(path, "r") as file:
            probabilities[path.stem] = file["T_hat"][:]
    rates = []
    for median in MEDIAN_FILTERS:
        for threshold in THRESHOLDS:
            hypothesis = expdir / "scoring" / f"hyp_{threshold}_{median}.rttm"
            write_rttm(hypothesis, [turn for recording, values in probabilities.items()
                                    for turn in turns_of_prediction(recording, values, threshold, median, frame_shift)])
            rates.append(diarization_error_rate(reference, read_rttm(hypothesis)))
    return min(rates)

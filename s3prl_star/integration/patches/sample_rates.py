"""s3prl's SUPERB upstreams take 16 kHz audio, but several of its task loaders read files as they are and
never look at the rate: 8 kHz VoxCeleb1 trains and scores in SID at half speed, with no word said.
These refuse a file of any other rate at the moment it is read, naming it and its rate. Applied by
`s3prl-star downstream -d TASK` (`DOWNSTREAM_TASK_PATCHES`).

The loaders, in s3prl 0.4.18 (`s3prl/downstream/<task>/dataset.py` unless said):
- no resampling, no check: SID (`voxceleb1`), IC (`fluent_commands`), PR and SF (`ctc`, `ctc/data.py`),
  SD (`diarization`: `KaldiData.load_wav` reads with soundfile and returns the file's rate, which
  then only places the labels) - refused here;
- ASR (`asr`) asserts `sr == 16000` naming no file - refused here first, naming it;
- resampled to 16 kHz: KS (`speech_commands`), QbE (`quesst14_dtw`), ASV (`sv_voxceleb1`) by the sox
  `rate 16000` effect per file, ER (`emotion`) by a `Resample` from the rate of the corpus' first file.

SUPERB itself resamples nowhere else, so neither does this: converting the corpus (`sox IN -r 16000
OUT`) keeps the run comparable and costs nothing per epoch. The check is free (the loader gets the rate
anyway), so a corpus of the wrong rate stops at its first batch; a single stray file stops the run when
it is read.
"""
from __future__ import annotations

import functools
import importlib

SAMPLE_RATE = 16000

# s3prl `-d` -> the module whose `torchaudio.load` calls read the task's audio
TORCHAUDIO_LOADERS = {
    "voxceleb1": "s3prl.downstream.voxceleb1.dataset",
    "fluent_commands": "s3prl.downstream.fluent_commands.dataset",
    "ctc": "s3prl.downstream.ctc.data",
    "asr": "s3prl.downstream.asr.dataset",
}


class SampleRateError(ValueError):
    """An audio file of a task whose s3prl loader does not resample is not at 16 kHz."""


def _refusal(path, rate: int, task: str) -> SampleRateError:
    return SampleRateError(
        f"{path}: {rate} Hz audio; expected {SAMPLE_RATE} Hz: s3prl's {task} loader does not resample and the "
        f"upstreams take {SAMPLE_RATE // 1000} kHz (convert the corpus, e.g. sox IN.wav -r {SAMPLE_RATE} OUT.wav)"
    )


class RateCheckedTorchaudio:
    """The `torchaudio` module as one s3prl loader module sees it: `load` refuses other rates than 16 kHz;
    every other name is torchaudio's."""

    def __init__(self, torchaudio, task: str):
        self._torchaudio = torchaudio
        self._task = task

    def load(self, uri, *args, **kwargs):
        waveform, rate = self._torchaudio.load(uri, *args, **kwargs)  # looked up per call: the patched one
        if rate != SAMPLE_RATE:
            raise _refusal(uri, rate, self._task)
        return waveform, rate

    def __getattr__(self, name):
        return getattr(self._torchaudio, name)


def refuse_other_rates(task: str, expdir: str | None = None) -> str | None:
    """Make s3prl's `-d TASK` loader refuse audio that is not 16 kHz; what it did, or None for a task
    whose loader resamples (or is not listed). Idempotent."""
    if task == "diarization":
        return _refuse_in_diarization()
    if task not in TORCHAUDIO_LOADERS:
        return None
    module = importlib.import_module(TORCHAUDIO_LOADERS[task])
    if not isinstance(module.torchaudio, RateCheckedTorchaudio):
        module.torchaudio = RateCheckedTorchaudio(module.torchaudio, task)
    return f"{task} audio is checked to be {SAMPLE_RATE} Hz as it is read (s3prl's loader does not resample)"


def _refuse_in_diarization() -> str:
    from s3prl.downstream.diarization import dataset

    load_wav = dataset.KaldiData.load_wav
    if not getattr(load_wav, "checks_rate", False):
        @functools.wraps(load_wav)
        def checked(self, recid, start=0, end=None):
            data, rate = load_wav(self, recid, start, end)
            if rate != SAMPLE_RATE:
                raise _refusal(f"{self.wavs[recid]} (recording {recid} of {self.data_dir}/wav.scp)", rate, "diarization")
            return data, rate

        checked.checks_rate = True
        dataset.KaldiData.load_wav = checked
    return f"diarization audio is checked to be {SAMPLE_RATE} Hz as it is read (s3prl's loader does not resample)"


def _for(task: str):
    def patch(expdir: str) -> str | None:
        return refuse_other_rates(task, expdir)

    patch.__name__ = f"refuse_other_rates_in_{task}"
    return patch


refuse_other_rates_in_voxceleb1 = _for("voxceleb1")
refuse_other_rates_in_fluent_commands = _for("fluent_commands")
refuse_other_rates_in_ctc = _for("ctc")
refuse_other_rates_in_asr = _for("asr")
refuse_other_rates_in_diarization = _for("diarization")

"""torchaudio >= 2.9 removed `sox_effects`, which s3prl's KS, QbE and ASV loaders call: the subset
they use (`channels`, `rate`, `gain`, `silence`), as a `torchaudio.sox_effects` module.
"""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import types

import numpy as np
import torch
import torchaudio

from s3prl_star.integration.patches.audio_io import soundfile_load


# KS and QbE (speech_commands, quesst14_dtw): channels 1, rate 16000, gain -3.0;
# ASV (sv_voxceleb1) adds silence 1 0.1 0.1% -1 0.1 0.1% (trim leading and trailing silence).


def _single_argument(effect: list[str]) -> str:
    if len(effect) != 2:
        raise ValueError(f"sox effect {effect}: this shim supports `{effect[0]}` with exactly one argument")
    return effect[1]


def _channels(waveform: torch.Tensor, sample_rate: int, effect: list[str]) -> tuple[torch.Tensor, int]:
    """sox `channels N`: N=1 averages the channels (as sox mixes down); mono is duplicated up."""
    target = int(_single_argument(effect))
    if target == waveform.shape[0]:
        return waveform, sample_rate
    if target == 1:
        return waveform.mean(dim=0, keepdim=True), sample_rate
    if waveform.shape[0] == 1:
        return waveform.expand(target, -1).contiguous(), sample_rate
    raise ValueError(f"sox effect {effect}: cannot map {waveform.shape[0]} channels to {target}")


def _rate(waveform: torch.Tensor, sample_rate: int, effect: list[str]) -> tuple[torch.Tensor, int]:
    """sox `rate R`, by torchaudio.functional.resample (band-limited sinc interpolation)."""
    target = int(float(_single_argument(effect)))
    if target == sample_rate:
        return waveform, sample_rate
    return torchaudio.functional.resample(waveform, sample_rate, target), target


def _gain(waveform: torch.Tensor, sample_rate: int, effect: list[str]) -> tuple[torch.Tensor, int]:
    """sox `gain dB`: scale by 10^(dB / 20)."""
    return waveform * 10.0 ** (float(_single_argument(effect)) / 20.0), sample_rate


def _sox_program(waveform: torch.Tensor, sample_rate: int, effect: list[str]) -> tuple[torch.Tensor, int]:
    """An effect run by the `sox` program on raw float32 samples: for `silence`, whose algorithm is sox's own."""
    sox = shutil.which("sox")
    if sox is None:
        raise FileNotFoundError(f"sox effect {effect[0]!r} needs the `sox` program on PATH (apt-get install sox)")
    channels = waveform.shape[0]
    raw = ["-t", "raw", "-e", "floating-point", "-b", "32", "-L", "-r", str(sample_rate), "-c", str(channels)]
    interleaved = waveform.T.contiguous().numpy().astype("<f4").tobytes()
    result = subprocess.run([sox, "-V1", *raw, "-", *raw, "-", *effect], input=interleaved, capture_output=True)
    if result.returncode != 0:
        raise RuntimeError(f"sox effect {effect}: {result.stderr.decode(errors='replace').strip()}")
    samples = np.frombuffer(result.stdout, dtype="<f4").reshape(-1, channels)
    return torch.from_numpy(samples.T.astype(np.float32)), sample_rate


_EFFECTS = {"channels": _channels, "rate": _rate, "gain": _gain, "silence": _sox_program}


def apply_effects_tensor(
    tensor: torch.Tensor, sample_rate: int, effects: list[list[str]], channels_first: bool = True
) -> tuple[torch.Tensor, int]:
    """`torchaudio.sox_effects.apply_effects_tensor` for channels/rate/gain/silence; float32 out."""
    waveform = (tensor if channels_first else tensor.T).to(torch.float32)
    for effect in effects:
        if effect[0] not in _EFFECTS:
            raise ValueError(f"sox effect {effect[0]!r} is not supported by s3prl_star.integration.patches.sox_effects; supported: {', '.join(_EFFECTS)}")
        waveform, sample_rate = _EFFECTS[effect[0]](waveform, sample_rate, list(effect))
    return (waveform if channels_first else waveform.T), sample_rate


def apply_effects_file(
    path, effects: list[list[str]], normalize: bool = True, channels_first: bool = True, format: str | None = None
) -> tuple[torch.Tensor, int]:
    """`torchaudio.sox_effects.apply_effects_file`: read by soundfile, then `apply_effects_tensor`.

    The result is float32 whatever `normalize` says (as the effects chain computes in float);
    `format` is read from the file header by libsndfile.
    """
    waveform, sample_rate = soundfile_load(path)
    return apply_effects_tensor(waveform, sample_rate, effects, channels_first=channels_first)


def add_sox_effects() -> bool:
    if "torchaudio.sox_effects" in sys.modules or importlib.util.find_spec("torchaudio.sox_effects") is not None:
        return False
    module = types.ModuleType("torchaudio.sox_effects", "s3prl_star.integration.patches.sox_effects: channels/rate/gain/silence of sox_effects")
    module.apply_effects_tensor = apply_effects_tensor
    module.apply_effects_file = apply_effects_file
    sys.modules[module.__name__] = module
    torchaudio.sox_effects = module
    return True

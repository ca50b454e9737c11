"""Make s3prl 0.4.18 import and run on torch >= 2.6, torchaudio >= 2.9 and huggingface_hub >= 1.

`apply()` installs one small shim per missing feature. Each shim first checks whether the installed
library still has the feature it replaces (by probing the feature, not by comparing versions) and
does nothing if so, so `apply()` is idempotent and harmless on older stacks. Call it before
`import s3prl.hub` or running an s3prl runner; site-packages is never edited.

What breaks without it:
- torchaudio >= 2.9 routes `load` through torchcodec + FFmpeg and removed `info`,
  `set_audio_backend` and `sox_effects`; `import s3prl.hub` dies on `set_audio_backend`
  (s3prl issue 575) and the KS, QbE and ASV loaders call `sox_effects.apply_effects_file`.
- torch >= 2.6 `torch.load` defaults to `weights_only=True`; the downstream and pretrain runners
  pickle `argparse.Namespace` (their `Args`) into every checkpoint they resume or evaluate from.
- huggingface_hub >= 1.0 removed `HfFolder` and `Repository`, which s3prl's downstream runner
  imports at module level (it uses them only for `--hub huggingface` / `--push_to_hf_hub`).
- the PyPI s3prl lacks `downstream/ctc/corpus/`, whose `libriphone` (PR) and `snips` (SF) readers
  `-d ctc`'s data.py imports; `s3prl_star.superb` has its own, registered under those names.
"""
from __future__ import annotations

import argparse
import importlib.util
import io
import shutil
import subprocess
import sys
import types
from dataclasses import dataclass

import numpy as np
import soundfile
import torch
import torchaudio


def apply() -> list[str]:
    """Install every shim this stack needs; returns the names of those that changed something."""
    shims = (
        _route_load_through_soundfile,
        _add_info,
        _add_set_audio_backend,
        _add_sox_effects,
        _allow_namespace_in_weights_only_load,
        _add_removed_hf_hub_names,
        _add_ctc_corpus_readers,
    )
    return [shim.__name__.lstrip("_") for shim in shims if shim()]


# --- torchaudio.load / torchaudio.info through soundfile ------------------------------------------


def soundfile_load(
    uri,
    frame_offset: int = 0,
    num_frames: int = -1,
    normalize: bool = True,
    channels_first: bool = True,
    format: str | None = None,
    buffer_size: int = 4096,
    backend: str | None = None,
) -> tuple[torch.Tensor, int]:
    """`torchaudio.load` with torchaudio's signature, read by soundfile (libsndfile: wav, flac, ogg).

    Returns ((channels, frames) float32 in [-1, 1), sample_rate), or (frames, channels) when
    `channels_first=False`; `normalize=False` keeps 16/32-bit PCM as int16/int32 as torchaudio
    does. `format`, `buffer_size` and `backend` only steer torchaudio's own decoders: libsndfile
    reads the format from the file header.
    """
    dtype = "float32"
    if not normalize:
        subtype = soundfile.info(uri).subtype
        integer_dtypes = {"PCM_16": "int16", "PCM_32": "int32"}
        if subtype not in integer_dtypes:
            raise ValueError(f"torchaudio.load(normalize=False): {uri}: subtype {subtype}, expected PCM_16 or PCM_32")
        dtype = integer_dtypes[subtype]
        if hasattr(uri, "seek"):
            uri.seek(0)
    samples, sample_rate = soundfile.read(uri, start=frame_offset, frames=num_frames, dtype=dtype, always_2d=True)
    waveform = torch.from_numpy(samples)  # (frames, channels)
    return (waveform.T.contiguous() if channels_first else waveform), sample_rate


@dataclass(frozen=True)
class AudioMetaData:
    """The fields of torchaudio's `AudioMetaData` that s3prl reads (`s3prl/util/audio_info.py`)."""

    sample_rate: int
    num_frames: int
    num_channels: int
    bits_per_sample: int
    encoding: str


# libsndfile subtype -> (bits per sample, torchaudio encoding name)
_SUBTYPE_ENCODINGS = {
    "PCM_S8": (8, "PCM_S"),
    "PCM_U8": (8, "PCM_U"),
    "PCM_16": (16, "PCM_S"),
    "PCM_24": (24, "PCM_S"),
    "PCM_32": (32, "PCM_S"),
    "FLOAT": (32, "PCM_F"),
    "DOUBLE": (64, "PCM_F"),
}


def soundfile_info(uri, format: str | None = None, buffer_size: int = 4096, backend: str | None = None) -> AudioMetaData:
    """`torchaudio.info` read by soundfile; FLAC reports encoding "FLAC" like torchaudio's sox backend."""
    info = soundfile.info(uri)
    bits_per_sample, encoding = _SUBTYPE_ENCODINGS.get(info.subtype, (0, info.subtype))
    if info.format == "FLAC":
        encoding = "FLAC"
    return AudioMetaData(info.samplerate, info.frames, info.channels, bits_per_sample, encoding)


def _torchaudio_load_works() -> bool:
    """Whether torchaudio's own `load` decodes a tiny in-memory wav (it needs torchcodec + FFmpeg)."""
    buffer = io.BytesIO()
    soundfile.write(buffer, np.zeros(16, dtype=np.int16), 16000, format="WAV", subtype="PCM_16")
    buffer.seek(0)
    try:
        torchaudio.load(buffer)
    except Exception:  # any failure of the probe means no usable backend: ImportError, RuntimeError, OSError
        return False
    return True


def _route_load_through_soundfile() -> bool:
    if torchaudio.load is soundfile_load or _torchaudio_load_works():
        return False
    torchaudio.load = soundfile_load
    return True


def _add_info() -> bool:
    if hasattr(torchaudio, "info"):
        return False
    torchaudio.info = soundfile_info
    return True


def _set_audio_backend(backend: str | None) -> None:
    """No-op: torchaudio >= 2.9 has no selectable backend (s3prl selects "sox_io" or "soundfile")."""


def _add_set_audio_backend() -> bool:
    if hasattr(torchaudio, "set_audio_backend"):
        return False
    torchaudio.set_audio_backend = _set_audio_backend
    return True


# --- torchaudio.sox_effects: the subset SUPERB's loaders use ------------------------------------
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
            raise ValueError(f"sox effect {effect[0]!r} is not supported by s3prl_star.compat; supported: {', '.join(_EFFECTS)}")
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


def _add_sox_effects() -> bool:
    if "torchaudio.sox_effects" in sys.modules or importlib.util.find_spec("torchaudio.sox_effects") is not None:
        return False
    module = types.ModuleType("torchaudio.sox_effects", "s3prl_star.compat: channels/rate/gain/silence of sox_effects")
    module.apply_effects_tensor = apply_effects_tensor
    module.apply_effects_file = apply_effects_file
    sys.modules[module.__name__] = module
    torchaudio.sox_effects = module
    return True


# --- torch.load(weights_only=True) of s3prl runner checkpoints ----------------------------------


def _allow_namespace_in_weights_only_load() -> bool:
    """Both runners save `{"Args": argparse.Namespace, "Config": dict, <state dicts>...}`."""
    serialization = torch.serialization
    if not hasattr(serialization, "add_safe_globals") or argparse.Namespace in serialization.get_safe_globals():
        return False
    serialization.add_safe_globals([argparse.Namespace])
    return True


# --- huggingface_hub names s3prl's downstream runner imports ------------------------------------


class _RemovedFromHfHub(type):
    """Stands in for a class huggingface_hub 1.0 removed: importable, but any use raises."""

    def _removed(cls, *_args, **_kwargs):
        raise RuntimeError(
            f"huggingface_hub.{cls.__name__} was removed in huggingface_hub 1.0; s3prl uses it only for "
            "--hub huggingface and --push_to_hf_hub, which need huggingface_hub<1.0"
        )

    __call__ = _removed

    def __getattr__(cls, name):
        if name.startswith("__"):  # keep hasattr/inspect/pickle probes working
            raise AttributeError(name)
        cls._removed()


def _add_removed_hf_hub_names() -> bool:
    import huggingface_hub

    missing = [name for name in ("HfFolder", "Repository") if not hasattr(huggingface_hub, name)]
    for name in missing:
        setattr(huggingface_hub, name, _RemovedFromHfHub(name, (), {"__module__": "huggingface_hub"}))
    return bool(missing)


# --- s3prl.downstream.ctc.corpus: the PR and SF readers `-d ctc` imports -----------------------


def _add_ctc_corpus_readers() -> bool:
    """Register `s3prl_star.superb.libriphone` and `.snips` as `s3prl.downstream.ctc.corpus.libriphone`
    and `.snips` (data.py: `from .corpus.libriphone import LibriPhoneDataset`), unless s3prl has them."""
    package_name = "s3prl.downstream.ctc.corpus"
    if package_name in sys.modules or importlib.util.find_spec(package_name) is not None:
        return False
    from s3prl_star.superb import libriphone, snips

    package = types.ModuleType(package_name, "s3prl_star.compat: s3prl_star.superb's PR and SF corpus readers")
    package.__path__ = []
    for name, module in (("libriphone", libriphone), ("snips", snips)):
        setattr(package, name, module)
        sys.modules[f"{package_name}.{name}"] = module
    sys.modules[package_name] = package
    return True

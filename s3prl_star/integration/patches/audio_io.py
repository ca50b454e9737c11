"""torchaudio >= 2.9 routes `load` through torchcodec + FFmpeg and removed `info` and
`set_audio_backend`: `import s3prl.hub` dies on `set_audio_backend` (s3prl issue 575). These read
audio with soundfile (libsndfile: wav, flac, ogg; the same samples, much faster on short files).
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import soundfile
import torch
import torchaudio


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


def route_load_through_soundfile() -> bool:
    if torchaudio.load is soundfile_load or _torchaudio_load_works():
        return False
    torchaudio.load = soundfile_load
    return True


def add_info() -> bool:
    if hasattr(torchaudio, "info"):
        return False
    torchaudio.info = soundfile_info
    return True


def _set_audio_backend(backend: str | None) -> None:
    """No-op: torchaudio >= 2.9 has no selectable backend (s3prl selects "sox_io" or "soundfile")."""


def add_set_audio_backend() -> bool:
    if hasattr(torchaudio, "set_audio_backend"):
        return False
    torchaudio.set_audio_backend = _set_audio_backend
    return True

"""What the bench scripts share: the machine line, the pretrain expert module, a flac corpus writer.

Imported as `benchlib` (running `python bench/<name>.py` puts bench/ first on sys.path).
"""
from __future__ import annotations

import importlib.util
import os
import platform
from pathlib import Path
from typing import Sequence

import numpy as np
import soundfile as sf
import torch

from s3prl_star.distill.data import SAMPLE_RATE, Utterance, write_length_csv

REPO = Path(__file__).resolve().parent.parent


def load_expert_module():
    """distill/star_hubert/pretrain_expert.py as a module (it is an s3prl plug-in folder, not a package)."""
    spec = importlib.util.spec_from_file_location("star_hubert_expert", REPO / "distill/star_hubert/pretrain_expert.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    return platform.processor() or "unknown CPU"


def machine_line(device: str) -> str:
    """Device, threads, versions and the load average (other processes slow CPU figures)."""
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else cpu_name()
    return (f"device {device} ({name}), {torch.get_num_threads()} threads, torch {torch.__version__}, "
            f"python {platform.python_version()}; load average {os.getloadavg()[0]:.2f}")


def utterance_seconds(count: int, low: float, high: float, seed: int = 0) -> list[float]:
    """`count` utterance durations drawn uniformly in [low, high] seconds (train-clean-100 spans ~1-25 s,
    most utterances 10-16 s, mean 12.7 s)."""
    return np.random.default_rng(seed).uniform(low, high, count).round(3).tolist()


def write_corpus(root: Path, seconds: Sequence[float], split: str = "train-clean-100", seed: int = 0) -> Path:
    """Speech-band noise utterances of `seconds` as 16-bit FLAC in LibriSpeech layout, and the folder of
    their length CSV `<split>.csv` (what `prepare-librispeech` writes)."""
    rng = np.random.default_rng(seed)
    utterances = []
    for index, duration in enumerate(seconds):
        relative = f"{split}/1/1/1-1-{index:04d}.flac"
        noise = rng.standard_normal(int(duration * SAMPLE_RATE))
        samples = (0.1 * np.convolve(noise, np.ones(4) / 4, mode="same")).astype(np.float32)  # low-passed: compresses like speech
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        sf.write(root / relative, samples, SAMPLE_RATE, subtype="PCM_16")
        utterances.append(Utterance(relative, len(samples), "NOISE"))
    write_length_csv(root / "len" / f"{split}.csv", utterances)
    return root / "len"

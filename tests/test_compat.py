"""s3prl_star.integration.patches on the installed stack: real files, the `sox` program as the reference for
the sox_effects shims, s3prl's own `fbank` upstream, and fresh processes where import order matters."""
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile
import torch

from s3prl_star.integration import patches

patches.apply()

import torchaudio  # noqa: E402  (after apply(): torchaudio.load/info/sox_effects are the shims where needed)

ASV_EFFECTS = [  # s3prl/downstream/sv_voxceleb1/dataset.py
    ["channels", "1"],
    ["rate", "16000"],
    ["gain", "-3.0"],
    ["silence", "1", "0.1", "0.1%", "-1", "0.1", "0.1%"],
]


def run_python(code: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def sox(*args: str) -> None:
    subprocess.run(["sox", "-q", "-D", *args], check=True)


def tone(seconds: float, sample_rate: int, frequency: float = 440.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    return (amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


@pytest.fixture(scope="module")
def stereo_8k(tmp_path_factory):
    """A 1 s, 8 kHz, 16-bit stereo wav (different tones left and right) and its int16 samples."""
    rng = np.random.default_rng(0)
    left, right = tone(1.0, 8000, 440.0), tone(1.0, 8000, 660.0, amplitude=0.3)
    samples = np.round(np.stack([left, right], axis=1) * 32767).astype(np.int16)
    samples[:10] = rng.integers(-32768, 32767, size=(10, 2), dtype=np.int16)  # full-scale values too
    path = tmp_path_factory.mktemp("audio") / "stereo_8k.wav"
    soundfile.write(path, samples, 8000, subtype="PCM_16")
    return path, samples


@pytest.fixture(scope="module")
def espeak_wav(tmp_path_factory):
    path = tmp_path_factory.mktemp("speech") / "speech.wav"
    speech = subprocess.run(["espeak-ng", "-v", "en-us", "--stdout", "the quick brown fox"], check=True, capture_output=True)
    subprocess.run(
        ["sox", "-q", "-D", "-t", "wav", "-", "-r", "16000", "-c", "1", "-b", "16", str(path)],
        input=speech.stdout,
        check=True,
    )
    return path


def test_apply_is_idempotent_and_makes_s3prl_hub_importable():
    result = run_python(
        """
        import json
        from s3prl_star.integration import patches
        first, second = patches.apply(), patches.apply()
        import s3prl.hub
        print(json.dumps({"first": first, "second": second, "has_fbank": callable(getattr(s3prl.hub, "fbank", None))}))
        """
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert "add_set_audio_backend" in report["first"]  # the AttributeError of s3prl issue 575
    assert report["second"] == []
    assert report["has_fbank"]


@pytest.mark.parametrize("suffix", ["wav", "flac"])
def test_load_equals_soundfile_samples(stereo_8k, tmp_path, suffix):
    _, samples = stereo_8k
    path = tmp_path / f"x.{suffix}"
    soundfile.write(path, samples, 8000, subtype="PCM_16")

    waveform, sample_rate = torchaudio.load(str(path))
    assert sample_rate == 8000
    assert waveform.dtype == torch.float32 and waveform.shape == (2, len(samples))
    reference, _ = soundfile.read(path, dtype="float32")
    assert torch.equal(waveform, torch.from_numpy(reference).T)
    assert torch.equal(waveform, torch.from_numpy(samples.T / 32768.0).float())

    part, _ = torchaudio.load(str(path), frame_offset=100, num_frames=50, channels_first=False)
    assert torch.equal(part, torch.from_numpy(reference[100:150]))
    integers, _ = torchaudio.load(str(path), normalize=False)
    assert integers.dtype == torch.int16 and torch.equal(integers, torch.from_numpy(samples.T))


@pytest.mark.parametrize("suffix, encoding", [("wav", "PCM_S"), ("flac", "FLAC")])
def test_info_reports_rate_frames_channels(stereo_8k, tmp_path, suffix, encoding):
    _, samples = stereo_8k
    path = tmp_path / f"x.{suffix}"
    soundfile.write(path, samples, 8000, subtype="PCM_16")
    info = torchaudio.info(str(path))
    assert (info.sample_rate, info.num_frames, info.num_channels, info.bits_per_sample, info.encoding) == (
        8000,
        len(samples),
        2,
        16,
        encoding,
    )


def test_sox_effects_8k_stereo_to_16k_mono_match_sox(stereo_8k, tmp_path):
    path, samples = stereo_8k
    effects = [["channels", "1"], ["rate", "16000"], ["gain", "-3.0"]]  # KS and QbE loaders
    from torchaudio.sox_effects import apply_effects_file

    waveform, sample_rate = apply_effects_file(str(path), effects)
    assert sample_rate == 16000
    assert waveform.shape == (1, 2 * len(samples)) and waveform.dtype == torch.float32

    reference_path = tmp_path / "sox.wav"
    sox(str(path), "-e", "floating-point", "-b", "32", str(reference_path), *(arg for effect in effects for arg in effect))
    reference, reference_rate = soundfile.read(reference_path, dtype="float32")
    assert reference_rate == 16000 and len(reference) == waveform.shape[1]
    # Different resampling filters (torchaudio's sinc vs sox's); away from the edges they agree closely.
    middle = slice(400, -400)
    assert np.abs(waveform[0].numpy()[middle] - reference[middle]).max() < 2e-3


def test_sox_effects_silence_trims_leading_and_trailing_silence(tmp_path):
    sample_rate = 16000
    signal = np.concatenate([np.zeros(8000), tone(1.0, sample_rate), np.zeros(12000)]).astype(np.float32)
    from torchaudio.sox_effects import apply_effects_tensor

    trimmed, rate = apply_effects_tensor(torch.from_numpy(signal)[None], sample_rate, ASV_EFFECTS)
    assert rate == sample_rate
    assert abs(trimmed.shape[1] - sample_rate) < 0.02 * sample_rate  # 1 s of tone left of 2.25 s
    assert trimmed[0, :10].abs().max() > 0  # starts in the tone, not in silence

    path, reference_path = tmp_path / "padded.wav", tmp_path / "sox.wav"
    soundfile.write(path, signal, sample_rate, subtype="FLOAT")
    sox(str(path), str(reference_path), *(arg for effect in ASV_EFFECTS for arg in effect))
    assert trimmed.shape[1] == soundfile.info(reference_path).frames


def test_sox_effects_name_an_unsupported_effect():
    from torchaudio.sox_effects import apply_effects_tensor

    with pytest.raises(ValueError, match="'norm'"):
        apply_effects_tensor(torch.zeros(1, 16000), 16000, [["norm"]])


def test_fbank_upstream_on_espeak_speech(espeak_wav):
    import s3prl.hub

    waveform, sample_rate = torchaudio.load(str(espeak_wav))
    assert sample_rate == 16000 and waveform.shape[0] == 1
    upstream = getattr(s3prl.hub, "fbank")().eval()
    wavs = [waveform[0], waveform[0, :16000]]
    with torch.no_grad():
        hidden_states = upstream(wavs)["hidden_states"]

    # kaldi fbank, 25 ms window / 10 ms shift without edge padding: 1 + (S - 400) // 160 frames;
    # 80 log-mel bins plus deltas and delta-deltas (s3prl upstream/baseline/fbank.yaml) = 240.
    assert len(hidden_states) == 1
    assert hidden_states[0].shape == (2, 1 + (waveform.shape[1] - 400) // 160, 240)
    assert torch.isfinite(hidden_states[0]).all()
    assert upstream.get_downsample_rates("hidden_states") == 160


def test_weights_only_load_of_namespace(tmp_path):
    path = tmp_path / "states.ckpt"
    result = run_python(
        f"""
        import argparse, pickle, torch
        torch.save({{"Args": argparse.Namespace(upstream="fbank", seed=1337), "Step": 4}}, {str(path)!r})
        try:
            torch.load({str(path)!r}, weights_only=True)
        except pickle.UnpicklingError:
            print("refused before apply")
        from s3prl_star.integration import patches
        patches.apply()
        states = torch.load({str(path)!r}, weights_only=True)
        print(states["Args"].upstream, states["Args"].seed, states["Step"])
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["refused before apply", "fbank 1337 4"]


def test_hf_hub_names_added_only_when_missing():
    result = run_python(
        """
        import sys, types
        import huggingface_hub
        from s3prl_star.integration import patches

        real = huggingface_hub.HfFolder
        patches.apply()
        assert huggingface_hub.HfFolder is real, "an installed HfFolder must be left alone"

        sys.modules["huggingface_hub"] = types.ModuleType("huggingface_hub")  # as huggingface_hub>=1 lacks them
        patches.apply()
        from huggingface_hub import HfFolder, Repository
        try:
            HfFolder.get_token()
        except RuntimeError as error:
            print(error)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "HfFolder was removed in huggingface_hub 1.0" in result.stdout
    assert "huggingface_hub<1.0" in result.stdout


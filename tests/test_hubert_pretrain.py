"""`s3prl-star teacher-pretrain`: HuBERT iteration 1 on the project's corpus, saved for `hubert_local`.

- Fast: the MFCC labels (39 dims at 100 Hz, per-frame so a label-aligned crop keeps its labels),
  k-means, the crop alignment, the schedule, bad options refused.
- Slow: the console script on espeak-ng speech trains a tiny model, which s3prl's own `hubert_local`
  loads and this project's `Teacher` runs; killed after a checkpoint, it resumes to the same weights
  as an uninterrupted run; a finished folder is not trained again, and another run's folder is refused.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from s3prl.upstream.hubert.hubert_model import HubertModel

from helpers import CLI
from s3prl_star.mini_superb.teacher_pretrain import (HOP, TeacherShape, build_model, crop_batch, kmeans, learning_rate, mfcc_features, units)
from s3prl_star.mini_superb.random_teacher import FAIRSEQ_SPECIAL_SYMBOLS

TINY = ["--layers", "2", "--embed-dim", "32", "--ffn-dim", "64", "--heads", "2", "--clusters", "8",
        "--batch-size", "2", "--max-seconds", "1.0"]


def test_mfcc_labels_are_39_dimensional_at_100_hz_and_frame_local():
    waveform = torch.randn(16000, generator=torch.Generator().manual_seed(0))
    features = mfcc_features(waveform)
    assert features.shape == ((16000 - 400) // HOP + 1, 39)
    # the 13 static coefficients of a crop starting on a label boundary are the slice of the whole's
    crop = mfcc_features(waveform[10 * HOP:])
    assert torch.allclose(crop[:, :13], features[10:, :13], atol=1e-4)


def test_kmeans_finds_separated_clusters():
    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = torch.cat([centre + 0.1 * torch.randn(50, 2, generator=generator) for centre in centres])
    found = kmeans(points, 3, iterations=10, seed=0)
    assert torch.cdist(centres, found).min(1).values.max() < 0.2
    labels = units(points, found)
    assert all(len(set(labels[i * 50:(i + 1) * 50].tolist())) == 1 for i in range(3))


def test_crops_keep_waveform_and_labels_aligned():
    waveforms = [torch.arange(8000, dtype=torch.float32), torch.arange(12000, dtype=torch.float32)]
    labels = [torch.arange((len(w) - 400) // HOP + 1) for w in waveforms]
    sources, targets = crop_batch(waveforms, labels, [0, 1], max_samples=6400, rng=random.Random(3))
    assert sources.shape == (2, 6400) and targets.shape == (2, (6400 - 400) // HOP + 1)
    for source, target in zip(sources, targets):
        assert int(source[0]) == int(target[0]) * HOP  # label i starts at sample 160 i


def test_training_logits_are_s3prls():
    """The teacher trains with s3prl's HuBERT forward; only the logits' arithmetic is its own."""
    model, task_cfg, model_cfg, symbols = build_model(TeacherShape(2, 32, 64, 2), clusters=8, mask_prob=0.5,
                                                      mask_length=5, feature_grad_mult=1.0)
    reference = HubertModel(model_cfg, task_cfg, symbols)
    reference.load_state_dict(model.state_dict())
    sources = torch.randn(2, 8000, generator=torch.Generator().manual_seed(0))
    targets = torch.randint(0, 8, (2, (8000 - 400) // HOP + 1), generator=torch.Generator().manual_seed(1))
    outputs = []
    for network in (model, reference):
        torch.manual_seed(0)
        np.random.seed(0)  # the span masks
        output = network(sources, target_list=[targets + len(FAIRSEQ_SPECIAL_SYMBOLS)],
                         padding_mask=torch.zeros(sources.shape, dtype=torch.bool))
        outputs.append(output["logit_m_list"] + output["logit_u_list"])
    for ours, theirs in zip(*outputs):
        assert ours.shape == theirs.shape and torch.equal(torch.isinf(ours), torch.isinf(theirs))
        assert torch.allclose(ours[torch.isfinite(ours)], theirs[torch.isfinite(theirs)], atol=1e-5)


def test_schedule_warms_up_over_8_percent_then_decays_to_zero():
    assert learning_rate(0, 100, 1.0) == 0.0 and learning_rate(8, 100, 1.0) == 1.0
    assert learning_rate(54, 100, 1.0) == pytest.approx(0.5) and learning_rate(100, 100, 1.0) == 0.0


@pytest.mark.parametrize("option, expected", [
    (["--steps", "0"], "--steps must be a positive integer"),
    (["--embed-dim", "30", "--heads", "4"], "--embed-dim 30 must be divisible by --heads 4"),
])
def test_bad_options_are_refused(tmp_path, option, expected):
    result = subprocess.run([CLI, "teacher-pretrain", str(tmp_path), "-o", str(tmp_path / "t"), *option],
                            capture_output=True, text=True)
    assert result.returncode == 2 and expected in result.stderr, result.stderr


def teacher_pretrain(libri: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([CLI, "teacher-pretrain", str(libri), "-o", str(out), *TINY, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def finished(process: subprocess.Popen) -> str:
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-4000:]
    return output


def recomputed_accuracies(out: Path, settings: dict) -> tuple[float, float, int]:
    """(held-out masked-prediction accuracy of OUT/teacher.pt on the units of OUT/kmeans.pt, the accuracy of always
    guessing the most frequent unit, held-out utterances), computed again as teacher-pretrain defines them."""
    from s3prl_star.mini_superb import teacher_pretrain

    held_out = teacher_pretrain.read_split(Path(settings["libri_root"]), settings["held_out_split"])
    centroids = torch.load(out / "kmeans.pt", weights_only=True)["centroids"]
    labels = [teacher_pretrain.units(teacher_pretrain.mfcc_features(waveform), centroids) for waveform in held_out]
    shape = teacher_pretrain.TeacherShape(settings["layers"], settings["embed_dim"], settings["ffn_dim"], settings["heads"])
    model, *_ = teacher_pretrain.build_model(shape, settings["clusters"], settings["mask_prob"], settings["mask_length"],
                                             settings["feature_grad_mult"])
    model.load_state_dict(torch.load(out / "teacher.pt", weights_only=True)["model_weight"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the run (OMP_NUM_THREADS=1): the same sums, the same argmax
    try:
        accuracy = teacher_pretrain.held_out_accuracy(model, held_out, labels, settings["seed"])
    finally:
        torch.set_num_threads(threads)
    frequencies = torch.bincount(torch.cat(labels), minlength=settings["clusters"])
    return accuracy, float(frequencies.max() / frequencies.sum()), len(held_out)


@pytest.mark.slow
def test_trains_saves_for_hubert_local_and_resumes_after_a_kill(tmp_path, mini_librispeech):
    steps = ["--steps", "30", "--save-every", "5"]
    whole = finished(teacher_pretrain(mini_librispeech, tmp_path / "whole", *steps))
    result = json.loads((tmp_path / "whole" / "result.json").read_text())
    assert result["steps"] == 30
    assert f"masked-prediction accuracy on {result['held_out_utterances']} held-out utterances" in whole
    # the reported accuracies, recomputed from the run's own files: teacher.pt, kmeans.pt and the corpus
    accuracy, majority, utterances = recomputed_accuracies(tmp_path / "whole", result["settings"])
    assert result["held_out_masked_accuracy"] == pytest.approx(accuracy, abs=1e-12)
    assert result["majority_unit_accuracy"] == pytest.approx(majority, abs=1e-12)
    assert result["held_out_utterances"] == utterances

    # s3prl's own loader reads the file; the teacher gives its 2 layers + input
    from s3prl_star.integration import patches
    from s3prl_star.distill.teacher import Teacher

    patches.apply()
    teacher = Teacher.from_s3prl("hubert_local", ckpt=str(tmp_path / "whole" / "teacher.pt"))
    output = teacher(torch.randn(1, 16000), torch.tensor([16000]))
    assert len(output.hidden_states) == 3 and output.hidden_states[-1].shape[-1] == 32

    killed = teacher_pretrain(mini_librispeech, tmp_path / "killed", *steps)
    states = tmp_path / "killed" / "states.pt"
    deadline = time.monotonic() + 300
    while not states.exists():
        assert killed.poll() is None and time.monotonic() < deadline, killed.communicate()[0][-4000:]
        time.sleep(0.2)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "killed" / "result.json").exists()
    resumed = finished(teacher_pretrain(mini_librispeech, tmp_path / "killed", *steps))
    assert "resuming" in resumed and f"{states}" in resumed
    expected = torch.load(tmp_path / "whole" / "teacher.pt", weights_only=True)["model_weight"]
    actual = torch.load(tmp_path / "killed" / "teacher.pt", weights_only=True)["model_weight"]
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[key], actual[key]) for key in expected), "resumed weights differ"

    again = finished(teacher_pretrain(mini_librispeech, tmp_path / "whole", *steps))
    assert "is already trained" in again
    other = teacher_pretrain(mini_librispeech, tmp_path / "whole", "--steps", "31")
    output, _ = other.communicate(timeout=600)
    assert other.returncode != 0 and "trained with other settings" in output


# --- the recipe's pieces against independent references ----------------------------------------------

def kaldi_deltas(features: np.ndarray, window: int = 2) -> np.ndarray:
    """Kaldi's `add-deltas` (compute-deltas) along time, edges replicated: d_t = sum_n n (c_{t+n} - c_{t-n}) /
    (2 sum_n n^2), written out here as the reference the MFCC features must match."""
    padded = np.pad(features, ((window, window), (0, 0)), mode="edge")
    frames = len(features)
    numerator = sum(n * (padded[window + n:window + n + frames] - padded[window - n:window - n + frames])
                    for n in range(1, window + 1))
    return numerator / (2 * sum(n * n for n in range(1, window + 1)))


def test_mfcc_features_are_13_coefficients_their_deltas_and_delta_deltas():
    import torchaudio

    from s3prl_star.mini_superb.teacher_pretrain import mfcc_features

    waveform = torch.randn(16000, generator=torch.Generator().manual_seed(0))
    features = mfcc_features(waveform).numpy()
    mfcc = torchaudio.compliance.kaldi.mfcc(waveform.unsqueeze(0), sample_frequency=16000, use_energy=False).numpy()
    assert features.shape == (len(mfcc), 39)
    np.testing.assert_allclose(features[:, :13], mfcc, atol=1e-5)
    np.testing.assert_allclose(features[:, 13:26], kaldi_deltas(mfcc), atol=1e-4)
    np.testing.assert_allclose(features[:, 26:], kaldi_deltas(kaldi_deltas(mfcc)), atol=1e-4)


class FixedLogits(torch.nn.Module):
    """A stand-in for HubertModel's pre-training forward with fixed logits (the positive in column 0)."""

    def __init__(self, masked: torch.Tensor, unmasked: torch.Tensor, penalty: float):
        super().__init__()
        self.masked, self.unmasked, self.penalty = masked, unmasked, torch.tensor(penalty)

    def forward(self, sources, target_list, padding_mask, mask):
        return {"logit_m_list": [self.masked], "logit_u_list": [self.unmasked], "features_pen": self.penalty}


def test_masked_prediction_loss_and_accuracy_follow_hubert():
    """Cross-entropy of the masked frames with the positive as class 0, plus the unmasked frames' at their weight,
    plus the feature penalty; a frame is right when column 0 is its largest logit."""
    from s3prl_star.mini_superb.teacher_pretrain import FEATURE_PENALTY, masked_prediction

    masked = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [1.0, 0.5, 0.0], [0.2, 0.1, 0.9]])
    unmasked = torch.tensor([[0.0, 1.0, 2.0], [2.0, 0.0, 0.0]])
    model = FixedLogits(masked, unmasked, penalty=0.25)
    sources, targets = torch.zeros(1, 1600), torch.zeros(1, 4, dtype=torch.long)

    def cross_entropy(logits):  # -log softmax of column 0, averaged
        return float((torch.logsumexp(logits, 1) - logits[:, 0]).mean())

    for weight in (0.0, 0.5, 2.0):
        loss, correct, total = masked_prediction(model, sources, targets, unmasked_weight=weight)
        expected = cross_entropy(masked) + weight * cross_entropy(unmasked) + FEATURE_PENALTY * 0.25
        assert float(loss) == pytest.approx(expected, rel=1e-6)
        assert (int(correct), int(total)) == (2, 4)


def test_held_out_accuracy_pools_the_frames_of_every_utterance():
    """Right frames over all frames of all utterances (not a mean of per-utterance accuracies)."""
    from s3prl_star.mini_superb.teacher_pretrain import held_out_accuracy

    class PerUtterance(FixedLogits):
        def __init__(self):
            super().__init__(None, torch.zeros(1, 3), penalty=0.0)
            self.calls = iter([torch.tensor([[1.0, 0.0]] * 3 + [[0.0, 1.0]]),   # 3 of 4 right
                               torch.tensor([[0.0, 1.0]] * 5 + [[1.0, 0.0]])])  # 1 of 6 right

        def forward(self, sources, target_list, padding_mask, mask):
            self.masked = next(self.calls)
            return super().forward(sources, target_list, padding_mask, mask)

    waveforms = [torch.zeros(16000), torch.zeros(16000)]
    labels = [torch.zeros(100, dtype=torch.long), torch.zeros(100, dtype=torch.long)]
    assert held_out_accuracy(PerUtterance(), waveforms, labels, seed=0) == pytest.approx(4 / 10)

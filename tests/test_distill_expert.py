"""The pretrain expert in-process, driven as s3prl's runner drives it (`forward` on every batch of
`get_train_dataloader()`, pass after pass): which teacher layer each student layer learns from, and
the data order across an epoch boundary.
"""
from __future__ import annotations

from collections import defaultdict

import pytest
import torch

from helpers import load_expert_module
from s3prl_star.model.config import StarHubertConfig
from s3prl_star.model.released import parse_conv_layers

BATCH_SIZE = 4  # 24 utterances: 6 batches per epoch


def teacher_copy_config(teacher_path) -> dict:
    """The student fields of the random HuBERT teacher's shape (its `model_cfg`), dropout off."""
    model_cfg = torch.load(teacher_path, map_location="cpu", weights_only=True)["model_cfg"]
    fields = {name: model_cfg[name] for name in StarHubertConfig.__dataclass_fields__ if name in model_cfg}
    fields["conv_layers"] = [list(layer) for layer in parse_conv_layers(model_cfg["conv_feature_layers"])]
    return {**fields, "dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0, "dropout_input": 0.0}


@pytest.fixture(scope="module")
def expert(mini_librispeech, tiny_hubert_teacher, csv_dir):
    """An expert whose student has the teacher's shape, with all three STaR terms on, in training mode."""
    upstream_config = {
        "student": teacher_copy_config(tiny_hubert_teacher),
        "teacher": {"name": "hubert_local", "ckpt": str(tiny_hubert_teacher)},
        "objective": {"layerwise_weight": 1.0, "intra_weight": 1.0, "attention_weight": 1.0},
        "precision": "fp32",
    }
    datarc = {"libri_root": str(mini_librispeech), "file_path": str(csv_dir), "sets": ["train-clean-100"],
              "train_batch_size": BATCH_SIZE, "max_length": None, "num_workers": 0}
    with torch.random.fork_rng():
        torch.manual_seed(0)  # the bucket order's seed is torch's initial seed, as run_pretrain.py sets it
        expert = load_expert_module().UpstreamPretrainExpert(datarc, upstream_config, "cpu")
    return expert.train()


def test_a_student_copy_of_the_teacher_has_zero_loss(expert, tiny_hubert_teacher):
    """The student loaded with the teacher's own weights reproduces every teacher layer, so STaR's loss
    must vanish (to float32 rounding: the d x d path subtracts large sums) while a random student's is
    large: any shift in the layer pairing (student layer l against teacher layer l - 1) does not vanish."""
    waveforms, _ = next(iter(expert.get_train_dataloader()))
    length = 16000  # one length for all: no padding, so the teacher's per-utterance GroupNorm equals the student's
    batch = (waveforms[:, :length], torch.full((len(waveforms),), length))
    teacher_weights = torch.load(tiny_hubert_teacher, map_location="cpu", weights_only=True)["model_weight"]
    random_weights = {name: value.clone() for name, value in expert.student.state_dict().items()}

    expert.student.load_state_dict({name: teacher_weights[name] for name in random_weights}, strict=True)
    copy_loss, records = expert.forward(batch, defaultdict(list))
    expert.student.load_state_dict(random_weights)
    random_loss, _ = expert.forward(batch, defaultdict(list))
    expert.epochs.batches_done -= 2  # leave the data position as the fixture made it

    assert set(records) >= {"loss/layerwise", "loss/intra", "loss/attention"}
    assert random_loss.item() > 1.0
    assert abs(copy_loss.item()) <= 1e-6 * random_loss.item(), (copy_loss.item(), random_loss.item(), dict(records))


def test_consecutive_passes_are_differently_ordered_epochs(expert):
    """Two passes over the loader, as the runner makes them (`forward`, which counts the batch, after
    each; counted here without the models): each covers every utterance once, and the second is the
    next epoch, in a different order (the same order twice would be a missed `set_epoch`)."""
    loader = expert.get_train_dataloader()
    assert len(loader) == 24 // BATCH_SIZE
    start = expert.epochs.batches_done
    epochs = []
    for _ in range(2):
        epoch = []
        for _, lengths in loader:
            expert.epochs.batches_done += 1
            epoch.append(tuple(lengths.tolist()))
        epochs.append(epoch)
    everything = sorted(expert.waveforms.lengths)
    assert sorted(length for batch in epochs[0] for length in batch) == everything
    assert sorted(length for batch in epochs[1] for length in batch) == everything
    assert sorted(epochs[0]) == sorted(epochs[1]), "the buckets are fixed; only their order changes"
    assert epochs[0] != epochs[1]
    assert expert.epochs.batches_done - start == 2 * len(loader)
    expert.epochs.batches_done = start

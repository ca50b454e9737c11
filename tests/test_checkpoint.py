"""Checkpoint formats: the released STaRHuBERT Lightning layout, this project's files, and their errors."""
import argparse

import pytest
import torch
import yaml

from helpers import TINY_CONFIG
from s3prl_star.checkpoint import load_student, read_checkpoint, save_student
from s3prl_star.model import StarHubert

# TINY_CONFIG as the released yaml's `distiller:` section writes it.
DISTILLER_YAML = {
    "distiller": {
        "conv_feature_layers": "[(32,10,5)] + [(32,1,1)] + [(32,3,2)]*4 + [(48,1,1)] + [(48,2,2)]*2",
        "extractor_mode": "default",
        "conv_bias": False,
        "encoder_layers": 3,
        "encoder_embed_dim": 48,
        "encoder_ffn_embed_dim": 96,
        "encoder_attention_heads": 4,
        "conv_pos": 16,
        "conv_pos_groups": 4,
        "layer_norm_first": False,
        "activation_fn": "gelu",
        "dropout": 0.1,
        "attention_dropout": 0.1,
        "activation_dropout": 0.1,
        "dropout_input": 0.05,
        "final_dim": 24,
    }
}


def hidden_states(model, waveforms, lengths):
    with torch.no_grad():
        return model.eval()(waveforms, lengths).hidden_states


def released_checkpoint(student: StarHubert, with_hyper_parameters: bool) -> dict:
    """A Lightning checkpoint with the released key layout: student, frozen teacher, prediction head."""
    state_dict = {f"student_model.{key}": value for key, value in student.state_dict().items()}
    state_dict["student_model.final_proj.weight"] = torch.randn(24, 48)
    state_dict["student_model.final_proj.bias"] = torch.randn(24)
    state_dict["teacher_model.model.encoder.layers.0.fc1.weight"] = torch.randn(16, 8)
    state_dict["teacher_model.model.mask_emb"] = torch.randn(8)
    checkpoint = {"state_dict": state_dict, "epoch": 3, "global_step": 1200, "pytorch-lightning_version": "1.9.5"}
    if with_hyper_parameters:
        checkpoint["hyper_parameters"] = {"cfg": {**DISTILLER_YAML, "optimizer": {"lr": 1e-3}}}
    return checkpoint


@pytest.mark.parametrize("with_yaml", [True, False])
def test_released_lightning_checkpoint_loads_strictly(tmp_path, with_yaml):
    torch.manual_seed(0)
    student = StarHubert(TINY_CONFIG)
    assert "encoder.pos_conv.0.weight_g" in student.state_dict()
    assert student.state_dict()["encoder.pos_conv.0.weight_g"].shape == (1, 1, 16)
    path = tmp_path / "star.ckpt"
    torch.save(released_checkpoint(student, with_hyper_parameters=not with_yaml), path)
    yaml_path = tmp_path / "star.yaml"
    yaml_path.write_text(yaml.safe_dump(DISTILLER_YAML))

    loaded = load_student(path, yaml_path if with_yaml else None)
    assert not loaded.training
    waveforms, lengths = torch.randn(2, 12000), torch.tensor([12000, 7000])
    for ours, direct in zip(hidden_states(loaded, waveforms, lengths), hidden_states(student, waveforms, lengths)):
        assert torch.equal(ours, direct)


def test_parametrized_weight_norm_names_are_accepted(tmp_path):
    torch.manual_seed(0)
    student = StarHubert(TINY_CONFIG)
    checkpoint = released_checkpoint(student, with_hyper_parameters=True)
    for old, new in (("weight_g", "original0"), ("weight_v", "original1")):
        value = checkpoint["state_dict"].pop(f"student_model.encoder.pos_conv.0.{old}")
        checkpoint["state_dict"][f"student_model.encoder.pos_conv.0.parametrizations.weight.{new}"] = value
    torch.save(checkpoint, tmp_path / "new_names.ckpt")
    loaded = load_student(tmp_path / "new_names.ckpt")
    assert torch.equal(loaded.state_dict()["encoder.pos_conv.0.weight_v"], student.state_dict()["encoder.pos_conv.0.weight_v"])


def test_released_checkpoint_without_any_config_names_the_option(tmp_path):
    torch.save(released_checkpoint(StarHubert(TINY_CONFIG), with_hyper_parameters=False), tmp_path / "a.ckpt")
    with pytest.raises(ValueError, match="a.ckpt.*-g"):
        load_student(tmp_path / "a.ckpt")


def test_mismatched_checkpoints_name_keys_and_shapes(tmp_path):
    student = StarHubert(TINY_CONFIG)
    checkpoint = released_checkpoint(student, with_hyper_parameters=True)
    del checkpoint["state_dict"]["student_model.encoder.layers.1.fc2.bias"]
    checkpoint["state_dict"]["student_model.encoder.layers.0.fc1.weight"] = torch.randn(97, 48)
    checkpoint["state_dict"]["student_model.encoder.extra.weight"] = torch.randn(3)
    torch.save(checkpoint, tmp_path / "bad.ckpt")
    with pytest.raises(ValueError) as error:
        load_student(tmp_path / "bad.ckpt")
    message = str(error.value)
    assert "bad.ckpt" in message
    assert "missing keys: ['encoder.layers.1.fc2.bias']" in message
    assert "unexpected keys: ['encoder.extra.weight']" in message
    assert "encoder.layers.0.fc1.weight: checkpoint (97, 48) vs model (96, 48)" in message

    checkpoint = released_checkpoint(student, with_hyper_parameters=True)
    checkpoint["state_dict"]["loss_module.scale"] = torch.ones(1)
    torch.save(checkpoint, tmp_path / "foreign.ckpt")
    with pytest.raises(ValueError, match="foreign.ckpt.*loss_module.scale"):
        load_student(tmp_path / "foreign.ckpt")


def test_truncated_and_foreign_files_are_clear_errors(tmp_path):
    save_student(tmp_path / "student.pt", StarHubert(TINY_CONFIG))
    data = (tmp_path / "student.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated.pt"):
        load_student(tmp_path / "truncated.pt")
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt.*not a STaRHuBERT checkpoint"):
        load_student(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_student(tmp_path / "missing.pt")


class NotAllowed:
    pass


def test_arbitrary_pickles_are_refused(tmp_path):
    torch.save({"Student": NotAllowed()}, tmp_path / "evil.ckpt")
    with pytest.raises(ValueError, match="evil.ckpt.*weights-only"):
        load_student(tmp_path / "evil.ckpt")


def test_student_file_and_distiller_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    student = StarHubert(TINY_CONFIG)
    save_student(tmp_path / "student.pt", student)
    assert [p.name for p in tmp_path.iterdir()] == ["student.pt"]  # no temporary file left
    states = {
        "Student": {"config": TINY_CONFIG.to_dict(), "state_dict": student.state_dict()},
        "Step": 10,
        "Args": argparse.Namespace(upstream="star_hubert"),
        "Config": {"runner": {"total_steps": 10}},
    }
    torch.save(states, tmp_path / "states-10.ckpt")
    waveforms, lengths = torch.randn(1, 8000), torch.tensor([8000])
    direct = hidden_states(student, waveforms, lengths)
    for path in ("student.pt", "states-10.ckpt"):
        loaded = load_student(tmp_path / path)
        assert loaded.config == TINY_CONFIG
        assert all(torch.equal(a, b) for a, b in zip(hidden_states(loaded, waveforms, lengths), direct))


def test_reading_keeps_globally_allowed_namespace(tmp_path):
    """compat.apply() allows argparse.Namespace for s3prl's runners; reading a checkpoint must not undo it."""
    torch.save({"Args": argparse.Namespace(downstream="voxceleb1")}, tmp_path / "states-1.ckpt")
    before = torch.serialization.get_safe_globals()
    torch.serialization.add_safe_globals([argparse.Namespace])
    try:
        assert read_checkpoint(tmp_path / "states-1.ckpt")["Args"].downstream == "voxceleb1"
        assert argparse.Namespace in torch.serialization.get_safe_globals()
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(before)

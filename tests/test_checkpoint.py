"""Checkpoint formats: the released STaRHuBERT files, this project's files, and their errors.

The released files are built as the code that wrote them does: `helpers.write_released_files` (its section
of tests/helpers.py names the references).
"""
import argparse

import pytest
import torch
import yaml

from helpers import TINY_CONFIG, released_checkpoint, released_template, write_released_files
from s3prl_star.model.checkpoint import load_student, read_checkpoint, save_student
from s3prl_star.model.released import released_student_config
from s3prl_star.integration.hub import star_hubert
from s3prl_star.model.config import PRESETS
from s3prl_star.model.star_hubert import StarHubert, build_preset


@pytest.fixture(scope="module")
def teacher_weights(tiny_hubert_teacher):
    """A fairseq HuBERT state dict (tiny): what `teacher_model.model.` holds in a released checkpoint."""
    return torch.load(tiny_hubert_teacher, map_location="cpu", weights_only=True)["model_weight"]


def hidden_states(model, waveforms, lengths):
    with torch.no_grad():
        return model.eval()(waveforms, lengths).hidden_states


def assert_same_outputs(loaded, student, samples=12000):
    """Every hidden state of `loaded` (the features and each layer) equals `student`'s, bit for bit."""
    waveforms, lengths = torch.randn(2, samples), torch.tensor([samples, samples * 2 // 3])
    ours, direct = hidden_states(loaded, waveforms, lengths), hidden_states(student, waveforms, lengths)
    assert len(ours) == len(direct) == student.config.encoder_layers + 1
    for layer, (state, expected) in enumerate(zip(ours, direct)):
        assert torch.equal(state, expected), f"hidden state {layer} differs"


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["star_hubert", "star_hubert_l", "star_hubert_s", "star_hubert_xs"])
def test_released_files_load_through_the_upstream(tmp_path, teacher_weights, preset):
    """The released .ckpt with its .yaml, as the released README runs them (`-u ... -k CKPT -g YAML`):
    s3prl calls the upstream with ckpt=-k and model_config=-g."""
    torch.manual_seed(0)
    student = build_preset(preset)
    ckpt, config = write_released_files(tmp_path, student, teacher_weights)
    upstream = star_hubert(ckpt=str(ckpt), model_config=str(config))
    assert upstream.model.config == PRESETS[preset]
    assert_same_outputs(upstream.model, student, samples=8000)


@pytest.mark.parametrize("with_yaml", [True, False])
def test_released_lightning_checkpoint_loads_strictly(tmp_path, teacher_weights, with_yaml):
    torch.manual_seed(0)
    student = StarHubert(TINY_CONFIG)
    assert student.state_dict()["encoder.pos_conv.0.weight_g"].shape == (1, 1, 16)
    ckpt, config = write_released_files(tmp_path, student, teacher_weights, with_hyper_parameters=not with_yaml)
    loaded = load_student(ckpt, config if with_yaml else None)
    assert not loaded.training and loaded.config == TINY_CONFIG
    assert_same_outputs(loaded, student)


def test_released_checkpoint_pickles_s3prl_schedules_that_load_inert(tmp_path, teacher_weights):
    """s3prl's AdamW_with_schedule keeps a schedule object per param group: weights-only loading refuses
    it unless named; it loads as a plain stand-in, so no s3prl code runs."""
    ckpt, _ = write_released_files(tmp_path, StarHubert(TINY_CONFIG), teacher_weights)
    with pytest.raises(Exception, match="s3prl.optimizers.WarmupLinearSchedule"):
        torch.load(ckpt, weights_only=True)
    schedule = read_checkpoint(ckpt)["optimizer_states"][0]["param_groups"][0]["schedule"]
    assert type(schedule).__module__ == "s3prl_star.model.released"
    assert vars(schedule)["warmup"] == 0.05 and vars(schedule)["t_total"] == 1200


def load_student_config(path):
    with open(path) as file:
        return released_student_config(yaml.safe_load(file), source=str(path))


def test_released_template_fields(tmp_path):
    """Every field of the template is known: StarHubertConfig fields are read, training-only fields are
    ignored whatever their value, a network-shaping value this student lacks is an error naming the
    field, and so are unknown fields and sections."""
    template = released_template(PRESETS["star_hubert"])
    assert released_student_config(template) == PRESETS["star_hubert"]
    for key, value in (("layer_grad_scale", False), ("encoder_layerdrop", 0.1), ("init_encoder_layers", 4),
                       ("layerwise_proj", False), ("required_seq_len_multiple", 2), ("max_positions", 10),
                       ("pos_enc_type", "rel_pos"), ("tr_reduce_factor", 4), ("feature_grad_mult", 0.1)):
        changed = {**template, "distiller": {**template["distiller"], key: value}}
        assert released_student_config(changed) == PRESETS["star_hubert"], key
    for key, value, expected in (
        ("layer_type", "conformer", "distiller.layer_type = 'conformer'.*transformer"),
        ("pos_conv_depth", 5, "distiller.pos_conv_depth = 5.*only 1"),
        ("crop_seq_to_multiple", 2, "distiller.crop_seq_to_multiple = 2.*only 1"),
        ("enable_tr_layer", True, "distiller.enable_tr_layer = True.*time-reduction"),
        ("reuse_pattern", str([True, False] * 6), "distiller.reuse_pattern.*attention-map reusing"),
        ("activation_fn", "relu", "distiller.activation_fn = 'relu'.*gelu"),
        ("encoder_width", 432, "unknown distiller field 'encoder_width'"),
    ):
        path = tmp_path / f"{key}.yaml"
        path.write_text(yaml.dump({**template, "distiller": {**template["distiller"], key: value}}, sort_keys=False))
        with pytest.raises(ValueError, match=f"{path}: {expected}"):
            load_student_config(path)
    with pytest.raises(ValueError, match=r"unknown top-level section\(s\) \['trainer'\]"):
        released_student_config({**template, "trainer": {}})
    with pytest.raises(ValueError, match="distiller"):
        released_student_config({"model": {"encoder_layers": 12}})


def test_parametrized_weight_norm_names_are_accepted(tmp_path, teacher_weights):
    torch.manual_seed(0)
    student = StarHubert(TINY_CONFIG)
    checkpoint = released_checkpoint(student, released_template(TINY_CONFIG), teacher_weights)
    for old, new in (("weight_g", "original0"), ("weight_v", "original1")):
        value = checkpoint["state_dict"].pop(f"student_model.encoder.pos_conv.0.{old}")
        checkpoint["state_dict"][f"student_model.encoder.pos_conv.0.parametrizations.weight.{new}"] = value
    torch.save(checkpoint, tmp_path / "new_names.ckpt")
    loaded = load_student(tmp_path / "new_names.ckpt")
    assert torch.equal(loaded.state_dict()["encoder.pos_conv.0.weight_v"], student.state_dict()["encoder.pos_conv.0.weight_v"])


def test_released_checkpoint_without_any_config_names_the_option(tmp_path, teacher_weights):
    checkpoint = released_checkpoint(StarHubert(TINY_CONFIG), released_template(TINY_CONFIG), teacher_weights,
                                     with_hyper_parameters=False)
    torch.save(checkpoint, tmp_path / "a.ckpt")
    with pytest.raises(ValueError, match="a.ckpt.*-g"):
        load_student(tmp_path / "a.ckpt")


def test_mismatched_checkpoints_name_keys_and_shapes(tmp_path, teacher_weights):
    student = StarHubert(TINY_CONFIG)
    template = released_template(TINY_CONFIG)
    checkpoint = released_checkpoint(student, template, teacher_weights)
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

    checkpoint = released_checkpoint(student, template, teacher_weights)
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
        states = hidden_states(loaded, waveforms, lengths)
        assert len(states) == len(direct) == TINY_CONFIG.encoder_layers + 1
        assert all(torch.equal(a, b) for a, b in zip(states, direct)), path


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

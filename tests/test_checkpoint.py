"""Checkpoint formats: the released STaRHuBERT files, this project's files, and their errors.

The released files are built here the way the code that wrote them does (reference: ARMHuBERT's
GitHub, on which STaRHuBERT was built and whose `models/starhubert` is the released upstream, and
PyTorch Lightning 1.7, the version its requirements pin):
- the `.yaml` is ARMHuBERT's training template (`conf/armhubert/*.yaml`: teacher, train, distiller,
  optimizer, data, specaug), to which `train.py` adds `model: <name>` and whose `distiller:` section
  `utils.dump_yaml` rewrites with every public field of the student's config dataclass, dumped with
  `yaml.dump(sort_keys=False)`;
- the `.ckpt` is Lightning's `dump_checkpoint` of the LightningModule `W2V2Distil`: `epoch`,
  `global_step`, `pytorch-lightning_version`, `state_dict` (`student_model.*` and the frozen
  `teacher_model.model.*`), `loops`, `callbacks` (its ModelCheckpoint), `optimizer_states` (s3prl's
  `get_optimizer` on the template's `AdamW_with_schedule`, which keeps an LR schedule object in
  every param group), `lr_schedulers` (none), the native-AMP plugin's scaler state, `hparams_name`
  and `hyper_parameters` = {"cfg": the template} (`save_hyperparameters()` keeps the very dict that
  train.py and dump_yaml fill in).
"""
import argparse
import itertools

import pytest
import torch
import yaml

from helpers import TINY_CONFIG
from s3prl_star.model.checkpoint import load_student, read_checkpoint, save_student
from s3prl_star.model.released import released_student_config
from s3prl_star.integration.hub import star_hubert
from s3prl_star.model.config import PRESETS, StarHubertConfig
from s3prl_star.model.star_hubert import StarHubert, build_preset


def conv_feature_layers(layers) -> str:
    """fairseq's notation, runs of equal layers folded: '[(128, 10, 5)] + [(256, 3, 2)] * 4 + ...'."""
    runs = [(layer, len(list(group))) for layer, group in itertools.groupby(layers)]
    return " + ".join(f"[{tuple(layer)}]" + (f" * {count}" if count > 1 else "") for layer, count in runs)


def released_template(shape: StarHubertConfig) -> dict:
    """The released `.yaml` (and the ckpt's cfg) of a student of `shape`: ARMHuBERT's template with its
    values, the student's fields in `distiller:` (every field of ARMHuBERT's config class, in the
    template's order) and the `model` name train.py adds."""
    distiller = {
        "extractor_mode": shape.extractor_mode,
        "conv_feature_layers": conv_feature_layers(shape.conv_layers),
        "feature_grad_mult": 1.0,
        "conv_bias": shape.conv_bias,
        "conv_pos": shape.conv_pos,
        "conv_pos_groups": shape.conv_pos_groups,
        "pos_conv_depth": 1,
        "max_positions": 100000,
        "layer_type": "transformer",
        "encoder_layers": shape.encoder_layers,
        "encoder_embed_dim": shape.encoder_embed_dim,
        "encoder_ffn_embed_dim": shape.encoder_ffn_embed_dim,
        "encoder_attention_heads": shape.encoder_attention_heads,
        "activation_fn": "gelu",
        "layer_norm_first": shape.layer_norm_first,
        "layer_grad_scale": True,
        "depthwise_conv_kernel_size": 31,
        "attn_type": "",
        "pos_enc_type": "abs",
        "fp16": True,
        "reuse_pattern": str([False] * shape.encoder_layers),
        "dropout": shape.dropout,
        "attention_dropout": shape.attention_dropout,
        "activation_dropout": shape.activation_dropout,
        "encoder_layerdrop": 0.0,
        "dropout_input": shape.dropout_input,
        "final_dim": 256,
        "pred_head_final_dim": 768,
        "pred_head_inter_dim": 0,
        "layerwise_proj": True,
        "pred_layer_id": "[11]",
        "init_conv_layers": False,
        "init_encoder_layers": 0,
        "enable_tr_layer": False,
        "tr_conv1d_kernel": 2,
        "tr_layer_index": 0,
        "tr_reduce_factor": 2,
        "tr_layer_type": "conv1d",
        "checkpoint_activations": False,
        "required_seq_len_multiple": 1,
        "crop_seq_to_multiple": 1,
        "freeze_student_mask": False,
        "update_teacher_mask": False,
    }
    return {
        "teacher": {"teacher_model": "./hubert_base_ls960.pt", "mask_length": 10, "mask_prob": 0.4,
                    "mask_selection": "uniform", "mask_other": 0.0, "no_mask_overlap": True, "mask_min_space": 1},
        "train": {"base_dir": "./", "output_dir": "STaRHuBERT", "checkpoint": None, "num_epochs": 200, "gpus": 2,
                  "batch_size": 6, "accumulate_grad_batches": 4, "use_fp16": True, "use_apex": False,
                  "monitor_losses": True, "rec_loss_weight": 1.0, "rec_loss_type": "mse", "distil_random_layer": 11,
                  "random_layer_weight": 0.1, "delete_projections": False, "specaug": False, "mask_prob_schedule": ""},
        "distiller": distiller,
        "optimizer": {"name": "AdamW_with_schedule", "lr": 1.0e-3, "warmup_proportion": 0.05, "betas": [0.9, 0.98],
                      "eps": 1.0e-6, "weight_decay": 1.0e-6},
        "data": {"bucketing_path": "./data/len_for_bucket", "libri_root": "/db/LibriSpeech",
                 "train_set": ["train-clean-100"], "test_set": ["test-clean"]},
        "specaug": {"adaptive": False, "adaptive_number_ratio": 0.04, "adaptive_size_ratio": 0.04,
                    "max_n_time_masks": 20, "apply_time_warp": False, "apply_time_mask": True,
                    "apply_freq_mask": True, "replace_with_zero": False, "time_warp_window": 5,
                    "time_mask_width_range": [0, 100], "freq_mask_width_range": [0, 27],
                    "num_freq_mask": 2, "num_time_mask": 2},
        "model": "starhubert",
    }


def released_checkpoint(student: StarHubert, template: dict, teacher_weights: dict, *, with_hyper_parameters=True,
                        final_proj=True) -> dict:
    """Lightning 1.7's `dump_checkpoint` of W2V2Distil after 3 epochs (see the module docstring)."""
    from s3prl.optimizers import get_optimizer

    state_dict = {f"student_model.{key}": value for key, value in student.state_dict().items()}
    if final_proj:  # set by the distillation code; the released upstream deletes it
        final_dim, dim = template["distiller"]["final_dim"], student.config.encoder_embed_dim
        state_dict["student_model.final_proj.weight"] = torch.randn(final_dim, dim)
        state_dict["student_model.final_proj.bias"] = torch.randn(final_dim)
    state_dict.update({f"teacher_model.model.{key}": value for key, value in teacher_weights.items()})
    optimizer = get_optimizer([student], 1200, template["optimizer"])
    checkpoint_callback = ("ModelCheckpoint{'monitor': 'v_loss', 'mode': 'min', 'every_n_train_steps': 0, "
                           "'every_n_epochs': 1, 'train_time_interval': None}")
    best = "./results/pretrain/STaRHuBERT/checkpoint-epoch=02.ckpt"
    progress = {"total": {"ready": 1200, "completed": 1200, "started": 1200, "processed": 1200},
                "current": {"ready": 400, "completed": 400, "started": 400, "processed": 400}}
    checkpoint = {
        "epoch": 2,
        "global_step": 1200,
        "pytorch-lightning_version": "1.7.7",
        "state_dict": state_dict,
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": progress,
                               "epoch_loop.state_dict": {"_batches_that_stepped": 1200},
                               "epoch_loop.batch_progress": progress},
                  "validate_loop": {"state_dict": {}, "dataloader_progress": progress},
                  "test_loop": {"state_dict": {}}, "predict_loop": {"state_dict": {}}},
        "callbacks": {checkpoint_callback: {
            "monitor": "v_loss", "best_model_score": torch.tensor(0.41), "best_model_path": best,
            "current_score": torch.tensor(0.41), "dirpath": "./results/pretrain/STaRHuBERT",
            "best_k_models": {best: torch.tensor(0.41)}, "kth_best_model_path": best,
            "kth_value": torch.tensor(0.41), "last_model_path": "./results/pretrain/STaRHuBERT/last.ckpt"}},
        "optimizer_states": [optimizer.state_dict()],
        "lr_schedulers": [],
        "NativeMixedPrecisionPlugin": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                                       "growth_interval": 2000, "_growth_tracker": 17},
    }
    if with_hyper_parameters:
        checkpoint["hparams_name"] = "kwargs"
        checkpoint["hyper_parameters"] = {"cfg": template}
    return checkpoint


def write_released_files(directory, student: StarHubert, teacher_weights: dict, **options):
    """(star.ckpt, star.yaml) as released for `student`."""
    template = released_template(student.config)
    ckpt, config = directory / "star.ckpt", directory / "star.yaml"
    torch.save(released_checkpoint(student, template, teacher_weights, **options), ckpt)
    config.write_text(yaml.dump(template, sort_keys=False))
    return ckpt, config


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

"""`s3prl-star pretrain`: a tiny student distilled from a tiny random HuBERT through s3prl's own
pretrain runner, run as a user runs it (subprocess), plus the shipped configs and the driver's parts.

The run helpers (`TINY_PRETRAIN_STUDENT`, `write_configs`, `run_pretrain`, `load_checkpoint`, ...) are in
helpers.py, the `csv_dir` fixture in conftest.py: the distillation tests of other files share them.
"""
from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
import yaml

from s3prl_star.model.config import PRESETS, StarHubertConfig
from s3prl_star.model.star_hubert import StarHubert
from s3prl_star.integration.pretrain import resolve_paths, shadow_workdir

from helpers import (CLI, EXPERT_DIR, TINY_PRETRAIN_STUDENT, load_checkpoint, load_expert_module, run_pretrain,
                     scalars, subprocess_env, write_configs)


def student_state(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["Student"]["state_dict"]


@pytest.mark.slow
def test_pretrain_distils_a_tiny_student(mini_librispeech, tiny_hubert_teacher, csv_dir, tmp_path):
    """12 steps (2 epochs of 6 batches of 4) through s3prl's runner: the STaR loss falls, every scalar
    is logged, checkpoints hold a loadable student, and `-n` lands under the caller's directory."""
    model_yaml, runner_yaml = write_configs(
        tmp_path / "configs", teacher=tiny_hubert_teacher, corpus=mini_librispeech, csv_dir=csv_dir,
        runner={"n_epochs": 2, "gradient_accumulate_steps": 1, "log_step": 2, "save_step": 6},
        datarc={"train_batch_size": 4, "num_workers": 1},
    )
    result = run_pretrain(["-u", "star_hubert", "-g", "configs/model.yaml", "-c", "configs/runner.yaml", "-n", "tiny"],
                          cwd=tmp_path)
    expdir = tmp_path / "result" / "pretrain" / "tiny"
    assert "utt/s=" in result.stderr and "loss=" in result.stderr

    logged = scalars(expdir)
    prefix = "star_hubert/train-"
    for tag in ("loss", "lr", "gradient-norm", "loss/layerwise", "loss/intra", "loss/total",
                "time/teacher", "time/student", "time/loss", "utterances_per_second"):
        assert prefix + tag in logged, f"{tag} not logged; found {sorted(logged)}"
    total = [value for _, value in logged[prefix + "loss/total"]]
    assert [step for step, _ in logged[prefix + "loss/total"]] == [2, 4, 6, 8, 10, 12]
    assert sum(total[-2:]) / 2 < 0.85 * total[0], f"STaR loss did not fall: {total}"
    lr = [value for _, value in logged[prefix + "lr"]]
    assert lr[0] == pytest.approx(1e-3 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi / 11)).item()), rel=1e-5)
    assert lr[-1] == pytest.approx(0.0, abs=1e-12)  # cosine to 0 at the last step

    assert sorted(path.name for path in expdir.glob("states-*.ckpt")) == ["states-6.ckpt", "states-epoch-2.ckpt"]
    checkpoint = load_checkpoint(expdir / "states-epoch-2.ckpt")
    assert checkpoint["Data"]["batches_done"] == 12
    config = StarHubertConfig.from_dict(checkpoint["Student"]["config"])
    assert config == StarHubertConfig.from_dict(TINY_PRETRAIN_STUDENT)
    student = StarHubert(config)
    student.load_state_dict(checkpoint["Student"]["state_dict"])
    first = student_state(expdir / "states-6.ckpt")
    assert any(not torch.equal(first[name], value) for name, value in checkpoint["Student"]["state_dict"].items())
    assert not list(expdir.glob(".*.tmp")), "a temporary checkpoint file was left behind"


@pytest.mark.slow
def test_pretrain_with_the_distilhubert_objective_trains_saves_and_resumes_its_heads(
    mini_librispeech, tiny_hubert_teacher, csv_dir, tmp_path
):
    """objective.kind distilhubert, 4 steps: the L1 and cosine terms are logged, the prediction heads
    (teacher layers 1 and 2 of 2 by default) train with the student and are saved under `Objective`,
    the star_hubert upstream loads the student alone, and a run resumed from step 2 ends where the
    uninterrupted one did, heads and optimiser included (deterministic CPU, one thread)."""
    from s3prl_star.integration.hub import UpstreamExpert

    model_yaml, runner_yaml = write_configs(
        tmp_path / "configs", teacher=tiny_hubert_teacher, corpus=mini_librispeech, csv_dir=csv_dir,
        runner={"n_epochs": -1, "total_steps": 4, "gradient_accumulate_steps": 1, "log_step": 1, "save_step": 2},
        datarc={"train_batch_size": 4}, objective={"kind": "distilhubert"},
    )
    run_pretrain(["-u", "star_hubert", "-g", str(model_yaml), "-c", str(runner_yaml), "-n", "distilhubert"], cwd=tmp_path)
    expdir = tmp_path / "result" / "pretrain" / "distilhubert"
    logged = scalars(expdir)
    prefix = "star_hubert/train-"
    assert {f"{prefix}loss/{term}" for term in ("l1", "cosine", "total")} <= set(logged), sorted(logged)
    assert prefix + "loss/layerwise" not in logged
    assert [step for step, _ in logged[prefix + "loss/cosine"]] == [1, 2, 3, 4]

    middle, final = load_checkpoint(expdir / "states-2.ckpt"), load_checkpoint(expdir / "states-4.ckpt")
    assert sorted(final["Objective"]) == [f"heads.{k}.{i}.{name}" for k in (0, 1) for i in (0, 2) for name in ("bias", "weight")]
    assert final["Objective"]["heads.1.2.weight"].shape == (64, 32)  # teacher width x student width
    assert all(not torch.equal(middle["Objective"][name], value) for name, value in final["Objective"].items()), \
        "a head did not train: it is not in the optimiser"
    upstream = UpstreamExpert(str(expdir / "states-4.ckpt"))
    for name, value in final["Student"]["state_dict"].items():
        assert torch.equal(upstream.model.state_dict()[name], value), name

    run_pretrain(["-e", str(expdir / "states-2.ckpt"), "-n", "distilhubert"], cwd=tmp_path)
    resumed = load_checkpoint(expdir / "states-4.ckpt")
    assert resumed["Data"] == final["Data"] == {"batches_done": 4}
    for section in ("Student", "Objective"):
        reference = final[section]["state_dict"] if section == "Student" else final[section]
        saved = resumed[section]["state_dict"] if section == "Student" else resumed[section]
        for name, value in reference.items():
            assert torch.equal(saved[name], value), f"{section} {name}"
    for index, value in final["Optimizer"]["state"].items():
        assert all(torch.equal(resumed["Optimizer"]["state"][index][key], tensor) for key, tensor in value.items())


@pytest.mark.slow
def test_non_finite_loss_saves_the_batch_and_fails(mini_librispeech, tiny_hubert_teacher, csv_dir, tmp_path):
    """A teacher whose last layer outputs NaN: the first step stops the run with the batch saved."""
    checkpoint = torch.load(tiny_hubert_teacher, map_location="cpu", weights_only=True)
    checkpoint["model_weight"]["encoder.layers.1.fc2.bias"][0] = float("nan")
    broken_teacher = tmp_path / "nan_teacher.pt"
    torch.save(checkpoint, broken_teacher)
    model_yaml, runner_yaml = write_configs(
        tmp_path / "configs", teacher=broken_teacher, corpus=mini_librispeech, csv_dir=csv_dir,
        runner={"n_epochs": -1, "total_steps": 3, "log_step": 1, "save_step": 2}, datarc={"train_batch_size": 4},
    )
    command = [CLI, "pretrain", "-u", "star_hubert", "-g", str(model_yaml), "-c", str(runner_yaml), "-n", "nan",
               "--device", "cpu"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=subprocess_env())
    assert result.returncode != 0
    assert "NonFiniteLossError: non-finite loss" in result.stderr
    dump = torch.load(tmp_path / "result" / "pretrain" / "nan" / "nonfinite-step-1.pt", weights_only=True)
    assert dump["waveforms"].shape[0] == dump["lengths"].shape[0] == 4
    assert "encoder.layers.1.fc2.weight" in dump["Student"]
    assert not list((tmp_path / "result" / "pretrain" / "nan").glob("states-*.ckpt"))


def test_non_finite_gradients_stop_the_run(mini_librispeech, tiny_hubert_teacher, csv_dir, tmp_path):
    """s3prl's runner skips a step with a NaN gradient norm after printing it; the expert's
    on_before_zero_grad (called after every optimiser step) raises instead."""
    expert_module = load_expert_module()
    model_yaml, runner_yaml = write_configs(
        tmp_path, teacher=tiny_hubert_teacher, corpus=mini_librispeech, csv_dir=csv_dir, runner={},
        datarc={"train_batch_size": 4},
    )
    datarc = yaml.safe_load(runner_yaml.read_text())["pretrain_expert"]["datarc"]
    expert = expert_module.UpstreamPretrainExpert(datarc, str(model_yaml), "cpu")
    for parameter in expert.student.parameters():
        parameter.grad = torch.zeros_like(parameter)
    expert.on_before_zero_grad()
    parameter.grad[0] = float("nan")
    with pytest.raises(FloatingPointError, match="non-finite gradients"):
        expert.on_before_zero_grad()


def _load_s3prl_module(name: str):
    """s3prl's top-level `optimizers` / `schedulers` module, loaded from its file (no sys.path change)."""
    import s3prl

    spec = importlib.util.spec_from_file_location(f"s3prl_{name}", Path(s3prl.__file__).parent / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shipped_runner_configs_give_the_papers_optimiser():
    """AdamW lr 1e-3, betas (0.9, 0.98), eps 1e-6 through s3prl's get_optimizer; batch 24 x 2."""
    optimizers = _load_s3prl_module("optimizers")
    for name, sets in (("config_runner.yaml", ["train-clean-100"]),
                       ("config_runner_960h.yaml", ["train-clean-100", "train-clean-360", "train-other-500"])):
        config = yaml.safe_load((EXPERT_DIR / name).read_text())
        datarc = config["pretrain_expert"]["datarc"]
        assert datarc["sets"] == sets
        assert datarc["train_batch_size"] * config["runner"]["gradient_accumulate_steps"] == 48
        optimizer = optimizers.get_optimizer([torch.nn.Linear(1, 1)], 1000, config["optimizer"])
        assert type(optimizer) is torch.optim.AdamW
        group = optimizer.param_groups[0]
        assert (group["lr"], tuple(group["betas"]), group["eps"]) == (1e-3, (0.9, 0.98), 1e-6)


@pytest.mark.parametrize("name, utterances", [("config_runner.yaml", 28_539), ("config_runner_960h.yaml", 281_241)])
def test_shipped_runner_configs_schedule_in_s3prls_own_runner(name, utterances, monkeypatch):
    """The learning rate s3prl's plain pretrain Runner gives with a shipped config (as `run_pretrain.py`
    in a checkout builds it): linear warm-up over 5 % of the steps, then cosine decay to 0 at the
    last step, the steps being the epochs of LibriSpeech in length-sorted batches (n_epochs x
    utterances // 24 / 2 accumulated)."""
    import s3prl

    config = yaml.safe_load((EXPERT_DIR / name).read_text())
    for module in ("optimizers", "schedulers"):  # pretrain/runner.py imports them as top-level modules
        monkeypatch.setitem(sys.modules, module, _load_s3prl_module(module))
    spec = importlib.util.spec_from_file_location("s3prl_pretrain_runner", Path(s3prl.__file__).parent / "pretrain" / "runner.py")
    runner_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner_module)
    runner = types.SimpleNamespace(config=config, init_ckpt={})  # what the two methods read
    optimizer = runner_module.Runner._get_optimizer(runner, [torch.nn.Linear(1, 1)])
    scheduler = runner_module.Runner._get_scheduler(runner, optimizer)

    epochs = 200 if name == "config_runner.yaml" else 20
    total = epochs * (utterances // config["pretrain_expert"]["datarc"]["train_batch_size"]) // 2
    assert config["runner"]["total_steps"] == total and config["runner"]["n_epochs"] == -1
    warmup = round(0.05 * total)
    rate = {step: 1e-3 * scheduler.lr_lambdas[0](step) for step in range(0, total + 1, 50)}
    quarter = warmup + (total - warmup) // 4
    rate |= {step: 1e-3 * scheduler.lr_lambdas[0](step) for step in (warmup // 2, warmup, quarter, (warmup + total) // 2, total)}
    assert optimizer.param_groups[0]["lr"] == 0.0  # step 0, as the runner starts
    assert rate[warmup // 2] == pytest.approx(0.5e-3, rel=1e-3) and rate[warmup] == pytest.approx(1e-3)
    assert rate[quarter] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi / 4)), rel=1e-3)  # cosine, not linear
    assert rate[(warmup + total) // 2] == pytest.approx(0.5e-3, rel=1e-3) and rate[total] == pytest.approx(0.0, abs=1e-15)
    steps = sorted(rate)
    warming = [rate[step] for step in steps if step <= warmup]
    decaying = [rate[step] for step in steps if step >= warmup]
    assert warming == sorted(warming) and decaying == sorted(decaying, reverse=True)
    optimizer.step()
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 / warmup)  # what the first step after uses


def test_shipped_model_config_is_the_star_hubert_preset():
    from s3prl_star.distill import config as distill_config

    config, _ = distill_config.load_model_config(str(EXPERT_DIR / "config_model.yaml"))
    assert distill_config.student_config(config["student"], "student") == PRESETS["star_hubert"]
    assert config["teacher"]["name"] == "hubert_base" and config["precision"] == "bf16"

    overridden = distill_config.student_config({"preset": "star_hubert", "dropout": 0.0}, "student")
    assert overridden.dropout == 0.0 and overridden.encoder_embed_dim == 432
    with pytest.raises(ValueError, match="preset 'star_hubert_xxl'"):
        distill_config.student_config({"preset": "star_hubert_xxl"}, "student")
    with pytest.raises(ValueError, match="unknown StarHubertConfig field"):
        distill_config.student_config({"preset": "star_hubert", "dropuot": 0.0}, "student")
    with pytest.raises(ValueError, match=r"m\.yaml: unknown keys \['objectve'\], missing keys \['objective'\]"):
        bad = {**config, "objectve": config["objective"]}
        del bad["objective"]
        distill_config.check_keys(bad, distill_config.MODEL_KEYS, distill_config.MODEL_KEYS, "m.yaml")


def test_objective_kind_selects_the_loss_and_refuses_what_it_does_not_use(tmp_path):
    """`objective.kind` (star when absent) picks the loss config; a key of the other kind, a misspelt
    kind or a STaR layer_map with distilhubert stop the run, named."""
    from s3prl_star.distill.config import load_model_config
    from s3prl_star.distill.distilhubert import DistilHubertLossConfig
    from s3prl_star.distill.losses import StarLossConfig
    from s3prl_star.distill.objectives import objective_config

    expert = load_expert_module()
    config, _ = load_model_config(str(EXPERT_DIR / "config_model.yaml"))
    assert config["objective"]["kind"] == "star"
    assert objective_config(config["objective"], "o") == ("star", StarLossConfig())
    assert objective_config({"intra_weight": 0.0}, "o") == ("star", StarLossConfig(intra_weight=0.0))
    assert objective_config({"kind": "distilhubert", "pred_layers": [4, 8, 12]}, "o") == (
        "distilhubert", DistilHubertLossConfig(pred_layers=(4, 8, 12)))
    for section, message in (
        ({"kind": "distilhubrt"}, r"m\.yaml: objective: kind 'distilhubrt'; expected one of \('star', 'distilhubert'\)"),
        ({"kind": "distilhubert", "intra_weight": 1.0}, r"objective \(kind distilhubert\): .*unknown keys \['intra_weight'\]"),
        ({"pred_layers": [4]}, r"objective \(kind star\): .*unknown keys \['pred_layers'\]"),
    ):
        with pytest.raises(ValueError, match=message):
            objective_config(section, "m.yaml: objective")

    upstream_config = {
        "student": TINY_PRETRAIN_STUDENT, "precision": "fp32", "objective": {"kind": "distilhubert"},
        "teacher": {"name": "hubert_local", "ckpt": str(tmp_path / "never_loaded.pt"), "layer_map": [1, 2]},
    }
    datarc = {"libri_root": str(tmp_path), "file_path": str(tmp_path), "sets": [], "train_batch_size": 1, "num_workers": 0}
    with pytest.raises(ValueError, match=r"teacher\.layer_map pairs student and teacher layers for STaR"):
        expert.UpstreamPretrainExpert(datarc, upstream_config, "cpu")


def test_resolve_paths_makes_run_pretrain_paths_absolute(tmp_path):
    argv = ["-u", "star_hubert", "-g", "m.yaml", "--config=r.yaml", "-n", "exp", "-o", "config.runner.log_step=5"]
    assert resolve_paths(argv, tmp_path) == [
        "-u", "star_hubert", "-g", str(tmp_path / "m.yaml"), "--config", str(tmp_path / "r.yaml"),
        "-n", "exp", "-o", "config.runner.log_step=5", "-p", str(tmp_path / "result" / "pretrain" / "exp"),
    ]
    assert resolve_paths(["-a", "-n", "exp", "-p", "out"], tmp_path) == ["-a", "-n", "exp", "-p", str(tmp_path / "out")]
    # run_pretrain.py asserts -n even when -p names the folder: its name stands in
    assert resolve_paths(["-p", "runs/star"], tmp_path) == ["-p", str(tmp_path / "runs" / "star"), "-n", "star"]


def test_shadow_workdir_mirrors_s3prl_with_the_expert(tmp_path):
    import s3prl

    s3prl_dir = Path(s3prl.__file__).parent
    workdir = shadow_workdir(s3prl_dir, EXPERT_DIR, tmp_path)
    assert (workdir / "run_pretrain.py").resolve() == (s3prl_dir / "run_pretrain.py").resolve()
    assert (workdir / "pretrain" / "star_hubert").resolve() == EXPERT_DIR.resolve()
    assert (workdir / "pretrain" / "runner.py").resolve() == (s3prl_dir / "pretrain" / "runner.py").resolve()
    assert shadow_workdir(s3prl_dir, EXPERT_DIR, tmp_path) == workdir
    assert [path.name for path in tmp_path.iterdir()] == [workdir.name]

"""The mission's commands as written, in an s3prl git checkout: after `s3prl-star link-s3prl CHECKOUT`
and nothing else, s3prl's own `run_pretrain.py` and `run_downstream.py` run from `CHECKOUT/s3prl`
as subprocesses with no PYTHONPATH: a few distillation steps with the shipped runner config, their
resume with `-e` and with `-a`, and a few ASR and PR steps with their evaluation. The checkout, the
throwaway environment and the user's commands are test_link.py's, from helpers.py (test_link.py's
docstring says why the checkout is the installed package in a git repository, and why the
environment is not the project's .venv). The module's fixture undoes the link at the end: the
checkout's `git status` then lists only what the runs wrote (`s3prl/result/`, s3prl's default
experiment folder).

Runs are tiny: a 2-layer random HuBERT teacher, the 2-layer `TINY_PRETRAIN_STUDENT`, 24 espeak-ng
utterances, 4 steps; the runner config is the shipped `config_runner.yaml` (run_pretrain.py's
default for `-u star_hubert`) with `-o` overrides for the steps and the data.
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from helpers import (FAST_RUNNER, RECIPES, STEPS, TINY_PRETRAIN_STUDENT, error_rate, git_status, in_checkout, isolated_python,
                     length_csvs, link_s3prl, make_checkout, make_libriphone_corpus, pr_overrides, printed_metric,
                     scalars, user_environment)
from s3prl_star.model.checkpoint import read_checkpoint

PRETRAIN_STEPS = 4


@pytest.fixture(scope="module")
def linked(tmp_path_factory):
    """(python, checkout): a checkout linked with `link-s3prl`; unlinked after the module's tests."""
    root = tmp_path_factory.mktemp("checkout")
    python, checkout = isolated_python(root / "venv"), make_checkout(root)
    result = link_s3prl(python, checkout)
    assert result.returncode == 0, result.stderr
    yield python, checkout
    undone = link_s3prl(python, "--undo", checkout)
    assert undone.returncode == 0, undone.stderr
    assert all(line.startswith("?? s3prl/result/") for line in git_status(checkout)), git_status(checkout)


def run_in_checkout(linked, *args) -> str:
    """`python ARGS` from CHECKOUT/s3prl, which must succeed; returns stdout + stderr."""
    python, checkout = linked
    result = in_checkout(python, checkout, *args, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"python {' '.join(map(str, args))} failed:\n{output[-5000:]}"
    return output


@pytest.fixture(scope="module")
def pretrained(linked, mini_librispeech, tiny_hubert_teacher, tmp_path_factory):
    """`python run_pretrain.py -u star_hubert -g ../../configs/model.yaml -n tiny -o ...`: 4 steps, a
    checkpoint every 2; returns the experiment folder."""
    _, checkout = linked
    configs = checkout.parent / "configs"
    configs.mkdir(exist_ok=True)
    model = {
        "student": TINY_PRETRAIN_STUDENT,
        "teacher": {"name": "hubert_local", "ckpt": str(tiny_hubert_teacher), "model_config": None, "layer_map": None},
        "objective": {"layerwise_weight": 1.0, "intra_weight": 1.0, "attention_weight": 0.0},
        "precision": "fp32",
    }
    (configs / "model.yaml").write_text(yaml.safe_dump(model))
    csv_dir = length_csvs(mini_librispeech, tmp_path_factory.mktemp("len_for_bucket"))
    overrides = (
        f"config.runner.total_steps={PRETRAIN_STEPS},,config.runner.log_step=2,,config.runner.save_step=2,,"
        "config.runner.gradient_accumulate_steps=1,,config.scheduler.num_warmup_steps=1,,"
        f"config.pretrain_expert.datarc.libri_root={mini_librispeech},,"
        f"config.pretrain_expert.datarc.file_path={csv_dir},,"
        "config.pretrain_expert.datarc.train_batch_size=4,,config.pretrain_expert.datarc.num_workers=0"
    )
    output = run_in_checkout(linked, "run_pretrain.py", "-u", "star_hubert", "-g", "../../configs/model.yaml",
                             "-n", "tiny", "-o", overrides, "--device", "cpu")
    assert "[Runner] - Start a new experiment" in output
    return checkout / "s3prl" / "result" / "pretrain" / "tiny"


def step_and_student(path: Path) -> tuple[int, dict]:
    checkpoint = read_checkpoint(path)
    return checkpoint["Step"], checkpoint["Student"]["state_dict"]


@pytest.mark.slow
def test_pretrain_runs_in_s3prls_own_runner(pretrained):
    """4 steps with the shipped runner config: the STaR loss logged at the log steps, a checkpoint at
    each save step, the student trained between them."""
    expdir = pretrained
    assert sorted(path.name for path in expdir.glob("states-*.ckpt")) == ["states-2.ckpt", "states-4.ckpt"]
    logged = scalars(expdir)
    assert [step for step, _ in logged["star_hubert/train-loss/total"]] == [2, 4]
    (step_2, first), (step_4, last) = step_and_student(expdir / "states-2.ckpt"), step_and_student(expdir / "states-4.ckpt")
    assert (step_2, step_4) == (1, 3)  # s3prl saves the progress bar's count before the step is counted
    assert any(not torch.equal(first[name], last[name]) for name in first)


def resume(linked, expdir: Path, *args: str) -> str:
    """`python run_pretrain.py ARGS --device cpu`, a resume of the tiny run from states-2.ckpt: s3prl's
    runner takes the arguments and the config from the checkpoint (a new -o would be ignored) and
    trains from the saved step to the run's 4 steps, writing states-4.ckpt; returns its output."""
    start = step_and_student(expdir / "states-2.ckpt")[1]
    output = run_in_checkout(linked, "run_pretrain.py", *args, "--device", "cpu")
    for part in ("upstream", "optimizer", "scheduler"):
        assert f"[Runner] - Loading {part} weights from the previous experiment" in output, output[-3000:]
    step, end = step_and_student(expdir / f"states-{PRETRAIN_STEPS}.ckpt")
    assert step == PRETRAIN_STEPS - 1 and any(not torch.equal(start[name], end[name]) for name in start)
    return output


@pytest.mark.slow
def test_pretrain_resumes_with_e(linked, pretrained):
    """`-e CKPT`: the runner loads the checkpoint (weights only: its pickled Namespace needs the compat
    layer, which the link put in pretrain/__init__.py) before anything else runs."""
    output = resume(linked, pretrained, "-e", str(pretrained / "states-2.ckpt"))
    assert f"[Runner] - Resume from {pretrained / 'states-2.ckpt'}" in output


@pytest.mark.slow
def test_pretrain_resumes_with_a(linked, pretrained):
    """`-a -n tiny` after a run killed before its last checkpoint: resumes from the newest one left."""
    (pretrained / f"states-{PRETRAIN_STEPS}.ckpt").unlink()
    output = resume(linked, pretrained, "-a", "-n", "tiny")
    assert "[Runner] - Resume from result/pretrain/tiny/states-2.ckpt" in output


def downstream_then_evaluate(linked, task: str, recipe: Path, student: Path, expdir: Path, overrides: str,
                             train_line: str, evaluate_options: tuple, evaluate_line: str) -> str:
    """`run_downstream.py -m train -u star_hubert -k STUDENT -d TASK -c RECIPE -p EXPDIR -o ...` printing
    `train_line`, then `-m evaluate EVALUATE_OPTIONS -e EXPDIR/states-4.ckpt` printing `evaluate_line`."""
    trained = run_in_checkout(linked, "run_downstream.py", "-m", "train", "-u", "star_hubert", "-k", student,
                              "-d", task, "-c", recipe, "-p", expdir, "-o", f"{FAST_RUNNER},,{overrides}",
                              "--device", "cpu")
    assert re.search(train_line, trained, re.MULTILINE), trained[-3000:]
    evaluated = run_in_checkout(linked, "run_downstream.py", "-m", "evaluate", *evaluate_options,
                                "-e", expdir / f"states-{STEPS}.ckpt", "--device", "cpu")
    assert re.search(evaluate_line, evaluated, re.MULTILINE), evaluated[-3000:]
    return evaluated


@pytest.mark.slow
def test_asr_trains_and_evaluates_in_the_checkout(linked, tiny_student_checkpoint, tmp_path):
    from s3prl_star.mini_superb.synthetic import make_librispeech

    splits = {"train-clean-100": 8, "dev-clean": 4, "test-clean": 4}
    root = make_librispeech(tmp_path / "LibriSpeech", splits, seed=3)
    csv_dir = tmp_path / "len_for_bucket"
    subprocess.run([str(linked[0]), "-m", "s3prl_star.cli", "prepare-librispeech", str(root), "-o", str(csv_dir),
                    "--splits", *splits], check=True, capture_output=True, env=user_environment())
    overrides = (
        f"config.downstream_expert.datarc.libri_root={root},,config.downstream_expert.datarc.bucket_file={csv_dir},,"
        # the recipe names the shipped dictionary relative to this repository's root, not the checkout's
        f"config.downstream_expert.datarc.dict_path={RECIPES / 'asr' / 'char.dict'},,"
        "config.downstream_expert.datarc.num_workers=0,,config.downstream_expert.datarc.train_batch_size=4,,"
        "config.downstream_expert.datarc.batch_size=4,,config.downstream_expert.modelrc.project_dim=32,,"
        "config.downstream_expert.modelrc.RNNs.dim=[32, 32]"
    )
    output = downstream_then_evaluate(linked, "asr", RECIPES / "asr" / "config.yaml", tiny_student_checkpoint,
                                      tmp_path / "asr", overrides, r"^dev-clean wer: [0-9.]+",
                                      ("-t", "test-clean"), r"^test-clean wer: [0-9.]+")
    # the printed WER (percent) is the one of the hypotheses the evaluation wrote
    assert printed_metric(output, "test-clean wer") == pytest.approx(error_rate(tmp_path / "asr", "test-clean-noLM"), abs=1e-3)


@pytest.mark.slow
def test_pr_trains_and_evaluates_in_the_checkout(linked, tiny_student_checkpoint, tmp_path):
    corpus = make_libriphone_corpus(tmp_path)
    output = downstream_then_evaluate(linked, "ctc", RECIPES / "pr" / "config.yaml", tiny_student_checkpoint,
                                      tmp_path / "pr", pr_overrides(corpus), r"^dev per: ", (), r"^test per: ")
    # the printed PER (a fraction) is the one of the phoneme hypotheses the evaluation wrote
    assert 100 * printed_metric(output, "test per") == pytest.approx(error_rate(tmp_path / "pr", "test"), abs=1e-3)


def test_s3prl_star_pretrain_runs_on_a_linked_checkout(tmp_path):
    """With the checkout linked, `s3prl-star pretrain` mirrors the checkout's s3prl folder, whose
    pretrain/ already holds the star_hubert link: the mirror still gets exactly one, to the expert."""
    from s3prl_star.integration.pretrain import shadow_workdir
    from s3prl_star.resources import pretrain_plugin as expert_dir

    package = make_checkout(tmp_path) / "s3prl"
    (package / "pretrain" / "star_hubert").symlink_to(expert_dir(), target_is_directory=True)  # as link-s3prl
    workdir = shadow_workdir(package, expert_dir(), tmp_path / "cache")
    assert (workdir / "pretrain" / "star_hubert").resolve() == expert_dir().resolve()
    assert (workdir / "run_pretrain.py").resolve() == (package / "run_pretrain.py").resolve()

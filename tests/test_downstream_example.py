"""`s3prl-star downstream` drives s3prl's real runner: train the `example` task with the `fbank`
upstream, then evaluate the saved checkpoint in a fresh process; a missing default config fails early.

s3prl's `example` task reads no files: its RandomDataset draws 200 noise waveforms of 5-20 s with
random labels (s3prl/downstream/example/dataset.py), so the config below only needs its batch sizes,
the linear model's width and the runner's schedule; `evaluate_ratio` keeps evaluation to 3 batches.
"""
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import scalars

TOTAL_STEPS = 2
CLASSES = 48  # RandomDataset.class_num

CONFIG = f"""\
runner:
  total_steps: {TOTAL_STEPS}
  gradient_clipping: 1.0
  gradient_accumulate_steps: 1
  log_step: 1
  eval_step: {TOTAL_STEPS}
  save_step: {TOTAL_STEPS}
  max_keep: 1
  evaluate_ratio: 0.02
  eval_dataloaders:
    - dev
optimizer:
  name: TorchOptim
  torch_optim_name: Adam
  lr: 1.0e-3
scheduler:
  name: linear_schedule_with_warmup
  num_warmup_steps: 1
downstream_expert:
  datarc:
    num_workers: 0
    train_batch_size: 2
    eval_batch_size: 2
  modelrc:
    input_dim: 16
"""


def run_downstream(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "s3prl_star.cli", "downstream", *argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("downstream_example")
    (workdir / "config.yaml").write_text(CONFIG)
    expdir = workdir / "exp"
    result = run_downstream(
        "-m", "train", "-u", "fbank", "-d", "example", "-c", "config.yaml", "-p", str(expdir), "--device", "cpu",
        cwd=workdir,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir, expdir


@pytest.mark.slow
def test_train_saves_checkpoint_and_logs_dev_scores_at_chance(trained):
    """Labels are random (chance 1/48): two steps cannot beat chance, so the dev cross-entropy is near
    ln 48 and the 6 dev utterances evaluated are mostly wrong (the run is seeded: deterministic)."""
    _, expdir = trained
    assert (expdir / f"states-{TOTAL_STEPS}.ckpt").is_file()
    logged = scalars(expdir)
    assert [step for step, _ in logged["example/train-loss"]] == list(range(1, TOTAL_STEPS + 1))
    ((step, dev_accuracy),) = logged["example/dev-acc"]
    ((_, dev_loss),) = logged["example/dev-loss"]
    assert step == TOTAL_STEPS
    assert dev_loss == pytest.approx(math.log(CLASSES), abs=0.5)
    assert dev_accuracy < 0.5


@pytest.mark.slow
def test_evaluate_saved_checkpoint_in_fresh_process(trained):
    workdir, expdir = trained
    checkpoint = expdir / f"states-{TOTAL_STEPS}.ckpt"
    # `--device` is not restored from the checkpoint (run_downstream.py cannot_overwrite_args).
    result = run_downstream("-m", "evaluate", "-e", str(checkpoint), "--device", "cpu", cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert f"Resume from {checkpoint}" in output  # torch.load(weights_only=True) of Args/Config
    assert "Loading Downstream weights from the previous experiment" in output
    # The example expert logs its test metrics only to TensorBoard in a temporary directory that the
    # runner deletes after evaluate (runner.py `evaluate`); the finished test loop is what shows. Its
    # random dataset can yield more batches than its length, which tqdm then shows as "Nit".
    assert re.search(r"test: (100%|\d+it )", output), output[-2000:]


def test_missing_default_config_fails_early_naming_it(tmp_path):
    result = run_downstream("-m", "train", "-u", "fbank", "-d", "example", "-p", str(tmp_path / "exp"), cwd=tmp_path)
    assert result.returncode == 2
    assert "./downstream/example/config.yaml" in result.stderr
    assert "-c" in result.stderr
    assert not (tmp_path / "exp").exists()

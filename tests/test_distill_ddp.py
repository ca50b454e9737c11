"""Distributed data parallel: two CPU processes under torchrun (gloo) with batch 2 end with the same
student as one process with batch 4, after 3 steps of s3prl's runner through `s3prl-star pretrain`.

This holds only if the loss is normalised by the global batch's valid frame pairs (the utterances
differ in length, so the two processes hold different numbers of pairs) and the loss is scaled
against DDP's gradient averaging. Dropout is off so that both runs compute the same function.
AdamW nearly cancels a constant gradient scale, so the gradients themselves are compared too: the
norm s3prl's runner logs every step (the all-reduced gradient's, before clipping).
"""
from __future__ import annotations

import sys

import pytest
import torch

from helpers import load_checkpoint, run_pretrain, scalars, write_configs

NO_DROPOUT = {"dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0, "dropout_input": 0.0}
RUNNER = {"n_epochs": -1, "total_steps": 3, "gradient_accumulate_steps": 1, "log_step": 1, "save_step": 2}


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_with_the_doubled_batch(
    mini_librispeech, tiny_hubert_teacher, csv_dir, tmp_path
):
    students, gradient_norms = {}, {}
    for name, batch_size, launcher in (
        ("single", 4, None),
        ("ddp", 2, [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                    "-m", "s3prl_star.cli"]),
    ):
        model_yaml, runner_yaml = write_configs(
            tmp_path / name, teacher=tiny_hubert_teacher, corpus=mini_librispeech, csv_dir=csv_dir,
            runner=RUNNER, datarc={"train_batch_size": batch_size}, student=NO_DROPOUT,
        )
        run_pretrain(["-u", "star_hubert", "-g", str(model_yaml), "-c", str(runner_yaml), "-n", name],
                     cwd=tmp_path, launcher=launcher)
        expdir = tmp_path / "result" / "pretrain" / name
        students[name] = {step: load_checkpoint(expdir / f"states-{step}.ckpt") for step in (2, 3)}
        gradient_norms[name] = scalars(expdir)["star_hubert/train-gradient-norm"]

    assert [step for step, _ in gradient_norms["ddp"]] == [step for step, _ in gradient_norms["single"]] == [1, 2, 3]
    for (step, ddp_norm), (_, single_norm) in zip(gradient_norms["ddp"], gradient_norms["single"]):
        assert ddp_norm == pytest.approx(single_norm, rel=1e-4), f"step {step}: gradient norms differ"

    ddp, single = students["ddp"][3], students["single"][3]
    assert ddp["Data"]["batches_done"] == single["Data"]["batches_done"] == 3
    assert len(ddp["RNG"]["torch"]) == 2 and len(single["RNG"]["torch"]) == 1
    moved = max((students["single"][2]["Student"]["state_dict"][name] - value).abs().max().item()
                for name, value in single["Student"]["state_dict"].items())
    assert moved > 1e-4, "the last step changed nothing: the comparison would be vacuous"
    for name, value in single["Student"]["state_dict"].items():
        torch.testing.assert_close(ddp["Student"]["state_dict"][name], value, rtol=1e-4, atol=1e-6,
                                   msg=lambda message, name=name: f"{name}: {message}")
    assert ddp["Step"] == single["Step"]
    # only rank 0 writes checkpoints; rank 1 logs beside them
    assert not list((tmp_path / "result" / "pretrain" / "ddp" / "rank1").glob("states-*.ckpt"))

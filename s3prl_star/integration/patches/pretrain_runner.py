"""Extensions of s3prl's pretrain `Runner` for `s3prl-star pretrain`, installed in its module before
`run_pretrain.py` imports it (`install`): the Runner class (`StarRunnerMixin`), its progress bar
(`ProgressBar`) and its checkpoint files (`runner_checkpoints`). Its `train()` loop stays s3prl's.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Callable

from tqdm import tqdm

from s3prl_star.atomic import save_atomic
from s3prl_star.integration import config_check
from s3prl_star.integration.patches import runner_checkpoints


class NonFiniteLossError(FloatingPointError):
    """A training step gave a non-finite loss; `dump` holds the batch and the student to inspect."""

    def __init__(self, message: str, step: int, dump: dict[str, Any]):
        super().__init__(message)
        self.step = step
        self.dump = dump


class ProgressBar(tqdm):
    """s3prl's runner's tqdm: the overall bar shows the expert's `progress()` (loss, utterances/s);
    ranks > 0 print nothing (the bar still counts: the runner uses `pbar.n` as its step)."""

    rank = 0
    postfix_source: Callable[[], dict[str, str]] | None = None

    def __init__(self, *args, **kwargs):
        if self.rank > 0:
            kwargs["file"] = open(os.devnull, "w")
        super().__init__(*args, **kwargs)

    def update(self, n: float = 1) -> bool | None:
        if self.postfix_source is not None and self.desc == "overall":
            self.set_postfix(self.postfix_source(), refresh=False)
        return super().update(n)


class StarRunnerMixin:
    """Extends s3prl's pretrain `Runner` (mixed in before it): total steps from the data, AdamW with
    its learning rate logged, per-rank experiment folders and a dump of the batch on a non-finite
    loss, resume after the saved step at its learning rate. `train()` is s3prl's own loop."""

    user_cwd: str = "."
    rank: int = 0

    def __init__(self, args, config):
        # run_pretrain.py parsed its arguments in the shadow folder; the run uses the caller's.
        if isinstance(args.upstream_config, str):
            args.upstream_config = os.path.abspath(args.upstream_config)
        if isinstance(args.config, str):
            args.config = os.path.abspath(args.config)
        config_check.check_pretrain_config(config, args.config if args.init_ckpt is None else "checkpoint Config")
        os.chdir(self.user_cwd)
        if self.rank > 0:
            # s3prl's runner prunes old checkpoints on every process: keep ranks > 0 out of rank 0's folder
            args.expdir = os.path.join(args.expdir, f"rank{self.rank}")
        super().__init__(args, config)
        if self.init_ckpt:
            # s3prl saves `Step = pbar.n` before counting the step just finished, then resumes at
            # pbar.n = Step and repeats that step: resume after it instead
            self.init_ckpt["Step"] += 1
        ProgressBar.postfix_source = self.upstream.progress

    def total_steps(self) -> int:
        """Optimiser steps of the run, as s3prl's `Runner.train` computes them."""
        runner = self.config["runner"]
        if runner["n_epochs"] <= 0:
            return runner["total_steps"]
        batches_per_epoch = len(self.upstream.get_train_dataloader().dataset)
        return int(runner["n_epochs"] * batches_per_epoch / runner["gradient_accumulate_steps"])

    def _get_optimizer(self, model_params):
        self.config["runner"]["total_steps"] = self.total_steps()
        optimizer = super()._get_optimizer(model_params)
        # s3prl's runner logs `optimizer.get_lr()[0]` when the optimizer has it, else the config's constant lr
        optimizer.get_lr = lambda: [group["lr"] for group in optimizer.param_groups]
        return optimizer

    def _get_scheduler(self, optimizer):
        """s3prl's scheduler over the total steps `_get_optimizer` set; resumed at the saved step's rate."""
        scheduler = super()._get_scheduler(optimizer)
        if self.init_ckpt:
            # building the scheduler set the step-0 learning rate; loading its state does not undo that
            for group, lr in zip(optimizer.param_groups, scheduler.get_last_lr()):
                group["lr"] = lr
        return scheduler

    def train(self):
        try:
            super().train()
        except NonFiniteLossError as error:
            path = os.path.join(self.args.expdir, f"nonfinite-step-{error.step}.pt")
            os.makedirs(self.args.expdir, exist_ok=True)
            save_atomic(error.dump, path)
            print(f"[Runner] - non-finite loss at step {error.step}: batch and student saved to {path}", file=sys.stderr)
            raise


def install(user_cwd: str, rank: int) -> None:
    """Extend s3prl's `pretrain.runner` module before run_pretrain.py imports its Runner."""
    import pretrain.runner as runner_module

    runner_module.Runner = type(
        "StarRunner",
        (StarRunnerMixin, runner_module.Runner),
        {"user_cwd": str(user_cwd), "rank": rank},
    )
    ProgressBar.rank = rank
    runner_module.tqdm = ProgressBar
    # only rank 0 writes checkpoints (the runner saves on every process)
    runner_checkpoints.install(runner_module, writes=rank == 0)

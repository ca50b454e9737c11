"""`s3prl-star pretrain`: s3prl's `run_pretrain.py`, with its flags, driving s3prl's own pretrain Runner.

s3prl's `run_pretrain.py` and `pretrain/runner.py` import top-level modules (`pretrain.runner`,
`utility.helper`, `optimizers`, `schedulers`) and list `-u` choices and default configs under
`pretrain/`, so they only run with the s3prl package folder as the working directory
(SUPERB_SPEC.md section 1). Without touching site-packages, this driver
- builds a shadow working directory: symlinks to every entry of the installed s3prl package folder,
  and a `pretrain/` folder holding s3prl's experts plus `star_hubert` -> this repository's
  `distill/star_hubert`;
- makes the path arguments (-c, -g, -p, -e) absolute, and turns `-n NAME` into the experiment
  folder `./result/pretrain/NAME` of the caller's directory (s3prl would use its package folder);
- runs `run_pretrain.py` as `__main__` there, after extending s3prl's Runner (`StarRunnerMixin`: its
  small methods are overridden, its `train()` loop is s3prl's) and the runner module's `tqdm` and
  `torch.save` and `os.remove` (`ProgressBar`, `s3prl_star.runner_checkpoints`: atomic, verified
  checkpoints, old ones deleted only after the new one is complete; `-a` resumes from the newest
  readable one).

Distributed data parallel: launch with `torchrun --nproc_per_node N -m s3prl_star.cli pretrain ...`;
the pretrain expert joins the process group and wraps the student in DDP. Only rank 0 writes
checkpoints; ranks > 0 log to `EXPDIR/rank<r>/`.
"""
from __future__ import annotations

import hashlib
import os
import runpy
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from tqdm import tqdm

from s3prl_star import config_check, runner_checkpoints
from s3prl_star.atomic import save_atomic

EXPERT_NAME = "star_hubert"
PATH_FLAGS = ("-e", "--past_exp", "-c", "--config", "-g", "--upstream_config", "-p", "--expdir")
NAME_FLAGS = ("-n", "--expname")


class NonFiniteLossError(FloatingPointError):
    """A training step gave a non-finite loss; `dump` holds the batch and the student to inspect."""

    def __init__(self, message: str, step: int, dump: dict[str, Any]):
        super().__init__(message)
        self.step = step
        self.dump = dump


def torchrun_rank() -> int:
    """This process's rank as torchrun sets it (0 without torchrun)."""
    return int(os.environ.get("RANK", "0"))


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


def expert_dir() -> Path:
    """This repository's `distill/star_hubert` (the project is installed editable from its checkout)."""
    path = Path(__file__).resolve().parent.parent / "distill" / EXPERT_NAME
    if not (path / "pretrain_expert.py").is_file():
        raise FileNotFoundError(
            f"{path / 'pretrain_expert.py'} not found: `s3prl-star pretrain` needs the project installed "
            "editable from its source checkout (pip install -e .)"
        )
    return path


def shadow_workdir(s3prl_dir: Path, expert: Path, cache: Path) -> Path:
    """A folder mirroring `s3prl_dir` by symlinks with `pretrain/star_hubert` -> `expert`.

    Built in a temporary folder and renamed into place, so concurrent processes (torchrun ranks)
    either build it or find it complete.
    """
    entries = sorted(path.name for path in [*s3prl_dir.iterdir(), *(s3prl_dir / "pretrain").iterdir()])
    identity = "\n".join([str(s3prl_dir.resolve()), str(expert.resolve()), *entries])
    key = hashlib.sha256(identity.encode()).hexdigest()[:16]
    target = cache / f"s3prl-workdir-{key}"
    if (target / "pretrain" / EXPERT_NAME).resolve() == expert.resolve():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=".building-", dir=cache))
    for entry in s3prl_dir.iterdir():
        if entry.name != "pretrain":
            (building / entry.name).symlink_to(entry)
    (building / "pretrain").mkdir()
    for entry in (s3prl_dir / "pretrain").iterdir():
        if entry.name not in ("__pycache__", EXPERT_NAME):  # a linked checkout has star_hubert already
            (building / "pretrain" / entry.name).symlink_to(entry)
    (building / "pretrain" / EXPERT_NAME).symlink_to(expert.resolve())
    try:
        building.rename(target)
    except OSError:  # another process renamed its copy first
        shutil.rmtree(building)
    return target


def resolve_paths(argv: Sequence[str], cwd: Path) -> list[str]:
    """run_pretrain.py's argv with path values absolute against `cwd`; `-n NAME` without `-p`
    also gets `-p cwd/result/pretrain/NAME` (s3prl's default, relative to the caller), and `-p DIR`
    without `-n` gets the folder's name as `-n`."""
    resolved, expname, has_expdir = [], None, False
    tokens = list(argv)
    index = 0
    while index < len(tokens):
        token = tokens[index]
        flag, equals, value = token.partition("=")
        if flag in PATH_FLAGS + NAME_FLAGS:
            if not equals:
                if index + 1 == len(tokens):
                    raise SystemExit(f"s3prl-star pretrain: {flag} expects a value")
                index += 1
                value = tokens[index]
            if flag in NAME_FLAGS:
                expname = value
            else:
                has_expdir |= flag in ("-p", "--expdir")
                value = str((cwd / value).absolute())
            resolved += [flag, value]
        else:
            resolved.append(token)
        index += 1
    if expname is not None and not has_expdir:
        resolved += ["-p", str(cwd / "result" / "pretrain" / expname)]
    if expname is None and has_expdir:  # run_pretrain.py asserts a name even when -p names the folder
        resolved += ["-n", Path(resolved[resolved.index("-p" if "-p" in resolved else "--expdir") + 1]).name]
    return resolved


def install_runner_extensions(user_cwd: Path, rank: int) -> None:
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


def main(argv: Sequence[str]) -> int:
    import s3prl

    import s3prl_star.compat

    s3prl_star.compat.apply()
    user_cwd = Path.cwd()
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "s3prl-star"
    workdir = shadow_workdir(Path(s3prl.__file__).parent, expert_dir(), cache)
    try:
        run_argv = runner_checkpoints.resume_argv(
            resolve_paths(argv, user_cwd), str(user_cwd / "result" / "pretrain" / "None"), "s3prl-star pretrain",
            clean=torchrun_rank() == 0,
        )
    except runner_checkpoints.ResumeError as error:
        print(f"s3prl-star pretrain: {error}", file=sys.stderr)
        return 2

    os.chdir(workdir)
    sys.path.insert(0, str(workdir))
    sys.argv = [str(workdir / "run_pretrain.py"), *run_argv]
    try:
        install_runner_extensions(user_cwd, torchrun_rank())
        runpy.run_path(str(workdir / "run_pretrain.py"), run_name="__main__")
    except config_check.ConfigError as error:
        print(f"s3prl-star pretrain: {error}", file=sys.stderr)
        return 2
    finally:
        os.chdir(user_cwd)
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0

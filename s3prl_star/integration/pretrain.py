"""`s3prl-star pretrain`: s3prl's `run_pretrain.py`, with its flags, driving s3prl's own pretrain Runner.

s3prl's `run_pretrain.py` and `pretrain/runner.py` import top-level modules (`pretrain.runner`,
`utility.helper`, `optimizers`, `schedulers`) and list `-u` choices and default configs under
`pretrain/`, so they only run with the s3prl package folder as the working directory
(docs/s3prl.md). Without touching site-packages, this driver
- builds a shadow working directory: symlinks to every entry of the installed s3prl package folder,
  and a `pretrain/` folder holding s3prl's experts plus `star_hubert` -> the shipped
  `distill/star_hubert` (`resources.pretrain_plugin`);
- makes the path arguments (-c, -g, -p, -e) absolute, and turns `-n NAME` into the experiment
  folder `./result/pretrain/NAME` of the caller's directory (s3prl would use its package folder);
- runs `run_pretrain.py` as `__main__` there, after extending s3prl's Runner module
  (`patches.pretrain_runner`: its small methods overridden, its `train()` loop s3prl's; atomic,
  verified checkpoints, old ones deleted only after the new one is complete); `-a` resumes from the
  newest readable checkpoint (`resume`).

Inputs that s3prl would evaluate as code are checked first (docs/faults.md, "Files and configs are
data"): the `-o` string and, resuming (`-e`, `-a`), the `-o` string stored in the checkpoint's `Args`
(run_pretrain.py takes the stored arguments over the command line's), every value data
(`config_check.check_override`); the `-c` runner yaml plain yaml (s3prl reads it with yaml's
FullLoader). The checkpoint is read weights-only. The stored Config's optimizer and scheduler names are
checked by the Runner before s3prl evaluates them (`patches.pretrain_runner`). Refused: one line, status 2.

Distributed data parallel: launch with `torchrun --nproc_per_node N -m s3prl_star.cli pretrain ...`;
the pretrain expert joins the process group and wraps the student in DDP. Only rank 0 writes
checkpoints; ranks > 0 log to `EXPDIR/rank<r>/`.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import runpy
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import torch
import yaml

from s3prl_star import resources
from s3prl_star.integration import config_check, patches, resume
from s3prl_star.integration.argv import NoCudaError, check_device
from s3prl_star.integration.patches import pretrain_runner
from s3prl_star.model.checkpoint import CheckpointError, read_checkpoint

PATH_FLAGS = ("-e", "--past_exp", "-c", "--config", "-g", "--upstream_config", "-p", "--expdir")
NAME_FLAGS = ("-n", "--expname")


def torchrun_rank() -> int:
    """This process's rank as torchrun sets it (0 without torchrun)."""
    return int(os.environ.get("RANK", "0"))


def shadow_workdir(s3prl_dir: Path, expert: Path, cache: Path) -> Path:
    """A folder mirroring `s3prl_dir` by symlinks with `pretrain/star_hubert` -> `expert`.

    Built in a temporary folder and renamed into place, so concurrent processes (torchrun ranks)
    either build it or find it complete.
    """
    entries = sorted(path.name for path in [*s3prl_dir.iterdir(), *(s3prl_dir / "pretrain").iterdir()])
    identity = "\n".join([str(s3prl_dir.resolve()), str(expert.resolve()), *entries])
    key = hashlib.sha256(identity.encode()).hexdigest()[:16]
    target = cache / f"s3prl-workdir-{key}"
    if (target / "pretrain" / resources.PLUGIN_NAME).resolve() == expert.resolve():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=".building-", dir=cache))
    for entry in s3prl_dir.iterdir():
        if entry.name != "pretrain":
            (building / entry.name).symlink_to(entry)
    (building / "pretrain").mkdir()
    for entry in (s3prl_dir / "pretrain").iterdir():
        if entry.name not in ("__pycache__", resources.PLUGIN_NAME):  # a linked checkout has star_hubert already
            (building / "pretrain" / entry.name).symlink_to(entry)
    (building / "pretrain" / resources.PLUGIN_NAME).symlink_to(expert.resolve())
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


def _flags(argv: Sequence[str]) -> argparse.Namespace:
    """The flags of `run_pretrain.py` checked here, parsed as its own parser does (abbreviations too)."""
    parser = argparse.ArgumentParser(add_help=False)
    for short, long in (("-e", "--past_exp"), ("-o", "--override"), ("-c", "--config")):
        parser.add_argument(short, long)
    parser.add_argument("-a", "--auto_resume", action="store_true")
    return parser.parse_known_args(list(argv))[0]


def _stored_args(argv: Sequence[str]) -> tuple[str, argparse.Namespace] | None:
    """(path, stored Args) of the checkpoint `-e` resumes from, read weights-only, else None."""
    past = _flags(argv).past_exp
    if past is None or not os.path.isfile(past):
        return None
    stored = read_checkpoint(past).get("Args")
    if not isinstance(stored, argparse.Namespace):
        raise CheckpointError(f"checkpoint {past}: Args: expected s3prl's runner arguments, found {type(stored).__name__}")
    return past, stored


def check_inputs(argv: Sequence[str], stored: tuple[str, argparse.Namespace] | None) -> None:
    """What run_pretrain.py would evaluate or load as objects, before it starts: the `-o` string, the one
    stored in a resumed checkpoint's Args (which run_pretrain.py uses instead), and a new experiment's
    `-c` yaml. Raises ConfigError (CheckpointError for a stored override that is no string)."""
    flags = _flags(argv)
    config_check.check_override(flags.override, "-o")
    if stored is not None:
        override = getattr(stored[1], "override", None)
        if override is not None and not isinstance(override, str):
            raise CheckpointError(f"checkpoint {stored[0]}: Args.override: found {override!r}; expected an -o string")
        config_check.check_override(override, f"checkpoint {stored[0]} Args.override")
    elif flags.config and os.path.isfile(flags.config):
        try:
            with open(flags.config) as file:
                yaml.safe_load(file)
        except yaml.YAMLError as error:
            raise config_check.ConfigError(f"{flags.config}: not plain YAML ({str(error).splitlines()[0]}); s3prl's "
                                           "FullLoader would build the Python objects its tags name") from None


def main(argv: Sequence[str]) -> int:
    patches.apply()
    import s3prl

    user_cwd = Path.cwd()
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "s3prl-star"
    workdir = shadow_workdir(Path(s3prl.__file__).parent, resources.pretrain_plugin(), cache)
    try:
        run_argv = resume.resume_argv(
            resolve_paths(argv, user_cwd), str(user_cwd / "result" / "pretrain" / "None"), "s3prl-star pretrain",
            clean=torchrun_rank() == 0,
        )
    except resume.ResumeError as error:
        print(f"s3prl-star pretrain: {error}", file=sys.stderr)
        return 2
    try:
        stored = _stored_args(run_argv)
        check_inputs(run_argv, stored)
        if not {"-h", "--help"} & set(run_argv):
            check_device(run_argv, "s3prl-star pretrain",
                         stored=getattr(stored[1], "device", None) if stored is not None else None)
    except (config_check.ConfigError, CheckpointError) as error:
        print(f"s3prl-star pretrain: {error}", file=sys.stderr)
        return 2
    except NoCudaError as error:
        print(error, file=sys.stderr)
        return 2

    os.chdir(workdir)
    sys.path.insert(0, str(workdir))
    sys.argv = [str(workdir / "run_pretrain.py"), *run_argv]
    try:
        pretrain_runner.install(str(user_cwd), torchrun_rank())
        runpy.run_path(str(workdir / "run_pretrain.py"), run_name="__main__")
    except (config_check.ConfigError, CheckpointError) as error:  # CheckpointError: e.g. a refused teacher
        print(f"s3prl-star pretrain: {error}", file=sys.stderr)
        return 2
    finally:
        os.chdir(user_cwd)
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0

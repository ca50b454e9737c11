"""`s3prl-star downstream ...`: s3prl's own `run_downstream.py`, with star_hubert registered.

Takes exactly the flags of s3prl's `run_downstream.py` and runs that script as `__main__` (it is
not copied): after `s3prl_star.compat.apply()` (so s3prl imports and resumes on this stack) and
`s3prl_star.register()` (so `-u star_hubert*` resolves, also when `-m evaluate -e CKPT` rebuilds
the upstream from the name stored in the checkpoint). It also moves the caches s3prl writes into
site-packages and reloads whatever the data: SID's file lists to a per-run folder
(`_isolate_sid_file_list_cache`), ASV's utterance lengths to the experiment directory
(`_keep_asv_length_cache_in`), and ASV's expert runs on `--device` (`s3prl_star.superb.asv`).
Checkpoints are written atomically and old ones deleted only after the
new one is complete; `-a` and `-e DIR` take the newest readable checkpoint (`s3prl_star.runner_checkpoints`).
"""
from __future__ import annotations

import argparse
import atexit
import glob
import os
import runpy
import shutil
import sys
import tempfile
from pathlib import Path

import yaml

from s3prl_star import runner_checkpoints
from s3prl_star.config_check import ConfigError, check_downstream_config, overrides_as_config


def _missing_default_config(argv: list[str]) -> str | None:
    """The default config path the runner would open if it is missing, else None.

    Without `-c`, a new experiment reads `./downstream/<d>/config.yaml` relative to the working
    directory, a file the PyPI s3prl does not ship; `-e` (and `-a`, resuming) take the config
    stored in the checkpoint instead.
    """
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("-c", "--config")
    parser.add_argument("-d", "--downstream")
    parser.add_argument("-e", "--past_exp")
    parser.add_argument("-a", "--auto_resume", action="store_true")
    args, _ = parser.parse_known_args(argv)
    if args.config or args.past_exp or args.auto_resume or args.downstream is None:
        return None
    default = f"./downstream/{args.downstream}/config.yaml"
    return None if os.path.isfile(default) else default


def _resumed_checkpoint(args: argparse.Namespace) -> str | None:
    """The checkpoint the runner will resume or evaluate from (`-e`, or `-a` on an expdir), else None.

    Resolves it as s3prl's `run_downstream.py` does: a directory means its latest `states-*.ckpt`.
    """
    past = args.past_exp
    if past is None and args.auto_resume:
        expdir = args.expdir or f"result/downstream/{args.expname}"
        past = expdir if glob.glob(f"{expdir}/states-*.ckpt") else None
    if past is None or not os.path.isdir(past):
        return past
    return runner_checkpoints.newest_readable(past)[0]


def _resume_argv(argv: list[str]) -> list[str]:
    """`runner_checkpoints.resume_argv` with the runner's default experiment folder; stale temporary
    files are removed only when training (an evaluation may run beside the training it reads)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("-m", "--mode")
    parser.add_argument("-n", "--expname")
    args, _ = parser.parse_known_args(argv)
    return runner_checkpoints.resume_argv(
        argv, f"result/downstream/{args.expname}", "s3prl-star downstream", clean=args.mode == "train"
    )


def _task_and_expdir(argv: list[str]) -> tuple[str | None, str]:
    """This run's s3prl `-d` task and experiment directory, as the runner resolves them.

    A resumed checkpoint's stored `Args` win over the command line (its `-d` and `-p`), as in
    `run_downstream.py`.
    """
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("-d", "--downstream")
    parser.add_argument("-e", "--past_exp")
    parser.add_argument("-a", "--auto_resume", action="store_true")
    parser.add_argument("-p", "--expdir")
    parser.add_argument("-n", "--expname")
    args, _ = parser.parse_known_args(argv)
    checkpoint = _resumed_checkpoint(args)
    if checkpoint is not None and os.path.isfile(checkpoint):  # else the runner reports it
        from s3prl_star.checkpoint import read_checkpoint

        stored = read_checkpoint(checkpoint)["Args"]
        return stored.downstream, stored.expdir
    return args.downstream, args.expdir or f"result/downstream/{args.expname}"


def _check_config(argv: list[str], task: str | None) -> None:
    """The `-c` config of a new experiment and the `-o config.*` overrides, against the shipped recipes
    of `task` (`s3prl_star.config_check.check_downstream_config`); raises ConfigError."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("-c", "--config")
    parser.add_argument("-o", "--override")
    parser.add_argument("-e", "--past_exp")
    args, _ = parser.parse_known_args(argv)
    if task is None:
        return
    if args.config and not args.past_exp and os.path.isfile(args.config):
        with open(args.config) as file:
            check_downstream_config(yaml.safe_load(file) or {}, task, args.config)
    if args.override and args.override.lower() != "none":
        check_downstream_config(overrides_as_config(args.override), task, "-o config")


def _isolate_sid_file_list_cache() -> str:
    """Point s3prl's SID file-list cache at a new temporary folder for this run (removed at exit).

    s3prl's voxceleb1 dataset pickles its train/dev/test file lists to `CACHE_PATH` (inside
    site-packages) and reloads them in every later run whatever `file_path` and `meta_data` say, so a
    second experiment silently uses the first one's files. A per-run folder cannot go stale (a folder
    keyed by the data paths still would when the data under a path changes), and rebuilding the lists
    costs one glob per split-list line, small next to training. Returns the folder.
    """
    from s3prl.downstream.voxceleb1 import dataset

    folder = tempfile.mkdtemp(prefix="s3prl-star-sid-lists-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    dataset.CACHE_PATH = folder  # read at dataset construction: os.path.join(CACHE_PATH, f"{mode}.pkl")
    return folder


def _keep_asv_length_cache_in(expdir: str) -> str:
    """Point s3prl's ASV utterance-length cache at `expdir/.wav_lengths` instead of site-packages.

    s3prl's sv_voxceleb1 dataset stores the silence-trimmed length of every training wav in
    `.wav_lengths/Voxceleb1_length.pt` beside its own `__file__` and reloads it in every later run
    whatever `file_path` says. Computing it runs sox over every VoxCeleb1 dev wav, too slow to redo
    per run (each checkpoint's `-m evaluate` rebuilds the training set), so it is kept per experiment:
    training and the evaluations of its checkpoints share it, a new experiment computes its own.
    The module's `__file__` is the only hook s3prl leaves (the folder is derived from it at dataset
    construction). Returns the cache folder.
    """
    from s3prl.downstream.sv_voxceleb1 import dataset

    dataset.__file__ = os.path.join(os.path.abspath(expdir), os.path.basename(dataset.__file__))
    return os.path.join(os.path.dirname(dataset.__file__), ".wav_lengths")


def main(argv: list[str]) -> int:
    """Run s3prl's downstream runner with `argv` (its own flags); returns 0, or 2 on a missing config."""
    missing = _missing_default_config(argv)
    if missing is not None:
        print(
            f"s3prl-star downstream: no -c/--config given and the runner's default config {missing} "
            f"does not exist under {os.getcwd()} (the PyPI s3prl ships no downstream configs); "
            "pass the task's config.yaml with -c PATH",
            file=sys.stderr,
        )
        return 2

    try:
        argv = _resume_argv(argv)
    except runner_checkpoints.ResumeError as error:
        print(f"s3prl-star downstream: {error}", file=sys.stderr)
        return 2

    task, expdir = _task_and_expdir(argv)
    try:
        _check_config(argv, task)
    except ConfigError as error:
        print(f"s3prl-star downstream: {error}", file=sys.stderr)
        return 2

    from s3prl_star import compat, register

    compat.apply()
    register()
    if task == "voxceleb1":
        folder = _isolate_sid_file_list_cache()
        print(f"s3prl-star downstream: voxceleb1 file lists are cached in {folder} for this run only")
    elif task == "sv_voxceleb1":
        folder = _keep_asv_length_cache_in(expdir)
        print(f"s3prl-star downstream: sv_voxceleb1 utterance lengths are cached in {folder} for this experiment")
        from s3prl_star.superb import asv

        asv.run_expert_on_its_device()  # s3prl's expert calls .cuda() whatever --device says
    import s3prl
    import s3prl.downstream.runner

    runner_checkpoints.install(s3prl.downstream.runner, writes=int(os.environ.get("RANK", "0")) == 0)
    script = Path(s3prl.__file__).parent / "run_downstream.py"
    saved_argv = sys.argv
    sys.argv = [str(script), *argv]
    try:
        runpy.run_path(str(script), run_name="__main__")
    finally:
        sys.argv = saved_argv
    return 0

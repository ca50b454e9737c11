"""`s3prl-star downstream ...`: s3prl's own `run_downstream.py`, with star_hubert registered.

Takes exactly the flags of s3prl's `run_downstream.py` and runs that script as `__main__` (it is
not copied), after `patches.apply()` (so s3prl imports and resumes on this stack), `register()`
(so `-u star_hubert*` resolves, also when `-m evaluate -e CKPT` rebuilds the upstream from the name
stored in the checkpoint) and the patches of the task (`patches.DOWNSTREAM_TASK_PATCHES`: SID and
ASV caches, ASV on `--device`). Checkpoints are written atomically and old ones deleted only after
the new one is complete (`patches.runner_checkpoints`); `-a` and `-e DIR` take the newest readable
checkpoint (`resume`).

Nothing the runner would evaluate as code reaches it unchecked (docs/faults.md, "Files and configs are
data"): every `-o` value must be data (`config_check.check_override`), and the config values s3prl's
experts evaluate (`evaluated_keys`) must name what they expect, in the `-c` config of a new experiment,
in the `-o config.*` overrides, and in the Config stored in the checkpoint that `-e` / `-a` resumes or
evaluates (read weights-only). A refused input ends the command with one line and status 2.
"""
from __future__ import annotations

import argparse
import glob
import os
import runpy
import sys
from pathlib import Path

import yaml

from s3prl_star import resources
from s3prl_star.integration import evaluated_keys, patches, resume
from s3prl_star.integration.argv import NoCudaError, check_device, flag_value
from s3prl_star.integration.config_check import (ConfigError, apply_override, check_downstream_config, check_override,
                                                 overrides_as_config)
from s3prl_star.integration.hub import register
from s3prl_star.integration.patches import runner_checkpoints
from s3prl_star.model.checkpoint import CheckpointError, read_checkpoint


# `-o` and what run_downstream.py's argparse takes for it: every prefix of --override (no other option
# starts with --o), so that the shipped files' assignments join the user's instead of replacing them
OVERRIDE_FLAGS = ("-o", *("--override"[:length] for length in range(3, len("--override") + 1)))
RUNNER_FLAGS = {"-c": "--config", "-d": "--downstream", "-e": "--past_exp", "-p": "--expdir", "-n": "--expname",
                "-m": "--mode", "-o": "--override", "-t": "--evaluate_split"}


def _flags(argv: list[str]) -> argparse.Namespace:
    """The flags of `run_downstream.py` this wrapper looks at (the runner parses all of them itself)."""
    parser = argparse.ArgumentParser(add_help=False)
    for short, long in RUNNER_FLAGS.items():
        parser.add_argument(short, long)
    parser.add_argument("-a", "--auto_resume", action="store_true")
    return parser.parse_known_args(argv)[0]


def _missing_default_config(flags: argparse.Namespace) -> str | None:
    """The default config path the runner would open if it is missing, else None.

    Without `-c`, a new experiment reads `./downstream/<d>/config.yaml` relative to the working
    directory, a file the PyPI s3prl does not ship; `-e` (and `-a`, resuming) take the config
    stored in the checkpoint instead.
    """
    if flags.config or flags.past_exp or flags.auto_resume or flags.downstream is None:
        return None
    default = f"./downstream/{flags.downstream}/config.yaml"
    return None if os.path.isfile(default) else default


def _resumed_checkpoint(flags: argparse.Namespace) -> str | None:
    """The checkpoint the runner will resume or evaluate from (`-e`, or `-a` on an expdir), else None.

    Resolves it as s3prl's `run_downstream.py` does: a directory means its latest `states-*.ckpt`.
    """
    past = flags.past_exp
    if past is None and flags.auto_resume:
        expdir = flags.expdir or f"result/downstream/{flags.expname}"
        past = expdir if glob.glob(f"{expdir}/states-*.ckpt") else None
    if past is None or not os.path.isdir(past):
        return past
    return resume.newest_readable(past)[0]


def _resume_argv(argv: list[str], flags: argparse.Namespace) -> list[str]:
    """`resume.resume_argv` with the runner's default experiment folder; stale temporary
    files are removed only when training (an evaluation may run beside the training it reads)."""
    return resume.resume_argv(argv, f"result/downstream/{flags.expname}", "s3prl-star downstream",
                              clean=flags.mode == "train")


def _with_shipped_recipe(argv: list[str], flags: argparse.Namespace) -> list[str]:
    """`-c NAME` naming a shipped recipe (`asr`, `pr`, ... : a folder of `downstream_recipes/`) becomes its
    path; the recipe's shipped files (`./downstream_recipes/...` values: vocabularies, char.dict) become
    absolute `-o` assignments placed before the user's, so the run works from any folder."""
    if flags.config is None or flags.past_exp is not None:
        return argv
    argv = list(argv)
    config = Path(flags.config)
    shipped = resources.recipes() / flags.config / "config.yaml"
    if not config.is_file() and shipped.is_file():
        index, prefix, _ = flag_value(argv, ("-c", "--config"))
        argv[index] = prefix + str(shipped)
        config = shipped
    if not config.is_file():
        return argv  # the runner names the missing file
    assignments = shipped_file_assignments(yaml.safe_load(config.read_text()) or {})
    if not assignments:
        return argv
    found = flag_value(argv, OVERRIDE_FLAGS)
    if found is None:
        return [*argv, "-o", ",,".join(assignments)]
    index, prefix, value = found
    argv[index] = prefix + ",,".join([*assignments, value])
    return argv


def shipped_file_assignments(config: dict, path: str = "config") -> list[str]:
    """`-o` assignments giving every `./downstream_recipes/...` value of `config` (a string or a list of
    them) as an absolute path into the shipped recipes."""
    root = resources.recipes().parent
    assignments = []
    for key, value in config.items():
        where = f"{path}.{key}"
        if isinstance(value, dict):
            assignments += shipped_file_assignments(value, where)
            continue
        values = value if isinstance(value, list) else [value]
        if values and all(isinstance(item, str) and Path(item).parts[:1] == ("downstream_recipes",) for item in values):
            resolved = [str(root / item) for item in values]
            assignments.append(f"{where}={resolved if isinstance(value, list) else resolved[0]!r}")
    return assignments


def _resumed_state(flags: argparse.Namespace) -> tuple[str, argparse.Namespace, dict] | None:
    """(path, stored Args, stored Config) of the checkpoint the runner resumes or evaluates, read
    weights-only, else None (also for a path that is no file: the runner reports it). CheckpointError
    for a file that cannot be read so, or is not a downstream checkpoint."""
    checkpoint = _resumed_checkpoint(flags)
    if checkpoint is None or not os.path.isfile(checkpoint):
        return None
    state = read_checkpoint(checkpoint)
    stored = state.get("Args")
    if not isinstance(stored, argparse.Namespace):
        raise CheckpointError(f"checkpoint {checkpoint}: Args: expected the s3prl runner's arguments, found "
                              f"{type(stored).__name__} (keys {sorted(map(str, state))})")
    return checkpoint, stored, state.get("Config")


_READ = object()  # `_task_and_expdir`'s default: read the resumed checkpoint itself


def _task_and_expdir(flags: argparse.Namespace, resumed=_READ) -> tuple[str | None, str]:
    """This run's s3prl `-d` task and experiment directory, as the runner resolves them; `resumed`:
    what `_resumed_state(flags)` returned, when the caller has read it already.

    A resumed checkpoint's stored `Args` win over the command line (its `-d` and `-p`), as in
    `run_downstream.py`.
    """
    if resumed is _READ:
        resumed = _resumed_state(flags)
    if resumed is not None:
        stored = resumed[1]
        return getattr(stored, "downstream", None), getattr(stored, "expdir", None)
    return flags.downstream, flags.expdir or f"result/downstream/{flags.expname}"


def _base_config(flags: argparse.Namespace, task: str | None, resumed: tuple | None) -> tuple[dict | None, str]:
    """(the config the runner starts from, where it is from): the stored Config of a resumed checkpoint,
    else the `-c` file (or the runner's default path) read as plain yaml, else (None, path) when there
    is no such file (the runner reports it). ConfigError when the file is not plain yaml: s3prl reads
    it with yaml's FullLoader, which builds Python objects from tags."""
    if resumed is not None:
        if not isinstance(resumed[2], dict):
            raise CheckpointError(f"checkpoint {resumed[0]}: Config: expected the runner's config (a mapping), "
                                  f"found {type(resumed[2]).__name__}")
        return resumed[2], f"checkpoint {resumed[0]} Config"
    path = flags.config or f"./downstream/{task}/config.yaml"
    if not os.path.isfile(path):
        return None, path
    try:
        with open(path) as file:
            config = yaml.safe_load(file) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not plain YAML ({str(error).splitlines()[0]}); s3prl's FullLoader would "
                          "build the Python objects its tags name") from None
    return config, path


def _check_config(flags: argparse.Namespace, task: str | None, resumed: tuple | None) -> None:
    """What the runner will evaluate: every config value s3prl's code evaluates, in the config it starts
    from and with the `-o` overrides made (`evaluated_keys.check_evaluated`); and the `-c` config of a
    new experiment and the `-o config.*` overrides against the shipped recipes of `task`
    (`config_check.check_downstream_config`). Raises ConfigError."""
    base, source = _base_config(flags, task, resumed)
    run_args = {"mode": flags.mode, "evaluate_split": flags.evaluate_split or "test", "downstream": task}
    overridden_args, _ = apply_override(run_args, {}, flags.override)
    task = overridden_args["downstream"]  # `-o args.downstream=...` picks the expert
    if task is not None and not evaluated_keys.covered(task):
        print(f"s3prl-star downstream: -d {task}: the config values this task's s3prl code evaluates are not in "
              "the checked table (integration/evaluated_keys.py); only the runner's and -o's are checked",
              file=sys.stderr)
    if base is not None:
        evaluated_keys.check_evaluated(task, base, run_args, source)
        if flags.override and flags.override.lower() != "none":
            merged_args, merged = apply_override(run_args, base, flags.override)
            evaluated_keys.check_evaluated(task, merged, merged_args, f"{source} with the -o overrides")
    if task is None:
        return
    if resumed is None and flags.config and base is not None:
        check_downstream_config(base, task, source)
    if flags.override and flags.override.lower() != "none":
        check_downstream_config(overrides_as_config(flags.override), task, "-o config")


def main(argv: list[str]) -> int:
    """Run s3prl's downstream runner with `argv` (its own flags); returns 0, or 2 on a missing config."""
    missing = _missing_default_config(_flags(argv))
    if missing is not None:
        print(
            f"s3prl-star downstream: no -c/--config given and the runner's default config {missing} "
            f"does not exist under {os.getcwd()} (the PyPI s3prl ships no downstream configs); "
            "pass the task's config.yaml with -c PATH",
            file=sys.stderr,
        )
        return 2

    try:
        argv = _resume_argv(argv, _flags(argv))
    except resume.ResumeError as error:
        print(f"s3prl-star downstream: {error}", file=sys.stderr)
        return 2
    argv = _with_shipped_recipe(argv, _flags(argv))
    flags = _flags(argv)
    try:
        if not {"-h", "--help"} & set(argv):
            check_device(argv, "s3prl-star downstream")
    except NoCudaError as error:
        print(error, file=sys.stderr)
        return 2
    try:
        check_override(flags.override, "-o")  # before anything else reads it
        resumed = _resumed_state(flags)
        task, expdir = _task_and_expdir(flags, resumed)
        patches.apply()  # the checks import s3prl's expert modules
        _check_config(flags, task, resumed)
    except (ConfigError, CheckpointError) as error:
        print(f"s3prl-star downstream: {error}", file=sys.stderr)
        return 2

    register()
    for message in patches.apply_for_downstream_task(task, expdir):
        print(f"s3prl-star downstream: {message}")
    import s3prl
    import s3prl.downstream.runner

    runner_checkpoints.install(s3prl.downstream.runner, writes=int(os.environ.get("RANK", "0")) == 0)
    script = Path(s3prl.__file__).parent / "run_downstream.py"
    saved_argv = sys.argv
    sys.argv = [str(script), *argv]
    try:
        runpy.run_path(str(script), run_name="__main__")
    except CheckpointError as error:  # an upstream checkpoint (-k, or the stored one) refused
        print(f"s3prl-star downstream: {error}", file=sys.stderr)
        return 2
    finally:
        sys.argv = saved_argv
    return 0

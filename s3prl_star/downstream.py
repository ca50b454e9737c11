"""`s3prl-star downstream ...`: s3prl's own `run_downstream.py`, with star_hubert registered.

Takes exactly the flags of s3prl's `run_downstream.py` and runs that script as `__main__` (it is
not copied): after `s3prl_star.compat.apply()` (so s3prl imports and resumes on this stack) and
`s3prl_star.register()` (so `-u star_hubert*` resolves, also when `-m evaluate -e CKPT` rebuilds
the upstream from the name stored in the checkpoint).
"""
from __future__ import annotations

import argparse
import os
import runpy
import sys
from pathlib import Path


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

    from s3prl_star import compat, register

    compat.apply()
    register()
    import s3prl

    script = Path(s3prl.__file__).parent / "run_downstream.py"
    saved_argv = sys.argv
    sys.argv = [str(script), *argv]
    try:
        runpy.run_path(str(script), run_name="__main__")
    finally:
        sys.argv = saved_argv
    return 0

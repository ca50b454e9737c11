"""The folders this package ships beside its code, found with `importlib.resources`.

In the source tree they are the top-level `downstream_recipes/`, `distill/` and `upstream/`; the
wheel maps them into the package (pyproject.toml: `s3prl_star.downstream_recipes`,
`s3prl_star.pretrain_plugin`, `s3prl_star.upstream_plugin`), so an editable install and an installed
wheel find them the same way. The recipes name their shipped files (vocabularies, char.dict) as
`./downstream_recipes/...`: relative to `recipes().parent` in both.
s3prl reads the plug-in folders from disk (symlinks in a checkout or in the pretrain runner's shadow
working directory), so they must be real folders: an install from a zip is not supported.
"""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path

PLUGIN_NAME = "star_hubert"  # the name s3prl knows the upstream and the pretrain expert by


def _folder(package: str) -> Path:
    folder = files(package)
    if not isinstance(folder, Path) or not folder.is_dir():
        raise FileNotFoundError(f"{package}: the shipped folder is not on disk ({folder}); install s3prl-star "
                                "from its wheel or source tree, not from a zip")
    return folder


def recipes() -> Path:
    """`downstream_recipes/`: the SUPERB task configs, the mini recipe and the DATA.yaml template."""
    return _folder("s3prl_star.downstream_recipes")


def pretrain_plugin() -> Path:
    """`distill/star_hubert/`: s3prl's `pretrain/star_hubert` folder (the expert and its configs)."""
    return _folder("s3prl_star.pretrain_plugin") / PLUGIN_NAME


def upstream_plugin() -> Path:
    """`upstream/star_hubert/`: s3prl's `upstream/star_hubert` folder (hubconf and expert)."""
    return _folder("s3prl_star.upstream_plugin") / PLUGIN_NAME


# what `s3prl-star configs DIR` copies out for editing: (shipped folder, file)
EDITABLE_CONFIGS = (
    (pretrain_plugin, "config_model.yaml"),
    (pretrain_plugin, "config_runner.yaml"),
    (pretrain_plugin, "config_runner_960h.yaml"),
    (pretrain_plugin, "distill.sbatch"),
    (recipes, "data.yaml"),
)


def main(argv: list[str]) -> int:
    """`s3prl-star configs DIR`: copies of the shipped distiller configs, its SLURM script and the DATA.yaml
    template, to edit."""
    import argparse
    import shutil
    import sys

    parser = argparse.ArgumentParser(prog="s3prl-star configs", description=main.__doc__.split(": ", 1)[1])
    parser.add_argument("dir", type=Path, help="folder to copy them into (created; existing files are kept)")
    args = parser.parse_args(argv)
    existing = [name for _, name in EDITABLE_CONFIGS if (args.dir / name).exists()]
    if existing:
        print(f"s3prl-star configs: {args.dir} already has {', '.join(existing)}; nothing copied", file=sys.stderr)
        return 2
    args.dir.mkdir(parents=True, exist_ok=True)
    for folder, name in EDITABLE_CONFIGS:
        shutil.copyfile(folder() / name, args.dir / name)
        print(args.dir / name)
    return 0

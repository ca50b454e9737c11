"""`s3prl-star link-s3prl`: s3prl's own scripts in a checkout see star_hubert; `--undo` restores it.

The checkout is a copy of the installed s3prl package folder laid out as a git checkout
(<tmp>/s3prl-checkout/s3prl/); s3prl's scripts run from that folder with the checkout first
on PYTHONPATH, as s3prl's documentation runs them.
"""
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from s3prl_star.link import HUB_BLOCK

REPO = Path(__file__).resolve().parents[1]
CLI = str(Path(sys.executable).parent / "s3prl-star")


def tree_digest(root: Path) -> dict:
    """relative path -> sha256 (or link target) for everything except Python's byte-code caches."""
    digest = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            path = Path(dirpath, name)
            relative = str(path.relative_to(root))
            digest[relative] = os.readlink(path) if path.is_symlink() else hashlib.sha256(path.read_bytes()).hexdigest()
    return digest


@pytest.fixture
def checkout(tmp_path):
    import s3prl

    root = tmp_path / "s3prl-checkout"
    shutil.copytree(Path(s3prl.__file__).parent, root / "s3prl", ignore=shutil.ignore_patterns("__pycache__"))
    return root


def cli(*args):
    return subprocess.run([CLI, "link-s3prl", *map(str, args)], capture_output=True, text=True)


def in_checkout(checkout: Path, *args):
    """Run `python ARGS` from the checkout's s3prl folder, the checkout first on the path."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    return subprocess.run([sys.executable, *args], cwd=checkout / "s3prl", env=env, capture_output=True, text=True)


def test_link_then_undo(checkout):
    package = checkout / "s3prl"
    original_hub = (package / "hub.py").read_bytes()
    original_tree = tree_digest(checkout)

    linked = cli(checkout)
    assert linked.returncode == 0, linked.stderr
    assert (package / "upstream" / "star_hubert").resolve() == REPO / "upstream" / "star_hubert"
    assert (package / "pretrain" / "star_hubert").resolve() == REPO / "distill" / "star_hubert"
    assert (package / "hub.py").read_bytes().endswith(original_hub)
    again = cli(checkout)
    assert again.returncode == 0 and "nothing to do" in again.stdout
    assert (package / "hub.py").read_text().count(HUB_BLOCK) == 1

    # The checkout's own runners see the plugin: run_downstream.py imports the checkout's
    # s3prl.hub (the installed hub.py has no star_hubert names) and lists its names in -u's help;
    # run_pretrain.py's -u choices are the pretrain/ folders.
    downstream = in_checkout(checkout, "run_downstream.py", "-h")
    assert downstream.returncode == 0, downstream.stderr[-3000:]
    assert "'star_hubert_local'" in downstream.stdout
    pretrain = in_checkout(checkout, "run_pretrain.py", "-h")
    assert pretrain.returncode == 0, pretrain.stderr[-3000:]
    assert "star_hubert" in pretrain.stdout

    undone = cli("--undo", checkout)
    assert undone.returncode == 0, undone.stderr
    assert (package / "hub.py").read_bytes() == original_hub
    assert tree_digest(checkout) == original_tree


def test_refuses_a_folder_that_is_not_a_checkout(tmp_path):
    result = cli(tmp_path)
    assert result.returncode == 1
    assert "hub.py is missing" in result.stderr


def test_undo_leaves_a_real_folder_alone(checkout):
    own = checkout / "s3prl" / "upstream" / "star_hubert"
    own.mkdir()
    assert cli(checkout).returncode == 1  # link refuses to shadow it
    result = cli("--undo", checkout)
    assert result.returncode == 1 and "not a link" in result.stderr
    assert own.is_dir() and not own.is_symlink()

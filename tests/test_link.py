"""`s3prl-star link-s3prl`: s3prl's own scripts in a checkout see star_hubert; `--undo` takes it all back.

The checkout is a git repository holding a copy of the installed s3prl 0.4.18 package folder
(`<tmp>/s3prl-checkout/s3prl/`), laid out as s3prl's GitHub repository lays it out, with the
entries of s3prl's own .gitignore that a run touches. It is built from the installed package
rather than from the sdist on the package index: the tests need no network, and the copy is
byte for byte the code the tested stack installs (the sdist's `s3prl/` holds the same modules).

link-s3prl writes a .pth file into the site-packages of the Python that runs it, so the tests run
it, and s3prl's scripts, with the Python of a throwaway environment (`isolated_python`) that sees
the project's packages: the project's own .venv, shared by every other test, is never linked.
No PYTHONPATH is set anywhere.
"""
import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from helpers import (REPO, git_status, in_checkout, isolated_python, link_s3prl, make_checkout, site_packages,
                     user_environment)
from s3prl_star.integration.link import HUB_BLOCK, PATH_FILE_NAME, PRETRAIN_BLOCK

# The checkout and environment helpers (`make_checkout`, `isolated_python`, `link_s3prl`, `in_checkout`, ...)
# are in helpers.py: test_checkout.py runs s3prl's own scripts in the same setting.


def imported_s3prl(python: Path, cwd: Path) -> Path:
    probe = "import importlib.util; print(importlib.util.find_spec('s3prl').origin)"
    result = subprocess.run([str(python), "-c", probe], cwd=cwd, capture_output=True, text=True, check=True,
                            env=user_environment())
    return Path(result.stdout.strip()).parent


def tree_digest(root: Path) -> dict:
    """relative path -> sha256 (or link target) for everything except Python's byte-code caches and .git."""
    digest = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in ("__pycache__", ".git")]
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            path = Path(dirpath, name)
            relative = str(path.relative_to(root))
            digest[relative] = os.readlink(path) if path.is_symlink() else hashlib.sha256(path.read_bytes()).hexdigest()
    return digest


@pytest.fixture(scope="module")
def python(tmp_path_factory):
    return isolated_python(tmp_path_factory.mktemp("venv") / "venv")


@pytest.fixture
def checkout(tmp_path):
    return make_checkout(tmp_path)


@pytest.mark.slow
def test_link_then_undo(python, checkout):
    package = checkout / "s3prl"
    installed = imported_s3prl(python, package)
    original_tree = tree_digest(checkout)

    linked = link_s3prl(python, checkout)
    assert linked.returncode == 0, linked.stderr
    assert (package / "upstream" / "star_hubert").resolve() == REPO / "upstream" / "star_hubert"
    assert (package / "pretrain" / "star_hubert").resolve() == REPO / "distill" / "star_hubert"
    assert (package / "hub.py").read_text().startswith(HUB_BLOCK)
    assert (package / "pretrain" / "__init__.py").read_text().startswith(PRETRAIN_BLOCK)
    assert (site_packages(python) / PATH_FILE_NAME).is_file()
    assert imported_s3prl(python, package) == package  # from where s3prl's scripts run
    assert sorted(git_status(checkout)) == [
        " M s3prl/hub.py", " M s3prl/pretrain/__init__.py", "?? s3prl/pretrain/star_hubert",
        "?? s3prl/upstream/star_hubert",
    ]
    again = link_s3prl(python, checkout)
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stderr
    assert (package / "hub.py").read_text().count(HUB_BLOCK) == 1

    # The checkout's own scripts see the plugin: run_downstream.py lists the checkout's hub names in
    # -u's help (the installed hub.py has none); run_pretrain.py's -u choices are the pretrain/ folders.
    downstream = in_checkout(python, checkout, "run_downstream.py", "-h")
    assert downstream.returncode == 0, downstream.stderr[-3000:]
    assert "'star_hubert_local'" in downstream.stdout
    pretrain = in_checkout(python, checkout, "run_pretrain.py", "-h")
    assert pretrain.returncode == 0, pretrain.stderr[-3000:]
    assert "star_hubert" in pretrain.stdout

    undone = link_s3prl(python, "--undo", checkout)
    assert undone.returncode == 0, undone.stderr
    assert git_status(checkout) == []
    assert tree_digest(checkout) == original_tree
    assert not (site_packages(python) / PATH_FILE_NAME).exists()
    assert imported_s3prl(python, package) == installed


def test_link_says_when_the_checkout_is_not_the_imported_s3prl(python, checkout, tmp_path):
    """PYTHONPATH naming another s3prl wins over the .pth: link-s3prl says so, and how to fix it."""
    other = tmp_path / "elsewhere" / "s3prl"
    other.mkdir(parents=True)
    (other / "__init__.py").write_text("")
    result = link_s3prl(python, checkout, env={**user_environment(), "PYTHONPATH": str(other.parent)})
    assert result.returncode == 1
    assert f"imports s3prl from {other / '__init__.py'}, not from {checkout / 's3prl'}" in result.stderr
    assert "Unset PYTHONPATH" in result.stderr
    assert link_s3prl(python, "--undo", checkout).returncode == 0
    assert git_status(checkout) == []


def test_a_second_checkout_is_refused_until_the_first_is_undone(python, tmp_path):
    first, second = make_checkout(tmp_path / "a"), make_checkout(tmp_path / "b")
    assert link_s3prl(python, first).returncode == 0
    try:
        refused = link_s3prl(python, second)
        assert refused.returncode == 1
        assert f"{PATH_FILE_NAME} links another s3prl checkout" in refused.stderr and str(first) in refused.stderr
        assert git_status(second) == []
    finally:
        assert link_s3prl(python, "--undo", first).returncode == 0
    assert link_s3prl(python, second).returncode == 0
    assert link_s3prl(python, "--undo", second).returncode == 0


def test_refuses_a_folder_that_is_not_a_checkout(python, tmp_path):
    result = link_s3prl(python, tmp_path)
    assert result.returncode == 1
    assert "not an s3prl checkout" in result.stderr and "is missing" in result.stderr


def test_undo_leaves_a_real_folder_alone(python, checkout):
    own = checkout / "s3prl" / "upstream" / "star_hubert"
    own.mkdir()
    assert link_s3prl(python, checkout).returncode == 1  # link refuses to shadow it
    result = link_s3prl(python, "--undo", checkout)
    assert result.returncode == 1 and "not a link" in result.stderr
    assert own.is_dir() and not own.is_symlink()

"""The package as a lab installs it: a wheel built from the source tree, installed into a new virtual
environment and run from a folder outside the source tree, with no editable install and no PYTHONPATH.

The new environment gets the package from the wheel only. Its dependencies (torch, s3prl, ...: 5 GB)
come from the test environment's site-packages through a plain path entry, which Python adds without
running that folder's .pth files, so the test environment's editable install of this project stays
invisible; each test checks that `s3prl_star` is imported from the new environment.
"""
from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import yaml

from helpers import FAST_RUNNER, REPO, UPSTREAM_PROBE, assert_upstream_states, build_wheel, clean_tree, git_status, in_checkout, make_checkout, wheel_venv

pytestmark = pytest.mark.slow

# ASR at a size that trains 4 steps in seconds (the recipe's BiLSTMs are 1024 wide)
TINY_ASR = ("config.downstream_expert.datarc.num_workers=0,,config.downstream_expert.datarc.train_batch_size=4,,"
            "config.downstream_expert.datarc.batch_size=4,,config.downstream_expert.modelrc.project_dim=32,,"
            "config.downstream_expert.modelrc.RNNs.dim=[32, 32]")

# Shipped data the commands read: every file of these source folders must be in the wheel.
SHIPPED = {"downstream_recipes": "s3prl_star/downstream_recipes", "distill": "s3prl_star/pretrain_plugin",
           "upstream": "s3prl_star/upstream_plugin"}


def source_files(folder: str) -> list[str]:
    """The files git tracks under `folder` of the source tree (what a clean clone has)."""
    listed = subprocess.run(["git", "ls-files", folder], cwd=REPO, capture_output=True, text=True, check=True)
    return sorted(listed.stdout.split())


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    return build_wheel(clean_tree(tmp_path_factory.mktemp("source")), tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="module")
def installed(tmp_path_factory, wheel) -> dict:
    return wheel_venv(tmp_path_factory.mktemp("venv") / "venv", str(wheel))


def run(installed: dict, cwd: Path, *command: str, timeout: int = 900, env: dict | None = None
        ) -> subprocess.CompletedProcess:
    """`command` in the new environment from `cwd`; `env` adds variables."""
    return subprocess.run(list(command), cwd=cwd, env={**installed["env"], **(env or {})}, capture_output=True,
                          text=True, timeout=timeout)


def test_the_wheel_holds_every_package_and_every_shipped_file(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    packages = {str(path.relative_to(REPO).with_suffix("")) for path in (REPO / "s3prl_star").rglob("*.py")}
    assert {name[:-3] for name in names if name.endswith(".py") and name.startswith("s3prl_star/")} >= packages
    for folder, package in SHIPPED.items():
        missing = [path for path in source_files(folder) if package + path[len(folder):] not in names]
        assert missing == [], f"{folder}: not in the wheel"


def test_the_sdist_builds_the_same_wheel(tmp_path, wheel):
    """The sdist holds the shipped folders, and a wheel built from it holds the same files."""
    sdist_dir, rebuilt = tmp_path / "sdist", tmp_path / "rebuilt"
    tree = clean_tree(tmp_path / "tree")
    subprocess.run([sys.executable, "-c", f"from setuptools import build_meta; build_meta.build_sdist({str(sdist_dir)!r})"],
                   cwd=tree, check=True, capture_output=True)
    (sdist,) = sdist_dir.glob("s3prl_star-*.tar.gz")
    with tarfile.open(sdist) as archive:
        archive.extractall(tmp_path / "unpacked", filter="data")
    (source,) = (tmp_path / "unpacked").iterdir()
    from_sdist = build_wheel(source, rebuilt)
    names = [set(zipfile.ZipFile(path).namelist()) - {n for n in zipfile.ZipFile(path).namelist() if ".dist-info/" in n}
             for path in (wheel, from_sdist)]
    assert names[0] == names[1]


def test_commands_run_from_any_folder(installed, tmp_path):
    imported = run(installed, tmp_path, str(installed["python"]), "-c", "import s3prl_star; print(s3prl_star.__file__)")
    assert Path(imported.stdout.strip()).is_relative_to(installed["purelib"]), imported.stdout + imported.stderr
    for command, expected in ((["pretrain", "-h"], "--upstream_config"), (["demo", "--help"], "--distill-steps"),
                              (["superb", "-h"], "--data"), (["downstream", "-h"], "--downstream")):
        result = run(installed, tmp_path, "s3prl-star", *command)
        assert result.returncode == 0 and expected in result.stdout, result.stdout + result.stderr


def test_a_superb_task_and_a_shipped_recipe_run_from_the_wheel(installed, tmp_path):
    """The tiny corpus (`s3prl-star corpus`), then KS through `s3prl-star superb` with FBANK, and ASR through
    `s3prl-star downstream -c asr` (its char.dict read from the installed recipe)."""
    made = run(installed, tmp_path, "s3prl-star", "corpus", str(tmp_path / "corpus"), "--size", "tiny")
    assert made.returncode == 0, made.stdout[-2000:] + made.stderr[-2000:]
    data = yaml.safe_load((tmp_path / "corpus" / "data.yaml").read_text())
    ks = {key: str(tmp_path / "corpus" / value) for key, value in data["ks"].items() if key != "overrides"}
    data_file = tmp_path / "data.yaml"
    data_file.write_text(yaml.safe_dump({"overrides": FAST_RUNNER, "ks": {
        **ks, "overrides": "config.downstream_expert.datarc.num_workers=0,,config.downstream_expert.datarc.batch_size=4"}}))
    result = run(installed, tmp_path, "s3prl-star", "superb", "-u", "fbank", "--data", str(data_file), "--tasks", "ks",
                 "-o", str(tmp_path / "out"), "--device", "cpu")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = yaml.safe_load((tmp_path / "out" / "results.json").read_text())
    assert report["tasks"]["KS"]["status"] == "done" and 0 <= report["metrics"]["KS_acc"] <= 100

    asr = {key: str(tmp_path / "corpus" / value) for key, value in data["asr"].items() if key != "overrides"}
    overrides = ",,".join([FAST_RUNNER, *(f"config.downstream_expert.{key}={value}" for key, value in asr.items()),
                           TINY_ASR])
    trained = run(installed, tmp_path, "s3prl-star", "downstream", "-m", "train", "-u", "fbank", "-d", "asr", "-c", "asr",
                  "-p", str(tmp_path / "asr"), "-o", overrides, "--device", "cpu")
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    dictionary = installed["purelib"] / "s3prl_star" / "downstream_recipes" / "asr" / "char.dict"
    assert f"dict_path = {dictionary}" in trained.stderr  # s3prl's `[Override]` line


def test_link_s3prl_links_a_checkout_from_the_installed_files(installed, tmp_path):
    checkout = make_checkout(tmp_path)
    linked = run(installed, tmp_path, "s3prl-star", "link-s3prl", str(checkout))
    assert linked.returncode == 0, linked.stdout + linked.stderr
    target = (checkout / "s3prl" / "upstream" / "star_hubert").resolve()
    assert target == installed["purelib"] / "s3prl_star" / "upstream_plugin" / "star_hubert"
    listed = in_checkout(installed["python"], checkout, "run_downstream.py", "-h", env=installed["env"])
    assert listed.returncode == 0 and "star_hubert" in listed.stdout, listed.stdout[-2000:] + listed.stderr[-2000:]
    undone = run(installed, tmp_path, "s3prl-star", "link-s3prl", "--undo", str(checkout))
    assert undone.returncode == 0 and git_status(checkout) == [], undone.stdout + undone.stderr


def test_star_hubert_is_an_s3prl_upstream_in_any_process_of_the_environment(installed, tmp_path, tiny_student):
    """No import of s3prl_star in user code: the wheel's start-up hook patches s3prl and registers the names
    when s3prl.hub is first imported (here through S3PRLUpstream, as ESPnet's frontend does); the upstream's
    features are the student's. S3PRL_STAR_AUTOLOAD=0 turns the hook off."""
    path, model = tiny_student
    script = tmp_path / "probe.py"
    script.write_text(UPSTREAM_PROBE + "print('star_hubert' in S3PRLUpstream.available_names())\n")
    result = run(installed, tmp_path, str(installed["python"]), str(script), str(path), str(tmp_path / "states.pt"))
    assert result.returncode == 0 and result.stdout.strip().endswith("True"), result.stdout + result.stderr[-3000:]
    assert_upstream_states(tmp_path / "states.pt", model)

    off = run(installed, tmp_path, str(installed["python"]), "-c",
              "import s3prl.hub; print('star_hubert' in dir(s3prl.hub))", env={"S3PRL_STAR_AUTOLOAD": "0"})
    assert "True" not in off.stdout, off.stdout + off.stderr[-2000:]

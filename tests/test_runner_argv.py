"""What `s3prl-star pretrain` / `downstream` make of a command line before s3prl's runner sees it: a shipped
recipe named by its task folder, its shipped files as absolute paths, and a clear refusal of a CUDA run
on a machine without CUDA (s3prl defaults to `--device cuda` and stops with torch's bare
"Found no NVIDIA driver")."""
import argparse
import subprocess
import sys

import pytest
import torch

from helpers import CLI
from s3prl_star import resources
from s3prl_star.integration.downstream import _flags, _with_shipped_recipe

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")


def test_a_recipe_named_by_its_task_folder_is_the_shipped_one_with_its_files_absolute():
    argv = ["-m", "train", "-d", "asr", "-c", "asr", "-o", "config.runner.total_steps=4"]
    resolved = _with_shipped_recipe(argv, _flags(argv))
    recipe = resources.recipes() / "asr" / "config.yaml"
    assert resolved[resolved.index("-c") + 1] == str(recipe)
    dict_path = resources.recipes() / "asr" / "char.dict"
    assert resolved[resolved.index("-o") + 1] == (
        f"config.downstream_expert.datarc.dict_path='{dict_path}',,config.runner.total_steps=4")  # the user's last
    assert dict_path.is_file()


def test_a_config_path_keeps_its_path_and_gets_the_shipped_files_too(tmp_path):
    config = tmp_path / "my_pr.yaml"
    config.write_text((resources.recipes() / "pr" / "config.yaml").read_text())
    argv = ["-m", "train", "-c", str(config)]
    resolved = _with_shipped_recipe(argv, _flags(argv))
    assert resolved[:4] == argv and resolved[4] == "-o"
    vocabulary = resources.recipes() / "pr" / "phoneme.txt"
    assert f"config.downstream_expert.text.vocab_file='{vocabulary}'" in resolved[5].split(",,")


def test_an_evaluation_keeps_the_config_its_checkpoint_stores():
    argv = ["-m", "evaluate", "-e", "exp/asr/dev-clean-best.ckpt", "-c", "asr"]
    assert _with_shipped_recipe(argv, _flags(argv)) == argv


@no_cuda
@pytest.mark.parametrize("command", [
    ["downstream", "-m", "train", "-u", "fbank", "-d", "asr", "-c", "asr", "-p", "exp"],
    ["pretrain", "-u", "star_hubert", "-n", "exp"],
])
def test_a_cuda_run_without_cuda_is_refused_naming_the_flag(tmp_path, command):
    result = subprocess.run([CLI, *command], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "s3prl's default, as no --device was given" in result.stderr and "add --device cpu" in result.stderr
    assert not (tmp_path / "exp").exists() and not (tmp_path / "result").exists()


@no_cuda
def test_a_resumed_pretraining_that_ran_on_cuda_is_refused_naming_the_checkpoint(tmp_path):
    """run_pretrain.py resumes with the checkpoint's stored arguments, its device included."""
    expdir = tmp_path / "exp"
    expdir.mkdir()
    torch.save({"Args": argparse.Namespace(device="cuda"), "Step": 3}, expdir / "states-4.ckpt")
    result = subprocess.run([CLI, "pretrain", "-a", "-p", str(expdir), "--device", "cpu"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "the resumed checkpoint's arguments" in result.stderr, result.stderr


def test_help_needs_no_device(tmp_path):
    for command in (["pretrain", "-h"], ["downstream", "-h"]):
        result = subprocess.run([CLI, *command], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0 and "--device" in result.stdout, result.stderr


@pytest.mark.parametrize("command", [["downstream", "-h"], ["teacher-pretrain", "-h"],
                                     ["pretrain", "-h"]])
def test_without_s3prl_the_commands_name_the_extra_to_install(tmp_path, command):
    """s3prl comes from an extra (`[s3prl]`, or `[espnet]` beside ESPnet's fork): an environment with neither
    gets the install line, not a traceback (s3prl hidden here as if it were not installed)."""
    hide = ("import importlib.util, sys\n"
            "class NoS3prl:  # what Python does where no s3prl is installed\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 's3prl':\n"
            "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
            "sys.meta_path.insert(0, NoS3prl())\n"
            "from s3prl_star.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    result = subprocess.run([sys.executable, "-c", hide, *command], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "s3prl is not installed: pip install 's3prl-star[s3prl]'" in result.stderr and "Traceback" not in result.stderr

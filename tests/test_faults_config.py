"""Config mistakes and bad teacher/export paths end in an error naming the key or the file, before any
training: typos and quoted numbers in the runner yaml, the model yaml and downstream `-c`/`-o`; a
missing or garbage teacher checkpoint; an export to a full or read-only destination."""
from __future__ import annotations

import subprocess

import yaml

from helpers import CLI, RECIPES, read_only_folder, subprocess_env, tmpfs, write_configs


def pretrain(tmp_path, teacher, *, runner_changes=None, model_changes=None) -> subprocess.CompletedProcess:
    """`s3prl-star pretrain` with the tests' configs, edited: `{section: {key: value}}` merged in."""
    model_yaml, runner_yaml = write_configs(
        tmp_path / "configs", teacher=teacher, corpus=tmp_path, csv_dir=tmp_path,
        runner={"n_epochs": -1, "total_steps": 2, "log_step": 1, "save_step": 1}, datarc={"train_batch_size": 4},
    )
    for path, changes in ((runner_yaml, runner_changes), (model_yaml, model_changes)):
        config = yaml.safe_load(path.read_text())
        for section, values in (changes or {}).items():
            config[section].update(values)
        path.write_text(yaml.safe_dump(config))
    command = [CLI, "pretrain", "-u", "star_hubert", "-g", str(model_yaml), "-c", str(runner_yaml), "-n", "run",
               "--device", "cpu"]
    return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=subprocess_env())


def test_runner_yaml_typo_names_the_key_and_the_allowed_ones(tiny_hubert_teacher, tmp_path):
    result = pretrain(tmp_path, tiny_hubert_teacher, runner_changes={"runner": {"totl_steps": 10}})
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"{tmp_path / 'configs' / 'runner.yaml'}: runner: unknown key 'totl_steps'; allowed: " in result.stderr
    assert "total_steps" in result.stderr.splitlines()[-1]


def test_runner_yaml_quoted_batch_size_is_named(tiny_hubert_teacher, tmp_path):
    result = pretrain(tmp_path, tiny_hubert_teacher,
                      runner_changes={"pretrain_expert": {"datarc": {"train_batch_size": "4"}}})
    assert result.returncode == 2, result.stderr[-3000:]
    assert "pretrain_expert.datarc.train_batch_size: found '4' (str); expected an integer" in result.stderr


def test_runner_yaml_unknown_optimizer_argument_is_named(tiny_hubert_teacher, tmp_path):
    result = pretrain(tmp_path, tiny_hubert_teacher, runner_changes={"optimizer": {"weight_decy": 0.01}})
    assert result.returncode == 2, result.stderr[-3000:]
    assert "optimizer: unknown key 'weight_decy'; allowed: " in result.stderr and "weight_decay" in result.stderr


def test_model_yaml_typo_is_named(tiny_hubert_teacher, tmp_path):
    result = pretrain(tmp_path, tiny_hubert_teacher, model_changes={"teacher": {"ckpt_path": "x.pt"}})
    assert result.returncode != 0
    assert "model.yaml: teacher: unknown keys ['ckpt_path']" in result.stderr, result.stderr[-3000:]


def test_missing_teacher_checkpoint_is_named(tmp_path):
    missing = tmp_path / "hubert_base_ls960.pt"
    result = pretrain(tmp_path, missing)
    assert result.returncode != 0
    assert f"FileNotFoundError: teacher checkpoint {missing}: no such file" in result.stderr, result.stderr[-3000:]


def test_garbage_teacher_checkpoint_is_named_without_unsafe_advice(tmp_path):
    garbage = tmp_path / "teacher.pt"
    garbage.write_bytes(bytes(range(256)) * 40)
    result = pretrain(tmp_path, garbage)
    assert result.returncode != 0
    assert f"teacher checkpoint {garbage}: s3prl's hubert_local cannot load it" in result.stderr, result.stderr[-3000:]
    assert "weights_only" not in result.stderr


def downstream(tmp_path, student, *args) -> subprocess.CompletedProcess:
    command = [CLI, "downstream", "-m", "train", "-u", "star_hubert", "-k", str(student), "-d", "asr",
               "-p", str(tmp_path / "asr"), *args, "--device", "cpu"]
    return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=subprocess_env())


def test_downstream_override_typo_names_the_key_and_the_recipe_keys(tiny_student_checkpoint, tmp_path):
    result = downstream(tmp_path, tiny_student_checkpoint, "-c", str(RECIPES / "asr" / "config.yaml"),
                        "-o", "config.downstream_expert.datarc.libri_rot=/data/LibriSpeech")
    assert result.returncode == 2, result.stderr[-3000:]
    assert ("-o config: downstream_expert.datarc: unknown key 'libri_rot'; allowed (the keys of the shipped asr "
            "recipes): ") in result.stderr and "libri_root" in result.stderr


def test_downstream_override_of_the_wrong_type_is_named(tiny_student_checkpoint, tmp_path):
    result = downstream(tmp_path, tiny_student_checkpoint, "-c", str(RECIPES / "asr" / "config.yaml"),
                        "-o", "config.runner.total_steps='4'")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "-o config: runner.total_steps: found '4' (str); expected a number" in result.stderr


def test_downstream_config_copy_with_a_typo_is_named(tiny_student_checkpoint, tmp_path):
    config = yaml.safe_load((RECIPES / "asr" / "config.yaml").read_text())
    config["runner"]["max_kep"] = config["runner"].pop("max_keep")
    copy = tmp_path / "my_asr.yaml"
    copy.write_text(yaml.safe_dump(config))
    result = downstream(tmp_path, tiny_student_checkpoint, "-c", str(copy))
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"{copy}: runner: unknown key 'max_kep'; allowed" in result.stderr and "max_keep" in result.stderr


def export(student, output) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, "export", str(student), "--format", "torchscript", "-o", str(output)],
                          capture_output=True, text=True, timeout=300, env=subprocess_env())


def test_export_to_a_full_disk_is_a_named_error_not_an_abort(tiny_student_checkpoint, tmp_path):
    with tmpfs(tmp_path / "disk", size_kib=64) as disk:
        result = export(tiny_student_checkpoint, disk / "star.pt")
        assert result.returncode == 1, (result.returncode, result.stderr[-3000:])
        assert f"s3prl-star export: cannot write {disk / 'star.pt'}: No space left on device" in result.stderr
        assert not list(disk.iterdir())


def test_export_to_a_read_only_folder_is_a_named_error(tiny_student_checkpoint, tmp_path):
    with read_only_folder(tmp_path / "read-only") as folder:
        result = export(tiny_student_checkpoint, folder / "star.pt")
    assert result.returncode == 1, (result.returncode, result.stderr[-3000:])
    assert f"s3prl-star export: cannot write {folder / 'star.pt'}: " in result.stderr

"""Files and configs a user is handed are data: nothing in them runs (docs/faults.md, "Files and configs
are data").

Every payload here would create a marker file if it ran: pickles whose `__reduce__` calls
`builtins.exec("open(MARKER, 'w')")`, config strings `__import__('pathlib').Path(MARKER).touch()`
built so that s3prl would go on working after running them. The first tests show that they do run when
loaded or evaluated the unsafe way; every other test feeds one to a load path or a command, and asserts a
named error (status 2 from a command) and that the marker does not exist.
"""
from __future__ import annotations

import argparse
import builtins
import pickle
import random
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from helpers import CLI, FAST_RUNNER, QUICK, RECIPES, REPO, subprocess_env
from s3prl_star.integration import config_check, evaluated_keys
from s3prl_star.integration.config_check import ConfigError, check_override
from s3prl_star.model.checkpoint import CheckpointError, load_student, read_checkpoint

PACKAGE_SOURCES = [REPO / "s3prl_star", REPO / "distill", REPO / "upstream"]


# --- payloads -----------------------------------------------------------------------------------

class WritesMarker:
    """Pickles as a call of `builtins.exec` that creates `marker`: what a crafted checkpoint carries."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.exec, (f"open({self.marker!r}, 'w').close()",)


def touch(marker: Path, then: str = "None") -> str:
    """Python that creates `marker` and then evaluates to `then` (so s3prl would go on working)."""
    return f"(__import__('pathlib').Path({str(marker)!r}).touch(), {then})[1]"


def crafted_pickle(path: Path, marker: Path, key: str = "Student") -> Path:
    """A torch checkpoint (zip) whose `key` unpickles by running code."""
    torch.save({key: WritesMarker(marker)}, path)
    return path


def crafted_raw_pickle(path: Path, marker: Path) -> Path:
    """A plain pickle file (torch's legacy format reads it) that runs code."""
    path.write_bytes(pickle.dumps({"Student": WritesMarker(marker)}, protocol=2))
    return path


def refused(result: subprocess.CompletedProcess, *expected: str) -> str:
    """The last stderr line of a command that must have exited with 2 naming each of `expected`."""
    assert result.returncode == 2, (result.returncode, result.stdout[-2000:], result.stderr[-4000:])
    last = result.stderr.strip().splitlines()[-1]
    for text in expected:
        assert text in last, (text, result.stderr[-4000:])
    assert "Traceback" not in result.stderr and "weights_only=False" not in result.stderr, result.stderr[-4000:]
    return last


def cli(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=subprocess_env())


@pytest.fixture
def marker(tmp_path) -> Path:
    path = tmp_path / "MARKER"
    yield path
    assert not path.exists(), f"{path} exists: a crafted input ran"


def test_the_payloads_run_when_loaded_unsafely(tmp_path):
    """The control: each kind of payload does create its marker when loaded or evaluated unsafely."""
    torch.load(crafted_pickle(tmp_path / "file.pt", tmp_path / "marker-zip"), weights_only=False)
    assert (tmp_path / "marker-zip").exists()
    pickle.loads(crafted_raw_pickle(tmp_path / "file.pkl", tmp_path / "marker-raw").read_bytes())
    assert (tmp_path / "marker-raw").exists()
    marker = tmp_path / "marker-eval"
    assert eval(touch(marker, "'RNNs'")) == "RNNs" and marker.exists()


# --- `-o` values -----------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [
    "1e-3", "-4", "True", "None", "'text'", "['dev', 'test']", "{'a': 1}",  # literals
    "/data/LibriSpeech", "/tmp/a b/c.yaml",  # no Python expression: s3prl keeps the text
    "fold1", "sox_io", "dev", "test",  # bare names s3prl's eval cannot resolve: the text
])
def test_override_values_that_are_data_pass(value):
    check_override(f"config.a.b={value}", "-o")


@pytest.mark.parametrize("value, why", [
    ("__import__('os').system('true')", "call"),
    ("open('/tmp/x', 'w')", "call"),
    ("os.sep", "attribute"),
    ("dev-clean", "operator"),
    ("[1][0]", "subscript"),
    ("lambda: 0", "lambda"),
    ("os", "a global of s3prl.utility.helper"),
    ("print", "a builtin"),
    ("args", "a local of s3prl's override()"),
])
def test_override_values_that_are_code_are_refused(value, why):
    with pytest.raises(ConfigError, match=re.escape(f"-o: config.a.b={value}: s3prl evaluates -o values as Python, "
                                                    "and this is code;") + ".*quote it as"):
        check_override(f"config.a.b={value}", "-o")


@pytest.mark.parametrize("text, expected", [
    ("config.a.b", "expected one KEY=VALUE assignment"),
    ("config.a=1=2", "expected one KEY=VALUE assignment"),
    ("confg.runner.total_steps=3", "expected a key config.SECTION.KEY... or args.NAME"),
    ("args.a.b=1", "expected a key config.SECTION.KEY... or args.NAME"),
])
def test_override_assignments_s3prl_rejects_or_ignores_are_refused(text, expected):
    with pytest.raises(ConfigError, match=re.escape(expected)):
        check_override(text, "-o")


def test_every_override_this_project_generates_passes(tmp_path):
    """The driver's, the demo's, the shipped recipes' and the tests' own `-o` strings are all data."""
    from s3prl_star.integration.downstream import shipped_file_assignments
    from s3prl_star.mini_superb.demo import mini_data_file
    from s3prl_star.superb import policy
    from s3prl_star.superb.data_file import TaskData, data_overrides
    from s3prl_star.superb.tasks import TASKS

    generated = [FAST_RUNNER, QUICK, "args.expdir=/tmp/out/states-4", "config.optimizer.lr=0.0001"]
    for recipe in config_check.shipped_recipes():
        generated += shipped_file_assignments(yaml.safe_load(recipe.read_text()))
    mini = yaml.safe_load((RECIPES / "mini.yaml").read_text())
    generated += [text for size in mini.values() for text in size.values()]
    generated += data_overrides(TaskData({"libri_root": "/data/LibriSpeech", "lexicon": ["/a/b.txt", "/c d.txt"]}, ""))
    for task in TASKS.values():
        generated += [piece for fold in task.folds for piece in policy.fold_overrides(task, fold)]
    corpus_data = tmp_path / "corpus.yaml"
    corpus_data.write_text(yaml.safe_dump({key: {} for key in mini["small"]}))
    written = yaml.safe_load(mini_data_file(corpus_data, tmp_path, "tiny", list(mini["small"]), 8).read_text())
    generated += [entry["overrides"] for entry in written.values()]
    for text in generated:
        check_override(text, "generated")


@pytest.mark.slow
def test_downstream_refuses_an_override_that_is_code(tiny_student_checkpoint, tmp_path, marker):
    for flag in ("-o", "--overr"):  # argparse takes abbreviations; so does the check
        result = cli("downstream", "-m", "train", "-u", "star_hubert", "-k", str(tiny_student_checkpoint), "-d", "asr",
                     "-c", "asr", "-p", str(tmp_path / "exp"), "--device", "cpu",
                     flag, f"args.seed={touch(marker, '1337')}", cwd=tmp_path)
        refused(result, "s3prl-star downstream: -o: args.seed=(__import__('pathlib')", "quote it as")


def test_pretrain_refuses_an_override_that_is_code(tiny_hubert_teacher, tmp_path, marker):
    from helpers import write_configs

    model_yaml, runner_yaml = write_configs(tmp_path / "configs", teacher=tiny_hubert_teacher, corpus=tmp_path,
                                            csv_dir=tmp_path, runner={"total_steps": 2}, datarc={})
    result = cli("pretrain", "-u", "star_hubert", "-g", str(model_yaml), "-c", str(runner_yaml), "-n", "run",
                 "--device", "cpu", "-o", f"config.runner.total_steps={touch(marker, '2')}", cwd=tmp_path)
    refused(result, "s3prl-star pretrain: -o: config.runner.total_steps=", "this is code")


def test_pretrain_refuses_a_resumed_checkpoint_whose_stored_override_is_code(tmp_path, marker):
    """run_pretrain.py takes the resumed checkpoint's Args over the command line's, its `override` too."""
    checkpoint = tmp_path / "run" / "states-2.ckpt"
    checkpoint.parent.mkdir()
    torch.save({"Args": argparse.Namespace(override=f"args.seed={touch(marker, '1')}", device="cpu"),
                "Config": {}}, checkpoint)
    result = cli("pretrain", "-e", str(checkpoint), cwd=tmp_path)
    refused(result, f"checkpoint {checkpoint} Args.override: args.seed=", "this is code")


def test_data_file_overrides_are_checked_at_read_time(tmp_path, marker):
    from s3prl_star.superb.data_file import DataError, read_data_file

    for where, data in (("overrides", {"overrides": f"args.seed={touch(marker, '1')}"}),
                        ("pr.overrides", {"pr": {"overrides": f"config.runner.total_steps={touch(marker, '4')}"}})):
        path = tmp_path / f"{where}.yaml"
        path.write_text(yaml.safe_dump(data))
        with pytest.raises(DataError, match=re.escape(f"{path}: {where}: ") + ".*this is code"):
            read_data_file(path)


def test_superb_refuses_data_file_overrides_that_are_code_before_any_run(tiny_student_checkpoint, tmp_path, marker):
    """KS's data folders exist (empty): without the check, its training would start and s3prl run the code."""
    for folder in ("train", "test"):
        (tmp_path / folder).mkdir()
    data = tmp_path / "data.yaml"
    data.write_text(yaml.safe_dump({"ks": {"datarc.speech_commands_root": "train", "datarc.speech_commands_test_root": "test",
                                           "overrides": f"args.seed={touch(marker, '1337')}"}}))
    result = cli("superb", "-u", "star_hubert", "-k", str(tiny_student_checkpoint), "--data", str(data),
                 "--tasks", "all", "-o", str(tmp_path / "out"), "--device", "cpu", cwd=tmp_path)
    refused(result, f"s3prl-star superb: {data}: ks.overrides: args.seed=", "this is code")
    assert not (tmp_path / "out" / "ks").exists()


# --- config values s3prl's experts evaluate --------------------------------------------------------

def recipe(name: str) -> dict:
    return yaml.safe_load((RECIPES / name / "config.yaml").read_text())


def test_every_shipped_recipe_passes_the_evaluated_keys():
    for path in config_check.shipped_recipes():
        evaluated_keys.check_evaluated(config_check.recipe_task(path), yaml.safe_load(path.read_text()),
                                       {"mode": "train"}, str(path))


def test_the_table_covers_every_superb_task():
    from s3prl_star.superb.tasks import TASKS

    tasks = {config_check.recipe_task(task.config) for task in TASKS.values()}
    assert tasks <= set(evaluated_keys.TASKS), tasks - set(evaluated_keys.TASKS)


def test_every_class_a_config_can_choose_that_evaluates_its_options_is_in_the_table():
    """A class whose code calls `eval` is accepted only where CONSTRUCTORS says what it evaluates, and
    every CONSTRUCTORS entry is a class some config can choose."""
    import importlib

    choosable = set()
    for entries in [*evaluated_keys.TASKS.values(), *evaluated_keys.CONSTRUCTORS.values()]:
        for entry in entries:
            if entry.kind == evaluated_keys.CLASS:
                module = importlib.import_module(entry.namespace)
                for name in evaluated_keys.allowed(entry):
                    choosable.update(evaluated_keys.evaluating_classes(getattr(module, name)))
    assert {f"{cls.__module__}.{cls.__qualname__}" for cls in choosable} == set(evaluated_keys.CONSTRUCTORS)


@pytest.mark.parametrize("task, recipe_name, path, value", [
    ("asr", "asr", ("downstream_expert", "modelrc", "select"), "RNNs"),
    ("asr", "asr", ("downstream_expert", "datarc", "decoder_args", "unk_weight"), "-1.0"),
    ("ctc", "pr", ("downstream_expert", "model", "select"), "FrameLevel"),
    ("ctc", "pr", ("downstream_expert", "metric"), None),  # a list: its first item
    ("speech_commands", "speech_commands", ("downstream_expert", "modelrc", "UtteranceLevel", "pooling"), "MeanPooling"),
    ("voxceleb1", "voxceleb1", ("runner", "eval_dataloaders"), None),
    ("emotion", "emotion", ("downstream_expert", "modelrc", "DeepModel", "model_type"), "CNNSelfAttention"),
    ("sv_voxceleb1", "sv_voxceleb1", ("downstream_expert", "modelrc", "ObjectiveLoss"), "AMSoftmaxLoss"),
    ("sv_voxceleb1", "sv_voxceleb1", ("downstream_expert", "modelrc", "agg_module"), "SP"),
    ("fluent_commands", "fluent_commands", ("optimizer", "name"), "TorchOptim"),
])
def test_a_crafted_evaluated_value_is_refused(task, recipe_name, path, value, marker):
    config = recipe(recipe_name)
    if task == "emotion":
        config["downstream_expert"]["modelrc"]["select"] = "DeepModel"
    if task == "voxceleb1":
        config["runner"]["eval_dataloaders"] = ["dev"]
    node = config
    for key in path[:-1]:
        node = node[key]
    if value is None:
        node[path[-1]] = [touch(marker, repr(node[path[-1]][0] if node[path[-1]] else "dev"))]
        where = ".".join(path) + "[0]"
    else:
        node[path[-1]] = touch(marker, repr(value))
        where = ".".join(path)
    with pytest.raises(ConfigError, match=re.escape(f"x.yaml: {where}: found ") + ".*s3prl evaluates it as Python in"):
        evaluated_keys.check_evaluated(task, config, {"mode": "train"}, "x.yaml")


def test_the_runner_arguments_it_evaluates_are_checked(marker):
    for args, expected in (({"mode": "evaluate", "evaluate_split": touch(marker, "'test'")}, "args.evaluate_split"),
                           ({"mode": touch(marker, "'train'")}, "args.mode")):
        with pytest.raises(ConfigError, match=re.escape(f"the runner's arguments (-m, -t, -o args.*): {expected}: found")):
            evaluated_keys.check_evaluated("voxceleb1", recipe("voxceleb1"), args, "x")


def test_a_class_choosing_itself_or_a_cyclic_config_is_checked_once():
    config = recipe("emotion")
    config["downstream_expert"]["modelrc"].update(select="DeepModel", DeepModel={"model_type": "DeepModel"})
    evaluated_keys.check_evaluated("emotion", config, {"mode": "train"}, "x")  # terminates
    cyclic = yaml.safe_load("&top {downstream_expert: {modelrc: {select: UtteranceLevel, UtteranceLevel: "
                            "{pre_net: {select: UtteranceLevel, UtteranceLevel: *top}}}}}")
    evaluated_keys.check_evaluated("speech_commands", cyclic, {"mode": "train"}, "x")


@pytest.mark.slow
def test_downstream_refuses_a_config_whose_select_is_code(tiny_student_checkpoint, tmp_path, marker):
    for task, recipe_name, path in (("asr", "asr", ("modelrc", "select")),
                                    ("speech_commands", "speech_commands", ("modelrc", "UtteranceLevel", "pooling"))):
        config = recipe(recipe_name)
        node = config["downstream_expert"]
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = touch(marker, repr(node[path[-1]]))
        crafted = tmp_path / f"{task}.yaml"
        crafted.write_text(yaml.safe_dump(config))
        result = cli("downstream", "-m", "train", "-u", "star_hubert", "-k", str(tiny_student_checkpoint), "-d", task,
                     "-c", str(crafted), "-p", str(tmp_path / task), "--device", "cpu", cwd=tmp_path)
        refused(result, f"{crafted}: downstream_expert.{'.'.join(path)}: found", "s3prl evaluates it as Python in")


def test_downstream_refuses_an_override_whose_select_is_code(tiny_student_checkpoint, tmp_path, marker):
    """A quoted string is data to `-o`, but the expert evaluates it: checked on the config with -o made."""
    result = cli("downstream", "-m", "train", "-u", "star_hubert", "-k", str(tiny_student_checkpoint), "-d", "asr",
                 "-c", "asr", "-p", str(tmp_path / "exp"), "--device", "cpu",
                 "-o", f"config.downstream_expert.modelrc.select={touch(marker, repr('RNNs'))!r}", cwd=tmp_path)
    refused(result, "with the -o overrides: downstream_expert.modelrc.select: found")


def test_a_config_with_python_tags_is_refused_before_s3prls_full_loader_reads_it(tmp_path):
    """s3prl reads `-c` with yaml's FullLoader, which builds the Python objects tags name."""
    from s3prl_star.integration import downstream, pretrain

    crafted = tmp_path / "config.yaml"
    crafted.write_text("downstream_expert:\n  modelrc:\n    select: !!python/name:os.system\n")
    flags = downstream._flags(["-m", "train", "-d", "asr", "-c", str(crafted)])
    with pytest.raises(ConfigError, match=re.escape(f"{crafted}: not plain YAML (")):
        downstream._base_config(flags, "asr", None)
    with pytest.raises(ConfigError, match=re.escape(f"{crafted}: not plain YAML (")):
        pretrain.check_inputs(["-u", "star_hubert", "-c", str(crafted)], None)


def downstream_args(student: Path, expdir: Path, **changes) -> argparse.Namespace:
    """The `Args` s3prl's run_downstream.py stores in its checkpoints, for `-u star_hubert -d asr`."""
    return argparse.Namespace(**{
        "mode": "train", "evaluate_split": "test", "override": None, "backend": "nccl", "local_rank": None,
        "past_exp": None, "init_ckpt": None, "config": str(RECIPES / "asr" / "config.yaml"), "downstream": "asr",
        "downstream_variant": None, "hub": "torch", "upstream": "star_hubert", "upstream_ckpt": str(student),
        "upstream_model_config": None, "upstream_refresh": False, "upstream_trainable": False,
        "upstream_feature_selection": "hidden_states", "upstream_layer_selection": None,
        "upstream_feature_normalize": False, "upstream_model_name": "model.pt", "upstream_revision": None,
        "expname": None, "expdir": str(expdir), "auto_resume": False, "push_to_hf_hub": False, "hf_hub_org": None,
        "seed": 1337, "device": "cpu", "cache_dir": None, "verbose": False, "disable_cudnn": False, **changes})


def crafted_downstream_checkpoint(path: Path, student: Path, marker: Path) -> Path:
    """A downstream checkpoint that loads weights-only, whose stored Config's `modelrc.select` runs code
    (and then names RNNs, so the expert would build)."""
    config = recipe("asr")
    config["downstream_expert"]["datarc"]["dict_path"] = str(RECIPES / "asr" / "char.dict")
    config["downstream_expert"]["modelrc"]["select"] = touch(marker, "'RNNs'")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"Args": downstream_args(student, path.parent), "Config": config, "Step": 1}, path)
    return path


@pytest.mark.slow
def test_evaluate_refuses_a_checkpoint_whose_stored_config_is_code(tiny_student_checkpoint, tmp_path, marker):
    checkpoint = crafted_downstream_checkpoint(tmp_path / "exp" / "states-1.ckpt", tiny_student_checkpoint, marker)
    assert read_checkpoint(checkpoint)["Config"]  # weights-only: it loads
    result = cli("downstream", "-m", "evaluate", "-e", str(checkpoint), "--device", "cpu", cwd=tmp_path)
    refused(result, f"checkpoint {checkpoint} Config: downstream_expert.modelrc.select: found")
    result = cli("downstream", "-m", "train", "-a", "-p", str(checkpoint.parent), "--device", "cpu", cwd=tmp_path)
    refused(result, f"checkpoint {checkpoint} Config: downstream_expert.modelrc.select: found")


def test_evaluate_refuses_a_crafted_pickle_as_the_checkpoint(tmp_path, marker):
    (tmp_path / "exp").mkdir()
    checkpoint = crafted_pickle(tmp_path / "exp" / "states-1.ckpt", marker, key="Args")
    result = cli("downstream", "-m", "evaluate", "-e", str(checkpoint), "--device", "cpu", cwd=tmp_path)
    refused(result, f"checkpoint {checkpoint}: cannot be read as a weights-only torch checkpoint")


@pytest.mark.parametrize("split", ["test if __import__('pathlib').Path('{marker}').touch() else self.get_test"])
def test_evaluate_refuses_a_split_name_that_is_code(tiny_student_checkpoint, tmp_path, marker, split):
    config = recipe("voxceleb1")
    checkpoint = tmp_path / "sid" / "states-1.ckpt"
    checkpoint.parent.mkdir()
    torch.save({"Args": downstream_args(tiny_student_checkpoint, checkpoint.parent, downstream="voxceleb1"),
                "Config": config}, checkpoint)
    result = cli("downstream", "-m", "evaluate", "-e", str(checkpoint), "-t", split.format(marker=marker),
                 "--device", "cpu", cwd=tmp_path)
    refused(result, "the runner's arguments (-m, -t, -o args.*): args.evaluate_split: found",
            "must be one of: dev, test, train")


# --- upstream checkpoints: conv_feature_layers -----------------------------------------------------

def crafted_teacher(tmp_path: Path, marker: Path, kind: str = "hubert") -> Path:
    """A random `kind` teacher written by the code that writes the real format, its conv_feature_layers
    then replaced by code that creates `marker` and evaluates to the original list."""
    from s3prl_star.mini_superb.random_teacher import save_random_teacher

    path = save_random_teacher(kind, tmp_path / f"{kind}.pt", layers=1, embed_dim=32, ffn_dim=64, heads=2)
    state = torch.load(path, weights_only=True)
    section = "cfg" if kind == "wavlm" else "model_cfg"
    state[section]["conv_feature_layers"] = touch(marker, state[section]["conv_feature_layers"])
    torch.save(state, path)
    return path


@pytest.mark.parametrize("kind, entry, section", [("hubert", "hubert_local", "model_cfg"),
                                                  ("wav2vec2", "wav2vec2_local", "model_cfg"),
                                                  ("wavlm", "wavlm_local", "cfg")])
def test_the_teacher_refuses_a_checkpoint_whose_conv_layers_are_code(tmp_path, marker, kind, entry, section):
    from s3prl_star.distill.teacher import Teacher

    teacher = crafted_teacher(tmp_path, marker, kind)
    with pytest.raises(CheckpointError, match=re.escape(f"upstream checkpoint {teacher}: {section}.conv_feature_layers: "
                                                        "found ") + ".*must be a literal list"):
        Teacher.from_s3prl(entry, ckpt=str(teacher))


def test_s3prls_models_check_conv_layers_whatever_loads_them(marker):
    from s3prl.upstream.hubert.hubert_model import HubertConfig, HubertModel, HubertPretrainingConfig

    from s3prl_star.integration import patches
    from s3prl_star.integration.patches.upstream_configs import UnsafeModelConfig

    patches.apply()
    task = HubertPretrainingConfig(label_rate=50.0)
    config = HubertConfig(label_rate=50.0, encoder_layers=1, conv_feature_layers=touch(marker, "[(32, 10, 5)]"))
    with pytest.raises(UnsafeModelConfig, match="conv_feature_layers: found"):
        HubertModel(config, task, [["a"]])
    huge = HubertConfig(label_rate=50.0, encoder_layers=1, conv_feature_layers="[(32, 10, 5)] * 100000000")
    with pytest.raises(UnsafeModelConfig):
        HubertModel(huge, task, [["a"]])


@pytest.mark.slow
def test_downstream_refuses_a_hubert_local_checkpoint_whose_conv_layers_are_code(tmp_path, marker):
    teacher = crafted_teacher(tmp_path, marker)
    result = cli("downstream", "-m", "train", "-u", "hubert_local", "-k", str(teacher), "-d", "asr", "-c", "asr",
                 "-p", str(tmp_path / "exp"), "--device", "cpu", cwd=tmp_path)
    refused(result, f"s3prl-star downstream: upstream checkpoint {teacher}: model_cfg.conv_feature_layers: found")


# --- pickles: student checkpoints, exports, the demo's step scan, teacher-pretrain's state -----------

@pytest.mark.parametrize("write", [crafted_pickle, crafted_raw_pickle])
def test_read_checkpoint_and_load_student_refuse_a_crafted_pickle(tmp_path, marker, write):
    path = write(tmp_path / "evil.ckpt", marker)
    for load in (read_checkpoint, load_student):
        with pytest.raises(CheckpointError, match=re.escape(f"checkpoint {path}: cannot be read as a weights-only "
                                                            "torch checkpoint (a pickle of objects other than")):
            load(path)


def test_the_star_hubert_upstream_refuses_a_crafted_pickle(tmp_path, marker):
    from s3prl_star.integration.hub import star_hubert_local

    path = crafted_pickle(tmp_path / "evil.ckpt", marker)
    with pytest.raises(CheckpointError, match=re.escape(f"checkpoint {path}: cannot be read")):
        star_hubert_local(str(path))


@pytest.mark.slow
def test_downstream_refuses_a_crafted_pickle_as_the_star_hubert_upstream(tmp_path, marker):
    path = crafted_pickle(tmp_path / "evil.ckpt", marker)
    result = cli("downstream", "-m", "train", "-u", "star_hubert", "-k", str(path), "-d", "asr", "-c", "asr",
                 "-p", str(tmp_path / "exp"), "--device", "cpu", cwd=tmp_path)
    refused(result, f"s3prl-star downstream: checkpoint {path}: cannot be read as a weights-only torch checkpoint")


def test_export_refuses_a_crafted_pickle(tmp_path, marker):
    path = crafted_pickle(tmp_path / "evil.ckpt", marker)
    result = cli("export", str(path), "--format", "torchscript", "-o", str(tmp_path / "out.pt"), cwd=tmp_path)
    refused(result, f"s3prl-star export: checkpoint {path}: cannot be read as a weights-only torch checkpoint")
    assert not (tmp_path / "out.pt").exists()


def test_the_demos_step_scan_refuses_a_crafted_pickle(tmp_path, marker):
    from s3prl_star.mini_superb.demo import last_step_checkpoint

    crafted_pickle(tmp_path / "states-2.ckpt", marker, key="Step")
    with pytest.raises(CheckpointError, match="states-2.ckpt: cannot be read"):
        last_step_checkpoint(tmp_path, 3)


def teacher_pretrain(out: Path) -> subprocess.CompletedProcess:
    """`teacher-pretrain` on an empty corpus folder: the state is read before the corpus."""
    corpus = out.parent / "corpus"
    corpus.mkdir(exist_ok=True)
    return cli("teacher-pretrain", str(corpus), "-o", str(out), "--steps", "2", cwd=out.parent, timeout=300)


def test_teacher_pretrain_refuses_a_crafted_states_file(tmp_path, marker):
    out = tmp_path / "teacher"
    out.mkdir()
    crafted_pickle(out / "states.pt", marker, key="settings")
    refused(teacher_pretrain(out), f"teacher-pretrain: {out / 'states.pt'}: cannot be read as the resumable training "
                                   "state (a pickle of objects other than")


def test_teacher_pretrain_names_a_truncated_states_file(tmp_path):
    out = tmp_path / "teacher"
    out.mkdir()
    torch.save({"settings": {}, "model": {"w": torch.zeros(1000)}, "step": 1}, out / "states.pt")
    data = (out / "states.pt").read_bytes()
    (out / "states.pt").write_bytes(data[:len(data) // 2])
    refused(teacher_pretrain(out), f"teacher-pretrain: {out / 'states.pt'}: cannot be read as the resumable "
                                   "training state (")


@pytest.mark.parametrize("content", [b"", b"\0" * 4096, bytes(range(256)) * 8, b"PK\3\4" + b"\0" * 100])
def test_teacher_pretrains_reader_names_garbage(tmp_path, content):
    from s3prl_star.mini_superb.teacher_pretrain import read_plain

    (tmp_path / "states.pt").write_bytes(content)
    with pytest.raises(CheckpointError, match=re.escape(f"{tmp_path / 'states.pt'}: cannot be read as the state (")):
        read_plain(tmp_path / "states.pt", "the state")


def test_teacher_pretrain_state_is_plain_data_and_restores_every_generator(tmp_path):
    """What `states.pt` holds loads weights-only, and restoring it continues all three generators exactly."""
    from s3prl_star.mini_superb.teacher_pretrain import read_plain, restore_rng_states, rng_states

    rng = random.Random(0)
    np.random.seed(0)
    np.random.randn(3)  # leaves a cached gaussian in numpy's state
    torch.save(rng_states(rng), tmp_path / "states.pt")
    expected = (rng.random(), np.random.randn(3).tolist(), torch.rand(3).tolist())
    other = random.Random(1)
    np.random.seed(1)
    torch.manual_seed(1)
    restore_rng_states(read_plain(tmp_path / "states.pt", "the state"), other)
    assert (other.random(), np.random.randn(3).tolist(), torch.rand(3).tolist()) == expected


def test_teacher_pretrain_refuses_crafted_centroids(tmp_path, marker):
    from s3prl_star.mini_superb.teacher_pretrain import fit_units

    crafted_pickle(tmp_path / "kmeans.pt", marker, key="centroids")
    with pytest.raises(CheckpointError, match=re.escape(f"{tmp_path / 'kmeans.pt'}: cannot be read as the k-means")):
        fit_units(tmp_path, [], clusters=8, seed=0)


# --- the package itself ----------------------------------------------------------------------------

def test_every_torch_load_of_the_package_is_weights_only():
    """No `weights_only=False` anywhere; every `torch.load(` call says `weights_only=True`."""
    for root in PACKAGE_SOURCES:
        for path in root.rglob("*.py"):
            text = path.read_text()
            assert "weights_only=False" not in text, path
            for call in re.finditer(r"torch\.load\(", text):
                line = text[call.start():text.index("\n", call.start())]
                assert "weights_only=True" in line, f"{path}: {line}"


def test_the_patch_is_in_every_route_that_builds_s3prls_models():
    from s3prl_star.integration import patches
    from s3prl_star.integration.patches import upstream_configs

    assert upstream_configs.check_conv_feature_layers_before_eval in patches.PATCHES

"""Constants and plain functions the test files share (the fixtures are in conftest.py): the tiny
student shapes, `s3prl-star pretrain` and `s3prl-star downstream` runs, TensorBoard scalars, s3prl git
checkouts in a throwaway environment, the generated PR corpus, SUPERB scorer inputs and fault injection.
No test file imports from another test file: what two of them use lives here.

Imported as `helpers`: pytest's default (prepend) import mode puts tests/ (no __init__.py) on sys.path.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import signal
import struct
import subprocess
import tempfile
import sys
import sysconfig
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

import h5py
import editdistance
import numpy as np
import pytest
import torch
import yaml
from tensorboardX.proto import event_pb2

import s3prl_star.integration.patches
from s3prl_star.model.config import StarHubertConfig
from s3prl_star.model.star_hubert import StarHubert

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "downstream_recipes"
EXPERT_DIR = REPO / "distill" / "star_hubert"  # the s3prl pretrain plug-in folder (`-u star_hubert`)
CLI = str(Path(sys.executable).parent / "s3prl-star")  # the console script a user runs

# A 3-layer student with STaRHuBERT's conv-stack pattern (1x1 layers, a wider last block), small enough
# to compare layer by layer against s3prl's HuBERT in well under a second.
TINY_CONFIG = StarHubertConfig(
    conv_layers=((32, 10, 5), (32, 1, 1)) + ((32, 3, 2),) * 4 + ((48, 1, 1), (48, 2, 2), (48, 2, 2)),
    encoder_layers=3,
    encoder_embed_dim=48,
    encoder_ffn_embed_dim=96,
    encoder_attention_heads=4,
    conv_pos=16,
    conv_pos_groups=4,
)

# build_preset("star_hubert", **TINY_STUDENT): star_hubert's 12 layers (what s3prl's featurizer and
# the export see) narrow enough that a downstream step takes well under a second on CPU.
TINY_STUDENT = dict(
    conv_layers=((32, 10, 5), (32, 3, 2), (32, 3, 2), (32, 3, 2), (32, 3, 2), (32, 2, 2), (32, 2, 2)),
    encoder_layers=12, encoder_embed_dim=32, encoder_ffn_embed_dim=64, encoder_attention_heads=4,
    conv_pos=16, conv_pos_groups=4,
)

# The student of the distillation tests (`write_configs`): HuBERT's 320-sample hop with 32 channels.
# layer_norm extractor with conv biases: every frame is normalised on its own, so a padded batch gives
# each utterance what it gets alone (the DDP test relies on it); the biases keep LayerNorm away from
# all-zero frames (digital silence).
TINY_PRETRAIN_STUDENT = {
    "conv_layers": [[32, 10, 5]] + [[32, 3, 2]] * 4 + [[32, 2, 2]] * 2,
    "extractor_mode": "layer_norm",
    "conv_bias": True,
    "encoder_layers": 2,
    "encoder_embed_dim": 32,
    "encoder_ffn_embed_dim": 64,
    "encoder_attention_heads": 2,
    "conv_pos": 16,
    "conv_pos_groups": 4,
}

# Downstream training runs STEPS optimiser steps, evaluates and saves states-STEPS.ckpt at the last one.
STEPS = 4
FAST_RUNNER = (
    f"config.runner.total_steps={STEPS},,config.runner.log_step=2,,config.runner.eval_step={STEPS},,"
    f"config.runner.save_step={STEPS},,config.runner.gradient_accumulate_steps=1"
)


def train_args(downstream: str, student_checkpoint: Path, expdir: Path, overrides: str) -> list[str]:
    """`-m train` arguments for the tiny student on downstream_recipes/<downstream>/config.yaml, with
    FAST_RUNNER and then `overrides` (`-o` syntax, `,,`-separated)."""
    config = RECIPES / downstream / "config.yaml"
    assert config.is_file(), f"no recipe {config}"
    return ["-m", "train", "-u", "star_hubert", "-k", str(student_checkpoint), "-d", downstream,
            "-c", str(config), "-p", str(expdir), "-o", f"{FAST_RUNNER},,{overrides}"]


def downstream_output(args) -> tuple[int, str]:
    """Run `s3prl-star downstream ARGS --device cpu` from a folder outside the source tree (the recipes name
    their shipped files; the command finds them anywhere): (exit status, stdout+stderr)."""
    result = subprocess.run(
        [CLI, "downstream", *args, "--device", "cpu"], cwd=tempfile.gettempdir(), capture_output=True, text=True,
        timeout=600,
    )
    return result.returncode, result.stdout + result.stderr


def run_downstream(args, expected_line: str) -> str:
    """`downstream_output(args)`, which must succeed and print a line matching the regex `expected_line`
    (`^`/`$` anchor at line ends); returns stdout+stderr."""
    returncode, output = downstream_output(args)
    assert returncode == 0, output[-4000:]
    assert re.search(expected_line, output, re.MULTILINE), f"no line matching {expected_line!r} in:\n{output[-4000:]}"
    return output


def printed_accuracy(output: str) -> float:
    """The fraction of the last `test acc: v` line a classification task's evaluation printed."""
    values = re.findall(r"^test acc: ([0-9.]+)$", output, re.MULTILINE)
    assert values, f"no 'test acc: v' line in:\n{output[-4000:]}"
    return float(values[-1])


def assert_dev_and_test_logged(expdir: Path):
    """The expert's log.log has the dev and the test score of the last step (tasks with both splits)."""
    log = (expdir / "log.log").read_text()
    assert f"dev at step {STEPS}:" in log and f"test at step {STEPS}:" in log, log


def train_then_evaluate(downstream: str, student_checkpoint: Path, expdir: Path, overrides: str, *,
                        train_line: str, evaluate_line: str, evaluate_options: tuple = (),
                        dev_and_test_logged: bool = True) -> str:
    """Train (`train_args`, printing a line matching `train_line`), then `-m evaluate EVALUATE_OPTIONS -e`
    the last checkpoint in a fresh process (a line matching `evaluate_line`); returns the evaluation's
    output. With `dev_and_test_logged`, the training must have logged the last step's dev and test scores."""
    run_downstream(train_args(downstream, student_checkpoint, expdir, overrides), train_line)
    if dev_and_test_logged:
        assert_dev_and_test_logged(expdir)
    checkpoint = expdir / f"states-{STEPS}.ckpt"
    assert checkpoint.is_file(), sorted(path.name for path in expdir.iterdir())
    return run_downstream(["-m", "evaluate", *evaluate_options, "-e", str(checkpoint)], evaluate_line)


def scalars(expdir: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} from the TensorBoard event files directly in `expdir` (TFRecord framing:
    u64 length, u32 crc, the event, u32 crc)."""
    found: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(expdir.glob("events.out.tfevents.*")):
        data, offset = path.read_bytes(), 0
        while offset < len(data):
            (length,) = struct.unpack("Q", data[offset:offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                found.setdefault(value.tag, []).append((event.step, value.simple_value))
    return found


def corpus_files(root: Path) -> dict[str, bytes]:
    """{relative path: bytes} of every file under `root` (two builds compare byte for byte)."""
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


# --- `s3prl-star pretrain`: the tiny distillation runs --------------------------------------------


def subprocess_env() -> dict[str, str]:
    """One torch thread per process: two processes share the 2 cores, and runs compare bit for bit."""
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def write_configs(directory: Path, *, teacher: Path, corpus: Path, csv_dir: Path, runner: dict,
                  datarc: dict, student: dict | None = None, objective: dict | None = None) -> tuple[Path, Path]:
    """config_model.yaml / config_runner.yaml for TINY_PRETRAIN_STUDENT, with the paper's optimiser
    (`objective`: the section, STaR's final loss by default)."""
    model = {
        "student": {**TINY_PRETRAIN_STUDENT, **(student or {})},
        "teacher": {"name": "hubert_local", "ckpt": str(teacher), "model_config": None, "layer_map": None},
        "objective": objective or {"layerwise_weight": 1.0, "intra_weight": 1.0, "attention_weight": 0.0},
        "precision": "bf16",
    }
    shipped = yaml.safe_load((EXPERT_DIR / "config_runner.yaml").read_text())
    run = {
        "runner": {**shipped["runner"], "max_keep": 100, **runner},
        "optimizer": shipped["optimizer"],
        "scheduler": {**shipped["scheduler"], "num_warmup_steps": 1},  # 5 % of the tiny runs' steps
        "pretrain_expert": {"datarc": {
            "libri_root": str(corpus), "file_path": str(csv_dir), "sets": ["train-clean-100"],
            "max_length": None, "num_workers": 0, **datarc,
        }},
    }
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model.yaml").write_text(yaml.safe_dump(model))
    (directory / "runner.yaml").write_text(yaml.safe_dump(run))
    return directory / "model.yaml", directory / "runner.yaml"


def length_csvs(corpus: Path, output: Path) -> Path:
    """`s3prl-star prepare-librispeech` for train-clean-100, as a user runs it."""
    if not (output / "train-clean-100.csv").is_file():
        subprocess.run([CLI, "prepare-librispeech", str(corpus), "-o", str(output), "--splits", "train-clean-100"],
                       check=True, capture_output=True)
    return output


def run_pretrain(args: list[str], cwd: Path, launcher: list[str] | None = None, timeout: float = 600):
    """`s3prl-star pretrain ARGS` (or under `launcher`, e.g. torchrun) on the CPU; fails with its output."""
    command = (launcher or [CLI]) + ["pretrain", *args, "--device", "cpu"]
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=subprocess_env())
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result


def load_checkpoint(path: Path) -> dict:
    """A states-*.ckpt loaded with weights_only (plain data; compat allows s3prl's argparse Namespace)."""
    s3prl_star.integration.patches.apply()
    return torch.load(path, map_location="cpu", weights_only=True)


def load_expert_module():
    """distill/star_hubert/pretrain_expert.py, the file s3prl's runner imports, loaded from its path."""
    spec = importlib.util.spec_from_file_location("star_hubert_expert", EXPERT_DIR / "pretrain_expert.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- s3prl git checkouts, linked by `s3prl-star link-s3prl` in a throwaway environment ---------------
# (test_link.py's docstring says why the checkout is the installed package in a git repository, and
# why the environment is not the project's .venv.)

# the lines of s3prl's .gitignore (GitHub, master) that running its scripts from the checkout touches
S3PRL_GITIGNORE = "__pycache__/\n*.py[cod]\n*$py.class\n*.log\n"


def isolated_python(root: Path) -> Path:
    """A virtual environment whose site-packages also holds the project's (a .pth adding that folder
    with its own .pth files), so link-s3prl's .pth lands in this environment only."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    python = root / "bin" / "python"
    (site_packages(python) / "_project_packages.pth").write_text(
        f"import site; site.addsitedir({sysconfig.get_path('purelib')!r})\n"
    )
    return python


def site_packages(python: Path) -> Path:
    return Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               capture_output=True, text=True, check=True).stdout.strip())


def user_environment() -> dict:
    """The caller's environment without PYTHONPATH: what a user's shell has."""
    return {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}


def make_checkout(root: Path) -> Path:
    """`root/s3prl-checkout`: the installed s3prl package folder as a git checkout, committed."""
    import s3prl

    checkout = root / "s3prl-checkout"
    shutil.copytree(Path(s3prl.__file__).parent, checkout / "s3prl", ignore=shutil.ignore_patterns("__pycache__"))
    (checkout / ".gitignore").write_text(S3PRL_GITIGNORE)
    git(checkout, "init", "-q")
    git(checkout, "add", "-A")
    git(checkout, "-c", "user.name=test", "-c", "user.email=test@example.com", "commit", "-q", "-m", "s3prl 0.4.18")
    return checkout


def git(checkout: Path, *args) -> str:
    return subprocess.run(["git", *args], cwd=checkout, capture_output=True, text=True, check=True).stdout


def git_status(checkout: Path) -> list[str]:
    return git(checkout, "status", "--porcelain", "--untracked-files=all").splitlines()


def link_s3prl(python: Path, *args, env: dict | None = None):
    """`s3prl-star link-s3prl ARGS` with `python` (the console script's module entry point)."""
    return subprocess.run([str(python), "-m", "s3prl_star.cli", "link-s3prl", *map(str, args)],
                          capture_output=True, text=True, env=env or user_environment())


def in_checkout(python: Path, checkout: Path, *args, timeout: float = 300, env: dict | None = None):
    """`python ARGS` from the checkout's s3prl folder, as s3prl's documentation runs its scripts (`env`: the
    environment, a user's shell's by default)."""
    return subprocess.run([str(python), *map(str, args)], cwd=checkout / "s3prl", env=env or user_environment(),
                          capture_output=True, text=True, timeout=timeout)


# --- PR (s3prl `-d ctc`): LibriSpeech layout and a lexicon of espeak-ng's phonemes --------------------

PR_SPLITS = {"train-clean-100": (6, 3), "dev-clean": (3, 3), "test-clean": (3, 3)}  # (utterances, speakers)


def transcripts(root: Path) -> dict[str, str]:
    """{utterance id: TEXT} of every `.trans.txt` under `root`."""
    lines = (line for path in root.rglob("*.trans.txt") for line in path.read_text().splitlines())
    return dict(line.split(" ", 1) for line in lines)


def make_libriphone_corpus(root: Path) -> dict:
    """LibriSpeech (train-clean-100, dev-clean, test-clean) of espeak-ng speech, a lexicon
    `WORD<TAB>PHONEMES` of espeak-ng's phonemes for the grammar's words, and the vocabulary of those
    phonemes (`s3prl_star.mini_superb.corpus.librispeech` and `.phoneme_lexicon`). Returns the PR recipe's data keys
    (`path`, `lexicon`, `vocab_file`) and `labels`, the phoneme string of every utterance."""
    from s3prl_star.mini_superb import corpus

    asr = corpus.librispeech(root, PR_SPLITS, seed=0)
    pr = corpus.phoneme_lexicon(root, asr)
    corpus.build([asr, pr])
    path, (lexicon_file,) = pr.data["corpus.path"], pr.data["corpus.lexicon"]
    lexicon = dict(line.split("\t") for line in lexicon_file.read_text().splitlines())
    labels = {utt: " ".join(lexicon[word] for word in text.split()) for utt, text in transcripts(path).items()}
    return {"path": path, "lexicon": lexicon_file, "vocab_file": Path(pr.overrides.split("=", 1)[1]), "labels": labels}


def pr_overrides(corpus: dict, **changes) -> str:
    """`-o` for the PR recipe on `corpus` (a dict of make_libriphone_corpus), `changes` replacing keys."""
    keys = {
        "corpus.path": corpus["path"], "corpus.lexicon": [str(corpus["lexicon"])],
        "text.vocab_file": corpus["vocab_file"], "corpus.batch_size": 4, "corpus.num_workers": 0,
    }
    keys.update(changes)
    return ",,".join(f"config.downstream_expert.{key}={value}" for key, value in keys.items())


def printed_metric(output: str, line: str) -> float:
    """The value of the stdout line `LINE: v`."""
    return float(re.search(rf"^{re.escape(line)}: (\S+)$", output, re.MULTILINE).group(1))


# --- `s3prl-star superb`, the suite driver, as a user runs it -------------------------------------------

# Every task: 4 steps, dev (and test) evaluated and a checkpoint saved every 2 steps.
QUICK = ("config.runner.total_steps=4,,config.runner.log_step=2,,config.runner.eval_step=2,,"
         "config.runner.save_step=2,,config.runner.gradient_accumulate_steps=1")


def superb(*args: str, timeout: int = 1800) -> subprocess.CompletedProcess:
    """`s3prl-star superb ARGS` on the CPU from a folder of no importance to it (not the source tree)."""
    return subprocess.run([CLI, "superb", "--device", "cpu", "--progress-every", "0", *args], cwd=tempfile.gettempdir(),
                          capture_output=True, text=True, timeout=timeout)


def write_data(path: Path, entries: dict) -> Path:
    """A DATA.yaml of `entries` ({task key: its data keys and overrides}) with QUICK for every task."""
    path.write_text(yaml.safe_dump({"overrides": QUICK, **entries}))
    return path


def speech_commands_entry(root: Path) -> dict:
    """The DATA.yaml `ks` entry of a make_speech_commands corpus under `root`, batches of 4, no workers."""
    train_root, test_root = make_speech_commands(root)
    return {"datarc.speech_commands_root": str(train_root), "datarc.speech_commands_test_root": str(test_root),
            "overrides": "config.downstream_expert.datarc.num_workers=0,,config.downstream_expert.datarc.batch_size=4"}


# --- generated SUPERB corpora in each task's layout (`s3prl_star.mini_superb.corpus` plans) -------------
# (tests/test_superb_driver.py runs the driver on the task tests' corpora)


def make_speech_commands(root: Path) -> tuple:
    """Speech Commands v0.01 layout (`s3prl_star.mini_superb.corpus.speech_commands`): train root (class folders of
    2 training and 1 validation speaker, _background_noise_) and test root (another speaker, _silence_)."""
    from s3prl_star.mini_superb import corpus

    plan = corpus.speech_commands(root, ("yes", "no", "up", "down"), ("bed",), {"train": 2, "valid": 1, "test": 1},
                                  seed=0, noise_seconds=2)
    corpus.build([plan])
    return plan.data["datarc.speech_commands_root"], plan.data["datarc.speech_commands_test_root"]


def make_iemocap(root: Path) -> tuple:
    """IEMOCAP wavs (`s3prl_star.mini_superb.corpus.iemocap`: 5 sessions x 2 speakers x 4 emotions) and the 5 folds'
    metadata: (corpus root, metadata folder)."""
    from s3prl_star.mini_superb import corpus

    plan = corpus.iemocap(root, per_emotion=1, seed=0)
    corpus.build([plan])
    return plan.data["datarc.root"], plan.data["datarc.meta_data"]


def make_fluent_commands(root: Path) -> Path:
    """Fluent Speech Commands layout (`s3prl_star.mini_superb.corpus.fluent_commands`: data/{train,valid,test}_data.csv +
    wavs/speakers/<spk>/*.wav) of 4 intents said by 3 train, 1 valid and 1 test speaker; returns its root."""
    from s3prl_star.mini_superb import corpus

    plan = corpus.fluent_commands(root, intents=4, speakers={"train": 3, "valid": 1, "test": 1}, seed=0)
    corpus.build([plan])
    return plan.data["datarc.file_path"]


@dataclass(frozen=True)
class SidCorpus:
    root: Path  # the recipe's file_path (holds dev/wav/...)
    split_list: Path  # the recipe's meta_data
    counts: dict  # split -> number of utterances listed
    videos: frozenset  # the video folder names of this corpus' utterances


def make_voxceleb1(root: Path, speakers: int, per_speaker: dict, seed: int) -> SidCorpus:
    """espeak-ng speakers (ids id10001...) in VoxCeleb1 layout under root/VoxCeleb1, and its split list
    (`s3prl_star.mini_superb.corpus.voxceleb1`; video ids drawn from `seed`)."""
    from s3prl_star.mini_superb import corpus

    plan = corpus.voxceleb1(root, speakers, per_speaker, seed)
    corpus.build([plan])
    return SidCorpus(plan.data["datarc.file_path"], plan.data["datarc.meta_data"], plan.counts,
                     frozenset(utterance.path.parent.name for utterance in plan.speech))


# --- SUPERB scorer inputs: QUESST 2014 ground truth, s3prl's diarization predictions --------------------


def write_quesst_ground_truth(directory: Path, split: str, documents, queries, occurrences: dict):
    """A QUESST 2014 ground-truth folder: ECF (documents), term list (queries) and LEXEME RTTM
    (`occurrences` {query: [documents]}), named as the corpus names them (`groundtruth_quesst14_SPLIT/`)."""
    directory.mkdir(parents=True, exist_ok=True)
    ecf = ElementTree.Element("ecf", source_signal_duration="1.0", version="quesst14")
    for document in documents:
        ElementTree.SubElement(ecf, "excerpt", audio_filename=f"Audio/{document}.wav", channel="1", tbeg="0.000",
                               dur="1.0", source_type="quesst14")
    ElementTree.ElementTree(ecf).write(directory / "quesst14.ecf.xml", encoding="UTF-8")
    tlist = ElementTree.Element("termlist", ecf_filename="quesst14.ecf.xml", language="multilingual", version="1")
    for query in queries:
        term = ElementTree.SubElement(tlist, "term", termid=query)
        ElementTree.SubElement(term, "termtext").text = query
    ElementTree.ElementTree(tlist).write(directory / f"quesst14_{split}.tlist.xml", encoding="UTF-8")
    lines = [f"LEXEME {document} 1 0.50 0.40 {query} lex <NA> <NA>\n"
             for query, found in occurrences.items() for document in found]
    (directory / f"quesst14_{split}.rttm").write_text("".join(lines))


FRAME_SHIFT = 320  # samples at 16 kHz: 20 ms frames, the star_hubert rate s3prl's expert stores


def write_run(expdir: Path, predictions: dict, frame_shift: int = FRAME_SHIFT):
    """An evaluated diarization expdir as s3prl's expert leaves it: `frame_shift` and
    `scoring/predictions/REC.h5` with dataset `T_hat` (frames, speakers) probabilities."""
    (expdir / "scoring" / "predictions").mkdir(parents=True)
    (expdir / "frame_shift").write_text(f"{frame_shift}\n")
    for recording, probabilities in predictions.items():
        with h5py.File(expdir / "scoring" / "predictions" / f"{recording}.h5", "w") as file:
            file.create_dataset("T_hat", data=probabilities)


def frames_of(turns, frames: int, frame_shift: int = FRAME_SHIFT, high: float = 0.9, low: float = 0.1) -> np.ndarray:
    """(frames, speakers) probabilities: `high` where each speaker (in order of first turn) talks, else `low`."""
    speakers = list(dict.fromkeys(turn.speaker for turn in turns))
    probabilities = np.full((frames, len(speakers)), low)
    seconds = frame_shift / 16000
    for turn in turns:
        probabilities[round(turn.onset / seconds):round(turn.offset / seconds), speakers.index(turn.speaker)] = high
    return probabilities


# --- fault injection (tests/test_faults_*.py): small or read-only file systems, a process killed while a
# file it writes is open, damaged files. Root ignores file modes, so as root a read-only folder is a
# read-only tmpfs mount; a full disk is a small tmpfs mount, which needs root (the test is skipped,
# saying so, where `mount` is refused).


@contextlib.contextmanager
def tmpfs(path: Path, size_kib: int, read_only: bool = False):
    """A tmpfs of `size_kib` KiB mounted on `path` for the duration; skips the test without mount rights."""
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size_kib}k" + (",ro" if read_only else "")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs on this machine (needs root): {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


@contextlib.contextmanager
def read_only_folder(path: Path):
    """An empty folder no file can be created in: mode 0555, or a read-only tmpfs for root."""
    if os.geteuid() == 0:
        with tmpfs(path, 64, read_only=True):
            yield path
        return
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o555)
    try:
        yield path
    finally:
        path.chmod(0o755)


@contextlib.contextmanager
def read_only_tree(path: Path):
    """`path` (an existing folder and what it holds) made read-only for the duration: a read-only bind
    mount on itself for root (writes fail with EROFS), else every folder in it mode 0555."""
    if os.geteuid() == 0:
        mounted = subprocess.run(["mount", "--bind", str(path), str(path)], capture_output=True, text=True)
        if mounted.returncode != 0:
            pytest.skip(f"cannot bind-mount on this machine: {mounted.stderr.strip()}")
        try:
            subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], check=True, capture_output=True)
            yield path
        finally:
            subprocess.run(["umount", "-l", str(path)], check=True)
        return
    folders = [path, *(folder for folder in path.rglob("*") if folder.is_dir() and not folder.is_symlink())]
    for folder in folders:
        folder.chmod(0o555)
    try:
        yield path
    finally:
        for folder in folders:
            folder.chmod(0o755)


def kill_while_writing(process: subprocess.Popen, folder: Path, temporary: str, complete: str,
                       timeout: float = 300) -> Path:
    """SIGKILL `process` as soon as a file matching `temporary` appears in `folder` while one matching
    `complete` already exists (a save in progress with an earlier one done); returns the temporary
    file seen. Fails if the process exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, (f"the run exited ({process.returncode}) before a save was seen in progress "
                                        "beside a complete earlier checkpoint")
        if folder.is_dir():
            writing = sorted(folder.glob(temporary))
            if writing and any(folder.glob(complete)):
                process.send_signal(signal.SIGKILL)
                assert process.wait() == -signal.SIGKILL
                return writing[0]
        time.sleep(0.001)
    process.kill()
    raise AssertionError(f"no {temporary} in {folder} after {timeout} s")


def fill_up(folder: Path) -> None:
    """Write `folder/filler` until its file system is full (a small tmpfs: a disk full from now on)."""
    with open(folder / "filler", "wb", buffering=0) as file:
        try:
            while True:
                file.write(b"\0" * 4096)
        except OSError:
            pass


def truncate_to_half(path: Path) -> None:
    """Keep the first half of `path` (a write cut short)."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def corrupt_middle(path: Path, count: int = 64) -> None:
    """Flip `count` bytes in the middle of `path`; its size and both ends stay intact."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    for index in range(middle, middle + count):
        data[index] ^= 0x5A
    path.write_bytes(bytes(data))


# --- metrics recomputed from the files s3prl's experts write at a test evaluation ----------------------

def error_rate(expdir: Path, prefix: str) -> float:
    """Token error rate (percent) of the PREFIX-hyp.ark s3prl's asr / ctc expert wrote against PREFIX-ref.ark
    (`<utterance> <space-separated tokens>` per line)."""
    hyp, ref = ({utterance: tokens.split() for utterance, tokens in
                 (line.split(" ", 1) for line in (expdir / f"{prefix}-{kind}.ark").read_text().splitlines())}
                for kind in ("hyp", "ref"))
    return 100 * sum(editdistance.eval(hyp[key], ref[key]) for key in ref) / sum(map(len, ref.values()))


def accuracy_of_predictions(expdir: Path, prefix: str) -> tuple[float, int]:
    """(accuracy as a fraction, utterances) of PREFIX_predict.txt against PREFIX_truth.txt, the files s3prl's
    utterance-level experts (KS, SID, IC, ER) write at an evaluation (`<file> <label>` per line)."""
    predicted, truth = ({path: label for path, label in (line.rsplit(" ", 1) for line in
                                                           (expdir / f"{prefix}_{kind}.txt").read_text().splitlines())}
                        for kind in ("predict", "truth"))
    assert predicted.keys() == truth.keys() and truth, (len(predicted), len(truth))
    return sum(predicted[key] == truth[key] for key in truth) / len(truth), len(truth)


# --- released STaRHuBERT files (tests/test_checkpoint.py, tests/test_hf_export.py) -----------------------
# Built the way the code that wrote them does (reference: ARMHuBERT's GitHub, on which STaRHuBERT was
# built and whose `models/starhubert` is the released upstream, and PyTorch Lightning 1.7, the version its
# requirements pin):
# - the `.yaml` is ARMHuBERT's training template (`conf/armhubert/*.yaml`: teacher, train, distiller,
#   optimizer, data, specaug), to which `train.py` adds `model: <name>` and whose `distiller:` section
#   `utils.dump_yaml` rewrites with every public field of the student's config dataclass, dumped with
#   `yaml.dump(sort_keys=False)`;
# - the `.ckpt` is Lightning's `dump_checkpoint` of the LightningModule `W2V2Distil`: `epoch`,
#   `global_step`, `pytorch-lightning_version`, `state_dict` (`student_model.*` and the frozen
#   `teacher_model.model.*`), `loops`, `callbacks` (its ModelCheckpoint), `optimizer_states` (s3prl's
#   `get_optimizer` on the template's `AdamW_with_schedule`, which keeps an LR schedule object in
#   every param group), `lr_schedulers` (none), the native-AMP plugin's scaler state, `hparams_name`
#   and `hyper_parameters` = {"cfg": the template} (`save_hyperparameters()` keeps the very dict that
#   train.py and dump_yaml fill in).


def conv_feature_layers(layers) -> str:
    """fairseq's notation, runs of equal layers folded: '[(128, 10, 5)] + [(256, 3, 2)] * 4 + ...'."""
    import itertools

    runs = [(layer, len(list(group))) for layer, group in itertools.groupby(layers)]
    return " + ".join(f"[{tuple(layer)}]" + (f" * {count}" if count > 1 else "") for layer, count in runs)


def released_template(shape: StarHubertConfig) -> dict:
    """The released `.yaml` (and the ckpt's cfg) of a student of `shape`: ARMHuBERT's template with its
    values, the student's fields in `distiller:` (every field of ARMHuBERT's config class, in the
    template's order) and the `model` name train.py adds."""
    distiller = {
        "extractor_mode": shape.extractor_mode,
        "conv_feature_layers": conv_feature_layers(shape.conv_layers),
        "feature_grad_mult": 1.0,
        "conv_bias": shape.conv_bias,
        "conv_pos": shape.conv_pos,
        "conv_pos_groups": shape.conv_pos_groups,
        "pos_conv_depth": 1,
        "max_positions": 100000,
        "layer_type": "transformer",
        "encoder_layers": shape.encoder_layers,
        "encoder_embed_dim": shape.encoder_embed_dim,
        "encoder_ffn_embed_dim": shape.encoder_ffn_embed_dim,
        "encoder_attention_heads": shape.encoder_attention_heads,
        "activation_fn": "gelu",
        "layer_norm_first": shape.layer_norm_first,
        "layer_grad_scale": True,
        "depthwise_conv_kernel_size": 31,
        "attn_type": "",
        "pos_enc_type": "abs",
        "fp16": True,
        "reuse_pattern": str([False] * shape.encoder_layers),
        "dropout": shape.dropout,
        "attention_dropout": shape.attention_dropout,
        "activation_dropout": shape.activation_dropout,
        "encoder_layerdrop": 0.0,
        "dropout_input": shape.dropout_input,
        "final_dim": 256,
        "pred_head_final_dim": 768,
        "pred_head_inter_dim": 0,
        "layerwise_proj": True,
        "pred_layer_id": "[11]",
        "init_conv_layers": False,
        "init_encoder_layers": 0,
        "enable_tr_layer": False,
        "tr_conv1d_kernel": 2,
        "tr_layer_index": 0,
        "tr_reduce_factor": 2,
        "tr_layer_type": "conv1d",
        "checkpoint_activations": False,
        "required_seq_len_multiple": 1,
        "crop_seq_to_multiple": 1,
        "freeze_student_mask": False,
        "update_teacher_mask": False,
    }
    return {
        "teacher": {"teacher_model": "./hubert_base_ls960.pt", "mask_length": 10, "mask_prob": 0.4,
                    "mask_selection": "uniform", "mask_other": 0.0, "no_mask_overlap": True, "mask_min_space": 1},
        "train": {"base_dir": "./", "output_dir": "STaRHuBERT", "checkpoint": None, "num_epochs": 200, "gpus": 2,
                  "batch_size": 6, "accumulate_grad_batches": 4, "use_fp16": True, "use_apex": False,
                  "monitor_losses": True, "rec_loss_weight": 1.0, "rec_loss_type": "mse", "distil_random_layer": 11,
                  "random_layer_weight": 0.1, "delete_projections": False, "specaug": False, "mask_prob_schedule": ""},
        "distiller": distiller,
        "optimizer": {"name": "AdamW_with_schedule", "lr": 1.0e-3, "warmup_proportion": 0.05, "betas": [0.9, 0.98],
                      "eps": 1.0e-6, "weight_decay": 1.0e-6},
        "data": {"bucketing_path": "./data/len_for_bucket", "libri_root": "/db/LibriSpeech",
                 "train_set": ["train-clean-100"], "test_set": ["test-clean"]},
        "specaug": {"adaptive": False, "adaptive_number_ratio": 0.04, "adaptive_size_ratio": 0.04,
                    "max_n_time_masks": 20, "apply_time_warp": False, "apply_time_mask": True,
                    "apply_freq_mask": True, "replace_with_zero": False, "time_warp_window": 5,
                    "time_mask_width_range": [0, 100], "freq_mask_width_range": [0, 27],
                    "num_freq_mask": 2, "num_time_mask": 2},
        "model": "starhubert",
    }


def released_checkpoint(student: StarHubert, template: dict, teacher_weights: dict, *, with_hyper_parameters=True,
                        final_proj=True) -> dict:
    """Lightning 1.7's `dump_checkpoint` of W2V2Distil after 3 epochs (see the module docstring)."""
    from s3prl.optimizers import get_optimizer

    state_dict = {f"student_model.{key}": value for key, value in student.state_dict().items()}
    if final_proj:  # set by the distillation code; the released upstream deletes it
        final_dim, dim = template["distiller"]["final_dim"], student.config.encoder_embed_dim
        state_dict["student_model.final_proj.weight"] = torch.randn(final_dim, dim)
        state_dict["student_model.final_proj.bias"] = torch.randn(final_dim)
    state_dict.update({f"teacher_model.model.{key}": value for key, value in teacher_weights.items()})
    optimizer = get_optimizer([student], 1200, template["optimizer"])
    checkpoint_callback = ("ModelCheckpoint{'monitor': 'v_loss', 'mode': 'min', 'every_n_train_steps': 0, "
                           "'every_n_epochs': 1, 'train_time_interval': None}")
    best = "./results/pretrain/STaRHuBERT/checkpoint-epoch=02.ckpt"
    progress = {"total": {"ready": 1200, "completed": 1200, "started": 1200, "processed": 1200},
                "current": {"ready": 400, "completed": 400, "started": 400, "processed": 400}}
    checkpoint = {
        "epoch": 2,
        "global_step": 1200,
        "pytorch-lightning_version": "1.7.7",
        "state_dict": state_dict,
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": progress,
                               "epoch_loop.state_dict": {"_batches_that_stepped": 1200},
                               "epoch_loop.batch_progress": progress},
                  "validate_loop": {"state_dict": {}, "dataloader_progress": progress},
                  "test_loop": {"state_dict": {}}, "predict_loop": {"state_dict": {}}},
        "callbacks": {checkpoint_callback: {
            "monitor": "v_loss", "best_model_score": torch.tensor(0.41), "best_model_path": best,
            "current_score": torch.tensor(0.41), "dirpath": "./results/pretrain/STaRHuBERT",
            "best_k_models": {best: torch.tensor(0.41)}, "kth_best_model_path": best,
            "kth_value": torch.tensor(0.41), "last_model_path": "./results/pretrain/STaRHuBERT/last.ckpt"}},
        "optimizer_states": [optimizer.state_dict()],
        "lr_schedulers": [],
        "NativeMixedPrecisionPlugin": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                                       "growth_interval": 2000, "_growth_tracker": 17},
    }
    if with_hyper_parameters:
        checkpoint["hparams_name"] = "kwargs"
        checkpoint["hyper_parameters"] = {"cfg": template}
    return checkpoint


def write_released_files(directory, student: StarHubert, teacher_weights: dict, **options):
    """(star.ckpt, star.yaml) as released for `student`."""
    template = released_template(student.config)
    ckpt, config = directory / "star.ckpt", directory / "star.yaml"
    torch.save(released_checkpoint(student, template, teacher_weights, **options), ckpt)
    config.write_text(yaml.dump(template, sort_keys=False))
    return ckpt, config


# --- the package as a wheel in a new virtual environment --------------------------------------------

def clean_tree(destination: Path) -> Path:
    """The files git tracks or would track (what a clean clone holds once the change is committed), copied to
    `destination`: a build there cannot pick up a stale build/ folder of the working tree."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                            capture_output=True, text=True, check=True)
    for name in filter(None, listed.stdout.split("\0")):
        if (REPO / name).is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, destination / name)
    return destination


def build_wheel(source: Path, dist: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
                    str(source)], check=True, capture_output=True)
    (built,) = dist.glob("s3prl_star-*.whl")
    return built


def wheel_venv(venv: Path, *requirements: str) -> dict:
    """A new venv with `requirements` pip-installed (a wheel path, `WHEEL[extra]`, registry names), its
    dependencies already in the test environment taken from there through a plain path entry (no .pth file of
    that environment runs, so its editable install of this project stays invisible). Returns its environment
    (no PYTHONPATH, its bin/ first on PATH), python and site-packages."""
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    (purelib / "test_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
    installed = {"env": env, "python": python, "bin": venv / "bin", "purelib": purelib}
    if requirements:
        pip_install(installed, "--no-deps", *requirements)
    return installed


def pip_install(venv: dict, *arguments: str) -> None:
    result = subprocess.run([str(venv["python"]), "-m", "pip", "install", "-q", *arguments], env=venv["env"],
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


# A program of its own that builds S3PRLUpstream("star_hubert", argv[1]) and saves the hidden states of two
# seeded waveforms (16000 and 12000 samples) to argv[2]; `assert_upstream_states` compares them to the student.
UPSTREAM_PROBE = """import sys, torch
from s3prl.nn import S3PRLUpstream
assert 'star_hubert' in S3PRLUpstream.available_names()
upstream = S3PRLUpstream('star_hubert', sys.argv[1]).eval()
torch.manual_seed(0)
with torch.no_grad():
    states, _ = upstream(torch.randn(2, 16000), torch.tensor([16000, 12000]))
torch.save([state.clone() for state in states], sys.argv[2])
"""


def assert_upstream_states(states_file: Path, model) -> None:
    """The states UPSTREAM_PROBE saved are the student's 12 layer outputs on the same padded batch (s3prl pads
    each to round(samples / 320) frames: one frame more than the student's floor division)."""
    import torch

    torch.manual_seed(0)
    waveforms = torch.randn(2, 16000)
    with torch.no_grad():
        expected = model.forward_list([waveforms[0], waveforms[1, :12000]]).hidden_states[1:]
    states = torch.load(states_file, weights_only=True)
    assert len(states) == len(expected)
    for state, reference in zip(states, expected):
        frames = reference.shape[1]
        assert state.shape[1] >= frames and torch.allclose(state[:, :frames], reference, atol=1e-5)

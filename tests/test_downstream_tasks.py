"""`s3prl-star downstream` trains and then evaluates star_hubert through s3prl's own runner.

Two SUPERB tasks with this repository's recipes (downstream_recipes/<task>/config.yaml), each
in two subprocesses as a user runs them: `-m train` (a few steps, dev/test evaluation, a
checkpoint), then `-m evaluate -e CKPT` in a fresh process (which must re-register the
upstream from the name stored in the checkpoint) printing the task's metric line.
- IC (`fluent_commands`, utterance level): espeak-ng commands in Fluent Speech Commands layout.
- ASR (`asr`, sequence level): espeak-ng LibriSpeech + `s3prl-star prepare-librispeech` CSVs.
Only step counts, batch sizes, workers and model widths are overridden (-o), to fit CI.
"""
import csv
import re
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "downstream_recipes"
CLI = [str(Path(sys.executable).parent / "s3prl-star")]

# A 12-layer student narrow enough that a downstream step takes well under a second on CPU.
TINY_STUDENT = dict(
    conv_layers=((32, 10, 5), (32, 3, 2), (32, 3, 2), (32, 3, 2), (32, 3, 2), (32, 2, 2), (32, 2, 2)),
    encoder_layers=12, encoder_embed_dim=32, encoder_ffn_embed_dim=64, encoder_attention_heads=4,
    conv_pos=16, conv_pos_groups=4,
)
STEPS = 4
FAST_RUNNER = (
    f"config.runner.total_steps={STEPS},,config.runner.log_step=2,,config.runner.eval_step={STEPS},,"
    f"config.runner.save_step={STEPS},,config.downstream_expert.datarc.num_workers=0"
)

# (transcription, action, object, location): each class value occurs in every split.
COMMANDS = (
    ("turn on the lights", "activate", "lights", "none"),
    ("turn off the lights", "deactivate", "lights", "none"),
    ("increase the heat in the kitchen", "increase", "heat", "kitchen"),
    ("decrease the heat in the kitchen", "decrease", "heat", "kitchen"),
)
IC_SPLITS = {"train": ("en-us", "en-us+f2", "en+m3"), "valid": ("en-us+m1",), "test": ("en-us+f4",)}


@pytest.fixture(scope="module")
def student_checkpoint(tmp_path_factory):
    import torch

    from s3prl_star.checkpoint import save_student
    from s3prl_star.model import build_preset

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("student") / "tiny_star_hubert.pt"
    save_student(path, build_preset("star_hubert", **TINY_STUDENT))
    return path


def run_downstream(args, expected_line: str) -> str:
    """Run `s3prl-star downstream ARGS` from the repository root; returns stdout+stderr."""
    result = subprocess.run(
        CLI + ["downstream", *args, "--device", "cpu"], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert re.search(expected_line, output), f"no line matching {expected_line!r} in:\n{output[-4000:]}"
    return output


def make_fluent_commands(root: Path) -> Path:
    """Fluent Speech Commands layout: data/{train,valid,test}_data.csv + wavs/speakers/<spk>/*.wav."""
    from s3prl_star.synthetic import SAMPLE_RATE, _require_tools, synthesise

    tools = _require_tools()
    (root / "data").mkdir(parents=True)
    for split, voices in IC_SPLITS.items():
        rows = []
        for speaker, voice in enumerate(voices):
            speaker_id = f"{split}{speaker}"
            for index, (text, action, object_, location) in enumerate(COMMANDS):
                relative = f"wavs/speakers/{speaker_id}/{index}.wav"
                (root / relative).parent.mkdir(parents=True, exist_ok=True)
                sf.write(root / relative, synthesise(text, voice, tools), SAMPLE_RATE, subtype="PCM_16")
                rows.append([len(rows), relative, speaker_id, text, action, object_, location])
        with open(root / "data" / f"{split}_data.csv", "w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(["", "path", "speakerId", "transcription", "action", "object", "location"])
            writer.writerows(rows)
    return root


def test_intent_classification_trains_then_evaluates(tmp_path, student_checkpoint):
    corpus = make_fluent_commands(tmp_path / "fluent_speech_commands_dataset")
    expdir = tmp_path / "ic"
    overrides = (
        f"{FAST_RUNNER},,config.downstream_expert.datarc.file_path={corpus},,"
        "config.downstream_expert.datarc.train_batch_size=4,,config.downstream_expert.datarc.eval_batch_size=4"
    )
    run_downstream(
        ["-m", "train", "-u", "star_hubert", "-k", str(student_checkpoint), "-d", "fluent_commands",
         "-c", str(RECIPES / "fluent_commands" / "config.yaml"), "-p", str(expdir), "-o", overrides],
        r"Take a list of 12 features",
    )
    log = (expdir / "log.log").read_text()
    assert f"dev at step {STEPS}:" in log and f"test at step {STEPS}:" in log, log
    checkpoint = expdir / f"states-{STEPS}.ckpt"
    assert checkpoint.is_file()

    output = run_downstream(["-m", "evaluate", "-e", str(checkpoint)], r"test acc: [0-9.]+")
    accuracy = float(re.search(r"test acc: ([0-9.]+)", output).group(1))
    assert 0.0 <= accuracy <= 1.0


def test_asr_trains_then_evaluates_on_test_clean(tmp_path, student_checkpoint):
    from s3prl_star.synthetic import make_librispeech

    root = make_librispeech(tmp_path / "LibriSpeech", {"train-clean-100": 8, "dev-clean": 4, "test-clean": 4}, seed=3)
    splits = ["train-clean-100", "dev-clean", "test-clean"]
    prepared = subprocess.run(
        CLI + ["prepare-librispeech", str(root), "-o", str(tmp_path / "len_for_bucket"), "--splits", *splits],
        capture_output=True, text=True,
    )
    assert prepared.returncode == 0, prepared.stdout + prepared.stderr

    # The shipped character dictionary covers every transcript character (else they map to <unk>).
    symbols = {line.split(" ")[0] for line in (RECIPES / "asr" / "char.dict").read_text().splitlines()}
    transcripts = [line.split(" ", 1)[1] for path in root.rglob("*.trans.txt") for line in path.read_text().splitlines()]
    assert set("".join(transcripts).replace(" ", "|")) <= symbols

    expdir = tmp_path / "asr"
    overrides = (
        f"{FAST_RUNNER},,config.downstream_expert.datarc.libri_root={root},,"
        f"config.downstream_expert.datarc.bucket_file={tmp_path / 'len_for_bucket'},,"
        "config.downstream_expert.datarc.train_batch_size=4,,config.downstream_expert.datarc.batch_size=4,,"
        "config.downstream_expert.modelrc.project_dim=32,,config.downstream_expert.modelrc.RNNs.dim=[32, 32]"
    )
    run_downstream(
        ["-m", "train", "-u", "star_hubert", "-k", str(student_checkpoint), "-d", "asr",
         "-c", str(RECIPES / "asr" / "config.yaml"), "-p", str(expdir), "-o", overrides],
        r"dev-clean wer: [0-9.]+",
    )
    checkpoint = expdir / f"states-{STEPS}.ckpt"
    assert checkpoint.is_file()

    output = run_downstream(["-m", "evaluate", "-t", "test-clean", "-e", str(checkpoint)], r"test-clean wer: [0-9.]+")
    wer = float(re.search(r"test-clean wer: ([0-9.]+)", output).group(1))
    assert wer >= 0.0


"""Constants and helpers the test files share: the tiny student shapes and `s3prl-star downstream` runs.

Imported as `helpers`: pytest's default (prepend) import mode puts tests/ (no __init__.py) on
sys.path, as for `from test_pretrain import ...`. The matching fixtures are in conftest.py.
"""
import re
import struct
import subprocess
import sys
from pathlib import Path

from tensorboardX.proto import event_pb2

from s3prl_star.model.config import StarHubertConfig

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "downstream_recipes"
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
    """Run `s3prl-star downstream ARGS --device cpu` from the repository root: (exit status, stdout+stderr)."""
    result = subprocess.run(
        [CLI, "downstream", *args, "--device", "cpu"], cwd=REPO, capture_output=True, text=True, timeout=600
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

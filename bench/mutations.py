"""How well the tests guard the code: one-line bugs applied one at a time, each run against the tests that
cover its module; a bug is caught when a test fails. Prints a row per bug and the share caught.

    .venv/bin/python bench/mutations.py [--only N,M] [--slow]    (from the repository root; restores every file)

Without --slow a bug is run against the fast tests only (`-m 'not slow'`); with --slow, also against the
slow tests listed beside it. The bugs are this project's own choice: the kind of one-line slips the code
they sit in invites (a comparison flipped, a tie rule reversed, a constant changed, a check dropped).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    file: str
    old: str  # must occur exactly once in the file
    new: str
    tests: tuple[str, ...]  # pytest selections (files or node ids) that should catch it
    slow: tuple[str, ...] = ()  # slow tests that also cover it (run with --slow)


SCORING = ("tests/test_superb_scoring.py", "tests/test_superb_score.py")
RESULTS = ("tests/test_superb_score.py", "tests/test_superb_outputs.py", "tests/test_named_errors.py")
DRIVER = ("tests/test_superb_driver.py", "tests/test_superb_outputs.py")
TEACHER = ("tests/test_hubert_pretrain.py", "tests/test_crafted_inputs.py")
RUNNER_CHECKPOINTS = ("tests/test_faults_checkpoint.py", "tests/test_pretrain.py", "tests/test_distill_resume.py")
CHECKPOINT = ("tests/test_checkpoint.py", "tests/test_crafted_inputs.py", "tests/test_inputs.py")

MUTATIONS = (
    # superb/scorers
    Mutation("s3prl_star/superb/scorers/asv.py", "best = min(eers, key=eers.get)", "best = max(eers, key=eers.get)",
             SCORING, ("tests/test_superb_tasks.py::test_speaker_verification_trains_on_any_device_then_ends_in_the_lowest_checkpoint_eer",)),
    Mutation("s3prl_star/superb/scorers/asv.py", "key=lambda path: checkpoint_step(path.parent.name))",
             "key=lambda path: -checkpoint_step(path.parent.name))", SCORING),
    Mutation("s3prl_star/superb/scorers/qbe.py", "DEFAULT_SCORE = -10.0", "DEFAULT_SCORE = 0.0", SCORING),
    Mutation("s3prl_star/superb/scorers/qbe.py", "P_TARGET = 0.0008", "P_TARGET = 0.008", SCORING),
    Mutation("s3prl_star/superb/scorers/qbe.py", "return float(max(0.0, values.max()))", "return float(values.max())",
             SCORING),
    Mutation("s3prl_star/superb/scorers/diarization.py",
             "return 100.0 * (self.missed + self.false_alarm + self.confusion) / self.scored",
             "return 100.0 * (self.missed + self.confusion) / self.scored", SCORING),
    # superb/tasks, results, policy, score
    Mutation("s3prl_star/superb/tasks.py", 'dev_line=DevLine(r"^dev per: (\\S+)$", higher_is_better=False)',
             'dev_line=DevLine(r"^dev per: (\\S+)$", higher_is_better=True)', RESULTS),
    Mutation("s3prl_star/superb/tasks.py", '"best-states-dev.ckpt", scorer=_diarization_error_rate',
             '"dev-best.ckpt", scorer=_diarization_error_rate', ("tests/test_superb_score.py", "tests/test_superb_tasks.py"),
             ("tests/test_superb_tasks.py::test_speaker_diarization_trains_then_ends_in_der",)),
    Mutation("s3prl_star/superb/tasks.py", 'ER_FOLDS = tuple(f"fold{index}" for index in range(1, 6))',
             'ER_FOLDS = tuple(f"fold{index}" for index in range(1, 5))', ("tests/test_superb_tasks.py", *RESULTS),
             ("tests/test_superb_driver.py::test_driver_runs_the_five_er_folds_and_pr",)),
    Mutation("s3prl_star/superb/results.py", "layer = max(dev, key=lambda key: (dev[key], -key))",
             "layer = max(dev, key=lambda key: (dev[key], key))", RESULTS),
    Mutation("s3prl_star/superb/results.py", 'if re.match(r"^test at step [1-9]\\d*: ", line)]',
             'if re.match(r"^test at step \\d+: ", line)]', RESULTS),
    Mutation("s3prl_star/superb/results.py", "best = (max if higher else min)(scored, key=lambda trial: scored[trial][0])",
             "best = (min if higher else max)(scored, key=lambda trial: scored[trial][0])", RESULTS),
    Mutation("s3prl_star/superb/results.py", "return TaskResult({task.metric_keys[0]: 100.0 * mean(values)}, name, notes)",
             "return TaskResult({task.metric_keys[0]: 100.0 * max(values)}, name, notes)", RESULTS,
             ("tests/test_superb_driver.py::test_driver_runs_the_five_er_folds_and_pr",)),
    Mutation("s3prl_star/superb/results.py",
             "return {metric.key: metric.scale * printed_metric(log, metric.split, metric.name) for metric in task.printed}",
             "return {metric.key: printed_metric(log, metric.split, metric.name) for metric in task.printed}", RESULTS),
    Mutation("s3prl_star/superb/results.py", "ignored = [path.name for path in found if path.name not in names]",
             "ignored = []", RESULTS),
    Mutation("s3prl_star/superb/policy.py", "LR_GRID = (0.1, 1.0, 10.0)", "LR_GRID = (0.1, 1.0, 100.0)", DRIVER),
    Mutation("s3prl_star/superb/policy.py", "return task.selection is Selection.EVALUATE_DEV_BEST or (submission and logged)",
             "return task.selection is Selection.EVALUATE_DEV_BEST or logged", DRIVER,
             ("tests/test_superb_driver.py::test_driver_runs_tasks_survives_a_kill_and_skips_missing_data",)),
    Mutation("s3prl_star/superb/score.py", "        return 100.0 - value", "        return value",
             ("tests/test_superb_score.py",)),
    Mutation("s3prl_star/superb/score.py", 'ERROR_RATES = ("PR_per", "ASR_wer", "ASV_eer", "SD_der", "SF_cer")',
             'ERROR_RATES = ("PR_per", "ASR_wer", "ASV_eer", "SD_der")', ("tests/test_superb_score.py",)),
    Mutation("s3prl_star/superb/runs.py", "return checkpoints[-1] if checkpoints else None",
             "return checkpoints[0] if checkpoints else None", DRIVER,
             ("tests/test_superb_driver.py::test_driver_runs_tasks_survives_a_kill_and_skips_missing_data",)),
    # mini_superb/teacher_pretrain
    Mutation("s3prl_star/mini_superb/teacher_pretrain.py", "second = torchaudio.functional.compute_deltas(first)",
             "second = torchaudio.functional.compute_deltas(mfcc.T)", TEACHER),
    Mutation("s3prl_star/mini_superb/teacher_pretrain.py", "    if unmasked_weight > 0:", "    if unmasked_weight > 1:",
             TEACHER),
    Mutation("s3prl_star/mini_superb/teacher_pretrain.py", "return loss, (masked.argmax(1) == 0).sum(), torch.tensor(len(masked))",
             "return loss, (masked.argmax(1) == 1).sum(), torch.tensor(len(masked))", TEACHER),
    Mutation("s3prl_star/mini_superb/teacher_pretrain.py", "correct, total = correct + int(right), total + int(count)",
             "correct, total = correct + int(right), total + int(count) + 1", TEACHER),
    # integration: runner checkpoints and resume
    Mutation("s3prl_star/integration/patches/runner_checkpoints.py", "            self.pending_removals.append(path)",
             "            os.remove(path)", RUNNER_CHECKPOINTS),
    Mutation("s3prl_star/integration/patches/runner_checkpoints.py", "        if problem is not None:",
             "        if problem is not None and False:", RUNNER_CHECKPOINTS),
    Mutation("s3prl_star/integration/resume.py", "key=checkpoint_step, reverse=True):", "key=checkpoint_step):",
             RUNNER_CHECKPOINTS),
    # model/checkpoint
    Mutation("s3prl_star/model/checkpoint.py", "    if non_finite:", "    if non_finite and False:", CHECKPOINT),
    Mutation("s3prl_star/model/checkpoint.py", "if tuple(state_dict[key].shape) != tuple(expected[key].shape)",
             "if tuple(state_dict[key].shape) != tuple(expected[key].shape) and False", CHECKPOINT),
    Mutation("s3prl_star/model/checkpoint.py", '    if "Student" in state:', '    if "Students" in state:', CHECKPOINT),
)


def run_tests(selections: tuple[str, ...], slow: bool) -> tuple[bool, float]:
    """(whether every selected test passed, seconds)."""
    started = time.monotonic()
    command = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *selections]
    if not slow:
        command += ["-m", "not slow"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=3600)
    return result.returncode == 0, time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma list of 1-based mutation numbers")
    parser.add_argument("--slow", action="store_true", help="also run the slow tests listed beside each bug")
    args = parser.parse_args()
    chosen = [int(n) for n in args.only.split(",")] if args.only else range(1, len(MUTATIONS) + 1)
    caught = 0
    for number in chosen:
        mutation = MUTATIONS[number - 1]
        path = REPO / mutation.file
        original = path.read_text()
        if original.count(mutation.old) != 1:
            raise SystemExit(f"mutation {number}: {mutation.old!r} occurs {original.count(mutation.old)} times in {path}")
        path.write_text(original.replace(mutation.old, mutation.new))
        try:
            passed, seconds = run_tests(mutation.tests + (mutation.slow if args.slow else ()), args.slow)
        finally:
            path.write_text(original)
        caught += not passed
        verdict = "survived" if passed else "caught"
        print(f"{number:2d} {verdict:8s} {seconds:6.1f}s {mutation.file}: {mutation.new.strip()[:90]}", flush=True)
    print(f"caught {caught} of {len(chosen)} ({100 * caught / len(chosen):.0f} %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

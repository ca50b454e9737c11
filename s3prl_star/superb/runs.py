"""The runs of a task: `s3prl-star downstream` subprocesses (`s3prl_star.processes.run_cli`) for
trainings, test evaluations and QbE's per-layer DTW, in the layout `results` reads.

Each run executes through the launcher (`launch`: a subprocess here, or a SLURM batch job); its stdout goes
to a file `results` parses, its stderr to the same name with `.err`; progress lines (task, run, step, time
left) come from the runner's tqdm bars. A failed run raises TaskFailed quoting the error it printed.
"""
from __future__ import annotations

import argparse
import json
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from s3prl_star.integration.resume import checkpoint_step
from s3prl_star.processes import Progress
from s3prl_star.superb import policy, results
from s3prl_star.superb.data_file import TaskData, data_overrides
from s3prl_star.superb.launch import LocalLauncher, RunFailed, SlurmLauncher
from s3prl_star.superb.tasks import Selection, Task


class TaskFailed(RuntimeError):
    """A run of the task failed; the message names its log."""


@dataclass
class Context:
    """What every task of one driver invocation shares."""

    upstream: list[str]  # -u/-k/-g as s3prl takes them
    out: Path
    data_file: Path
    common_overrides: str
    data: dict[str, TaskData]
    device: str
    lr_search: bool
    submission: bool
    launcher: LocalLauncher | SlurmLauncher  # where the runs execute
    progress_every: float
    print_lock: threading.Lock = field(default_factory=threading.Lock)

    def say(self, message: str) -> None:
        with self.print_lock:
            print(f"superb: {message}", flush=True)


def run_downstream(ctx: Context, label: str, argv: list[str], stdout: Path, gpu: str | None, append: bool = False):
    """`s3prl-star downstream ARGV --device D` through the launcher: stdout to `stdout`, stderr to the same name
    with `.err`; the runner's progress printed at most every `ctx.progress_every` seconds. Raises TaskFailed."""
    last_print = [0.0]

    def show(progress: Progress) -> None:
        if time.monotonic() - last_print[0] >= ctx.progress_every:
            last_print[0] = time.monotonic()
            ctx.say(f"{label}: {progress}")

    try:
        ctx.launcher.run(label, ["downstream", *argv, "--device", ctx.device], stdout, append, gpu, show)
    except RunFailed as error:
        raise TaskFailed(str(error)) from None


def latest_checkpoint(expdir: Path) -> Path | None:
    checkpoints = sorted(expdir.glob("states-*.ckpt"), key=checkpoint_step)
    return checkpoints[-1] if checkpoints else None


def train(ctx: Context, task: Task, label: str, expdir: Path, overrides: list[str], gpu: str | None) -> None:
    """Train in `expdir` unless done: resume with `-a` from its last checkpoint, else start afresh."""
    if (expdir / results.TRAIN_DONE).is_file():
        return
    resume = latest_checkpoint(expdir) is not None
    earlier_job = ctx.launcher.has_earlier_job(label, expdir / results.TRAIN_LOG)  # the launcher says what it found
    if not resume and expdir.exists() and not earlier_job:
        shutil.rmtree(expdir)  # killed before its first checkpoint: nothing to keep
    if not earlier_job:
        ctx.say(f"{label}: {'resuming training from ' + latest_checkpoint(expdir).name if resume else 'training'}")
    argv = ["-m", "train", *ctx.upstream, "-d", task.downstream, "-c", str(task.config), "-p", str(expdir),
            "-o", ",,".join(overrides), *(["-a"] if resume else [])]
    run_downstream(ctx, label, argv, expdir / results.TRAIN_LOG, gpu, append=True)
    (expdir / results.TRAIN_DONE).write_text(time.strftime("%Y-%m-%d %H:%M:%S\n"))


def evaluate_dev_best(ctx: Context, task: Task, label: str, expdir: Path, gpu: str | None) -> None:
    """`-m evaluate -t TEST -e` the dev-best checkpoint (or, when dev never improved, the last one, noted)."""
    checkpoint = expdir / task.dev_best_checkpoint
    notes = []
    if not checkpoint.is_file():
        checkpoint = latest_checkpoint(expdir)
        if checkpoint is None:
            raise TaskFailed(f"{label}: no {task.dev_best_checkpoint} and no states-*.ckpt in {expdir}")
        notes.append(f"{label}: dev never improved on the expert's initial best (no {task.dev_best_checkpoint}); "
                     f"evaluated the last checkpoint, {checkpoint.name}")
    ctx.say(f"{label}: evaluating {checkpoint.name} on {task.test_split}")
    run_downstream(ctx, label, ["-m", "evaluate", "-t", task.test_split, "-e", str(checkpoint)],
                   expdir / results.EVALUATE_LOG, gpu)
    (expdir / results.NOTES_FILE).write_text("".join(f"{note}\n" for note in notes))
    if task.scorer is not None:
        write_json(expdir / results.METRIC_FILE, task.scorer(expdir, ctx.data[task.key].paths))
    (expdir / results.EVALUATE_DONE).write_text(checkpoint.name + "\n")


def evaluate_every_checkpoint(ctx: Context, label: str, expdir: Path, gpu: str | None) -> None:
    """ASV: `-m evaluate -e` each `states-*.ckpt` into `EXPDIR/states-STEP/` (`s3prl_star.superb.scorers.asv`'s layout)."""
    for checkpoint in sorted(expdir.glob("states-*.ckpt"), key=checkpoint_step):
        output_dir = expdir / checkpoint.stem
        if (output_dir / results.EVALUATE_DONE).is_file():
            continue
        ctx.say(f"{label}: evaluating {checkpoint.name} on test")
        run_downstream(ctx, label, ["-m", "evaluate", "-e", str(checkpoint), "-o", f"args.expdir={output_dir}"],
                       output_dir / "log.txt", gpu)
        (output_dir / results.EVALUATE_DONE).write_text(checkpoint.name + "\n")


class WriteFailed(RuntimeError):
    """A file of OUT could not be written (a full disk, a read-only folder); the message names it.
    Nothing half-written is left: the previous file, if any, is intact."""


def write_json(path: Path, data) -> None:
    """`data` as JSON in `path`, atomically; WriteFailed naming `path` (not the temporary file) on OSError."""
    from s3prl_star.atomic import write_atomically  # imports torch: not for a command that only fails early

    try:
        write_atomically(path, lambda temporary: Path(temporary).write_text(json.dumps(data, indent=2) + "\n"))
    except OSError as error:
        raise WriteFailed(f"cannot write {path}: {error.strerror or error}") from None


def run_trained_task(ctx: Context, task: Task, gpu: str | None) -> None:
    """Every trial (learning rate) of a task that trains: training and its test evaluation(s)."""
    entry = ctx.data[task.key]
    user = [text for text in (ctx.common_overrides, entry.overrides) if text]
    for learning_rate in policy.learning_rates(task, ctx.lr_search, user):
        trial = results.task_dir(ctx.out, task) / results.trial_name(learning_rate)
        # after the user's overrides: the trial's rate wins over a DATA.yaml `config.optimizer.lr`
        lr_override = [f"config.optimizer.lr={learning_rate}"]
        for expdir, fold in policy.expdirs(task, trial):
            label = "/".join(part for part in (task.name, trial.name, fold) if part)
            overrides = [*data_overrides(entry), *policy.fold_overrides(task, fold), *user, *lr_override]
            train(ctx, task, label, expdir, overrides, gpu)
            if policy.evaluates_dev_best(task, ctx.submission) and not (expdir / results.EVALUATE_DONE).is_file():
                evaluate_dev_best(ctx, task, label, expdir, gpu)
            if task.selection is Selection.LOWEST_OVER_CHECKPOINTS:
                evaluate_every_checkpoint(ctx, label, expdir, gpu)


def count_hidden_states(upstream: list[str]) -> int:
    """How many hidden states the upstream gives (QbE runs DTW on each), from one second of noise."""
    import torch

    from s3prl_star.integration import patches
    from s3prl_star.integration.hub import register

    patches.apply()
    register()
    import s3prl.hub

    args = argparse.ArgumentParser(add_help=False)
    args.add_argument("-u")
    args.add_argument("-k")
    args.add_argument("-g")
    parsed = args.parse_args(upstream)
    model = getattr(s3prl.hub, parsed.u)(ckpt=parsed.k, model_config=parsed.g).eval()
    with torch.no_grad():
        return len(model([torch.randn(16000)])["hidden_states"])


def run_qbe(ctx: Context, task: Task, gpu: str | None) -> None:
    """Every layer on dev (MTWV), then the best dev layer on test; scores kept in OUT/qbe/metric.json."""
    from s3prl_star.superb.scorers.qbe import mtwv_of_run

    root = ctx.data[task.key].paths["datarc.dataset_root"]
    overrides = ",,".join([*data_overrides(ctx.data[task.key]),
                           *(text for text in (ctx.common_overrides, ctx.data[task.key].overrides) if text)])
    store = results.task_dir(ctx.out, task) / results.METRIC_FILE
    scores = json.loads(store.read_text()) if store.is_file() else {"dev": {}, "test": {}}

    def evaluate(layer: int, split: str) -> None:
        expdir = results.qbe_dir(ctx.out, layer, split)
        label = f"QbE/layer{layer}-{split}"
        ctx.say(f"{label}: DTW over every query and document")
        run_downstream(ctx, label, ["-m", "evaluate", "-t", split, *ctx.upstream, "-d", task.downstream,
                                    "-c", str(task.config), "-l", str(layer), "-p", str(expdir), "-o", overrides],
                       expdir / results.EVALUATE_LOG, gpu)
        scores[split][str(layer)] = mtwv_of_run(expdir, root, split)
        write_json(store, scores)

    for layer in range(count_hidden_states(ctx.upstream)):
        if str(layer) not in scores["dev"]:
            evaluate(layer, "dev")
    best = max(scores["dev"], key=lambda key: (scores["dev"][key], -int(key)))
    if best not in scores["test"]:
        evaluate(int(best), "test")

"""`s3prl-star demo OUT`: the mini-SUPERB, end to end, from nothing: corpus, teacher, STaR, tasks, score.

No weights or corpora are downloaded, so the demo makes its own small but real case:
1. `s3prl-star corpus`: espeak-ng speech in the on-disk layouts of LibriSpeech (ASR, PR), Speech
   Commands (KS), VoxCeleb1 (SID), Fluent Speech Commands (IC) and IEMOCAP (ER);
2. `s3prl-star teacher-pretrain`: a 6-layer HuBERT trained on it with HuBERT's first-iteration
   recipe, saved in the format s3prl's `hubert_local` reads;
3. `s3prl-star pretrain -u star_hubert`: the `star_hubert_mini` student distilled from it with STaR,
   Gram matrices of l2-normalised frames (see `star`) (s3prl's pretrain runner, the teacher loaded
   through `hubert_local`, as HuBERT Base would be);
4. `s3prl-star superb`: the mini tasks (downstream_recipes/mini.yaml on top of each task's recipe,
   s3prl's downstream runner) for FBANK, the teacher and the student;
5. `s3prl-star score`: the table (OUT/score.md) and the plot (OUT/score.png).
With `--compare` it also distils the baselines and the ablation at equal steps and runs their
tasks: an untrained student, DistilHuBERT's objective, STaR's layer-wise term only, its
intra-layer term only, and both terms plus the attention-map term; `--seeds N` repeats every
student row with N distillation seeds, all rows of one seed before the next seed's. Every stage is
one of the user-facing commands, run as a subprocess, and resumable: run the same command again
after an interruption and finished stages are kept (each command resumes its own work).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from s3prl_star import processes, resources

TASKS = ("pr", "asr", "ks", "sid", "ic", "er")
# The default: within the mini budget ASR and IC stay at their floor for every upstream and ER separates
# none, while its 5 folds cost much of a row's time (docs/mini_superb.md); `--tasks` runs them.
DEFAULT_TASKS = ("pr", "ks", "sid")
# FBANK on the utterance-level tasks: s3prl's `fbank` normalises every utterance to zero mean and unit
# variance per channel, so a linear projector then mean pooling gives every utterance the same input (one
# label for all); `fbank_no_cmvn` is the same feature without that normalisation (docs/mini_superb.md).
FBANK_NO_CMVN_TASKS = ("ks", "sid", "ic", "er")
STUDENT_PRESET = "star_hubert_mini"


@dataclass(frozen=True)
class Objective:
    """A distillation objective of the comparison: `objective` replaces config_model.yaml's section."""

    label: str
    objective: dict | None  # None: no distillation (the untrained student)


def star(layerwise: float, intra: float, attention: float) -> dict:
    """A STaR objective of the demo. Its Gram matrices are of l2-normalised frames (cosine similarities):
    the mini teacher (128 wide) and student (72 wide) are both post-LayerNorm, so their raw Gram entries
    differ by the width ratio, and in a few hundred steps the raw loss spent the student on matching that
    scale (docs/mini_superb.md)."""
    return {"kind": "star", "layerwise_weight": layerwise, "intra_weight": intra, "attention_weight": attention,
            "normalize": "l2"}


STAR = Objective("star", star(1.0, 1.0, 0.0))
BASELINES = (
    Objective("untrained", None),
    Objective("distilhubert", {"kind": "distilhubert"}),
    Objective("star_layerwise", star(1.0, 0.0, 0.0)),
    Objective("star_intra", star(0.0, 1.0, 0.0)),
    Objective("star_attention", star(1.0, 1.0, 1.0)),
)


def run(*args: str, log: Path | None = None, threads: int | None = None, stdout: Path | None = None) -> None:
    """One `s3prl-star` subcommand in a subprocess (`processes.run_cli`). Its output is shown as it comes,
    or with `log` appended to that file (a stage running beside another); `stdout` (with `log`) keeps
    stdout in a file of its own. `threads`: the subprocess' OMP_NUM_THREADS (None: torch's default).
    A failure stops the demo (SystemExit), naming the log and quoting the error."""
    print(("\n" if log is None else f"demo: [{log.stem}] ") + "$ s3prl-star " + " ".join(args), flush=True)
    env = None if threads is None else {"OMP_NUM_THREADS": str(threads)}
    try:
        if stdout is not None:
            processes.run_cli(args, stdout=stdout, stderr=log, append=False, env=env)
        else:
            processes.run_cli(args, stdout=log, append=log is not None, env=env)
    except processes.CommandFailed as error:
        raise SystemExit(f"demo: {error}; run the demo again to resume from the last finished step") from None


class Stages:
    """Stages run `jobs` at a time, each a function of its log file (OUT/logs/<name>.log) that runs
    subcommands with `run(..., log=log, threads=self.threads)`. On a CPU the cores are shared out, a
    thread per stage: single-threaded stages side by side get more done than one after the other with
    every thread (docs/mini_superb.md); the count is set, never left to torch, so that a rerun on the same
    machine computes in the same order and prints the same table. Every 60 s the running stages' latest
    progress line is printed."""

    def __init__(self, logs: Path, jobs: int, device: str):
        from concurrent.futures import ThreadPoolExecutor

        logs.mkdir(parents=True, exist_ok=True)
        self.logs, self.pool = logs, ThreadPoolExecutor(jobs)
        self.threads = max(1, (os.cpu_count() or 1) // jobs) if device == "cpu" else None
        self.started: dict[str, float] = {}
        self.futures: dict = {}

    def submit(self, name: str, stage):
        def timed():
            self.started[name] = time.monotonic()
            try:
                return stage(self.logs / f"{name}.log")
            finally:
                print(f"demo: [{name}] ended after {(time.monotonic() - self.started.pop(name)) / 60:.1f} min",
                      flush=True)

        self.futures[name] = self.pool.submit(timed)
        return self.futures[name]

    def wait(self) -> None:
        """Until every stage ends; the first failure stops the others and is raised."""
        from concurrent.futures import FIRST_EXCEPTION, wait

        pending = set(self.futures.values())
        try:
            while pending:
                done, pending = wait(pending, timeout=60, return_when=FIRST_EXCEPTION)
                for future in done:
                    if future.exception() is not None:
                        raise future.exception()
                for name, since in list(self.started.items()):
                    print(f"demo: [{name}] {(time.monotonic() - since) / 60:.1f} min: "
                          f"{last_progress(self.logs / f'{name}.log')}", flush=True)
        except BaseException:
            for future in pending:
                future.cancel()
            processes.terminate_running()
            raise
        finally:
            self.pool.shutdown(wait=True)


def last_progress(log: Path) -> str:
    """The last line (or tqdm update) written to `log`."""
    return processes.last_line(processes.tail(log, 2000))[-160:]


def write_yaml(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def mini_data_file(corpus_data: Path, out: Path, size: str, tasks: list[str], task_steps: int | None) -> Path:
    """The corpus' DATA.yaml with absolute paths and the mini recipe's overrides per task (the `small`
    ones, then the `size` corpus' own); with `task_steps`, every task trains that many steps
    (evaluating and saving at the last)."""
    data = yaml.safe_load(corpus_data.read_text())
    mini = yaml.safe_load((resources.recipes() / "mini.yaml").read_text())
    steps = "" if task_steps is None else (
        f"config.runner.total_steps={task_steps},,config.runner.eval_step={task_steps},,"
        f"config.runner.save_step={task_steps},,config.runner.log_step={max(task_steps // 2, 1)},,"
        f"config.scheduler.num_warmup_steps={max(task_steps // 10, 1)}")
    merged = {}
    for task in tasks:
        if task not in data:
            raise SystemExit(f"demo: {corpus_data} has no '{task}' entry")
        entry = dict(data[task])
        sized = mini[size].get(task) if size != "small" else None
        overrides = [entry.pop("overrides", None), mini["small"][task], sized, steps]
        for key, value in entry.items():
            entry[key] = [str((corpus_data.parent / v).resolve()) for v in value] if isinstance(value, list) \
                else str((corpus_data.parent / value).resolve())
        pieces = [piece.strip() for text in overrides if text for piece in text.split(",,") if piece.strip()]
        merged[task] = {**entry, "overrides": ",,".join(pieces)}
    return write_yaml(out / "data.yaml", merged)


def distil(out: Path, name: str, objective: dict, teacher: Path, libri: Path, steps: int, lr: float, seed: int,
           device: str, **output) -> Path:
    """A student of STUDENT_PRESET distilled for `steps` steps at peak learning rate `lr`; returns its
    last checkpoint. `output`: run()'s log and threads."""
    expdir = out / "distill" / name
    final = last_step_checkpoint(expdir, steps)
    if final is not None:
        print(f"demo: {final} is already distilled", flush=True)
        return final
    model_config = yaml.safe_load((resources.pretrain_plugin() / "config_model.yaml").read_text())
    model_config["student"] = {"preset": STUDENT_PRESET}
    model_config["teacher"] = {"name": "hubert_local", "ckpt": str(teacher), "model_config": None, "layer_map": None}
    if objective["kind"] == "star":  # the ablations change the weights of the recipe's STaR objective
        objective = {**model_config["objective"], **objective}
    model_config["objective"] = objective
    runner_config = yaml.safe_load((resources.pretrain_plugin() / "config_runner.yaml").read_text())
    runner_config["runner"].update(n_epochs=-1, total_steps=steps, gradient_accumulate_steps=1,
                                   log_step=max(steps // 10, 1), save_step=max(steps // 4, 1), max_keep=2)
    runner_config["scheduler"]["num_warmup_steps"] = max(round(0.05 * steps), 1)  # the paper's 5 %
    runner_config["optimizer"]["lr"] = lr
    runner_config["pretrain_expert"]["datarc"].update(
        libri_root=str(libri), file_path=str(libri.parent / "len_for_bucket"), sets=["train-clean-100"],
        train_batch_size=8, num_workers=2)
    configs = out / "distill" / "configs"
    run("pretrain", "-a", "-u", "star_hubert", "--device", device, "-p", str(expdir), "--seed", str(seed),
        "-g", str(write_yaml(configs / f"{name}_model.yaml", model_config)),
        "-c", str(write_yaml(configs / f"{name}_runner.yaml", runner_config)), **output)
    final = last_step_checkpoint(expdir, steps)
    if final is None:
        raise SystemExit(f"demo: the distillation in {expdir} ended without a checkpoint of step {steps}")
    return final


def last_step_checkpoint(expdir: Path, steps: int) -> Path | None:
    """The checkpoint s3prl's runner saved after the last of `steps` steps (it names that one by epochs,
    `states-epoch-N.ckpt`, so it is found by its `Step`, which counts from 0), or None. Read weights-only."""
    from s3prl_star.model.checkpoint import read_checkpoint

    for path in sorted(expdir.glob("states-*.ckpt")):
        if read_checkpoint(path).get("Step") == steps - 1:
            return path
    return None


def student_runs(compare: bool, seeds: int) -> list[tuple[str, Objective, int]]:
    """(label, objective, seed) of every student run, in the order they start: every row of one seed
    before the next seed's, so an interrupted `--seeds N` leaves whole comparisons. Seed 0's label is
    the row's own, so `--seeds N+1` keeps the runs of `--seeds N`."""
    return [(objective.label if seed == 0 else f"{objective.label}_seed{seed}", objective, seed)
            for seed in range(seeds) for objective in (STAR,) + (BASELINES if compare else ())]


def untrained_student(out: Path, seed: int) -> Path:
    """A randomly initialised STUDENT_PRESET (the `seed`), saved as a student checkpoint."""
    import torch

    from s3prl_star.model.checkpoint import save_student
    from s3prl_star.model.star_hubert import build_preset

    path = out / "distill" / f"untrained_seed{seed}.ckpt"
    if not path.exists():
        torch.manual_seed(seed)
        save_student(path, build_preset(STUDENT_PRESET))
    return path


def superb(out: Path, label: str, upstream: list[str], data: Path, tasks: list[str], device: str, **output) -> Path:
    result = out / "superb" / label
    run("superb", *upstream, "--data", str(data), "--tasks", ",".join(tasks), "-o", str(result), "--device", device,
        **output)
    return result


def parse_args(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="s3prl-star demo", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for everything the demo makes (resumable)")
    parser.add_argument("--size", choices=("tiny", "small"), default="small",
                        help="corpus size: small (the demo, default) or tiny (a smoke run of the pipeline)")
    parser.add_argument("--teacher-steps", type=int, default=1200, help="teacher pre-training steps (default 1200)")
    parser.add_argument("--distill-steps", type=int, default=300, help="distillation steps of every student (default 300)")
    parser.add_argument("--distill-lr", type=float, default=8e-3,
                        help="peak distillation learning rate of every student (default 8e-3; the HuBERT Base "
                             "recipe's 1e-3 is for 118,900 steps)")
    parser.add_argument("--compare", action="store_true",
                        help="also the untrained student, DistilHuBERT's objective and the STaR ablation")
    parser.add_argument("--seeds", type=int, default=1, help="distillation seeds of every student row (default 1)")
    parser.add_argument("--tasks", default=",".join(DEFAULT_TASKS),
                        help=f"comma list of the mini tasks, of {', '.join(TASKS)} (default: {','.join(DEFAULT_TASKS)})")
    parser.add_argument("--task-steps", type=int, help="train every task this many steps (default: downstream_recipes/mini.yaml's)")
    parser.add_argument("--jobs", type=int, default=2,
                        help="stages run side by side, each logging to OUT/logs/<stage>.log (default 2; on a CPU "
                             "they share the cores out)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = parser.parse_args(argv)
    args.tasks = [task.strip() for task in args.tasks.split(",") if task.strip()]
    unknown = sorted(set(args.tasks) - set(TASKS))
    if unknown or not args.tasks:
        parser.error(f"--tasks: unknown {', '.join(unknown) or 'empty list'}; expected some of {', '.join(TASKS)}")
    if args.task_steps is not None and args.task_steps < 1:
        parser.error(f"--task-steps must be positive, got {args.task_steps}")
    if min(args.teacher_steps, args.seeds, args.jobs) < 1 or args.distill_lr <= 0 or args.distill_steps < 2:
        parser.error("--teacher-steps, --distill-lr, --seeds and --jobs must be positive and --distill-steps "
                     "at least 2 (s3prl's runner logs and saves before the last step)")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"{args.out} is a file; give a folder")
    return args


def main(argv=None) -> int:
    started = time.monotonic()
    args = parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)

    run("corpus", str(out / "corpus"), "--size", args.size)
    libri = out / "corpus" / "LibriSpeech"
    data = mini_data_file(out / "corpus" / "data.yaml", out, args.size, args.tasks, args.task_steps)
    teacher = out / "teacher" / "teacher.pt"
    alone = Stages(out / "logs", 1, args.device)  # every later stage but FBANK's row needs the teacher
    alone.submit("teacher-pretrain", lambda log: run(
        "teacher-pretrain", str(libri), "-o", str(out / "teacher"), "--steps", str(args.teacher_steps),
        log=log, threads=alone.threads))
    alone.wait()
    stages = Stages(out / "logs", args.jobs, args.device)

    def upstream_row(label: str, upstream: list[str], tasks: list[str]):
        def stage(log: Path) -> Path:
            return superb(out, label, upstream, data, tasks, args.device, log=log, threads=stages.threads)
        return stages.submit(f"superb-{label}", stage)

    def fbank_rows() -> list:
        """FBANK's row: `fbank` on the frame-level tasks, `fbank_no_cmvn` on the utterance-level ones."""
        utterance = [task for task in args.tasks if task in FBANK_NO_CMVN_TASKS]
        frame = [task for task in args.tasks if task not in FBANK_NO_CMVN_TASKS]
        return [upstream_row(name, ["-u", name], tasks)
                for name, tasks in (("fbank", frame), ("fbank_no_cmvn", utterance)) if tasks]

    def student_row(label: str, objective: Objective, seed: int):
        def stage(log: Path) -> Path:
            if objective.objective is None:
                checkpoint = untrained_student(out, seed)
            else:
                checkpoint = distil(out, label, objective.objective, teacher, libri, args.distill_steps,
                                    args.distill_lr, seed, args.device, log=log, threads=stages.threads)
            return superb(out, label, ["-u", "star_hubert", "-k", str(checkpoint)], data, args.tasks, args.device,
                          log=log, threads=stages.threads)
        return stages.submit(f"student-{label}", stage)

    # Started in this order: on 2 cores the teacher's row, the longest, runs beside STaR's distillation
    # and row and then FBANK's short row, so that both end about together.
    teacher_row = upstream_row("teacher", ["-u", "hubert_local", "-k", str(teacher)], args.tasks)
    futures: dict[str, list] = {"fbank": [], "teacher": [teacher_row]}
    for position, (label, objective, seed) in enumerate(student_runs(args.compare, args.seeds)):
        futures.setdefault(objective.label, []).append(student_row(label, objective, seed))
        if position == 0:
            futures["fbank"] += fbank_rows()
    stages.wait()
    rows = {label: [future.result() for future in row] for label, row in futures.items()}

    runs = [path for paths in rows.values() for path in paths]
    run("score", *map(str, runs), "--md", "--plot", str(out / "score.png"), "--plot-metrics",
        log=out / "logs" / "score.log", stdout=out / "score.md")
    summary = summarise(rows)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    teacher_result = json.loads((out / "teacher" / "result.json").read_text())
    print("\n=== mini-SUPERB ===")
    print(f"teacher: {teacher_result['parameters']:,} parameters, held-out masked-prediction accuracy "
          f"{teacher_result['held_out_masked_accuracy']:.3f} (most frequent unit {teacher_result['majority_unit_accuracy']:.3f})")
    print(format_summary(summary))
    frame = [task.upper() for task in TASKS if task not in FBANK_NO_CMVN_TASKS]
    print(f"fbank: s3prl's `fbank` on {', '.join(frame)}, `fbank_no_cmvn` on "
          f"{', '.join(task.upper() for task in FBANK_NO_CMVN_TASKS)} (docs/mini_superb.md)")
    print(f"table: {out / 'score.md'}; plot: {out / 'score.png'}; logs: tensorboard --logdir {out}")
    print(f"demo: {(time.monotonic() - started) / 60:.1f} min")
    return 0


def summarise(rows: dict[str, list[Path]]) -> dict[str, dict[str, list[float]]]:
    """{row: {metric key: [value of each seed]}} from every run's results.json."""
    summary = {}
    for label, paths in rows.items():
        metrics: dict[str, list[float]] = {}
        for path in paths:
            for task in json.loads((path / "results.json").read_text())["tasks"].values():
                for key, value in (task.get("metrics") or {}).items():
                    metrics.setdefault(key, []).append(value)
        summary[label] = metrics
    return summary


def format_summary(summary: dict[str, dict[str, list[float]]]) -> str:
    """Markdown: a row per model, mean (and +- standard deviation over seeds) per metric."""
    keys = sorted({key for metrics in summary.values() for key in metrics})
    lines = ["| model | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for label, metrics in summary.items():
        cells = []
        for key in keys:
            values = metrics.get(key, [])
            if not values:
                cells.append("-")
            elif len(values) == 1:
                cells.append(f"{values[0]:.2f}")
            else:
                cells.append(f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)

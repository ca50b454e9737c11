"""`s3prl-star superb`: every SUPERB task of one upstream, trained, chosen on dev, tested, in one command.

    s3prl-star superb -u UPSTREAM [-k CKPT] [-g CONFIG] --data DATA.yaml --tasks all|pr,asr,... -o OUT \
        [--device cuda|cpu] [--gpus 0,1,...] [--lr-search] [--submission DIR] [--redo TASKS]
        [--launcher local|slurm] [--slurm-args "..."]
    s3prl-star superb --cancel -o OUT

Each task runs `s3prl-star downstream` subprocesses (s3prl's own runner) with its recipe in
downstream_recipes/ and the data paths of DATA.yaml as `-o` overrides (template:
downstream_recipes/data.yaml), then its metric is read back from s3prl's outputs
(`s3prl_star.superb.results`, which also documents the layout under OUT):
- PR, ASR, SF, SD: train, then `-m evaluate` the checkpoint the expert saved as best on dev (SD: DER
  of its predictions, `s3prl_star.superb.scorers.diarization`);
- KS, SID, IC: train; the test score logged at the last dev improvement (with `--submission`, the
  dev-best checkpoint is also evaluated, for its prediction file);
- ER: the same for each of the five folds (`datarc.test_fold=fold1..fold5`), averaged;
- ASV: train, then evaluate every saved `states-*.ckpt` on the test trials, the lowest EER (no dev set);
- QbE: no training: `-m evaluate -t dev -l L` for every hidden-state layer L, MTWV on dev
  (`s3prl_star.superb.scorers.qbe`), then the best dev layer on test.
Resumable: a task with `OUT/<task>/result.json` is not run again; an interrupted training continues
with `-a` from its last checkpoint; OUT is locked while a driver (or a run it started) works in it.
Each task's inputs are recorded before its first run (`provenance`): a rerun with other inputs
(overrides, the checkpoint's content, the learning rates, ...) refuses the task, naming what changed,
until `--redo TASK` moves its folder aside. `--submission DIR` is checked before any run and replaces
only the files it wrote (`submission`).
A task whose data DATA.yaml lacks, or whose paths do not exist, is reported as skipped with the path
looked for. With `--gpus`, one task per GPU runs at a time (`CUDA_VISIBLE_DEVICES`). With `--launcher slurm`
every run is a SLURM batch job (`launch`; `--slurm-args` for partition, GPUs, time), all tasks submitted at
once; a driver killed and started again adopts the jobs still queued or running; `--cancel -o OUT` cancels
them. Progress (task, run, step, time left) is printed from the runner's progress bar. OUT/results.json holds every
task's status and metrics, and the Overall / SUPERB score (`s3prl-star score OUT`), written atomically
after each task.
"""
from __future__ import annotations

import argparse
import os
import queue
import re
import shlex
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from s3prl_star.superb import launch, policy, provenance, results, submission
from s3prl_star.superb.out_folder import check_out, check_settings, lock
from s3prl_star.superb.data_file import DataError, missing_data, read_data_file
from s3prl_star.superb.runs import Context, TaskFailed, WriteFailed, run_qbe, run_trained_task, write_json
from s3prl_star.superb.tasks import TASKS, Selection, Task

RESULT_FILE = "result.json"  # a finished task's metrics (the driver's marker)


# --- the suite ---------------------------------------------------------------------------------

class UnreadableResult(ValueError):
    """A task's result.json cannot be read; the message names it."""


def run_task(ctx: Context, task: Task, gpus: queue.Queue) -> dict:
    """Run one task on a free slot; its entry of results.json. A task whose folder holds the runs of other
    inputs (`provenance`) is refused, naming what changed; a finished one is reported from its result.json
    (a damaged one is read again from its runs, which loses nothing)."""
    try:
        inputs = provenance.task_inputs(ctx, task)
    except (ValueError, OSError) as error:  # a learning rate that is not a number, an unreadable recipe
        ctx.say(f"{task.name}: failed, {type(error).__name__}: {error}")
        return {"status": "failed", "reason": f"{type(error).__name__}: {error}"}
    changed = provenance.changed_inputs(ctx, task, inputs)
    if changed:
        reason = f"{changed}; `--redo {task.key}` runs it again (its folder is kept, renamed)"
        ctx.say(f"{task.name}: refused, {reason}")
        return {"status": "refused", "reason": reason}
    done = results.task_dir(ctx.out, task) / RESULT_FILE
    if done.is_file() and not policy.needs_predictions(task, ctx.submission):
        try:
            earlier = read_result(done)
            ctx.say(f"{task.name}: finished in an earlier run ({done})")
            return earlier
        except UnreadableResult as error:
            ctx.say(f"{task.name}: {error}; reading its result again from its runs")
    reason = missing_data(task, ctx.data.get(task.key), ctx.data_file)
    if reason:
        ctx.say(f"{task.name}: skipped, {reason}")
        return {"status": "skipped", "reason": reason}
    gpu = gpus.get()
    started = time.monotonic()
    try:
        provenance.record_inputs(ctx, task, inputs)
        if task.selection is Selection.LAYER_ON_DEV:
            run_qbe(ctx, task, gpu)
        else:
            run_trained_task(ctx, task, gpu)
        result = results.read_task(ctx.out, task, inputs["learning_rates"])
        entry = {"status": "done", "metrics": result.metrics, "chosen": result.chosen, "notes": result.notes,
                 "seconds": round(time.monotonic() - started, 1)}
        write_json(done, entry)
    except (TaskFailed, results.MissingOutput, WriteFailed) as error:
        ctx.say(f"{task.name}: failed, {error}")
        return {"status": "failed", "reason": str(error)}
    except Exception as error:  # a scorer's or the file system's: reported, and the other tasks go on
        traceback.print_exc()
        ctx.say(f"{task.name}: failed, {type(error).__name__}: {error}")
        return {"status": "failed", "reason": f"{type(error).__name__}: {error}"}
    finally:
        gpus.put(gpu)
    summary = ", ".join(f"{key} {value:.4g}" for key, value in result.metrics.items())
    ctx.say(f"{task.name}: done, {summary} ({result.chosen})")
    return entry


def read_result(path: Path) -> dict:
    """A finished task's entry from its result.json; UnreadableResult naming it when it is damaged (it is
    written atomically: empty or truncated means something else cut it)."""
    try:
        entry = results.json_object(path, "a finished task's entry")
    except results.MissingOutput as error:  # and MalformedOutput
        raise UnreadableResult(f"{error}") from None
    if entry.get("status") != "done" or not isinstance(entry.get("metrics"), dict) \
            or not isinstance(entry.get("chosen"), str):
        raise UnreadableResult(f"{path} is not a finished task's entry (status 'done', its metrics and chosen run)")
    return entry


def earlier_entry(ctx: Context, task: Task) -> dict:
    """The results.json entry of a task not in --tasks: its result from an earlier run, when the inputs
    it was made with are still this invocation's."""
    done = results.task_dir(ctx.out, task) / RESULT_FILE
    if not done.is_file():
        return {"status": "not run", "reason": "not in --tasks"}
    try:
        changed = provenance.changed_inputs(ctx, task, provenance.task_inputs(ctx, task))
        if changed:
            return {"status": "refused", "reason": f"not in --tasks, and {changed}; "
                                                   f"`--tasks {task.key} --redo {task.key}` runs it again"}
        return read_result(done)
    except (ValueError, OSError) as error:
        return {"status": "not run", "reason": f"not in --tasks; {error}"}


def task_entries(entries: dict[str, dict]) -> dict[str, dict]:
    """{task name: entry} of every task, in TASKS order."""
    return {task.name: entries.get(task.key, {"status": "not run", "reason": "not in --tasks"})
            for task in TASKS.values()}


def write_results(ctx: Context, entries: dict[str, dict]) -> None:
    """OUT/results.json: upstream, every task's entry (`entries`: this run's and the earlier ones kept),
    metrics, scores; atomically (WriteFailed naming it, the previous file intact)."""
    from s3prl_star.superb.score import score_model

    tasks = task_entries(entries)
    metrics = {key: value for entry in tasks.values() if entry["status"] == "done"
               for key, value in entry["metrics"].items()}
    reasons = {name: f"{entry['status']}: {entry.get('reason', '')}" for name, entry in tasks.items()
               if entry["status"] != "done"}
    score = score_model(ctx.out.name, metrics, reasons)
    write_json(ctx.out / "results.json", {
        "upstream": ctx.upstream, "tasks": tasks, "metrics": metrics,
        "overall": score.overall, "superb_score": score.superb_score,
        "partial_overall": score.partial_overall, "partial_superb_score": score.partial_superb_score,
        "missing_tasks": sorted(score.missing),
    })


def selected_tasks(text: str, option: str = "--tasks") -> list[Task]:
    if text == "all":
        return list(TASKS.values())
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in TASKS]
    if unknown or not names:
        raise DataError(f"{option}: unknown {', '.join(unknown) or '(empty)'}; expected 'all' or some of {','.join(TASKS)}")
    return [TASKS[name] for name in dict.fromkeys(names)]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="s3prl-star superb", description=__doc__.split("\n")[0])
    parser.add_argument("-u", "--upstream", required=True, help="any upstream name s3prl (or this plug-in) knows")
    parser.add_argument("-k", "--upstream_ckpt", help="the upstream's checkpoint (path or URL), as s3prl's -k")
    parser.add_argument("-g", "--upstream_model_config", help="the upstream's model config, as s3prl's -g")
    parser.add_argument("--data", required=True, type=Path, help="DATA.yaml (template: downstream_recipes/data.yaml)")
    parser.add_argument("--tasks", default="all", help="'all' or a comma list of " + ",".join(TASKS))
    parser.add_argument("-o", "--out", required=True, type=Path, help="output folder (resumable)")
    parser.add_argument("--device", choices=("cuda", "cpu"), help="default: cuda when available")
    parser.add_argument("--gpus", help="comma list of GPU ids: one task runs on each at a time")
    parser.add_argument("--lr-search", action="store_true",
                        help=f"train each task at {' / '.join(f'{f:g}' for f in policy.LR_GRID)} x its recipe's learning rate, choose on dev")
    parser.add_argument("--submission", type=Path, metavar="DIR",
                        help="gather the prediction files in the SUPERB leaderboard's layout (DIR/predict, DIR/predict.zip; "
                             "DIR outside OUT, and only files this tool wrote there are replaced)")
    parser.add_argument("--redo", metavar="TASKS",
                        help="'all' or a comma list of tasks (of --tasks) to run again from the start: their folders "
                             "are moved aside (OUT/ks -> OUT/ks.old-1), not deleted")
    parser.add_argument("--progress-every", type=float, default=30.0, metavar="SECONDS",
                        help="print a run's step and time left at most this often (default 30)")
    parser.add_argument("--launcher", choices=("local", "slurm"), default="local",
                        help="where runs execute: subprocesses here (default), or one SLURM batch job each")
    parser.add_argument("--slurm-args", default="", metavar="ARGS",
                        help="sbatch options of every job, e.g. \"--partition=gpu --gres=gpu:1 --time=24:00:00\"")
    parser.add_argument("--cancel", action="store_true",
                        help="cancel the SLURM jobs of the suite in OUT (`s3prl-star superb --cancel -o OUT`) and exit")
    return parser.parse_args(argv)


def prepare(args: argparse.Namespace, upstream: list[str], out: Path) -> tuple:
    """Everything checked and set up before any run, in this order: the options, DATA.yaml, the upstream's
    files, `--submission`, OUT (made, locked, its upstream), `--redo`. Returns (tasks, common overrides,
    DATA.yaml entries, the lock's descriptor, `--redo`'s lines); DataError / SubmissionError on bad input."""
    tasks = selected_tasks(args.tasks)
    redo = selected_tasks(args.redo, "--redo") if args.redo else []
    outside = [task.key for task in redo if task not in tasks]
    if outside:
        raise DataError(f"--redo: {', '.join(outside)} not in --tasks; expected some of the tasks this run runs")
    common, data = read_data_file(args.data.resolve())
    provenance.upstream_content(upstream)  # the checkpoint read (and hashed) once, before any run
    if args.submission:
        submission.check_target(args.submission, out)
    check_out(out)
    lock_fd = lock(out)
    check_settings(out, upstream)
    if args.submission:
        submission.prepare(args.submission.resolve())
    return tasks, common, data, lock_fd, set_aside(out, redo)


def _joined_option_values(argv: list[str], option: str) -> list[str]:
    """`OPTION VALUE` as `OPTION=VALUE`: argparse takes a value that starts with '-' (sbatch options) only so."""
    joined, index = [], 0
    while index < len(argv):
        if argv[index] == option and index + 1 < len(argv):
            joined.append(f"{option}={argv[index + 1]}")
            index += 2
        else:
            joined.append(argv[index])
            index += 1
    return joined


def cancel(out: Path) -> int:
    """`--cancel`: every queued or running SLURM job of OUT's suite cancelled; what was cancelled printed."""
    try:
        lines = launch.cancel(out)
    except launch.RunFailed as error:
        print(f"s3prl-star superb: {error}", file=sys.stderr)
        return 1
    for line in lines or [f"no queued or running SLURM job of {out}"]:
        print(f"superb: {line}")
    return 0


def launcher_of(args: argparse.Namespace, out: Path, lock_fd: int, say) -> launch.LocalLauncher | launch.SlurmLauncher:
    if args.launcher == "slurm":
        return launch.SlurmLauncher(out, shlex.split(args.slurm_args), say=say)
    return launch.LocalLauncher(out, lock_fd)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--cancel" in argv:  # needs only -o
        canceller = argparse.ArgumentParser(prog="s3prl-star superb --cancel", add_help=False)
        canceller.add_argument("--cancel", action="store_true")
        canceller.add_argument("-o", "--out", required=True, type=Path)
        return cancel(canceller.parse_known_args(argv)[0].out.resolve())
    args = parse_args(_joined_option_values(argv, "--slurm-args"))
    if args.launcher != "slurm" and args.slurm_args:
        print("s3prl-star superb: --slurm-args goes with --launcher slurm", file=sys.stderr)
        return 2
    if args.launcher == "slurm" and args.gpus:
        print("s3prl-star superb: --gpus is for --launcher local; give SLURM the GPUs in --slurm-args "
              "(e.g. --gres=gpu:1)", file=sys.stderr)
        return 2
    upstream = ["-u", args.upstream]
    upstream += ["-k", _maybe_path(args.upstream_ckpt)] if args.upstream_ckpt else []
    upstream += ["-g", str(Path(args.upstream_model_config).resolve())] if args.upstream_model_config else []
    if args.gpus and args.device == "cpu":
        print("s3prl-star superb: --gpus needs --device cuda", file=sys.stderr)
        return 2
    out = args.out.resolve()
    try:
        tasks, common, data, lock_fd, moved = prepare(args, upstream, out)
    except (DataError, submission.SubmissionError) as error:
        print(f"s3prl-star superb: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # -k / -g unreadable
        print(f"s3prl-star superb: cannot read {error.filename}: {error.strerror or error}", file=sys.stderr)
        return 2
    except WriteFailed as error:
        print(f"s3prl-star superb: {error}", file=sys.stderr)
        return 1
    device = args.device or _default_device(args)
    ctx = Context(upstream, out, args.data.resolve(), common, data, device, args.lr_search,
                  args.submission is not None, None, args.progress_every)
    ctx.launcher = launcher_of(args, out, lock_fd, ctx.say)
    # local: one task per GPU (or one at a time); SLURM: every task's jobs submitted at once, SLURM schedules
    slots = args.gpus.split(",") if args.gpus else [None] * (len(tasks) if args.launcher == "slurm" else 1)
    free: queue.Queue = queue.Queue()
    for slot in slots:
        free.put(slot)
    where = "SLURM batch jobs" if args.launcher == "slurm" else device
    ctx.say(f"{len(tasks)} task(s) on {where}" + (f", GPUs {args.gpus}" if args.gpus else "") + f"; output in {out}")
    for line in moved:
        ctx.say(line)
    entries = {task.key: earlier_entry(ctx, task) for task in TASKS.values() if task not in tasks}
    entries.update({task.key: {"status": "not run", "reason": "not run yet (in this run's --tasks)"} for task in tasks})
    entries_lock = threading.Lock()
    unwritten: list[str] = []  # why the last results.json write failed (cleared when a later one succeeds)

    def one(task: Task) -> None:
        entry = run_task(ctx, task, free)
        with entries_lock:
            entries[task.key] = entry
            try:
                write_results(ctx, entries)
                unwritten.clear()
            except WriteFailed as error:
                unwritten.append(str(error))
                ctx.say(str(error))

    with ThreadPoolExecutor(max_workers=len(slots)) as pool:
        list(pool.map(one, tasks))
    problems = [f"{status}: {', '.join(names)}" for status in ("failed", "refused")
                if (names := [task.name for task in tasks if entries[task.key]["status"] == status])]
    if args.submission:
        problems += gather_submission(ctx, args.submission, task_entries(entries))
    if unwritten:
        print(f"s3prl-star superb: {unwritten[-1]}", file=sys.stderr)
        return 1
    ctx.say(f"results in {out / 'results.json'}" + "".join(f"; {problem}" for problem in problems))
    return 1 if problems else 0


def gather_submission(ctx: Context, directory: Path, tasks: dict[str, dict]) -> list[str]:
    """`--submission DIR`: gather the prediction files (`submission.gather`), printing what it did; the
    problem, if it could not, for the last line."""
    try:
        lines = submission.gather(ctx.out, directory, tasks)
    except submission.SubmissionError as error:
        print(f"s3prl-star superb: {error}", file=sys.stderr)
        return ["submission not written"]
    except OSError as error:  # a full disk, a file vanished from OUT
        print(f"s3prl-star superb: --submission {directory}: {error.filename}: {error.strerror or error}",
              file=sys.stderr)
        return ["submission not written"]
    for line in lines:
        ctx.say(line)
    return []


def set_aside(out: Path, tasks: list[Task]) -> list[str]:
    """`--redo`: move each task's folder aside (OUT/ks -> OUT/ks.old-N), kept, never deleted; a line each."""
    lines = []
    for task in tasks:
        folder = results.task_dir(out, task)
        if not folder.exists():
            lines.append(f"{task.name}: --redo: no {folder} yet")
            continue
        try:
            lines.append(f"{task.name}: --redo: {folder} moved to {provenance.set_aside(folder)}")
        except OSError as error:
            raise DataError(f"--redo {task.key}: cannot rename {folder} ({error.strerror or error})") from None
    return lines


def _maybe_path(value: str) -> str:
    """A local checkpoint as an absolute path (runs start in the repository root); a URL as given."""
    return str(Path(value).resolve()) if os.path.exists(value) else value


def _default_device(args: argparse.Namespace) -> str:
    """cuda with --gpus, or when SLURM jobs ask for GPUs (the submitting host may have none); else cuda when
    this host has a GPU."""
    if args.gpus:
        return "cuda"
    if args.launcher == "slurm":
        return "cuda" if re.search(r"--gres=\S*gpu|--gpus|(^|\s)-G", args.slurm_args) else "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"

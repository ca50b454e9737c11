"""`s3prl-star superb`: every SUPERB task of one upstream, trained, chosen on dev, tested, in one command.

    s3prl-star superb -u UPSTREAM [-k CKPT] [-g CONFIG] --data DATA.yaml --tasks all|pr,asr,... -o OUT \
        [--device cuda|cpu] [--gpus 0,1,...] [--lr-search] [--submission DIR]

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
A task whose data DATA.yaml lacks, or whose paths do not exist, is reported as skipped with the path
looked for. With `--gpus`, one task per GPU runs at a time (`CUDA_VISIBLE_DEVICES`). Progress
(task, run, step, time left) is printed from the runner's progress bar. OUT/results.json holds every
task's status and metrics, and the Overall / SUPERB score (`s3prl-star score OUT`), written atomically
after each task.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import queue
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from s3prl_star.superb import policy, results
from s3prl_star.superb.data_file import DataError, missing_data, read_data_file
from s3prl_star.superb.runs import Context, TaskFailed, run_qbe, run_trained_task, write_json
from s3prl_star.superb.tasks import TASKS, Selection, Task

SETTINGS_FILE = "superb.json"  # the upstream OUT was made with
RESULT_FILE = "result.json"  # a finished task's metrics (the driver's marker)


# --- the suite ---------------------------------------------------------------------------------

def run_task(ctx: Context, task: Task, gpus: queue.Queue) -> dict:
    """Run one task on a free slot; its entry of results.json."""
    done = results.task_dir(ctx.out, task) / RESULT_FILE
    if done.is_file() and not policy.needs_predictions(task, ctx.submission):
        ctx.say(f"{task.name}: finished in an earlier run ({done})")
        return json.loads(done.read_text())
    reason = missing_data(task, ctx.data.get(task.key), ctx.data_file)
    if reason:
        ctx.say(f"{task.name}: skipped, {reason}")
        return {"status": "skipped", "reason": reason}
    gpu = gpus.get()
    started = time.monotonic()
    try:
        if task.selection is Selection.LAYER_ON_DEV:
            run_qbe(ctx, task, gpu)
        else:
            run_trained_task(ctx, task, gpu)
        result = results.read_task(ctx.out, task)
    except (TaskFailed, results.MissingOutput) as error:
        ctx.say(f"{task.name}: failed, {error}")
        return {"status": "failed", "reason": str(error)}
    except Exception as error:  # a scorer's or the file system's: reported, and the other tasks go on
        traceback.print_exc()
        ctx.say(f"{task.name}: failed, {type(error).__name__}: {error}")
        return {"status": "failed", "reason": f"{type(error).__name__}: {error}"}
    finally:
        gpus.put(gpu)
    entry = {"status": "done", "metrics": result.metrics, "chosen": result.chosen, "notes": result.notes,
             "seconds": round(time.monotonic() - started, 1)}
    write_json(done, entry)
    summary = ", ".join(f"{key} {value:.4g}" for key, value in result.metrics.items())
    ctx.say(f"{task.name}: done, {summary} ({result.chosen})")
    return entry


def write_results(ctx: Context, entries: dict[str, dict]) -> None:
    """OUT/results.json: upstream, every task's entry (finished ones from earlier runs too), metrics, scores."""
    from s3prl_star.superb.score import score_model

    tasks = {}
    for task in TASKS.values():
        done = results.task_dir(ctx.out, task) / RESULT_FILE
        if task.key in entries:
            tasks[task.name] = entries[task.key]
        elif done.is_file():
            tasks[task.name] = json.loads(done.read_text())
        else:
            tasks[task.name] = {"status": "not run", "reason": "not in --tasks"}
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


def check_settings(out: Path, upstream: list[str]) -> None:
    """OUT belongs to one upstream: refuse to mix another one's runs into it."""
    path = out / SETTINGS_FILE
    if path.is_file():
        stored = json.loads(path.read_text())["upstream"]
        if stored != upstream:
            raise DataError(f"{out} holds the runs of {' '.join(stored)}, not {' '.join(upstream)}: use another -o")
    else:
        write_json(path, {"upstream": upstream})


def lock(out: Path) -> int:
    """An exclusive lock on OUT, inherited by the runs this driver starts (so a killed driver's orphans
    still hold it); exits with a message when another driver holds it."""
    fd = os.open(out / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise DataError(f"{out} is in use by another `s3prl-star superb` (or a run it started); "
                        "wait for it or end it first") from None
    os.set_inheritable(fd, True)
    return fd


def selected_tasks(text: str) -> list[Task]:
    if text == "all":
        return list(TASKS.values())
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in TASKS]
    if unknown or not names:
        raise DataError(f"--tasks: unknown {', '.join(unknown) or '(empty)'}; expected 'all' or some of {','.join(TASKS)}")
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
                        help="gather the prediction files in the SUPERB leaderboard's layout (DIR/predict, DIR/predict.zip)")
    parser.add_argument("--progress-every", type=float, default=30.0, metavar="SECONDS",
                        help="print a run's step and time left at most this often (default 30)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    upstream = ["-u", args.upstream]
    upstream += ["-k", _maybe_path(args.upstream_ckpt)] if args.upstream_ckpt else []
    upstream += ["-g", str(Path(args.upstream_model_config).resolve())] if args.upstream_model_config else []
    if args.gpus and args.device == "cpu":
        print("s3prl-star superb: --gpus needs --device cuda", file=sys.stderr)
        return 2
    out = args.out.resolve()
    try:
        tasks = selected_tasks(args.tasks)
        common, data = read_data_file(args.data.resolve())
        out.mkdir(parents=True, exist_ok=True)
        lock_fd = lock(out)
        check_settings(out, upstream)
    except DataError as error:
        print(f"s3prl-star superb: {error}", file=sys.stderr)
        return 2
    device = args.device or ("cuda" if args.gpus else _default_device())
    ctx = Context(upstream, out, args.data.resolve(), common, data, device, args.lr_search,
                  args.submission is not None, lock_fd, args.progress_every)
    slots = args.gpus.split(",") if args.gpus else [None]
    free: queue.Queue = queue.Queue()
    for slot in slots:
        free.put(slot)
    ctx.say(f"{len(tasks)} task(s) on {device}" + (f", GPUs {args.gpus}" if args.gpus else "") + f"; output in {out}")
    entries: dict[str, dict] = {}
    entries_lock = threading.Lock()

    def one(task: Task) -> None:
        entry = run_task(ctx, task, free)
        with entries_lock:
            entries[task.key] = entry
            write_results(ctx, entries)

    with ThreadPoolExecutor(max_workers=len(slots)) as pool:
        list(pool.map(one, tasks))
    if args.submission:
        from s3prl_star.superb.submission import gather

        for line in gather(out, args.submission.resolve()):
            ctx.say(line)
    failed = [TASKS[key].name for key, entry in entries.items() if entry["status"] == "failed"]
    ctx.say(f"results in {out / 'results.json'}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def _maybe_path(value: str) -> str:
    """A local checkpoint as an absolute path (runs start in the repository root); a URL as given."""
    return str(Path(value).resolve()) if os.path.exists(value) else value


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"

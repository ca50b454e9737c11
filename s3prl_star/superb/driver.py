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
import re
import shutil
import subprocess
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from s3prl_star.superb import results
from s3prl_star.superb.tasks import ER_FOLDS, TASKS, Selection, Task

SETTINGS_FILE = "superb.json"  # the upstream OUT was made with
RESULT_FILE = "result.json"  # a finished task's metrics (the driver's marker)
LR_GRID = (0.1, 1.0, 10.0)  # --lr-search: these multiples of the recipe's learning rate


class DataError(ValueError):
    """DATA.yaml is malformed; the message names the file and the key."""


class TaskFailed(RuntimeError):
    """A run of the task failed; the message names its log."""


# --- DATA.yaml ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class TaskData:
    """A task's entry of DATA.yaml: its data paths (absolute) and its extra `-o` overrides."""

    paths: dict[str, str | list[str]]
    overrides: str


def _check_overrides(value, where: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataError(f"{where}: expected an s3prl -o string ('config.a.b=v,,config.c=w'), got {value!r}")
    return value.strip()


def _absolute(value, base: Path, where: str):
    if isinstance(value, list) and value and all(isinstance(item, str) for item in value):
        return [_absolute(item, base, where) for item in value]
    if not isinstance(value, str) or not value:
        raise DataError(f"{where}: expected a path (or a list of paths), got {value!r}")
    if ",," in value or "=" in value:
        raise DataError(f"{where}: {value!r} contains ',,' or '=', which s3prl's -o cannot carry")
    return str((base / value).resolve())


def read_data_file(path: Path) -> tuple[str, dict[str, TaskData]]:
    """(overrides for every task, {task key: TaskData}) from DATA.yaml; relative paths are taken from
    its folder. Unknown task names and keys are errors; a task may be absent (it is then skipped)."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise DataError(f"{path}: not found") from None
    except yaml.YAMLError as error:
        raise DataError(f"{path}: not YAML ({error})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a mapping of task names (and 'overrides')")
    common = _check_overrides(data.pop("overrides", None), f"{path}: overrides")
    entries = {}
    for key, entry in data.items():
        if key not in TASKS:
            raise DataError(f"{path}: unknown task {key!r}; expected some of {', '.join(TASKS)} and 'overrides'")
        if entry is None:
            entry = {}
        if not isinstance(entry, dict):
            raise DataError(f"{path}: {key}: expected a mapping of data keys")
        entry = dict(entry)
        overrides = _check_overrides(entry.pop("overrides", None), f"{path}: {key}.overrides")
        unknown = sorted(set(entry) - set(TASKS[key].data_keys))
        if unknown:
            raise DataError(f"{path}: {key}: unknown key(s) {', '.join(unknown)}; expected "
                            f"{', '.join(TASKS[key].data_keys)} and 'overrides'")
        paths = {name: _absolute(value, path.parent, f"{path}: {key}.{name}") for name, value in entry.items()}
        entries[key] = TaskData(paths, overrides)
    return common, entries


def required_files(task: Task, paths: dict) -> list[str]:
    """Files beyond the data keys themselves that the task's scoring or folds read."""
    if task.name == "ER":
        meta = paths["datarc.meta_data"]
        return [f"{meta}/{fold.replace('fold', 'Session')}/{split}_meta_data.json"
                for fold in ER_FOLDS for split in ("train", "test")]
    if task.name == "SD":
        return [f"{paths['loaderrc.test_dir']}/rttm"]
    if task.name == "QbE":
        root = paths["datarc.dataset_root"]
        return [f"{root}/scoring/groundtruth_quesst14_dev", f"{root}/scoring/groundtruth_quesst14_eval"]
    return []


def missing_data(task: Task, entry: TaskData | None, data_file: Path) -> str | None:
    """Why the task's data is not there (naming the key or path looked for), or None."""
    if entry is None:
        return f"{data_file} has no '{task.key}' entry"
    for key in task.data_keys:
        if key not in entry.paths:
            return f"{data_file}: no {task.key}.{key}"
        value = entry.paths[key]
        for path in value if isinstance(value, list) else [value]:
            if not os.path.exists(path):
                return f"{task.key}.{key}: {path} does not exist"
    for path in required_files(task, entry.paths):
        if not os.path.exists(path):
            return f"{task.key}: {path} does not exist"
    return None


def data_overrides(entry: TaskData) -> list[str]:
    return [f"config.downstream_expert.{key}={value}" for key, value in entry.paths.items()]


# --- running s3prl-star downstream -------------------------------------------------------------

PROGRESS = re.compile(r"(?P<desc>[\w-]+):\s+(?P<percent>\d+)%\|[^|]*\|\s*(?P<n>\d+)/(?P<total>\d+)"
                      r" \[(?P<elapsed>[\d:]+)<(?P<left>[\d:?]+)")


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
    lock_fd: int
    progress_every: float
    print_lock: threading.Lock = field(default_factory=threading.Lock)

    def say(self, message: str) -> None:
        with self.print_lock:
            print(f"superb: {message}", flush=True)


def run_downstream(ctx: Context, label: str, argv: list[str], stdout: Path, gpu: str | None, append: bool = False):
    """`s3prl-star downstream ARGV --device D` in OUT: stdout to `stdout`, stderr to
    the same name with `.err`; progress lines parsed from the runner's bars. Raises TaskFailed."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    command = [sys.executable, "-m", "s3prl_star.cli", "downstream", *argv, "--device", ctx.device]
    stderr_path = stdout.with_suffix(".err")
    stdout.parent.mkdir(parents=True, exist_ok=True)
    mode = "a" if append else "w"
    with open(stdout, mode) as out_file, open(stderr_path, mode + "b") as err_file:
        if append:
            out_file.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n")
            out_file.flush()
        process = subprocess.Popen(command, cwd=ctx.out, env=env, stdout=out_file, stderr=subprocess.PIPE,
                                   pass_fds=(ctx.lock_fd,))
        _follow_progress(ctx, label, process.stderr, err_file)
        returncode = process.wait()
    if returncode != 0:
        raise TaskFailed(f"{label}: s3prl-star downstream exited with {returncode}; see {stderr_path} "
                         f"(last line: {_last_line(stderr_path)})")


def _last_line(path: Path) -> str:
    lines = [line for line in re.split(r"[\r\n]", path.read_text(errors="replace")) if line.strip()]
    return lines[-1].strip()[:300] if lines else ""


def _follow_progress(ctx: Context, label: str, stream, err_file) -> None:
    """Copy the runner's stderr to `err_file`; print its progress bar (step, time left) every
    `ctx.progress_every` seconds: the `overall` bar when training, the split's bar when evaluating."""
    last_print, last_step, buffer = 0.0, None, b""
    while chunk := stream.read1(65536):
        err_file.write(chunk)
        buffer = (buffer + chunk)[-4096:]
        segments = re.split(rb"[\r\n]", buffer)
        for segment in reversed(segments):
            match = PROGRESS.search(segment.decode(errors="replace"))
            if match and match["desc"] != "train":  # `train` is the per-epoch bar
                step = (match["desc"], match["n"])
                if step != last_step and time.monotonic() - last_print >= ctx.progress_every:
                    last_print, last_step = time.monotonic(), step
                    ctx.say(f"{label}: {match['desc']} step {match['n']}/{match['total']} ({match['percent']}%), "
                            f"{match['left']} left")
                break


def latest_checkpoint(expdir: Path) -> Path | None:
    checkpoints = sorted(expdir.glob("states-*.ckpt"), key=lambda path: int(path.stem.split("-")[-1]))
    return checkpoints[-1] if checkpoints else None


def train(ctx: Context, task: Task, label: str, expdir: Path, overrides: list[str], gpu: str | None) -> None:
    """Train in `expdir` unless done: resume with `-a` from its last checkpoint, else start afresh."""
    if (expdir / results.TRAIN_DONE).is_file():
        return
    resume = latest_checkpoint(expdir) is not None
    if not resume and expdir.exists():
        shutil.rmtree(expdir)  # killed before its first checkpoint: nothing to keep
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
    if task.name == "SD":
        from s3prl_star.superb.scorers.diarization import der_of_run

        der = der_of_run(expdir, ctx.data[task.key].paths["loaderrc.test_dir"])
        write_json(expdir / results.METRIC_FILE, {"SD_der": der})
    (expdir / results.EVALUATE_DONE).write_text(checkpoint.name + "\n")


def evaluate_every_checkpoint(ctx: Context, label: str, expdir: Path, gpu: str | None) -> None:
    """ASV: `-m evaluate -e` each `states-*.ckpt` into `EXPDIR/states-STEP/` (`s3prl_star.superb.scorers.asv`'s layout)."""
    for checkpoint in sorted(expdir.glob("states-*.ckpt"), key=lambda path: int(path.stem.split("-")[-1])):
        output_dir = expdir / checkpoint.stem
        if (output_dir / results.EVALUATE_DONE).is_file():
            continue
        ctx.say(f"{label}: evaluating {checkpoint.name} on test")
        run_downstream(ctx, label, ["-m", "evaluate", "-e", str(checkpoint), "-o", f"args.expdir={output_dir}"],
                       output_dir / "log.txt", gpu)
        (output_dir / results.EVALUATE_DONE).write_text(checkpoint.name + "\n")


def write_json(path: Path, data) -> None:
    from s3prl_star.atomic import write_atomically  # imports torch: not for a command that only fails early

    write_atomically(path, lambda temporary: Path(temporary).write_text(json.dumps(data, indent=2) + "\n"))


def learning_rates(task: Task, lr_search: bool, user_overrides: list[str]) -> list[float]:
    """The learning rate (the last `config.optimizer.lr=` of DATA.yaml's overrides, else the recipe's), or
    with --lr-search the grid around it (ASV: no dev set to choose on)."""
    assigned = [piece.split("=", 1)[1] for text in user_overrides for piece in text.split(",,")
                if piece.split("=", 1)[0].strip() == "config.optimizer.lr"]
    base = float(assigned[-1]) if assigned else float(yaml.safe_load(task.config.read_text())["optimizer"]["lr"])
    if not lr_search or task.selection is Selection.LOWEST_OVER_CHECKPOINTS:
        return [base]
    return [base * factor for factor in LR_GRID]


def evaluates_dev_best(task: Task, submission: bool) -> bool:
    """Whether the dev-best checkpoint gets a test evaluation: always where it gives the metric, and for
    the logged tasks when their prediction file is wanted (the logged one is from the last evaluation)."""
    logged = task.selection in (Selection.LOGGED_AT_DEV_BEST, Selection.FOLDS)
    return task.selection is Selection.EVALUATE_DEV_BEST or (submission and logged)


def run_trained_task(ctx: Context, task: Task, gpu: str | None) -> None:
    """Every trial (learning rate) of a task that trains: training and its test evaluation(s)."""
    entry = ctx.data[task.key]
    user = [text for text in (ctx.common_overrides, entry.overrides) if text]
    for learning_rate in learning_rates(task, ctx.lr_search, user):
        trial = results.task_dir(ctx.out, task) / results.trial_name(learning_rate)
        # after the user's overrides: the trial's rate wins over a DATA.yaml `config.optimizer.lr`
        lr_override = [f"config.optimizer.lr={learning_rate}"]
        folds = ER_FOLDS if task.selection is Selection.FOLDS else (None,)
        for fold in folds:
            expdir = trial if fold is None else results.fold_dir(trial, fold)
            label = "/".join(part for part in (task.name, trial.name, fold) if part)
            fold_override = [f"config.downstream_expert.datarc.test_fold={fold}"] if fold else []
            train(ctx, task, label, expdir, [*data_overrides(entry), *fold_override, *user, *lr_override], gpu)
            if evaluates_dev_best(task, ctx.submission) and not (expdir / results.EVALUATE_DONE).is_file():
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


# --- the suite ---------------------------------------------------------------------------------

def run_task(ctx: Context, task: Task, gpus: queue.Queue) -> dict:
    """Run one task on a free slot; its entry of results.json."""
    done = results.task_dir(ctx.out, task) / RESULT_FILE
    needs_predictions = ctx.submission and task.selection in (Selection.LOGGED_AT_DEV_BEST, Selection.FOLDS)
    if done.is_file() and not needs_predictions:
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
                        help=f"train each task at {' / '.join(f'{f:g}' for f in LR_GRID)} x its recipe's learning rate, choose on dev")
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

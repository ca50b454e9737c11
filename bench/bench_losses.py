"""Time and peak memory of the STaR Gram losses: d x d ("channel") path vs the naive N x N ("gram") form.

Run: `.venv/bin/python bench/bench_losses.py` (about a minute on 2 cores). One utterance of
N = 250, 500, 1000, 2000 frames, HuBERT Base teacher (d_T = 768) and STaRHuBERT student
(d_S = 432), L = 12 layers (13 hidden states per model), float32 on CPU, layer-wise + intra-layer
loss (the final STaR loss), forward + backward (gradients to the student states).

Time: CPU seconds of the process (time.process_time) with `--threads` intra-op threads (default 1),
best of `--repeats` runs: the work done, which stays comparable when the machine is shared (wall
clock does not). Peak memory: the largest total of bytes held by
tensors that the CPU allocator handed out during forward + backward, from torch.profiler's
memory events (alloc +, free -) summed in time order; the input states themselves are excluded,
the student-state gradients included.
"""
from __future__ import annotations

import argparse
import os
import platform
import time
import warnings

import torch
from torch.profiler import ProfilerActivity, profile

from s3prl_star.distill.losses import StarLoss, StarLossConfig

TEACHER_DIM, STUDENT_DIM, LAYERS = 768, 432, 12


def make_states(frames: int, seed: int) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    teacher = [torch.randn(1, frames, TEACHER_DIM, generator=gen) for _ in range(LAYERS + 1)]
    student = [torch.randn(1, frames, STUDENT_DIM, generator=gen).requires_grad_() for _ in range(LAYERS + 1)]
    return teacher, student, torch.zeros(1, frames, dtype=torch.bool)


def step(loss_fn: StarLoss, teacher, student, mask) -> float:
    for x in student:
        x.grad = None
    total, _ = loss_fn(teacher, student, mask)
    total.backward()
    return total.item()


def peak_bytes(loss_fn: StarLoss, teacher, student, mask) -> int:
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step(loss_fn, teacher, student, mask)
    events = sorted(
        (e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"), key=lambda e: e.start_ns()
    )
    held = peak = 0
    for event in events:
        held += event.nbytes()
        peak = max(peak, held)
    return peak


def best_seconds(loss_fn: StarLoss, teacher, student, mask, repeats: int) -> tuple[float, float]:
    times = []
    for _ in range(repeats):
        start = time.process_time()
        value = step(loss_fn, teacher, student, mask)
        times.append(time.process_time() - start)
    return min(times), value


def cpu_model() -> str:
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[250, 500, 1000, 2000])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    warnings.filterwarnings("ignore", message="Warning: Profiler clears events")

    print(f"machine: nproc={os.cpu_count()}, cpu={cpu_model()}, torch {torch.__version__}")
    print(
        f"loss: layer-wise + intra-layer TGM, B=1, d_T={TEACHER_DIM}, d_S={STUDENT_DIM}, L={LAYERS}, "
        "float32, forward+backward"
    )
    print(f"time: CPU seconds (process_time), {torch.get_num_threads()} thread(s), best of {args.repeats} runs")
    print("peak: max bytes held by tensors allocated during the step (torch.profiler memory events)")
    print("growth: ratio to the previous row's peak (N doubles: 2 = linear, 4 = quadratic, less with a constant part)")
    auto = StarLoss(StarLossConfig(path="auto"))
    paths = {name: StarLoss(StarLossConfig(path=name)) for name in ("channel", "gram")}
    warm_teacher, warm_student, warm_mask = make_states(64, 0)
    for loss_fn in paths.values():
        step(loss_fn, warm_teacher, warm_student, warm_mask)

    header = (
        f"{'N':>5} {'auto':>7} | {'channel s':>9} {'gram s':>8} {'gram/ch':>7} | "
        f"{'channel MiB':>11} {'growth':>6} {'gram MiB':>9} {'growth':>6} {'gram/ch':>7} | {'rel diff':>8}"
    )
    print(header)
    print("-" * len(header))
    peaks = {name: [] for name in paths}
    for frames in args.frames:
        teacher, student, mask = make_states(frames, frames)
        seconds, memory, values = {}, {}, {}
        for name, loss_fn in paths.items():
            seconds[name], values[name] = best_seconds(loss_fn, teacher, student, mask, args.repeats)
            memory[name] = peak_bytes(loss_fn, teacher, student, mask) / 2**20
        rel_diff = abs(values["channel"] - values["gram"]) / abs(values["gram"])
        chosen = auto.choose_path(frames, TEACHER_DIM, STUDENT_DIM)
        growth = {name: f"{memory[name] / peaks[name][-1]:.2f}" if peaks[name] else "-" for name in paths}
        for name in paths:
            peaks[name].append(memory[name])
        print(
            f"{frames:>5} {chosen:>7} | {seconds['channel']:>9.3f} {seconds['gram']:>8.3f} "
            f"{seconds['gram'] / seconds['channel']:>7.2f} | {memory['channel']:>11.1f} {growth['channel']:>6} "
            f"{memory['gram']:>9.1f} {growth['gram']:>6} {memory['gram'] / memory['channel']:>7.2f} | {rel_diff:>8.1e}",
            flush=True,
        )
    print("successive peak increments, ratio per doubling of N (2 = linear, 4 = quadratic):")
    for name, path_peaks in peaks.items():
        steps = [b - a for a, b in zip(path_peaks, path_peaks[1:])]
        print(f"  {name:>7}: " + " ".join(f"{b / a:.2f}" for a, b in zip(steps, steps[1:])))
    print(f"bench wall time: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()

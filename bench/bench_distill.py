"""Throughput of one STaR distillation step: the STaRHuBERT student (`star_hubert` preset) and a
random HuBERT Base-shaped teacher (12 x 768, FFN 3072, 12 heads, 512-channel extractor) at batch
4 x 10 s, through the pretrain expert's own forward (distill/star_hubert/pretrain_expert.py).

Per step: data (the expert's DataLoader in the main process: FLAC decode, bucket, pad), teacher
forward, student forward, loss (the times the expert records for TensorBoard), backward, gradient
clipping + AdamW step, utterances per second, and the process's peak resident memory. CPU: float32; CUDA:
bf16 autocast (config_model.yaml's `precision: bf16`). Reported: the fastest measured step (on a
shared machine the least disturbed by other processes) and the step of median duration.

    python bench/bench_distill.py [--device cpu|cuda] [--steps 3] [--warmup 1] [--threads N]
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

from benchlib import cpu_name, load_expert_module, write_corpus
from s3prl_star.mini_superb.random_teacher import save_random_teacher

BATCH, SECONDS = 4, 10.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=3, help="measured steps")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured steps first")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load_before = os.getloadavg()[0]  # other processes on the machine slow the CPU numbers
    expert_module = load_expert_module()

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        teacher = save_random_teacher("hubert", scratch / "hubert_base_random.pt",
                                      layers=12, embed_dim=768, ffn_dim=3072, heads=12, seed=0)
        csv_dir = write_corpus(scratch / "LibriSpeech", [SECONDS] * BATCH)
        datarc = {"libri_root": str(scratch / "LibriSpeech"), "file_path": str(csv_dir), "sets": ["train-clean-100"],
                  "train_batch_size": BATCH, "max_length": None, "num_workers": 0}
        model_config = {
            "student": {"preset": "star_hubert"},
            "teacher": {"name": "hubert_local", "ckpt": str(teacher)},
            "objective": {"layerwise_weight": 1.0, "intra_weight": 1.0, "attention_weight": 0.0},
            "precision": "bf16",
        }
        expert = expert_module.UpstreamPretrainExpert(datarc, model_config, args.device).to(args.device)
        data_seconds = []
        for _ in range(args.warmup + args.steps):  # the one batch of the corpus, read again each step
            started = time.perf_counter()
            batch = next(iter(expert.get_train_dataloader()))
            data_seconds.append(time.perf_counter() - started)

    optimizer = torch.optim.AdamW(expert.model.parameters(), lr=1e-3, betas=(0.9, 0.98), eps=1e-6)
    expert.train()
    rows = defaultdict(list)
    for step in range(args.warmup + args.steps):
        records = defaultdict(list)
        started = time.perf_counter()
        loss, records = expert(batch, records=records, global_step=step + 1)
        forward_done = expert.clock()
        loss.backward()
        backward_done = expert.clock()
        torch.nn.utils.clip_grad_norm_(expert.model.parameters(), 10.0)
        optimizer.step()
        optimizer.zero_grad()
        finished = expert.clock()
        if step >= args.warmup:
            rows["data"].append(data_seconds[step])
            rows["teacher forward"].append(records["time/teacher"][0])
            rows["student forward"].append(records["time/student"][0])
            rows["loss"].append(records["time/loss"][0])
            rows["backward"].append(backward_done - forward_done)
            rows["clip + AdamW"].append(finished - backward_done)
            rows["step"].append(data_seconds[step] + finished - started)

    device = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else cpu_name()
    precision = "bf16 autocast" if expert.autocast else "float32"
    print(f"STaR distillation step: star_hubert student ({sum(p.numel() for p in expert.student.parameters()):,} "
          f"parameters), random HuBERT Base-shaped teacher, batch {BATCH} x {SECONDS:.0f} s")
    print(f"device {args.device} ({device}), {precision}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"python {platform.python_version()}; load average before {load_before:.2f}, after {os.getloadavg()[0]:.2f}")
    print(f"peak resident memory of the process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
    durations = rows["step"]
    print(f"steps after {args.warmup} warm-up: {', '.join(f'{value:.2f}' for value in durations)} s")
    by_duration = sorted(range(args.steps), key=lambda index: durations[index])
    for label, index in (("fastest", by_duration[0]), ("median", by_duration[args.steps // 2])):
        step = durations[index]
        print(f"{label} step:")
        for name, values in rows.items():
            print(f"  {name:<24} {values[index] * 1000:10.1f} ms  {100 * values[index] / step:5.1f} %")
        print(f"  {'utterances / s':<24} {BATCH / step:10.3f}")
        print(f"  {'audio seconds / s':<24} {BATCH * SECONDS / step:10.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

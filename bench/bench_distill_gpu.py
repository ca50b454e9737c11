"""One STaR distillation step at the paper's batch on a GPU: this project's step against a naive one.

The step: a random HuBERT Base-shaped teacher (12 x 768, FFN 3072, s3prl's `hubert_local` file format)
and the `star_hubert` student (22.3M parameters), layer-wise + intra-layer TGM loss, backward, gradient
clipping (10) and AdamW, at batch `--batch` (24 per GPU in the paper) of utterances drawn uniformly in
`--seconds LOW HIGH` (train-clean-100's bulk; its mean is 12.7 s). Variants, all in one process on the
same batch:
- `ours-bf16`, `ours-fp32`: the pretrain expert's own forward (distill/star_hubert/pretrain_expert.py:
  the `Teacher` wrapper, `StarHubert`, `StarLoss` with the d x d path) in bf16 autocast / float32.
- `ours-bf16-teacher-bf16`: as `ours-bf16` with the teacher's weights stored in bf16.
- `ours-bf16-cudnn-fast`: as `ours-bf16` with cuDNN free to pick its fastest algorithms
  (`cudnn.benchmark = True`, `deterministic = False`). Every other variant runs as s3prl's
  `run_pretrain.py` sets cuDNN before training (`deterministic = True`, `benchmark = False`).
- `ours-bf16-compiled-student`: as `ours-bf16` with `nn.Module.compile()` on the student's extractor
  and encoder (fixed shapes here).
- `ours-bf16-compiled`: as `ours-bf16-compiled-student`, and the teacher's transformer layers and conv
  blocks 1.. compiled too (s3prl's per-layer hooks specialise each layer: recompile limit raised to 64).
- `naive-bf16`, `naive-fp32`: s3prl's `HubertModel` for teacher and student (the student built with
  STaRHuBERT's shape through the same `hubert_local` format, trained through s3prl's upstream hooks)
  and the loss through explicit N x N Gram matrices (`StarLoss(path="gram")`).

Per variant: the fastest and the median of `--steps` timed steps after `--warmup`, split into teacher
forward, student forward, loss, backward and clip + AdamW (CUDA synchronised at each boundary), the
utterances and padded audio seconds per second, the peak allocated memory, the loss of the first step
(same student initialisation for the `ours-*` variants: the effect of precision on the loss value), and
model FLOPs per step (torch.utils.flop_counter over one step: teacher forward, student forward and
backward, loss) over the step time against the bf16 dense peak. Hours for 200 epochs of
train-clean-100 (28,539 utterances, 100.6 h) follow from the padded audio rate, since length-sorted
buckets leave little padding.

    python bench/bench_distill_gpu.py [--batch 24] [--seconds 10 16] [--steps 10] [--warmup 3]
        [--variants ours-bf16,ours-fp32,...] [--json FILE] [--profile]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchlib import load_expert_module, machine_line, utterance_seconds, write_corpus
from s3prl_star.distill.data import SAMPLE_RATE, WaveformDataset, collate_waveforms, load_length_csvs
from s3prl_star.distill.losses import StarLoss, StarLossConfig
from s3prl_star.model.config import PRESETS
from s3prl_star.model.components import conv_output_lengths
from s3prl_star.mini_superb.random_teacher import save_random_teacher

VARIANTS = ("ours-bf16", "ours-fp32", "ours-bf16-teacher-bf16", "ours-bf16-cudnn-fast", "naive-bf16", "naive-fp32",
            "ours-bf16-compiled-student", "ours-bf16-compiled")
PARTS = ("teacher forward", "student forward", "loss", "backward", "clip + AdamW")
TRAIN_CLEAN_100 = {"utterances": 28539, "hours": 100.6}
EPOCHS = 200
GOAL_HOURS = 4.0
# NVIDIA H100/H200 SXM datasheet: dense bf16 989.4 TFLOP/s (1979 with sparsity); fp32 non-tensor 67.
DATASHEET_BF16_TFLOPS = 989.4


def sync(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def measure_matmul_tflops(device: torch.device, size: int = 8192, repeats: int = 10) -> float | None:
    """bf16 dense matmul rate on random data: the practical ceiling on this GPU (None on CPU)."""
    if device.type != "cuda":
        return None
    a, b = (torch.randn(size, size, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    started = sync(device)
    for _ in range(repeats):
        a @ b
    elapsed = sync(device) - started
    return 2 * size**3 * repeats / elapsed / 1e12


class OursStep:
    """The pretrain expert's step: `expert(batch)` (teacher, student, loss, as s3prl's runner calls it)."""

    def __init__(self, expert_module, datarc: dict, teacher_path: Path, precision: str, device: torch.device,
                 teacher_bf16: bool = False, compile_student: bool = False, compile_teacher: bool = False):
        model_config = {
            "student": {"preset": "star_hubert"},
            "teacher": {"name": "hubert_local", "ckpt": str(teacher_path)},
            "objective": {"layerwise_weight": 1.0, "intra_weight": 1.0, "attention_weight": 0.0},
            "precision": precision,
        }
        torch.manual_seed(0)  # the same student initialisation in every `ours-*` variant
        self.expert = expert_module.UpstreamPretrainExpert(datarc, model_config, str(device)).to(device)
        self.expert.train()
        if teacher_bf16:
            self.expert.teacher.to(torch.bfloat16)
        if compile_student:
            self.expert.student.feature_extractor.compile()
            self.expert.student.encoder.compile()
        if compile_teacher:
            torch._dynamo.config.recompile_limit = 64
            teacher_model = self.expert.teacher.upstream.model
            for layer in teacher_model.encoder.layers:
                layer.compile()
            for block in list(teacher_model.feature_extractor.conv_layers)[1:]:  # block 0: per-call GroupNorm hook
                block.compile()
        self.parameters = list(self.expert.model.parameters())

    def forward(self, batch) -> tuple[torch.Tensor, dict[str, float]]:
        records = defaultdict(list)
        loss, records = self.expert(batch, records=records, global_step=1)
        parts = {"teacher forward": records["time/teacher"][0], "student forward": records["time/student"][0],
                 "loss": records["time/loss"][0]}
        return loss, parts


class NaiveStep:
    """s3prl's HubertModel as teacher (no_grad) and as student, hidden states from s3prl's upstream hooks,
    the loss through (B, N, N) Gram matrices; bf16 autocast optional."""

    def __init__(self, scratch: Path, teacher_path: Path, precision: str, device: torch.device):
        import s3prl_star.integration.patches

        s3prl_star.integration.patches.apply()
        import s3prl.hub

        shape = PRESETS["star_hubert"]
        student_path = save_random_teacher(
            "hubert", scratch / "star_shaped_hubert.pt", layers=shape.encoder_layers, embed_dim=shape.encoder_embed_dim,
            ffn_dim=shape.encoder_ffn_embed_dim, heads=shape.encoder_attention_heads, conv_layers=shape.conv_layers, seed=1,
        )
        self.device = device
        self.teacher = s3prl.hub.hubert_local(ckpt=str(teacher_path)).to(device).eval()
        self.student = s3prl.hub.hubert_local(ckpt=str(student_path)).to(device).train()
        self.student.model.feature_grad_mult = 1.0  # s3prl's expert freezes the extractor; a student trains it
        self.conv = [(kernel, stride) for _, kernel, stride in shape.conv_layers]
        self.loss = StarLoss(StarLossConfig(path="gram"))
        self.autocast = precision == "bf16"
        self.parameters = list(self.student.model.parameters())

    def forward(self, batch) -> tuple[torch.Tensor, dict[str, float]]:
        waveforms, lengths = (tensor.to(self.device) for tensor in batch)
        wavs = [waveform[:length] for waveform, length in zip(waveforms, lengths.tolist())]
        started = sync(self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            with torch.no_grad():
                teacher = self.teacher(wavs)["hidden_states"]
            teacher_done = sync(self.device)
            student = self.student(wavs)["hidden_states"]
            student_done = sync(self.device)
        frames = conv_output_lengths(lengths, self.conv)
        padding_mask = torch.arange(student[0].size(1), device=self.device)[None, :] >= frames[:, None]
        loss, _ = self.loss(list(teacher), list(student), padding_mask)
        loss_done = sync(self.device)
        return loss, {"teacher forward": teacher_done - started, "student forward": student_done - teacher_done,
                      "loss": loss_done - student_done}


def run_steps(step, batch, device: torch.device, steps: int, warmup: int) -> dict:
    """Timed training steps of `step` on `batch`; clip 10 and AdamW (lr 1e-3, betas 0.9/0.98, eps 1e-6)."""
    optimizer = torch.optim.AdamW(step.parameters, lr=1e-3, betas=(0.9, 0.98), eps=1e-6)
    rows, first_loss = defaultdict(list), None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    first_started = time.perf_counter()
    for index in range(warmup + steps):
        started = sync(device)
        loss, parts = step.forward(batch)
        forward_done = sync(device)
        loss.backward()
        backward_done = sync(device)
        torch.nn.utils.clip_grad_norm_(step.parameters, 10.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        finished = sync(device)
        if index == 0:
            first_loss = loss.detach().item()
            first_step_seconds = finished - first_started
        if index >= warmup:
            for name, value in parts.items():
                rows[name].append(value)
            rows["backward"].append(backward_done - forward_done)
            rows["clip + AdamW"].append(finished - backward_done)
            rows["step"].append(finished - started)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return {"rows": dict(rows), "first_loss": first_loss, "first_step_seconds": first_step_seconds, "peak_bytes": peak}


def count_flops(step, batch) -> int:
    """Model FLOPs of one step (forward of both models, the loss, the student's backward)."""
    with FlopCounterMode(display=False) as counter:
        loss, _ = step.forward(batch)
        loss.backward()
    for parameter in step.parameters:
        parameter.grad = None
    return counter.get_total_flops()


def profile_step(step, batch, device: torch.device, rows: int = 20) -> str:
    """The operators of one step by their own GPU time (where the time goes)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as profiler:
        loss, _ = step.forward(batch)
        loss.backward()
        sync(device)
    for parameter in step.parameters:
        parameter.grad = None
    return profiler.key_averages().table(sort_by="self_cuda_time_total", row_limit=rows, max_name_column_width=60)


def summarise(name: str, result: dict, batch, flops: int | None, peak_tflops: float) -> dict:
    waveforms, lengths = batch
    durations = result["rows"]["step"]
    median_index = sorted(range(len(durations)), key=durations.__getitem__)[len(durations) // 2]
    step_seconds = durations[median_index]
    padded_audio_per_second = waveforms.numel() / SAMPLE_RATE / step_seconds
    utterances_per_second = len(lengths) / step_seconds
    hours = EPOCHS * TRAIN_CLEAN_100["hours"] * 3600 / padded_audio_per_second / 3600
    return {
        "variant": name,
        "median_step_s": step_seconds,
        "fastest_step_s": min(durations),
        "parts_s": {part: result["rows"][part][median_index] for part in PARTS},
        "utterances_per_s": utterances_per_second,
        "padded_audio_s_per_s": padded_audio_per_second,
        "hours_200_epochs_100h": hours,
        "peak_memory_gib": None if result["peak_bytes"] is None else result["peak_bytes"] / 2**30,
        "first_loss": result["first_loss"],
        "first_step_s": result["first_step_seconds"],
        "flops_per_step": flops,
        "achieved_tflops": None if flops is None else flops / step_seconds / 1e12,
        "fraction_of_peak": None if flops is None else flops / step_seconds / 1e12 / peak_tflops,
    }


def build(name: str, expert_module, datarc: dict, scratch: Path, teacher: Path, device: torch.device):
    precision = "bf16" if "bf16" in name else "fp32"
    if name.startswith("naive"):
        return NaiveStep(scratch, teacher, precision, device)
    return OursStep(expert_module, datarc, teacher, precision, device,
                    teacher_bf16=name.endswith("teacher-bf16"), compile_student="compiled" in name,
                    compile_teacher=name.endswith("-compiled"))


def print_table(summaries: list[dict], reference_loss: float | None) -> None:
    names = [s["variant"] for s in summaries]
    width = max(14, *map(len, names))

    def row(label: str, values: list[str]) -> None:
        print(f"{label:<34}" + "".join(f"{value:>{width + 2}}" for value in values))

    row("", names)
    for part in PARTS:
        row(f"{part} (ms)", [f"{1000 * s['parts_s'][part]:.1f}" for s in summaries])
    row("step, median (ms)", [f"{1000 * s['median_step_s']:.1f}" for s in summaries])
    row("step, fastest (ms)", [f"{1000 * s['fastest_step_s']:.1f}" for s in summaries])
    row("first step incl. compile (s)", [f"{s['first_step_s']:.1f}" for s in summaries])
    row("utterances / s", [f"{s['utterances_per_s']:.1f}" for s in summaries])
    row("padded audio s / s", [f"{s['padded_audio_s_per_s']:.0f}" for s in summaries])
    row(f"h for {EPOCHS} epochs x 100 h", [f"{s['hours_200_epochs_100h']:.2f}" for s in summaries])
    row(f"meets <= {GOAL_HOURS:.0f} h", ["yes" if s["hours_200_epochs_100h"] <= GOAL_HOURS else "no" for s in summaries])
    row("peak memory (GiB)", ["-" if s["peak_memory_gib"] is None else f"{s['peak_memory_gib']:.1f}" for s in summaries])
    row("model TFLOP / step", ["-" if s["flops_per_step"] is None else f"{s['flops_per_step'] / 1e12:.2f}" for s in summaries])
    row("achieved TFLOP/s", ["-" if s["achieved_tflops"] is None else f"{s['achieved_tflops']:.1f}" for s in summaries])
    row("fraction of bf16 peak", ["-" if s["fraction_of_peak"] is None else f"{100 * s['fraction_of_peak']:.1f} %" for s in summaries])
    row("first-step loss", [f"{s['first_loss']:.6g}" for s in summaries])
    if reference_loss is not None:
        row("  rel. to ours-fp32", [f"{s['first_loss'] / reference_loss - 1:+.2e}" if s["variant"].startswith("ours") else "-"
                                    for s in summaries])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=24)
    parser.add_argument("--seconds", type=float, nargs=2, default=(10.0, 16.0), metavar=("LOW", "HIGH"))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS[:-1]), help=f"comma-separated, from {VARIANTS}")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--profile", action="store_true", help="print the GPU operators of one ours-bf16 step")
    args = parser.parse_args(argv)
    variants = args.variants.split(",")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"--variants: unknown {unknown}; expected some of {VARIANTS}")
    device = torch.device(args.device)
    expert_module = load_expert_module()
    matmul_tflops = measure_matmul_tflops(device)
    peak_tflops = DATASHEET_BF16_TFLOPS

    summaries, failures, profiles = [], {}, {}
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        teacher = save_random_teacher("hubert", scratch / "hubert_base_random.pt",
                                      layers=12, embed_dim=768, ffn_dim=3072, heads=12, seed=0)
        seconds = utterance_seconds(args.batch, *args.seconds)
        csv_dir = write_corpus(scratch / "LibriSpeech", seconds)
        datarc = {"libri_root": str(scratch / "LibriSpeech"), "file_path": str(csv_dir), "sets": ["train-clean-100"],
                  "train_batch_size": args.batch, "max_length": None, "num_workers": 0}
        items = load_length_csvs([csv_dir / "train-clean-100.csv"], scratch / "LibriSpeech")
        waveforms = WaveformDataset(items)
        batch = collate_waveforms([waveforms[index] for index in range(len(items))])  # every variant trains on it
        for name in variants:
            fast_cudnn = name.endswith("cudnn-fast")
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = not fast_cudnn, fast_cudnn
            try:  # one failing variant (a compiler error, say) leaves the others' figures
                step = build(name, expert_module, datarc, scratch, teacher, device)
                result = run_steps(step, batch, device, args.steps, args.warmup)
                flops = count_flops(step, batch) if name in ("ours-bf16", "naive-bf16") else None
                if name == "ours-bf16" and args.profile and device.type == "cuda":
                    profiles[name] = profile_step(step, batch, device)
            except Exception as error:  # noqa: BLE001 - reported, and the variant left out of the table
                failures[name] = f"{type(error).__name__}: {error}"
                print(f"[{name}] FAILED: {failures[name]}", flush=True)
                continue
            finally:
                step = None
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            summaries.append(summarise(name, result, batch, flops, peak_tflops))
            print(f"[{name}] median step {summaries[-1]['median_step_s'] * 1000:.1f} ms", flush=True)
    flops_by_family = {s["variant"].split("-")[0]: s["flops_per_step"] for s in summaries if s["flops_per_step"]}
    for summary in summaries:  # the FLOPs of a step do not depend on the precision or on compilation
        family = summary["variant"].split("-")[0]
        if summary["flops_per_step"] is None and family in flops_by_family:
            summary["flops_per_step"] = flops_by_family[family]
            summary["achieved_tflops"] = summary["flops_per_step"] / summary["median_step_s"] / 1e12
            summary["fraction_of_peak"] = summary["achieved_tflops"] / peak_tflops

    lengths = batch[1]
    print(f"STaR distillation step, batch {len(lengths)} utterances of {lengths.min() / SAMPLE_RATE:.1f}-"
          f"{lengths.max() / SAMPLE_RATE:.1f} s (mean {lengths.float().mean() / SAMPLE_RATE:.2f} s, padded to "
          f"{batch[0].size(1) / SAMPLE_RATE:.1f} s); {args.warmup} warm-up + {args.steps} timed steps; median step shown")
    print(machine_line(str(device)))
    print(f"bf16 peak used: {peak_tflops} TFLOP/s (datasheet, dense); measured 8192^3 bf16 matmul: "
          + (f"{matmul_tflops:.0f} TFLOP/s" if matmul_tflops else "n/a"))
    reference = next((s["first_loss"] for s in summaries if s["variant"] == "ours-fp32"), None)
    print_table(summaries, reference)
    for name, error in failures.items():
        print(f"{name}: failed: {error}")
    for name, table in profiles.items():
        print(f"\none {name} step (forward + backward) by GPU operator:\n{table}")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine_line(str(device)), "matmul_tflops": matmul_tflops,
                                         "peak_tflops": peak_tflops, "batch_seconds": seconds,
                                         "summaries": summaries, "failures": failures}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

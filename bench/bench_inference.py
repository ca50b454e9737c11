"""Student inference on the CPU: s3prl's fp32 HubertModel against this project's paths, side by side.

All models hold the same weights: s3prl's `HubertModel` built with the STaRHuBERT shape (random
initialisation, seed 0), loaded into `StarHubert`, and the `s3prl_star.model.inference` graphs made from it.
Batch `--batch` x `--seconds` s (default 8 x 15 s: deployment-sized). Time: best of `--repeats` calls
after one warm-up, the paths called in turn in each round, `--threads` threads for every runtime. Accuracy against the s3prl fp32 hidden states,
per layer (the layer-1 input, then the 12 layer outputs): the cosine similarity of the whole layer
(flattened), and the max relative error = max |ours - fp32| / max |fp32| over the layer; the worst layer
is shown.

    python bench/bench_inference.py [--batch 8] [--seconds 15] [--threads 2] [--repeats 1]
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

from benchlib import machine_line
from s3prl_star.model.inference import fast_student
from s3prl_star.model.config import PRESETS, SAMPLE_RATE, StarHubertConfig
from s3prl_star.model.star_hubert import StarHubert


def s3prl_hubert(config: StarHubertConfig):
    """s3prl's HubertModel with the student's shape, eval mode."""
    import s3prl_star.integration.patches

    s3prl_star.integration.patches.apply()
    from s3prl.upstream.hubert.hubert_model import HubertConfig, HubertModel, HubertPretrainingConfig

    layers = " + ".join(f"[{tuple(layer)}]" for layer in config.conv_layers)
    cfg = HubertConfig(
        label_rate=50.0, extractor_mode=config.extractor_mode, conv_feature_layers=layers, conv_bias=config.conv_bias,
        encoder_layers=config.encoder_layers, encoder_embed_dim=config.encoder_embed_dim,
        encoder_ffn_embed_dim=config.encoder_ffn_embed_dim, encoder_attention_heads=config.encoder_attention_heads,
        conv_pos=config.conv_pos, conv_pos_groups=config.conv_pos_groups, layer_norm_first=config.layer_norm_first,
        final_dim=16,
    )
    return HubertModel(cfg, HubertPretrainingConfig(label_rate=50.0), [list("abcd")]).eval()


def s3prl_states(model, waveforms: torch.Tensor) -> list[torch.Tensor]:
    """The input of layer 1 and every layer's output, captured as s3prl's hubert expert hooks them."""
    captured = []
    hooks = [model.encoder.layers[0].register_forward_pre_hook(lambda m, args: captured.append(args[0]))]
    hooks += [layer.register_forward_hook(lambda m, i, out: captured.append(out[0])) for layer in model.encoder.layers]
    with torch.no_grad():
        _, padding_mask = model.extract_features(waveforms, padding_mask=torch.zeros_like(waveforms, dtype=torch.bool))
    for hook in hooks:
        hook.remove()
    frames = padding_mask.size(1)
    return [state.transpose(0, 1)[:, :frames] for state in captured]


def interleaved_best(runs: dict, repeats: int) -> dict:
    """{name: (best seconds, output)}: one warm-up round, then `repeats` timed rounds, each round calling
    every path once in turn, so a change of load on a shared machine falls on all paths alike."""
    times, outputs = {name: [] for name in runs}, {}
    for round_index in range(repeats + 1):
        for name, run in runs.items():
            started = time.perf_counter()
            outputs[name] = run()
            if round_index:
                times[name].append(time.perf_counter() - started)
    return {name: (min(times[name]), outputs[name]) for name in runs}


def accuracy(states: list[torch.Tensor], reference: list[torch.Tensor]) -> tuple[float, float]:
    """(worst layer cosine, worst layer max relative error) against the reference states."""
    cosines, errors = [], []
    for ours, theirs in zip(states, reference):
        ours, theirs = ours.flatten().double(), theirs.flatten().double()
        cosines.append(float(torch.nn.functional.cosine_similarity(ours, theirs, dim=0)))
        errors.append(float((ours - theirs).abs().max() / theirs.abs().max()))
    return min(cosines), max(errors)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--preset", default="star_hubert", choices=sorted(PRESETS))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    reference_model = s3prl_hubert(PRESETS[args.preset])
    weights = {k: v for k, v in reference_model.state_dict().items() if not k.startswith(("final_proj", "label_embs", "mask_emb"))}
    student = StarHubert(PRESETS[args.preset]).eval()
    student.load_state_dict(weights, strict=True)
    waveforms = 0.1 * torch.randn(args.batch, int(args.seconds * SAMPLE_RATE), generator=torch.Generator().manual_seed(1))

    started = time.perf_counter()
    graphs = {precision: fast_student(student, precision, threads=args.threads) for precision in ("fp32", "int8")}
    build_seconds = time.perf_counter() - started
    load_before = machine_line("cpu")

    runs = {
        "s3prl HubertModel fp32 (reference)": lambda: s3prl_states(reference_model, waveforms),
        "StarHubert fp32 (PyTorch)": lambda: list(torch.no_grad()(student)(waveforms).hidden_states),
        "onnxruntime fp32": lambda: graphs["fp32"](waveforms).hidden_states,
        "onnxruntime int8 (MatMul)": lambda: graphs["int8"](waveforms).hidden_states,
    }
    results = interleaved_best(runs, args.repeats)
    reference_seconds, reference_states = results["s3prl HubertModel fp32 (reference)"]

    print(f"student inference, {args.preset}, batch {args.batch} x {args.seconds:g} s, best of {args.repeats} "
          f"after a warm-up; export + quantisation took {build_seconds:.1f} s")
    print(load_before)
    print(machine_line("cpu").replace("device cpu", "after:", 1))
    print(f"{'path':<36} {'seconds':>8} {'speed-up':>9} {'worst-layer cosine':>19} {'max rel. error':>15}")
    for name, (seconds, states) in results.items():
        cosine, error = accuracy(states, reference_states)
        print(f"{name:<36} {seconds:>8.2f} {reference_seconds / seconds:>8.2f}x {cosine:>19.6f} {error:>15.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

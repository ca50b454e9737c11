"""`s3prl-star teacher-pretrain`: a small HuBERT trained here with HuBERT's first-iteration recipe.

No real HuBERT weights reach this machine, so the mini-SUPERB distils from a teacher that learned
on the project's own corpus: MFCC features (13 coefficients + deltas + delta-deltas, 25 ms windows
every 10 ms, Kaldi-compatible as HuBERT's `dump_mfcc_feature.py`), k-means units of them
(`kmeans`), and masked prediction of the units by s3prl's own `HubertModel` (its pre-training
forward: span masks, cosine logits against label embeddings, the logits by a matrix product,
`MatmulLogitsHubert`), labels at 100 Hz as in iteration 1.
The model is saved in the format s3prl's `hubert_local` loads (`random_teacher.hubert_checkpoint`),
so distillation reads it through the same path as the released HuBERT Base.

OUT holds `teacher.pt` (the hubert_local checkpoint), `kmeans.pt` (the centroids), `states.pt`
(the resumable training state, written atomically every `--save-every` steps), TensorBoard scalars
and `result.json`: the masked-prediction accuracy on held-out utterances and the accuracy of
always guessing the most frequent unit, the floor it has to beat. `states.pt` and `kmeans.pt` hold
tensors and plain data only (the RNG states as tuples and lists) and are read weights-only: a crafted
or damaged file ends the command with a one-line error naming it (status 2), and no pickled code runs.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
import torchaudio
from s3prl.upstream.hubert.hubert_model import HubertConfig, HubertModel, HubertPretrainingConfig
from torch import Tensor
from tqdm import tqdm

from s3prl_star.atomic import save_atomic, write_atomically
from s3prl_star.model.checkpoint import CheckpointError, load_failure
from s3prl_star.mini_superb.random_teacher import (FAIRSEQ_SPECIAL_SYMBOLS, BASE_FINAL_DIM, conv_layers_string, default_conv_layers, hubert_checkpoint)

SAMPLE_RATE = 16000
LABEL_RATE = 100.0  # MFCC frames per second: iteration 1's label rate
HOP = SAMPLE_RATE // int(LABEL_RATE)
FEATURE_PENALTY = 10.0  # HuBERT's weight of the conv-feature L2 penalty
KMEANS_FRAMES = 100_000  # MFCC frames sampled for k-means, as HuBERT fits on a subset
COSINE_EPS = 1e-8  # torch.cosine_similarity's


# --- labels -----------------------------------------------------------------------------------

def mfcc_features(waveform: Tensor) -> Tensor:
    """(frames, 39) MFCC + deltas + delta-deltas of a 16 kHz waveform (1-D float)."""
    mfcc = torchaudio.compliance.kaldi.mfcc(waveform.unsqueeze(0), sample_frequency=SAMPLE_RATE, use_energy=False)
    first = torchaudio.functional.compute_deltas(mfcc.T)
    second = torchaudio.functional.compute_deltas(first)
    return torch.cat([mfcc.T, first, second]).T.contiguous()


def kmeans(points: Tensor, clusters: int, iterations: int, seed: int) -> Tensor:
    """Lloyd's k-means with k-means++ seeding; returns the (clusters, dim) centroids."""
    generator = torch.Generator().manual_seed(seed)
    centroids = points[torch.randint(len(points), (1,), generator=generator)]
    nearest = torch.cdist(points, centroids).squeeze(1) ** 2
    for _ in range(clusters - 1):
        chosen = torch.multinomial(nearest / nearest.sum(), 1, generator=generator)
        centroids = torch.cat([centroids, points[chosen]])
        nearest = torch.minimum(nearest, ((points - points[chosen]) ** 2).sum(1))
    for _ in range(iterations):
        assignment = torch.cdist(points, centroids).argmin(1)
        sums = torch.zeros_like(centroids).index_add_(0, assignment, points)
        counts = torch.bincount(assignment, minlength=clusters).unsqueeze(1)
        centroids = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
    return centroids


def units(features: Tensor, centroids: Tensor) -> Tensor:
    return torch.cdist(features, centroids).argmin(1)


# --- data ---------------------------------------------------------------------------------------

def read_split(root: Path, split: str) -> list[Tensor]:
    """Every `.flac` of a LibriSpeech-layout split as float waveforms, in sorted path order."""
    paths = sorted((root / split).rglob("*.flac"))
    if not paths:
        raise FileNotFoundError(f"{root / split}: no .flac files (expected a LibriSpeech-layout split)")
    waveforms = []
    for path in paths:
        samples, rate = sf.read(path, dtype="float32")
        if rate != SAMPLE_RATE or samples.ndim != 1:
            raise ValueError(f"{path}: expected 16 kHz mono audio, found {rate} Hz with shape {samples.shape}")
        waveforms.append(torch.from_numpy(samples))
    return waveforms


def crop_batch(waveforms: list[Tensor], labels: list[Tensor], indices: list[int], max_samples: int,
               rng: random.Random) -> tuple[Tensor, Tensor]:
    """HuBERT's batching without padding: every utterance cropped, at a random label-aligned offset,
    to the batch's shortest length (at most `max_samples`)."""
    length = min(min(len(waveforms[i]) for i in indices), max_samples) // HOP * HOP
    frames = (length - 400) // HOP + 1  # Kaldi MFCC frames of the crop
    sources, targets = [], []
    for i in indices:
        start = rng.randrange((len(waveforms[i]) - length) // HOP + 1)
        sources.append(waveforms[i][start * HOP:start * HOP + length])
        targets.append(labels[i][start:start + frames])
    return torch.stack(sources), torch.stack(targets)


# --- model --------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TeacherShape:
    layers: int
    embed_dim: int
    ffn_dim: int
    heads: int


class MatmulLogitsHubert(HubertModel):
    """s3prl's HubertModel with `compute_nce` giving the same logits (to rounding) by a matrix product.
    Its negatives are every label embedding expanded along the frames, which the original concatenates
    into a (units + 1, frames, dim) tensor for `torch.cosine_similarity`: half of a training step on a
    CPU (docs/mini_superb.md). Same parameters, same checkpoint."""

    def compute_nce(self, x: Tensor, pos: Tensor, negs: Tensor) -> Tensor:
        if negs.dim() != 3 or negs.stride(1) != 0:  # not one embedding table expanded along the frames
            return super().compute_nce(x, pos, negs)
        table = negs[:, 0]
        frames = F.normalize(x.float(), dim=-1, eps=COSINE_EPS)
        positive = (frames * F.normalize(pos.float(), dim=-1, eps=COSINE_EPS)).sum(-1, keepdim=True)
        negative = frames @ F.normalize(table.float(), dim=-1, eps=COSINE_EPS).T
        negative = negative.masked_fill((pos.unsqueeze(1) == table.unsqueeze(0)).all(-1), float("-inf"))
        return (torch.cat([positive, negative], dim=1) / self.logit_temp).type_as(x)


def build_model(shape: TeacherShape, clusters: int, mask_prob: float, mask_length: int, feature_grad_mult: float):
    """s3prl's HubertModel with HuBERT Base's pre-training settings and a dictionary of `clusters` units."""
    task_cfg = HubertPretrainingConfig(label_rate=LABEL_RATE)
    model_cfg = HubertConfig(
        label_rate=LABEL_RATE, encoder_layers=shape.layers, encoder_embed_dim=shape.embed_dim,
        encoder_ffn_embed_dim=shape.ffn_dim, encoder_attention_heads=shape.heads,
        conv_feature_layers=conv_layers_string(default_conv_layers(shape.embed_dim)), conv_bias=False,
        final_dim=min(BASE_FINAL_DIM, shape.embed_dim), mask_prob=mask_prob, mask_length=mask_length,
        feature_grad_mult=feature_grad_mult,
        dropout_input=0.1, dropout_features=0.1,
    )
    symbols = [FAIRSEQ_SPECIAL_SYMBOLS + [str(i) for i in range(clusters)]]
    return MatmulLogitsHubert(model_cfg, task_cfg, symbols), task_cfg, model_cfg, symbols


def masked_prediction(model, sources: Tensor, targets: Tensor, unmasked_weight: float = 0.0) -> tuple[Tensor, Tensor, Tensor]:
    """(loss, correct masked frames, masked frames). The loss is HuBERT's: cross-entropy on the masked
    frames, plus `unmasked_weight` times that on the unmasked ones (fairseq's `pred_nomask_weight`),
    plus the feature penalty."""
    padding = torch.zeros(sources.shape, dtype=torch.bool)
    output = model(sources, target_list=[targets + len(FAIRSEQ_SPECIAL_SYMBOLS)], padding_mask=padding, mask=True)
    masked = output["logit_m_list"][0].float()  # the positive is column 0
    loss = torch.nn.functional.cross_entropy(masked, torch.zeros(len(masked), dtype=torch.long))
    if unmasked_weight > 0:
        unmasked = output["logit_u_list"][0].float()
        loss = loss + unmasked_weight * torch.nn.functional.cross_entropy(
            unmasked, torch.zeros(len(unmasked), dtype=torch.long))
    loss = loss + FEATURE_PENALTY * output["features_pen"]
    return loss, (masked.argmax(1) == 0).sum(), torch.tensor(len(masked))


@torch.no_grad()
def held_out_accuracy(model, waveforms: list[Tensor], labels: list[Tensor], seed: int) -> float:
    """Masked-prediction accuracy over held-out utterances (one at a time, fixed masks)."""
    model.eval()
    state = torch.get_rng_state(), np.random.get_state()
    torch.manual_seed(seed)
    np.random.seed(seed)  # fairseq's span masks draw from numpy
    correct = total = 0
    for waveform, label in zip(waveforms, labels):
        sources, targets = crop_batch([waveform], [label], [0], len(waveform), random.Random(seed))
        _, right, count = masked_prediction(model, sources, targets)
        correct, total = correct + int(right), total + int(count)
    torch.set_rng_state(state[0])
    np.random.set_state(state[1])
    model.train()
    return correct / max(total, 1)


def learning_rate(step: int, total: int, peak: float) -> float:
    """HuBERT's schedule: linear warm-up over 8 % of the steps, then linear decay to 0."""
    warmup = max(round(0.08 * total), 1)
    return peak * (step / warmup if step < warmup else max(total - step, 0) / max(total - warmup, 1))


# --- the run ------------------------------------------------------------------------------------

def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="s3prl-star teacher-pretrain", description=__doc__.splitlines()[0])
    parser.add_argument("libri_root", type=Path, help="LibriSpeech-layout root (e.g. the corpus' LibriSpeech/)")
    parser.add_argument("-o", "--out", type=Path, required=True, help="output folder (resumable)")
    parser.add_argument("--train-split", default="train-clean-100")
    parser.add_argument("--held-out-split", default="dev-clean")
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-seconds", type=float, default=2.5, help="crop length cap per utterance")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (HuBERT Base: 5e-4)")
    parser.add_argument("--clusters", type=int, default=100, help="k-means units (iteration 1: 100)")
    parser.add_argument("--mask-prob", type=float, default=0.5, help="span-mask start probability (HuBERT Base: 0.8)")
    parser.add_argument("--mask-length", type=int, default=5, help="span-mask length in frames (HuBERT Base: 10)")
    parser.add_argument("--feature-grad-mult", type=float, default=1.0,
                        help="gradient scale into the conv feature extractor (HuBERT Base: 0.1)")
    parser.add_argument("--unmasked-weight", type=float, default=1.0,
                        help="weight of the loss on unmasked frames (fairseq's pred_nomask_weight; HuBERT Base: 0)")
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--embed-dim", type=int, default=128)
    parser.add_argument("--ffn-dim", type=int, default=512)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--save-every", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in ("steps", "batch_size", "clusters", "layers", "embed_dim", "ffn_dim", "heads", "save_every"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    if args.embed_dim % args.heads:
        parser.error(f"--embed-dim {args.embed_dim} must be divisible by --heads {args.heads}")
    if args.max_seconds < 0.1 or args.lr <= 0 or args.unmasked_weight < 0:
        parser.error("--max-seconds must be at least 0.1, --lr positive and --unmasked-weight not negative")
    return args


def settings_of(args: argparse.Namespace) -> dict:
    """What a resumed run must share with the run that wrote the state."""
    settings = {key: value for key, value in vars(args).items() if key not in ("out", "save_every")}
    settings["libri_root"] = str(args.libri_root.resolve())
    return settings


def read_plain(path: Path, what: str) -> dict:
    """`torch.load(weights_only=True)` of a file this command wrote: tensors and plain data only, so no
    pickled code runs. CheckpointError naming the file when it is truncated, foreign or crafted."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated (OSError, RuntimeError), not a torch file, a pickle of code
        raise CheckpointError(f"{path}: cannot be read as {what} ({load_failure(error)}); delete it to "
                              "start that part again, or give a new -o") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected {what} (a mapping), found {type(state).__name__}")
    return state


def rng_states(rng: random.Random) -> dict:
    """The three RNG states as plain data, which a weights-only load reads back: python's `random` as its
    own tuple of ints, torch's as a byte tensor, numpy's MT19937 state as (name, list of keys, position,
    has_gauss, cached_gaussian) instead of its ndarray."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    return {"python_rng": rng.getstate(), "torch_rng": torch.get_rng_state(),
            "numpy_rng": (str(name), keys.tolist(), int(position), int(has_gauss), float(cached))}


def restore_rng_states(saved: dict, rng: random.Random) -> None:
    """Undo `rng_states`: every generator continues exactly where the saved run stopped."""
    version, internal, gauss = saved["python_rng"]
    rng.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(saved["torch_rng"])
    name, keys, position, has_gauss, cached = saved["numpy_rng"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))


def resume(states: Path, saved: dict, model, optimizer, rng: random.Random) -> int:
    """Load a `states.pt` read by `read_plain` into the model, optimiser and RNGs; returns its step.
    CheckpointError naming the file when its content is not this command's state."""
    try:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        restore_rng_states(saved, rng)
        step = saved["step"]
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{states}: not a teacher-pretrain training state ({type(error).__name__}: "
                              f"{str(error).strip().splitlines()[0] if str(error).strip() else ''}); delete it "
                              "to train from step 0, or give a new -o") from None
    if type(step) is not int or step < 0:
        raise CheckpointError(f"{states}: step: found {step!r}; expected a step count")
    return step


def fit_units(out: Path, features: list[Tensor], clusters: int, seed: int) -> Tensor:
    """The k-means centroids of the training MFCCs (kept in OUT/kmeans.pt, so a resumed run reuses them)."""
    path = out / "kmeans.pt"
    if path.exists():
        centroids = read_plain(path, "the k-means centroids").get("centroids")
        if not isinstance(centroids, Tensor) or centroids.shape[0] != clusters:
            raise CheckpointError(f"{path}: centroids: expected a ({clusters}, 39) tensor; delete it to fit again")
        return centroids
    points = torch.cat(features)
    chosen = torch.randperm(len(points), generator=torch.Generator().manual_seed(seed))[:KMEANS_FRAMES]
    print(f"teacher-pretrain: k-means, {clusters} units on {len(chosen):,} of {len(points):,} MFCC frames", flush=True)
    centroids = kmeans(points[chosen], clusters, iterations=30, seed=seed)
    save_atomic({"centroids": centroids}, path)
    return centroids


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv or [])
    try:
        return run(args)
    except CheckpointError as error:
        print(f"teacher-pretrain: {error}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    from tensorboardX import SummaryWriter

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    settings = settings_of(args)
    if (out / "result.json").exists():
        done = json.loads((out / "result.json").read_text())
        if done["settings"] != settings:
            raise SystemExit(f"teacher-pretrain: {out} holds a teacher trained with other settings; give a new -o")
        print(f"teacher-pretrain: {out / 'teacher.pt'} is already trained (held-out masked accuracy "
              f"{done['held_out_masked_accuracy']:.3f})")
        return 0
    states = out / "states.pt"
    saved = read_plain(states, "the resumable training state") if states.exists() else None  # before the data
    if saved is not None and saved.get("settings") != settings:
        raise SystemExit(f"teacher-pretrain: {states} was written with other settings; give a new -o")
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    train = read_split(args.libri_root, args.train_split)
    held_out = read_split(args.libri_root, args.held_out_split)
    too_short = [len(w) for w in train + held_out if len(w) < 400 + HOP]
    if too_short:
        raise ValueError(f"{args.libri_root}: {len(too_short)} utterances shorter than 35 ms")
    train_features = [mfcc_features(w) for w in tqdm(train, desc="MFCC", unit="utt")]
    centroids = fit_units(out, train_features, args.clusters, args.seed)
    train_labels = [units(features, centroids) for features in train_features]
    held_out_labels = [units(mfcc_features(w), centroids) for w in held_out]
    frequencies = torch.bincount(torch.cat(held_out_labels), minlength=args.clusters)
    majority = float(frequencies.max() / frequencies.sum())

    shape = TeacherShape(args.layers, args.embed_dim, args.ffn_dim, args.heads)
    model, task_cfg, model_cfg, symbols = build_model(shape, args.clusters, args.mask_prob, args.mask_length,
                                                      args.feature_grad_mult)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01)
    step, rng = 0, random.Random(args.seed)
    if saved is not None:
        step = resume(states, saved, model, optimizer, rng)
        print(f"teacher-pretrain: resuming {states} at step {step}", flush=True)
    parameters = sum(p.numel() for p in model.parameters())
    print(f"teacher-pretrain: HuBERT {shape}, {parameters:,} parameters, {len(train)} training utterances", flush=True)

    writer = SummaryWriter(str(out))
    max_samples = int(args.max_seconds * SAMPLE_RATE)
    model.train()
    progress = tqdm(total=args.steps, initial=step, desc="teacher-pretrain", unit="step", dynamic_ncols=True)
    while step < args.steps:
        indices = rng.sample(range(len(train)), min(args.batch_size, len(train)))
        sources, targets = crop_batch(train, train_labels, indices, max_samples, rng)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args.steps, args.lr)
        loss, correct, total = masked_prediction(model, sources, targets, args.unmasked_weight)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"teacher-pretrain: loss {loss.item()} at step {step}; {states} holds the last good state")
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        step += 1
        progress.update()
        progress.set_postfix(loss=f"{loss.item():.3f}", acc=f"{int(correct) / int(total):.3f}")
        writer.add_scalar("train/loss", loss.item(), step)
        writer.add_scalar("train/masked_accuracy", int(correct) / int(total), step)
        writer.add_scalar("train/lr", optimizer.param_groups[0]["lr"], step)
        if step % args.save_every == 0 or step == args.steps:
            save_atomic({"settings": settings, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "step": step, **rng_states(rng)}, states)
    progress.close()

    accuracy = held_out_accuracy(model, held_out, held_out_labels, args.seed)
    writer.add_scalar("held_out/masked_accuracy", accuracy, step)
    writer.close()
    teacher = out / "teacher.pt"
    save_atomic(hubert_checkpoint(model, task_cfg, model_cfg, symbols), teacher)
    result = {"teacher": str(teacher), "parameters": parameters, "steps": step,
              "held_out_masked_accuracy": accuracy, "majority_unit_accuracy": majority,
              "held_out_utterances": len(held_out), "settings": settings}
    write_atomically(out / "result.json", lambda path: Path(path).write_text(json.dumps(result, indent=2) + "\n"))
    print(f"teacher-pretrain: {teacher} ({parameters:,} parameters); masked-prediction accuracy on "
          f"{len(held_out)} held-out utterances {accuracy:.3f} (most frequent unit: {majority:.3f})", flush=True)
    return 0

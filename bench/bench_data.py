"""The distiller's data pipeline alone: FLAC decode, length buckets and collation in DataLoader workers.

The pipeline is the pretrain expert's own (`WaveformDataset` -> `LengthBucketBatchSampler` ->
`BucketBatches` -> `DataLoader(batch_size=None, num_workers=W)`), over `--utterances` 16-bit FLAC files
of 10-16 s (speech-band noise), each listed `--passes` times (so that many batches keep many workers
busy; the files stay in the page cache, as a corpus read every epoch on a machine with spare memory does),
batch `--batch`. Reported per worker count: utterances and audio seconds per second over one epoch,
worker start-up included. For comparison, the same files
read as raw int16 `.npy` (what a one-time decoded cache would hold) with the same workers.
`--consumer UTT_PER_S` (the GPU step's rate, bench_distill_gpu.py) adds the workers needed to keep up.

    python bench/bench_data.py [--utterances 48] [--passes 10] [--batch 24] [--workers 0 1 2] [--consumer 150]
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from benchlib import load_expert_module, machine_line, utterance_seconds, write_corpus
from s3prl_star.distill.data import SAMPLE_RATE, LengthBucketBatchSampler, WaveformDataset, load_length_csvs


class NpyDataset(Dataset):
    """Item i: the float32 waveform of a raw int16 `.npy` file (a decoded cache entry)."""

    def __init__(self, paths: list[str]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.from_numpy(np.load(self.paths[index]).astype(np.float32) / 32768.0)


def epoch_rate(dataset, lengths: list[int], batch: int, workers: int, expert_module) -> tuple[float, float]:
    """(utterances / s, audio seconds / s) over one epoch, worker start-up included."""
    buckets = LengthBucketBatchSampler(lengths, batch, shuffle=True, seed=0)
    loader = DataLoader(expert_module.BucketBatches(dataset, buckets.batches_per_epoch), batch_size=None,
                        sampler=buckets, num_workers=workers)
    started, utterances, samples = time.perf_counter(), 0, 0
    for waveforms, batch_lengths in loader:
        utterances += len(batch_lengths)
        samples += int(batch_lengths.sum())
    elapsed = time.perf_counter() - started
    return utterances / elapsed, samples / SAMPLE_RATE / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--utterances", type=int, default=48, help="distinct files")
    parser.add_argument("--passes", type=int, default=10, help="times each file is listed")
    parser.add_argument("--batch", type=int, default=24)
    parser.add_argument("--seconds", type=float, nargs=2, default=(10.0, 16.0), metavar=("LOW", "HIGH"))
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--consumer", type=float, help="utterances / s the training step consumes")
    args = parser.parse_args(argv)
    expert_module = load_expert_module()
    torch.set_num_threads(1)  # decoding is per worker; collation is light

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch) / "LibriSpeech"
        seconds = utterance_seconds(args.utterances, *args.seconds)
        csv_dir = write_corpus(root, seconds)
        items = load_length_csvs([csv_dir / "train-clean-100.csv"], root) * args.passes
        flac = WaveformDataset(items)
        npy_paths = []
        for index in range(args.utterances):
            npy_paths.append(str(Path(scratch) / f"{index}.npy"))
            np.save(npy_paths[-1], (flac[index].numpy() * 32768.0).round().astype(np.int16))
        npy_paths *= args.passes
        lengths = flac.lengths
        flac_bytes = sum(Path(path).stat().st_size for path, _ in items[:args.utterances])
        results = [(workers, epoch_rate(flac, lengths, args.batch, workers, expert_module),
                    epoch_rate(NpyDataset(npy_paths), lengths, args.batch, workers, expert_module))
                   for workers in args.workers]

    print(f"data pipeline alone: {args.utterances} utterances of {args.seconds[0]:.0f}-{args.seconds[1]:.0f} s "
          f"x {args.passes} passes (mean {np.mean(seconds):.1f} s, FLAC {flac_bytes / sum(lengths[:args.utterances]) / 2:.0%} "
          f"of raw 16-bit), batch {args.batch}")
    print(machine_line("cpu"))
    print(f"{'workers':>8} {'FLAC utt/s':>12} {'FLAC audio s/s':>16} {'int16 .npy utt/s':>18} {'.npy audio s/s':>16}")
    for workers, (flac_utt, flac_audio), (npy_utt, npy_audio) in results:
        print(f"{workers:>8} {flac_utt:>12.1f} {flac_audio:>16.0f} {npy_utt:>18.1f} {npy_audio:>16.0f}")
    if args.consumer:
        one_core = next((rate for workers, (rate, _), _ in results if workers == 0), None)
        if one_core:
            print(f"the step consumes {args.consumer:.0f} utt/s: FLAC decoding needs about "
                  f"{math.ceil(args.consumer / one_core)} busy cores at the in-process rate ({one_core:.1f} utt/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""LibriSpeech length CSVs (s3prl's format) and the waveform pipeline the distiller trains on.

`s3prl-star prepare-librispeech ROOT -o DIR --splits train-clean-100 dev-clean` writes
`DIR/<split>.csv` as s3prl's `preprocess/generate_len_for_bucket.py` does:

    ,file_path,length,label
    0,train-clean-100/103/1240/103-1240-0000.flac,252000,CHAPTER ONE ...

longest first; `file_path` is relative to the LibriSpeech root, because s3prl's readers join
it to their `libri_root` (`pretrain/bucket_dataset.py`, the distiller's `OnlineWaveDataset`)
and the ASR reader finds `<speaker>-<chapter>.trans.txt` from its last two directories
(`downstream/asr/dataset.py`). s3prl leaves `label` empty; here it holds the transcript.

For distillation (STaR: whole utterances in length-sorted buckets, no random crop):
`load_length_csvs` -> `WaveformDataset` + `LengthBucketBatchSampler` -> `collate_waveforms`.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import Dataset, Sampler
from tqdm import tqdm

from s3prl_star.atomic import write_atomically

SAMPLE_RATE = 16000
CSV_HEADER = ["", "file_path", "length", "label"]
# `--verify quick` reads back only these frames from the end of each file: a truncated FLAC fails
# there although soundfile.info still reports the length from its header (a file corrupted in the
# middle passes; `--verify full`, the default, decodes every frame).
TAIL_FRAMES = 1600
VERIFY_MODES = ("full", "quick")
DECODE_BLOCK = 1 << 16  # frames per block when decoding a whole file
# The shortest utterance a model can take: one frame's receptive field, 400 samples = 25 ms, for HuBERT's
# conv stack and every student preset's (`StarHubert.receptive_field`). A shorter file would pass into
# the length CSV and stop distillation (or ASR) when its batch comes, naming no file.
MIN_SAMPLES = 400


class CorpusError(ValueError):
    """The corpus root or a split cannot be used at all (not a per-file problem)."""


class UnreadableAudioError(ValueError):
    """An audio file of the training data cannot be decoded (the message names it)."""


@dataclass(frozen=True)
class Utterance:
    file_path: str  # "<split>/<speaker>/<chapter>/<utt-id>.flac", relative to the root
    length: int  # samples at 16 kHz
    transcript: str


@dataclass(frozen=True)
class BadFile:
    path: Path
    reason: str  # what is wrong and what was expected


def check_audio(path: Path, verify: str = "full") -> tuple[int, str | None]:
    """(samples, None) for a readable 16 kHz mono file with samples, else (0, reason).

    `verify`: "full" decodes every frame (catches corruption anywhere, FLAC frames carry CRCs);
    "quick" reads the header and the last TAIL_FRAMES frames (catches truncation only)."""
    if path.stat().st_size == 0:
        return 0, "empty file (0 bytes); expected 16 kHz mono FLAC"
    try:
        info = sf.info(path)
    except sf.LibsndfileError as error:
        return 0, f"unreadable ({error}); expected 16 kHz mono FLAC"
    if info.samplerate != SAMPLE_RATE:
        return 0, f"sample rate {info.samplerate} Hz; expected {SAMPLE_RATE} Hz"
    if info.channels != 1:
        return 0, f"{info.channels} channels; expected mono"
    if info.frames <= 0:
        return 0, "no samples; expected 16 kHz mono speech"
    if info.frames < MIN_SAMPLES:
        return 0, (f"{info.frames} samples ({1000 * info.frames / SAMPLE_RATE:.1f} ms); expected at least "
                   f"{MIN_SAMPLES} ({1000 * MIN_SAMPLES / SAMPLE_RATE:.0f} ms, one frame's receptive field)")
    start = 0 if verify == "full" else max(0, info.frames - TAIL_FRAMES)
    try:
        decoded = sum(len(block) for block in sf.blocks(path, blocksize=DECODE_BLOCK, dtype="int16", start=start))
    except sf.LibsndfileError as error:
        decoded, reason = 0, str(error)
    else:
        reason = f"decoded {decoded} samples"
    if decoded != info.frames - start:
        part = "decoding it" if verify == "full" else "reading its end"
        return 0, f"truncated or corrupt: the header says {info.frames} samples, {part} failed ({reason})"
    return info.frames, None


def read_transcripts(split_dir: Path) -> tuple[dict[str, tuple[str | None, Path]], list[BadFile]]:
    """{utt-id: (transcript, .trans.txt path)} of a split, and malformed transcript files/lines. An
    utterance id on a second line is one, and its transcript is None: which line is right cannot be told."""
    transcripts: dict[str, tuple[str | None, Path]] = {}
    first_lines: dict[str, int] = {}
    bad = []
    for path in sorted(split_dir.rglob("*.trans.txt")):
        parts = path.relative_to(split_dir).parts
        if len(parts) != 3 or parts[2] != f"{parts[0]}-{parts[1]}.trans.txt":
            bad.append(BadFile(path, "misplaced; expected <speaker>/<chapter>/<speaker>-<chapter>.trans.txt"))
            continue
        for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                bad.append(BadFile(path, f"line {number} is not UTF-8 (byte 0x{raw[error.start]:02x} at column "
                                         f"{error.start + 1}); expected UTF-8 text"))
                continue
            if not line.strip():
                continue
            utterance_id, _, text = line.strip().partition(" ")
            if not text.strip() or not utterance_id.startswith(f"{parts[0]}-{parts[1]}-"):
                bad.append(BadFile(path, f"line {number} {line!r}; expected "
                                         f"'{parts[0]}-{parts[1]}-<n> TRANSCRIPT'"))
                continue
            if utterance_id in transcripts:
                first = first_lines[utterance_id]
                bad.append(BadFile(path, f"line {number}: {utterance_id} again (first on line {first}); "
                                         "expected one line per utterance"))
                transcripts[utterance_id] = (None, path)
                continue
            transcripts[utterance_id] = (text.strip(), path)
            first_lines[utterance_id] = number
    return transcripts, bad


def scan_split(root: Path, split: str, verify: str = "full") -> tuple[list[Utterance], list[BadFile]]:
    """Every usable utterance of `root/split` and every bad file (audio or transcript); audio checked
    by `check_audio(path, verify)`."""
    split_dir = root / split
    if not split_dir.is_dir():
        raise CorpusError(f"split directory {split_dir} does not exist "
                          f"(expected {root}/<split>/<speaker>/<chapter>/*.flac)")
    audio_paths = sorted(split_dir.rglob("*.flac"))
    if not audio_paths:
        raise CorpusError(f"no .flac files under {split_dir}")
    transcripts, bad = read_transcripts(split_dir)
    utterances = []
    for path in tqdm(audio_paths, desc=f"checking {split}", unit="file", dynamic_ncols=True):
        parts = path.relative_to(split_dir).parts
        if len(parts) != 3 or not path.stem.startswith(f"{parts[0]}-{parts[1]}-"):
            bad.append(BadFile(path, "misplaced; expected <speaker>/<chapter>/<speaker>-<chapter>-<n>.flac"))
            continue
        if path.stem not in transcripts:
            bad.append(BadFile(path, f"no line for {path.stem} in "
                                     f"{path.parent / (parts[0] + '-' + parts[1] + '.trans.txt')}"))
            continue
        if transcripts[path.stem][0] is None:
            continue  # its id is on two transcript lines: reported by read_transcripts
        length, problem = check_audio(path, verify)
        if problem is not None:
            bad.append(BadFile(path, problem))
            continue
        utterances.append(Utterance(path.relative_to(root).as_posix(), length, transcripts[path.stem][0]))
    audio_ids = {path.stem for path in audio_paths}
    for utterance_id, (_, transcript_path) in transcripts.items():
        if utterance_id not in audio_ids:
            bad.append(BadFile(transcript_path, f"line for {utterance_id} has no audio file "
                                                f"{transcript_path.parent / (utterance_id + '.flac')}"))
    return utterances, bad


def write_length_csv(path: Path, utterances: Sequence[Utterance]) -> None:
    """s3prl's length CSV, longest first (ties by path), written atomically."""
    ordered = sorted(utterances, key=lambda u: (-u.length, u.file_path))

    def write(temporary: str) -> None:
        with open(temporary, "w", newline="") as file:
            writer = csv.writer(file, lineterminator="\n")
            writer.writerow(CSV_HEADER)
            for index, utterance in enumerate(ordered):
                writer.writerow([index, utterance.file_path, utterance.length, utterance.transcript])

    write_atomically(path, write)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="s3prl-star prepare-librispeech",
        description="Write s3prl's LibriSpeech length CSVs (<output-dir>/<split>.csv) after "
                    "checking every file: 16 kHz mono FLAC, readable, with a transcript line.")
    parser.add_argument("root", type=Path, help="LibriSpeech root holding the split directories")
    parser.add_argument("-o", "--output-dir", type=Path, required=True, help="where <split>.csv go")
    parser.add_argument("--splits", nargs="+", required=True, metavar="SPLIT",
                        help="split directories under ROOT, e.g. train-clean-100 dev-clean")
    parser.add_argument("--verify", choices=VERIFY_MODES, default="full",
                        help="full (default): decode every audio file completely, catching corruption "
                             "anywhere; quick: read the header and the last 0.1 s only (catches truncation)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="leave bad files out (listed with reasons) instead of failing")
    args = parser.parse_args(argv)

    if not args.root.is_dir():
        print(f"error: LibriSpeech root {args.root} is not a directory", file=sys.stderr)
        return 1
    scanned = {}
    all_bad = []
    try:
        for split in args.splits:
            scanned[split], bad = scan_split(args.root, split, args.verify)
            all_bad += bad
    except CorpusError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    report = "".join(f"  {bad.path}: {bad.reason}\n" for bad in all_bad)
    if all_bad and not args.skip_bad:
        print(f"error: {len(all_bad)} bad file(s); fix them or pass --skip-bad to leave them out:\n"
              f"{report}", end="", file=sys.stderr)
        return 1
    if all_bad:
        print(f"skipped {len(all_bad)} bad file(s):\n{report}", end="", file=sys.stderr)
    for split, utterances in scanned.items():
        if not utterances:
            print(f"error: no usable utterances left in {args.root / split}", file=sys.stderr)
            return 1
    for split, utterances in scanned.items():
        path = args.output_dir / f"{split}.csv"
        try:
            write_length_csv(path, utterances)
        except OSError as error:
            print(f"error: cannot write {path}: {error.strerror or error}", file=sys.stderr)
            return 1
        hours = sum(u.length for u in utterances) / SAMPLE_RATE / 3600
        print(f"wrote {path}: {len(utterances)} utterances, {hours:.2f} h")
    return 0


def load_length_csvs(csv_paths: Sequence[str | os.PathLike], root: str | os.PathLike,
                     max_length: int | None = None) -> list[tuple[str, int]]:
    """(absolute audio path, samples) of every row of the CSVs, in file order.

    Rows longer than `max_length` samples are dropped (and counted on stdout), not cropped:
    STaR distils whole utterances. Paths are `root/file_path`, as s3prl's readers join them.
    """
    root = os.path.abspath(root)
    items, short = [], []
    for csv_path in csv_paths:
        with open(csv_path, newline="") as file:
            rows = csv.reader(file)
            header = next(rows, None)
            if header != CSV_HEADER:
                raise ValueError(f"{csv_path}: header {header!r}; expected {','.join(CSV_HEADER)!r} "
                                 "(write it with `s3prl-star prepare-librispeech`)")
            for number, row in enumerate(rows, start=2):
                if len(row) != len(CSV_HEADER) or not row[1] or not row[2].isdigit() or int(row[2]) == 0:
                    raise ValueError(f"{csv_path}: line {number} {row!r}; expected "
                                     "'index,<split>/<spk>/<chapter>/<utt>.flac,<samples > 0>,<label>'")
                if int(row[2]) < MIN_SAMPLES:
                    short.append(f"{csv_path} line {number}: {row[1]} ({row[2]} samples)")
                items.append((os.path.join(root, row[1]), int(row[2])))
    if short:
        raise ValueError(f"{len(short)} utterance(s) shorter than {MIN_SAMPLES} samples (one frame's receptive field, "
                         f"{1000 * MIN_SAMPLES / SAMPLE_RATE:.0f} ms), which no model can take: "
                         + "; ".join(short[:5]) + ("; ..." if len(short) > 5 else "")
                         + " (`s3prl-star prepare-librispeech --skip-bad` writes CSVs without them)")
    missing = [path for path, _ in items if not os.path.isfile(path)]
    if missing:
        raise FileNotFoundError(f"{len(missing)} audio file(s) listed in {[str(p) for p in csv_paths]} "
                                f"are missing under root {root}, e.g. {missing[0]}")
    if max_length is not None:
        kept = [(path, length) for path, length in items if length <= max_length]
        print(f"[data] dropped {len(items) - len(kept)} of {len(items)} utterances longer than "
              f"{max_length} samples ({max_length / SAMPLE_RATE:.1f} s)")
        items = kept
    if not items:
        raise ValueError(f"no utterances in {[str(p) for p in csv_paths]}"
                         + ("" if max_length is None else f" of at most {max_length} samples"))
    return items


class WaveformDataset(Dataset):
    """Item i: the float32 waveform (S,) of `items[i] = (path, samples)`, read in the worker.

    A file that cannot be decoded raises UnreadableAudioError naming it; with `skip_unreadable`,
    it is named on stderr instead and the item is None (`collate_waveforms` leaves it out)."""

    def __init__(self, items: Sequence[tuple[str, int]], skip_unreadable: bool = False):
        self.items = list(items)
        self.skip_unreadable = skip_unreadable

    def __len__(self) -> int:
        return len(self.items)

    @property
    def lengths(self) -> list[int]:
        return [length for _, length in self.items]

    def __getitem__(self, index: int) -> torch.Tensor | None:
        path, expected_length = self.items[index]
        try:
            return read_waveform(path, expected_length)
        except UnreadableAudioError as error:
            if not self.skip_unreadable:
                raise
            print(f"[data] skipped: {error}", file=sys.stderr)
            return None


def read_waveform(path: str, expected_length: int) -> torch.Tensor:
    """The float32 waveform (S,) of a 16 kHz mono file of `expected_length` samples; raises
    UnreadableAudioError naming the file when it cannot be decoded or does not match its length CSV."""
    try:
        waveform, sample_rate = sf.read(path, dtype="float32", always_2d=True)
    except (sf.SoundFileError, OSError) as error:
        raise UnreadableAudioError(
            f"{path}: cannot decode ({str(error).strip()}); replace it and re-run prepare-librispeech, or set "
            "pretrain_expert.datarc.skip_unreadable: true to skip such files"
        ) from None
    if sample_rate != SAMPLE_RATE or waveform.shape[1] != 1:
        raise UnreadableAudioError(f"{path}: {sample_rate} Hz, {waveform.shape[1]} channel(s); "
                                   f"expected {SAMPLE_RATE} Hz mono")
    if waveform.shape[0] != expected_length:
        raise UnreadableAudioError(f"{path}: {waveform.shape[0]} samples; the length CSV says "
                                   f"{expected_length} (re-run prepare-librispeech)")
    return torch.from_numpy(waveform[:, 0])


def collate_waveforms(batch: Sequence[torch.Tensor | None]) -> tuple[torch.Tensor, torch.Tensor]:
    """Waveforms (B, S_max) float32 zero-padded at the end, and lengths (B,) int64; None items
    (files `WaveformDataset` skipped) are left out."""
    batch = [waveform for waveform in batch if waveform is not None]
    if not batch:
        raise UnreadableAudioError("every file of this batch was skipped as unreadable (listed above)")
    lengths = torch.tensor([len(waveform) for waveform in batch], dtype=torch.int64)
    return torch.nn.utils.rnn.pad_sequence(list(batch), batch_first=True), lengths


class LengthBucketBatchSampler(Sampler[list[int]]):
    """Batches of similar-length utterances, identical in content for any split over ranks.

    Indices are sorted longest first and cut into global batches of `batch_size * world_size`
    consecutive utterances; each epoch shuffles the order of the global batches with a
    generator seeded by (seed, epoch), and rank r yields its contiguous share of each global
    batch. So at every step the ranks' batches, concatenated in rank order, equal the batch
    one process with `batch_size * world_size` yields. The buckets themselves are fixed, as in
    s3prl's bucketed datasets.

    A short last global batch (the m < batch_size * world_size shortest utterances) is
    dropped with `drop_last`; otherwise it is merged into the global batch before it (if any),
    which then holds up to 2 * batch_size * world_size - 1 of the shortest utterances. The rule
    depends on the global batch size only, so it is the same for every split over ranks, and
    it gives every rank at least `batch_size` utterances: all ranks yield the same number of
    non-empty batches (no DDP deadlock) and each utterance comes exactly once per epoch.
    A global batch is split over ranks as evenly as possible (shares differ by at most one).
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, *, world_size: int = 1,
                 rank: int = 0, shuffle: bool = True, seed: int = 0, drop_last: bool = False):
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"batch_size={batch_size}, world_size={world_size}, rank={rank}; "
                             "expected batch_size >= 1, world_size >= 1, 0 <= rank < world_size")
        if len(lengths) < world_size:
            raise ValueError(f"{len(lengths)} utterances cannot fill world_size={world_size} ranks")
        super().__init__()
        self.world_size, self.rank = world_size, rank
        self.shuffle, self.seed = shuffle, seed
        self.epoch, self.start = 0, 0
        order = sorted(range(len(lengths)), key=lambda index: (-lengths[index], index))
        global_size = batch_size * world_size
        batches = [order[i:i + global_size] for i in range(0, len(order), global_size)]
        if len(batches[-1]) < global_size:
            if drop_last:
                batches.pop()
            elif len(batches) > 1:
                remainder = batches.pop()
                batches[-1] += remainder
        if not batches:
            raise ValueError(f"{len(lengths)} utterances make no full global batch of {global_size} "
                             "(drop_last=True)")
        self.global_batches = batches

    @property
    def batches_per_epoch(self) -> int:
        return len(self.global_batches)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's batch order; resets `set_start` to the beginning of the epoch."""
        self.epoch, self.start = epoch, 0

    def set_start(self, batches_done: int) -> None:
        """Skip the first `batches_done` batches of the current epoch (exact mid-epoch resume)."""
        if not 0 <= batches_done <= self.batches_per_epoch:
            raise ValueError(f"batches_done={batches_done}; expected 0..{self.batches_per_epoch}")
        self.start = batches_done

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start

    def __iter__(self) -> Iterator[list[int]]:
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.batches_per_epoch)
        else:
            order = np.arange(self.batches_per_epoch)
        for batch_index in order[self.start:]:
            batch = self.global_batches[batch_index]
            base, extra = divmod(len(batch), self.world_size)
            first = self.rank * base + min(self.rank, extra)
            yield batch[first:first + base + (self.rank < extra)]

"""`s3prl-star prepare-librispeech`, the length CSVs, and the distiller's dataset/sampler/collate."""
import csv
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from torch.utils.data import DataLoader

from s3prl_star.distill.data import LengthBucketBatchSampler, WaveformDataset, collate_waveforms, load_length_csvs, main

SPLITS = ("train-clean-100", "dev-clean")


def prepare(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "s3prl_star.cli", "prepare-librispeech", *args],
                          capture_output=True, text=True, timeout=120)


def transcripts_of(split_dir: Path) -> dict[str, str]:
    lines = [line for path in split_dir.rglob("*.trans.txt") for line in path.read_text().splitlines()]
    return dict(line.split(" ", 1) for line in lines)


@pytest.fixture(scope="module")
def prepared(mini_librispeech, tmp_path_factory):
    """(corpus root, CSV directory) after running the command as a user does."""
    csv_dir = tmp_path_factory.mktemp("len_for_bucket")
    result = prepare(str(mini_librispeech), "-o", str(csv_dir), "--splits", *SPLITS)
    assert result.returncode == 0, result.stderr
    return mini_librispeech, csv_dir


def test_prepare_writes_s3prl_length_csvs(prepared):
    root, csv_dir = prepared
    for split in SPLITS:
        text = (csv_dir / f"{split}.csv").read_text()
        assert text.startswith(",file_path,length,label\n")
        rows = list(csv.reader(text.splitlines()[1:]))
        assert [int(row[0]) for row in rows] == list(range(len(rows)))
        lengths = [int(row[2]) for row in rows]
        assert lengths == sorted(lengths, reverse=True) and len(set(lengths)) > 1
        audio = sorted((root / split).rglob("*.flac"))
        assert sorted(row[1] for row in rows) == sorted(p.relative_to(root).as_posix() for p in audio)
        transcripts = transcripts_of(root / split)
        for _, file_path, length, label in rows:
            assert file_path.startswith(f"{split}/")
            assert int(length) == sf.info(root / file_path).frames == len(sf.read(root / file_path)[0])
            assert label == transcripts[Path(file_path).stem]
    assert not list(csv_dir.glob(".*"))  # no temporary files left behind


def test_s3prl_reads_the_csvs(prepared):
    """s3prl's own bucketing reader (pandas) joins `file_path` to `libri_root` and finds the audio."""
    from s3prl.pretrain.bucket_dataset import WaveDataset

    root, csv_dir = prepared
    dataset = WaveDataset({"sequence_length": 0}, 4, str(csv_dir), list(SPLITS), libri_root=str(root))
    paths = [path for bucket in dataset.X for path in bucket]
    assert len(paths) == 32 and all((root / path).is_file() for path in paths)


def test_s3prl_asr_reader_finds_every_transcript(prepared):
    """s3prl's ASR dataset derives `<spk>-<chapter>.trans.txt` from `file_path`'s directories."""
    from s3prl.downstream.asr.dataset import SequenceDataset
    from s3prl.downstream.asr.dictionary import Dictionary

    root, csv_dir = prepared
    characters = Dictionary()
    for symbol in "|'ABCDEFGHIJKLMNOPQRSTUVWXYZ":
        characters.add_symbol(symbol)
    dataset = SequenceDataset("train", 4, characters, str(root), str(csv_dir), train=["dev-clean"])
    assert sum(len(bucket) for bucket in dataset.X) == 8
    for utterance_id, transcript in transcripts_of(root / "dev-clean").items():
        assert characters.string(dataset.Y[utterance_id]) == " ".join(transcript.replace(" ", "|")) + " |"


# name -> (corrupt the i-th dev-clean file, or its chapter's transcript; phrase the report must hold)
def _rewrite_audio(path: Path, **write_args):
    samples, _ = sf.read(path, dtype="int16")
    sf.write(path, write_args.pop("transform", lambda x: x)(samples), write_args.pop("rate", 16000),
             format="FLAC", subtype="PCM_16")


def _transcript_of(audio: Path) -> Path:
    return audio.parent / f"{audio.parent.parent.name}-{audio.parent.name}.trans.txt"


def _drop_transcript_line(audio: Path):
    transcript = _transcript_of(audio)
    lines = [line for line in transcript.read_text().splitlines() if not line.startswith(audio.stem)]
    transcript.write_text("".join(line + "\n" for line in lines))


def _add_orphan_line(audio: Path):
    transcript = _transcript_of(audio)
    orphan = audio.stem.rsplit("-", 1)[0] + "-0099"
    transcript.write_text(transcript.read_text() + f"{orphan} NO SUCH AUDIO\n")
    return transcript, orphan


BAD_KINDS = {
    "unreadable": (lambda p: p.write_bytes(b"not audio at all" * 64), "unreadable"),
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), "truncated or corrupt"),
    "empty": (lambda p: p.write_bytes(b""), "empty file (0 bytes)"),
    "8 kHz": (lambda p: _rewrite_audio(p, rate=8000), "sample rate 8000 Hz; expected 16000 Hz"),
    "stereo": (lambda p: _rewrite_audio(p, transform=lambda x: np.stack([x, x], 1)), "2 channels; expected mono"),
    "no transcript line": (_drop_transcript_line, "no line for"),
}


@pytest.fixture
def dev_copy(mini_librispeech, tmp_path):
    """A writable copy of the corpus' dev-clean split: (root, sorted audio paths)."""
    root = tmp_path / "LibriSpeech"
    shutil.copytree(mini_librispeech / "dev-clean", root / "dev-clean")
    return root, sorted((root / "dev-clean").rglob("*.flac"))


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_each_bad_file_kind_is_named_and_skippable(dev_copy, tmp_path, capsys, kind):
    root, audio = dev_copy
    corrupt, phrase = BAD_KINDS[kind]
    bad = audio[3]
    corrupt(bad)
    out = tmp_path / "csv"
    assert main([str(root), "-o", str(out), "--splits", "dev-clean"]) == 1
    error = capsys.readouterr().err
    assert f"{bad}: " in error and phrase in error and "--skip-bad" in error
    assert not out.exists()

    assert main([str(root), "-o", str(out), "--splits", "dev-clean", "--skip-bad"]) == 0
    captured = capsys.readouterr()
    assert "skipped 1 bad file(s)" in captured.err and f"{bad}: " in captured.err
    rows = (out / "dev-clean.csv").read_text().splitlines()[1:]
    assert len(rows) == len(audio) - 1 and not any(bad.stem in row for row in rows)


def test_transcript_line_without_audio_is_named(dev_copy, tmp_path, capsys):
    root, audio = dev_copy
    transcript, orphan = _add_orphan_line(audio[0])
    assert main([str(root), "-o", str(tmp_path / "csv"), "--splits", "dev-clean"]) == 1
    error = capsys.readouterr().err
    assert f"{transcript}: line for {orphan} has no audio file" in error
    assert main([str(root), "-o", str(tmp_path / "csv"), "--splits", "dev-clean", "--skip-bad"]) == 0
    assert len((tmp_path / "csv" / "dev-clean.csv").read_text().splitlines()) == 1 + len(audio)


def test_command_lists_every_bad_file_and_skips_them(dev_copy, tmp_path):
    root, audio = dev_copy
    bad = dict(zip(BAD_KINDS, audio))
    for kind, path in bad.items():
        BAD_KINDS[kind][0](path)
    transcript, orphan = _add_orphan_line(audio[-1])
    out = tmp_path / "csv"

    failed = prepare(str(root), "-o", str(out), "--splits", "dev-clean")
    assert failed.returncode == 1 and not out.exists()
    for kind, path in bad.items():
        assert f"{path}: " in failed.stderr and BAD_KINDS[kind][1] in failed.stderr, kind
    assert f"{transcript}: line for {orphan}" in failed.stderr

    skipped = prepare(str(root), "-o", str(out), "--splits", "dev-clean", "--skip-bad")
    assert skipped.returncode == 0, skipped.stderr
    assert f"skipped {len(bad) + 1} bad file(s)" in skipped.stderr
    assert all(f"{path}: " in skipped.stderr for path in bad.values())
    rows = list(csv.reader((out / "dev-clean.csv").read_text().splitlines()[1:]))
    assert sorted(row[1] for row in rows) == sorted(p.relative_to(root).as_posix() for p in audio[len(bad):])


def test_missing_root_or_split_is_an_error(mini_librispeech, tmp_path, capsys):
    out = tmp_path / "csv"
    assert main([str(tmp_path / "nowhere"), "-o", str(out), "--splits", "dev-clean"]) == 1
    assert f"{tmp_path / 'nowhere'} is not a directory" in capsys.readouterr().err
    assert main([str(mini_librispeech), "-o", str(out), "--splits", "dev-clean", "dev-other"]) == 1
    assert f"{mini_librispeech / 'dev-other'} does not exist" in capsys.readouterr().err
    assert not out.exists()  # nothing written, not even the good split


# --- the distiller's pipeline ---

def test_load_length_csvs_keeps_whole_utterances_up_to_max_length(prepared, capsys):
    root, csv_dir = prepared
    csvs = [csv_dir / f"{split}.csv" for split in SPLITS]
    items = load_length_csvs(csvs, root)
    assert len(items) == 32
    assert all(Path(path).is_absolute() and sf.info(path).frames == length for path, length in items)
    capsys.readouterr()
    limit = sorted(length for _, length in items)[20]
    kept = load_length_csvs(csvs, root, max_length=limit)
    assert kept == [item for item in items if item[1] <= limit] and len(kept) == 21
    assert "dropped 11 of 32 utterances" in capsys.readouterr().out
    with pytest.raises(ValueError, match="at most 10 samples"):
        load_length_csvs(csvs, root, max_length=10)


def test_load_length_csvs_names_the_bad_csv(prepared, tmp_path):
    root, csv_dir = prepared
    bad_header = tmp_path / "header.csv"
    bad_header.write_text("file_path,length\n")
    with pytest.raises(ValueError, match=f"{bad_header}: header"):
        load_length_csvs([bad_header], root)
    bad_row = tmp_path / "row.csv"
    bad_row.write_text(",file_path,length,label\n0,dev-clean/a.flac,12.5,X\n")
    with pytest.raises(ValueError, match=f"{bad_row}: line 2"):
        load_length_csvs([bad_row], root)
    with pytest.raises(FileNotFoundError, match="missing under root"):
        load_length_csvs([csv_dir / "dev-clean.csv"], tmp_path)


def test_dataloader_yields_padded_batches_read_in_workers(prepared):
    root, csv_dir = prepared
    dataset = WaveformDataset(load_length_csvs([csv_dir / "train-clean-100.csv"], root))
    sampler = LengthBucketBatchSampler(dataset.lengths, 5, seed=1)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_waveforms, num_workers=1)
    seen = []
    for indices, (waveforms, lengths) in zip(list(sampler), loader):
        assert waveforms.dtype == torch.float32 and lengths.dtype == torch.int64
        assert waveforms.shape == (len(indices), max(lengths))
        for row, index, length in zip(waveforms, indices, lengths):
            path, expected = dataset.items[index]
            assert length == expected
            assert torch.equal(row[:length], torch.from_numpy(sf.read(path, dtype="float32")[0]))
            assert not row[length:].any()
        seen += indices
    assert sorted(seen) == list(range(24))


def test_waveform_dataset_names_a_bad_file(tmp_path):
    wrong_rate = tmp_path / "8k.flac"
    sf.write(wrong_rate, np.zeros(800, np.int16), 8000)
    with pytest.raises(ValueError, match=f"{wrong_rate}: 8000 Hz, 1 channel"):
        WaveformDataset([(str(wrong_rate), 800)])[0]
    stale = tmp_path / "stale.flac"
    sf.write(stale, np.zeros(1600, np.int16), 16000)
    with pytest.raises(ValueError, match=f"{stale}: 1600 samples; the length CSV says 1700"):
        WaveformDataset([(str(stale), 1700)])[0]


def test_collate_pads_with_zeros_and_returns_lengths():
    waveforms, lengths = collate_waveforms([torch.ones(3), torch.full((5,), 2.0)])
    assert torch.equal(lengths, torch.tensor([3, 5]))
    assert torch.equal(waveforms, torch.tensor([[1.0, 1, 1, 0, 0], [2.0, 2, 2, 2, 2]]))


# --- the sampler (pure index arithmetic) ---

LENGTHS = [int(x) for x in np.random.default_rng(0).integers(16000, 64000, 53)]


def epoch_of(sampler, epoch):
    sampler.set_epoch(epoch)
    return list(sampler)


def test_sampler_epoch_covers_each_utterance_once_in_length_sorted_buckets():
    sampler = LengthBucketBatchSampler(LENGTHS, 4, seed=3)
    batches = epoch_of(sampler, 0)
    assert len(batches) == len(sampler) == sampler.batches_per_epoch == 13
    assert sorted(i for batch in batches for i in batch) == list(range(53))
    by_length = sorted(range(53), key=lambda i: (-LENGTHS[i], i))
    buckets = [by_length[i:i + 4] for i in range(0, 48, 4)] + [by_length[48:]]  # 12 of 4, then 4 + 1
    assert sorted(batches) == sorted(buckets)
    assert batches != buckets  # shuffled order of buckets
    unshuffled = LengthBucketBatchSampler(LENGTHS, 4, shuffle=False)
    assert list(unshuffled) == buckets  # longest first


@pytest.mark.parametrize("count, batch_size, world_size", [(53, 3, 2), (49, 4, 2), (48, 4, 3), (50, 2, 4)])
def test_ranks_together_see_what_one_process_with_the_global_batch_sees(count, batch_size, world_size):
    lengths = LENGTHS[:count]
    single = epoch_of(LengthBucketBatchSampler(lengths, batch_size * world_size, seed=5), 2)
    per_rank = [epoch_of(LengthBucketBatchSampler(lengths, batch_size, world_size=world_size, rank=rank,
                                                  seed=5), 2) for rank in range(world_size)]
    assert all(len(batches) == len(single) for batches in per_rank)  # no rank waits on another
    for step, global_batch in enumerate(single):
        shares = [batches[step] for batches in per_rank]
        assert all(shares)  # every rank has an utterance at every step
        assert [i for share in shares for i in share] == global_batch
    assert sorted(i for batch in single for i in batch) == list(range(count))


def test_drop_last_drops_only_the_short_global_batch():
    sampler = LengthBucketBatchSampler(LENGTHS, 4, world_size=2, rank=1, drop_last=True)
    batches = list(sampler)
    assert len(batches) == 6 and all(len(batch) == 4 for batch in batches)
    longest_dropped = sorted(range(53), key=lambda i: (-LENGTHS[i], i))[48:]
    assert not set(longest_dropped) & {i for batch in batches for i in batch}


def test_set_start_resumes_mid_epoch_exactly():
    sampler = LengthBucketBatchSampler(LENGTHS, 4, seed=11)
    uninterrupted = epoch_of(sampler, 6)
    resumed = LengthBucketBatchSampler(LENGTHS, 4, seed=11)
    resumed.set_epoch(6)
    resumed.set_start(5)
    assert len(resumed) == len(uninterrupted) - 5
    assert list(resumed) == uninterrupted[5:]
    assert epoch_of(resumed, 7) == epoch_of(sampler, 7)  # a new epoch starts from its beginning
    with pytest.raises(ValueError, match="batches_done=14"):
        resumed.set_start(14)


def test_order_is_a_function_of_seed_and_epoch():
    first = LengthBucketBatchSampler(LENGTHS, 4, seed=0)
    second = LengthBucketBatchSampler(LENGTHS, 4, seed=0)
    other_seed = LengthBucketBatchSampler(LENGTHS, 4, seed=1)
    assert epoch_of(first, 1) == epoch_of(second, 1)
    assert epoch_of(first, 1) != epoch_of(first, 2)
    assert epoch_of(first, 1) != epoch_of(other_seed, 1)


def test_sampler_rejects_impossible_settings():
    with pytest.raises(ValueError, match="rank=2"):
        LengthBucketBatchSampler(LENGTHS, 4, world_size=2, rank=2)
    with pytest.raises(ValueError, match="3 utterances cannot fill world_size=4"):
        LengthBucketBatchSampler(LENGTHS[:3], 1, world_size=4)
    with pytest.raises(ValueError, match="no full global batch"):
        LengthBucketBatchSampler(LENGTHS[:5], 4, world_size=2, drop_last=True)

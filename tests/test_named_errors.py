"""Inputs that used to end in a traceback, or pass silently and fail (or mislead) later, are named errors
(issue 21): each names the file, option or key and what was expected.

- `s3prl-star score`: a file that is not UTF-8, a malformed `test at step N: v` line, a malformed QbE
  metric.json; error rates (and accuracies) given as the fractions s3prl prints.
- `s3prl-star corpus` on a full disk (libsndfile said only `System error`).
- `s3prl-star link-s3prl` on a read-only checkout (EROFS).
- `star_hubert_int8`: NaN / inf audio, as the other upstreams refuse it.
- `s3prl-star prepare-librispeech`: files shorter than the 400-sample receptive field, a duplicated
  utterance id in a transcript (and the PR reader's transcripts).
- 8 kHz audio in the SUPERB tasks whose s3prl loader does not resample (SID, IC, PR/SF, ASR, SD).

The audio here is noise written with soundfile (no espeak-ng) unless the case is the corpus builder's.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from helpers import (CLI, git_status, isolated_python, link_s3prl, make_checkout, read_only_tree, site_packages,
                     tmpfs, train_args, downstream_output)
from s3prl_star.integration.link import PATH_FILE_NAME


def score(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, "score", *map(str, args)], capture_output=True, text=True, timeout=120)


def one_line_error(result: subprocess.CompletedProcess, code: int, *expected: str) -> str:
    """The command exited `code`, its stderr ending in one line holding every `expected` piece, with no
    traceback (a progress bar may come before it)."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert lines and all(piece in lines[-1] for piece in expected), result.stderr[-3000:]
    return lines[-1]


# --- score: files that are not UTF-8, malformed lines, malformed metric.json ----------------------------

def test_score_names_a_file_that_is_not_utf8(tmp_path):
    latin1 = tmp_path / "published.json"
    latin1.write_bytes('{"name": "café", "ASR_wer": 6.42}'.encode("latin-1"))
    one_line_error(score("--metrics", latin1), 2, f"{latin1}: not UTF-8 (byte 0xe9 at offset 13)")
    out = tmp_path / "OUT"
    out.mkdir()
    (out / "results.json").write_bytes(b'{"metrics": {}, "tasks": {"PR": {"reason": "\xff"}}}')
    one_line_error(score(out / "results.json"), 2, f"{out / 'results.json'}: not UTF-8 (byte 0xff")


def ks_trial(out: Path) -> Path:
    """OUT/ks/lr0.0001, a finished KS training (the driver's layout)."""
    trial = out / "ks" / "lr0.0001"
    trial.mkdir(parents=True)
    (trial / "train.done").touch()
    return trial


@pytest.mark.parametrize("log, line", [
    ("New best on dev at step 4: 0.5\ntest at step 4: 0.5x\n", 2),  # after the dev-best line
    ("dev at step 4: 0.1\ntest at step 4: \ntest at step 8: nan\n", 3),  # dev never improved: the last one
], ids=["dev-best", "last"])
def test_score_names_a_malformed_test_at_step_line(tmp_path, log, line):
    (ks_trial(tmp_path / "OUT") / "log.log").write_text(log)
    one_line_error(score(tmp_path / "OUT"), 2, f"{tmp_path / 'OUT' / 'ks' / 'lr0.0001' / 'log.log'} line {line}: ",
                   "is not a finite number; expected 'test at step")


@pytest.mark.parametrize("content, expected", [
    (b'{"dev": {"0": 0.1}', "not JSON"),
    (b'[0.1, 0.2]', "a JSON list; expected an object"),
    (b'{"dev": {"layer1": 0.1}, "test": {}}', "dev key 'layer1'; expected a layer number"),
    (b'{"dev": {"1": "0.1"}, "test": {}}', "dev layer 1 is '0.1'; expected a finite MTWV"),
    (b'{"dev": {"1": 0.1}}', "'test' is missing; expected an object {layer: MTWV}"),
    (b'{"dev": {"1": 0.1}, "test": {"1": NaN}}', "test layer 1 is nan; expected a finite MTWV"),
    (b'{"dev": {"1": 0.1}, "test": {"1": 0.05}, "note": "\xe9"}', "not UTF-8 (byte 0xe9"),
], ids=["truncated", "list", "key", "string", "no-test", "nan", "latin-1"])
def test_score_names_a_malformed_qbe_metric_json(tmp_path, content, expected):
    metric = tmp_path / "OUT" / "qbe" / "metric.json"
    metric.parent.mkdir(parents=True)
    metric.write_bytes(content)
    one_line_error(score(tmp_path / "OUT"), 2, f"{metric}: {expected}")


def test_the_driver_reports_a_malformed_output_as_the_tasks_failure(tmp_path):
    """The driver and the submission catch MissingOutput: a malformed file is one, with its line named."""
    from s3prl_star.superb import results
    from s3prl_star.superb.tasks import TASKS

    (ks_trial(tmp_path) / "log.log").write_text("New best on dev at step 2: 0.5\ntest at step 2: 0,5\n")
    with pytest.raises(results.MissingOutput, match=r"log\.log line 2: '0,5' is not a finite number"):
        results.read_task(tmp_path, TASKS["ks"])


# --- score: error rates given as fractions --------------------------------------------------------

@pytest.mark.parametrize("key, value, suggested", [("ASV_eer", 0.05, "5"), ("PR_per", 0.0541, "5.41"),
                                                    ("KS_acc", 0.963, "96.3")])
def test_score_refuses_metrics_given_as_fractions(tmp_path, key, value, suggested):
    path = tmp_path / "published.json"
    path.write_text(json.dumps({key: value}))
    one_line_error(score("--metrics", path), 2, f"{path}: {key} is {value:g}, a fraction?",
                   f"write {suggested} for {suggested} %", "--percent")
    accepted = score("--metrics", path, "--percent", "--json")
    assert accepted.returncode == 0 and json.loads(accepted.stdout)[key] == value, accepted.stderr
    path.write_text(json.dumps({key: 100 * value}))  # the percent value itself
    assert score("--metrics", path).returncode == 0


def test_score_keeps_small_percentages_read_from_a_driver_out(tmp_path):
    """What `score OUT` reads is converted to percent by results.py, so a real 0.5 % PER (s3prl prints
    0.005) is scored as it is; the fraction rule is for the values a user types."""
    trial = tmp_path / "OUT" / "pr" / "lr0.01"
    trial.mkdir(parents=True)
    (trial / "train.done").touch()
    (trial / "evaluate.log").write_text("test loss: 0.1\ntest per: 0.005\n")
    result = score(tmp_path / "OUT", "--json")
    assert result.returncode == 0 and json.loads(result.stdout)["PR_per"] == pytest.approx(0.5), result.stderr


# --- corpus on a full disk ---------------------------------------------------------------------------

def test_corpus_on_a_full_disk_names_the_file_and_leaves_no_partial_one(tmp_path):
    if not (shutil.which("espeak-ng") and shutil.which("sox")):
        pytest.skip("the corpus needs espeak-ng and sox")
    with tmpfs(tmp_path / "small", 300) as small:
        result = subprocess.run([CLI, "corpus", str(small / "corpus"), "--size", "tiny", "--jobs", "2"],
                                capture_output=True, text=True, timeout=300)
        building = small / ".corpus.building-tiny-seed0"
        line = one_line_error(result, 1, f"cannot write {building}/", ": No space left on device",
                              "run the same command again to resume")
        assert "LibsndfileError" not in result.stderr and "System error" not in line
        assert not list(building.rglob("*.tmp")) and not (small / "corpus").exists()


# --- link-s3prl on a read-only checkout ----------------------------------------------------------------

def test_link_s3prl_refuses_a_read_only_checkout_before_changing_anything(tmp_path):
    python = isolated_python(tmp_path / "venv")
    checkout = make_checkout(tmp_path)
    pth = site_packages(python) / PATH_FILE_NAME
    with read_only_tree(checkout):
        result = link_s3prl(python, checkout)
        one_line_error(result, 1, f"{checkout / 's3prl' / 'upstream'}: cannot write (read-only file system)")
        assert not pth.exists()  # nothing half done: the .pth comes last and was not written
    assert git_status(checkout) == []
    # Linked, then made read-only: --undo refuses whole, the link and the .pth stay until it can undo.
    assert link_s3prl(python, checkout).returncode == 0
    with read_only_tree(checkout):
        one_line_error(link_s3prl(python, "--undo", checkout), 1, "cannot write (read-only file system)")
        assert pth.exists() and (checkout / "s3prl" / "upstream" / "star_hubert").is_symlink()
    assert link_s3prl(python, "--undo", checkout).returncode == 0
    assert git_status(checkout) == [] and not pth.exists()


# --- star_hubert_int8 on NaN / inf audio ---------------------------------------------------------------

@pytest.fixture(scope="module")
def upstreams(tiny_student_checkpoint):
    import s3prl_star

    s3prl_star.register()
    import s3prl.hub

    return {name: getattr(s3prl.hub, name)(ckpt=str(tiny_student_checkpoint)).eval()
            for name in ("star_hubert", "star_hubert_int8")}


@pytest.mark.parametrize("name", ["star_hubert", "star_hubert_int8"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_int8_upstream_refuses_non_finite_audio_as_the_others_do(upstreams, name, value):
    waveforms = [torch.randn(8000), torch.randn(6000)]
    waveforms[1][1234] = value
    with torch.no_grad(), pytest.raises(ValueError, match=r"waveform\(s\) \[1\] hold NaN or infinite samples .*"
                                                           r"waveform 1 at sample 1234\); expected finite audio"):
        upstreams[name](waveforms)


@pytest.mark.parametrize("name", ["star_hubert", "star_hubert_int8"])
@pytest.mark.parametrize("waveforms, match", [
    ([torch.randn(8000), torch.randn(300)], r"shorter than the conv receptive field \(400 samples"),
    ([], "non-empty list of 1-D float waveforms"),
    ([torch.randn(1, 8000)], r"waveform 0: expected a 1-D float tensor, found shape \(1, 8000\)"),
], ids=["short", "empty", "2-D"])
def test_int8_upstream_refuses_what_the_others_refuse(upstreams, name, waveforms, match):
    with torch.no_grad(), pytest.raises(ValueError, match=match):
        upstreams[name](waveforms)


# --- prepare-librispeech: short files, duplicated utterance ids ---------------------------------------

def librispeech(root: Path, lengths: dict[str, int], split: str = "dev-clean", lines: list[str] | None = None) -> Path:
    """`root/split/1/10/` holding {utterance id: samples} of 16 kHz noise as FLAC and their transcript (or `lines`)."""
    chapter = root / split / "1" / "10"
    chapter.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for utterance, samples in lengths.items():
        sf.write(chapter / f"{utterance}.flac", (rng.standard_normal(samples) * 0.1).astype(np.float32), 16000,
                 subtype="PCM_16")
    text = lines if lines is not None else [f"{utterance} SOME WORDS" for utterance in lengths]
    (chapter / "1-10.trans.txt").write_text("\n".join(text) + "\n")
    return root


def prepare(root: Path, output: Path, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, "prepare-librispeech", str(root), "-o", str(output), "--splits", "dev-clean", *options],
                          capture_output=True, text=True, timeout=120)


def test_prepare_librispeech_names_every_file_shorter_than_the_receptive_field(tmp_path):
    root = librispeech(tmp_path / "LibriSpeech", {"1-10-0000": 16000, "1-10-0001": 399, "1-10-0002": 80,
                                                   "1-10-0003": 400})
    result = prepare(root, tmp_path / "csv")
    chapter = root / "dev-clean" / "1" / "10"
    assert result.returncode == 1 and "error: 2 bad file(s)" in result.stderr, result.stderr
    for name, samples, ms in (("1-10-0001", 399, "24.9"), ("1-10-0002", 80, "5.0")):
        assert (f"{chapter / name}.flac: {samples} samples ({ms} ms); expected at least 400 (25 ms, one frame's "
                "receptive field)") in result.stderr
    assert "1-10-0003" not in result.stderr and not (tmp_path / "csv").exists()  # 400 is enough; no CSV
    skipped = prepare(root, tmp_path / "csv", "--skip-bad")
    assert skipped.returncode == 0, skipped.stderr
    rows = (tmp_path / "csv" / "dev-clean.csv").read_text().splitlines()[1:]
    assert [row.split(",")[2] for row in rows] == ["16000", "400"]


def test_distillation_refuses_a_length_csv_with_files_shorter_than_the_receptive_field(tmp_path):
    """A CSV written by s3prl's own script (which checks nothing) is refused when distillation loads it."""
    from s3prl_star.distill.data import load_length_csvs

    csv = tmp_path / "train-clean-100.csv"
    csv.write_text(",file_path,length,label\n0,a/1/10/1-10-0000.flac,16000,\n1,a/1/10/1-10-0001.flac,320,\n")
    with pytest.raises(ValueError, match=r"1 utterance\(s\) shorter than 400 samples .*"
                                         rf"{csv} line 3: a/1/10/1-10-0001\.flac \(320 samples\)"):
        load_length_csvs([csv], tmp_path)


def test_prepare_librispeech_names_a_duplicated_utterance_id(tmp_path):
    lines = ["1-10-0000 THE FIRST", "1-10-0001 ANOTHER ONE", "1-10-0000 THE SECOND"]
    root = librispeech(tmp_path / "LibriSpeech", {"1-10-0000": 16000, "1-10-0001": 16000}, lines=lines)
    transcript = root / "dev-clean" / "1" / "10" / "1-10.trans.txt"
    result = prepare(root, tmp_path / "csv")
    assert result.returncode == 1 and "error: 1 bad file(s)" in result.stderr, result.stderr
    assert (f"{transcript}: line 3: 1-10-0000 again (first on line 1); expected one line per utterance"
            in result.stderr) and not (tmp_path / "csv").exists()
    skipped = prepare(root, tmp_path / "csv", "--skip-bad")  # the ambiguous utterance is left out
    assert skipped.returncode == 0, skipped.stderr
    assert [row.split(",")[1] for row in (tmp_path / "csv" / "dev-clean.csv").read_text().splitlines()[1:]] == [
        "dev-clean/1/10/1-10-0001.flac"]


def test_pr_reader_names_a_duplicated_utterance_id(tmp_path):
    from s3prl_star.integration.ctc_corpus.libriphone import read_transcripts

    lines = ["1-10-0000 THE FIRST", "", "1-10-0000 THE SECOND"]
    root = librispeech(tmp_path / "LibriSpeech", {"1-10-0000": 16000}, split="train-clean-100", lines=lines)
    chapter = root / "train-clean-100" / "1" / "10"
    with pytest.raises(ValueError, match=rf"{chapter / '1-10.trans.txt'}:3: 1-10-0000 again "
                                         rf"\(first at {chapter / '1-10.trans.txt'}:1\)"):
        read_transcripts(sorted(chapter.glob("*.flac")))


# --- 8 kHz audio in the tasks whose s3prl loader does not resample ----------------------------------

def noise_wav(path: Path, rate: int, seconds: float = 1.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    samples = (np.random.default_rng(0).standard_normal(int(rate * seconds)) * 0.1).astype(np.float32)
    sf.write(path, samples, rate, subtype="PCM_16")
    return path


def voxceleb1(root: Path, rate: int) -> tuple[Path, Path]:
    """VoxCeleb1 layout of 2 speakers x (2 train, 1 dev, 1 test) noise wavs at `rate`: (file_path, iden_split.txt)."""
    lines = []
    for speaker in ("id10001", "id10002"):
        for number, split in enumerate((1, 1, 2, 3), start=1):
            name = f"{speaker}/video{number}/{number:05d}.wav"
            noise_wav(root / "VoxCeleb1" / "dev" / "wav" / name, rate)
            lines.append(f"{split} {name}\n")
    (root / "iden_split.txt").write_text("".join(lines))
    return root / "VoxCeleb1", root / "iden_split.txt"


@pytest.fixture
def task_patches(monkeypatch, tmp_path):
    """`patches.apply_for_downstream_task(task, expdir)`, undone after the test."""
    from s3prl_star.integration import patches
    from s3prl_star.integration.patches import sample_rates

    patches.apply()
    import importlib

    from s3prl.downstream.diarization import dataset as diarization

    for module in sample_rates.TORCHAUDIO_LOADERS.values():
        loaded = importlib.import_module(module)
        monkeypatch.setattr(loaded, "torchaudio", loaded.torchaudio)
    monkeypatch.setattr(diarization.KaldiData, "load_wav", diarization.KaldiData.load_wav)
    from s3prl.downstream.voxceleb1 import dataset as sid

    monkeypatch.setattr(sid, "CACHE_PATH", sid.CACHE_PATH)
    return lambda task: patches.apply_for_downstream_task(task, str(tmp_path / "expdir"))


def test_sid_refuses_8khz_audio_naming_the_file(tmp_path, task_patches):
    from s3prl.downstream.voxceleb1.dataset import SpeakerClassifiDataset

    file_path, meta_data = voxceleb1(tmp_path, 8000)
    task_patches("voxceleb1")
    dataset = SpeakerClassifiDataset("train", file_path, str(meta_data))
    with pytest.raises(ValueError, match=rf"{dataset.dataset[0]}: 8000 Hz audio; expected 16000 Hz: s3prl's "
                                         "voxceleb1 loader does not resample"):
        dataset[0]
    good = noise_wav(Path(dataset.dataset[1]), 16000)  # a 16 kHz file is read as before
    wav, label, _ = dataset[1]
    assert len(wav) == 16000 and Path(dataset.dataset[1]) == good


@pytest.mark.parametrize("task", ["fluent_commands", "ctc", "asr"])
def test_loaders_that_do_not_resample_refuse_8khz_audio(tmp_path, task_patches, task):
    """IC, PR/SF and ASR read through `torchaudio.load` in these modules, and nothing resamples."""
    import importlib

    from s3prl_star.integration.patches.sample_rates import TORCHAUDIO_LOADERS

    assert task_patches(task)
    loader = importlib.import_module(TORCHAUDIO_LOADERS[task]).torchaudio
    low = noise_wav(tmp_path / "low.wav", 8000)
    with pytest.raises(ValueError, match=rf"{low}: 8000 Hz audio; expected 16000 Hz: s3prl's {task} loader"):
        loader.load(str(low))
    waveform, rate = loader.load(str(noise_wav(tmp_path / "ok.wav", 16000)))
    assert rate == 16000 and waveform.shape == (1, 16000)


def test_diarization_refuses_8khz_audio_naming_the_recording(tmp_path, task_patches):
    from s3prl.downstream.diarization.dataset import KaldiData

    data = tmp_path / "kaldi"
    wav = noise_wav(tmp_path / "rec1.wav", 8000)
    data.mkdir()
    for name, text in (("wav.scp", f"rec1 {wav}"), ("segments", "u1 rec1 0.0 0.5"), ("utt2spk", "u1 s1"),
                       ("spk2utt", "s1 u1"), ("reco2dur", "rec1 1.0")):
        (data / name).write_text(text + "\n")
    task_patches("diarization")
    with pytest.raises(ValueError, match=rf"{wav} \(recording rec1 of {data}/wav.scp\): 8000 Hz audio"):
        KaldiData(str(data)).load_wav("rec1")


@pytest.mark.slow
def test_sid_training_on_8khz_audio_stops_at_the_first_file(tmp_path, tiny_student_checkpoint):
    """Through `s3prl-star downstream -d voxceleb1`, as a user runs it: the run stops at the first batch,
    naming a file and its rate, instead of training and scoring."""
    file_path, meta_data = voxceleb1(tmp_path, 8000)
    overrides = ("config.downstream_expert.datarc.num_workers=0,,config.downstream_expert.datarc.train_batch_size=2,,"
                 f"config.downstream_expert.datarc.file_path={file_path},,"
                 f"config.downstream_expert.datarc.meta_data={meta_data}")
    returncode, output = downstream_output(train_args("voxceleb1", tiny_student_checkpoint, tmp_path / "sid", overrides))
    assert returncode != 0, output[-3000:]
    assert "8000 Hz audio; expected 16000 Hz: s3prl's voxceleb1 loader does not resample" in output, output[-3000:]
    assert not list((tmp_path / "sid").glob("states-*.ckpt"))

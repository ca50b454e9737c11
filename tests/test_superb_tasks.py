"""The ten SUPERB recipes in downstream_recipes/: the paper's protocol, and s3prl can load each task.

- Every recipe parses, enables the learning-rate scheduler (QbE trains nothing and has none) and
  keeps s3prl's default learning rate, except SID at 10x (docs/superb.md).
- After `s3prl_star.integration.patches.apply()`, each task's s3prl expert module (`s3prl.downstream.<d>.expert`)
  imports in a fresh interpreter, i.e. its undeclared dependencies (the `superb` extra) are there.
- PR and SF (`-d ctc`) train and evaluate in tests/test_superb_ctc.py (this project's corpus readers,
  which the PyPI s3prl lacks, on LibriSpeech- and Audio-SNIPS-layout data).
Slow: KS, ER and SD train a few steps then evaluate in a fresh process (`-m evaluate -e`), QbE scores
every query against every document per layer, ASV trains then evaluates each saved checkpoint, each on
espeak-ng speech in its corpus' layout; QbE, SD and ASV end in their SUPERB metric (QbE_mtwv, SD_der,
ASV_eer; printed). Only step counts, batch sizes and workers are overridden (-o), to fit CI.
"""
import json
import random
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import soundfile as sf
import yaml

from helpers import (CLI, FAST_RUNNER, RECIPES, accuracy_of_predictions, frames_of, make_iemocap, make_speech_commands, printed_accuracy,
                     run_downstream, train_then_evaluate, write_quesst_ground_truth, write_run)
from s3prl_star.superb.scorers.asv import eer_of_output
from s3prl_star.superb.scorers.diarization import der_of_run, read_rttm
from s3prl_star.superb.scorers.qbe import best_layer_on_dev, mtwv_of_run, read_scores
from s3prl_star.mini_superb.synthetic import SAMPLE_RATE, require_tools, make_sentence, synthesise

# task -> (recipe folder, s3prl -d name, s3prl's default SUPERB learning rate)
TASKS = {
    "PR": ("pr", "ctc", 1.0e-2),
    "ASR": ("asr", "asr", 1.0e-4),
    "KS": ("speech_commands", "speech_commands", 1.0e-4),
    "QbE": ("quesst14_dtw", "quesst14_dtw", None),  # no training
    "SID": ("voxceleb1", "voxceleb1", 1.0e-4),
    "ASV": ("sv_voxceleb1", "sv_voxceleb1", 1.0e-4),
    "SD": ("diarization", "diarization", 1.0e-4),
    "IC": ("fluent_commands", "fluent_commands", 1.0e-4),
    "SF": ("sf", "ctc", 1.0e-4),
    "ER": ("emotion", "emotion", 1.0e-4),
}


def load_recipe(task: str) -> dict:
    return yaml.safe_load((RECIPES / TASKS[task][0] / "config.yaml").read_text())


def test_every_recipe_folder_is_a_superb_task():
    assert {path.parent.name for path in RECIPES.glob("*/config.yaml")} == {folder for folder, _, _ in TASKS.values()}


@pytest.mark.parametrize("task", sorted(TASKS))
def test_recipe_follows_the_paper_protocol(task):
    config = load_recipe(task)
    default_lr = TASKS[task][2]
    if default_lr is None:  # QbE: DTW on frozen features, nothing to optimise or schedule
        assert config["runner"] == {} and "optimizer" not in config and "scheduler" not in config
        return
    scheduler = config["scheduler"]
    assert scheduler["name"] == "linear_schedule_with_warmup"
    assert 0 < scheduler["num_warmup_steps"] < config["runner"]["total_steps"]
    expected_lr = 10 * default_lr if task == "SID" else default_lr
    assert config["optimizer"]["lr"] == pytest.approx(expected_lr)


@pytest.fixture(scope="module")
def expert_imports():
    """{module: "ok" or "ExceptionType: message"} for every task's expert, imported in one fresh process."""
    modules = sorted({f"s3prl.downstream.{d}.expert" for _, d, _ in TASKS.values()})
    code = (
        "import importlib, json, sys\n"
        "import s3prl_star.integration.patches\n"
        "s3prl_star.integration.patches.apply()\n"
        "results = {}\n"
        f"for name in {modules!r}:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "        results[name] = 'ok'\n"
        "    except Exception as error:\n"
        "        results[name] = f'{type(error).__name__}: {error}'\n"
        "print(json.dumps(results))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("task", sorted(TASKS))
def test_task_expert_imports(task, expert_imports):
    module = f"s3prl.downstream.{TASKS[task][1]}.expert"
    assert expert_imports[module] == "ok", f"{task}: {expert_imports[module]}"


# --- slow: the recipes train and evaluate on espeak-ng data in each corpus' layout -------------

VOICES = ("en-us", "en-us+m1", "en-us+f2", "en+m3", "en-us+f4")


def speak(path: Path, text: str, voice: str):
    """Write espeak-ng's `text` in `voice` to `path` (16 kHz mono 16-bit wav); returns the samples."""
    samples = synthesise(text, voice, require_tools())
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, samples, SAMPLE_RATE, subtype="PCM_16")
    return samples


@pytest.mark.slow
def test_keyword_spotting_trains_then_evaluates(tmp_path, tiny_student_checkpoint, superb_metric):
    train_root, test_root = make_speech_commands(tmp_path / "speech_commands")
    overrides = (
        f"config.downstream_expert.datarc.speech_commands_root={train_root},,"
        f"config.downstream_expert.datarc.speech_commands_test_root={test_root},,"
        "config.downstream_expert.datarc.num_workers=0,,config.downstream_expert.datarc.batch_size=4"
    )
    output = train_then_evaluate("speech_commands", tiny_student_checkpoint, tmp_path / "ks", overrides,
                                 train_line=r"^test acc: [0-9.]+$", evaluate_line=r"^test acc: [0-9.]+$")
    # the printed accuracy is the one of the predictions the evaluation wrote, over every test clip
    accuracy, clips = accuracy_of_predictions(tmp_path / "ks", "test")
    assert printed_accuracy(output) == pytest.approx(accuracy, abs=1e-6)
    assert clips == sum(1 for path in test_root.rglob("*.wav") if "_background_noise_" not in path.parts)
    superb_metric("KS_acc", 100 * printed_accuracy(output))


@pytest.mark.slow
def test_emotion_recognition_trains_then_evaluates(tmp_path, tiny_student_checkpoint, superb_metric):
    corpus, meta = make_iemocap(tmp_path)
    overrides = (
        f"config.downstream_expert.datarc.root={corpus},,config.downstream_expert.datarc.meta_data={meta},,"
        "config.downstream_expert.datarc.test_fold=fold1,,config.downstream_expert.datarc.num_workers=0"
    )
    output = train_then_evaluate("emotion", tiny_student_checkpoint, tmp_path / "er", overrides,
                                 train_line=r"^test acc: [0-9.]+$", evaluate_line=r"^test acc: [0-9.]+$")
    # fold 1 tests Session1: the printed accuracy is the one of its predictions, over every utterance of its list
    accuracy, utterances = accuracy_of_predictions(tmp_path / "er", "test_fold1")
    assert printed_accuracy(output) == pytest.approx(accuracy, abs=1e-6)
    assert utterances == len(json.loads((meta / "Session1" / "test_meta_data.json").read_text())["meta_data"])
    superb_metric("ER_acc", 100 * printed_accuracy(output))  # fold 1 only


QUESST_PHRASES = ("the red boat", "a quiet river", "the old lamp")


def make_quesst14(root: Path) -> Path:
    """QUESST 2014 layout: Audio/ documents, dev_queries/ and eval_queries/, scoring/language_key_*.lst and the
    ground truth scoring/groundtruth_quesst14_{dev,eval}/ (`helpers.write_quesst_ground_truth`).

    English document i is a sentence around phrase i; its dev and eval queries are that phrase's own samples,
    so a working detector finds them. A Basque document and one Basque query per split are in the lists and
    the ground truth only (s3prl skips them): that query counts as all missed, so MTWV <= 3/4 here.
    """
    tools = require_tools()
    for folder in ("Audio", "dev_queries", "eval_queries", "scoring"):
        (root / folder).mkdir(parents=True)
    documents = [f"quesst14_{index:05d}" for index in range(1, len(QUESST_PHRASES) + 2)]
    keys = {"utterances": [f"quesst14Database/Audio/{document}.wav nnenglish" for document in documents[:-1]]
            + [f"quesst14Database/Audio/{documents[-1]}.wav nnbasque"]}
    phrases = []
    for index, phrase in enumerate(QUESST_PHRASES):
        parts = [synthesise(text, VOICES[index], tools) for text in ("yesterday", phrase, "was near the house")]
        sf.write(root / "Audio" / f"{documents[index]}.wav", np.concatenate(parts), SAMPLE_RATE, subtype="PCM_16")
        phrases.append(parts[1])
    for split in ("dev", "eval"):
        queries = [f"quesst14_{split}_{index:04d}" for index in range(1, len(documents) + 1)]
        for query, samples in zip(queries, phrases):
            sf.write(root / f"{split}_queries" / f"{query}.wav", samples, SAMPLE_RATE, subtype="PCM_16")
        keys[split] = [f"quesst14Database/{split}_queries/{query}.wav nnenglish" for query in queries[:-1]] + [
            f"quesst14Database/{split}_queries/{queries[-1]}.wav nnbasque"]
        write_quesst_ground_truth(root / "scoring" / f"groundtruth_quesst14_{split}", split, documents, queries,
                                  {query: [document] for query, document in zip(queries, documents)})
    for split, lines in keys.items():
        (root / "scoring" / f"language_key_{split}.lst").write_text("\n".join(lines) + "\n")
    return root


def run_query_by_example(corpus: Path, checkpoint: Path, split: str, layer: int, expdir: Path) -> float:
    """MTWV of `s3prl-star downstream -m evaluate -t SPLIT -l LAYER -d quesst14_dtw` on `corpus`."""
    run_downstream(
        ["-m", "evaluate", "-t", split, "-u", "star_hubert", "-k", str(checkpoint), "-d", "quesst14_dtw",
         "-c", str(RECIPES / "quesst14_dtw" / "config.yaml"), "-l", str(layer), "-p", str(expdir),
         "-o", f"config.downstream_expert.datarc.dataset_root={corpus},,config.downstream_expert.datarc.num_workers=0,,"
               "config.downstream_expert.max_workers=2"],
        r"DTW",
    )
    return mtwv_of_run(expdir, corpus, split)


@pytest.mark.slow
def test_query_by_example_ends_in_the_test_mtwv_of_the_best_dev_layer(tmp_path, tiny_student_checkpoint, superb_metric):
    """SUPERB's QbE protocol: DTW scores of every English query against every English document per layer on
    dev, the best dev layer's test MTWV (QbE_mtwv, raw). The queries are their documents' own samples, so
    the detector finds something (MTWV > 0); the unscored Basque query caps it at 3/4."""
    corpus = make_quesst14(tmp_path / "quesst14Database")
    dev_expdirs = {layer: tmp_path / f"qbe_{layer}_dev" for layer in (0, 11)}
    for layer, expdir in dev_expdirs.items():
        run_query_by_example(corpus, tiny_student_checkpoint, "dev", layer, expdir)
    layer, dev_mtwv = best_layer_on_dev(dev_expdirs, corpus)
    scored = {(query, document) for query, document in read_scores(dev_expdirs[layer] / "benchmark.stdlist.xml")}
    assert scored == {(f"quesst14_dev_{q:04d}", f"quesst14_{d:05d}") for q in (1, 2, 3) for d in (1, 2, 3)}, scored
    value = run_query_by_example(corpus, tiny_student_checkpoint, "test", layer, tmp_path / f"qbe_{layer}_test")
    superb_metric("QbE_mtwv", value)
    assert 0 < value <= 0.75


def make_diarization_dirs(root: Path) -> dict:
    """Kaldi data dirs (wav.scp, segments, utt2spk, spk2utt, reco2dur, rttm) of 2-speaker overlapped mixtures,
    as LibriMix's prepare_diarization.py writes them (`rttm`: one SPEAKER line per segment)."""
    rng = random.Random(0)
    dirs = {}
    for split, recordings in (("train", 3), ("dev", 1), ("test", 1)):
        data_dir = root / split
        (data_dir / "wav").mkdir(parents=True)
        files = {name: [] for name in ("wav.scp", "segments", "utt2spk", "reco2dur", "rttm")}
        for index in range(recordings):
            record = f"{split}{index}"
            voices = rng.sample(VOICES, 2)
            first = speak(root / "parts" / f"{record}_a.wav", make_sentence(rng), voices[0])
            second = speak(root / "parts" / f"{record}_b.wav", make_sentence(rng), voices[1])
            start = int(len(first) * 0.6)  # the second speaker starts before the first one ends
            mixture = np.zeros(max(len(first), start + len(second)), dtype=np.int32)
            mixture[: len(first)] += first
            mixture[start : start + len(second)] += second
            path = data_dir / "wav" / f"{record}.wav"
            sf.write(path, (mixture // 2).astype(np.int16), SAMPLE_RATE, subtype="PCM_16")
            files["wav.scp"].append(f"{record} {path}")
            files["reco2dur"].append(f"{record} {len(mixture) / SAMPLE_RATE:.4f}")
            for speaker, (begin, samples) in zip(voices, ((0, first), (start, second))):
                speaker_id = speaker.replace("+", "_")
                utterance = f"{speaker_id}-{record}"
                files["segments"].append(f"{utterance} {record} {begin / SAMPLE_RATE:.4f} {(begin + len(samples)) / SAMPLE_RATE:.4f}")
                files["utt2spk"].append(f"{utterance} {speaker_id}")
                files["rttm"].append(f"SPEAKER {record} 1 {begin / SAMPLE_RATE:.4f} {len(samples) / SAMPLE_RATE:.4f} "
                                     f"<NA> <NA> {speaker_id} <NA> <NA>")
        for name, lines in files.items():
            (data_dir / name).write_text("\n".join(sorted(lines)) + "\n")
        speakers = {}
        for line in files["utt2spk"]:
            utterance, speaker = line.split()
            speakers.setdefault(speaker, []).append(utterance)
        (data_dir / "spk2utt").write_text("".join(f"{s} {' '.join(u)}\n" for s, u in sorted(speakers.items())))
        dirs[split] = data_dir
    return dirs


@pytest.mark.slow
def test_speaker_diarization_trains_then_ends_in_der(tmp_path, tiny_student_checkpoint, superb_metric):
    """Train, evaluate the checkpoint (predictions), then SUPERB's DER (SD_der, percent): the lowest over
    score.sh's median/threshold settings. The reference itself, made into predictions at the run's frame
    shift and length, must score about 0: the predictions' time base is the reference's."""
    dirs = make_diarization_dirs(tmp_path / "sd")
    expdir = tmp_path / "sd_exp"
    overrides = (
        f"config.downstream_expert.loaderrc.train_dir={dirs['train']},,"
        f"config.downstream_expert.loaderrc.dev_dir={dirs['dev']},,config.downstream_expert.loaderrc.test_dir={dirs['test']},,"
        "config.downstream_expert.loaderrc.num_workers=0,,config.downstream_expert.loaderrc.train_batchsize=2"
    )
    # The SD recipe evaluates only dev during training, and s3prl's diarization expert writes no log.log.
    train_then_evaluate("diarization", tiny_student_checkpoint, expdir, overrides, dev_and_test_logged=False,
                        train_line=r"mode dev acc [0-9.]+ der [0-9.]+", evaluate_line=r"mode test acc [0-9.]+ der [0-9.]+")
    assert sorted(path.name for path in (expdir / "scoring" / "predictions").iterdir()) == ["test0.h5"]
    value = der_of_run(expdir, dirs["test"])
    superb_metric("SD_der", value)
    assert 0 <= value < float("inf")
    with h5py.File(expdir / "scoring" / "predictions" / "test0.h5", "r") as file:
        frames = file["T_hat"].shape[0]
    frame_shift = int((expdir / "frame_shift").read_text())
    write_run(tmp_path / "sd_oracle", {"test0": frames_of(read_rttm(dirs["test"] / "rttm"), frames, frame_shift)},
              frame_shift)
    assert der_of_run(tmp_path / "sd_oracle", dirs["test"]) < 2.0  # 20 ms frames vs 0.1 ms reference times


def make_voxceleb1_verification(root: Path) -> dict:
    """VoxCeleb1 layout for ASV: <root>/{dev,test}/wav/<speaker>/<video>/<utt>.wav and trial lists."""
    rng = random.Random(0)
    part_speakers = {"dev": [("id10001", VOICES[0]), ("id10002", VOICES[1]), ("id10003", VOICES[2])],
                     "test": [("id10270", VOICES[3]), ("id10271", VOICES[4])]}
    trials = {}
    for part, speakers in part_speakers.items():
        for speaker, voice in speakers:
            for utterance in range(2):
                speak(root / part / "wav" / speaker / "video0" / f"{utterance:05d}.wav", make_sentence(rng), voice)
        same = [f"1 {s}/video0/00000.wav {s}/video0/00001.wav" for s, _ in speakers]
        different = [f"0 {a}/video0/00000.wav {b}/video0/00001.wav" for (a, _), (b, _) in zip(speakers, speakers[1:])]
        trials[part] = root / f"{part}_trials.txt"
        trials[part].write_text("\n".join(same + different) + "\n")
    speaker_ids = root / "dev_speaker_ids.txt"  # read by no s3prl 0.4.18 code, but a required key
    speaker_ids.write_text("".join(f"{s}\n" for s, _ in part_speakers["dev"]))
    return {"file_path": root, "train_meta_data": speaker_ids, "dev_meta_data": trials["dev"],
            "test_meta_data": trials["test"]}


def s3prl_asv_cache_state():
    """(name, mtime) of every file in s3prl's own ASV length cache folder, or None when it does not exist."""
    import s3prl

    cache = Path(s3prl.__file__).parent / "downstream" / "sv_voxceleb1" / ".wav_lengths"
    return None if not cache.exists() else sorted((p.name, p.stat().st_mtime_ns) for p in cache.iterdir())


@pytest.mark.slow
def test_speaker_verification_trains_on_any_device_then_ends_in_the_lowest_checkpoint_eer(tmp_path, tiny_student_checkpoint,
                                                                                          superb_metric):
    """ASV through `s3prl-star superb --device cpu` (s3prl's expert calls .cuda() whatever --device says):
    train 4 steps saving states-2 and states-4, evaluate each on the test trials, ASV_eer = the lowest EER
    (percent). The silence-trimmed length cache is computed once, in the experiment (not in site-packages),
    and reused by every checkpoint's evaluation."""
    cache_before = s3prl_asv_cache_state()
    data = make_voxceleb1_verification(tmp_path / "VoxCeleb1")
    overrides = ("config.downstream_expert.datarc.vad_config.min_sec=8000,,"  # espeak utterances are short
                 "config.downstream_expert.datarc.num_workers=0,,config.downstream_expert.datarc.train_batch_size=2,,"
                 "config.runner.save_step=2")
    data_file = tmp_path / "data.yaml"
    data_file.write_text(yaml.safe_dump({"overrides": FAST_RUNNER, "asv": {
        **{f"datarc.{key}": str(value) for key, value in data.items()}, "overrides": overrides}}))
    out = tmp_path / "superb"
    result = subprocess.run([CLI, "superb", "-u", "star_hubert", "-k", str(tiny_student_checkpoint), "--data",
                             str(data_file), "--tasks", "asv", "-o", str(out), "--device", "cpu"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    entry = json.loads((out / "results.json").read_text())["tasks"]["ASV"]
    value = entry["metrics"]["ASV_eer"]
    superb_metric("ASV_eer", value)
    trial = out / "asv" / "lr0.0001"
    training = (trial / "train.log").read_text() + (trial / "train.err").read_text()
    assert "Preprocessing" in training and (trial / ".wav_lengths" / "Voxceleb1_length.pt").is_file()
    logs = {name: (trial / name / "log.txt").read_text() + (trial / name / "log.err").read_text()
            for name in ("states-2", "states-4")}
    assert not any("Preprocessing" in log for log in logs.values())
    eers = {name: 100 * eer_of_output(log) for name, log in logs.items()}
    assert value == pytest.approx(min(eers.values())) and 0 <= value <= 100
    best = min(eers, key=eers.get)
    assert entry["chosen"] == f"asv/lr0.0001/{best}"
    assert s3prl_asv_cache_state() == cache_before

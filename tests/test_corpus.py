"""`s3prl-star corpus`: the espeak-ng mini-SUPERB corpus, read by s3prl 0.4.18's own readers.

- Fast: the plans (speakers disjoint where the layout allows, every valid/test intent in train, Speech
  Commands ids that s3prl's hash puts in the intended split); clear errors for a bad size, an OUT that is
  a file or holds something else, a missing espeak-ng; an OUT with the same complete corpus is left alone.
- Slow (one tiny corpus, built by the console script, about 10 s; a second build for determinism): each
  task's files through s3prl's readers (KS, SID, IC and ER experts, the ASR dataset, the project's PR
  reader), class counts and splits; ER's fold metadata equals what s3prl's IEMOCAP_preprocess.py makes of
  the label files; the driver reads OUT/data.yaml and finds every task's data; the same seed gives the
  same bytes; a second run on a complete OUT does nothing.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest
import yaml

from helpers import CLI, RECIPES, corpus_files
from s3prl_star.mini_superb import corpus
from s3prl_star.mini_superb.synthetic import MissingToolError


def recipe_expert_config(recipe: str, paths: dict, **datarc) -> dict:
    """The recipe's downstream_expert block with DATA.yaml's `paths` (`datarc.KEY`) and `datarc` keys set."""
    config = yaml.safe_load((RECIPES / recipe / "config.yaml").read_text())["downstream_expert"]
    config["datarc"].update({key.removeprefix("datarc."): value for key, value in paths.items()}, **datarc)
    return config


@pytest.fixture(scope="module")
def s3prl_shims():
    from s3prl_star.integration import patches

    patches.apply()


# --- fast: plans and errors ------------------------------------------------------------------------

def speaker_of(path: Path, root: Path) -> str:
    return path.relative_to(root).parts[1]


def test_plans_keep_test_speakers_out_of_training(tmp_path):
    size = corpus.SIZES["small"]
    plans = {plan.task: plan for plan in corpus.plan_corpus(tmp_path, size, seed=0)}
    libri = tmp_path / "LibriSpeech"
    voices_by_split = {}
    for utterance in plans["asr"].speech:
        split = utterance.path.relative_to(libri).parts[0]
        voices_by_split.setdefault(split, set()).add(utterance.voice)
    assert {split: len(v) for split, v in voices_by_split.items()} == {"train-clean-100": 24, "dev-clean": 4, "test-clean": 4}
    assert len(set.union(*voices_by_split.values())) == 32  # distinct speakers, disjoint splits

    ks = {part: {u.path.name.split("_")[0] for u in plans["ks"].speech if part in str(u.path)}
          for part in ("speech_commands_v0.01", "speech_commands_test_set_v0.01")}
    assert ks["speech_commands_v0.01"] and ks["speech_commands_test_set_v0.01"]
    assert not ks["speech_commands_v0.01"] & ks["speech_commands_test_set_v0.01"]

    ic = plans["ic"].speech
    ic_speakers = {u.path.parent.name for u in ic}
    assert len(ic_speakers) == sum(size.ic_speakers.values()) == len({u.voice.name for u in ic})
    assert len(corpus.INTENTS) == 30 and len(set(corpus.INTENTS)) == 30


def test_speech_commands_ids_land_in_s3prls_hash_split(tmp_path, s3prl_shims):
    from s3prl.downstream.speech_commands.expert import split_dataset

    plan = corpus.speech_commands(tmp_path, ("yes",), ("bed",), {"train": 3, "valid": 2, "test": 1}, seed=5)
    root = plan.data["datarc.speech_commands_root"]
    for utterance in plan.speech:
        utterance.path.parent.mkdir(parents=True, exist_ok=True)
        utterance.path.touch()
    train, valid = split_dataset(root)
    assert len(train) == 3 * 2 and len(valid) == 2 * 2


@pytest.mark.parametrize("size, content, expected", [
    ("huge", None, "unknown size 'huge'; expected one of tiny, small"),
    ("tiny", "file", "is a file, not a corpus folder"),
    ("tiny", "other", "holds files that are not a complete corpus, not the tiny corpus of seed 0"),
    ("tiny", "small corpus", "holds the small corpus of seed 0, not the tiny corpus of seed 0"),
])
def test_bad_size_or_occupied_out_is_refused_naming_it(tmp_path, size, content, expected):
    out = tmp_path / "out"
    if content == "file":
        out.write_text("x")
    elif content == "other":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    elif content == "small corpus":
        out.mkdir()
        (out / corpus.MANIFEST).write_text(json.dumps({"format": corpus.FORMAT_VERSION, "size": "small", "seed": 0}))
    result = subprocess.run([CLI, "corpus", str(out), "--size", size], capture_output=True, text=True)
    assert result.returncode == 2 and expected in result.stderr, result.stderr
    if size != "huge":
        assert str(out) in result.stderr
    assert not list(tmp_path.glob(".out.building-*"))


def test_missing_espeak_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(MissingToolError, match="apt-get install espeak-ng"):
        corpus.make_corpus(tmp_path / "out", "tiny")


# --- slow: one tiny corpus through s3prl's readers ----------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A tiny corpus (seed 0) written by the console script; returns OUT."""
    out = tmp_path_factory.mktemp("corpus") / "mini_superb"
    result = subprocess.run([CLI, "corpus", str(out), "--size", "tiny"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    assert f"wrote {out}" in result.stdout and not list(out.parent.glob(".*building*"))
    return out


def entries(out: Path) -> dict:
    from s3prl_star.superb.data_file import read_data_file

    common, data = read_data_file(out / corpus.DATA_FILE)
    assert common == ""
    return data


@pytest.mark.slow
def test_driver_finds_every_tasks_data(tiny):
    from s3prl_star.superb.data_file import missing_data
    from s3prl_star.superb.tasks import TASKS

    data = entries(tiny)
    assert set(data) == {"pr", "asr", "ks", "sid", "ic", "er"}
    for key, entry in data.items():
        assert missing_data(TASKS[key], entry, tiny / corpus.DATA_FILE) is None, key
    assert data["pr"].overrides == f"config.downstream_expert.text.vocab_file={tiny / 'phonemes.txt'}"
    manifest = json.loads((tiny / corpus.MANIFEST).read_text())
    assert (manifest["size"], manifest["seed"]) == ("tiny", 0)


@pytest.mark.slow
def test_keyword_spotting_through_s3prls_expert(tiny, s3prl_shims, tmp_path):
    from s3prl.downstream.speech_commands.expert import DownstreamExpert

    paths = entries(tiny)["ks"].paths
    expert = DownstreamExpert(16, recipe_expert_config("speech_commands", paths), str(tmp_path))
    words = corpus.KEYWORDS[:3]
    expected = Counter({word: 2 for word in words} | {"_unknown_": 2, "_silence_": 3})
    for dataset in (expert.train_dataset, expert.dev_dataset):
        assert Counter(name for name, _ in dataset.data) == expected
    assert Counter(name for name, _ in expert.test_dataset.data) == Counter(
        {word: 2 for word in words} | {"_unknown_": 2, "_silence_": 2})
    train_speakers = {Path(path).name.split("_")[0] for _, path in expert.train_dataset.data + expert.dev_dataset.data}
    test_speakers = {Path(path).name.split("_")[0] for _, path in expert.test_dataset.data}
    assert not train_speakers & test_speakers
    wav, label, _ = expert.train_dataset[0]
    assert len(wav) == 16000 and label == expert.train_dataset.class2index[expert.train_dataset.data[0][0]]


@pytest.mark.slow
def test_speaker_identification_through_s3prls_dataset(tiny, s3prl_shims, tmp_path, monkeypatch):
    from s3prl.downstream.voxceleb1 import dataset

    monkeypatch.setattr(dataset, "CACHE_PATH", str(tmp_path))  # not s3prl's site-packages cache
    paths = entries(tiny)["sid"].paths
    splits = {mode: dataset.SpeakerClassifiDataset(mode, Path(paths["datarc.file_path"]), paths["datarc.meta_data"])
              for mode in ("train", "dev", "test")}
    assert {mode: len(d) for mode, d in splits.items()} == {"train": 12, "dev": 4, "test": 4}
    for d in splits.values():  # closed set: every speaker in every split
        assert sorted(set(d.label)) == [0, 1, 2, 3]
    assert not set(splits["train"].dataset) & set(splits["test"].dataset)
    wav, label, name = splits["test"][0]
    assert len(wav) > 16000 and name.startswith(f"id{10001 + label}-")


@pytest.mark.slow
def test_intent_classification_through_s3prls_expert(tiny, s3prl_shims, tmp_path):
    from s3prl.downstream.fluent_commands.expert import DownstreamExpert

    paths = entries(tiny)["ic"].paths
    expert = DownstreamExpert(16, recipe_expert_config("fluent_commands", paths), str(tmp_path))
    assert [len(d) for d in (expert.train_dataset, expert.dev_dataset, expert.test_dataset)] == [12, 12, 12]
    assert all(count >= 2 for count in expert.values_per_slot), expert.values_per_slot
    train_intents = set(map(tuple, expert.train_df[["action", "object", "location"]].values))
    for frame in (expert.valid_df, expert.test_df):
        assert set(map(tuple, frame[["action", "object", "location"]].values)) <= train_intents
        assert not set(frame.speakerId) & set(expert.train_df.speakerId)
    for dataset in (expert.dev_dataset, expert.test_dataset):
        labels = [tuple(dataset[i][1]) for i in range(len(dataset))]  # every value has a train class
        assert len(labels) == len(dataset)


@pytest.mark.slow
def test_emotion_folds_through_s3prls_expert_and_preprocess(tiny, s3prl_shims, tmp_path):
    from s3prl.downstream.emotion import IEMOCAP_preprocess
    from s3prl.downstream.emotion.expert import DownstreamExpert

    paths = entries(tiny)["er"].paths
    for fold in range(1, 6):
        config = recipe_expert_config("emotion", paths, test_fold=f"fold{fold}", pre_load=False)
        expert = DownstreamExpert(16, config, str(tmp_path))
        test = expert.test_dataset
        assert test.class_num == 4 and len(test) == 8
        assert Counter(row["label"] for row in test.meta_data) == Counter(dict.fromkeys(corpus.EMOTIONS, 2))
        assert {row["path"].split("/")[0] for row in test.meta_data} == {f"Session{fold}"}
        assert len(expert.train_dataset) + len(expert.dev_dataset) == 32
    # s3prl's own preprocessing of the IEMOCAP label files gives the same fold metadata.
    copy = tmp_path / "IEMOCAP_full_release"
    shutil.copytree(paths["datarc.root"], copy, ignore=shutil.ignore_patterns("meta_data"))
    IEMOCAP_preprocess.main(str(copy))
    for fold in range(1, 6):
        for split in ("train", "test"):
            ours, theirs = (json.loads((Path(root) / f"Session{fold}" / f"{split}_meta_data.json").read_text())
                            for root in (paths["datarc.meta_data"], copy / "meta_data"))
            assert ours["labels"] == theirs["labels"]
            assert sorted(ours["meta_data"], key=json.dumps) == sorted(theirs["meta_data"], key=json.dumps)


@pytest.mark.slow
def test_asr_and_phoneme_readers(tiny, s3prl_shims):
    from s3prl.downstream.asr.dataset import SequenceDataset
    from s3prl.downstream.asr.dictionary import Dictionary
    from s3prl.downstream.ctc.text import load_text_encoder

    from s3prl_star.integration.ctc_corpus.libriphone import LibriPhoneDataset

    data = entries(tiny)
    asr = data["asr"].paths
    dictionary = Dictionary.load(str(RECIPES / "asr" / "char.dict"))
    sizes = {"train-clean-100": 24, "dev-clean": 8, "test-clean": 8}
    for split, size in sizes.items():
        dataset = SequenceDataset(split, 1, dictionary, asr["datarc.libri_root"], asr["datarc.bucket_file"],
                                  **{split: [split]})
        assert len(dataset) == size
        assert all(dictionary.unk_index not in dataset.Y[name] for name in dataset.Y)

    pr = data["pr"]
    tokenizer = load_text_encoder("word", pr.overrides.split("=", 1)[1])
    for split, size in sizes.items():
        dataset = LibriPhoneDataset([split], tokenizer, 1, pr.paths["corpus.path"], pr.paths["corpus.lexicon"])
        assert len(dataset) == size
        assert all(tokenizer.unk_idx not in ids for _, ids in dataset.items)


@pytest.mark.slow
def test_same_seed_same_bytes_and_a_complete_out_is_left_alone(tiny, tmp_path):
    again = tmp_path / "again"
    assert corpus.make_corpus(again, "tiny", seed=0, jobs=3) == again / corpus.DATA_FILE
    first, second = corpus_files(tiny), corpus_files(again)
    data_file = corpus.DATA_FILE
    assert second.pop(data_file).replace(str(again).encode(), str(tiny).encode()) == first.pop(data_file)
    assert first.keys() == second.keys() and first == second

    before = {path: path.stat().st_mtime_ns for path in tiny.rglob("*")}
    result = subprocess.run([CLI, "corpus", str(tiny), "--size", "tiny"], capture_output=True, text=True)
    assert result.returncode == 0 and "already holds the complete tiny corpus of seed 0" in result.stdout
    assert {path: path.stat().st_mtime_ns for path in tiny.rglob("*")} == before

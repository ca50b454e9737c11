"""PR and SF (s3prl `-d ctc`) on the PyPI s3prl: this project's corpus readers and recipes.

s3prl 0.4.18's `ctc/data.py` imports `corpus.libriphone` (PR) and `corpus.snips` (SF), which the PyPI
package lacks; `s3prl_star.integration.patches` registers `s3prl_star.integration.ctc_corpus.libriphone` / `.snips` under those
names (and leaves a real `ctc/corpus/` alone). The recipes are in 0.4.18's schema.

- Fast: the readers' labels, order and buckets with s3prl's own text encoders; a clear error naming
  the file for a missing or malformed lexicon, vocabulary, slots file or transcript; the shim.
- Slow (about 1 min each): PR and SF train a few steps through `s3prl-star downstream`, then
  `-m evaluate -e` the checkpoint in a fresh process, on espeak-ng speech in each corpus' layout
  (LibriSpeech + a lexicon of espeak-ng's own phonemes; Audio SNIPS); the printed test metric is
  parsed, checked against the hypothesis/reference files s3prl writes, whose references must be the
  labels the generated corpus implies. Only steps, batch sizes and workers are overridden (-o),
  and SF's BiLSTM width.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import editdistance
import pytest
import soundfile as sf

from helpers import (FAST_RUNNER, RECIPES, STEPS, downstream_output, make_libriphone_corpus, pr_overrides,
                     printed_metric, run_downstream)
from s3prl_star.mini_superb.synthetic import SAMPLE_RATE, require_tools, synthesise

# PR: LibriSpeech layout and a lexicon of espeak-ng's phonemes, `make_libriphone_corpus` and its `-o`
# (`pr_overrides`) in helpers.py (test_checkout.py runs PR in an s3prl checkout on the same corpus).

# --- SF: Audio SNIPS layout ---------------------------------------------------------------------

# (intent, [(words, slot or "O"), ...]): each split's utterance n is the n-th of these
SNIPS_SENTENCES = [
    ("PlayMusic", [("PLAY", "O"), ("ADELE", "artist"), ("ON", "O"), ("SPOTIFY", "service")]),
    ("GetWeather", [("WHAT IS THE WEATHER IN", "O"), ("NEW YORK", "city")]),
    ("AddToPlaylist", [("ADD", "O"), ("THIS SONG", "O"), ("TO MY", "O"), ("CHILL", "playlist"), ("PLAYLIST", "O")]),
    ("BookRestaurant", [("BOOK A TABLE FOR", "O"), ("TWO", "party_size_number"), ("IN", "O"), ("PARIS", "city")]),
]
SLOTS = ["artist", "service", "city", "playlist", "party_size_number"]
# Audio SNIPS speaker -> espeak-ng voice; the recipe's speaker lists put Ivy and Joanna in train,
# Aditi in valid, Brian in test. Amy (a valid speaker) also reads the train sentences, as every
# Audio SNIPS voice reads every split, and must be left out of training.
SNIPS_SPEAKERS = {"train": {"Ivy": "en-us", "Joanna": "en-us+f2", "Amy": "en+m3"},
                  "valid": {"Aditi": "en-us+m1"}, "test": {"Brian": "en-us+f4"}}
SNIPS_SIZES = {"train": 4, "valid": 2, "test": 2}


def snips_words_and_tags(sentence) -> tuple[list[str], list[str]]:
    words, tags = [], []
    for phrase, slot in sentence:
        words += phrase.split()
        tags += [slot] * len(phrase.split())
    return words, tags


def slot_label(sentence) -> str:
    """How s3prl's character-slot encoder decodes the sentence's label: `B-slot WORDS E-slot` spans."""
    return " ".join(f"B-{slot} {phrase} E-{slot}" if slot != "O" else phrase for phrase, slot in sentence)


def make_audio_snips(root: Path) -> dict:
    """Audio SNIPS as s3prl's preprocess/snips_preprocess.py writes it: `all.iob.snips.txt`, `slots.txt`
    (O first, no final newline) and `<split>/<Speaker>-snips-<split>-<n>.wav`. Returns the SF recipe's
    data keys (`path`, `slots_file`) and `labels`, the decoded label of every utterance."""
    tools = require_tools()
    lines, labels = [], {}
    for split, speakers in SNIPS_SPEAKERS.items():
        for speaker, voice in speakers.items():
            for n in range(SNIPS_SIZES[split]):
                intent, sentence = SNIPS_SENTENCES[n]
                words, tags = snips_words_and_tags(sentence)
                uid = f"{speaker}-snips-{split}-{n}"
                path = root / split / f"{uid}.wav"
                path.parent.mkdir(parents=True, exist_ok=True)
                sf.write(path, synthesise(" ".join(words).lower(), voice, tools), SAMPLE_RATE, subtype="PCM_16")
                lines.append(f"{uid} BOS {' '.join(words)} EOS\tO {' '.join(tags)} {intent}\n")
                labels[uid] = slot_label(sentence)
    (root / "all.iob.snips.txt").write_text("".join(lines))
    (root / "slots.txt").write_text("\n".join(["O", *SLOTS]))
    return {"path": root, "slots_file": root / "slots.txt", "labels": labels}


def sf_overrides(corpus: dict, **changes) -> str:
    """`-o` for the SF recipe on `corpus` (a dict of make_audio_snips), `changes` replacing keys. The
    recipe's 2x1024 BiLSTM head takes seconds a step on CPU, so the tests narrow it to 2x64."""
    keys = {"corpus.path": corpus["path"], "text.slots_file": corpus["slots_file"], "corpus.batch_size": 4,
            "corpus.num_workers": 0, "model.project_dim": 64, "model.RNNs.dim": [64, 64]}
    keys.update(changes)
    return ",,".join(f"config.downstream_expert.{key}={value}" for key, value in keys.items())


# --- runs through `s3prl-star downstream` -----------------------------------------------------


def ctc_train_args(recipe: str, student_checkpoint: Path, expdir: Path, overrides: str) -> list[str]:
    """`-m train -d ctc` on downstream_recipes/<recipe>/config.yaml with FAST_RUNNER, then `overrides`."""
    return ["-m", "train", "-u", "star_hubert", "-k", str(student_checkpoint), "-d", "ctc",
            "-c", str(RECIPES / recipe / "config.yaml"), "-p", str(expdir), "-o", f"{FAST_RUNNER},,{overrides}"]


def train_then_evaluate_ctc(recipe, student_checkpoint, expdir, overrides, metric: str) -> str:
    """Train (the dev score printed), then `-m evaluate -e` the last checkpoint; returns its output."""
    run_downstream(ctc_train_args(recipe, student_checkpoint, expdir, overrides), rf"^dev {metric}: ")
    checkpoint = expdir / f"states-{STEPS}.ckpt"
    assert checkpoint.is_file(), sorted(path.name for path in expdir.iterdir())
    return run_downstream(["-m", "evaluate", "-e", str(checkpoint)], rf"^test {metric}: ")


def read_ark(path: Path) -> dict[str, str]:
    """{utterance: text} of the `<file> <text>` lines the ctc expert writes (text may be empty)."""
    return dict(line.split(" ", 1) for line in path.read_text().splitlines())


@pytest.mark.slow
def test_phoneme_recognition_trains_then_evaluates(tmp_path, tiny_student_checkpoint, superb_metric):
    corpus = make_libriphone_corpus(tmp_path)
    expdir = tmp_path / "pr"
    output = train_then_evaluate_ctc("pr", tiny_student_checkpoint, expdir, pr_overrides(corpus), "per")
    per = printed_metric(output, "test per")
    superb_metric("PR_per", 100 * per)
    references, hypotheses = read_ark(expdir / "test-ref.ark"), read_ark(expdir / "test-hyp.ark")
    test_utterances = {path.stem for path in (corpus["path"] / "test-clean").rglob("*.flac")}
    assert references == {utt: corpus["labels"][utt] for utt in test_utterances}
    errors = sum(editdistance.eval(hypotheses[u].split(" "), references[u].split(" ")) for u in references)
    assert per == pytest.approx(errors / sum(len(ref.split(" ")) for ref in references.values()))
    assert 0 <= per < float("inf")  # a few steps: insertions can take it past 1


@pytest.mark.slow
def test_slot_filling_trains_then_evaluates(tmp_path, tiny_student_checkpoint, superb_metric):
    corpus = make_audio_snips(tmp_path / "SNIPS")
    expdir = tmp_path / "sf"
    output = train_then_evaluate_ctc("sf", tiny_student_checkpoint, expdir, sf_overrides(corpus), "slot_type_f1")
    f1, cer = printed_metric(output, "test slot_type_f1"), printed_metric(output, "test slot_value_cer")
    superb_metric("SF_f1", 100 * f1)
    superb_metric("SF_cer", 100 * cer)
    from s3prl.downstream.ctc.metric import slot_type_f1, slot_value_cer

    references, hypotheses = read_ark(expdir / "test-ref.ark"), read_ark(expdir / "test-hyp.ark")
    assert references == {uid: label for uid, label in corpus["labels"].items() if uid.startswith("Brian-")}
    utterances = sorted(references)
    scored = {"hypothesis": [hypotheses[u] for u in utterances], "groundtruth": [references[u] for u in utterances]}
    assert f1 == pytest.approx(slot_type_f1(**scored)) and cer == pytest.approx(slot_value_cer(**scored))
    assert 0 <= f1 <= 1 and cer >= 0


# --- the readers, with s3prl's own text encoders (fast) -------------------------------------


def write_lines(path: Path, lines) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


@pytest.fixture
def libriphone_files(tmp_path) -> dict:
    """Two utterances of one LibriSpeech chapter (empty flacs: the reader lists, never decodes them),
    two lexicon files (A has a pronunciation in each) and their phoneme vocabulary."""
    chapter = tmp_path / "LibriSpeech" / "train-clean-100" / "1" / "10"
    write_lines(chapter / "1-10.trans.txt", ["1-10-0000 A CAT", "1-10-0001 THE CAT SAT"])
    for utterance in ("1-10-0000", "1-10-0001"):
        (chapter / f"{utterance}.flac").touch()
    return {
        "path": tmp_path / "LibriSpeech",
        "lexicon": [write_lines(tmp_path / "first.txt", ["A\tAH0", "CAT\tK AE1 T"]),
                    write_lines(tmp_path / "second.txt", ["A\tEY1", "THE\tDH AH0", "SAT\tS AE1 T"])],
        "vocab_file": write_lines(tmp_path / "phonemes.txt", ["AH0", "EY1", "K", "AE1", "T", "DH", "S"]),
    }


def libriphone(files: dict, bucket_size: int = 1, **changes):
    from s3prl.downstream.ctc.text import load_text_encoder

    from s3prl_star.integration.ctc_corpus.libriphone import LibriPhoneDataset

    tokenizer = load_text_encoder("word", str(files["vocab_file"]))
    corpus = {"path": str(files["path"]), "lexicon": [str(path) for path in files["lexicon"]],
              "train": ["train-clean-100"], "num_workers": 0, "ratio": 1.0, "offset": 0, **changes}
    return LibriPhoneDataset(corpus["train"], tokenizer, bucket_size, **corpus), tokenizer


def test_libriphone_labels_each_flac_with_its_words_first_pronunciations(libriphone_files):
    dataset, tokenizer = libriphone(libriphone_files)
    chapter = libriphone_files["path"] / "train-clean-100" / "1" / "10"
    assert len(dataset) == 2
    assert dataset[0] == (str(chapter / "1-10-0001.flac"), tokenizer.encode("DH AH0 K AE1 T S AE1 T"))  # longest first
    assert dataset[1] == (str(chapter / "1-10-0000.flac"), tokenizer.encode("AH0 K AE1 T"))  # A: the first file's
    assert tokenizer.decode(dataset[1][1]) == "AH0 K AE1 T"
    buckets, _ = libriphone(libriphone_files, bucket_size=2)
    assert buckets[0] == buckets[1] == [dataset[0], dataset[1]]  # the last full bucket past the end


@pytest.mark.parametrize("case, expected", [
    ("missing lexicon", r"corpus.lexicon: \S*missing.txt does not exist"),
    ("lexicon as a string", r"corpus.lexicon must be a list of lexicon files"),
    ("word without phonemes", r"second.txt:2: 'THE' has no phonemes; expected WORD<TAB>PHONEME"),
    ("phoneme not in the vocabulary",
     r"first.txt:2: phoneme\(s\) \['AE1'\] of CAT are not in the vocabulary of downstream_expert.text.vocab_file"),
    ("word not in the lexicons",
     r"1-10.trans.txt \(1-10-0001\): the word 'SAT' is in none of the downstream_expert.corpus.lexicon files"),
    ("utterance not in the transcripts", r"1-10-0002.flac: no line for 1-10-0002 in a .trans.txt file of its folder"),
    ("split folder missing", r"no \*.flac files under \S*train-other-500"),
    ("unknown corpus key", r"libriphone: unknown key\(s\) \['lexicons'\]"),
])
def test_libriphone_rejects_bad_input_naming_the_file(libriphone_files, case, expected):
    files, changes = libriphone_files, {}
    if case == "missing lexicon":
        files["lexicon"].append(files["lexicon"][0].with_name("missing.txt"))
    elif case == "lexicon as a string":
        changes["lexicon"] = str(files["lexicon"][0])
    elif case == "word without phonemes":
        write_lines(files["lexicon"][1], ["A\tEY1", "THE", "SAT\tS AE1 T"])
    elif case == "phoneme not in the vocabulary":
        write_lines(files["vocab_file"], ["AH0", "EY1", "K", "T", "DH", "S"])
    elif case == "word not in the lexicons":
        write_lines(files["lexicon"][1], ["A\tEY1", "THE\tDH AH0"])
    elif case == "utterance not in the transcripts":
        (files["path"] / "train-clean-100" / "1" / "10" / "1-10-0002.flac").touch()
    elif case == "split folder missing":
        changes["train"] = ["train-other-500"]
    elif case == "unknown corpus key":
        changes["lexicons"] = []
    with pytest.raises((ValueError, FileNotFoundError), match=expected):
        libriphone(files, **changes)


@pytest.fixture
def snips_files(tmp_path) -> dict:
    """Audio SNIPS with two train sentences read by Ivy and by Amy (a valid speaker), empty wavs."""
    lines = ["Ivy-snips-train-0 BOS PLAY ADELE EOS\tO O artist PlayMusic",
             "Ivy-snips-train-1 BOS RAIN IN NEW YORK EOS\tO O O city city GetWeather",
             "Amy-snips-train-0 BOS PLAY ADELE EOS\tO O artist PlayMusic"]
    root = tmp_path / "SNIPS"
    write_lines(root / "all.iob.snips.txt", lines)
    (root / "train").mkdir()
    for uid in ("Ivy-snips-train-0", "Ivy-snips-train-1", "Amy-snips-train-0"):
        (root / "train" / f"{uid}.wav").touch()
    (root / "slots.txt").write_text("O\ncity\nartist")
    return {"path": root, "slots_file": root / "slots.txt", "vocab_file": RECIPES / "sf" / "character.txt"}


def snips(files: dict, **changes):
    from s3prl.downstream.ctc.text import load_text_encoder

    from s3prl_star.integration.ctc_corpus.snips import SnipsDataset

    tokenizer = load_text_encoder("character-slot", str(files["vocab_file"]), str(files["slots_file"]))
    corpus = {"path": str(files["path"]), "train": ["train"], "dev": ["valid"], "test": ["test"],
              "train_speakers": ["Ivy", "Joanna"], "valid_speakers": ["Amy"], "test_speakers": ["Brian"],
              "num_workers": 0, "ratio": 1.0, "offset": 0, **changes}
    return SnipsDataset(corpus["train"], tokenizer, 1, **corpus), tokenizer


def test_snips_labels_the_splits_speakers_with_characters_and_slots(snips_files, capsys):
    (snips_files["path"] / "train" / "Ivy-snips-train-2.wav").touch()  # no transcript: reported, left out
    dataset, tokenizer = snips(snips_files)
    train = snips_files["path"] / "train"
    assert [path for path, _ in dataset] == [str(train / "Ivy-snips-train-1.wav"), str(train / "Ivy-snips-train-0.wav")]
    decoded = [tokenizer.decode(label) for _, label in dataset]
    assert decoded == ["RAIN IN B-city NEW YORK E-city", "PLAY B-artist ADELE E-artist"]
    assert "1 wavs of ['train'] have no line in all.iob.snips.txt" in capsys.readouterr().err


@pytest.mark.parametrize("case, expected", [
    ("slot not in the slots file", r"all.iob.snips.txt:2: slot\(s\) \['city'\] are not in downstream_expert.text.slots_file"),
    ("line without tags", r"all.iob.snips.txt:1: expected <uid> BOS WORD ... EOS<TAB>O TAG ... INTENT"),
    ("vocabulary without a space", r"text.vocab_file has no space character"),
    ("missing transcripts", r"\S*SNIPS/all.iob.snips.txt does not exist"),
    ("no wav of the speakers", r"snips: no labelled wav of the speakers \['Joanna'\]"),
])
def test_snips_rejects_bad_input_naming_the_file(snips_files, tmp_path, case, expected):
    files, changes = snips_files, {}
    if case == "slot not in the slots file":
        files["slots_file"].write_text("O\nartist")
    elif case == "line without tags":
        write_lines(files["path"] / "all.iob.snips.txt", ["Ivy-snips-train-0 BOS PLAY ADELE EOS"])
    elif case == "vocabulary without a space":
        files["vocab_file"] = write_lines(tmp_path / "letters.txt", [chr(c) for c in range(ord("A"), ord("Z") + 1)])
    elif case == "missing transcripts":
        (files["path"] / "all.iob.snips.txt").unlink()
    elif case == "no wav of the speakers":
        changes["train_speakers"] = ["Joanna"]
    with pytest.raises((ValueError, FileNotFoundError), match=expected):
        snips(files, **changes)


# --- the compat shim, and errors as `s3prl-star downstream` shows them -----------------------


def run_python(code: str) -> dict:
    """Run `code` in a fresh interpreter; it prints one JSON object last."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_compat_registers_the_readers_the_pypi_s3prl_lacks():
    report = run_python(
        "import json\n"
        "from s3prl_star.integration import patches\n"
        "first = patches.apply()\n"
        "from s3prl.downstream.ctc.data import create_dataset\n"
        "from s3prl.downstream.ctc.corpus.libriphone import LibriPhoneDataset\n"
        "from s3prl.downstream.ctc.corpus.snips import SnipsDataset\n"
        "print(json.dumps({'first': first, 'second': patches.apply(),\n"
        "                  'readers': [LibriPhoneDataset.__module__, SnipsDataset.__module__]}))\n"
    )
    assert "add_ctc_corpus_readers" in report["first"] and report["second"] == []
    assert report["readers"] == ["s3prl_star.integration.ctc_corpus.libriphone", "s3prl_star.integration.ctc_corpus.snips"]


def test_compat_leaves_the_corpus_readers_of_an_s3prl_checkout_alone(tmp_path):
    """Where s3prl has `downstream/ctc/corpus/` (a git checkout: a folder without __init__.py), its readers stay."""
    write_lines(tmp_path / "corpus" / "libriphone.py", ["class LibriPhoneDataset:", "    origin = 'checkout'"])
    report = run_python(
        "import json\n"
        "import s3prl.downstream.ctc\n"
        f"s3prl.downstream.ctc.__path__.append({str(tmp_path)!r})  # as if ctc/corpus/ were in the package\n"
        "from s3prl_star.integration import patches\n"
        "shims = patches.apply()\n"
        "from s3prl.downstream.ctc.corpus.libriphone import LibriPhoneDataset\n"
        "print(json.dumps({'shims': shims, 'origin': LibriPhoneDataset.origin}))\n"
    )
    assert "add_ctc_corpus_readers" not in report["shims"] and report["origin"] == "checkout"


@pytest.mark.slow
@pytest.mark.parametrize("recipe, key, message", [
    ("pr", "corpus.lexicon", "downstream_expert.corpus.lexicon: {path} does not exist"),
    ("pr", "text.vocab_file", "No such file or directory: '{path}'"),  # s3prl's text encoder opens it
    ("sf", "text.slots_file", "No such file or directory: '{path}'"),
])
def test_a_missing_data_file_stops_the_run_naming_it(tmp_path, tiny_student_checkpoint, recipe, key, message):
    missing = tmp_path / "missing.txt"
    value = [str(missing)] if key == "corpus.lexicon" else missing
    overrides = f"config.downstream_expert.corpus.path={tmp_path},,config.downstream_expert.{key}={value}"
    returncode, output = downstream_output(ctc_train_args(recipe, tiny_student_checkpoint, tmp_path / "exp", overrides))
    assert returncode != 0 and message.format(path=missing) in output, output[-4000:]

"""A mini-SUPERB corpus spoken by espeak-ng, in the real on-disk layouts s3prl 0.4.18's readers read.

    s3prl-star corpus OUT [--size tiny|small] [--seed 0] [--jobs N]

writes, for `s3prl-star superb --data OUT/data.yaml` (paths in it relative to OUT):

    LibriSpeech/{train-clean-100,dev-clean,test-clean}/   ASR, PR, teacher pre-training, distillation
    len_for_bucket/<split>.csv                            the length CSVs (`s3prl-star prepare-librispeech`)
    lexicon.txt, phonemes.txt                             PR: `WORD<TAB>espeak-ng phonemes`, their vocabulary
    speech_commands_v0.01/, speech_commands_test_set_v0.01/   KS: 10 keywords, other words, _background_noise_
    VoxCeleb1/dev/wav/idXXXXX/<video>/NNNNN.wav, VoxCeleb1/iden_split.txt   SID (closed set)
    fluent_speech_commands_dataset/{data,wavs}/           IC: action/object/location commands
    IEMOCAP_full_release/Session1..5/, .../meta_data/     ER: 4 emotions as prosody styles, 5 folds
    data.yaml, corpus.json                                the driver's DATA.yaml; the manifest, written last

Speakers are espeak-ng voice variants with their own pitch and speed (`synthetic.speaker_voice`);
test speakers are not training speakers except in SID (closed-set). Every task builder
(`librispeech`, `phoneme_lexicon`, `speech_commands`, `voxceleb1`, `fluent_commands`, `iemocap`)
takes its sizes explicitly and returns a `TaskPlan`; `build` speaks the utterances of all plans on
one thread pool, then writes their metadata. Same seed and size, same bytes (espeak-ng is
deterministic, sox resamples without dither). `make_corpus` builds in a hidden sibling folder
(resumed when a run was interrupted) and renames it to OUT when complete.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import string
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import soundfile as sf
import yaml

from s3prl_star.mini_superb import synthetic
from s3prl_star.mini_superb.synthetic import SAMPLE_RATE, PlannedUtterance, make_sentence, speaker_voice

MANIFEST = "corpus.json"
DATA_FILE = "data.yaml"
FORMAT_VERSION = 1


class CorpusError(ValueError):
    """The corpus cannot be built as asked (bad size, OUT in the way); the message says why."""


class CorpusWriteError(OSError):
    """A file of the corpus cannot be written (a full disk, a read-only folder); the message names it."""


@dataclass
class TaskPlan:
    """One task's corpus: the speech to synthesise, what to write once it exists, and its DATA.yaml entry."""

    task: str  # DATA.yaml key
    speech: list[PlannedUtterance]
    writers: list[Callable[[], None]]  # metadata writers, run after the speech is written
    data: dict[str, Path | list[Path]]  # recipe key under config.downstream_expert -> path
    counts: dict[str, int]  # split -> utterances
    overrides: str = ""


def build(plans: list[TaskPlan], jobs: int | None = None) -> None:
    """Speak every plan's utterances on one thread pool (progress bar), then run their writers."""
    tools = synthetic.require_tools()
    synthetic.speak_all([utterance for plan in plans for utterance in plan.speech], tools, jobs)
    for plan in plans:
        for writer in plan.writers:
            writer()


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# --- LibriSpeech (ASR, PR, pre-training, distillation) ------------------------------------------

LIBRISPEECH_SPLITS = ("train-clean-100", "dev-clean", "test-clean")


def librispeech(root: Path, sizes: dict[str, tuple[int, int]], seed: int) -> TaskPlan:
    """LibriSpeech `root/LibriSpeech/<split>` ({split: (utterances, speakers)}, speakers disjoint across
    splits) and its length CSVs `root/len_for_bucket/<split>.csv`, as `s3prl-star prepare-librispeech`
    writes them; the ASR entry."""
    from s3prl_star.distill import data

    corpus, buckets = root / "LibriSpeech", root / "len_for_bucket"
    plan = synthetic.plan_corpus(corpus, {split: n for split, (n, _) in sizes.items()}, seed,
                                 {split: speakers for split, (_, speakers) in sizes.items()})

    def write_length_csvs() -> None:
        for split in sizes:
            utterances, bad = data.scan_split(corpus, split)
            if bad:
                raise RuntimeError(f"{corpus / split}: unusable files {[str(b.path) for b in bad]}")
            data.write_length_csv(buckets / f"{split}.csv", utterances)

    return TaskPlan("asr", plan, [lambda: synthetic.write_transcripts(plan), write_length_csvs],
                    {"datarc.libri_root": corpus, "datarc.bucket_file": buckets},
                    {split: n for split, (n, _) in sizes.items()})


def vocabulary() -> list[str]:
    """Every word the LibriSpeech grammar can say, upper case as in the transcripts, sorted."""
    phrases = (synthetic.DETERMINERS + synthetic.ADJECTIVES + synthetic.NOUNS + synthetic.TRANSITIVE_VERBS
               + synthetic.INTRANSITIVE_VERBS + synthetic.PREPOSITIONS)
    return sorted({word.upper() for phrase in phrases for word in phrase.split()})


def espeak_phonemes(words: list[str], espeak: str) -> dict[str, list[str]]:
    """espeak-ng's own phonemes (`-q -x --sep=' '`) of each word said alone (one sentence per word)."""
    result = subprocess.run([espeak, "-q", "-x", "--sep= "], input="".join(f"{w.lower()}.\n" for w in words),
                            capture_output=True, text=True, check=True)
    lines = result.stdout.splitlines()
    if len(lines) != len(words) or not all(line.split() for line in lines):
        raise RuntimeError(f"espeak-ng -x gave {len(lines)} phoneme lines for {len(words)} words: {lines!r}")
    return {word: line.split() for word, line in zip(words, lines)}


def phoneme_lexicon(root: Path, asr: TaskPlan) -> TaskPlan:
    """PR on the LibriSpeech of `asr`: `root/lexicon.txt` (`WORD<TAB>PHONEMES` for the whole vocabulary)
    and `root/phonemes.txt` (its phonemes, one a line); the PR entry (its vocabulary goes in `overrides`)."""
    lexicon, phonemes = root / "lexicon.txt", root / "phonemes.txt"

    def write() -> None:
        pronunciations = espeak_phonemes(vocabulary(), synthetic.require_tools()["espeak-ng"])
        write_text(lexicon, "".join(f"{word}\t{' '.join(p)}\n" for word, p in pronunciations.items()))
        write_text(phonemes, "".join(f"{p}\n" for p in sorted({p for ps in pronunciations.values() for p in ps})))

    return TaskPlan("pr", [], [write], {"corpus.path": asr.data["datarc.libri_root"], "corpus.lexicon": [lexicon]},
                    {}, overrides=f"config.downstream_expert.text.vocab_file={phonemes}")


# --- KS: Speech Commands v0.01 ------------------------------------------------------------------

KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
# Speech Commands' auxiliary words: s3prl labels them _unknown_.
OTHER_WORDS = ("bed", "bird", "cat", "dog", "happy", "house", "marvin", "sheila", "tree", "wow")
CLIP = SAMPLE_RATE  # Speech Commands clips are 1 s


def hash_percentage(speaker: str) -> float:
    """Speech Commands' (and s3prl's split_dataset's) hash of a speaker id: < 10 validation, < 20 testing."""
    return (int(hashlib.sha1(speaker.encode()).hexdigest(), 16) % 2**27) * (100.0 / (2**27 - 1))


def speech_commands_speaker(rng: random.Random, part: str, used: set) -> str:
    """A new 8-hex-digit speaker id that the hash puts in `part` (train: >= 20, valid: < 10, test: any)."""
    while True:
        speaker = f"{rng.getrandbits(32):08x}"
        percentage = hash_percentage(speaker)
        if speaker not in used and {"train": percentage >= 20, "valid": percentage < 10, "test": True}[part]:
            used.add(speaker)
            return speaker


def noise(rng: np.random.Generator, seconds: float, colour: str, level: float) -> np.ndarray:
    """Int16 white, pink or brown noise at RMS `level` (of full scale)."""
    white = rng.standard_normal(int(seconds * SAMPLE_RATE))
    if colour == "white":
        shaped = white
    else:
        spectrum = np.fft.rfft(white)
        frequencies = np.maximum(np.fft.rfftfreq(len(white)), 1.0 / len(white))
        shaped = np.fft.irfft(spectrum / (np.sqrt(frequencies) if colour == "pink" else frequencies), len(white))
    shaped *= level / np.sqrt(np.mean(shaped**2))
    return np.clip(shaped * 32767, -32768, 32767).astype(np.int16)


def speech_commands(root: Path, keywords: tuple, other_words: tuple, speakers: dict[str, int], seed: int,
                    noise_seconds: float = 10.0) -> TaskPlan:
    """Speech Commands v0.01: `root/speech_commands_v0.01/<word>/<speaker>_nohash_0.wav` (1 s clips) for
    the train and valid speakers (s3prl splits them by the hash of the id: the ids are chosen to land in
    train or validation), `_background_noise_/` (white, pink, brown noise: _silence_), validation_list.txt
    and testing_list.txt; the test set `root/speech_commands_test_set_v0.01/<class>/` (keywords, _unknown_,
    _silence_) from other speakers. Every speaker says every word once. {split: speakers}: train, valid, test."""
    rng = random.Random(seed)
    train_root, test_root = root / "speech_commands_v0.01", root / "speech_commands_test_set_v0.01"
    used: set = set()
    plan, counts, index = [], {}, 0
    validation = []
    for part in ("train", "valid", "test"):
        counts[part] = 0
        for _ in range(speakers[part]):
            speaker, voice = speech_commands_speaker(rng, part, used), speaker_voice(index)
            index += 1
            for number, word in enumerate(keywords + other_words):
                if part == "test":
                    folder = word if word in keywords else "_unknown_"
                    path = test_root / folder / f"{speaker}_nohash_{number}.wav"
                else:
                    path = train_root / word / f"{speaker}_nohash_0.wav"
                    if part == "valid":
                        validation.append(f"{word}/{path.name}\n")
                jitter = voice.styled(pitch=rng.randint(-4, 4), speed=rng.uniform(0.9, 1.1))
                plan.append(PlannedUtterance(path, jitter, word, clip=CLIP, offset=rng.random()))
                counts[part] += 1
    noise_seed = rng.getrandbits(32)

    def write_noise() -> None:
        generator = np.random.default_rng(noise_seed)
        for colour in ("white", "pink", "brown"):
            path = train_root / "_background_noise_" / f"{colour}_noise.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            synthetic.write_audio(path, noise(generator, noise_seconds, colour, 0.05))
        for number in range(max(1, speakers["test"])):
            path = test_root / "_silence_" / f"silence_{number}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            clip = noise(generator, 1.0, ("white", "pink", "brown")[number % 3], generator.uniform(0.001, 0.03))
            synthetic.write_audio(path, clip)
        write_text(train_root / "validation_list.txt", "".join(sorted(validation)))
        write_text(train_root / "testing_list.txt", "")

    counts["test"] += max(1, speakers["test"])
    return TaskPlan("ks", plan, [write_noise],
                    {"datarc.speech_commands_root": train_root, "datarc.speech_commands_test_root": test_root}, counts)


# --- SID: VoxCeleb1 identification ---------------------------------------------------------------

SID_SPLITS = {"train": 1, "dev": 2, "test": 3}
VIDEO_CHARACTERS = string.ascii_letters + string.digits + "-_"


def voxceleb1(root: Path, speakers: int, per_speaker: dict[str, int], seed: int, first_speaker: int = 0) -> TaskPlan:
    """VoxCeleb1 `root/VoxCeleb1/dev/wav/id1000N/<video>/<NNNNN>.wav` (ids from id10001, as s3prl's labels
    need) and `iden_split.txt` (`<1|2|3> idXXXXX/<video>/<NNNNN>.wav`). Closed set: every speaker has
    `per_speaker[split]` utterances in each of train/dev/test, each split from its own video (a session:
    its own pitch and speed shift). Speaker voices from `speaker_voice(first_speaker + n)`."""
    rng = random.Random(seed)
    corpus = root / "VoxCeleb1"
    plan, lines, counts = [], [], dict.fromkeys(SID_SPLITS, 0)
    for speaker in range(speakers):
        speaker_id, voice = f"id{10001 + speaker}", speaker_voice(first_speaker + speaker)
        utterance = 1
        for split, count in per_speaker.items():
            video = "".join(rng.choice(VIDEO_CHARACTERS) for _ in range(11))
            session = voice.styled(pitch=rng.randint(-5, 5), speed=rng.uniform(0.93, 1.07))
            for _ in range(count):
                relative = f"{speaker_id}/{video}/{utterance:05d}.wav"
                plan.append(PlannedUtterance(corpus / "dev" / "wav" / relative, session, make_sentence(rng)))
                lines.append(f"{SID_SPLITS[split]} {relative}\n")
                counts[split] += 1
                utterance += 1
    split_list = corpus / "iden_split.txt"
    return TaskPlan("sid", plan, [lambda: write_text(split_list, "".join(lines))],
                    {"datarc.file_path": corpus, "datarc.meta_data": split_list}, counts)


# --- IC: Fluent Speech Commands --------------------------------------------------------------------

ROOMS = {"none": "", "kitchen": " in the kitchen", "bedroom": " in the bedroom", "washroom": " in the washroom"}
# (action, object): phrasings, "{room}" where a location may go (lights and heat take every room).
COMMANDS = {
    ("activate", "lights"): ("turn on the lights{room}", "switch on the lights{room}", "lights on{room}"),
    ("deactivate", "lights"): ("turn off the lights{room}", "switch off the lights{room}", "lights off{room}"),
    ("increase", "heat"): ("increase the heat{room}", "turn up the heat{room}", "make it warmer{room}"),
    ("decrease", "heat"): ("decrease the heat{room}", "turn down the heat{room}", "make it cooler{room}"),
    ("increase", "volume"): ("increase the volume", "turn up the volume", "make it louder"),
    ("decrease", "volume"): ("decrease the volume", "turn down the volume", "make it quieter"),
    ("activate", "music"): ("play the music", "turn on the music", "start the music"),
    ("deactivate", "music"): ("stop the music", "turn off the music", "pause the music"),
    ("activate", "lamp"): ("turn on the lamp", "switch the lamp on"),
    ("deactivate", "lamp"): ("turn off the lamp", "switch the lamp off"),
    ("bring", "newspaper"): ("bring me the newspaper", "get me the newspaper", "fetch the newspaper"),
    ("bring", "juice"): ("bring me some juice", "get me the juice", "fetch some juice"),
    ("bring", "socks"): ("bring me my socks", "get my socks", "fetch the socks"),
    ("bring", "shoes"): ("bring me my shoes", "get my shoes", "fetch my shoes"),
    **{("change language", language): (f"switch the language to {language.lower()}",
                                       f"change language to {language.lower()}", f"use {language.lower()}")
       for language in ("Chinese", "Korean", "English", "German")},
}
INTENTS = tuple((action, object_, room) for (action, object_), phrasings in COMMANDS.items()
                for room in (ROOMS if "{room}" in phrasings[0] else ("none",)))


def fluent_commands(root: Path, intents: int, speakers: dict[str, int], seed: int) -> TaskPlan:
    """Fluent Speech Commands `root/fluent_speech_commands_dataset/data/{train,valid,test}_data.csv`
    (`,path,speakerId,transcription,action,object,location`) and `wavs/speakers/<id>/<uuid>.wav`.
    `intents` of the 30 (action, object, location) intents, evenly spread; each speaker says each once,
    in a random phrasing, so every valid/test intent is in train. Speakers {train, valid, test} disjoint."""
    if not 1 <= intents <= len(INTENTS):
        raise ValueError(f"intents = {intents}; expected 1 to {len(INTENTS)}")
    rng = random.Random(seed)
    corpus = root / "fluent_speech_commands_dataset"
    chosen = [INTENTS[i * len(INTENTS) // intents] for i in range(intents)]
    plan, tables, index = [], {}, 0
    for split in ("train", "valid", "test"):
        rows = []
        for _ in range(speakers[split]):
            speaker_id = "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(16))
            voice = speaker_voice(index)
            index += 1
            for action, object_, room in chosen:
                text = rng.choice(COMMANDS[action, object_]).format(room=ROOMS[room])
                name = "{:08x}-{:04x}-11e9-{:04x}-{:012x}".format(*(rng.getrandbits(b) for b in (32, 16, 16, 48)))
                relative = f"wavs/speakers/{speaker_id}/{name}.wav"
                styled = voice.styled(pitch=rng.randint(-4, 4), speed=rng.uniform(0.9, 1.1))
                plan.append(PlannedUtterance(corpus / relative, styled, text))
                rows.append(f"{len(rows)},{relative},{speaker_id},{text.capitalize()},{action},{object_},{room}\n")
        tables[split] = rows
    header = ",path,speakerId,transcription,action,object,location\n"
    writers = [lambda split=split, rows=rows: write_text(corpus / "data" / f"{split}_data.csv", header + "".join(rows))
               for split, rows in tables.items()]
    return TaskPlan("ic", plan, writers, {"datarc.file_path": corpus},
                    {split: len(rows) for split, rows in tables.items()})


# --- ER: IEMOCAP ------------------------------------------------------------------------------------

EMOTIONS = ("neu", "hap", "ang", "sad")  # s3prl's label order
# Emotion as prosody, relative to the speaker: (pitch shift, speed factor, amplitude factor).
EMOTION_STYLES = {"neu": (0, 1.0, 1.0), "hap": (15, 1.15, 1.15), "ang": (5, 1.2, 1.7), "sad": (-12, 0.75, 0.55)}
SESSIONS = 5
UTTERANCES_PER_DIALOG = 8


def iemocap(root: Path, per_emotion: int, seed: int) -> TaskPlan:
    """IEMOCAP `root/IEMOCAP_full_release/Session{1..5}/sentences/wav/<dialog>/<dialog>_{F,M}NNN.wav`,
    `dialog/EmoEvaluation/<dialog>.txt` label files, and the 5 folds' metadata `meta_data/Session{n}/
    {train,test}_meta_data.json` as s3prl's IEMOCAP_preprocess.py writes it (test: Session n, train: the
    others). Two speakers (F, M) per session, each saying `per_emotion` grammar sentences per emotion
    (in shuffled order), the emotion a prosody style with per-utterance jitter: the text does not tell it."""
    rng = random.Random(seed)
    corpus = root / "IEMOCAP_full_release"
    plan, rows, evaluations = [], {}, {}
    for session in range(1, SESSIONS + 1):
        turns = [(gender, emotion) for gender in "FM" for emotion in EMOTIONS for _ in range(per_emotion)]
        rng.shuffle(turns)
        voices = {gender: speaker_voice(2 * (session - 1) + (gender == "F")) for gender in "FM"}
        numbers = dict.fromkeys("FM", 0)
        rows[session] = []
        for turn, (gender, emotion) in enumerate(turns):
            dialog = f"Ses{session:02d}F_impro{turn // UTTERANCES_PER_DIALOG + 1:02d}"
            name = f"{dialog}_{gender}{numbers[gender]:03d}"
            numbers[gender] += 1
            pitch, speed, amplitude = EMOTION_STYLES[emotion]
            voice = voices[gender].styled(pitch=pitch + rng.randint(-4, 4), speed=speed * rng.uniform(0.93, 1.07),
                                          amplitude=amplitude * rng.uniform(0.9, 1.1))
            relative = f"Session{session}/sentences/wav/{dialog}/{name}.wav"
            plan.append(PlannedUtterance(corpus / relative, voice, make_sentence(rng)))
            rows[session].append({"path": relative, "label": emotion, "speaker": name.split("_")[0]})
            evaluations.setdefault((session, dialog), []).append((name, emotion))
    meta = corpus / "meta_data"

    def write() -> None:
        for (session, dialog), turns in evaluations.items():
            lines, start = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"], 0.0
            for name, emotion in turns:
                seconds = sf.info(corpus / f"Session{session}/sentences/wav/{dialog}/{name}.wav").duration
                lines.append(f"[{start:.4f} - {start + seconds:.4f}]\t{name}\t{emotion}\t[2.5000, 2.5000, 2.5000]\n\n")
                start += seconds + 0.5
            write_text(corpus / f"Session{session}/dialog/EmoEvaluation/{dialog}.txt", "".join(lines))
        labels = {emotion: index for index, emotion in enumerate(EMOTIONS)}
        for session in rows:
            train = [row for other in rows if other != session for row in rows[other]]
            for split, meta_rows in (("train", train), ("test", rows[session])):
                write_text(meta / f"Session{session}" / f"{split}_meta_data.json",
                           json.dumps({"labels": labels, "meta_data": meta_rows}))

    return TaskPlan("er", plan, [write], {"datarc.root": corpus, "datarc.meta_data": meta},
                    {f"Session{session}": len(session_rows) for session, session_rows in rows.items()})


# --- the whole corpus -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Size:
    """Every task's sizes for one `--size`."""

    librispeech: dict  # split -> (utterances, speakers)
    ks_keywords: int
    ks_other_words: int
    ks_speakers: dict  # train / valid / test -> speakers
    ks_noise_seconds: float
    sid_speakers: int
    sid_per_speaker: dict  # train / dev / test -> utterances per speaker
    ic_intents: int
    ic_speakers: dict  # train / valid / test -> speakers
    er_per_emotion: int  # utterances per speaker and emotion


SIZES = {
    # CI: every split of every task with >= 2 classes / speakers, about 200 utterances.
    "tiny": Size(librispeech={"train-clean-100": (24, 3), "dev-clean": (8, 2), "test-clean": (8, 2)},
                 ks_keywords=3, ks_other_words=1, ks_speakers={"train": 2, "valid": 2, "test": 2}, ks_noise_seconds=2,
                 sid_speakers=4, sid_per_speaker={"train": 3, "dev": 1, "test": 1},
                 ic_intents=6, ic_speakers={"train": 2, "valid": 2, "test": 2}, er_per_emotion=1),
    # The demo: big enough for a downstream probe to learn, test sets of about 100 or more, about 3100 utterances.
    "small": Size(librispeech={"train-clean-100": (1200, 24), "dev-clean": (100, 4), "test-clean": (100, 4)},
                  ks_keywords=10, ks_other_words=6, ks_speakers={"train": 24, "valid": 4, "test": 8},
                  ks_noise_seconds=10, sid_speakers=16, sid_per_speaker={"train": 16, "dev": 4, "test": 6},
                  ic_intents=30, ic_speakers={"train": 8, "valid": 2, "test": 2}, er_per_emotion=8),
}


def plan_corpus(root: Path, size: Size, seed: int) -> list[TaskPlan]:
    """Every task of the corpus under `root`; each task's randomness from its own seed."""
    asr = librispeech(root, size.librispeech, seed)
    return [
        phoneme_lexicon(root, asr),
        asr,
        speech_commands(root, KEYWORDS[:size.ks_keywords], OTHER_WORDS[:size.ks_other_words], size.ks_speakers,
                        seed + 1, size.ks_noise_seconds),
        voxceleb1(root, size.sid_speakers, size.sid_per_speaker, seed + 2),
        fluent_commands(root, size.ic_intents, size.ic_speakers, seed + 3),
        iemocap(root, size.er_per_emotion, seed + 4),
    ]


def data_yaml(plans: list[TaskPlan], root: Path, header: str) -> str:
    """DATA.yaml for `s3prl-star superb`, paths relative to `root` (the file's folder)."""

    def relative(value):
        return [relative(item) for item in value] if isinstance(value, list) else value.relative_to(root).as_posix()

    entries = {}
    for plan in plans:
        entries[plan.task] = {key: relative(value) for key, value in plan.data.items()}
        if plan.overrides:
            entries[plan.task]["overrides"] = plan.overrides
    return header + yaml.safe_dump(entries, sort_keys=False)


def read_manifest(out: Path) -> dict | None:
    try:
        return json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def make_corpus(out: Path, size: str = "small", seed: int = 0, jobs: int | None = None) -> Path:
    """Build the `size` corpus of `seed` at `out` (see the module doc) and return `out/data.yaml`.

    Nothing is done when `out` already holds that corpus; an `out` holding anything else is refused.
    The corpus is built in `.<name>.building-<size>-seed<seed>` beside `out` (kept, and resumed, when
    interrupted), the manifest written last, then renamed to `out`."""
    if size not in SIZES:
        raise CorpusError(f"unknown size {size!r}; expected one of {', '.join(SIZES)}")
    out = Path(out).absolute()
    wanted = {"format": FORMAT_VERSION, "size": size, "seed": seed}
    if out.exists() and not out.is_dir():
        raise CorpusError(f"{out} is a file, not a corpus folder; choose another OUT")
    if out.is_dir():
        manifest = read_manifest(out)
        if manifest is not None and {key: manifest.get(key) for key in wanted} == wanted:
            print(f"{out} already holds the complete {size} corpus of seed {seed}; nothing to do")
            return out / DATA_FILE
        if any(out.iterdir()):
            found = (f"the {manifest.get('size')} corpus of seed {manifest.get('seed')}" if manifest
                     else "files that are not a complete corpus")
            raise CorpusError(f"{out} holds {found}, not the {size} corpus of seed {seed}; "
                              "remove it or choose another OUT")
    work = out.parent / f".{out.name}.building-{size}-seed{seed}"
    try:
        _build_in(work, out, size, seed, jobs, wanted)
    except OSError as error:
        where = error.filename or work
        raise CorpusWriteError(f"cannot write {where}: {error.strerror or error}; {work} keeps the files written "
                               "so far: free space (or make it writable) and run the same command again to resume"
                               ) from None
    return out / DATA_FILE


def _build_in(work: Path, out: Path, size: str, seed: int, jobs: int | None, wanted: dict) -> None:
    """`make_corpus`'s build in `work`, renamed to `out` when complete."""
    work.mkdir(parents=True, exist_ok=True)
    plans = plan_corpus(work, SIZES[size], seed)
    build(plans, jobs)
    header = (f"# DATA.yaml of the espeak-ng mini-SUPERB corpus (s3prl-star corpus --size {size} --seed {seed}).\n"
              f"# Paths are relative to this folder; PR's vocabulary override is absolute ({out}).\n")
    for plan in plans:  # the driver does not resolve -o values (PR's vocabulary): their final, absolute paths
        plan.overrides = plan.overrides.replace(str(work), str(out))
    write_text(work / DATA_FILE, data_yaml(plans, work, header))
    counts = {plan.task: plan.counts for plan in plans if plan.speech}
    write_text(work / MANIFEST, json.dumps({**wanted, "utterances": counts}, indent=2) + "\n")
    if out.is_dir():
        out.rmdir()  # empty (checked above)
    os.replace(work, out)
    print(f"wrote {out}: " + ", ".join(f"{task} {sum(c.values())}" for task, c in counts.items())
          + f" utterances; DATA.yaml: {out / DATA_FILE}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="s3prl-star corpus",
        description="Write an espeak-ng mini-SUPERB corpus (LibriSpeech, Speech Commands, VoxCeleb1, Fluent "
                    "Speech Commands, IEMOCAP layouts) and OUT/data.yaml for `s3prl-star superb --data`.")
    parser.add_argument("out", type=Path, metavar="OUT", help="the corpus folder to create")
    parser.add_argument("--size", default="small", help=f"{' or '.join(SIZES)} (default small)")
    parser.add_argument("--seed", type=int, default=0, help="sentences, speakers' ids and jitter (default 0)")
    parser.add_argument("--jobs", type=int, default=None,
                        help=f"synthesis threads (default {synthetic.default_jobs()}: twice the cores)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.jobs is not None and args.jobs < 1:
        parser.error(f"--jobs {args.jobs}: expected at least 1")
    try:
        make_corpus(args.out, args.size, args.seed, args.jobs)
    except CorpusError as error:
        print(f"s3prl-star corpus: {error}", file=sys.stderr)
        return 2
    except (synthetic.MissingToolError, CorpusWriteError) as error:
        print(f"s3prl-star corpus: {error}", file=sys.stderr)
        return 1
    return 0

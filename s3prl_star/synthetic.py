"""A small speech corpus in LibriSpeech's layout, spoken by espeak-ng (nothing is downloaded).

`make_librispeech(root, {"train-clean-100": 24, "dev-clean": 8})` writes

    <root>/<split>/<speaker>/<chapter>/<speaker>-<chapter>-<idx:04d>.flac   16 kHz mono 16-bit FLAC
    <root>/<split>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt        "<utt-id> UPPER CASE TEXT"

so every LibriSpeech reader (s3prl's length CSVs, ASR transcripts, this project's data
pipeline) runs on it unchanged. Each speaker is one espeak-ng voice reading one chapter;
speakers are disjoint across splits, as in LibriSpeech. Sentences (about 1-4 s) come from a
built-in grammar driven by `random.Random(seed)`, and the audio is byte-identical for a seed:
espeak-ng is deterministic and sox resamples its 22.05 kHz output without dither (`-D`).
"""
from __future__ import annotations

import random
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

SAMPLE_RATE = 16000

# espeak-ng voices, one per speaker (cycled). `en-gb+VARIANT` ignores the variant, so
# British variants are written `en+VARIANT`.
VOICES = (
    "en-us", "en-us+m1", "en-us+f2", "en+m3", "en-us+f4", "en+m2",
    "en-us+f1", "en+f3", "en-us+m4", "en+m5", "en-gb-x-rp", "en-us+f5",
)

# The grammar: noun phrase + verb (+ noun phrase) + up to 2 prepositional phrases.
DETERMINERS = ("the", "a", "my", "her", "his", "our", "that")
ADJECTIVES = ("old", "small", "red", "quiet", "bright", "heavy", "green", "young", "cold", "empty")
NOUNS = ("man", "dog", "boat", "house", "letter", "garden", "river", "window", "captain",
         "horse", "village", "lamp", "teacher", "bridge", "basket")
TRANSITIVE_VERBS = ("saw", "found", "carried", "painted", "followed", "opened", "remembered",
                    "didn't find", "couldn't reach", "washed")
INTRANSITIVE_VERBS = ("slept", "waited", "laughed", "returned", "stopped", "wasn't there")
PREPOSITIONS = ("near", "behind", "across", "under", "beside", "toward", "inside")

# First speaker / chapter numbers; LibriSpeech uses small integers for both.
FIRST_SPEAKER_ID = 101
FIRST_CHAPTER_ID = 1001


class MissingToolError(RuntimeError):
    """espeak-ng or sox is not on PATH."""


@dataclass(frozen=True)
class PlannedUtterance:
    path: Path  # the .flac to write
    utterance_id: str  # "<speaker>-<chapter>-<idx:04d>"
    voice: str
    text: str  # lower case, what espeak-ng reads; the transcript is its upper case


def _noun_phrase(rng: random.Random) -> list[str]:
    words = [rng.choice(DETERMINERS)]
    if rng.random() < 0.5:
        words.append(rng.choice(ADJECTIVES))
    return words + [rng.choice(NOUNS)]


def make_sentence(rng: random.Random) -> str:
    """One lower-case sentence of 3 to 13 words (about 1-4 s of espeak-ng speech)."""
    words = _noun_phrase(rng)
    if rng.random() < 0.3:
        words.append(rng.choice(INTRANSITIVE_VERBS))
        prepositional_phrases = rng.choice((0, 1, 2))
    else:
        words += [rng.choice(TRANSITIVE_VERBS)] + _noun_phrase(rng)
        prepositional_phrases = rng.choice((0, 1, 1))
    for _ in range(prepositional_phrases):
        words += [rng.choice(PREPOSITIONS)] + _noun_phrase(rng)
    return " ".join(words)


def plan_corpus(root: Path, split_sizes: dict[str, int], seed: int,
                speakers_per_split: int) -> list[PlannedUtterance]:
    """Every utterance to synthesise, in a fixed order; utterances go round-robin to speakers."""
    rng = random.Random(seed)
    plan = []
    speaker_index = 0
    for split, size in split_sizes.items():
        if size < 1:
            raise ValueError(f"split_sizes[{split!r}] = {size}; expected at least 1 utterance")
        chapters = []
        for _ in range(min(speakers_per_split, size)):
            speaker = FIRST_SPEAKER_ID + speaker_index
            chapter = FIRST_CHAPTER_ID + speaker_index
            chapters.append((speaker, chapter, VOICES[speaker_index % len(VOICES)]))
            speaker_index += 1
        for utt in range(size):
            speaker, chapter, voice = chapters[utt % len(chapters)]
            utterance_id = f"{speaker}-{chapter}-{utt // len(chapters):04d}"
            path = root / split / str(speaker) / str(chapter) / f"{utterance_id}.flac"
            plan.append(PlannedUtterance(path, utterance_id, voice, make_sentence(rng)))
    return plan


def require_tools() -> dict[str, str]:
    tools = {}
    for tool, package in (("espeak-ng", "espeak-ng"), ("sox", "sox")):
        found = shutil.which(tool)
        if found is None:
            raise MissingToolError(
                f"{tool} is not on PATH; the synthetic corpus needs it "
                f"(install it with `apt-get install {package}`)")
        tools[tool] = found
    return tools


def synthesise(text: str, voice: str, tools: dict[str, str]) -> np.ndarray:
    """espeak-ng speech for `text` as 16 kHz mono int16 samples (1-D)."""
    espeak = subprocess.Popen([tools["espeak-ng"], "-v", voice, "--stdout", text],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # Raw little-endian int16 out: a wav header written to a pipe would carry a wrong length.
    sox = subprocess.run(
        [tools["sox"], "-q", "-D", "-t", "wav", "-", "-t", "raw", "-r", str(SAMPLE_RATE),
         "-c", "1", "-b", "16", "-e", "signed-integer", "-L", "-"],
        stdin=espeak.stdout, capture_output=True)
    espeak.stdout.close()
    espeak_error = espeak.stderr.read().decode(errors="replace")
    espeak.stderr.close()
    if espeak.wait() != 0 or sox.returncode != 0:
        raise RuntimeError(
            f"speech synthesis failed for voice {voice!r}, text {text!r}: "
            f"espeak-ng exit {espeak.returncode} {espeak_error.strip()!r}, "
            f"sox exit {sox.returncode} {sox.stderr.decode(errors='replace').strip()!r}")
    samples = np.frombuffer(sox.stdout, dtype="<i2")
    if samples.size == 0:
        raise RuntimeError(f"espeak-ng produced no audio for voice {voice!r}, text {text!r}")
    return samples


def make_librispeech(root, split_sizes: dict[str, int], seed: int = 0,
                     speakers_per_split: int = 3) -> Path:
    """Write `split_sizes[split]` espeak-ng utterances per split under `root`; return `root`.

    Refuses to write into an existing split directory, so a corpus never mixes two seeds.
    """
    root = Path(root)
    if speakers_per_split < 1:
        raise ValueError(f"speakers_per_split = {speakers_per_split}; expected at least 1")
    tools = require_tools()
    for split in split_sizes:
        if (root / split).exists():
            raise FileExistsError(f"{root / split} already exists; make_librispeech writes new splits only")
    plan = plan_corpus(root, split_sizes, seed, speakers_per_split)

    def write(utterance: PlannedUtterance) -> None:
        utterance.path.parent.mkdir(parents=True, exist_ok=True)
        samples = synthesise(utterance.text, utterance.voice, tools)
        sf.write(utterance.path, samples, SAMPLE_RATE, format="FLAC", subtype="PCM_16")

    # Each utterance is two short processes; threads keep both cores busy.
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(write, plan))

    transcripts: dict[Path, list[str]] = {}
    for utterance in plan:
        transcripts.setdefault(utterance.path.parent, []).append(
            f"{utterance.utterance_id} {utterance.text.upper()}\n")
    for chapter_dir, lines in transcripts.items():
        speaker, chapter = chapter_dir.parent.name, chapter_dir.name
        (chapter_dir / f"{speaker}-{chapter}.trans.txt").write_text("".join(sorted(lines)))
    return root

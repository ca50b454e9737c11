"""A small speech corpus in LibriSpeech's layout, spoken by espeak-ng (nothing is downloaded).

`make_librispeech(root, {"train-clean-100": 24, "dev-clean": 8})` writes

    <root>/<split>/<speaker>/<chapter>/<speaker>-<chapter>-<idx:04d>.flac   16 kHz mono 16-bit FLAC
    <root>/<split>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt        "<utt-id> UPPER CASE TEXT"

so every LibriSpeech reader (s3prl's length CSVs, ASR transcripts, this project's data
pipeline) runs on it unchanged. Each speaker is one espeak-ng voice reading one chapter;
speakers are disjoint across splits, as in LibriSpeech. Sentences (about 1-4 s) come from a
built-in grammar driven by `random.Random(seed)`, and the audio is byte-identical for a seed:
espeak-ng is deterministic and sox resamples its 22.05 kHz output without dither (`-D`).

The pieces are shared with `s3prl_star.mini_superb.corpus` (the other SUPERB tasks' layouts): `speaker_voice`
(a pool of distinct speakers: espeak-ng voice + variant, base pitch and speed), `make_sentence`,
and `speak_all`, which writes any list of `PlannedUtterance`s in parallel.
"""
from __future__ import annotations

import contextlib
import io
import os
import random
import shutil
import subprocess
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

SAMPLE_RATE = 16000

# Speakers: espeak-ng accents x voice variants, male and female variants alternating (`speaker_voice`).
# `en-gb+VARIANT` ignores the variant, so British English is written `en+VARIANT`.
ACCENTS = ("en-us", "en", "en-gb-scotland", "en-029", "en-us-nyc", "en-gb-x-rp")
MALE_VARIANTS = ("m1", "m2", "m3", "m4", "m5")
FEMALE_VARIANTS = ("f1", "f2", "f3", "f4", "f5")
VOICES = tuple(f"{accent}+{variant}" for accent in ACCENTS
               for pair in zip(MALE_VARIANTS, FEMALE_VARIANTS) for variant in pair)

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
class Voice:
    """An espeak-ng voice and its prosody: `-v name -p pitch -s speed -a amplitude` (espeak-ng's defaults)."""

    name: str
    pitch: int = 50  # 0..99
    speed: int = 175  # words per minute, 80..450
    amplitude: int = 100  # 0..200

    def styled(self, pitch: int = 0, speed: float = 1.0, amplitude: float = 1.0) -> "Voice":
        """This voice shifted by `pitch`, its speed and amplitude scaled, clamped to espeak-ng's ranges."""
        return replace(self, pitch=min(99, max(0, self.pitch + pitch)),
                       speed=min(450, max(80, round(self.speed * speed))),
                       amplitude=min(200, max(0, round(self.amplitude * amplitude))))


def speaker_voice(index: int) -> Voice:
    """Speaker `index` of the pool: a voice variant of `VOICES` (male at even, female at odd indices)
    and a base pitch and speed of its own, so that speakers stay distinct past len(VOICES)."""
    return Voice(VOICES[index % len(VOICES)], pitch=35 + (index * 13) % 31, speed=165 + (index * 7) % 21)


@dataclass(frozen=True)
class PlannedUtterance:
    path: Path  # the .flac or .wav to write (PCM 16-bit, 16 kHz mono)
    voice: Voice
    text: str  # lower case, what espeak-ng reads; a LibriSpeech transcript is its upper case
    clip: int = 0  # > 0: pad the speech with silence to this many samples, placed at `offset`
    offset: float = 0.0  # 0..1: where the speech sits in the padded clip

    @property
    def utterance_id(self) -> str:
        return self.path.stem


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
                speakers_per_split: int | Mapping[str, int]) -> list[PlannedUtterance]:
    """Every utterance to synthesise, in a fixed order; utterances go round-robin to speakers.
    `speakers_per_split`: one count for every split, or a count per split."""
    rng = random.Random(seed)
    if not isinstance(speakers_per_split, Mapping):
        speakers_per_split = dict.fromkeys(split_sizes, speakers_per_split)
    plan = []
    speaker_index = 0
    for split, size in split_sizes.items():
        if size < 1:
            raise ValueError(f"split_sizes[{split!r}] = {size}; expected at least 1 utterance")
        if speakers_per_split[split] < 1:
            raise ValueError(f"{speakers_per_split[split]} speakers for {split}; expected at least 1")
        chapters = []
        for _ in range(min(speakers_per_split[split], size)):
            speaker = FIRST_SPEAKER_ID + speaker_index
            chapter = FIRST_CHAPTER_ID + speaker_index
            chapters.append((speaker, chapter, speaker_voice(speaker_index)))
            speaker_index += 1
        for utt in range(size):
            speaker, chapter, voice = chapters[utt % len(chapters)]
            utterance_id = f"{speaker}-{chapter}-{utt // len(chapters):04d}"
            path = root / split / str(speaker) / str(chapter) / f"{utterance_id}.flac"
            plan.append(PlannedUtterance(path, voice, make_sentence(rng)))
    return plan


def write_transcripts(plan: list[PlannedUtterance]) -> None:
    """Each chapter's `<speaker>-<chapter>.trans.txt` ("<utt-id> UPPER CASE TEXT", sorted) for a LibriSpeech plan."""
    transcripts: dict[Path, list[str]] = {}
    for utterance in plan:
        transcripts.setdefault(utterance.path.parent, []).append(
            f"{utterance.utterance_id} {utterance.text.upper()}\n")
    for chapter_dir, lines in transcripts.items():
        speaker, chapter = chapter_dir.parent.name, chapter_dir.name
        (chapter_dir / f"{speaker}-{chapter}.trans.txt").write_text("".join(sorted(lines)))


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


def synthesise(text: str, voice: str, tools: dict[str, str], *, pitch: int = 50, speed: int = 175,
               amplitude: int = 100) -> np.ndarray:
    """espeak-ng speech for `text` in `voice` (`-v`) with prosody `-p pitch -s speed -a amplitude`,
    as 16 kHz mono int16 samples (1-D)."""
    espeak = subprocess.Popen([tools["espeak-ng"], "-v", voice, "-p", str(pitch), "-s", str(speed),
                               "-a", str(amplitude), "--stdout", text],
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


def write_audio(path: Path, samples: np.ndarray) -> None:
    """`samples` as PCM 16-bit 16 kHz mono at `path` (FLAC for `.flac`, else WAV), under a temporary name
    renamed into place, so a file that exists is complete. Encoded in memory and written by Python: a
    failed write raises OSError naming `path` with its cause (`No space left on device`), where
    libsndfile writing the file itself reports every failure as `LibsndfileError: System error`."""
    buffer = io.BytesIO()
    sf.write(buffer, samples, SAMPLE_RATE, format="FLAC" if path.suffix == ".flac" else "WAV", subtype="PCM_16")
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        temporary.write_bytes(buffer.getvalue())
        os.replace(temporary, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)  # leave no partial file taking the space
        raise OSError(error.errno, error.strerror, str(path)) from None


def default_jobs() -> int:
    """Threads for `speak_all`: each utterance is two short processes, so twice the cores keeps them busy."""
    return 2 * (os.cpu_count() or 1)


def speak_all(plan: list[PlannedUtterance], tools: dict[str, str], jobs: int | None = None,
              description: str = "speaking") -> None:
    """Write every planned utterance (FLAC for `.flac`, else WAV; PCM 16-bit 16 kHz) on a thread pool,
    with a progress bar. Each file is written to a temporary name and renamed, so a file that exists is
    complete: it is kept, and a build interrupted and run again resumes where it stopped. The first
    failure (e.g. OSError: a full disk) cancels the utterances not yet started and is raised."""

    def write(utterance: PlannedUtterance) -> None:
        if utterance.path.exists():
            return
        voice = utterance.voice
        samples = synthesise(utterance.text, voice.name, tools, pitch=voice.pitch, speed=voice.speed,
                             amplitude=voice.amplitude)
        if utterance.clip:
            padded = np.zeros(max(utterance.clip, len(samples)), dtype=samples.dtype)
            start = round(utterance.offset * (len(padded) - len(samples)))
            padded[start:start + len(samples)] = samples
            samples = padded
        utterance.path.parent.mkdir(parents=True, exist_ok=True)
        write_audio(utterance.path, samples)

    with ThreadPoolExecutor(max_workers=jobs or default_jobs()) as pool:
        futures = [pool.submit(write, utterance) for utterance in plan]
        try:
            for future in tqdm(as_completed(futures), total=len(futures), desc=description, unit="utt",
                               dynamic_ncols=True):
                future.result()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)  # the running ones finish (or fail) first
            raise


def make_librispeech(root, split_sizes: dict[str, int], seed: int = 0,
                     speakers_per_split: int | Mapping[str, int] = 3, jobs: int | None = None) -> Path:
    """Write `split_sizes[split]` espeak-ng utterances per split under `root`; return `root`.

    Refuses to write into an existing split directory, so a corpus never mixes two seeds.
    """
    root = Path(root)
    tools = require_tools()
    for split in split_sizes:
        if (root / split).exists():
            raise FileExistsError(f"{root / split} already exists; make_librispeech writes new splits only")
    plan = plan_corpus(root, split_sizes, seed, speakers_per_split)
    speak_all(plan, tools, jobs)
    write_transcripts(plan)
    return root

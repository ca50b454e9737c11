"""SUPERB PR's corpus reader: LibriSpeech utterances labelled with phonemes through a lexicon.

Stands in for `s3prl/downstream/ctc/corpus/libriphone.py` (s3prl's git sources; the PyPI s3prl lacks
it), with its constructor and behaviour (`s3prl_star.integration.patches` makes it importable under that name):
every `*.flac` under `corpus.path/FOLDER` of the split's folders, its transcript from the chapter's
`<speaker>-<chapter>.trans.txt`, each word replaced by its phonemes from the `corpus.lexicon` files
(lines `WORD<TAB>PHONEME PHONEME ...`; a word's first pronunciation wins, across the files in
order) and encoded by the `text.vocab_file` vocabulary (one phoneme per line, `text.mode: word`).
"""
from __future__ import annotations

from pathlib import Path

from s3prl_star.integration.ctc_corpus.common import BucketedCtcDataset, reject_unknown_keys, split_files


def read_lexicon(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line number, WORD, phonemes) of each non-blank line of a `WORD<whitespace>PHONEMES` lexicon."""
    if not path.is_file():
        raise FileNotFoundError(
            f"downstream_expert.corpus.lexicon: {path} does not exist (PR needs the LibriSpeech lexicon files, "
            "see downstream_recipes/README.md)"
        )
    entries = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        word, *phonemes = line.split()
        if not phonemes:
            raise ValueError(f"{path}:{number}: {line!r} has no phonemes; expected WORD<TAB>PHONEME PHONEME ...")
        entries.append((number, word, phonemes))
    return entries


def read_pronunciations(lexicon, tokenizer) -> dict[str, list[str]]:
    """{WORD: phonemes} from the `lexicon` files; every phoneme must be in the tokenizer's vocabulary."""
    if isinstance(lexicon, str) or not isinstance(lexicon, (list, tuple)):
        raise ValueError(f"downstream_expert.corpus.lexicon must be a list of lexicon files, got {lexicon!r}")
    pronunciations: dict[str, list[str]] = {}
    for file in lexicon:
        path = Path(file)
        for number, word, phonemes in read_lexicon(path):
            unknown = [phoneme for phoneme in phonemes if tokenizer.vocab_to_idx(phoneme) == tokenizer.unk_idx]
            if unknown:
                raise ValueError(
                    f"{path}:{number}: phoneme(s) {unknown} of {word} are not in the vocabulary of "
                    "downstream_expert.text.vocab_file (one phoneme per line)"
                )
            pronunciations.setdefault(word, phonemes)
    return pronunciations


def read_transcripts(files: list[Path]) -> dict[str, tuple[str, Path]]:
    """{utterance id: (TEXT, transcript file)} from the chapters' `.trans.txt` files of these flacs; an
    utterance id on two lines is a ValueError naming both (which transcript is right cannot be told)."""
    transcripts = {}
    first_lines: dict[str, tuple[Path, int]] = {}
    for chapter in sorted({file.parent for file in files}):
        for transcript_file in sorted(chapter.glob("*.trans.txt")):
            for number, line in enumerate(transcript_file.read_text(encoding="utf-8").splitlines(), 1):
                if line.strip():
                    utterance, _, text = line.partition(" ")
                    if utterance in first_lines:
                        first_file, first_number = first_lines[utterance]
                        raise ValueError(f"{transcript_file}:{number}: {utterance} again (first at {first_file}:"
                                         f"{first_number}); expected one transcript line per utterance")
                    first_lines[utterance] = (transcript_file, number)
                    transcripts[utterance] = (text, transcript_file)
    return transcripts


def phonemes_of(text: str, pronunciations: dict[str, list[str]], where: str) -> list[str]:
    """The phonemes of `text`'s words in order; `where` (the transcript line) names a missing word."""
    phonemes = []
    for word in text.split():
        if word not in pronunciations:
            raise ValueError(f"{where}: the word {word!r} is in none of the downstream_expert.corpus.lexicon files")
        phonemes += pronunciations[word]
    return phonemes


class LibriPhoneDataset(BucketedCtcDataset):
    """`-d ctc` corpus `libriphone`: (flac path, phoneme ids + <eos>) for every utterance of `split`."""

    def __init__(self, split, tokenizer, bucket_size, path, lexicon, **loader_keys):
        reject_unknown_keys("libriphone", loader_keys)
        pronunciations = read_pronunciations(lexicon, tokenizer)
        files = split_files(path, split, "*.flac")
        transcripts = read_transcripts(files)
        items = []
        for file in files:
            if file.stem not in transcripts:
                raise ValueError(f"{file}: no line for {file.stem} in a .trans.txt file of its folder")
            text, transcript_file = transcripts[file.stem]
            phonemes = phonemes_of(text, pronunciations, f"{transcript_file} ({file.stem})")
            items.append((str(file), tokenizer.encode(" ".join(phonemes))))
        super().__init__(items, bucket_size)

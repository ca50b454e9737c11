"""SUPERB SF's corpus reader: Audio SNIPS utterances labelled with characters and slot tags.

Stands in for `s3prl/downstream/ctc/corpus/snips.py` (s3prl's git sources; the PyPI s3prl lacks it),
with its constructor and behaviour (`s3prl_star.integration.patches` makes it importable under that name), on
Audio SNIPS as s3prl's `preprocess/snips_prepare_data.sh` writes it under `corpus.path`:

    all.iob.snips.txt   <uid> BOS WORD ... WORD EOS<TAB>O TAG ... TAG INTENT
                        (TAG: O or a slot name; <uid> = <Speaker>-snips-<split>-<n>)
    slots.txt           O, then one slot name per line (s3prl's encoder skips the first line)
    <split>/<uid>.wav   16 kHz mono

A split (`corpus.train`, `.dev`, `.test`: folder lists) takes the wavs of the speakers listed under
`corpus.<first folder>_speakers` (`train_speakers`, `valid_speakers`, `test_speakers`), each encoded
by s3prl's `character-slot` text encoder (`text.vocab_file` characters, `text.slots_file` slots).
"""
from __future__ import annotations

import sys
from pathlib import Path

from s3prl_star.integration.ctc_corpus.common import BucketedCtcDataset, reject_unknown_keys, split_files

TRANSCRIPTS = "all.iob.snips.txt"


def check_tokenizer(tokenizer) -> None:
    """SF's labels need s3prl's character-slot encoder with a space character in its vocabulary."""
    if tokenizer.token_type != "character-slot":
        raise ValueError(
            f"snips: downstream_expert.text.mode must be character-slot (SUPERB SF), got {tokenizer.token_type}"
        )
    if tokenizer.vocab_to_idx(" ") == tokenizer.unk_idx:
        raise ValueError(
            "snips: downstream_expert.text.vocab_file has no space character (a line holding one space), "
            "which separates the words of every label"
        )


def check_annotation(annotation: str, tokenizer, where: str) -> None:
    """`BOS WORD ... EOS<TAB>O TAG ... INTENT`, one tag per word, every slot tag among the encoder's slots."""
    sentence, tab, tags = annotation.partition("\t")
    words, tags = sentence.split(" "), tags.split(" ")
    if not tab or words[0] != "BOS" or words[-1] != "EOS" or len(tags) != len(words):
        raise ValueError(
            f"{where}: expected <uid> BOS WORD ... EOS<TAB>O TAG ... INTENT (one tag per word), got {annotation!r}"
        )
    unknown = sorted({tag for tag in tags[1:-1] if tag != "O" and f"B-{tag}" not in tokenizer.slot2id})
    if unknown:
        raise ValueError(
            f"{where}: slot(s) {unknown} are not in downstream_expert.text.slots_file (whose first line, "
            "O, is skipped by s3prl's encoder)"
        )


def read_annotations(path: Path, tokenizer) -> dict[str, str]:
    """{uid: annotation} of `all.iob.snips.txt`, each line checked by `check_annotation`."""
    if not path.is_file():
        raise FileNotFoundError(
            f"snips: {path} does not exist (downstream_expert.corpus.path must hold Audio SNIPS' {TRANSCRIPTS})"
        )
    annotations = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            uid, _, annotation = line.strip().partition(" ")
            check_annotation(annotation, tokenizer, f"{path}:{number}")
            annotations[uid] = annotation
    return annotations


class SnipsDataset(BucketedCtcDataset):
    """`-d ctc` corpus `snips`: (wav path, character and slot ids + <eos>) for the split's speakers."""

    def __init__(self, split, tokenizer, bucket_size, path, train_speakers, valid_speakers, test_speakers,
                 **loader_keys):
        reject_unknown_keys("snips", loader_keys)
        check_tokenizer(tokenizer)
        files = split_files(path, split, "*.wav")
        speakers_by_folder = {"train": train_speakers, "valid": valid_speakers, "test": test_speakers}
        if split[0] not in speakers_by_folder:
            raise ValueError(
                f"snips: no corpus.{split[0]}_speakers for the split {split}; expected train, valid or test folders"
            )
        speakers = set(speakers_by_folder[split[0]])
        annotations = read_annotations(Path(path) / TRANSCRIPTS, tokenizer)
        items, unlabelled = [], []
        for file in files:
            if file.stem.split("-")[0] not in speakers:
                continue
            if file.stem not in annotations:
                unlabelled.append(file)
                continue
            items.append((str(file), tokenizer.encode(annotations[file.stem])))
        if unlabelled:
            print(f"snips: {len(unlabelled)} wavs of {split} have no line in {TRANSCRIPTS} and are left out, "
                  f"e.g. {unlabelled[0]}", file=sys.stderr)
        if not items:
            raise FileNotFoundError(f"snips: no labelled wav of the speakers {sorted(speakers)} under {path} {split}")
        super().__init__(items, bucket_size)

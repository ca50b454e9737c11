"""What s3prl 0.4.18's `-d ctc` loader expects of a corpus reader; shared by the PR and SF readers.

s3prl's `downstream/ctc/data.py` builds a reader as `Dataset(split, tokenizer, bucket_size, **corpus)`:
`split` is the recipe's folder list for that split (`corpus.train`, `corpus.dev` or `corpus.test`) and
`corpus` is the rest of the recipe's `downstream_expert.corpus` block (less `name`, `bucketing`,
`batch_size`), with `num_workers`, and `ratio`/`offset` for train. Items are plain `(audio_path,
token_ids)` tuples (its collate function tests `type(item) is tuple`); with bucketing (`bucket_size`
> 1) an item is a whole training batch: `bucket_size` neighbours in the reader's order, longest label
first, so each batch holds utterances of similar length.
"""
from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

# Corpus keys that data.py hands to every reader and that no reader here reads: the split folder
# lists (a reader gets its own as `split`), the loader's worker count, and train's ratio/offset
# (which only s3prl's LibriSpeech ASR reader uses).
LOADER_KEYS = frozenset({"train", "dev", "test", "num_workers", "ratio", "offset"})


def reject_unknown_keys(reader: str, keys) -> None:
    """Raise on corpus keys `reader` does not know (a misspelt key would otherwise be ignored)."""
    unknown = sorted(set(keys) - LOADER_KEYS)
    if unknown:
        raise ValueError(f"{reader}: unknown key(s) {unknown} in downstream_expert.corpus of the config")


def split_files(root, split, pattern: str) -> list[Path]:
    """The files matching `pattern` under `root/FOLDER` for each FOLDER of the `split` list, sorted.

    Raises when `root` or a folder is missing, holds no such file, or `split` is not a list.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"downstream_expert.corpus.path: {root} is not a folder")
    if isinstance(split, str) or not isinstance(split, (list, tuple)):
        raise ValueError(
            f"a split of downstream_expert.corpus must be a list of folder names under {root}, got {split!r}"
        )
    files = []
    for folder in split:
        found = sorted((root / folder).rglob(pattern))
        if not found:
            raise FileNotFoundError(f"no {pattern} files under {root / folder} (a folder of downstream_expert.corpus)")
        files += found
    return files


class BucketedCtcDataset(Dataset):
    """`(audio_path, token_ids)` items, longest label first (ties in path order), served one by one
    (`bucket_size` 1) or as buckets of `bucket_size` neighbours (the last full bucket past the end)."""

    def __init__(self, items: list[tuple[str, list[int]]], bucket_size: int):
        self.items = sorted(items, key=lambda item: len(item[1]), reverse=True)
        self.bucket_size = bucket_size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        if self.bucket_size == 1:
            return self.items[index]
        start = max(0, min(index, len(self.items) - self.bucket_size))
        return self.items[start:start + self.bucket_size]

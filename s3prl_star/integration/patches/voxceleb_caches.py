"""s3prl's VoxCeleb1 datasets cache what they read inside site-packages and reload it in every later
run whatever the data paths say: SID's file lists and ASV's utterance lengths. These move the caches
to where they cannot go stale. Applied by `s3prl-star downstream -d voxceleb1 / sv_voxceleb1`.
"""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile


def isolate_sid_file_list_cache(expdir: str) -> str:
    """Point s3prl's SID file-list cache at a new temporary folder for this run (removed at exit).

    s3prl's voxceleb1 dataset pickles its train/dev/test file lists to `CACHE_PATH` (inside
    site-packages) and reloads them in every later run whatever `file_path` and `meta_data` say, so a
    second experiment silently uses the first one's files. A per-run folder cannot go stale (a folder
    keyed by the data paths still would when the data under a path changes), and rebuilding the lists
    costs one glob per split-list line, small next to training. Returns what it did.
    """
    from s3prl.downstream.voxceleb1 import dataset

    folder = tempfile.mkdtemp(prefix="s3prl-star-sid-lists-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    dataset.CACHE_PATH = folder  # read at dataset construction: os.path.join(CACHE_PATH, f"{mode}.pkl")
    return f"voxceleb1 file lists are cached in {folder} for this run only"


def keep_asv_length_cache_in(expdir: str) -> str:
    """Point s3prl's ASV utterance-length cache at `expdir/.wav_lengths` instead of site-packages.

    s3prl's sv_voxceleb1 dataset stores the silence-trimmed length of every training wav in
    `.wav_lengths/Voxceleb1_length.pt` beside its own `__file__` and reloads it in every later run
    whatever `file_path` says. Computing it runs sox over every VoxCeleb1 dev wav, too slow to redo
    per run (each checkpoint's `-m evaluate` rebuilds the training set), so it is kept per experiment:
    training and the evaluations of its checkpoints share it, a new experiment computes its own.
    The module's `__file__` is the only hook s3prl leaves (the folder is derived from it at dataset
    construction). Returns what it did.
    """
    from s3prl.downstream.sv_voxceleb1 import dataset

    dataset.__file__ = os.path.join(os.path.abspath(expdir), os.path.basename(dataset.__file__))
    folder = os.path.join(os.path.dirname(dataset.__file__), ".wav_lengths")
    return f"sv_voxceleb1 utterance lengths are cached in {folder} for this experiment"

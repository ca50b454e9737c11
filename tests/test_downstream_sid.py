"""SID (`-d voxceleb1`) through `s3prl-star downstream`, and the file-list cache it must not reuse.

s3prl's voxceleb1 dataset caches its file lists in site-packages and reloads them in every later
run; `s3prl_star.integration.downstream` gives each run its own cache folder. Two experiments on two different
espeak-ng corpora in VoxCeleb1 layout (`<root>/dev/wav/id1000N/<video>/<utt>.wav` + `iden_split.txt`)
train in turn, then the first one's checkpoint is evaluated in a fresh process (`-m evaluate -e`):
each run must list its own corpus' files, and nothing may appear under site-packages.
Only step counts, batch sizes and workers are overridden (-o), to fit CI.
"""
import re
from pathlib import Path

import pytest

from helpers import (STEPS, SidCorpus, assert_dev_and_test_logged, make_voxceleb1, printed_accuracy, run_downstream,
                     train_args)

SPLIT_IDS = {"train": 1, "dev": 2, "test": 3}


def site_packages_cache_state():
    """(name, mtime) of every file in s3prl's own SID cache folder, or None when it does not exist."""
    import s3prl

    cache = Path(s3prl.__file__).parent / "downstream" / "voxceleb1" / ".cache"
    if not cache.exists():
        return None
    return sorted((path.name, path.stat().st_mtime_ns) for path in cache.iterdir())


def listed_counts(output: str) -> list[int]:
    """The file counts s3prl's SpeakerClassifiDataset reports, in construction order (train, dev, test)."""
    return [int(count) for count in re.findall(r"\[SpeakerClassifiDataset\] - there are (\d+) files found", output)]


def train(corpus: SidCorpus, expdir: Path, student_checkpoint: Path) -> str:
    overrides = (
        "config.downstream_expert.datarc.num_workers=0,,config.downstream_expert.datarc.train_batch_size=4,,"
        f"config.downstream_expert.datarc.file_path={corpus.root},,"
        f"config.downstream_expert.datarc.meta_data={corpus.split_list}"
    )
    return run_downstream(train_args("voxceleb1", student_checkpoint, expdir, overrides), r"Take a list of 12 features")


def predicted_names(expdir: Path, split: str) -> list[str]:
    return list(speakers(expdir / f"{split}_truth.txt"))


def video_of(name: str) -> str:
    """The video of an s3prl SID utterance name `<speaker>-<video>-<utt>` (a video id may hold '-')."""
    return name.split("-", 1)[1].rsplit("-", 1)[0]


def speakers(path: Path) -> dict[str, str]:
    """{utterance: speaker id} of s3prl's `<split>_predict.txt` / `<split>_truth.txt` (`utterance speaker` lines)."""
    return dict(line.split(" ") for line in path.read_text().splitlines())


@pytest.mark.slow
def test_sid_trains_and_evaluates_with_each_runs_own_file_lists(tmp_path, tiny_student_checkpoint, superb_metric):
    cache_before = site_packages_cache_state()
    first = make_voxceleb1(tmp_path / "vox_a", 3, {"train": 2, "dev": 1, "test": 1}, seed=1)
    second = make_voxceleb1(tmp_path / "vox_b", 4, {"train": 3, "dev": 2, "test": 1}, seed=2)
    assert [first.counts[s] for s in SPLIT_IDS] != [second.counts[s] for s in SPLIT_IDS]
    assert not first.videos & second.videos

    for corpus, name in ((first, "sid_a"), (second, "sid_b")):
        output = train(corpus, tmp_path / name, tiny_student_checkpoint)
        assert "Loading file paths from" not in output, output[-4000:]
        assert listed_counts(output) == [corpus.counts[s] for s in SPLIT_IDS], output[-4000:]
        assert_dev_and_test_logged(tmp_path / name)
        # The test predictions cover exactly this corpus' test files.
        names = predicted_names(tmp_path / name, "test")
        assert len(names) == corpus.counts["test"] and all(video_of(n) in corpus.videos for n in names), names

    # A fresh process rebuilds the first experiment from its checkpoint: its lists, not the second's.
    checkpoint = tmp_path / "sid_a" / f"states-{STEPS}.ckpt"
    output = run_downstream(["-m", "evaluate", "-e", str(checkpoint)], r"^test acc: [0-9.]+$")
    assert listed_counts(output) == [first.counts[s] for s in SPLIT_IDS], output[-4000:]
    accuracy = printed_accuracy(output)
    superb_metric("SID_acc", 100 * accuracy)
    # The same evaluation's per-utterance outputs (`<speaker>-<video>-<utt>` names): the truth is each
    # name's speaker, and the printed accuracy is the rate at which the predicted speaker equals it.
    predicted, truth = (speakers(tmp_path / "sid_a" / f"test_{kind}.txt") for kind in ("predict", "truth"))
    assert set(predicted) == set(truth) and all(name.split("-")[0] == speaker for name, speaker in truth.items())
    assert accuracy == pytest.approx(sum(predicted[name] == truth[name] for name in truth) / len(truth), abs=1e-6)
    assert all(video_of(n) in first.videos for n in predicted_names(tmp_path / "sid_a", "test"))

    assert site_packages_cache_state() == cache_before


def test_the_task_is_read_from_the_checkpoint_a_run_resumes(tmp_path):
    """`-e FILE`, `-e DIR` (its latest states-*.ckpt) and `-a -p DIR` take the task and expdir stored in
    the checkpoint, as s3prl's runner does; a new experiment takes `-d` and `-p` / `-n`."""
    import argparse

    import torch

    from s3prl_star.integration import patches
    from s3prl_star.integration.downstream import _flags, _task_and_expdir

    patches.apply()
    expdir = tmp_path / "exp"
    expdir.mkdir()
    for step, task in ((20, "fluent_commands"), (100, "voxceleb1")):
        args = argparse.Namespace(downstream=task, expdir=str(expdir))
        torch.save({"Args": args}, expdir / f"states-{step}.ckpt")

    assert _task_and_expdir(_flags(["-m", "evaluate", "-e", str(expdir / "states-20.ckpt")])) == ("fluent_commands", str(expdir))
    assert _task_and_expdir(_flags(["-m", "evaluate", "-e", str(expdir)])) == ("voxceleb1", str(expdir))
    assert _task_and_expdir(_flags(["-m", "train", "-a", "-p", str(expdir), "-d", "asr"])) == ("voxceleb1", str(expdir))
    assert _task_and_expdir(_flags(["-m", "train", "-a", "-p", str(tmp_path / "new"), "-d", "asr"])) == ("asr", str(tmp_path / "new"))
    assert _task_and_expdir(_flags(["-m", "train", "-d", "voxceleb1", "-n", "sid"])) == ("voxceleb1", "result/downstream/sid")

"""The ten SUPERB tasks as this project runs them: one row each, holding everything task-specific.

The driver runs a task from its row and `results` reads its metric back from what s3prl wrote
(docs/superb.md): the recipe and s3prl `-d`, the DATA.yaml keys, the metric keys, how the reported
metric is chosen (`selection`), the lines s3prl prints, the files a run needs beyond its data keys, the
folds, and the prediction files of a leaderboard submission. No other module tests a task's name.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Callable

from s3prl_star import resources


class Selection(Enum):
    """How a task's reported test metric is chosen."""

    EVALUATE_DEV_BEST = "the test evaluation (-m evaluate) of the checkpoint the expert saved as best on dev"
    LOGGED_AT_DEV_BEST = "the test score log.log holds at the step of the last 'New best on dev' line"
    FOLDS = "the mean over the folds of the logged test score at each fold's dev-best step"
    LOWEST_OVER_CHECKPOINTS = "the lowest test score over every saved states-*.ckpt (no dev set)"
    LAYER_ON_DEV = "the test score of the hidden-state layer with the best dev score (no training)"


@dataclass(frozen=True)
class PrintedMetric:
    """A metric s3prl's expert prints as `SPLIT NAME: v` after an evaluation, in the metric keys' units
    after `scale` (100 for a fraction)."""

    key: str
    split: str
    name: str
    scale: float


@dataclass(frozen=True)
class DevLine:
    """The dev score a training prints to its stdout at every evaluation (one regex group), what
    `--lr-search` compares for tasks scored by a test evaluation."""

    pattern: str
    higher_is_better: bool

    def values(self, text: str) -> list[float]:
        return [float(value) for value in re.findall(self.pattern, text, re.MULTILINE)]


@dataclass(frozen=True)
class Prediction:
    """A test prediction file (or folder) of the chosen run, copied to `predict/<folder>/<target>` for the
    leaderboard, as s3prl's `submit/submit.py` lays it out; `optional` ones are copied when present."""

    source: str
    folder: str
    target: str
    optional: bool = False


def _diarization_error_rate(expdir: Path, paths: dict) -> dict[str, float]:
    from s3prl_star.superb.scorers.diarization import der_of_run

    return {"SD_der": der_of_run(expdir, paths["loaderrc.test_dir"])}


@dataclass(frozen=True)
class Task:
    name: str  # SUPERB name, as in the metric keys
    downstream: str  # s3prl's `-d`
    recipe: str  # folder under downstream_recipes/
    data_keys: tuple[str, ...]  # keys under config.downstream_expert that hold the user's data paths
    metric_keys: tuple[str, ...]  # percent except QbE_mtwv (0..1)
    selection: Selection
    dev_best_checkpoint: str | None = None  # the file the expert saves when dev improves
    test_split: str = "test"  # `-t` of the test evaluation
    printed: tuple[PrintedMetric, ...] = ()  # read from the test evaluation's stdout
    # scores the test evaluation's output against the corpus, for metrics s3prl does not print: (expdir, data
    # paths) -> metrics, kept in the run's metric.json
    scorer: Callable[[Path, dict], dict[str, float]] | None = None
    dev_line: DevLine | None = None
    required_files: tuple[str, ...] = ()  # beyond the data keys: templates with {data key} placeholders
    folds: tuple[str, ...] = ()  # Selection.FOLDS: values of `fold_key`, one training each
    fold_key: str | None = None  # the config.downstream_expert key a fold sets
    predictions: tuple[Prediction, ...] = ()

    @property
    def key(self) -> str:
        """The lower-case name used by `--tasks`, DATA.yaml and the output folders."""
        return self.name.lower()

    @property
    def config(self) -> Path:
        return resources.recipes() / self.recipe / "config.yaml"

    def files_needed(self, paths: dict) -> list[str]:
        """`required_files` with this task's data paths filled in."""
        return [re.sub(r"\{([\w.]+)\}", lambda match: str(paths[match[1]]), template) for template in self.required_files]


ER_FOLDS = tuple(f"fold{index}" for index in range(1, 6))  # IEMOCAP leave-one-session-out: fold N tests SessionN

TASKS: dict[str, Task] = {
    task.key: task
    for task in (
        Task("PR", "ctc", "pr", ("corpus.path", "corpus.lexicon"), ("PR_per",), Selection.EVALUATE_DEV_BEST,
             "dev-best.ckpt", printed=(PrintedMetric("PR_per", "test", "per", 100.0),),
             dev_line=DevLine(r"^dev per: (\S+)$", higher_is_better=False),
             predictions=(Prediction("test-hyp.ark", "pr_public", "predict.ark"),)),
        Task("ASR", "asr", "asr", ("datarc.libri_root", "datarc.bucket_file"), ("ASR_wer",),
             Selection.EVALUATE_DEV_BEST, "dev-clean-best.ckpt", test_split="test-clean",
             printed=(PrintedMetric("ASR_wer", "test-clean", "wer", 1.0),),
             dev_line=DevLine(r"^dev-clean wer: (\S+)$", higher_is_better=False),
             predictions=(Prediction("test-clean-noLM-hyp.ark", "asr_public", "predict.ark"),
                          Prediction("test-clean-LM-hyp.ark", "asr_lm_public", "predict.ark", optional=True))),
        Task("KS", "speech_commands", "speech_commands",
             ("datarc.speech_commands_root", "datarc.speech_commands_test_root"), ("KS_acc",),
             Selection.LOGGED_AT_DEV_BEST, "dev-best.ckpt",
             predictions=(Prediction("test_predict.txt", "ks_public", "predict.txt"),)),
        Task("QbE", "quesst14_dtw", "quesst14_dtw", ("datarc.dataset_root",), ("QbE_mtwv",), Selection.LAYER_ON_DEV,
             required_files=("{datarc.dataset_root}/scoring/groundtruth_quesst14_dev",
                             "{datarc.dataset_root}/scoring/groundtruth_quesst14_eval"),
             predictions=(Prediction("benchmark.stdlist.xml", "qbe_public", "benchmark.stdlist.xml"),)),
        Task("SID", "voxceleb1", "voxceleb1", ("datarc.file_path", "datarc.meta_data"), ("SID_acc",),
             Selection.LOGGED_AT_DEV_BEST, "dev-best.ckpt",
             predictions=(Prediction("test_predict.txt", "sid_public", "predict.txt"),)),
        Task("ASV", "sv_voxceleb1", "sv_voxceleb1",
             ("datarc.file_path", "datarc.train_meta_data", "datarc.dev_meta_data", "datarc.test_meta_data"),
             ("ASV_eer",), Selection.LOWEST_OVER_CHECKPOINTS,
             predictions=(Prediction("test_predict.txt", "sv_public", "predict.txt"),)),
        Task("SD", "diarization", "diarization", ("loaderrc.train_dir", "loaderrc.dev_dir", "loaderrc.test_dir"),
             ("SD_der",), Selection.EVALUATE_DEV_BEST, "best-states-dev.ckpt", scorer=_diarization_error_rate,
             dev_line=DevLine(r"^mode dev acc (\S+) der \S+$", higher_is_better=True),
             required_files=("{loaderrc.test_dir}/rttm",),
             predictions=(Prediction("scoring/predictions", "sd_public", "scoring/predictions"),
                          Prediction("frame_shift", "sd_public", "frame_shift", optional=True))),
        Task("IC", "fluent_commands", "fluent_commands", ("datarc.file_path",), ("IC_acc",),
             Selection.LOGGED_AT_DEV_BEST, "dev-best.ckpt",
             predictions=(Prediction("test_predict.csv", "ic_public", "predict.csv"),)),
        Task("SF", "ctc", "sf", ("corpus.path", "text.slots_file"), ("SF_f1", "SF_cer"),
             Selection.EVALUATE_DEV_BEST, "dev-best.ckpt",
             printed=(PrintedMetric("SF_f1", "test", "slot_type_f1", 100.0),
                      PrintedMetric("SF_cer", "test", "slot_value_cer", 100.0)),
             dev_line=DevLine(r"^dev slot_type_f1: (\S+)$", higher_is_better=True),
             predictions=(Prediction("test-hyp.ark", "sf_public", "predict.ark"),)),
        Task("ER", "emotion", "emotion", ("datarc.root", "datarc.meta_data"), ("ER_acc",), Selection.FOLDS,
             "dev-best.ckpt",
             required_files=tuple(f"{{datarc.meta_data}}/Session{fold[-1]}/{split}_meta_data.json"
                                  for fold in ER_FOLDS for split in ("train", "test")),
             folds=ER_FOLDS, fold_key="datarc.test_fold",
             predictions=tuple(Prediction(f"{fold}/test_{fold}_predict.txt", f"er_{fold}_public", "predict.txt")
                               for fold in ER_FOLDS)),
    )
}

METRIC_KEYS = tuple(key for task in TASKS.values() for key in task.metric_keys)


def task_of_metric(key: str) -> Task:
    """The task a metric key belongs to."""
    for task in TASKS.values():
        if key in task.metric_keys:
            return task
    raise KeyError(key)

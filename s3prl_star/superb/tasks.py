"""The ten SUPERB tasks as this project runs them: s3prl name, recipe, data keys, metric keys, selection.

One row per task (SUPERB_SPEC.md sections 3 and 4). The driver runs a task from its row and
`s3prl_star.superb.results` reads its metric back from what s3prl wrote; the `selection` says how
the final metric is obtained from the runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from s3prl_star import resources



class Selection(Enum):
    """How a task's reported test metric is chosen (SUPERB_SPEC.md section 3)."""

    EVALUATE_DEV_BEST = "the test evaluation (-m evaluate) of the checkpoint the expert saved as best on dev"
    LOGGED_AT_DEV_BEST = "the test score log.log holds at the step of the last 'New best on dev' line"
    FOLDS = "the mean over the five leave-one-session-out folds of the logged test score at the dev-best step"
    LOWEST_OVER_CHECKPOINTS = "the lowest test score over every saved states-*.ckpt (no dev set)"
    LAYER_ON_DEV = "the test score of the hidden-state layer with the best dev score (no training)"


@dataclass(frozen=True)
class Task:
    name: str  # SUPERB name, as in the metric keys
    downstream: str  # s3prl's `-d`
    recipe: str  # folder under downstream_recipes/
    data_keys: tuple[str, ...]  # keys under config.downstream_expert that hold the user's data paths
    metric_keys: tuple[str, ...]  # SUPERB_SPEC.md section 4, percent except QbE_mtwv (0..1)
    selection: Selection
    dev_best_checkpoint: str | None = None  # the file the expert saves when dev improves
    test_split: str = "test"  # `-t` of the test evaluation

    @property
    def key(self) -> str:
        """The lower-case name used by `--tasks`, DATA.yaml and the output folders."""
        return self.name.lower()

    @property
    def config(self) -> Path:
        return resources.recipes() / self.recipe / "config.yaml"


TASKS: dict[str, Task] = {
    task.key: task
    for task in (
        Task("PR", "ctc", "pr", ("corpus.path", "corpus.lexicon"), ("PR_per",), Selection.EVALUATE_DEV_BEST, "dev-best.ckpt"),
        Task("ASR", "asr", "asr", ("datarc.libri_root", "datarc.bucket_file"), ("ASR_wer",),
             Selection.EVALUATE_DEV_BEST, "dev-clean-best.ckpt", test_split="test-clean"),
        Task("KS", "speech_commands", "speech_commands",
             ("datarc.speech_commands_root", "datarc.speech_commands_test_root"), ("KS_acc",),
             Selection.LOGGED_AT_DEV_BEST, "dev-best.ckpt"),
        Task("QbE", "quesst14_dtw", "quesst14_dtw", ("datarc.dataset_root",), ("QbE_mtwv",), Selection.LAYER_ON_DEV),
        Task("SID", "voxceleb1", "voxceleb1", ("datarc.file_path", "datarc.meta_data"), ("SID_acc",),
             Selection.LOGGED_AT_DEV_BEST, "dev-best.ckpt"),
        Task("ASV", "sv_voxceleb1", "sv_voxceleb1",
             ("datarc.file_path", "datarc.train_meta_data", "datarc.dev_meta_data", "datarc.test_meta_data"),
             ("ASV_eer",), Selection.LOWEST_OVER_CHECKPOINTS),
        Task("SD", "diarization", "diarization", ("loaderrc.train_dir", "loaderrc.dev_dir", "loaderrc.test_dir"),
             ("SD_der",), Selection.EVALUATE_DEV_BEST, "best-states-dev.ckpt"),
        Task("IC", "fluent_commands", "fluent_commands", ("datarc.file_path",), ("IC_acc",),
             Selection.LOGGED_AT_DEV_BEST, "dev-best.ckpt"),
        Task("SF", "ctc", "sf", ("corpus.path", "text.slots_file"), ("SF_f1", "SF_cer"),
             Selection.EVALUATE_DEV_BEST, "dev-best.ckpt"),
        Task("ER", "emotion", "emotion", ("datarc.root", "datarc.meta_data"), ("ER_acc",), Selection.FOLDS,
             "dev-best.ckpt"),
    )
}

ER_FOLDS = tuple(f"fold{index}" for index in range(1, 6))
METRIC_KEYS = tuple(key for task in TASKS.values() for key in task.metric_keys)


def task_of_metric(key: str) -> Task:
    """The task a section-4 metric key belongs to."""
    for task in TASKS.values():
        if key in task.metric_keys:
            return task
    raise KeyError(key)

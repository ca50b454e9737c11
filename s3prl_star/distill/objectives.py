"""The distillation objectives behind one interface, so that the expert names none of them.

An objective is an `nn.Module` (its parameters, if any, train with the student and are saved under
the checkpoint's `Objective` key) with
- `need_attention`: whether teacher and student must return head-averaged attention maps;
- `predict(student)`: what it computes from the student's output with its own parameters, inside
  the module the runner optimises (so DDP averages those gradients), or None;
- `batch_sums(teacher, student, predictions)`: the `LossSums` of one batch; `combine(sums)`: the
  weighted total and its detached terms (all-reduce the denominators in between under DDP);
- `description`: how it pairs student and teacher, for the run's log.

`OBJECTIVES` maps config_model.yaml's `objective.kind` to its config class and builder: `star` (the
default: STaR's temporal Gram matrix losses) and `distilhubert` (the baseline: prediction heads).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from torch import Tensor

from s3prl_star.distill.distilhubert import DistilHubertLoss, DistilHubertLossConfig
from s3prl_star.distill.losses import LossSums, StarLoss, StarLossConfig
from s3prl_star.distill.teacher import resolve_layer_map
from s3prl_star.model.star_hubert import StarHubertOutput


class StarObjective(StarLoss):
    """STaR's loss between paired layers: student hidden state l against teacher hidden state `layer_map[l]`."""

    def __init__(self, config: StarLossConfig, layer_map: Sequence[int]):
        super().__init__(config)
        self.layer_map = list(layer_map)
        self.need_attention = config.attention_weight > 0
        self.description = f"map {self.layer_map}"

    def predict(self, student: StarHubertOutput) -> None:
        return None

    def batch_sums(self, teacher: StarHubertOutput, student: StarHubertOutput, predictions: None) -> LossSums:
        return self.sums([teacher.hidden_states[index] for index in self.layer_map], student.hidden_states,
                         student.padding_mask, teacher.attentions, student.attentions)


class DistilHubertObjective(DistilHubertLoss):
    """DistilHuBERT's heads on the student's last layer, predicting the teacher layers `pred_layers`."""

    need_attention = False

    def __init__(self, config: DistilHubertLossConfig, student_dim: int, teacher_dim: int, teacher_layers: int):
        super().__init__(config, student_dim, teacher_dim, teacher_layers)
        self.description = f"heads predict {self.pred_layers}"

    def predict(self, student: StarHubertOutput) -> Tensor:
        return super().predict(student.hidden_states[-1])

    def batch_sums(self, teacher: StarHubertOutput, student: StarHubertOutput, predictions: Tensor) -> LossSums:
        return self.sums(teacher.hidden_states, predictions, student.padding_mask)


@dataclass(frozen=True)
class TeacherShape:
    """What an objective needs to know of the teacher and student it pairs."""

    teacher_layers: int
    teacher_dim: int
    student_layers: int
    student_dim: int


def _star(config: StarLossConfig, shape: TeacherShape, layer_map: Sequence[int] | None) -> StarObjective:
    return StarObjective(config, resolve_layer_map(shape.teacher_layers, shape.student_layers, layer_map))


def _distilhubert(config: DistilHubertLossConfig, shape: TeacherShape, layer_map: None) -> DistilHubertObjective:
    return DistilHubertObjective(config, shape.student_dim, shape.teacher_dim, shape.teacher_layers)


@dataclass(frozen=True)
class ObjectiveKind:
    config: type  # its loss config dataclass (the `objective` section's other fields)
    build: Callable[[Any, TeacherShape, Sequence[int] | None], Any]
    pairs_layers: bool  # whether it takes config_model.yaml's `teacher.layer_map`


OBJECTIVES: dict[str, ObjectiveKind] = {
    "star": ObjectiveKind(StarLossConfig, _star, pairs_layers=True),
    "distilhubert": ObjectiveKind(DistilHubertLossConfig, _distilhubert, pairs_layers=False),
}


def objective_config(section: Any, source: str, layer_map: Sequence[int] | None = None) -> tuple[str, Any]:
    """(kind, loss config) of config_model.yaml's `objective` section: `kind` (star by default) and that
    loss's fields, checked with the teacher's `layer_map` before any model is loaded; a ValueError
    naming `source` otherwise."""
    if not isinstance(section, dict):
        raise ValueError(f"{source}: expected a mapping, found {section!r}")
    fields = dict(section)
    kind = fields.pop("kind", "star")
    if kind not in OBJECTIVES:
        raise ValueError(f"{source}: kind {kind!r}; expected one of {tuple(OBJECTIVES)}")
    if layer_map is not None and not OBJECTIVES[kind].pairs_layers:
        raise ValueError(f"{source}: teacher.layer_map pairs student and teacher layers for STaR; objective.kind "
                         f"{kind} does not take it")
    try:
        return kind, OBJECTIVES[kind].config.from_dict(fields)
    except ValueError as error:
        raise ValueError(f"{source} (kind {kind}): {error}") from None


def build_objective(kind: str, config: Any, shape: TeacherShape, layer_map: Sequence[int] | None, source: str):
    """The objective `kind` with `config` for a teacher and student of `shape`."""
    try:
        return OBJECTIVES[kind].build(config, shape, layer_map)
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None

"""DistilHuBERT's objective (Chang et al., ICASSP 2022), as s3prl's distiller defines it: the baseline
STaR is compared with, on the same student.

s3prl (pretrain/distiller/pretrain_expert.py, upstream/distiller/model.py and config_model.yaml:
`out_layer_type: expand-last`, `loss_type: l1`, `cosine_loss: 1`, `feat_pen_loss: 0`):
- prediction heads on the output of the student's last layer predict chosen teacher layers
  (DistilHuBERT: 4, 8 and 12 of 12). s3prl's output layer is Linear(d_S, N d_S), GELU and a
  `SplitLinear` applying one Linear(d_S, d_T) to each d_S-wide slice: for each predicted layer an
  independent head Linear(d_S, d_S) -> GELU -> Linear(d_S, d_T), written so here (same function,
  same initialisation distribution);
- l1 = mean over predicted layers, frames and channels of |prediction - target|;
  cosine = mean over predicted layers and frames of -log sigmoid(cos(prediction, target));
  total = l1_weight * l1 + cosine_weight * cosine (s3prl: 1 and 1).
Unlike s3prl, which averages over the padded batch, padded frames are left out of both means: a
padded batch gives the mean over its valid frames. Heads and losses run in float32 with autocast
disabled, as `StarLoss` does.

Data-parallel training: `sums` / `combine` as `StarLoss` (see `losses.LossSums`).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from s3prl_star.distill.losses import LossSums, config_from_dict, weighted_total

_WEIGHTS = ("l1_weight", "cosine_weight")


@dataclass(frozen=True)
class DistilHubertLossConfig:
    """pred_layers: teacher layers (1-based, distinct) the heads predict; None: `default_pred_layers`
    of the teacher's depth (4, 8, 12 of 12). l1_weight, cosine_weight: non-negative weights of the
    two terms, not both 0 (a term with weight 0 is not computed)."""

    pred_layers: tuple[int, ...] | None = None
    l1_weight: float = 1.0
    cosine_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.pred_layers is not None:
            layers = self.pred_layers
            if (not isinstance(layers, (list, tuple)) or not layers
                    or any(type(layer) is not int or layer < 1 for layer in layers)):
                raise ValueError(f"DistilHubertLossConfig.pred_layers: expected a non-empty list of teacher "
                                 f"layers >= 1 (1-based) or null, found {layers!r}")
            if len(set(layers)) != len(layers):
                raise ValueError(f"DistilHubertLossConfig.pred_layers: a layer is listed twice in {list(layers)}")
            object.__setattr__(self, "pred_layers", tuple(layers))
        for name in _WEIGHTS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"DistilHubertLossConfig.{name}: expected a number, found {value!r}")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"DistilHubertLossConfig.{name}: expected a finite number >= 0, found {value!r}")
            object.__setattr__(self, name, float(value))
        if all(getattr(self, name) == 0 for name in _WEIGHTS):
            raise ValueError(f"DistilHubertLossConfig: at least one of {', '.join(_WEIGHTS)} must be > 0")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "DistilHubertLossConfig":
        return config_from_dict(cls, values)

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["pred_layers"] = None if self.pred_layers is None else list(self.pred_layers)
        return values


def default_pred_layers(teacher_layers: int) -> list[int]:
    """Thirds of the teacher's depth, ceil(L/3), ceil(2L/3), L, without repeats: 4, 8, 12 of 12
    (DistilHuBERT's), 8, 16, 24 of 24, 1, 2 of 2."""
    return sorted({math.ceil(k * teacher_layers / 3) for k in (1, 2, 3)})


class DistilHubertLoss(nn.Module):
    """DistilHuBERT's loss with its prediction heads (the only parameters), which train with the student.

    forward(teacher_states, predictions, padding_mask) -> (total, terms):
        teacher_states: the teacher's L + 1 hidden states (B, T, d_T) (index l the output of layer l);
        predictions: from `predict`; padding_mask: (B, T) bool, True = padding.
        total: float32 scalar; terms: detached float32 scalars "l1", "cosine" (those with weight > 0,
        unweighted) and "total".
    """

    def __init__(self, config: DistilHubertLossConfig, student_dim: int, teacher_dim: int, teacher_layers: int):
        super().__init__()
        self.config = config
        self.pred_layers = list(config.pred_layers or default_pred_layers(teacher_layers))
        beyond = [layer for layer in self.pred_layers if layer > teacher_layers]
        if beyond:
            raise ValueError(f"DistilHubertLossConfig.pred_layers: {beyond} beyond the teacher's {teacher_layers} "
                             f"layers; expected layers in 1..{teacher_layers}")
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Linear(student_dim, student_dim), nn.GELU(), nn.Linear(student_dim, teacher_dim))
            for _ in self.pred_layers
        )

    def predict(self, student_last: Tensor) -> Tensor:
        """The heads' predictions (B, N, T, d_T), float32, of the N teacher layers `pred_layers`
        from the output of the student's last layer (B, T, d_S)."""
        with torch.autocast(student_last.device.type, enabled=False):
            return torch.stack([head(student_last.float()) for head in self.heads], dim=1)

    def forward(self, teacher_states: Sequence[Tensor], predictions: Tensor, padding_mask: Tensor
                ) -> tuple[Tensor, dict[str, Tensor]]:
        return self.combine(self.sums(teacher_states, predictions, padding_mask))

    def sums(self, teacher_states: Sequence[Tensor], predictions: Tensor, padding_mask: Tensor) -> LossSums:
        """Numerators (error sums over valid frames) and denominators (valid frames x layers, and
        x channels for l1) of every enabled term (arguments as in forward)."""
        layers, width = len(self.pred_layers), predictions.shape[-1]
        if predictions.dim() != 4 or predictions.shape[1] != layers or (
                (predictions.shape[0], predictions.shape[2]) != tuple(padding_mask.shape)):
            raise ValueError(f"predictions {tuple(predictions.shape)}: expected (B, {len(self.pred_layers)}, T, d_T) "
                             f"for padding_mask {tuple(padding_mask.shape)}")
        valid = ~padding_mask
        frames = valid.sum()
        if int(frames) == 0:
            raise ValueError("padding_mask: no valid frame in the batch")
        result = LossSums()
        with torch.autocast(padding_mask.device.type, enabled=False):
            predicted = predictions.transpose(0, 1)[:, valid]  # (N, valid frames, d_T)
            target = torch.stack([teacher_states[layer][valid].float() for layer in self.pred_layers])
            if self.config.l1_weight > 0:
                result.numerators["l1"] = (predicted - target).abs().sum()
                result.denominators["l1"] = (frames * layers * width).float()
            if self.config.cosine_weight > 0:
                cosine = nn.functional.cosine_similarity(predicted, target, dim=-1)
                result.numerators["cosine"] = -nn.functional.logsigmoid(cosine).sum()
                result.denominators["cosine"] = (frames * layers).float()
        return result

    def combine(self, sums: LossSums) -> tuple[Tensor, dict[str, Tensor]]:
        """Weighted total and detached terms from ``sums`` (see ``losses.LossSums`` for DDP)."""
        return weighted_total(sums, {"l1": self.config.l1_weight, "cosine": self.config.cosine_weight})

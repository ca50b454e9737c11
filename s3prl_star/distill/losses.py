"""STaR objectives: temporal Gram matrix (TGM) losses and the average attention-map KL.

STaR (ICASSP 2024) section 2: for frames F^l (N x d) of layer l,
- layer-wise TGM loss: sum_l MSE(F_T^l F_T^l^T, F_S^l F_S^l^T),
- intra-layer TGM loss: sum_l MSE(F_T^{l-1} F_T^l^T, F_S^{l-1} F_S^l^T) (input of layer l against
  its output; the matrix is not symmetric, so teacher and student use the same order: transposing
  both would give the same loss, transposing one would not),
- average attention-map loss: sum_l KL(teacher || student) of the head-averaged attention maps,
  per valid query frame over valid keys.
The final STaR loss is layer-wise + intra-layer with weight 1:1 (the defaults here).

Padding. Padded frames are zeroed before any product, which removes them from every Gram entry
exactly; errors are normalised by valid frame pairs only, so a padded batch gives the loss of its
utterances computed one by one.

Two exact ways of computing a squared Frobenius distance of Gram matrices.
- ``gram``: build the (B, N, N) matrices, the direct form. Memory and time grow with N^2.
- ``channel``: with channel-major A = F_T^T (d_T x N), B = F_S^T (d_S x N),
  ||A^T A - B^T B||^2 = ||A A^T||^2 - 2 ||A B^T||^2 + ||B B^T||^2, and for the intra-layer matrix
  (X = F^{l-1}, Y = F^l) ||X_T Y_T^T - X_S Y_S^T||^2
  = tr(X_T^T X_T Y_T^T Y_T) - 2 tr(X_T^T X_S Y_S^T Y_T) + tr(X_S^T X_S Y_S^T Y_S).
  Only the d x d products P^l = F^l^T F^l and C^l = F_T^l^T F_S^l appear (each shared by both
  losses), so memory does not depend on N. The expansion subtracts terms of the size of the Gram
  energy E = ||G_T||^2: the float32 value has an absolute error of about 1e-7 E, so its relative
  error grows as the student approaches the teacher; gradients suffer far less (bench/RESULTS.md
  section 5). Keep float32 matmuls at "highest" precision (torch's default); TF32's rounding is
  about 8000x coarser.
- ``auto`` picks the one with fewer multiply-adds for the batch's shape:
  gram costs k N^2 (d_T + d_S) per layer (k = number of enabled Gram losses), channel
  N (d_T^2 + d_S^2 + d_T d_S); for d_T = 768, d_S = 432 and both losses channel wins for N > 462
  frames (9.2 s of audio). bench/bench_losses.py measures both (bench/losses_cpu.txt).

Feature normalisation before the Gram (the paper does not say; option ``normalize``):
``none`` (default: the raw Gram, as the public re-implementation used), ``l2`` (each frame scaled
to unit norm: Gram entries become cosine similarities, bounded in [-1, 1]), ``dim`` (frames scaled
by d^-1/2: Gram entries divided by the width d, so teacher and student entries have similar size).

Reduction (option ``reduction``): ``pairs`` (default) sums squared errors over the valid (i, j)
pairs of every utterance and layer and divides by the batch's number of valid pairs sum_b N_b^2:
the MSE over all valid Gram entries of the batch (every entry weighs the same, as in the
re-implementation's plain mean, minus padding), summed over layers. ``utterance`` takes the MSE
of each utterance and averages over utterances (short utterances weigh as much as long ones).
The attention term uses valid query frames (sum_b N_b) in place of pairs.

Everything is computed in float32 with autocast disabled, whatever the input dtype.

Data-parallel training: ``StarLoss.sums`` returns per-term numerators and denominators; all-reduce
the denominators, then ``StarLoss.combine`` (see ``LossSums``).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal, Mapping, Sequence

import torch
from torch import Tensor, nn

Normalize = Literal["none", "l2", "dim"]
GramPath = Literal["auto", "gram", "channel"]
Reduction = Literal["pairs", "utterance"]

_CHOICES: dict[str, tuple[str, ...]] = {
    "normalize": ("none", "l2", "dim"),
    "path": ("auto", "gram", "channel"),
    "reduction": ("pairs", "utterance"),
}
_WEIGHTS = ("layerwise_weight", "intra_weight", "attention_weight")

ATTENTION_LOG_EPS = 1e-8
"""The student's attention probabilities are clamped to at least this before the log, so maps
containing zeros give a finite KL (teacher zeros contribute 0 * log 0 = 0 via ``xlogy``)."""


@dataclass(frozen=True)
class StarLossConfig:
    """Weights and options of the STaR loss; defaults give the paper's final loss.

    layerwise_weight, intra_weight, attention_weight: non-negative weights of the three terms
    (a term with weight 0 is not computed). normalize, path, reduction: see the module docstring.
    """

    layerwise_weight: float = 1.0
    intra_weight: float = 1.0
    attention_weight: float = 0.0
    normalize: Normalize = "none"
    path: GramPath = "auto"
    reduction: Reduction = "pairs"

    def __post_init__(self) -> None:
        for name in _WEIGHTS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"StarLossConfig.{name}: expected a number, found {value!r}")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"StarLossConfig.{name}: expected a finite number >= 0, found {value!r}")
            object.__setattr__(self, name, float(value))
        if all(getattr(self, name) == 0 for name in _WEIGHTS):
            raise ValueError(f"StarLossConfig: at least one of {', '.join(_WEIGHTS)} must be > 0")
        for name, allowed in _CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"StarLossConfig.{name}: expected one of {allowed}, found {value!r}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "StarLossConfig":
        return config_from_dict(cls, values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def config_from_dict(cls, values: Mapping[str, Any]):
    """A loss config dataclass from a plain mapping (e.g. a yaml section); unknown keys are an error."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown keys {unknown}; expected a subset of {sorted(known)}")
    return cls(**values)


@dataclass
class LossSums:
    """Per-term numerators and denominators of one batch (float32 scalars).

    numerators carry gradients; denominators do not (valid pairs or frames for ``pairs``,
    utterances for ``utterance``). Each term equals numerator / denominator. Under DDP,
    all-reduce (sum) every denominator in place, pass this to ``StarLoss.combine`` and multiply
    the total by the world size before backward (DDP averages gradients over ranks): the gradient
    is then the one of the loss over the global batch.
    """

    numerators: dict[str, Tensor] = field(default_factory=dict)
    denominators: dict[str, Tensor] = field(default_factory=dict)


def weighted_total(sums: LossSums, weights: Mapping[str, float]) -> tuple[Tensor, dict[str, Tensor]]:
    """(sum of weights[name] * term, detached terms and "total") with term = numerator / denominator."""
    terms = {name: sums.numerators[name] / sums.denominators[name] for name in sums.numerators}
    total = sum(weights[name] * value for name, value in terms.items())
    detached = {name: value.detach() for name, value in terms.items()}
    detached["total"] = total.detach()
    return total, detached


def temporal_gram(x: Tensor, y: Tensor | None = None, padding_mask: Tensor | None = None) -> Tensor:
    """Temporal Gram matrix x y^T (B, T, T) of frames x, y (B, T, d); y defaults to x.

    The channel axis is contracted, so teacher and student widths may differ. Rows and columns of
    padded frames (padding_mask (B, T), True = padding) are zero. Computed in float32.
    """
    y = x if y is None else y
    x, y = x.float(), y.float()
    if padding_mask is not None:
        x, y = _zero_padding(x, padding_mask), _zero_padding(y, padding_mask)
    return torch.bmm(x, y.transpose(1, 2))


class StarLoss(nn.Module):
    """The STaR distillation loss (no parameters).

    forward(teacher_states, student_states, padding_mask, teacher_attentions=None,
    student_attentions=None) -> (total, terms):
        teacher_states / student_states: L+1 tensors (B, T, d_T) / (B, T, d_S); index 0 is the
            input of layer 1, index l the output of layer l.
        padding_mask: (B, T) bool, True = padding.
        teacher/student_attentions: L tensors (B, T, T) of head-averaged softmax maps, required
            iff attention_weight > 0.
        total: float32 scalar; terms: detached float32 scalars "layerwise", "intra", "attention"
            (those with weight > 0, unweighted) and "total".
    """

    def __init__(self, config: StarLossConfig | None = None) -> None:
        super().__init__()
        self.config = config or StarLossConfig()

    def forward(
        self,
        teacher_states: Sequence[Tensor],
        student_states: Sequence[Tensor],
        padding_mask: Tensor,
        teacher_attentions: Sequence[Tensor] | None = None,
        student_attentions: Sequence[Tensor] | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        return self.combine(
            self.sums(teacher_states, student_states, padding_mask, teacher_attentions, student_attentions)
        )

    def sums(
        self,
        teacher_states: Sequence[Tensor],
        student_states: Sequence[Tensor],
        padding_mask: Tensor,
        teacher_attentions: Sequence[Tensor] | None = None,
        student_attentions: Sequence[Tensor] | None = None,
    ) -> LossSums:
        """Numerators and denominators of every enabled term (arguments as in forward)."""
        cfg = self.config
        _check_states(teacher_states, student_states, padding_mask)
        if cfg.attention_weight > 0:
            _check_attentions(teacher_attentions, student_attentions, padding_mask, len(teacher_states) - 1)
        frames = (~padding_mask).sum(dim=1)  # int64, so pair counts add up exactly
        if bool((frames == 0).any()):
            empty = (frames == 0).nonzero().flatten().tolist()
            raise ValueError(f"padding_mask: utterances {empty} have no valid frame")
        pairs = frames.square()
        result = LossSums()
        with torch.autocast(padding_mask.device.type, enabled=False):
            gram_terms = self._gram_terms(teacher_states, student_states, padding_mask)
            for name, per_utterance in gram_terms.items():
                result.numerators[name], result.denominators[name] = self._reduce(per_utterance, pairs)
            if cfg.attention_weight > 0:
                per_utterance = _attention_kl(teacher_attentions, student_attentions, padding_mask)
                result.numerators["attention"], result.denominators["attention"] = self._reduce(per_utterance, frames)
        return result

    def combine(self, sums: LossSums) -> tuple[Tensor, dict[str, Tensor]]:
        """Weighted total and detached terms from ``sums`` (see ``LossSums`` for DDP)."""
        weights = {
            "layerwise": self.config.layerwise_weight,
            "intra": self.config.intra_weight,
            "attention": self.config.attention_weight,
        }
        return weighted_total(sums, weights)

    def choose_path(self, frames: int, teacher_dim: int, student_dim: int) -> Literal["gram", "channel"]:
        """The Gram computation used for T padded frames: the configured one, or under ``auto``
        the one with fewer multiply-adds (see the module docstring)."""
        if self.config.path != "auto":
            return self.config.path
        gram_losses = (self.config.layerwise_weight > 0) + (self.config.intra_weight > 0)
        gram_cost = gram_losses * frames * (teacher_dim + student_dim)
        channel_cost = teacher_dim**2 + student_dim**2 + teacher_dim * student_dim
        return "channel" if channel_cost < gram_cost else "gram"

    def _reduce(self, per_utterance: Tensor, counts: Tensor) -> tuple[Tensor, Tensor]:
        """float32 (numerator, denominator) from per-utterance error sums (B,) and integer counts (B,)."""
        if self.config.reduction == "pairs":
            return per_utterance.sum(), counts.sum().float()
        return (per_utterance / counts).sum(), torch.tensor(float(len(counts)), device=counts.device)

    def _gram_terms(
        self, teacher_states: Sequence[Tensor], student_states: Sequence[Tensor], padding_mask: Tensor
    ) -> dict[str, Tensor]:
        """Per-utterance squared errors (B,) summed over layers, of the enabled Gram losses."""
        cfg = self.config
        want_layerwise, want_intra = cfg.layerwise_weight > 0, cfg.intra_weight > 0
        if not (want_layerwise or want_intra):
            return {}
        teacher = [_prepare(f, padding_mask, cfg.normalize) for f in teacher_states]
        student = [_prepare(f, padding_mask, cfg.normalize) for f in student_states]
        path = self.choose_path(padding_mask.shape[1], teacher[0].shape[-1], student[0].shape[-1])
        compute = _gram_path_errors if path == "gram" else _channel_path_errors
        layerwise, intra = compute(teacher, student, want_layerwise, want_intra)
        terms = {}
        if want_layerwise:
            terms["layerwise"] = layerwise
        if want_intra:
            terms["intra"] = intra
        return terms


def _zero_padding(x: Tensor, padding_mask: Tensor) -> Tensor:
    return x.masked_fill(padding_mask.unsqueeze(-1), 0.0)


def _prepare(features: Tensor, padding_mask: Tensor, normalize: Normalize) -> Tensor:
    """float32 frames (B, T, d), normalised as configured, padded frames zero."""
    x = features.float()
    if normalize == "l2":
        x = nn.functional.normalize(x, dim=-1)  # a zero frame stays zero
    elif normalize == "dim":
        x = x / math.sqrt(x.shape[-1])
    return _zero_padding(x, padding_mask)


def _gram_path_errors(
    teacher: list[Tensor], student: list[Tensor], want_layerwise: bool, want_intra: bool
) -> tuple[Tensor, Tensor]:
    """Per-utterance squared errors (B,) of the layer-wise and intra-layer Grams, via (B, T, T) matrices."""
    layerwise = teacher[0].new_zeros(teacher[0].shape[0])
    intra = teacher[0].new_zeros(teacher[0].shape[0])
    for layer in range(1, len(teacher)):
        if want_layerwise:
            diff = temporal_gram(teacher[layer]) - temporal_gram(student[layer])
            layerwise = layerwise + diff.square().sum(dim=(1, 2))
        if want_intra:
            diff = temporal_gram(teacher[layer - 1], teacher[layer]) - temporal_gram(student[layer - 1], student[layer])
            intra = intra + diff.square().sum(dim=(1, 2))
    return layerwise, intra


def _channel_path_errors(
    teacher: list[Tensor], student: list[Tensor], want_layerwise: bool, want_intra: bool
) -> tuple[Tensor, Tensor]:
    """The same errors as ``_gram_path_errors`` through d x d products only (exact identity).

    With P^l = F^l^T F^l (per model) and C^l = F_T^l^T F_S^l:
    layer-wise_l = ||P_T^l||^2 - 2 ||C^l||^2 + ||P_S^l||^2,
    intra_l = <P_T^{l-1}, P_T^l> - 2 <C^{l-1}, C^l> + <P_S^{l-1}, P_S^l>  (<A, B> = sum A * B),
    the latter being tr(X_T^T X_T Y_T^T Y_T) - 2 tr(X_T^T X_S Y_S^T Y_T) + tr(X_S^T X_S Y_S^T Y_S).
    """
    layerwise = teacher[0].new_zeros(teacher[0].shape[0])
    intra = teacher[0].new_zeros(teacher[0].shape[0])
    first = 0 if want_intra else 1
    previous = None
    for layer in range(first, len(teacher)):
        t, s = teacher[layer].transpose(1, 2), student[layer].transpose(1, 2)  # channel-major (B, d, T)
        p_t, p_s, c = t @ t.transpose(1, 2), s @ s.transpose(1, 2), t @ s.transpose(1, 2)
        if layer >= 1 and want_layerwise:
            layerwise = layerwise + _inner(p_t, p_t) - 2 * _inner(c, c) + _inner(p_s, p_s)
        if previous is not None:
            p_t0, p_s0, c0 = previous
            intra = intra + _inner(p_t0, p_t) - 2 * _inner(c0, c) + _inner(p_s0, p_s)
        previous = (p_t, p_s, c) if want_intra else None
    return layerwise, intra


def _inner(a: Tensor, b: Tensor) -> Tensor:
    """Frobenius inner product per batch element: (B, m, n) x (B, m, n) -> (B,)."""
    return (a * b).sum(dim=(1, 2))


def _attention_kl(
    teacher_attentions: Sequence[Tensor], student_attentions: Sequence[Tensor], padding_mask: Tensor
) -> Tensor:
    """Per utterance (B,): sum over layers and valid query frames of KL(teacher || student) over valid keys.

    The maps are taken as given (softmax over valid keys, as the models mask padded keys): no
    renormalisation. Zeros are safe: see ATTENTION_LOG_EPS.
    """
    valid = ~padding_mask
    pair_valid = valid.unsqueeze(2) & valid.unsqueeze(1)  # (B, query, key)
    total = padding_mask.new_zeros(padding_mask.shape[0], dtype=torch.float32)
    for p, q in zip(teacher_attentions, student_attentions):
        p, q = p.float(), q.float()
        kl = torch.xlogy(p, p) - p * q.clamp_min(ATTENTION_LOG_EPS).log()
        total = total + kl.masked_fill(~pair_valid, 0.0).sum(dim=(1, 2))
    return total


def _check_attentions(
    teacher_attentions: Sequence[Tensor] | None,
    student_attentions: Sequence[Tensor] | None,
    padding_mask: Tensor,
    layers: int,
) -> None:
    """Both lists given, L maps each, every map (B, T, T)."""
    if teacher_attentions is None or student_attentions is None:
        raise ValueError(
            "attention_weight > 0 needs teacher_attentions and student_attentions "
            "(lists of L head-averaged maps (B, T, T)); found None"
        )
    batch, frames = padding_mask.shape
    for who, maps in (("teacher_attentions", teacher_attentions), ("student_attentions", student_attentions)):
        if len(maps) != layers:
            raise ValueError(f"{who}: expected {layers} maps (one per layer, L = len(states) - 1), found {len(maps)}")
        for layer, attention in enumerate(maps):
            if attention.shape != (batch, frames, frames):
                raise ValueError(
                    f"{who}[{layer}]: expected shape {(batch, frames, frames)}, found {tuple(attention.shape)}"
                )


def _check_states(teacher_states: Sequence[Tensor], student_states: Sequence[Tensor], padding_mask: Tensor) -> None:
    """Shapes: equal list lengths (L+1 >= 2), (B, T, d) everywhere with one B, T and one d per model."""
    if len(teacher_states) != len(student_states):
        raise ValueError(
            f"teacher_states has {len(teacher_states)} tensors, student_states {len(student_states)}: "
            "expected the same L+1 (input of layer 1, then each layer's output)"
        )
    if len(teacher_states) < 2:
        raise ValueError(f"expected L+1 >= 2 hidden states per model, found {len(teacher_states)}")
    if padding_mask.dtype != torch.bool or padding_mask.dim() != 2:
        raise ValueError(
            f"padding_mask: expected a (B, T) bool tensor (True = padding), "
            f"found {padding_mask.dtype} of shape {tuple(padding_mask.shape)}"
        )
    batch, frames = padding_mask.shape
    for who, states in (("teacher_states", teacher_states), ("student_states", student_states)):
        width = states[0].shape[-1]
        for index, state in enumerate(states):
            if state.dim() != 3 or state.shape[:2] != (batch, frames) or state.shape[-1] != width:
                raise ValueError(
                    f"{who}[{index}]: expected shape ({batch}, {frames}, {width}) "
                    f"(B, T from padding_mask, width of {who}[0]), found {tuple(state.shape)}"
                )

"""STaR losses against a naive per-utterance N x N reference computed in float64, and DistilHuBERT's
objective (the baseline) against a hand computation."""
import math

import pytest
import torch

from s3prl_star.distill.distilhubert import DistilHubertLoss, DistilHubertLossConfig, default_pred_layers
from s3prl_star.distill.losses import LossSums, StarLoss, StarLossConfig, temporal_gram

D_T, D_S, LAYERS = 12, 7, 3
LENGTHS = (9, 4, 1, 6)
REL_TOL = 1e-4


def padding_mask(lengths, frames=None):
    frames = frames or max(lengths)
    return torch.arange(frames)[None, :] >= torch.tensor(lengths)[:, None]


def random_states(lengths, width, seed, dtype=torch.float32, frames=None):
    """L+1 tensors (B, T, width); padded frames hold large garbage that must not leak into a loss."""
    gen = torch.Generator().manual_seed(seed)
    frames = frames or max(lengths)
    mask = padding_mask(lengths, frames)
    states = []
    for _ in range(LAYERS + 1):
        x = torch.randn(len(lengths), frames, width, generator=gen)
        x = x.masked_fill(mask[..., None], 1e3)
        states.append(x.to(dtype).requires_grad_())
    return states


def random_attentions(lengths, seed, frames=None):
    """L head-averaged maps (B, T, T): softmax over valid keys; padded query rows are garbage."""
    gen = torch.Generator().manual_seed(seed)
    frames = frames or max(lengths)
    mask = padding_mask(lengths, frames)
    maps = []
    for _ in range(LAYERS):
        logits = 2 * torch.randn(len(lengths), frames, frames, generator=gen)
        probs = logits.masked_fill(mask[:, None, :], -math.inf).softmax(dim=-1)
        garbage = torch.rand(probs.shape, generator=gen)
        probs = torch.where(mask[:, :, None], garbage, probs)
        maps.append(probs.requires_grad_())
    return maps


def reference_normalize(x, normalize):
    if normalize == "l2":
        return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    if normalize == "dim":
        return x / math.sqrt(x.shape[-1])
    return x


def reference_loss(teacher, student, lengths, cfg, teacher_att=None, student_att=None, student_swapped=False):
    """Direct form, one utterance at a time, float64: per-utterance sums of squared Gram errors.

    student_swapped: compare the teacher's F^{l-1} F^l^T with the student's F^l F^{l-1}^T (a bug).
    """
    sse = {"layerwise": [], "intra": [], "attention": []}
    for b, n in enumerate(lengths):
        t = [reference_normalize(f[b, :n].double(), cfg.normalize) for f in teacher]
        s = [reference_normalize(f[b, :n].double(), cfg.normalize) for f in student]
        sse["layerwise"].append(sum(((t[l] @ t[l].T - s[l] @ s[l].T) ** 2).sum() for l in range(1, len(t))))
        x, y = (1, 0) if student_swapped else (0, 1)
        sse["intra"].append(
            sum(((t[l - 1] @ t[l].T - s[l - 1 + x] @ s[l - 1 + y].T) ** 2).sum() for l in range(1, len(t)))
        )
        if teacher_att is not None:
            kl = 0.0
            for p, q in zip(teacher_att, student_att):
                p, q = p[b, :n, :n].double(), q[b, :n, :n].double()
                kl = kl + (p * (p / q).log()).sum()
            sse["attention"].append(kl)
    frames = torch.tensor(lengths, dtype=torch.float64)
    counts = {"layerwise": frames**2, "intra": frames**2, "attention": frames}
    terms = {}
    for name, values in sse.items():
        if not values:
            continue
        values = torch.stack(values)
        if cfg.reduction == "pairs":
            terms[name] = values.sum() / counts[name].sum()
        else:
            terms[name] = (values / counts[name]).mean()
    weights = {"layerwise": cfg.layerwise_weight, "intra": cfg.intra_weight, "attention": cfg.attention_weight}
    total = sum(weights[name] * value for name, value in terms.items() if weights[name] > 0)
    return total, terms


def rel_err(value, reference):
    return (value.double() - reference.double()).norm().item() / reference.double().norm().item()


def grads(total, tensors):
    return torch.autograd.grad(total, tensors)


@pytest.mark.parametrize("path", ["gram", "channel", "auto"])
@pytest.mark.parametrize("normalize", ["none", "l2", "dim"])
@pytest.mark.parametrize("reduction", ["pairs", "utterance"])
def test_every_path_matches_naive_reference_values_and_gradients(path, normalize, reduction):
    cfg = StarLossConfig(normalize=normalize, path=path, reduction=reduction)
    teacher, student = random_states(LENGTHS, D_T, 0), random_states(LENGTHS, D_S, 1)
    total, terms = StarLoss(cfg)(teacher, student, padding_mask(LENGTHS))
    ref_total, ref_terms = reference_loss(teacher, student, LENGTHS, cfg)

    assert total.dtype == torch.float32 and total.dim() == 0
    assert set(terms) == {"layerwise", "intra", "total"}
    assert rel_err(total, ref_total) <= REL_TOL
    for name in ("layerwise", "intra"):
        assert rel_err(terms[name], ref_terms[name]) <= REL_TOL
    inputs = student + teacher
    for got, want in zip(grads(total, inputs), grads(ref_total, inputs)):
        assert rel_err(got, want) <= REL_TOL


@pytest.mark.parametrize("path", ["gram", "channel"])
@pytest.mark.parametrize("reduction", ["pairs", "utterance"])
def test_padded_batch_equals_utterances_one_by_one(path, reduction):
    """Padding (filled with 1e3 garbage, extra padded frames at the end too) never enters the loss."""
    cfg = StarLossConfig(path=path, reduction=reduction, attention_weight=0.5)
    loss_fn = StarLoss(cfg)
    frames = max(LENGTHS) + 3
    teacher, student = random_states(LENGTHS, D_T, 2, frames=frames), random_states(LENGTHS, D_S, 3, frames=frames)
    t_att, s_att = random_attentions(LENGTHS, 4, frames=frames), random_attentions(LENGTHS, 5, frames=frames)
    batched, _ = loss_fn(teacher, student, padding_mask(LENGTHS, frames), t_att, s_att)

    per_utterance = {}
    for b, n in enumerate(LENGTHS):
        one = lambda tensors: [x[b : b + 1, :n] for x in tensors]  # noqa: E731
        cut = lambda maps: [a[b : b + 1, :n, :n] for a in maps]  # noqa: E731
        _, terms = loss_fn(one(teacher), one(student), padding_mask([n]), cut(t_att), cut(s_att))
        per_utterance[n] = terms
    n = torch.tensor(LENGTHS, dtype=torch.float64)
    counts = {"layerwise": n**2, "intra": n**2, "attention": n}
    expected = 0.0
    for name, weight in (("layerwise", 1.0), ("intra", 1.0), ("attention", 0.5)):
        values = torch.stack([per_utterance[length][name].double() for length in LENGTHS])
        if reduction == "pairs":
            term = (values * counts[name]).sum() / counts[name].sum()
        else:
            term = values.mean()
        expected += weight * term
    assert rel_err(batched, expected) <= REL_TOL


def test_attention_kl_matches_reference_and_is_finite_with_zeros():
    cfg = StarLossConfig(layerwise_weight=0.0, intra_weight=0.0, attention_weight=1.0)
    teacher, student = random_states(LENGTHS, D_T, 0), random_states(LENGTHS, D_S, 1)
    t_att, s_att = random_attentions(LENGTHS, 6), random_attentions(LENGTHS, 7)
    total, terms = StarLoss(cfg)(teacher, student, padding_mask(LENGTHS), t_att, s_att)
    ref_total, _ = reference_loss(teacher, student, LENGTHS, cfg, t_att, s_att)
    assert set(terms) == {"attention", "total"}
    assert rel_err(total, ref_total) <= REL_TOL
    for got, want in zip(grads(total, s_att), grads(ref_total, s_att)):
        assert rel_err(got, want) <= REL_TOL

    hard_teacher = [torch.zeros_like(a).index_fill_(2, torch.tensor([0]), 1.0) for a in t_att]  # one-hot rows
    zero_student = [a.detach().clone().index_fill_(2, torch.tensor([0]), 0.0).requires_grad_() for a in s_att]
    total, _ = StarLoss(cfg)(teacher, student, padding_mask(LENGTHS), hard_teacher, zero_student)
    assert torch.isfinite(total) and total > 0
    assert all(torch.isfinite(g).all() for g in grads(total, zero_student))


@pytest.mark.parametrize("path", ["gram", "channel"])
def test_intra_layer_keeps_order(path):
    """Teacher and student both use F^{l-1} F^l^T (asymmetric).

    Swapping X and Y in both models only transposes the error matrix (same loss), so the check is
    against a student-side swap, which is a different loss.
    """
    cfg = StarLossConfig(layerwise_weight=0.0, path=path)
    teacher, student = random_states(LENGTHS, D_T, 8), random_states(LENGTHS, D_S, 9)
    total, _ = StarLoss(cfg)(teacher, student, padding_mask(LENGTHS))
    right, _ = reference_loss(teacher, student, LENGTHS, cfg)
    swapped, _ = reference_loss(teacher, student, LENGTHS, cfg, student_swapped=True)
    assert rel_err(total, right) <= REL_TOL
    assert rel_err(swapped, right) > 1e-2


def test_normalisation_options_change_gram_scale():
    x = torch.randn(2, 5, 16) * 3
    mask = padding_mask([5, 3])
    results = {}
    for normalize in ("none", "l2", "dim"):
        cfg = StarLossConfig(normalize=normalize, intra_weight=0.0)
        results[normalize] = StarLoss(cfg)([x, x], [torch.zeros(2, 5, 4)] * 2, mask)[0]
    # Against a zero student the layer-wise loss is the mean squared teacher Gram entry.
    expected_none = sum((temporal_gram(x[b : b + 1, :n]) ** 2).sum() for b, n in enumerate([5, 3])) / (25 + 9)
    assert rel_err(results["none"], expected_none) <= REL_TOL
    assert rel_err(results["dim"], expected_none / 16**2) <= REL_TOL
    assert results["l2"] <= 1.0  # cosine similarities are bounded by 1


@pytest.mark.parametrize("path", ["gram", "channel"])
@pytest.mark.parametrize("normalize", ["none", "l2", "dim"])
def test_zero_constant_and_single_frame_inputs_are_finite(path, normalize):
    cfg = StarLossConfig(path=path, normalize=normalize, attention_weight=1.0)
    lengths = (5, 1)
    teacher, student = random_states(lengths, D_T, 10), random_states(lengths, D_S, 11)
    with torch.no_grad():
        for states in (teacher, student):
            states[1][0, 2] = 0.0  # an all-zero frame
            states[2][0, 3] = 7.0  # a constant frame
            states[3][0] = 0.0  # a whole layer of zeros
    t_att, s_att = random_attentions(lengths, 12), random_attentions(lengths, 13)
    total, terms = StarLoss(cfg)(teacher, student, padding_mask(lengths), t_att, s_att)
    assert all(torch.isfinite(v) for v in terms.values())
    assert all(torch.isfinite(g).all() for g in grads(total, student + s_att))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("path", ["gram", "channel"])
def test_half_precision_inputs_give_finite_float32_loss(dtype, path):
    cfg = StarLossConfig(path=path, attention_weight=1.0)
    teacher, student = random_states(LENGTHS, D_T, 14), random_states(LENGTHS, D_S, 15)
    half_teacher = [(x.detach() * 20).to(dtype) for x in teacher]  # Gram entries ~ 5e3, squares ~ 2e7 > fp16 max
    half_student = [(x.detach() * 20).to(dtype).requires_grad_() for x in student]
    t_att = [a.detach().to(dtype) for a in random_attentions(LENGTHS, 16)]
    s_att = [a.detach().to(dtype) for a in random_attentions(LENGTHS, 17)]
    total, terms = StarLoss(cfg)(half_teacher, half_student, padding_mask(LENGTHS), t_att, s_att)
    assert total.dtype == torch.float32 and all(v.dtype == torch.float32 for v in terms.values())
    assert all(torch.isfinite(v) for v in terms.values())
    assert all(torch.isfinite(g).all() for g in grads(total, half_student))
    reference, _ = StarLoss(cfg)(half_teacher, [x.float() for x in half_student], padding_mask(LENGTHS), t_att, s_att)
    assert rel_err(total, reference) <= REL_TOL


def test_autocast_does_not_lower_loss_precision():
    teacher, student = random_states(LENGTHS, D_T, 18), random_states(LENGTHS, D_S, 19)
    loss_fn = StarLoss(StarLossConfig(path="gram"))
    plain, _ = loss_fn(teacher, student, padding_mask(LENGTHS))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast, _ = loss_fn(teacher, student, padding_mask(LENGTHS))
    assert autocast.dtype == torch.float32
    assert rel_err(autocast, plain) <= 1e-6


def test_sums_with_global_denominators_give_the_full_batch_loss():
    """The DDP recipe: per-rank numerators over all-reduced denominators add up to the global loss."""
    cfg = StarLossConfig(attention_weight=1.0)
    loss_fn = StarLoss(cfg)
    teacher, student = random_states(LENGTHS, D_T, 20), random_states(LENGTHS, D_S, 21)
    t_att, s_att = random_attentions(LENGTHS, 22), random_attentions(LENGTHS, 23)
    full, _ = loss_fn(teacher, student, padding_mask(LENGTHS), t_att, s_att)
    shards = []
    for rows in (slice(0, 2), slice(2, 4)):
        lengths = LENGTHS[rows]
        frames = max(lengths)
        cut = lambda xs: [x[rows, :frames] for x in xs]  # noqa: E731
        cut_maps = lambda xs: [x[rows, :frames, :frames] for x in xs]  # noqa: E731
        shards.append(loss_fn.sums(cut(teacher), cut(student), padding_mask(lengths), cut_maps(t_att), cut_maps(s_att)))
    global_den = {name: sum(s.denominators[name] for s in shards) for name in shards[0].denominators}
    total = sum(loss_fn.combine(LossSums(s.numerators, global_den))[0] for s in shards)
    assert rel_err(total, full) <= REL_TOL


def test_temporal_gram_contracts_channels_and_zeroes_padding():
    x, y = torch.randn(2, 4, 6), torch.randn(2, 4, 6)
    mask = padding_mask([4, 2])
    gram = temporal_gram(x, y, mask)
    assert gram.shape == (2, 4, 4)
    assert torch.allclose(gram[0], x[0] @ y[0].T)
    assert torch.allclose(gram[1, :2, :2], x[1, :2] @ y[1, :2].T)
    assert (gram[1, 2:] == 0).all() and (gram[1, :, 2:] == 0).all()
    assert torch.allclose(temporal_gram(x), x @ x.transpose(1, 2))


def test_auto_path_picks_the_cheaper_computation():
    both = StarLoss(StarLossConfig())
    layerwise_only = StarLoss(StarLossConfig(intra_weight=0.0))
    assert both.choose_path(250, 768, 432) == "gram"
    assert both.choose_path(500, 768, 432) == "channel"
    assert layerwise_only.choose_path(500, 768, 432) == "gram"
    assert layerwise_only.choose_path(1000, 768, 432) == "channel"
    assert StarLoss(StarLossConfig(path="gram")).choose_path(4000, 768, 432) == "gram"


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="normalize"):
        StarLossConfig(normalize="layer")
    with pytest.raises(ValueError, match="path"):
        StarLossConfig(path="fast")
    with pytest.raises(ValueError, match="reduction"):
        StarLossConfig(reduction="mean")
    with pytest.raises(ValueError, match="intra_weight"):
        StarLossConfig(intra_weight=-1.0)
    with pytest.raises(ValueError, match="attention_weight"):
        StarLossConfig(attention_weight="1")
    with pytest.raises(ValueError, match="at least one"):
        StarLossConfig(layerwise_weight=0, intra_weight=0)
    with pytest.raises(ValueError, match="unknown keys \\['lyerwise_weight'\\]"):
        StarLossConfig.from_dict({"lyerwise_weight": 1.0})
    assert list(StarLoss().parameters()) == []
    cfg = StarLossConfig.from_dict({"attention_weight": 1, "normalize": "l2"})
    assert cfg.attention_weight == 1.0 and isinstance(cfg.attention_weight, float)
    assert StarLossConfig.from_dict(cfg.to_dict()) == cfg


def test_bad_inputs_raise_clear_errors():
    loss_fn = StarLoss()
    teacher, student = random_states(LENGTHS, D_T, 24), random_states(LENGTHS, D_S, 25)
    mask = padding_mask(LENGTHS)
    with pytest.raises(ValueError, match="teacher_states has 4 tensors, student_states 3"):
        loss_fn(teacher, student[:3], mask)
    with pytest.raises(ValueError, match=r"student_states\[2\]: expected shape \(4, 9, 7\)"):
        loss_fn(teacher, student[:2] + [student[2][:, :5]] + student[3:], mask)
    with pytest.raises(ValueError, match="padding_mask: expected a \\(B, T\\) bool"):
        loss_fn(teacher, student, mask.long())
    with pytest.raises(ValueError, match="utterances \\[1\\] have no valid frame"):
        loss_fn(teacher, student, padding_mask((9, 0, 1, 6)))
    with_attention = StarLoss(StarLossConfig(attention_weight=1.0))
    with pytest.raises(ValueError, match="needs teacher_attentions and student_attentions"):
        with_attention(teacher, student, mask)
    t_att, s_att = random_attentions(LENGTHS, 26), random_attentions(LENGTHS, 27)
    with pytest.raises(ValueError, match="student_attentions: expected 3 maps"):
        with_attention(teacher, student, mask, t_att, s_att[:2])
    with pytest.raises(ValueError, match=r"student_attentions\[0\]: expected shape"):
        with_attention(teacher, student, mask, t_att, [a[:, :5] for a in s_att])


@pytest.mark.parametrize("path", ["gram", "channel"])
def test_paths_match_reference_at_hubert_widths(path):
    """d_T = 768, d_S = 432 and a few hundred frames: float32 accumulation over real sizes stays within 1e-4."""
    lengths, frames = (300, 170), 300
    gen = torch.Generator().manual_seed(28)
    mask = padding_mask(lengths, frames)
    teacher = [torch.randn(2, frames, 768, generator=gen).masked_fill(mask[..., None], 0) for _ in range(3)]
    student = [torch.randn(2, frames, 432, generator=gen).requires_grad_() for _ in range(3)]
    cfg = StarLossConfig(path=path)
    total, _ = StarLoss(cfg)(teacher, student, mask)
    ref_total, _ = reference_loss(teacher, student, lengths, cfg)
    assert rel_err(total, ref_total) <= REL_TOL
    for got, want in zip(grads(total, student), grads(ref_total, student)):
        assert rel_err(got, want) <= REL_TOL


# --- DistilHuBERT's objective (s3prl_star.distill.distilhubert) ---------------------------------------

PRED_LAYERS = (1, 3)


def distilhubert_inputs(lengths, frames, seed):
    """Teacher states (L+1 tensors (B, T, D_T)) and predictions (B, N, T, D_T), padding filled with
    1e3 garbage that must not leak into the loss."""
    gen = torch.Generator().manual_seed(seed)
    teacher = random_states(lengths, D_T, seed, frames=frames)
    predictions = torch.randn(len(lengths), len(PRED_LAYERS), frames, D_T, generator=gen)
    predictions = predictions.masked_fill(padding_mask(lengths, frames)[:, None, :, None], 1e3).requires_grad_()
    return teacher, predictions


def test_distilhubert_loss_matches_a_hand_computation_over_valid_frames():
    """L1 over valid frames, layers and channels, and -log sigmoid(cosine) over valid frames and
    layers, by hand (float64, loops); the padded batch equals s3prl's own expressions (nn.L1Loss
    mean, -logsigmoid(cosine_similarity).mean()) applied to its valid frames."""
    cfg = DistilHubertLossConfig(pred_layers=PRED_LAYERS, l1_weight=0.7, cosine_weight=1.3)
    loss_fn = DistilHubertLoss(cfg, student_dim=D_S, teacher_dim=D_T, teacher_layers=LAYERS)
    frames = max(LENGTHS) + 2
    teacher, predictions = distilhubert_inputs(LENGTHS, frames, 0)
    total, terms = loss_fn(teacher, predictions, padding_mask(LENGTHS, frames))

    absolute, cosine, count = 0.0, 0.0, 0
    for b, n in enumerate(LENGTHS):
        for k, layer in enumerate(PRED_LAYERS):
            for t in range(n):
                p, y = predictions[b, k, t].double(), teacher[layer][b, t].double()
                absolute = absolute + (p - y).abs().sum()
                cos = (p @ y) / (p.norm() * y.norm())
                cosine = cosine - torch.log(1 / (1 + torch.exp(-cos)))
                count += 1
    l1, cos_term = absolute / (count * D_T), cosine / count
    assert set(terms) == {"l1", "cosine", "total"}
    assert rel_err(terms["l1"], l1) <= REL_TOL and rel_err(terms["cosine"], cos_term) <= REL_TOL
    assert rel_err(total, 0.7 * l1 + 1.3 * cos_term) <= REL_TOL
    for got, want in zip(grads(total, [predictions]), grads(0.7 * l1 + 1.3 * cos_term, [predictions])):
        assert rel_err(got, want) <= REL_TOL

    valid = ~padding_mask(LENGTHS, frames)
    pred = predictions.detach().transpose(0, 1)[:, valid]
    target = torch.stack([teacher[layer].detach()[valid] for layer in PRED_LAYERS])
    s3prl_l1 = torch.nn.L1Loss()(pred, target)
    s3prl_cosine = -torch.nn.functional.logsigmoid(torch.nn.functional.cosine_similarity(pred, target, dim=-1)).mean()
    assert rel_err(terms["l1"], s3prl_l1) <= REL_TOL and rel_err(terms["cosine"], s3prl_cosine) <= REL_TOL


def test_distilhubert_heads_and_their_teacher_layers():
    """One Linear-GELU-Linear head per predicted layer on the student's last layer (s3prl's
    expand-last output layer, slice by slice); the default layers are thirds of the teacher depth."""
    loss_fn = DistilHubertLoss(DistilHubertLossConfig(), student_dim=D_S, teacher_dim=D_T, teacher_layers=12)
    assert loss_fn.pred_layers == [4, 8, 12]
    assert [default_pred_layers(depth) for depth in (24, 2, 1)] == [[8, 16, 24], [1, 2], [1]]
    student_last = torch.randn(2, 5, D_S)
    predictions = loss_fn.predict(student_last)
    assert predictions.shape == (2, 3, 5, D_T) and predictions.dtype == torch.float32
    for k, head in enumerate(loss_fn.heads):
        first, second = head[0], head[2]
        expected = second(torch.nn.functional.gelu(first(student_last)))
        torch.testing.assert_close(predictions[:, k], expected)
    assert sorted(loss_fn.state_dict()) == sorted(
        f"heads.{k}.{i}.{name}" for k in range(3) for i in (0, 2) for name in ("weight", "bias"))
    with pytest.raises(ValueError, match=r"pred_layers: \[13\] beyond the teacher's 12 layers"):
        DistilHubertLoss(DistilHubertLossConfig(pred_layers=[4, 13]), D_S, D_T, teacher_layers=12)


def test_distilhubert_sums_with_global_denominators_give_the_full_batch_loss():
    """Two halves of a batch as two DDP ranks: each total over the all-reduced denominators, summed,
    is the full batch's loss (the halves hold different numbers of valid frames)."""
    loss_fn = DistilHubertLoss(DistilHubertLossConfig(pred_layers=PRED_LAYERS), D_S, D_T, teacher_layers=LAYERS)
    teacher, predictions = distilhubert_inputs(LENGTHS, max(LENGTHS), 1)
    mask = padding_mask(LENGTHS)
    full, _ = loss_fn(teacher, predictions, mask)
    halves = [loss_fn.sums([f[part] for f in teacher], predictions[part], mask[part]) for part in (slice(0, 1), slice(1, 4))]
    for name in halves[0].denominators:
        reduced = halves[0].denominators[name] + halves[1].denominators[name]
        for sums in halves:
            sums.denominators[name] = reduced
    assert rel_err(sum(loss_fn.combine(sums)[0] for sums in halves), full) <= REL_TOL


def test_distilhubert_config_validation_names_the_field():
    assert DistilHubertLossConfig.from_dict({"pred_layers": [4, 8, 12]}).to_dict() == {
        "pred_layers": [4, 8, 12], "l1_weight": 1.0, "cosine_weight": 1.0}
    for values, message in (
        ({"pred_layer": [4]}, r"unknown keys \['pred_layer'\]"),
        ({"intra_weight": 1.0}, r"unknown keys \['intra_weight'\]"),
        ({"pred_layers": [0, 4]}, r"pred_layers: expected a non-empty list of teacher layers >= 1"),
        ({"pred_layers": []}, r"pred_layers: expected a non-empty list"),
        ({"pred_layers": [4, 4]}, r"pred_layers: a layer is listed twice"),
        ({"cosine_weight": "1"}, r"cosine_weight: expected a number"),
        ({"l1_weight": -1.0}, r"l1_weight: expected a finite number >= 0"),
        ({"l1_weight": 0, "cosine_weight": 0}, r"at least one of l1_weight, cosine_weight must be > 0"),
    ):
        with pytest.raises(ValueError, match=message):
            DistilHubertLossConfig.from_dict(values)

"""Losses against plain per-triplet loops (float64), gradients, registry, presets and errors."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from tscm.errors import TscmError
from tscm.losses import (
    DISTILLATION_PRESETS,
    LOSSES,
    TupleDescriptors,
    WeightedSum,
    build_loss,
    build_preset,
)

BATCH, NEGATIVES, DIM = 4, 5, 6
# Real negatives per tuple: some tuples have fewer than NEGATIVES (the rest is padding).
REAL_COUNTS = [5, 2, 1, 3]


def random_tuples(seed: int, dim: int = DIM) -> TupleDescriptors:
    generator = torch.Generator().manual_seed(seed)
    flat = torch.randn(BATCH * (NEGATIVES + 2), dim, generator=generator, dtype=torch.float64)
    mask = torch.zeros(BATCH, NEGATIVES, dtype=torch.bool)
    for row, count in enumerate(REAL_COUNTS):
        mask[row, :count] = True
    return TupleDescriptors.from_flat(flat, NEGATIVES, mask)


def real_negatives(tuples: TupleDescriptors, row: int) -> list[torch.Tensor]:
    return [tuples.negatives[row, j] for j in range(NEGATIVES) if tuples.negative_mask[row, j]]


def sq(x: torch.Tensor, y: torch.Tensor) -> float:
    return sum((float(a) - float(b)) ** 2 for a, b in zip(x, y))


def euclid(x: torch.Tensor, y: torch.Tensor) -> float:
    return math.sqrt(sq(x, y))


def tuple_mean(values_per_tuple: list[list[float]]) -> float:
    return sum(sum(v) / len(v) for v in values_per_tuple) / len(values_per_tuple)


def triplet_mean(values_per_tuple: list[list[float]]) -> float:
    flat = [v for values in values_per_tuple for v in values]
    return sum(flat) / len(flat)


def reference_triplet(s: TupleDescriptors, margin: float) -> list[list[float]]:
    return [
        [max(0.0, margin + euclid(s.anchor[b], s.positive[b]) - euclid(s.anchor[b], n)) for n in real_negatives(s, b)]
        for b in range(BATCH)
    ]


def reference_soft(s: TupleDescriptors, t: TupleDescriptors) -> float:
    per_tuple = []
    for b in range(BATCH):
        negative_terms = [sq(sn, tn) for sn, tn in zip(real_negatives(s, b), real_negatives(t, b))]
        per_tuple.append(sq(s.anchor[b], t.anchor[b]) + sq(s.positive[b], t.positive[b]) + sum(negative_terms) / len(negative_terms))
    return sum(per_tuple) / BATCH


def reference_cross_metric(s: TupleDescriptors, t: TupleDescriptors) -> float:
    return sum(sq(s.anchor[b], t.positive[b]) + sq(s.positive[b], t.anchor[b]) for b in range(BATCH)) / BATCH


FIVE_TERMS = ("SaTp", "SpTa", "SaTa", "SpTp", "SnTn")


def reference_squared_hinge(
    s: TupleDescriptors, t: TupleDescriptors, margin: float, terms: tuple[str, ...] = FIVE_TERMS
) -> list[list[float]]:
    values = []
    for b in range(BATCH):
        row = []
        for sn, tn in zip(real_negatives(s, b), real_negatives(t, b)):
            distances = {
                "SaTp": sq(s.anchor[b], t.positive[b]),
                "SpTa": sq(s.positive[b], t.anchor[b]),
                "SaTa": sq(s.anchor[b], t.anchor[b]),
                "SpTp": sq(s.positive[b], t.positive[b]),
                "SnTn": sq(sn, tn),
            }
            inner = margin + sum(distances[name] for name in terms)
            row.append(0.5 * max(0.0, inner) ** 2)
        values.append(row)
    return values


def images(tuples: TupleDescriptors) -> list[torch.Tensor]:
    out = []
    for b in range(BATCH):
        out += [tuples.anchor[b], tuples.positive[b]]
    for b in range(BATCH):
        out += real_negatives(tuples, b)
    return out


def huber(x: float) -> float:
    return 0.5 * x * x if abs(x) < 1.0 else abs(x) - 0.5


def reference_rkd(s: TupleDescriptors, t: TupleDescriptors) -> tuple[float, float]:
    # Images in any consistent order: RKD pools every real image of the batch.
    s_points, t_points = images(s), images(t)
    n = len(s_points)
    pairs = [(i, j) for i in range(n) for j in range(n) if i != j]

    def mean_distance(points):
        return sum(euclid(points[i], points[j]) for i, j in pairs) / len(pairs)

    s_mu, t_mu = mean_distance(s_points), mean_distance(t_points)
    distance = sum(
        huber(euclid(s_points[i], s_points[j]) / s_mu - euclid(t_points[i], t_points[j]) / t_mu) for i, j in pairs
    ) / len(pairs)

    def cosine(points, i, j, k):
        u = [float(a) - float(b) for a, b in zip(points[i], points[j])]
        v = [float(a) - float(b) for a, b in zip(points[k], points[j])]
        return sum(a * b for a, b in zip(u, v)) / (math.sqrt(sum(a * a for a in u)) * math.sqrt(sum(b * b for b in v)))

    triples = [(i, j, k) for i, j, k in itertools.product(range(n), repeat=3) if len({i, j, k}) == 3]
    angle = sum(huber(cosine(s_points, *ijk) - cosine(t_points, *ijk)) for ijk in triples) / len(triples)
    return distance, angle


@pytest.mark.parametrize("margin", [0.1, 2.5])
def test_triplet_matches_loop_both_reductions(margin: float) -> None:
    student = random_tuples(0)
    per_triplet = reference_triplet(student, margin)
    active = [v > 0 for row in per_triplet for v in row]
    assert any(active) and (margin > 1 or not all(active))  # margin 0.1 exercises both sides of the hinge
    for reduction, expected in (("tuple", tuple_mean(per_triplet)), ("triplet", triplet_mean(per_triplet))):
        total, parts = build_loss("triplet", margin=margin, reduction=reduction)(student, None)
        assert total.item() == pytest.approx(expected, rel=1e-10, abs=1e-12)
        assert parts["triplet"].item() == pytest.approx(expected, rel=1e-10, abs=1e-12)
    assert tuple_mean(per_triplet) != pytest.approx(triplet_mean(per_triplet))  # the two reductions differ here


def test_triplet_matches_torch_triplet_margin_loss() -> None:
    student = random_tuples(7)
    expected = []
    for b in range(BATCH):
        row = [
            torch.nn.functional.triplet_margin_loss(
                student.anchor[b : b + 1], student.positive[b : b + 1], n.unsqueeze(0), margin=0.1, eps=0.0
            ).item()
            for n in real_negatives(student, b)
        ]
        expected.append(row)
    total, _ = build_loss("triplet")(student, None)
    assert total.item() == pytest.approx(tuple_mean(expected), rel=1e-9)


def test_distillation_losses_match_loops() -> None:
    student, teacher = random_tuples(1), random_tuples(2)
    soft, _ = build_loss("soft")(student, teacher)
    assert soft.item() == pytest.approx(reference_soft(student, teacher), rel=1e-10)
    cm, _ = build_loss("cross_metric")(student, teacher)
    assert cm.item() == pytest.approx(reference_cross_metric(student, teacher), rel=1e-10)
    for margin in (0.1, 1.0):
        per_triplet = reference_squared_hinge(student, teacher, margin)
        for reduction, expected in (("tuple", tuple_mean(per_triplet)), ("triplet", triplet_mean(per_triplet))):
            hinge, _ = build_loss("squared_hinge", margin=margin, reduction=reduction)(student, teacher)
            assert hinge.item() == pytest.approx(expected, rel=1e-10)
    regression, _ = build_loss("regression")(student, teacher)
    pairs = list(zip(images(student), images(teacher)))
    assert regression.item() == pytest.approx(sum(sq(s, t) for s, t in pairs) / len(pairs), rel=1e-10)


PUBLISHED_VARIANTS = {
    "SaTp+SpTa": ("SaTp", "SpTa"),
    "SaTa+SpTp+SnTn": ("SaTa", "SpTp", "SnTn"),
    "SpTp+SnTn": ("SpTp", "SnTn"),
    "tscm-published": FIVE_TERMS,
}


@pytest.mark.parametrize("preset", list(PUBLISHED_VARIANTS))
@pytest.mark.parametrize("reduction", ["tuple", "triplet"])
def test_published_variants_match_loop(preset: str, reduction: str) -> None:
    """Each published variant = triplet + its squared hinge, against per-triplet loops (REAL_COUNTS vary)."""
    student, teacher = random_tuples(21), random_tuples(22)
    terms = PUBLISHED_VARIANTS[preset]
    average = tuple_mean if reduction == "tuple" else triplet_mean
    expected_hinge = average(reference_squared_hinge(student, teacher, 0.1, terms))
    hinge, _ = build_loss("squared_hinge", terms=terms, reduction=reduction)(student, teacher)
    assert hinge.item() == pytest.approx(expected_hinge, rel=1e-10)
    total, parts = build_preset(preset, reduction=reduction)(student, teacher)
    expected_triplet = average(reference_triplet(student, 0.1))
    assert parts["squared_hinge"].item() == pytest.approx(expected_hinge, rel=1e-10)
    assert parts["triplet"].item() == pytest.approx(expected_triplet, rel=1e-10, abs=1e-12)
    assert total.item() == pytest.approx(expected_triplet + expected_hinge, rel=1e-10)


def test_hinge_terms_option() -> None:
    student, teacher = random_tuples(23), random_tuples(24)
    five, _ = build_loss("squared_hinge")(student, teacher)
    spelled, _ = build_loss("squared_hinge", terms="SnTn+SaTp+SpTa+SaTa+SpTp")(student, teacher)
    assert spelled.item() == pytest.approx(five.item(), rel=1e-12)  # default = all five, order-free
    assert build_loss("squared_hinge", terms=["SpTp", "SaTa"]).terms == ("SaTa", "SpTp")
    # Without SnTn every negative of a tuple has the same value, so the reductions differ only by weighting.
    per_tuple = [row[0] for row in reference_squared_hinge(student, teacher, 0.1, ("SaTp", "SpTa"))]
    value, _ = build_loss("squared_hinge", terms="SaTp+SpTa", reduction="triplet")(student, teacher)
    weighted = sum(v * n for v, n in zip(per_tuple, REAL_COUNTS)) / sum(REAL_COUNTS)
    assert value.item() == pytest.approx(weighted, rel=1e-10)
    for bad in ("SaTn", "", ["SaTp", "SaTp"], ()):
        with pytest.raises(TscmError, match="squared_hinge terms"):
            build_loss("squared_hinge", terms=bad)


def test_presets_resolve_to_their_terms_and_options() -> None:
    from tscm.losses import PUBLISHED_ROWS, preset_terms

    assert PUBLISHED_ROWS == ("SaTp+SpTa", "SaTa+SpTp+SnTn", "SpTp+SnTn", "tscm-published")
    assert all(row in DISTILLATION_PRESETS for row in PUBLISHED_ROWS)
    for preset, terms in PUBLISHED_VARIANTS.items():
        loss = build_preset(preset)
        assert list(loss.terms) == ["triplet", "squared_hinge"]
        assert loss.terms["squared_hinge"].terms == terms
        assert loss.needs_teacher and not loss.needs_uncertainty
    assert preset_terms("SpTp+SnTn") == [("triplet", 1.0, {}), ("squared_hinge", 1.0, {"terms": ("SpTp", "SnTn")})]
    assert preset_terms("tscm-published") == [("triplet", 1.0, {}), ("squared_hinge", 1.0, {})]  # unchanged
    stun = build_preset("stun")
    assert list(stun.terms) == ["triplet", "stun"] and stun.needs_teacher and stun.needs_uncertainty
    # Options add to the preset's own; `reduction` reaches every term that averages over negatives.
    loss = build_preset("SaTa+SpTp+SnTn", options={"triplet": {"margin": 0.3}}, reduction="triplet")
    assert loss.terms["triplet"].margin == 0.3
    assert loss.terms["triplet"].reduction == loss.terms["squared_hinge"].reduction == "triplet"
    assert loss.terms["squared_hinge"].terms == ("SaTa", "SpTp", "SnTn")
    loss = build_preset("tscm", reduction="triplet", weights={"squared_hinge": 1.0})
    assert loss.terms["squared_hinge"].reduction == "triplet" and "reduction" not in vars(loss.terms["soft"])
    assert build_preset("none").terms["triplet"].reduction == "tuple"  # None: the terms' default
    kept = build_preset("tscm-published", options={"squared_hinge": {"reduction": "tuple"}}, reduction="triplet")
    assert kept.terms["squared_hinge"].reduction == "tuple" and kept.terms["triplet"].reduction == "triplet"
    with pytest.raises(TscmError, match="reduction"):
        build_preset("none", reduction="batch")


def test_rkd_matches_loop_with_different_teacher_size() -> None:
    student, teacher = random_tuples(3), random_tuples(4, dim=DIM + 3)
    expected_distance, expected_angle = reference_rkd(student, teacher)
    total, parts = build_loss("rkd", distance_weight=1.5, angle_weight=2.0)(student, teacher)
    assert parts["rkd_distance"].item() == pytest.approx(expected_distance, rel=1e-9)
    assert parts["rkd_angle"].item() == pytest.approx(expected_angle, rel=1e-9)
    assert total.item() == pytest.approx(1.5 * expected_distance + 2.0 * expected_angle, rel=1e-9)


def test_padding_is_ignored() -> None:
    """Changing padded negatives (mask False) changes no loss."""
    student, teacher = random_tuples(5), random_tuples(6)
    noisy_student = TupleDescriptors(
        student.anchor, student.positive, torch.where(student.negative_mask[..., None], student.negatives, 1e3), student.negative_mask
    )
    noisy_teacher = TupleDescriptors(
        teacher.anchor, teacher.positive, torch.where(teacher.negative_mask[..., None], teacher.negatives, -1e3), teacher.negative_mask
    )
    for name in ("triplet", "soft", "cross_metric", "squared_hinge", "regression", "rkd"):
        loss = build_loss(name)
        assert loss(noisy_student, noisy_teacher)[0].item() == pytest.approx(loss(student, teacher)[0].item(), rel=1e-12)


@pytest.mark.parametrize("name", ["triplet", "soft", "cross_metric", "squared_hinge", "regression", "rkd"])
def test_gradients_flow_to_student_only_through_real_images(name: str) -> None:
    flat = torch.randn(BATCH * (NEGATIVES + 2), DIM, dtype=torch.float64, requires_grad=True)
    student = TupleDescriptors.from_flat(flat, NEGATIVES, random_tuples(8).negative_mask)
    teacher = random_tuples(9)
    total, parts = build_loss(name)(student, teacher)
    total.backward()
    grad = flat.grad.reshape(BATCH, NEGATIVES + 2, DIM)
    assert torch.isfinite(grad).all()
    assert grad[:, 0].abs().sum() > 0  # anchors always receive gradient
    padding = ~student.negative_mask
    assert (grad[:, 2:][padding] == 0).all()
    assert all(not value.requires_grad for value in parts.values())


@pytest.mark.parametrize("name", ["triplet", "soft", "squared_hinge", "rkd"])
def test_gradients_match_finite_differences(name: str) -> None:
    mask = random_tuples(0).negative_mask
    teacher = random_tuples(13)
    loss = build_loss(name)

    def value(flat: torch.Tensor) -> torch.Tensor:
        return loss(TupleDescriptors.from_flat(flat, NEGATIVES, mask), teacher)[0]

    flat = torch.randn(BATCH * (NEGATIVES + 2), DIM, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(value, (flat,), fast_mode=True)


def test_gradient_is_finite_when_descriptors_coincide() -> None:
    flat = torch.randn(1 * 4, DIM, dtype=torch.float64)
    flat[1] = flat[0]  # positive equals anchor
    flat[3] = flat[2]  # two identical negatives
    flat.requires_grad_(True)
    student = TupleDescriptors.from_flat(flat, 2)
    for name in ("triplet", "rkd"):
        flat.grad = None
        total, _ = build_loss(name)(student, TupleDescriptors.from_flat(flat.detach() + 0.1, 2))
        total.backward()
        assert torch.isfinite(flat.grad).all()


def test_missing_teacher_is_an_error() -> None:
    student = random_tuples(10)
    for name in ("soft", "cross_metric", "squared_hinge", "regression", "rkd"):
        with pytest.raises(TscmError, match=name):
            build_loss(name)(student, None)
    with pytest.raises(TscmError, match="teacher"):
        build_preset("tscm")(student, None)
    # triplet-only needs no teacher, even through a preset
    total, parts = build_preset("none")(student, None)
    assert set(parts) == {"triplet", "total"}


def test_mismatched_teacher_is_an_error() -> None:
    with pytest.raises(TscmError, match="descriptor sizes"):
        build_loss("soft")(random_tuples(0), random_tuples(1, dim=DIM + 1))


def test_registry_and_presets() -> None:
    assert {"triplet", "soft", "cross_metric", "squared_hinge", "regression", "rkd", "stun", "listwise",
            "weighted_sum"} <= set(LOSSES)
    assert set(DISTILLATION_PRESETS) == {
        "none", "soft", "cm", "soft+cm", "tscm", "tscm-published", "regression", "rkd",
        "SaTp+SpTa", "SaTa+SpTp+SnTn", "SpTp+SnTn", "stun", "listwise", "listwise+regression",
    }
    with pytest.raises(TscmError, match="unknown loss"):
        build_loss("contrastive")
    with pytest.raises(TscmError, match="bad options"):
        build_loss("triplet", margn=0.1)
    with pytest.raises(TscmError, match="unknown distillation preset"):
        build_preset("paper")
    student, teacher = random_tuples(11), random_tuples(12)
    # The paper's total is the plain sum of its three terms.
    total, parts = build_preset("tscm")(student, teacher)
    terms = [build_loss(name)(student, teacher)[0] for name in ("triplet", "soft", "cross_metric")]
    assert total.item() == pytest.approx(sum(t.item() for t in terms), rel=1e-12)
    assert set(parts) == {"triplet", "soft", "cross_metric", "total"}
    # Weights and per-term options are configuration.
    weighted = WeightedSum({"triplet": 2.0, "squared_hinge": 0.5, "rkd": 0.0}, {"triplet": {"margin": 0.3}})
    value, parts = weighted(student, teacher)
    expected = 2.0 * build_loss("triplet", margin=0.3)(student, teacher)[0] + 0.5 * build_loss("squared_hinge")(student, teacher)[0]
    assert value.item() == pytest.approx(expected.item(), rel=1e-12)
    assert "rkd_distance" not in parts  # zero weight: not computed
    overridden, _ = build_preset("tscm-published", weights={"squared_hinge": 3.0})(student, teacher)
    expected = terms[0] + 3.0 * build_loss("squared_hinge")(student, teacher)[0]
    assert overridden.item() == pytest.approx(expected.item(), rel=1e-12)
    with pytest.raises(TscmError, match="not terms"):
        WeightedSum({"triplet": 1.0}, {"soft": {}})


def test_tuple_descriptors_validation() -> None:
    flat = torch.randn(2 * 5, DIM)
    tuples = TupleDescriptors.from_flat(flat, 3)
    assert torch.equal(tuples.negatives[1, 2], flat[9]) and torch.equal(tuples.positive[1], flat[6])
    with pytest.raises(TscmError, match="whole number of tuples"):
        TupleDescriptors.from_flat(flat, 2)
    mask = torch.tensor([[True, False, False], [False, False, False]])
    with pytest.raises(TscmError, match="at least one real negative"):
        TupleDescriptors.from_flat(flat, 3, mask)
    with pytest.raises(TscmError, match="negative_mask"):
        TupleDescriptors.from_flat(flat, 3, mask.int())

"""STUN distillation against its formula written out by hand on one tiny tuple; uncertainty plumbing."""

from __future__ import annotations

import math

import pytest
import torch

from tscm.errors import TscmError
from tscm.losses import TupleDescriptors, build_loss, build_preset

MASK = torch.tensor([[True, False]])  # one tuple: anchor, positive, one real negative, one padded
# Rows [a, p, n1, n2(padding)]: δ = ‖S − T‖ is 5, 1, 2 for the real images.
STUDENT = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0], [9.0, 9.0]], dtype=torch.float64)
TEACHER = torch.tensor([[3.0, 4.0], [1.0, 2.0], [0.0, -1.0], [-9.0, 9.0]], dtype=torch.float64)
SIGMOID = [[0.0, 0.5], [1.0, 0.25], [0.1, 0.9], [0.7, 0.7]]  # the uncertainty head's outputs, per row
DELTAS = [5.0, 1.0, 2.0]


def tuples(sigmoid: torch.Tensor | None = None) -> tuple[TupleDescriptors, TupleDescriptors]:
    sigmoid = torch.tensor(SIGMOID, dtype=torch.float64) if sigmoid is None else sigmoid
    return TupleDescriptors.from_flat(STUDENT, 2, MASK, uncertainty=sigmoid), TupleDescriptors.from_flat(TEACHER, 2, MASK)


def hand_formula(shift: bool, squared: bool) -> float:
    values = []
    for delta, outputs in zip(DELTAS, SIGMOID[:3]):
        distance = delta**2 if squared else delta
        for s in outputs:
            log_variance = min(1.0, max(0.0, 10 * s + 0.2)) if shift else s
            values.append(distance / math.exp(log_variance) + log_variance)
    return sum(values) / len(values)


@pytest.mark.parametrize("shift", [True, False])
@pytest.mark.parametrize("distance", ["euclidean", "squared"])
def test_stun_matches_hand_formula(shift: bool, distance: str) -> None:
    student, teacher = tuples()
    total, parts = build_loss("stun", shift=shift, distance=distance)(student, teacher)
    expected = hand_formula(shift, distance == "squared")
    assert total.item() == pytest.approx(expected, rel=1e-12)
    assert parts["stun"].item() == pytest.approx(expected, rel=1e-12) and not parts["stun"].requires_grad


def test_stun_defaults_follow_stuns_released_code() -> None:
    student, teacher = tuples()
    loss = build_loss("stun")
    assert loss.shift and loss.distance == "euclidean" and loss.needs_teacher and loss.needs_uncertainty
    assert loss(student, teacher)[0].item() == pytest.approx(hand_formula(True, False), rel=1e-12)


@pytest.mark.parametrize("shift", [False, True])
def test_stun_gradient_reaches_the_uncertainty(shift: bool) -> None:
    sigmoid = torch.tensor(SIGMOID, dtype=torch.float64, requires_grad=True)
    student, teacher = tuples(sigmoid)
    total, _ = build_loss("stun", shift=shift)(student, teacher)
    total.backward()
    grad = sigmoid.grad
    assert (grad[3] == 0).all()  # padding
    count = 6  # 3 real images × 2 dimensions
    for row, delta in enumerate(DELTAS):
        for u, s in enumerate(SIGMOID[row]):
            inner = 10 * s + 0.2
            if not shift:
                expected = (1 - delta * math.exp(-s)) / count
            elif 0.0 < inner < 1.0:  # d/ds of (δ e^{-l} + l), l = 10 s + 0.2
                expected = 10 * (1 - delta * math.exp(-inner)) / count
            else:  # the clamp holds l at 0 or 1
                expected = 0.0
            assert grad[row, u].item() == pytest.approx(expected, rel=1e-10, abs=1e-15)
    assert grad[0, 0] != 0  # s = 0 → l = 0.2: inside the clamp even with the shift


def test_stun_scalar_uncertainty_and_assigned_field() -> None:
    """U = 1 is a scalar variance per image; the field may be assigned after construction (as the trainer does)."""
    student, teacher = tuples()
    scalar = torch.tensor([[0.3], [0.6], [0.9], [0.0]], dtype=torch.float64)
    student.uncertainty = TupleDescriptors.from_flat(scalar, 2, MASK)
    total, _ = build_loss("stun", shift=False)(student, teacher)
    expected = sum(d * math.exp(-s) + s for d, s in zip(DELTAS, (0.3, 0.6, 0.9))) / 3
    assert total.item() == pytest.approx(expected, rel=1e-12)


def test_stun_preset_is_triplet_plus_stun() -> None:
    student, teacher = tuples()
    loss = build_preset("stun")
    assert loss.needs_uncertainty and loss.needs_teacher
    total, parts = loss(student, teacher)
    assert set(parts) == {"triplet", "stun", "total"}
    assert total.item() == pytest.approx(parts["triplet"].item() + hand_formula(False, False), rel=1e-12)  # shift off


def test_missing_or_mismatched_uncertainty_is_an_error() -> None:
    student, teacher = tuples()
    plain = TupleDescriptors.from_flat(STUDENT, 2, MASK)
    with pytest.raises(TscmError, match=r"loss 'stun' needs the student's uncertainty"):
        build_loss("stun")(plain, teacher)
    with pytest.raises(TscmError, match=r"loss 'stun' needs the student's uncertainty"):
        build_preset("stun")(plain, teacher)
    with pytest.raises(TscmError, match="stun"):
        build_loss("stun")(student, None)
    with pytest.raises(TscmError, match="flat uncertainty"):
        TupleDescriptors.from_flat(STUDENT, 2, MASK, uncertainty=torch.zeros(3, 2))
    other_mask = TupleDescriptors.from_flat(torch.zeros(4, 2), 2, torch.tensor([[True, True]]))
    with pytest.raises(TscmError, match="TupleDescriptors.uncertainty"):
        TupleDescriptors(plain.anchor, plain.positive, plain.negatives, MASK, other_mask)
    plain.uncertainty = torch.zeros(4, 2)  # assigned, not TupleDescriptors
    with pytest.raises(TscmError, match="expected TupleDescriptors or None"):
        build_loss("stun")(plain, teacher)
    with pytest.raises(TscmError, match="distance"):
        build_loss("stun", distance="cosine")
    # Losses that do not need it ignore the uncertainty.
    without = TupleDescriptors.from_flat(STUDENT, 2, MASK)
    assert build_loss("soft")(student, teacher)[0].item() == pytest.approx(build_loss("soft")(without, teacher)[0].item())

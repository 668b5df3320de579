"""The listwise ranking term against a plain per-image loop; extra (teaching) images; weights and schedules."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tscm.errors import TscmError
from tscm.losses import TupleDescriptors, build_loss, build_preset, parse_weights

DIM = 8


def tuples(seed: int, dim: int = DIM, extra: int = 0) -> TupleDescriptors:
    generator = torch.Generator().manual_seed(seed)

    def unit(*shape: int) -> torch.Tensor:
        return F.normalize(torch.randn(*shape, dim, generator=generator, dtype=torch.float64), dim=-1)

    mask = torch.tensor([[True, True, False], [True, True, True]])
    return TupleDescriptors(unit(2), unit(2), unit(2, 3), mask, extra=unit(extra) if extra else None)


def reference_listwise(student: TupleDescriptors, teacher: TupleDescriptors, temperature: float) -> float:
    s, t = student.all_descriptors(), teacher.all_descriptors()
    count, total = s.shape[0], 0.0
    for i in range(count):
        others = [j for j in range(count) if j != i]
        ps = [math.exp(float(s[i] @ s[j]) / temperature) for j in others]
        pt = [math.exp(float(t[i] @ t[j]) / temperature) for j in others]
        ps = [p / sum(ps) for p in ps]
        pt = [p / sum(pt) for p in pt]
        total += sum(b * (math.log(b) - math.log(a)) for a, b in zip(ps, pt))
    return total / count


@pytest.mark.parametrize("extra", [0, 3])
@pytest.mark.parametrize("temperature", [0.05, 0.5])
def test_listwise_matches_loop(extra: int, temperature: float) -> None:
    student, teacher = tuples(1, extra=extra), tuples(2, dim=DIM + 4, extra=extra)  # sizes may differ
    value, parts = build_loss("listwise", temperature=temperature)(student, teacher)
    assert value.item() == pytest.approx(reference_listwise(student, teacher, temperature), rel=1e-9)
    assert set(parts) == {"listwise"}


def test_listwise_is_zero_for_the_teacher_itself_and_has_no_teacher_gradient() -> None:
    teacher = tuples(3, extra=2)
    value, _ = build_loss("listwise")(teacher, teacher)
    assert abs(value.item()) < 1e-12
    student = tuples(4, extra=2)
    teacher.anchor.requires_grad_(True)
    student.anchor.requires_grad_(True)
    value, _ = build_loss("listwise")(student, teacher)
    value.backward()
    assert teacher.anchor.grad is None and student.anchor.grad is not None


def test_extra_images_join_the_per_image_terms_only() -> None:
    plain, teacher_plain = tuples(5), tuples(6)
    with_extra, teacher_extra = tuples(5, extra=4), tuples(6, extra=4)
    # Tuple terms ignore extra images; regression averages over every image.
    assert build_loss("triplet")(with_extra)[0].item() == pytest.approx(build_loss("triplet")(plain)[0].item())
    assert build_loss("soft")(with_extra, teacher_extra)[0].item() == pytest.approx(
        build_loss("soft")(plain, teacher_plain)[0].item())
    images = with_extra.all_descriptors()
    targets = teacher_extra.all_descriptors()
    expected = sum(float((a - b).pow(2).sum()) for a, b in zip(images, targets)) / len(images)
    assert build_loss("regression")(with_extra, teacher_extra)[0].item() == pytest.approx(expected, rel=1e-12)
    assert [build_preset(name).reads_extra_images for name in ("none", "tscm", "regression", "rkd", "listwise")] == [
        False, False, True, True, True]
    with pytest.raises(TscmError, match="extra"):
        build_loss("regression")(with_extra, teacher_plain)
    with pytest.raises(TscmError, match="extra"):
        TupleDescriptors(plain.anchor, plain.positive, plain.negatives, plain.negative_mask,
                         extra=torch.zeros(2, DIM + 1))


def test_weights_and_teacher_scale() -> None:
    assert parse_weights("") == {}
    assert parse_weights("listwise=2, regression=0.5") == {"listwise": 2.0, "regression": 0.5}
    for bad in ("listwise", "lisstwise=1", "listwise=-1", "listwise=nan", "listwise=x"):
        with pytest.raises(TscmError, match="loss.weights"):
            parse_weights(bad)
    student, teacher = tuples(7, extra=2), tuples(8, extra=2)
    loss = build_preset("listwise+regression", weights=parse_weights("listwise=2"))
    triplet = build_loss("triplet")(student)[0].item()
    listwise = build_loss("listwise")(student, teacher)[0].item()
    regression = build_loss("regression")(student, teacher)[0].item()
    assert loss(student, teacher)[0].item() == pytest.approx(triplet + 2 * listwise + regression, rel=1e-12)
    loss.teacher_scale = 0.25  # scales the terms that read the teacher, never L_hard
    assert loss(student, teacher)[0].item() == pytest.approx(triplet + 0.25 * (2 * listwise + regression), rel=1e-12)

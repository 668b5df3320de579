"""The published training code's distillation term: a squared hinge over a set of L_soft/L_cm distances."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from tscm.errors import TscmError
from tscm.losses.base import (
    DistillationLoss,
    TupleDescriptors,
    check_reduction,
    reduce_over_negatives,
    squared_distance,
)
from tscm.losses.registry import register_loss

# Term names as in the published code: S = student, T = teacher; a, p, n = anchor, positive, negative.
# SaTp means d(S(a), T(p)). SaTp+SpTa is L_cm, SaTa+SpTp+SnTn is L_soft.
HINGE_TERMS = ("SaTp", "SpTa", "SaTa", "SpTp", "SnTn")


def check_terms(terms: str | Iterable[str]) -> tuple[str, ...]:
    """The distance terms as a tuple in the order of HINGE_TERMS; `terms` is names or a "+"-joined string."""
    names = terms.split("+") if isinstance(terms, str) else list(terms)
    unknown = [name for name in names if name not in HINGE_TERMS]
    if not names or unknown or len(set(names)) != len(names):
        raise TscmError(
            f"squared_hinge terms: expected distinct names from {'+'.join(HINGE_TERMS)} (at least one), got {terms!r}"
        )
    return tuple(name for name in HINGE_TERMS if name in names)


@register_loss("squared_hinge")
class PublishedSquaredHingeLoss(DistillationLoss):
    """Per (a, p, n_j): 0.5·max(0, margin + Σ of the chosen distances)², d = ‖x−y‖², averaged over
    negatives (`reduction` as in TripletLoss).

    `terms` picks the distances (names in HINGE_TERMS, or one "+"-joined string). The default, all
    five, is what the published training code optimises: d(S(a),T(p)) + d(S(p),T(a)) + d(S(a),T(a))
    + d(S(p),T(p)) + d(S(n_j),T(n_j)). The published variants SaTp+SpTa, SaTa+SpTp+SnTn and
    SpTp+SnTn sit inside the same hinge. Without SnTn the value is the same for every negative of a
    tuple, but it is still averaged per (a, p, n_j), as published (this matters for "triplet").
    Every distance is ≥ 0 and the margin is positive, so the hinge never clips: it is a squared
    sum, kept in the published form. The published total is triplet + this term.
    """

    needs_teacher = True

    def __init__(self, margin: float = 0.1, reduction: str = "tuple", terms: str | Iterable[str] = HINGE_TERMS) -> None:
        super().__init__()
        self.margin = float(margin)
        self.reduction = check_reduction(reduction)
        self.terms = check_terms(terms)

    def forward(self, student: TupleDescriptors, teacher: TupleDescriptors | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        teacher = self._checked_teacher(student, teacher)
        pairs = {
            "SaTp": (student.anchor, teacher.positive),
            "SpTa": (student.positive, teacher.anchor),
            "SaTa": (student.anchor, teacher.anchor),
            "SpTp": (student.positive, teacher.positive),
        }
        per_negative = torch.zeros(student.negative_mask.shape, dtype=student.anchor.dtype, device=student.anchor.device)
        for name in self.terms:
            if name == "SnTn":
                per_negative = per_negative + squared_distance(student.negatives, teacher.negatives)
            else:
                per_negative = per_negative + squared_distance(*pairs[name]).unsqueeze(1)
        hinge = 0.5 * (self.margin + per_negative).clamp_min(0).pow(2)
        total = reduce_over_negatives(hinge, student.negative_mask, self.reduction)
        return total, {self.name: total.detach()}

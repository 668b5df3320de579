"""The published training code's distillation term: a squared hinge over the five L_soft/L_cm distances."""

from __future__ import annotations

from torch import Tensor

from tscm.losses.base import (
    DistillationLoss,
    TupleDescriptors,
    check_reduction,
    reduce_over_negatives,
    squared_distance,
)
from tscm.losses.registry import register_loss


@register_loss("squared_hinge")
class PublishedSquaredHingeLoss(DistillationLoss):
    """Per (a, p, n_j): 0.5·max(0, margin + d(S(a),T(p)) + d(S(p),T(a)) + d(S(a),T(a)) + d(S(p),T(p))
    + d(S(n_j),T(n_j)))², d = ‖x−y‖², averaged over negatives (`reduction` as in TripletLoss).

    Every distance is ≥ 0 and the margin is positive, so the hinge never clips: this is a squared
    sum, kept in the published form. The published total is triplet + this term.
    """

    needs_teacher = True

    def __init__(self, margin: float = 0.1, reduction: str = "tuple") -> None:
        super().__init__()
        self.margin = float(margin)
        self.reduction = check_reduction(reduction)

    def forward(self, student: TupleDescriptors, teacher: TupleDescriptors | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        teacher = self._checked_teacher(student, teacher)
        shared = (
            squared_distance(student.anchor, teacher.positive)
            + squared_distance(student.positive, teacher.anchor)
            + squared_distance(student.anchor, teacher.anchor)
            + squared_distance(student.positive, teacher.positive)
        )  # B
        per_negative = shared.unsqueeze(1) + squared_distance(student.negatives, teacher.negatives)  # B×K
        hinge = 0.5 * (self.margin + per_negative).clamp_min(0).pow(2)
        total = reduce_over_negatives(hinge, student.negative_mask, self.reduction)
        return total, {self.name: total.detach()}

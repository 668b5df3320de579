"""L_hard: the triplet margin loss on student descriptors."""

from __future__ import annotations

from torch import Tensor

from tscm.losses.base import (
    DistillationLoss,
    TupleDescriptors,
    check_reduction,
    euclidean_distance,
    reduce_over_negatives,
)
from tscm.losses.registry import register_loss


@register_loss("triplet")
class TripletLoss(DistillationLoss):
    """max(0, margin + ‖a−p‖ − ‖a−n_j‖) on student descriptors (Euclidean, not squared).

    Averaged over each tuple's real negatives, then over tuples (`reduction="tuple"`, the paper's
    "averaged over the tuple's negatives"); `reduction="triplet"` averages over every real
    (a, p, n_j) of the batch instead, which weighs tuples by their number of negatives.
    """

    def __init__(self, margin: float = 0.1, reduction: str = "tuple") -> None:
        super().__init__()
        self.margin = float(margin)
        self.reduction = check_reduction(reduction)

    def forward(self, student: TupleDescriptors, teacher: TupleDescriptors | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        positive_distance = euclidean_distance(student.anchor, student.positive)  # B
        negative_distance = euclidean_distance(student.anchor.unsqueeze(1), student.negatives)  # B×K
        hinge = (self.margin + positive_distance.unsqueeze(1) - negative_distance).clamp_min(0)
        total = reduce_over_negatives(hinge, student.negative_mask, self.reduction)
        return total, {self.name: total.detach()}

"""L_soft: the student's descriptor of each image should match the teacher's (same metric)."""

from __future__ import annotations

from torch import Tensor

from tscm.losses.base import DistillationLoss, TupleDescriptors, masked_mean_over_negatives, squared_distance
from tscm.losses.registry import register_loss


@register_loss("soft")
class SoftLoss(DistillationLoss):
    """d(S(a),T(a)) + d(S(p),T(p)) + d(S(n),T(n)) with d(x,y) = ‖x−y‖², averaged over tuples.

    Several negatives: the paper writes one negative term d(S(n),T(n)). Here it is the mean of
    d(S(n_j),T(n_j)) over the tuple's real negatives (padding excluded), so the negative term
    weighs as much as the anchor or positive term whatever the number of negatives.
    """

    needs_teacher = True

    def forward(self, student: TupleDescriptors, teacher: TupleDescriptors | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        teacher = self._checked_teacher(student, teacher)
        anchor_term = squared_distance(student.anchor, teacher.anchor)
        positive_term = squared_distance(student.positive, teacher.positive)
        negative_term = masked_mean_over_negatives(
            squared_distance(student.negatives, teacher.negatives), student.negative_mask
        )
        total = (anchor_term + positive_term + negative_term).mean()
        return total, {self.name: total.detach()}

"""L_cm: cross-metric distillation — the student's anchor should sit at the teacher's positive and vice versa."""

from __future__ import annotations

from torch import Tensor

from tscm.losses.base import DistillationLoss, TupleDescriptors, squared_distance
from tscm.losses.registry import register_loss


@register_loss("cross_metric")
class CrossMetricLoss(DistillationLoss):
    """d(S(a),T(p)) + d(S(p),T(a)) with d(x,y) = ‖x−y‖², averaged over tuples."""

    needs_teacher = True

    def forward(self, student: TupleDescriptors, teacher: TupleDescriptors | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        teacher = self._checked_teacher(student, teacher)
        per_tuple = squared_distance(student.anchor, teacher.positive) + squared_distance(student.positive, teacher.anchor)
        total = per_tuple.mean()
        return total, {self.name: total.detach()}

"""Plain descriptor regression (a comparison baseline): the student's descriptor should equal the teacher's."""

from __future__ import annotations

from torch import Tensor

from tscm.losses.base import DistillationLoss, TupleDescriptors, squared_distance
from tscm.losses.registry import register_loss


@register_loss("regression")
class RegressionLoss(DistillationLoss):
    """Mean of ‖S(x) − T(x)‖² over every image x of the step (anchors, positives, real negatives, extra images).

    Unlike L_soft, each image weighs the same, so tuples with more negatives weigh more.
    """

    needs_teacher = True
    reads_extra_images = True

    def forward(self, student: TupleDescriptors, teacher: TupleDescriptors | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        teacher = self._checked_teacher(student, teacher)
        total = squared_distance(student.all_descriptors(), teacher.all_descriptors()).mean()
        return total, {self.name: total.detach()}

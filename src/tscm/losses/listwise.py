"""Listwise ranking distillation: the student should rank every other image of the step as the teacher does."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from tscm.losses.base import DistillationLoss, TupleDescriptors
from tscm.losses.registry import register_loss


@register_loss("listwise")
class ListwiseLoss(DistillationLoss):
    """KL(teacher ‖ student) between softmax distributions over similarities, averaged over images.

    For every image i of the step (tuples' real images and extra images), p(j | i) = softmax over
    j ≠ i of ⟨x_i, x_j⟩ / temperature, for the teacher's and the student's descriptors; the loss is
    the mean over i of Σ_j p_T(j|i) (log p_T(j|i) − log p_S(j|i)). It transfers the teacher's ranking
    of the whole step (which places look alike, across seasons too), not its coordinates, so the
    descriptor sizes may differ. Descriptors are L2-normalised, so ⟨x_i, x_j⟩ is a cosine.
    """

    needs_teacher = True
    reads_extra_images = True

    def __init__(self, temperature: float = 0.05) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = float(temperature)

    def forward(self, student: TupleDescriptors, teacher: TupleDescriptors | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        student_points, teacher_points, self_pairs = self._every_image(student, teacher)
        student_log = self._log_probabilities(student_points, self_pairs)
        teacher_log = self._log_probabilities(teacher_points.detach(), self_pairs)
        per_image = (teacher_log.exp() * (teacher_log - student_log)).masked_fill(self_pairs, 0.0).sum(dim=1)
        total = per_image.mean()
        return total, {self.name: total.detach()}

    def _log_probabilities(self, points: Tensor, self_pairs: Tensor) -> Tensor:
        logits = (points @ points.T / self.temperature).masked_fill(self_pairs, float("-inf"))
        return F.log_softmax(logits, dim=1).masked_fill(self_pairs, 0.0)

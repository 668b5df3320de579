"""Relational knowledge distillation (Park et al., CVPR 2019), distance and angle terms, as a comparison baseline."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from tscm.losses.base import DistillationLoss, TupleDescriptors, euclidean_distance
from tscm.losses.registry import register_loss


def _distance_relations(x: Tensor, off_diagonal: Tensor) -> Tensor:
    """Pairwise distances divided by their mean over pairs i ≠ j (N×N)."""
    distances = euclidean_distance(x.unsqueeze(1), x.unsqueeze(0))
    return distances / distances[off_diagonal].mean()


def _angle_relations(x: Tensor) -> Tensor:
    """cos of the angle at x_j between x_i and x_k: ⟨unit(x_i − x_j), unit(x_k − x_j)⟩, indexed [i, j, k]."""
    unit = F.normalize(x.unsqueeze(1) - x.unsqueeze(0), p=2, dim=-1)  # [i, j] = unit(x_i − x_j)
    return torch.einsum("ijd,kjd->ijk", unit, unit)


@register_loss("rkd")
class RelationalLoss(DistillationLoss):
    """distance_weight·L_dist + angle_weight·L_angle over every image of the step (tuples' and extra), pooled.

    L_dist: Huber (smooth L1, β=1) between student and teacher pairwise distances, each set divided
    by its mean distance, averaged over ordered pairs i ≠ j. L_angle: Huber between the cosines of
    the angles x_i–x_j–x_k, averaged over triples of distinct images. Descriptor sizes may differ.
    """

    needs_teacher = True
    reads_extra_images = True

    def __init__(self, distance_weight: float = 1.0, angle_weight: float = 2.0) -> None:
        super().__init__()
        self.distance_weight = float(distance_weight)
        self.angle_weight = float(angle_weight)

    def forward(self, student: TupleDescriptors, teacher: TupleDescriptors | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        student_points, teacher_points, self_pairs = self._every_image(student, teacher)
        off_diagonal = ~self_pairs
        distance_term = F.smooth_l1_loss(
            _distance_relations(student_points, off_diagonal)[off_diagonal],
            _distance_relations(teacher_points, off_diagonal)[off_diagonal],
        )
        distinct = off_diagonal.unsqueeze(2) & off_diagonal.unsqueeze(0) & off_diagonal.unsqueeze(1)  # i≠j, j≠k, i≠k
        angle_term = F.smooth_l1_loss(_angle_relations(student_points)[distinct], _angle_relations(teacher_points)[distinct])
        total = self.distance_weight * distance_term + self.angle_weight * angle_term
        return total, {"rkd_distance": distance_term.detach(), "rkd_angle": angle_term.detach()}

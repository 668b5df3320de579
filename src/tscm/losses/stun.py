"""STUN distillation (Cai et al., ICRA 2022): regression to the teacher, weighted by the student's own uncertainty."""

from __future__ import annotations

from torch import Tensor

from tscm.errors import TscmError
from tscm.losses.base import DistillationLoss, TupleDescriptors, euclidean_distance, squared_distance
from tscm.losses.registry import register_loss


@register_loss("stun")
class StunLoss(DistillationLoss):
    """Per image x, with s(x) the student's uncertainty output (U values in (0, 1), the sigmoid head):

        mean over u of  δ(x) / σ²_u(x) + log σ²_u(x),   σ²_u = exp(log σ²_u),

    averaged over every real image of the batch (anchors, positives, real negatives), each
    image weighing the same. This follows STUN's released training code (ramdrop/stun):

    - the sigmoid output is log σ², not σ² (σ² = exp(s) lies in (1, e)); with `shift` (STUN's
      choice when the teacher was trained with a triplet loss, as TSCM's is) log σ² =
      clamp(10·s + 0.2, 0, 1) instead. Where that clamp is active the uncertainty head gets no
      gradient; shift=False uses log σ² = s.
    - the variance is per dimension (U = D there; here any U, U = 1 being a scalar variance); the
      distance δ = ‖S(x) − T(x)‖ is one number per image, shared by every dimension.
    - δ is the Euclidean distance, not squared (`distance="euclidean"`); `distance="squared"`
      uses ‖S(x) − T(x)‖², the Gaussian negative log-likelihood form.
    - there is no factor 1/2 (the likelihood's ½(δ/σ² + log σ²) up to that constant scale).

    The uncertainty comes in `student.uncertainty` (e.g. from Student.forward_with_uncertainty).
    """

    needs_teacher = True
    needs_uncertainty = True

    def __init__(self, shift: bool = True, distance: str = "euclidean") -> None:
        super().__init__()
        if distance not in ("euclidean", "squared"):
            raise TscmError(f"loss 'stun': distance must be 'euclidean' or 'squared', got {distance!r}")
        self.shift = bool(shift)
        self.distance = distance

    def forward(self, student: TupleDescriptors, teacher: TupleDescriptors | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        teacher = self._checked_teacher(student, teacher)
        sigmoid_output = self._checked_uncertainty(student).real_descriptors()  # N×U
        student_points, teacher_points = student.real_descriptors(), teacher.real_descriptors()
        measure = euclidean_distance if self.distance == "euclidean" else squared_distance
        delta = measure(student_points, teacher_points).unsqueeze(1)  # N×1
        log_variance = (10.0 * sigmoid_output + 0.2).clamp(0.0, 1.0) if self.shift else sigmoid_output
        total = (delta * (-log_variance).exp() + log_variance).mean()
        return total, {self.name: total.detach()}

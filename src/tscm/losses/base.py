"""Tuple descriptors and the base class every loss shares (one signature for all losses)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from tscm.errors import TscmError

# Lower bound on squared distances before the square root, so the gradient stays finite when two
# descriptors coincide (e.g. the same database image twice in a batch).
_SQUARED_DISTANCE_FLOOR = 1e-12


def squared_distance(x: Tensor, y: Tensor) -> Tensor:
    """‖x − y‖² over the last axis."""
    return (x - y).pow(2).sum(dim=-1)


def euclidean_distance(x: Tensor, y: Tensor) -> Tensor:
    """‖x − y‖ over the last axis, with a gradient that stays finite at x = y."""
    return squared_distance(x, y).clamp_min(_SQUARED_DISTANCE_FLOOR).sqrt()


def masked_mean_over_negatives(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of B×K `values` over each row's real negatives (mask True) → B."""
    summed = torch.where(mask, values, torch.zeros((), dtype=values.dtype, device=values.device)).sum(dim=1)
    return summed / mask.sum(dim=1).to(values.dtype)


@dataclass
class TupleDescriptors:
    """Descriptors of a batch of training tuples (query/anchor, positive, negatives).

    anchor B×D, positive B×D, negatives B×K×D, negative_mask B×K bool (True = a real negative;
    False marks padding for tuples with fewer than K negatives — its descriptors are ignored).
    Every tuple must have at least one real negative (the miner skips queries with none).
    `uncertainty`: the student's uncertainty outputs for the same images in the same layout (B×U,
    B×K×U, same mask; U may differ from D), for losses with `needs_uncertainty`; None otherwise.
    `extra`: E×D descriptors of further images of the step outside any tuple (teaching images); the
    per-image and relational terms use them (`all_descriptors`), the tuple terms do not.
    """

    anchor: Tensor
    positive: Tensor
    negatives: Tensor
    negative_mask: Tensor
    uncertainty: TupleDescriptors | None = None
    extra: Tensor | None = None

    def __post_init__(self) -> None:
        if self.anchor.ndim != 2:
            raise TscmError(f"TupleDescriptors.anchor: expected B×D, got shape {tuple(self.anchor.shape)}")
        batch, dim = self.anchor.shape
        if tuple(self.positive.shape) != (batch, dim):
            raise TscmError(
                f"TupleDescriptors.positive: expected shape {(batch, dim)}, got {tuple(self.positive.shape)}"
            )
        if self.negatives.ndim != 3 or self.negatives.shape[0] != batch or self.negatives.shape[2] != dim:
            raise TscmError(
                f"TupleDescriptors.negatives: expected B×K×D with B={batch}, D={dim}, "
                f"got {tuple(self.negatives.shape)}"
            )
        if self.negative_mask.dtype != torch.bool or tuple(self.negative_mask.shape) != tuple(self.negatives.shape[:2]):
            raise TscmError(
                f"TupleDescriptors.negative_mask: expected a bool tensor of shape {tuple(self.negatives.shape[:2])}, "
                f"got {self.negative_mask.dtype} {tuple(self.negative_mask.shape)}"
            )
        if batch == 0:
            raise TscmError("TupleDescriptors: the batch holds no tuples")
        if not bool(self.negative_mask.any(dim=1).all()):
            raise TscmError("TupleDescriptors.negative_mask: every tuple needs at least one real negative")
        if self.uncertainty is not None:
            self.check_uncertainty()
        if self.extra is not None and (self.extra.ndim != 2 or self.extra.shape[1] != dim):
            raise TscmError(f"TupleDescriptors.extra: expected E×D with D={dim}, got {tuple(self.extra.shape)}")

    def check_uncertainty(self) -> TupleDescriptors:
        """The uncertainty tuples, checked to describe the same images (also after assigning the field)."""
        uncertainty = self.uncertainty
        if not isinstance(uncertainty, TupleDescriptors):
            raise TscmError(
                f"TupleDescriptors.uncertainty: expected TupleDescriptors or None, got {type(uncertainty).__name__}"
            )
        if uncertainty.negatives.shape[:2] != self.negatives.shape[:2] or not torch.equal(
            uncertainty.negative_mask, self.negative_mask
        ):
            raise TscmError(
                f"TupleDescriptors.uncertainty: expected tuples of shape B×K={tuple(self.negatives.shape[:2])} with "
                f"the descriptors' negative mask, got B×K={tuple(uncertainty.negatives.shape[:2])}"
            )
        return uncertainty

    @property
    def batch_size(self) -> int:
        return self.anchor.shape[0]

    @property
    def num_negatives(self) -> int:
        return self.negatives.shape[1]

    @property
    def dim(self) -> int:
        return self.anchor.shape[1]

    @classmethod
    def from_flat(
        cls, desc: Tensor, num_negatives: int, mask: Tensor | None = None, uncertainty: Tensor | None = None
    ) -> TupleDescriptors:
        """Split a flat (B·(K+2))×D batch laid out [q, p, n1..nK] per tuple; `mask` is B×K (None: all real).

        `uncertainty`: the student's uncertainty outputs as a flat (B·(K+2))×U tensor in the same row order.
        """
        if desc.ndim != 2:
            raise TscmError(f"flat descriptors: expected a 2-D (B·(K+2))×D tensor, got shape {tuple(desc.shape)}")
        per_tuple = num_negatives + 2
        if num_negatives < 1 or desc.shape[0] % per_tuple != 0:
            raise TscmError(
                f"flat descriptors: {desc.shape[0]} rows is not a whole number of tuples of "
                f"1 query + 1 positive + {num_negatives} negatives"
            )
        grouped = desc.reshape(desc.shape[0] // per_tuple, per_tuple, desc.shape[1])
        if mask is None:
            mask = torch.ones(grouped.shape[:1] + (num_negatives,), dtype=torch.bool, device=desc.device)
        nested = None
        if uncertainty is not None:
            if uncertainty.ndim != 2 or uncertainty.shape[0] != desc.shape[0]:
                raise TscmError(
                    f"flat uncertainty: expected a 2-D {desc.shape[0]}×U tensor (one row per descriptor), "
                    f"got shape {tuple(uncertainty.shape)}"
                )
            nested = cls.from_flat(uncertainty, num_negatives, mask)
        return cls(grouped[:, 0], grouped[:, 1], grouped[:, 2:], mask, nested)

    def real_descriptors(self) -> Tensor:
        """Anchors, positives and the real negatives stacked as N×D (padding dropped)."""
        return torch.cat([self.anchor, self.positive, self.negatives[self.negative_mask]], dim=0)

    def all_descriptors(self) -> Tensor:
        """Every image of the step: the tuples' real images, then the `extra` images (N+E)×D."""
        real = self.real_descriptors()
        return real if self.extra is None else torch.cat([real, self.extra], dim=0)


class DistillationLoss(nn.Module):
    """Base of every loss: `forward(student, teacher) -> (total, parts)`.

    `parts` maps each term's name to a detached scalar for logging. Losses that compare with the
    teacher set `needs_teacher` and raise TscmError when it is missing; losses that read the
    student's uncertainty (`student.uncertainty`) set `needs_uncertainty`; losses over every image of the
    step (`all_descriptors`) set `reads_extra_images`, so teaching images are only drawn when one does.
    """

    name: str = ""
    needs_teacher: bool = False
    needs_uncertainty: bool = False
    reads_extra_images: bool = False  # whether TupleDescriptors.extra (teaching images) enters the loss

    def forward(self, student: TupleDescriptors, teacher: TupleDescriptors | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError

    def _checked_teacher(self, student: TupleDescriptors, teacher: TupleDescriptors | None, same_dim: bool = True) -> TupleDescriptors:
        """The teacher tuples, checked to describe the same images as the student's."""
        if teacher is None:
            raise TscmError(f"loss '{self.name}' compares student with teacher descriptors, but no teacher was given")
        if teacher.negatives.shape[:2] != student.negatives.shape[:2]:
            raise TscmError(
                f"loss '{self.name}': teacher tuples have shape B×K={tuple(teacher.negatives.shape[:2])}, "
                f"student tuples {tuple(student.negatives.shape[:2])}"
            )
        if not torch.equal(teacher.negative_mask, student.negative_mask):
            raise TscmError(f"loss '{self.name}': teacher and student negative masks differ")
        student_extra = 0 if student.extra is None else student.extra.shape[0]
        teacher_extra = 0 if teacher.extra is None else teacher.extra.shape[0]
        if student_extra != teacher_extra:
            raise TscmError(f"loss '{self.name}': {student_extra} extra student images, {teacher_extra} teacher ones")
        if same_dim and teacher.dim != student.dim:
            raise TscmError(
                f"loss '{self.name}': needs equal descriptor sizes, teacher D={teacher.dim}, student D={student.dim}"
            )
        return teacher

    def _every_image(self, student: TupleDescriptors, teacher: TupleDescriptors | None) -> tuple[Tensor, Tensor, Tensor]:
        """(student descriptors, teacher descriptors in the student's dtype, N×N mask of each image with itself)
        over every image of the step, for losses relating each image to all the others (sizes may differ)."""
        teacher = self._checked_teacher(student, teacher, same_dim=False)
        student_points = student.all_descriptors()
        teacher_points = teacher.all_descriptors().to(student_points.dtype)
        self_pairs = torch.eye(student_points.shape[0], dtype=torch.bool, device=student_points.device)
        return student_points, teacher_points, self_pairs

    def _checked_uncertainty(self, student: TupleDescriptors) -> TupleDescriptors:
        """The student's uncertainty tuples, checked to describe the student's images."""
        if student.uncertainty is None:
            raise TscmError(
                f"loss '{self.name}' needs the student's uncertainty outputs (TupleDescriptors.uncertainty, e.g. "
                "from Student.forward_with_uncertainty), but the student tuples carry none"
            )
        return student.check_uncertainty()


def reduce_over_negatives(per_negative: Tensor, mask: Tensor, reduction: str) -> Tensor:
    """Average B×K per-(a,p,n_j) values: "tuple" = each tuple's real negatives, then tuples;
    "triplet" = all real triplets of the batch at once (the NetVLAD-style sum / number of negatives)."""
    if reduction == "tuple":
        return masked_mean_over_negatives(per_negative, mask).mean()
    zero = torch.zeros((), dtype=per_negative.dtype, device=per_negative.device)
    return torch.where(mask, per_negative, zero).sum() / mask.sum().to(per_negative.dtype)


def check_reduction(reduction: str) -> str:
    """`reduction` if it names a way to average over negatives (see reduce_over_negatives)."""
    if reduction not in ("tuple", "triplet"):
        raise TscmError(f"reduction: expected 'tuple' or 'triplet', got {reduction!r}")
    return reduction

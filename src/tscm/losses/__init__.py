"""Training losses: triplet (L_hard), L_soft, L_cm, the published squared hinge, regression, RKD.

Every loss has one signature, `loss(student, teacher) -> (total, parts)` on TupleDescriptors.
Importing this package registers every loss in LOSSES.
"""

from __future__ import annotations

from tscm.losses.base import DistillationLoss, TupleDescriptors
from tscm.losses.cross_metric import CrossMetricLoss
from tscm.losses.registry import LOSSES, build_loss, register_loss
from tscm.losses.regression import RegressionLoss
from tscm.losses.rkd import RelationalLoss
from tscm.losses.soft import SoftLoss
from tscm.losses.squared_hinge import PublishedSquaredHingeLoss
from tscm.losses.triplet import TripletLoss
from tscm.losses.weighted import DISTILLATION_PRESETS, WeightedSum, build_preset

__all__ = [
    "DISTILLATION_PRESETS",
    "LOSSES",
    "CrossMetricLoss",
    "DistillationLoss",
    "PublishedSquaredHingeLoss",
    "RegressionLoss",
    "RelationalLoss",
    "SoftLoss",
    "TripletLoss",
    "TupleDescriptors",
    "WeightedSum",
    "build_loss",
    "build_preset",
    "register_loss",
]

"""Training losses: triplet (L_hard), L_soft, L_cm, the published squared hinge, regression, RKD, STUN, listwise.

Every loss has one signature, `loss(student, teacher) -> (total, parts)` on TupleDescriptors.
Importing this package registers every loss in LOSSES.
"""

from __future__ import annotations

from tscm.losses.base import DistillationLoss, TupleDescriptors
from tscm.losses.cross_metric import CrossMetricLoss
from tscm.losses.listwise import ListwiseLoss
from tscm.losses.registry import LOSSES, build_loss, register_loss
from tscm.losses.regression import RegressionLoss
from tscm.losses.rkd import RelationalLoss
from tscm.losses.soft import SoftLoss
from tscm.losses.squared_hinge import HINGE_TERMS, PublishedSquaredHingeLoss
from tscm.losses.stun import StunLoss
from tscm.losses.triplet import TripletLoss
from tscm.losses.weighted import (
    DISTILLATION_PRESETS,
    PUBLISHED_ROWS,
    LossPreset,
    WeightedSum,
    build_preset,
    parse_weights,
    preset_terms,
)

__all__ = [
    "DISTILLATION_PRESETS",
    "HINGE_TERMS",
    "LOSSES",
    "ListwiseLoss",
    "PUBLISHED_ROWS",
    "CrossMetricLoss",
    "DistillationLoss",
    "LossPreset",
    "PublishedSquaredHingeLoss",
    "RegressionLoss",
    "RelationalLoss",
    "SoftLoss",
    "StunLoss",
    "TripletLoss",
    "TupleDescriptors",
    "WeightedSum",
    "build_loss",
    "build_preset",
    "parse_weights",
    "preset_terms",
    "register_loss",
]

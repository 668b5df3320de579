"""Weighted sums of losses and the named ablation presets, so each training row is configuration."""

from __future__ import annotations

from typing import Mapping

from torch import Tensor, nn

from tscm.errors import TscmError
from tscm.losses.base import DistillationLoss, TupleDescriptors
from tscm.losses.registry import build_loss, register_loss

# Ablation rows: loss name → weight. "tscm" is the paper's L_total = L_hard + L_soft + L_cm;
# "tscm-published" is what the published training code optimises instead.
DISTILLATION_PRESETS: dict[str, dict[str, float]] = {
    "none": {"triplet": 1.0},
    "soft": {"triplet": 1.0, "soft": 1.0},
    "cm": {"triplet": 1.0, "cross_metric": 1.0},
    "soft+cm": {"triplet": 1.0, "soft": 1.0, "cross_metric": 1.0},
    "tscm": {"triplet": 1.0, "soft": 1.0, "cross_metric": 1.0},
    "tscm-published": {"triplet": 1.0, "squared_hinge": 1.0},
    "regression": {"triplet": 1.0, "regression": 1.0},
    "rkd": {"triplet": 1.0, "rkd": 1.0},
}


@register_loss("weighted_sum")
class WeightedSum(DistillationLoss):
    """Σ weight·term over named losses; `options` gives each term's keyword options.

    parts: every term's own (unweighted) parts plus "total". Terms with weight 0 are not built,
    so a teacher is needed only when a weighted term needs one.
    """

    def __init__(self, weights: Mapping[str, float], options: Mapping[str, Mapping] | None = None) -> None:
        super().__init__()
        options = dict(options or {})
        unknown = sorted(set(options) - set(weights))
        if unknown:
            raise TscmError(f"loss options given for {unknown}, which are not terms of the sum {sorted(weights)}")
        if "weighted_sum" in weights:
            raise TscmError("a weighted sum cannot contain another weighted sum")
        self.weights = {name: float(weight) for name, weight in weights.items() if float(weight) != 0.0}
        if not self.weights:
            raise TscmError(f"loss weights {dict(weights)}: at least one term needs a non-zero weight")
        self.terms = nn.ModuleDict({name: build_loss(name, **options.get(name, {})) for name in self.weights})
        self.needs_teacher = any(term.needs_teacher for term in self.terms.values())

    def forward(self, student: TupleDescriptors, teacher: TupleDescriptors | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        total: Tensor | None = None
        parts: dict[str, Tensor] = {}
        for name, term in self.terms.items():
            value, term_parts = term(student, teacher)
            weighted = self.weights[name] * value
            total = weighted if total is None else total + weighted
            parts.update(term_parts)
        assert total is not None  # at least one term, checked in __init__
        parts["total"] = total.detach()
        return total, parts


def build_preset(
    name: str,
    weights: Mapping[str, float] | None = None,
    options: Mapping[str, Mapping] | None = None,
) -> WeightedSum:
    """The ablation row `name` (a key of DISTILLATION_PRESETS); `weights` overrides or adds per-term weights."""
    if name not in DISTILLATION_PRESETS:
        raise TscmError(f"unknown distillation preset '{name}'; expected one of: {', '.join(DISTILLATION_PRESETS)}")
    merged = {**DISTILLATION_PRESETS[name], **dict(weights or {})}
    return WeightedSum(merged, options)


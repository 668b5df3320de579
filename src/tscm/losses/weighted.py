"""Weighted sums of losses and the named ablation presets, so each training row is configuration."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Mapping

from torch import Tensor, nn

from tscm.errors import TscmError
from tscm.losses.base import DistillationLoss, TupleDescriptors, check_reduction
from tscm.losses.registry import LOSSES, build_loss, register_loss


@dataclass(frozen=True)
class LossPreset:
    """One ablation row: loss name → weight, and loss name → that term's keyword options."""

    weights: Mapping[str, float]
    options: Mapping[str, Mapping] = field(default_factory=dict)


def _published_hinge(terms: str) -> LossPreset:
    """Triplet + the published squared hinge over `terms` (e.g. "SaTp+SpTa")."""
    return LossPreset({"triplet": 1.0, "squared_hinge": 1.0}, {"squared_hinge": {"terms": tuple(terms.split("+"))}})


# "tscm" is the paper's L_total = L_hard + L_soft + L_cm; "tscm-published" is what the published
# training code optimises instead (the squared hinge over all five distances); the rows named by
# their terms are the published code's variants of that hinge; "stun" is STUN's distillation with
# log σ² = the head's sigmoid output (shift off), so the uncertainty head learns: with STUN's
# released clamp for triplet teachers it gets almost no gradient, and a head that does not learn
# cannot give the loop-closure confidence tscm uses it for.
DISTILLATION_PRESETS: dict[str, LossPreset] = {
    "none": LossPreset({"triplet": 1.0}),
    "soft": LossPreset({"triplet": 1.0, "soft": 1.0}),
    "cm": LossPreset({"triplet": 1.0, "cross_metric": 1.0}),
    "soft+cm": LossPreset({"triplet": 1.0, "soft": 1.0, "cross_metric": 1.0}),
    "tscm": LossPreset({"triplet": 1.0, "soft": 1.0, "cross_metric": 1.0}),
    "tscm-published": LossPreset({"triplet": 1.0, "squared_hinge": 1.0}),
    "SaTp+SpTa": _published_hinge("SaTp+SpTa"),
    "SaTa+SpTp+SnTn": _published_hinge("SaTa+SpTp+SnTn"),
    "SpTp+SnTn": _published_hinge("SpTp+SnTn"),
    "regression": LossPreset({"triplet": 1.0, "regression": 1.0}),
    "rkd": LossPreset({"triplet": 1.0, "rkd": 1.0}),
    "stun": LossPreset({"triplet": 1.0, "stun": 1.0}, {"stun": {"shift": False}}),
    "listwise": LossPreset({"triplet": 1.0, "listwise": 1.0}),
    "listwise+regression": LossPreset({"triplet": 1.0, "listwise": 1.0, "regression": 1.0}),
}

# The published distillation variants in ablation-table order: L_cm only, L_soft only, SpTp+SnTn,
# then all five terms (tscm-published).
PUBLISHED_ROWS: tuple[str, ...] = ("SaTp+SpTa", "SaTa+SpTp+SnTn", "SpTp+SnTn", "tscm-published")


@register_loss("weighted_sum")
class WeightedSum(DistillationLoss):
    """Σ weight·term over named losses; `options` gives each term's keyword options.

    parts: every term's own (unweighted) parts plus "total". Terms with weight 0 are not built,
    so a teacher (or the student's uncertainty) is needed only when a weighted term needs one.
    `teacher_scale` multiplies the weight of every term that reads the teacher (a warm-up or anneal
    schedule sets it per step; 1 by default).
    """

    teacher_scale: float = 1.0

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
        self.needs_uncertainty = any(term.needs_uncertainty for term in self.terms.values())
        self.reads_extra_images = any(term.reads_extra_images for term in self.terms.values())

    def forward(self, student: TupleDescriptors, teacher: TupleDescriptors | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        total: Tensor | None = None
        parts: dict[str, Tensor] = {}
        for name, term in self.terms.items():
            value, term_parts = term(student, teacher)
            weight = self.weights[name] * (self.teacher_scale if term.needs_teacher else 1.0)
            weighted = weight * value
            total = weighted if total is None else total + weighted
            parts.update(term_parts)
        assert total is not None  # at least one term, checked in __init__
        parts["total"] = total.detach()
        return total, parts


def parse_weights(text: str) -> dict[str, float]:
    """`term=weight` pairs separated by commas (e.g. "listwise=2,regression=0.5") as a dict; "" gives {}."""
    weights: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        term, sep, value = item.partition("=")
        term = term.strip()
        if not sep or term not in LOSSES:
            raise TscmError(f"loss.weights: expected term=weight pairs with terms from {', '.join(sorted(LOSSES))}, "
                            f"got {item!r}")
        try:
            weight = float(value)
        except ValueError:
            weight = float("nan")
        if not (weight >= 0 and weight < float("inf")):
            raise TscmError(f"loss.weights: the weight of {term} must be a finite number ≥ 0, got {value.strip()!r}")
        weights[term] = weight
    return weights


def _preset(name: str) -> LossPreset:
    if name not in DISTILLATION_PRESETS:
        raise TscmError(f"unknown distillation preset '{name}'; expected one of: {', '.join(DISTILLATION_PRESETS)}")
    return DISTILLATION_PRESETS[name]


def preset_terms(name: str) -> list[tuple[str, float, dict]]:
    """(loss name, weight, options) of every term of preset `name`, as the table gives them (copies)."""
    preset = _preset(name)
    return [(term, float(weight), dict(preset.options.get(term, {}))) for term, weight in preset.weights.items()]


def _takes_reduction(name: str) -> bool:
    return name in LOSSES and "reduction" in inspect.signature(LOSSES[name].__init__).parameters


def build_preset(
    name: str,
    weights: Mapping[str, float] | None = None,
    options: Mapping[str, Mapping] | None = None,
    reduction: str | None = None,
) -> WeightedSum:
    """The ablation row `name` (a key of DISTILLATION_PRESETS).

    `weights` overrides or adds per-term weights; `options` adds to each term's preset options
    (a key given here wins). `reduction` ("tuple" or "triplet"; None: each term's default) goes to
    every term that averages over negatives (those with a `reduction` option) unless `options`
    sets that term's reduction itself.
    """
    preset = _preset(name)
    merged_weights = {**preset.weights, **dict(weights or {})}
    merged_options = {term: dict(values) for term, values in preset.options.items()}
    for term, values in dict(options or {}).items():
        merged_options[term] = {**merged_options.get(term, {}), **dict(values)}
    if reduction is not None:
        check_reduction(reduction)
        for term in merged_weights:
            if _takes_reduction(term):
                merged_options.setdefault(term, {}).setdefault("reduction", reduction)
    return WeightedSum(merged_weights, merged_options)

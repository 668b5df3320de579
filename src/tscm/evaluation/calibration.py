"""Thresholds whose precision holds beyond the split they were chosen on: a confidence bound on precision.

The empirical precision of the accepted queries of a validation split overstates what a threshold
gives elsewhere: with 20 accepted queries and none false, the true precision could well be 90 %.
`calibrate_bounded` therefore chooses the largest threshold whose one-sided Clopper–Pearson lower
bound on precision reaches the target: with `accepted` queries of which `tp` are right, the bound
at confidence c is the (1 − c) quantile of Beta(tp, accepted − tp + 1) (0 when tp = 0), the
smallest precision under which seeing at least `tp` right in `accepted` still has probability
1 − c. With `bound="none"` the empirical precision decides (the old behaviour).

Even a flawless split proves little when it is small: with no false positive the bound is
(1 − c)^(1/n) for n accepted queries, so a 99 % target at 95 % confidence needs at least 299
correct accepted queries. Below that, calibration refuses and says how many are needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real

import numpy as np

from tscm.errors import TscmError
from tscm.evaluation.precision_recall import PrecisionRecallCurve

BOUNDS = ("clopper-pearson", "none")
DEFAULT_BOUND = "clopper-pearson"
DEFAULT_CONFIDENCE = 0.95


def check_confidence(confidence) -> float:
    if not (isinstance(confidence, Real) and 0.0 < confidence < 1.0):
        raise TscmError(f"confidence: expected a fraction in (0, 1), got {confidence!r}")
    return float(confidence)


def precision_lower_bound(true_positives, accepted, confidence: float = DEFAULT_CONFIDENCE) -> np.ndarray:
    """One-sided Clopper–Pearson lower bound on precision (fractions): 0 where nothing right was accepted."""
    from scipy.stats import beta

    confidence = check_confidence(confidence)
    tp = np.asarray(true_positives, dtype=np.float64)
    n = np.asarray(accepted, dtype=np.float64)
    if tp.shape != n.shape or (tp < 0).any() or (tp > n).any():
        raise TscmError("precision bound: expected 0 ≤ true positives ≤ accepted, element by element")
    bound = np.zeros(tp.shape)
    some = tp > 0
    bound[some] = beta.ppf(1.0 - confidence, tp[some], n[some] - tp[some] + 1.0)
    return bound


def precision_upper_bound(true_positives, accepted, confidence: float = DEFAULT_CONFIDENCE) -> np.ndarray:
    """One-sided Clopper–Pearson upper bound on precision (fractions): 1 where nothing wrong (or nothing) was
    accepted. Below a target, it is evidence that a threshold misses the target there, not only noise."""
    tp = np.asarray(true_positives, dtype=np.float64)
    n = np.asarray(accepted, dtype=np.float64)
    if tp.shape != n.shape or (tp < 0).any() or (tp > n).any():
        raise TscmError("precision bound: expected 0 ≤ true positives ≤ accepted, element by element")
    return 1.0 - precision_lower_bound(n - tp, n, confidence)  # the wrong share's lower bound


def accepted_needed(target_precision: float, confidence: float = DEFAULT_CONFIDENCE) -> int | None:
    """Fewest accepted queries, all right, whose lower bound reaches the target; None for a 100 % target."""
    if target_precision >= 1.0:
        return None
    return max(1, math.ceil(math.log(1.0 - confidence) / math.log(target_precision) - 1e-12))


@dataclass(frozen=True)
class BoundedCalibration:
    """A threshold chosen for a target precision, with what it gave on the calibration split."""

    threshold: float
    target_precision: float
    bound: str  # "clopper-pearson" or "none"
    confidence: float | None  # of the bound; None without one
    precision: float  # empirical, on the calibration split
    precision_bound: float  # the lower bound (the empirical precision when bound is "none")
    recall: float
    accepted: int
    true_positives: int
    false_positives: int

    def to_json(self) -> dict:
        return {"threshold": self.threshold, "target_precision": self.target_precision, "bound": self.bound,
                "confidence": self.confidence, "precision": self.precision, "precision_bound": self.precision_bound,
                "recall": self.recall, "accepted": self.accepted, "true_positives": self.true_positives,
                "false_positives": self.false_positives}


def calibrate_bounded(curve: PrecisionRecallCurve, target_precision: float, *, bound: str = DEFAULT_BOUND,
                      confidence: float = DEFAULT_CONFIDENCE, where: str = "the calibration split") -> BoundedCalibration:
    """The largest threshold of `curve` whose (bounded) precision reaches the target, or TscmError saying why none does.

    The error names `where`, the best bound reached, and how many correct accepted queries the
    target needs at least (with no false positive among them).
    """
    if bound not in BOUNDS:
        raise TscmError(f"precision bound {bound!r} is unknown; expected one of {', '.join(BOUNDS)}")
    if not (isinstance(target_precision, Real) and 0.0 < target_precision <= 1.0):
        raise TscmError(f"target precision: expected a fraction in (0, 1], got {target_precision!r}")
    accepted = curve.true_positives + curve.false_positives
    if bound == "none":
        confidence_used = None
        value = curve.precision
    else:
        confidence_used = check_confidence(confidence)
        value = precision_lower_bound(curve.true_positives, accepted, confidence_used)
    meeting = np.flatnonzero(value >= target_precision)
    if meeting.size == 0:
        raise TscmError(_refusal(curve, value, target_precision, bound, confidence_used, where))
    point = meeting[-1]
    return BoundedCalibration(
        threshold=float(curve.thresholds[point]), target_precision=float(target_precision), bound=bound,
        confidence=confidence_used, precision=float(curve.precision[point]), precision_bound=float(value[point]),
        recall=float(curve.recall[point]), accepted=int(accepted[point]),
        true_positives=int(curve.true_positives[point]), false_positives=int(curve.false_positives[point]))


def _refusal(curve: PrecisionRecallCurve, value: np.ndarray, target: float, bound: str, confidence: float | None,
             where: str) -> str:
    best = int(np.flatnonzero(value == value.max())[-1])
    reached = (f"the best threshold reaches {100 * curve.precision[best]:.1f} % precision"
               + (f" (lower bound {100 * value[best]:.1f} %)" if bound != "none" else "")
               + f" with {int(curve.true_positives[best] + curve.false_positives[best])} accepted")
    if bound == "none":
        return f"{where}: no threshold reaches precision {100 * target:g} %; {reached}; lower the target"
    level = f"{100 * confidence:g} % confidence"
    needed = accepted_needed(target, confidence)
    if needed is None:
        return (f"{where}: a {100 * target:g} % precision cannot be shown at {level} from any number of queries; "
                f"{reached}; lower the target (or use --bound none)")
    most_correct = int(curve.true_positives.max())
    return (f"{where}: no threshold's {level} lower bound on precision reaches {100 * target:g} %; {reached}. "
            f"Showing {100 * target:g} % needs at least {needed} correct accepted matches with no false positive; "
            f"this split has {curve.num_with_match} queries with a true match, {most_correct} of them matched "
            f"correctly. Calibrate on a larger split, lower the target, or use --bound none")

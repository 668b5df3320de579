"""Precision-recall for loop closure: accept a query's top-1 match when its distance is small enough.

Definitions:

- each query's score is the distance to its top-1 database match (smaller = more confident); a
  query is *accepted* at threshold t when its score ≤ t;
- an accepted query is a true positive when its top-1 is a true match, otherwise a false positive.
  Queries with no true match in the database count too (they can only be false positives),
  unlike Recall@N, which leaves them out;
- recall(t) = TP(t) / (number of queries with at least one true match);
  precision(t) = TP(t) / (TP(t) + FP(t));
- average precision: the area under the step precision-recall curve, the sum of precision ×
  recall increase over the thresholds from the most confident query down (the definition of
  scikit-learn's `average_precision_score`); queries with equal scores are accepted together, at
  one threshold;
- recall at 100 % precision: the largest recall with no false positive (0 when the most confident
  group already holds one);
- F1 max: the largest 2PR / (P + R) over the thresholds.

The curve holds precision and recall as fractions; `pr_summary` reports percent, like Recall@N.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Real
from typing import Sequence

import numpy as np

from tscm.errors import TscmError


@dataclass(frozen=True)
class PrecisionRecallCurve:
    """One point per distinct score, by ascending threshold: accept every query whose score ≤ threshold."""

    thresholds: np.ndarray  # float64, distinct, ascending
    precision: np.ndarray  # fractions in [0, 1]
    recall: np.ndarray  # fractions in [0, 1], non-decreasing
    true_positives: np.ndarray  # int64, accepted queries whose top-1 is a true match
    false_positives: np.ndarray  # int64, the other accepted queries
    num_queries: int
    num_with_match: int  # the recall denominator


@dataclass(frozen=True)
class Calibration:
    """A score threshold chosen on a calibration split to reach a target precision.

    `threshold` is None when no threshold reaches the target; `precision` and `recall` are then
    those of the most precise threshold (the largest one if several tie), to say how far off it was.
    """

    threshold: float | None
    target_precision: float
    precision: float
    recall: float

    @property
    def reached(self) -> bool:
        return self.threshold is not None


def _pr_inputs(scores, correct, has_match) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated float64 scores and bool labels of equal length, with at least one query that has a match."""
    scores, correct, has_match = np.asarray(scores), np.asarray(correct), np.asarray(has_match)
    if scores.ndim != 1 or scores.dtype.kind not in "fiu":
        raise TscmError(f"scores: expected a 1-d numeric array, got {scores.dtype} with shape {scores.shape}")
    for name, labels in (("correct", correct), ("has_match", has_match)):
        if labels.dtype != bool or labels.shape != scores.shape:
            raise TscmError(
                f"{name}: expected a bool array of shape {scores.shape} (one per score), "
                f"got {labels.dtype} with shape {labels.shape}"
            )
    scores = scores.astype(np.float64)
    if np.isnan(scores).any():
        raise TscmError(f"scores: {int(np.isnan(scores).sum())} NaN values; expected distances")
    impossible = np.flatnonzero(correct & ~has_match)
    if impossible.size:
        raise TscmError(
            f"correct: query {int(impossible[0])} is marked correct but has_match is False; "
            "a correct top-1 needs a true match in the database"
        )
    if not has_match.any():
        raise TscmError(f"recall is undefined: none of the {len(scores)} queries has a true match in the database")
    return scores, correct, has_match


def pr_curve(scores, correct, has_match) -> PrecisionRecallCurve:
    """The precision-recall curve of accepting top-1 matches by score (definitions in the module docstring).

    `scores` (Q, float): each query's top-1 distance; `correct` (Q, bool): its top-1 is a true
    match; `has_match` (Q, bool): it has any true match in the database.
    """
    scores, correct, has_match = _pr_inputs(scores, correct, has_match)
    order = np.argsort(scores, kind="stable")
    ranked_scores, ranked_correct = scores[order], correct[order]
    # The last query of each run of equal scores closes that threshold: equal scores are accepted together.
    group_ends = np.flatnonzero(np.append(ranked_scores[1:] != ranked_scores[:-1], True))
    true_positives = np.cumsum(ranked_correct, dtype=np.int64)[group_ends]
    false_positives = group_ends + 1 - true_positives
    num_with_match = int(has_match.sum())
    return PrecisionRecallCurve(
        thresholds=ranked_scores[group_ends],
        precision=true_positives / (group_ends + 1),
        recall=true_positives / num_with_match,
        true_positives=true_positives,
        false_positives=false_positives,
        num_queries=len(scores),
        num_with_match=num_with_match,
    )


def average_precision(curve: PrecisionRecallCurve) -> float:
    """Σ precision × recall increase over the thresholds, most confident first (a fraction).

    scikit-learn's `average_precision_score(correct, -scores)` divides recall by the number of
    correct queries instead; this equals it times (#correct / #queries with a match).
    """
    recall_gain = np.diff(curve.recall, prepend=0.0)
    return float(np.sum(curve.precision * recall_gain))


def recall_at_100_precision(curve: PrecisionRecallCurve) -> float:
    """The largest recall reached before the first false positive (a fraction; 0 if the first group has one)."""
    clean = curve.false_positives == 0
    return float(curve.recall[clean].max()) if clean.any() else 0.0


def f1_max(curve: PrecisionRecallCurve) -> float:
    """The largest 2PR / (P + R) over the thresholds (a fraction; 0 where P + R = 0)."""
    p, r = curve.precision, curve.recall
    both = p + r
    f1 = np.divide(2.0 * p * r, both, out=np.zeros_like(both), where=both > 0)
    return float(f1.max())


def pr_summary(curve: PrecisionRecallCurve) -> dict:
    """Average precision, recall at 100 % precision and F1 max in percent, with the query counts."""
    return {
        "average_precision": 100.0 * average_precision(curve),
        "recall_at_100_precision": 100.0 * recall_at_100_precision(curve),
        "f1_max": 100.0 * f1_max(curve),
        "num_queries": curve.num_queries,
        "num_with_match": curve.num_with_match,
    }


def top1_labels(top1_indices, positives: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """(correct, has_match) per query: its top-1 is in `positives[q]`, and `positives[q]` is non-empty."""
    top1 = np.asarray(top1_indices)
    if top1.ndim != 1 or top1.dtype.kind not in "iu":
        raise TscmError(f"top1_indices: expected a 1-d integer array, got {top1.dtype} with shape {top1.shape}")
    if len(positives) != len(top1):
        raise TscmError(f"positives: {len(positives)} lists for {len(top1)} queries")
    lists = [np.asarray(p, dtype=np.int64).ravel() for p in positives]
    lengths = np.array([len(p) for p in lists], dtype=np.int64)
    # Flatten the ragged lists and remember whose each entry is, so one comparison does all queries.
    flat = np.concatenate([np.empty(0, dtype=np.int64), *lists])
    owner = np.repeat(np.arange(len(top1)), lengths)
    correct = np.zeros(len(top1), dtype=bool)
    correct[owner[flat == top1[owner]]] = True
    return correct, lengths > 0


def pr_from_ranking(top1_scores, top1_indices, positives: Sequence) -> PrecisionRecallCurve:
    """The curve from each query's top-1 score and index (e.g. a Ranking's top1_distance and top1)."""
    correct, has_match = top1_labels(top1_indices, positives)
    return pr_curve(top1_scores, correct, has_match)


def calibrate_threshold(curve_or_inputs, target_precision: float = 0.99) -> Calibration:
    """The largest threshold whose precision is ≥ `target_precision` on this (calibration) split.

    `curve_or_inputs` is a PrecisionRecallCurve or a (scores, correct, has_match) tuple. Precision
    is not monotone in the threshold, so this is the last curve point that meets the target, not
    the end of the first run that does.
    """
    if isinstance(curve_or_inputs, PrecisionRecallCurve):
        curve = curve_or_inputs
    else:
        curve = pr_curve(*curve_or_inputs)
    if not (isinstance(target_precision, Real) and 0.0 < target_precision <= 1.0):
        raise TscmError(f"target_precision: expected a fraction in (0, 1], got {target_precision!r}")
    meeting = np.flatnonzero(curve.precision >= target_precision)
    if meeting.size:
        point, threshold = meeting[-1], float(curve.thresholds[meeting[-1]])
    else:
        point, threshold = np.flatnonzero(curve.precision == curve.precision.max())[-1], None
    return Calibration(threshold, float(target_precision), float(curve.precision[point]), float(curve.recall[point]))


def apply_threshold(scores, correct, has_match, threshold: float) -> dict:
    """Precision and recall (fractions) of accepting score ≤ `threshold` on another split, with the counts.

    Precision is 1.0 when nothing is accepted (no false claim made; `accepted` shows it was none).
    """
    scores, correct, has_match = _pr_inputs(scores, correct, has_match)
    if threshold is None:
        raise TscmError("threshold: got None (the calibration did not reach its target precision); expected a number")
    if not isinstance(threshold, Real) or np.isnan(threshold):
        raise TscmError(f"threshold: expected a number, got {threshold!r}")
    accepted = scores <= threshold
    num_accepted = int(accepted.sum())
    tp = int((accepted & correct).sum())
    return {
        "precision": tp / num_accepted if num_accepted else 1.0,
        "recall": tp / int(has_match.sum()),
        "accepted": num_accepted,
        "tp": tp,
        "fp": num_accepted - tp,
    }


def confidence(scores, threshold: float) -> np.ndarray:
    """threshold / (threshold + score): 1 at distance 0, 0.5 at the threshold, falling towards 0 beyond.

    Equivalently 1 / (1 + score/threshold): it depends only on the ratio of the score to the
    calibrated threshold, so it needs no other tuning. Scores are distances (≥ 0); an infinite
    score gets 0.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if not (isinstance(threshold, Real) and np.isfinite(threshold) and threshold > 0):
        raise TscmError(f"threshold: expected a positive finite number, got {threshold!r}")
    if np.isnan(scores).any() or (scores < 0).any():
        raise TscmError("scores: expected distances (≥ 0, not NaN)")
    return threshold / (threshold + scores)

"""Precision-recall metrics and threshold calibration against plain per-query loops and hand cases."""

from __future__ import annotations

import numpy as np
import pytest

from tscm.errors import TscmError
from tscm.evaluation.precision_recall import (
    Calibration,
    apply_threshold,
    average_precision,
    calibrate_threshold,
    confidence,
    f1_max,
    pr_curve,
    pr_from_ranking,
    pr_summary,
    recall_at_100_precision,
    top1_labels,
)
from tscm.evaluation.ranking import rank_matrix


def reference_points(scores, correct, has_match):
    """Plain loop: for each distinct score t, accept every query with score ≤ t and count."""
    points = []
    for t in sorted(set(float(s) for s in scores)):
        tp = sum(1 for s, c in zip(scores, correct) if s <= t and c)
        fp = sum(1 for s, c in zip(scores, correct) if s <= t and not c)
        points.append((t, tp / (tp + fp), tp / sum(has_match), fp))
    return points


def reference_metrics(scores, correct, has_match):
    points = reference_points(scores, correct, has_match)
    ap, previous_recall = 0.0, 0.0
    best_clean_recall, best_f1 = 0.0, 0.0
    for _, p, r, fp in points:
        ap += p * (r - previous_recall)
        previous_recall = r
        if fp == 0:
            best_clean_recall = max(best_clean_recall, r)
        if p + r > 0:
            best_f1 = max(best_f1, 2 * p * r / (p + r))
    return ap, best_clean_recall, best_f1


def random_inputs(rng, num_queries, kind):
    # Few distinct integer scores give many ties.
    scores = rng.integers(0, 6, num_queries).astype(np.float64) / 2
    has_match = rng.random(num_queries) < 0.8
    has_match[0] = True
    if kind == "all_correct":
        has_match[:] = True
        correct = has_match.copy()
    elif kind == "none_correct":
        correct = np.zeros(num_queries, dtype=bool)
    else:
        correct = has_match & (rng.random(num_queries) < 0.6)
    return scores, correct, has_match


@pytest.mark.parametrize("kind", ["mixed", "all_correct", "none_correct"])
def test_metrics_match_reference_loop(kind):
    rng = np.random.default_rng(1)
    for trial in range(40):
        scores, correct, has_match = random_inputs(rng, int(rng.integers(1, 25)), kind)
        curve = pr_curve(scores, correct, has_match)
        points = reference_points(scores, correct, has_match)
        np.testing.assert_array_equal(curve.thresholds, [t for t, *_ in points])
        np.testing.assert_allclose(curve.precision, [p for _, p, _, _ in points])
        np.testing.assert_allclose(curve.recall, [r for _, _, r, _ in points])
        np.testing.assert_array_equal(curve.false_positives, [fp for *_, fp in points])
        ap, clean, f1 = reference_metrics(scores, correct, has_match)
        assert average_precision(curve) == pytest.approx(ap), trial
        assert recall_at_100_precision(curve) == pytest.approx(clean), trial
        assert f1_max(curve) == pytest.approx(f1), trial
        assert (curve.num_queries, curve.num_with_match) == (len(scores), int(has_match.sum()))


def test_hand_computed_case():
    # Query 3 has no true match in the database: it can only be a false positive.
    scores = [0.1, 0.2, 0.3, 0.4]
    correct = np.array([True, False, True, False])
    has_match = np.array([True, True, True, False])
    curve = pr_curve(scores, correct, has_match)
    np.testing.assert_allclose(curve.precision, [1, 1 / 2, 2 / 3, 1 / 2])
    np.testing.assert_allclose(curve.recall, [1 / 3, 1 / 3, 2 / 3, 2 / 3])
    summary = pr_summary(curve)
    assert summary["average_precision"] == pytest.approx(100 * (1 / 3 + 2 / 3 * 1 / 3))
    assert summary["recall_at_100_precision"] == pytest.approx(100 / 3)
    assert summary["f1_max"] == pytest.approx(100 * 2 / 3)
    assert (summary["num_queries"], summary["num_with_match"]) == (4, 3)


def test_tied_scores_are_accepted_together():
    # The two most confident queries tie; one is wrong, so there is no clean prefix at all.
    curve = pr_curve([0.1, 0.1, 0.2], np.array([True, False, True]), np.ones(3, dtype=bool))
    np.testing.assert_array_equal(curve.thresholds, [0.1, 0.2])
    np.testing.assert_allclose(curve.precision, [1 / 2, 2 / 3])
    assert recall_at_100_precision(curve) == 0.0
    assert average_precision(curve) == pytest.approx(1 / 2 * 1 / 3 + 2 / 3 * 1 / 3)


def test_average_precision_agrees_with_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(2)
    for _ in range(20):
        scores, correct, has_match = random_inputs(rng, 30, "mixed")
        if not correct.any():
            continue
        # sklearn's recall denominator is the number of correct queries, ours those with a match.
        expected = metrics.average_precision_score(correct, -scores) * correct.sum() / has_match.sum()
        assert average_precision(pr_curve(scores, correct, has_match)) == pytest.approx(expected)


def test_from_ranking_builds_labels_from_positives():
    scores = np.array([[0.0, 1.0, 2.0], [3.0, 0.5, 0.5], [1.0, 1.0, 0.2]], dtype=np.float32)
    ranking = rank_matrix(scores, 1)  # top-1: 0, 1 (tie to the lower index), 2
    positives = [np.array([0]), np.array([2]), []]
    correct, has_match = top1_labels(ranking.top1, positives)
    np.testing.assert_array_equal(correct, [True, False, False])
    np.testing.assert_array_equal(has_match, [True, True, False])
    curve = pr_from_ranking(ranking.top1_distance, ranking.top1, positives)
    np.testing.assert_allclose(curve.thresholds, [0.0, 0.2, 0.5])
    np.testing.assert_allclose(curve.precision, [1, 1 / 2, 1 / 3])
    np.testing.assert_allclose(curve.recall, [1 / 2, 1 / 2, 1 / 2])


def test_bad_input_is_named():
    ok = np.array([True, False])
    with pytest.raises(TscmError, match="query 1 is marked correct but has_match is False"):
        pr_curve([0.1, 0.2], np.array([True, True]), ok)
    with pytest.raises(TscmError, match="correct: expected a bool array of shape"):
        pr_curve([0.1, 0.2], np.array([1, 0]), ok)
    with pytest.raises(TscmError, match="has_match: expected a bool array of shape"):
        pr_curve([0.1, 0.2], ok, np.array([True]))
    with pytest.raises(TscmError, match="NaN"):
        pr_curve([np.nan, 0.2], ok, ok)
    with pytest.raises(TscmError, match="none of the 2 queries has a true match"):
        pr_curve([0.1, 0.2], ~ok & ok, ~ok & ok)
    with pytest.raises(TscmError, match="positives: 1 lists for 2 queries"):
        top1_labels(np.array([0, 1]), [[0]])
    with pytest.raises(TscmError, match="target_precision"):
        calibrate_threshold(([0.1], [True], [True]), target_precision=1.5)
    with pytest.raises(TscmError, match="threshold: got None"):
        apply_threshold([0.1], np.array([True]), np.array([True]), None)
    with pytest.raises(TscmError, match="positive finite"):
        confidence([0.1], 0.0)
    with pytest.raises(TscmError, match="≥ 0"):
        confidence([-0.1], 1.0)


HAND = ([0.1, 0.2, 0.3, 0.4], np.array([True, False, True, False]), np.array([True, True, True, False]))


def test_calibration_reaches_the_target():
    # Precision by threshold: 1, 1/2, 2/3, 1/2; the largest threshold with ≥ 0.6 is 0.3.
    calibration = calibrate_threshold(HAND, target_precision=0.6)
    assert calibration == Calibration(0.3, 0.6, pytest.approx(2 / 3), pytest.approx(2 / 3))
    assert calibration.reached
    assert calibrate_threshold(pr_curve(*HAND), 1.0).threshold == 0.1


def test_calibration_says_when_the_target_is_unreachable():
    calibration = calibrate_threshold(([0.1, 0.1, 0.2], np.array([True, False, True]), np.ones(3, bool)), 0.99)
    assert not calibration.reached and calibration.threshold is None
    assert calibration.precision == pytest.approx(2 / 3)  # the best any threshold reached
    assert calibration.recall == pytest.approx(2 / 3)


def test_calibrated_threshold_transfers_to_another_split():
    rng = np.random.default_rng(3)

    def split(num_queries):
        # Correct matches tend to be nearer than wrong ones, as with real descriptors.
        has_match = rng.random(num_queries) < 0.9
        correct = has_match & (rng.random(num_queries) < 0.7)
        scores = np.where(correct, rng.gamma(2.0, 0.2, num_queries), rng.gamma(2.0, 0.6, num_queries))
        return scores, correct, has_match

    calibration_split, test_split = split(400), split(400)
    calibration = calibrate_threshold(calibration_split, target_precision=0.9)
    assert calibration.reached and calibration.precision >= 0.9
    # On its own split the threshold gives back exactly what calibration reported.
    again = apply_threshold(*calibration_split, calibration.threshold)
    assert again["precision"] == pytest.approx(calibration.precision)
    assert again["recall"] == pytest.approx(calibration.recall)
    # On the other split: the counts a plain loop gives.
    scores, correct, has_match = test_split
    moved = apply_threshold(scores, correct, has_match, calibration.threshold)
    tp = sum(1 for s, c in zip(scores, correct) if s <= calibration.threshold and c)
    fp = sum(1 for s, c in zip(scores, correct) if s <= calibration.threshold and not c)
    assert (moved["tp"], moved["fp"], moved["accepted"]) == (tp, fp, tp + fp)
    assert moved["precision"] == pytest.approx(tp / (tp + fp))
    assert moved["recall"] == pytest.approx(tp / has_match.sum())
    assert moved["precision"] > 0.8  # the same distribution: the precision roughly holds
    nothing = apply_threshold(scores, correct, has_match, -1.0)
    assert (nothing["accepted"], nothing["precision"], nothing["recall"]) == (0, 1.0, 0.0)


def test_confidence_is_monotone_and_half_at_the_threshold():
    scores = np.array([0.0, 0.5, 1.0, 2.0, 10.0, np.inf])
    values = confidence(scores, 1.0)
    np.testing.assert_allclose(values, [1.0, 2 / 3, 0.5, 1 / 3, 1 / 11, 0.0])
    assert np.all(np.diff(values) < 0)
    assert confidence(np.array([3.0]), 3.0)[0] == 0.5

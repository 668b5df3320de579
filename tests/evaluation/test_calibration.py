"""Thresholds chosen by a Clopper–Pearson lower bound on precision, checked against scipy.stats.beta."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import beta, binom

from tscm.errors import TscmError
from tscm.evaluation.calibration import (accepted_needed, calibrate_bounded, precision_lower_bound,
                                         precision_upper_bound)
from tscm.evaluation.precision_recall import pr_curve


def test_bound_is_the_beta_quantile_and_an_exact_binomial_bound():
    tp = np.array([0, 1, 5, 40, 299, 300])
    n = np.array([3, 1, 9, 40, 300, 300])
    bound = precision_lower_bound(tp, n, 0.95)
    assert bound[0] == 0.0
    for k in range(1, len(tp)):
        assert bound[k] == pytest.approx(beta.ppf(0.05, tp[k], n[k] - tp[k] + 1), rel=1e-12)
        # the bound p is where seeing ≥ tp right of n has probability 5 %
        assert binom.sf(tp[k] - 1, n[k], bound[k]) == pytest.approx(0.05, rel=1e-6)
    assert bound[-1] == pytest.approx(0.05 ** (1 / 300))  # no false positive: (1 − c)^(1/n)


def test_upper_bound_is_an_exact_binomial_bound():
    tp = np.array([0, 34, 29, 320, 5])
    n = np.array([4, 40, 34, 326, 5])
    upper = precision_upper_bound(tp, n, 0.95)
    assert upper[-1] == 1.0 and np.all(upper >= tp / n)
    for k in range(len(tp) - 1):
        # the bound p is where seeing ≤ tp right of n has probability 5 %
        assert binom.cdf(tp[k], n[k], upper[k]) == pytest.approx(0.05, rel=1e-6)
    assert precision_upper_bound([0], [0])[0] == 1.0  # nothing accepted: no evidence either way
    with pytest.raises(TscmError, match="true positives"):
        precision_upper_bound([3], [2])


def test_accepted_needed_is_the_smallest_flawless_count():
    for target in (0.9, 0.95, 0.99):
        needed = accepted_needed(target, 0.95)
        assert precision_lower_bound([needed], [needed])[0] >= target
        assert precision_lower_bound([needed - 1], [needed - 1])[0] < target
    assert accepted_needed(0.99) == 299 and accepted_needed(1.0) is None


def labelled(num, seed, wrong_rate):
    rng = np.random.default_rng(seed)
    scores = rng.random(num)
    correct = rng.random(num) > wrong_rate * scores * 2  # confident queries are right more often
    return scores, correct, np.ones(num, dtype=bool)


def test_bounded_threshold_is_the_largest_whose_bound_reaches_the_target():
    scores, correct, has_match = labelled(2000, 0, 0.1)
    curve = pr_curve(scores, correct, has_match)
    chosen = calibrate_bounded(curve, 0.95)
    # plain loop over every distinct score
    best = None
    for t in np.unique(scores):
        accepted = scores <= t
        tp, n = int((accepted & correct).sum()), int(accepted.sum())
        if tp and beta.ppf(0.05, tp, n - tp + 1) >= 0.95:
            best = t
    assert chosen.threshold == best
    accepted = scores <= chosen.threshold
    assert chosen.accepted == accepted.sum() and chosen.true_positives == (accepted & correct).sum()
    assert chosen.precision_bound >= 0.95 and chosen.precision >= chosen.precision_bound
    empirical = calibrate_bounded(curve, 0.95, bound="none")
    assert empirical.threshold >= chosen.threshold and empirical.precision_bound == empirical.precision


def test_too_few_queries_are_refused_with_how_many_are_needed():
    scores = np.linspace(0, 1, 100)
    correct = np.ones(100, dtype=bool)  # flawless, but only 100 queries
    curve = pr_curve(scores, correct, correct)
    with pytest.raises(TscmError, match=r"val: .*needs at least 299 correct accepted matches.*100 queries with a true match"):
        calibrate_bounded(curve, 0.99, where="val")
    assert calibrate_bounded(curve, 0.99, bound="none").threshold == 1.0
    with pytest.raises(TscmError, match="cannot be shown"):
        calibrate_bounded(curve, 1.0)
    assert calibrate_bounded(curve, 0.95).threshold == 1.0
    # a flawless split one query short of the count needed is refused; one of exactly that count is not
    needed = accepted_needed(0.95)
    for size, refused in ((needed - 1, True), (needed, False)):
        flawless = np.ones(size, dtype=bool)
        curve = pr_curve(np.linspace(0, 1, size), flawless, flawless)
        if refused:
            with pytest.raises(TscmError, match=f"needs at least {needed} "):
                calibrate_bounded(curve, 0.95)
        else:
            assert math.isclose(calibrate_bounded(curve, 0.95).threshold, 1.0)

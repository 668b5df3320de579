"""The lone query's scan by leading dims gives the full scan's hits, distances and tie order, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

import tscm.evaluation.search as search
from tscm.evaluation.search import ScanTarget, exact_search


def pca_like(count: int, dim: int, seed: int) -> np.ndarray:
    """Rows whose spread falls off dim by dim, as PCA components do; a fifth are exact duplicates (ties)."""
    rng = np.random.default_rng(seed)
    rows = (rng.normal(size=(count, dim)) * 0.8 ** np.arange(dim)).astype(np.float32)
    rows[-count // 5:] = rows[: count // 5]
    return rows


def brute_force(rows: np.ndarray, query: np.ndarray, k: int) -> tuple[list[float], list[int]]:
    """Plain loop: float64 distance per row, rounded to float32, ordered by (distance, row)."""
    scored = sorted((np.float32(np.sum((row.astype(np.float64) - query) ** 2)), i) for i, row in enumerate(rows))
    return [float(d) for d, _ in scored[:k]], [i for _, i in scored[:k]]


@pytest.mark.parametrize("k", [1, 5, 70])
def test_leading_dims_give_the_full_scans_hits(k):
    rows = pca_like(600, 48, seed=k)
    full, leading = ScanTarget.of(rows), ScanTarget.of(rows, leading_dims=8)
    assert leading.leading is not None and full.leading is None
    rng = np.random.default_rng(100 + k)
    queries = np.concatenate([rows[:5], (rng.normal(size=(5, 48)) * 0.8 ** np.arange(48)).astype(np.float32)])
    taken = 0
    for query in queries:
        slack = np.float32(search._scan_slack(48, leading.max_norm, float(np.linalg.norm(query))))
        taken += search._candidates_by_leading_dims(query, leading, k, slack) is not None
        fast, plain = exact_search(query[None], leading, k), exact_search(query[None], full, k)
        np.testing.assert_array_equal(fast[0], plain[0])
        np.testing.assert_array_equal(fast[1], plain[1])
        distances, rows_found = brute_force(rows, query, k)
        assert fast[1][0].tolist() == rows_found and fast[0][0].tolist() == distances
    if k <= 5:  # in a PCA-like space the bound keeps few rows: the leading path ran (k = 70 needs an eighth)
        assert taken == len(queries)


def test_rows_without_a_falling_spread_fall_back_to_the_full_scan():
    rows = np.random.default_rng(3).normal(size=(400, 40)).astype(np.float32)  # every dim alike
    target = ScanTarget.of(rows, leading_dims=4)
    query = rows[7] + np.float32(0.5)
    slack = np.float32(search._scan_slack(40, target.max_norm, float(np.linalg.norm(query))))
    assert search._candidates_by_leading_dims(query, target, 3, slack) is None
    got = exact_search(query[None], target, 3)
    assert got[1][0].tolist() == brute_force(rows, query, 3)[1]
    # The next lone queries scan in full straight away (a stream's frames are alike), then try again.
    assert target.leading.countdown.left == search.LEADING_RETRY_AFTER
    for _ in range(search.LEADING_RETRY_AFTER):
        exact_search(query[None], target, 3)
    assert target.leading.countdown.left == 0
    exact_search(query[None], target, 3)
    assert target.leading.countdown.left == search.LEADING_RETRY_AFTER


def test_a_target_extended_row_by_row_equals_one_made_at_once():
    rows = pca_like(300, 32, seed=9)
    buffers: dict[str, np.ndarray] = {}

    def grow(name: str, current: np.ndarray, new: np.ndarray) -> np.ndarray:
        buffers[name] = np.concatenate([current, new])
        return buffers[name]

    target = ScanTarget.of(rows[:100], leading_dims=8)
    for start in range(100, 300, 50):
        target = target.extended(rows[: start + 50], rows[start : start + 50], grow)
    whole = ScanTarget.of(rows, leading_dims=8)
    np.testing.assert_array_equal(target.norms, whole.norms)
    np.testing.assert_array_equal(target.leading.vectors, whole.leading.vectors)
    np.testing.assert_array_equal(target.leading.norms, whole.leading.norms)
    assert target.max_norm == whole.max_norm


@pytest.mark.parametrize("k", [1, 5])
def test_only_rows_near_the_kth_distance_are_measured_in_full(k):
    """The leading dims' bound lets through rows near the query in those dims only; the full scan's rule, applied to
    them, leaves the rows that can be among the k nearest: each within two slacks of the k-th distance."""
    rows = pca_like(600, 48, seed=10 + k)
    target = ScanTarget.of(rows, leading_dims=8)
    rng = np.random.default_rng(7)
    for query in np.concatenate([rows[5:10], (rng.normal(size=(5, 48)) * 0.8 ** np.arange(48)).astype(np.float32)]):
        slack = np.float32(search._scan_slack(48, target.max_norm, float(np.linalg.norm(query))))
        candidates = search._candidates_by_leading_dims(query, target, k, slack)
        distances, nearest = brute_force(rows, query, k)
        assert set(nearest) <= set(candidates.tolist())
        measured = np.sum((rows[candidates].astype(np.float64) - query) ** 2, axis=1)
        assert np.all(measured <= distances[-1] + 2 * slack)

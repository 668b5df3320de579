"""Sequence matching against a plain loop, streaming against batch, and a route only sequences can read."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tscm.errors import TscmError
from tscm.evaluation.precision_recall import average_precision, pr_from_ranking
from tscm.evaluation.ranking import first_hit_rank, rank_matrix, squared_distances
from tscm.evaluation.sequence import (
    DEFAULT_SPEEDS,
    SequenceMatcher,
    local_contrast,
    sequence_ranking,
    sequence_scores,
)


def reference_scores(d, length, speeds):
    """Plain loop over q, j, v, t: the mean of D along each speed's path; a point before the database's
    first frame scores its query row's mean distance."""
    num_q, num_db = d.shape
    scores = np.full((num_q, num_db), np.inf)
    for q in range(num_q):
        for j in range(num_db):
            for v in speeds:
                terms = []
                for t in range(length):
                    if q - t < 0:
                        break
                    i = j - math.floor(v * t + 0.5)
                    terms.append(float(d[q - t, i]) if i >= 0 else float(np.mean(d[q - t].astype(np.float64))))
                scores[q, j] = min(scores[q, j], sum(terms) / len(terms))
    return scores


def reference_contrast(d, window):
    out = np.empty(d.shape)
    for q in range(d.shape[0]):
        for j in range(d.shape[1]):
            neighbours = d[q, max(j - window, 0) : j + window + 1].astype(np.float64)
            out[q, j] = (d[q, j] - neighbours.mean()) / neighbours.std()
    return out


@pytest.mark.parametrize("length", [1, 2, 5, 9])
@pytest.mark.parametrize("speeds", [(1.0,), DEFAULT_SPEEDS, (0.5, 1.0, 2.0, 3.3)])
def test_scores_match_reference_loop(length, speeds):
    rng = np.random.default_rng(length)
    # Q and N below, at and above L, so the first queries and the first database frames are exercised.
    for num_q, num_db in [(1, 1), (3, 2), (7, 12), (12, 5)]:
        d = rng.random((num_q, num_db)).astype(np.float32)
        got = sequence_scores(d, length, speeds)
        assert got.shape == (num_q, num_db) and got.dtype == np.float32
        np.testing.assert_allclose(got, reference_scores(d, length, speeds), rtol=1e-5)


def test_first_query_and_length_one_are_the_single_frame_distances():
    d = np.random.default_rng(0).random((6, 8)).astype(np.float32)
    np.testing.assert_array_equal(sequence_scores(d, 1), d)
    np.testing.assert_array_equal(sequence_scores(d, 5)[0], d[0])


def test_local_contrast_matches_reference_and_feeds_the_scores():
    d = np.random.default_rng(1).random((4, 15)).astype(np.float32)
    np.testing.assert_allclose(local_contrast(d, 3), reference_contrast(d, 3), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        sequence_scores(d, 4, contrast_window=3), reference_scores(local_contrast(d, 3), 4, DEFAULT_SPEEDS), rtol=1e-5
    )
    # A flat window has no contrast: its entries become 0, not noise over ~0.
    np.testing.assert_array_equal(local_contrast(np.full((1, 5), 2.0), 2), np.zeros((1, 5)))


@pytest.mark.parametrize("contrast_window", [None, 4])
def test_streaming_equals_batch(contrast_window):
    rng = np.random.default_rng(2)
    d = rng.random((23, 40)).astype(np.float32)
    batch = sequence_scores(d, 6, DEFAULT_SPEEDS, contrast_window=contrast_window)
    matcher = SequenceMatcher(6, 40, DEFAULT_SPEEDS, contrast_window=contrast_window)
    history = matcher._history
    for q in range(len(d)):
        np.testing.assert_array_equal(matcher.push(d[q]), batch[q])
    assert matcher._history is history and history.shape == (6, 40)  # the ring buffer is never replaced
    matcher.reset()
    np.testing.assert_array_equal(matcher.push(d[5]), sequence_scores(d[5:6], 6, contrast_window=contrast_window)[0])


def test_the_streaming_buffer_grows_with_the_stream_not_with_the_length():
    rng = np.random.default_rng(3)
    d = rng.random((150, 30)).astype(np.float32)
    batch = sequence_scores(d, 100)
    matcher = SequenceMatcher(100, 30)  # longer than the first buffer: it grows (64 -> 100 rows), then wraps
    for q in range(len(d)):
        np.testing.assert_array_equal(matcher.push(d[q]), batch[q])
    assert matcher._history.shape == (100, 30)

    endless = SequenceMatcher(10**12, 30)  # a length no memory holds: the stream's rows are kept
    for q in range(80):
        np.testing.assert_array_equal(endless.push(d[q]), batch[q])
    assert endless._history.shape == (128, 30)


def reference_growing_scores(rows, length, speeds, unseen):
    """Plain loop for a map that grows: row q has len(rows[q]) entries; an entry added after row q counts as
    `unseen` there, and a path point before the first entry as row q's mean over its own entries."""
    scores = []
    for q, row in enumerate(rows):
        out = np.full(len(row), np.inf)
        for j in range(len(row)):
            for v in speeds:
                terms = []
                for t in range(min(length, q + 1)):
                    earlier = rows[q - t]
                    i = j - math.floor(v * t + 0.5)
                    if i < 0:
                        terms.append(float(np.mean(earlier.astype(np.float64))) if len(earlier) else unseen)
                    else:
                        terms.append(float(earlier[i]) if i < len(earlier) else unseen)
                out[j] = min(out[j], sum(terms) / len(terms))
        scores.append(out)
    return scores


@pytest.mark.parametrize("length", [1, 3, 70])
def test_a_growing_map_scores_entries_added_later_as_unseen(length):
    """Loop closure in one traversal: the map starts empty and grows by one or two entries per frame (past
    the first buffer's columns and rows), earlier rows are shorter."""
    rng = np.random.default_rng(length)
    sizes = np.concatenate([[0], np.cumsum(rng.integers(1, 3, 99))])
    rows = [rng.random(size).astype(np.float32) for size in sizes]
    matcher = SequenceMatcher(length, 0, unseen=4.0)
    for got, expected in zip((matcher.push(row) for row in rows), reference_growing_scores(rows, length, DEFAULT_SPEEDS, 4.0)):
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=1e-5)
    with pytest.raises(TscmError, match=f"distance row: expected at least {sizes[-1]} numeric distances"):
        matcher.push(np.ones(sizes[-1] - 1))  # a map never shrinks
    with pytest.raises(TscmError, match="contrast_window needs a map of fixed size"):
        SequenceMatcher(3, 0, unseen=4.0, contrast_window=2)


def ambiguous_route(seed, num_db=200, num_appearances=8, dim=16, noise=0.3, speed=1.0):
    """A route whose frames take one of a few appearances at random: every single frame has ~25 look-alikes.

    The query traversal passes the same places (at `speed` database frames per query frame) with
    fresh noise; a true match is within one frame of its place.
    """
    rng = np.random.default_rng(seed)
    appearances = rng.normal(size=(num_appearances, dim))
    route = rng.integers(0, num_appearances, num_db)
    db = appearances[route] + noise * rng.normal(size=(num_db, dim))
    places = np.round(np.arange(int((num_db - 1) / speed)) * speed).astype(np.int64)
    queries = appearances[route[places]] + noise * rng.normal(size=(len(places), dim))
    positives = [np.arange(max(p - 1, 0), min(p + 2, num_db)) for p in places]
    return squared_distances(queries, db), positives


def recall_at_1(ranking, positives):
    return 100.0 * float(np.mean(first_hit_rank(ranking.indices, positives) < 1))


def test_sequences_resolve_what_single_frames_cannot():
    d, positives = ambiguous_route(seed=0)
    single = rank_matrix(d, 1)
    sequence = sequence_ranking(d, 5, k=1)
    assert recall_at_1(single, positives) < 15.0  # measured 5.0
    assert recall_at_1(sequence, positives) > 85.0  # measured 95.0
    # The sequence score is the top-1 score, so precision-recall applies as it is.
    np.testing.assert_array_equal(sequence.top1_distance, sequence_scores(d, 5).min(axis=1))
    single_ap = average_precision(pr_from_ranking(single.top1_distance, single.top1, positives))
    sequence_ap = average_precision(pr_from_ranking(sequence.top1_distance, sequence.top1, positives))
    assert sequence_ap > single_ap + 0.5


def test_speed_range_follows_a_faster_traversal():
    # The query traversal moves 1.2 database frames per query frame: a single speed of 1.0 drifts off.
    d, positives = ambiguous_route(seed=0, speed=1.2)
    with_speeds = recall_at_1(sequence_ranking(d, 10, k=1), positives)
    fixed_speed = recall_at_1(sequence_ranking(d, 10, (1.0,), k=1), positives)
    assert with_speeds > fixed_speed + 20.0  # measured 86.1 against 53.3


def test_bad_input_is_named():
    d = np.ones((3, 4), dtype=np.float32)
    with pytest.raises(TscmError, match="sequence length: expected a positive integer, got 0"):
        sequence_scores(d, 0)
    with pytest.raises(TscmError, match="speeds: expected positive finite"):
        sequence_scores(d, 3, (1.0, -0.5))
    with pytest.raises(TscmError, match="speeds: expected positive finite"):
        sequence_scores(d, 3, ())
    with pytest.raises(TscmError, match="contrast_window"):
        sequence_scores(d, 3, contrast_window=0)
    with pytest.raises(TscmError, match="distances: contains NaN"):
        sequence_scores(np.full((2, 2), np.nan), 3)
    with pytest.raises(TscmError, match="distances: expected a numeric Q×N matrix"):
        sequence_scores(np.ones(4), 3)
    with pytest.raises(TscmError, match="num_db"):
        SequenceMatcher(3, 0)
    with pytest.raises(TscmError, match="distance row: expected 4 numeric distances"):
        SequenceMatcher(3, 4).push(np.ones(5))

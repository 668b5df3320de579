"""Decision scores against a plain loop over each query's row; per-split scores and their PR blocks."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers.routes import aliased_route

from tscm.errors import TscmError
from tscm.evaluation.decision import SCORE_NAMES, decision_scores, pr_by_score, split_decisions
from tscm.evaluation.precision_recall import pr_curve, pr_summary
from tscm.evaluation.protocol import evaluate_data_set, save_descriptor_file
from tscm.evaluation.ranking import squared_distances
from tscm.evaluation.sequence import sequence_scores


def plain_scores(row, positions, exclusion):
    """One row by hand: top-1 (first minimum), its value, the best value farther than `exclusion`, mean, std."""
    row = [float(v) for v in row]
    top1 = min(range(len(row)), key=lambda j: (row[j], j))
    best = row[top1]
    outside = [row[j] for j in range(len(row))
               if sum((a - b) ** 2 for a, b in zip(positions[j], positions[top1])) ** 0.5 > exclusion]
    competitor = min(outside) if outside else None
    ratio = best / competitor if competitor else 1.0
    mean = sum(row) / len(row)
    std = (sum((v - mean) ** 2 for v in row) / len(row)) ** 0.5
    return top1, {"distance": best, "ratio": ratio, "normalised": (best - mean) / std if std else 0.0}


@pytest.mark.parametrize("dims", [1, 2])
def test_scores_match_a_plain_loop(dims):
    rng = np.random.default_rng(0)
    rows = rng.uniform(0, 4, size=(30, 25))
    rows[3, 7] = rows[3, 2] = 0.0  # a tie: the lower index is the top-1
    rows[4] = 1.5  # a flat row: z-score 0, ratio 1
    positions = rng.uniform(0, 10, size=(25, dims)) if dims == 2 else np.arange(25.0)[:, None]
    exclusion = 3.0
    result = decision_scores(rows, positions, exclusion)
    assert set(result.scores) == set(SCORE_NAMES)
    for q, row in enumerate(rows):
        top1, expected = plain_scores(row, positions, exclusion)
        assert result.top1[q] == top1
        for name in SCORE_NAMES:
            assert result.scores[name][q] == pytest.approx(expected[name], rel=1e-9, abs=1e-12), (q, name)
    assert result.top1[3] == 2 and result.scores["ratio"][4] == 1.0 and result.scores["normalised"][4] == 0.0


def test_ratio_without_a_competitor_is_undecided():
    rows = np.array([[0.1, 0.5, 0.9]])
    result = decision_scores(rows, np.arange(3.0), exclusion=10.0)  # every entry lies within the zone
    assert result.scores["ratio"][0] == 1.0


def test_bad_inputs_are_named():
    with pytest.raises(TscmError, match="unknown"):
        decision_scores(np.ones((2, 3)), np.arange(3.0), 1.0, ("loudness",))
    with pytest.raises(TscmError, match="negative"):
        decision_scores(-np.ones((2, 3)), np.arange(3.0), 1.0)
    with pytest.raises(TscmError, match="positions"):
        decision_scores(np.ones((2, 3)), np.arange(4.0), 1.0)
    with pytest.raises(TscmError, match="exclusion"):
        decision_scores(np.ones((2, 3)), np.arange(3.0), -1.0)


@pytest.mark.parametrize("length", [1, 5])
def test_split_decisions_follow_the_matrix_they_are_made_from(length):
    placeset, db, queries = aliased_route()
    decisions = split_decisions(placeset, db, queries, sequence_length=length)
    rows = squared_distances(queries, db)
    if length > 1:
        rows = sequence_scores(rows, length)  # frames are already in route order
    expected = decision_scores(rows, np.arange(len(db), dtype=np.float64), 5.0)
    assert np.array_equal(decisions.scores.top1, expected.top1)
    for name in SCORE_NAMES:
        np.testing.assert_allclose(decisions.scores.scores[name], expected.scores[name], rtol=1e-6)
    positives = placeset.positives(1.0)
    assert [bool(t in p) for t, p in zip(decisions.scores.top1, positives)] == decisions.correct.tolist()
    blocks = pr_by_score(decisions)
    assert blocks["ratio"]["exclusion"] == 5.0
    assert blocks["distance"]["average_precision"] == pytest.approx(
        pr_summary(pr_curve(expected.scores["distance"], decisions.correct, decisions.has_match))["average_precision"])


def test_ratio_separates_look_alikes_that_the_distance_cannot():
    placeset, db, queries = aliased_route(num=200, seed=1)
    blocks = pr_by_score(split_decisions(placeset, db, queries))
    assert blocks["ratio"]["average_precision"] > blocks["distance"]["average_precision"] + 5


def test_evaluate_json_keeps_pr_and_adds_one_block_per_score(tmp_path):
    placeset, db, queries = aliased_route()
    save_descriptor_file(tmp_path / "d.npz", db, queries)
    result = evaluate_data_set(placeset, descriptors=str(tmp_path / "d.npz"), json_path=str(tmp_path / "r.json"))
    written = json.loads((tmp_path / "r.json").read_text())
    assert written["pr"] == result.pr and set(written["pr_by_score"]) == set(SCORE_NAMES)
    # the distance block is today's `pr` block, computed the second way
    for key in ("average_precision", "recall_at_100_precision", "f1_max", "num_queries"):
        assert written["pr_by_score"]["distance"][key] == pytest.approx(written["pr"][key], rel=1e-6)
    assert "decision score ratio" in result.format_table()


@pytest.mark.parametrize("exclusion", [0.0, 2.0, 2.5, 40.0])
def test_one_row_decisions_match_the_batch(exclusion):
    from tscm.evaluation.decision import DecisionRule, decide_row

    rows = np.random.default_rng(3).uniform(0, 2, size=(40, 30))
    batch = decision_scores(rows, np.arange(30.0), exclusion)
    for q, row in enumerate(rows):
        for name in SCORE_NAMES:
            rule = DecisionRule(name, 1.0, exclusion, "frame")
            assert decide_row(rule, row) == pytest.approx(batch.scores[name][q], rel=1e-12)
            assert decide_row(rule, row, positions=np.arange(30.0)) == pytest.approx(batch.scores[name][q], rel=1e-12)

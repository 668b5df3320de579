"""The demo's decision-score table: val thresholds applied to test, per score, length and bound."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.routes import aliased_route

from tscm.evaluation.calibration import precision_lower_bound
from tscm.evaluation.decision import SCORE_NAMES, split_decisions
from tscm.experiments.loop_closure import DECISION_HEADER, decision_report, decision_transfers


def test_each_row_is_the_val_threshold_measured_on_test(tmp_path):
    val = aliased_route(400, seed=0)
    test = aliased_route(400, seed=1, split="test")
    entries = decision_transfers(val, test, None, lengths=(1, 3), target_precision=0.9)
    assert len(entries) == 2 * len(SCORE_NAMES) * 3  # lengths × scores × calibrations
    assert all(e["reached"] for e in entries if e["score"] == "ratio")
    for e in (e for e in entries if e["reached"]):
        decisions = split_decisions(test[0], test[1], test[2], sequence_length=e["sequence_length"])
        accepted = decisions.scores.scores[e["score"]] <= e["threshold"]
        tp = int((accepted & decisions.correct).sum())
        assert e["test_accepted"] == accepted.sum() and e["test_false_positives"] == accepted.sum() - tp
        assert e["test_precision"] == pytest.approx(tp / accepted.sum())
        assert e["test_recall"] == pytest.approx(tp / decisions.has_match.sum())
        assert e["test_precision_bound"] == pytest.approx(precision_lower_bound([tp], [accepted.sum()])[0])
        if e["bound"] == "clopper-pearson":
            assert e["val_precision_bound"] >= 0.9 and e["val_precision"] >= e["val_precision_bound"]


def test_unreachable_targets_say_how_many_queries_they_need(tmp_path):
    val = aliased_route(120, seed=2)
    test = aliased_route(120, seed=3, split="test")
    report = decision_report(val, test, None, "toy", tmp_path, target_precision=0.99)
    assert report["header"] == DECISION_HEADER and len(report["rows"]) == len(report["values"])
    refused = [row for row, e in zip(report["rows"], report["values"]) if e["bound"] == "clopper-pearson"]
    assert refused and all(row[-1] == "not reachable on val: needs ≥ 299 correct accepted" for row in refused)
    assert [p.name for p in report["pictures"]] == ["decision_scores_toy.png"]
    assert report["pictures"][0].stat().st_size > 1000
    assert all(len(row) == len(DECISION_HEADER) for row in report["rows"])
    assert np.isfinite([e["test_precision"] for e in report["values"] if e["reached"]]).all()


def test_consistency_entries_filter_the_test_acceptances():
    from tscm.evaluation.consistency import consistent_acceptance

    val = aliased_route(300, seed=4)
    test = aliased_route(300, seed=5, split="test")
    entries = decision_transfers(val, test, None, lengths=(3,), target_precision=0.9, scores=("ratio",),
                                 calibrations=(("none", False),), consistency=(2, 4))
    plain, *filtered = entries
    decisions = split_decisions(*test, sequence_length=3)
    passed = decisions.scores.scores["ratio"] <= plain["threshold"]
    for e in filtered:
        accepted = consistent_acceptance(passed, decisions.route_position, e["consistency"])  # frames in route order
        assert e["threshold"] == plain["threshold"] and e["test_accepted"] == accepted.sum()
        assert e["test_false_positives"] == (accepted & ~decisions.correct).sum()
    assert plain["test_accepted"] >= filtered[0]["test_accepted"] >= filtered[1]["test_accepted"]


def test_the_raw_distance_transfer_counts_accepted_queries():
    from tscm.experiments.loop_closure import threshold_transfer

    val = aliased_route(400, seed=0)
    test = aliased_route(400, seed=1, split="test")
    plain = threshold_transfer(val, test, None, target_precision=0.9, sequence_length=3)
    assert plain["reached"]
    entry = next(e for e in decision_transfers(val, test, None, lengths=(3,), target_precision=0.9, scores=["distance"],
                                               calibrations=[("none", False)]))
    assert isinstance(plain["test_accepted"], int) and plain["test_accepted"] == entry["test_accepted"]
    assert plain["test_false_positives"] == entry["test_false_positives"]

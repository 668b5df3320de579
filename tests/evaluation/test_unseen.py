"""Never-seen twins: each query scored with its place cut out of the database; a threshold calibrated with
them refuses places the map lacks."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.routes import aliased_route

from tscm.evaluation.calibration import calibrate_bounded
from tscm.evaluation.decision import split_decisions
from tscm.evaluation.precision_recall import pr_curve
from tscm.evaluation.unseen import place_entries, unseen_accepted, unseen_scores, with_unseen


def test_a_twin_scores_against_every_entry_outside_its_place_as_a_plain_loop_does():
    placeset, db, queries = aliased_route(60, seed=1)
    twins = unseen_scores(placeset, db, queries, sequence_length=1, radius=1.0, exclusion=3.0, names=("distance",))
    frames = placeset.db_xy[:, 0]
    for q, matches in enumerate(placeset.positives(1.0)):
        kept = [j for j in range(len(db)) if all(abs(frames[j] - frames[m]) > 3.0 for m in matches)]
        expected = min(float(np.sum((queries[q] - db[j]) ** 2)) for j in kept)
        assert twins["distance"][q] == pytest.approx(expected, rel=1e-3, abs=1e-5)  # float32 expansion of the norm
        assert set(place_entries(placeset, 1.0, 3.0)[q]) == set(range(len(db))) - set(kept)


def test_a_sequence_twin_loses_the_places_of_every_frame_of_its_window():
    placeset, db, queries = aliased_route(40, seed=2)
    twins = unseen_scores(placeset, db, queries, sequence_length=4, radius=1.0, exclusion=2.0, names=("distance",))
    # the last query's window is frames 36..39; their places (±1 match, ±2 around it) span 33..39
    window_rows = queries[36:40]
    kept = np.arange(33)
    from tscm.evaluation.ranking import squared_distances
    from tscm.evaluation.sequence import sequence_scores

    expected = sequence_scores(squared_distances(window_rows, db[kept]), 4)[-1].min()
    assert twins["distance"][39] == pytest.approx(float(expected), rel=1e-5)


def test_counting_twins_makes_the_threshold_refuse_places_never_seen():
    placeset, db, queries = aliased_route(400, seed=0)
    plain = split_decisions(placeset, db, queries, sequence_length=3, radius=1.0)
    both = with_unseen(plain, placeset, db, queries, sequence_length=3, radius=1.0)
    loose = calibrate_bounded(pr_curve(plain.scores.scores["ratio"], plain.correct, plain.has_match), 0.95, bound="none")
    strict = calibrate_bounded(pr_curve(*both.curve_inputs("ratio")), 0.95, bound="none")
    assert strict.threshold <= loose.threshold
    assert unseen_accepted(both, "ratio", strict.threshold) <= unseen_accepted(both, "ratio", loose.threshold)
    scores, correct, has_match = both.curve_inputs("ratio")
    accepted = scores <= strict.threshold
    assert (accepted & correct).sum() / accepted.sum() >= 0.95  # precision over queries and twins together
    assert len(scores) == 2 * len(queries) and not correct[len(queries):].any() and not has_match[len(queries):].any()


def test_single_frame_twins_equal_the_scores_of_each_shortened_row():
    from tscm.evaluation.decision import decision_scores, route_positions
    from tscm.evaluation.ranking import squared_distances

    placeset, db, queries = aliased_route(50, seed=3)
    twins = unseen_scores(placeset, db, queries, sequence_length=1, radius=1.0, exclusion=2.0)
    positions, _ = route_positions(placeset)
    places = place_entries(placeset, 1.0, 2.0)
    for q in range(len(queries)):
        kept = np.setdiff1d(np.arange(len(db)), places[q])
        row = squared_distances(queries[q:q + 1], db[kept])
        expected = decision_scores(row, positions[kept], 2.0).scores
        for name, values in expected.items():
            assert twins[name][q] == pytest.approx(values[0], rel=1e-4, abs=1e-6), (q, name)

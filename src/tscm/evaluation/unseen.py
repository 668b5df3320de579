"""Decision scores of queries at places the map has never seen, made from a split with ground truth.

A validation split has a true match for every query, so a threshold calibrated on it learns "right
match or wrong match", not "seen before or never seen": a robot on its first pass, whose map holds
only other places, then accepts false loop closures. Each query here gets a never-seen twin: the same
query (or the same last L frames) scored against the database with the query's place taken out, that
is every entry within `exclusion` of one of its true matches (for a sequence, of any of its frames'
matches). Whatever the twin's top-1 is, it is a wrong place, so accepting the twin is a false closure.
Calibrating on the queries and their twins together asks the threshold to refuse both kinds of error.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import numpy as np
from scipy.spatial import cKDTree

from tscm.data.places import default_radius
from tscm.evaluation.decision import (
    CHUNK_ENTRIES,
    SCORE_NAMES,
    best_outside_zone,
    decision_scores,
    ratio_of,
    route_positions,
    z_scores,
)
from tscm.evaluation.ranking import squared_distances
from tscm.evaluation.sequence import sequence_scores, traversal_order


def place_entries(placeset, radius: float | None, exclusion: float) -> list[np.ndarray]:
    """Per query, the database entries of its place: its true matches (within `radius`, None: the unit's default)
    and every entry within `exclusion` of one."""
    radius = default_radius(placeset.unit) if radius is None else radius
    positions, _ = route_positions(placeset)
    tree = cKDTree(positions)
    places = []
    for matches in placeset.positives(radius):
        near = tree.query_ball_point(positions[matches], r=exclusion) if len(matches) else []
        places.append(np.unique(np.concatenate([np.asarray(matches, dtype=np.int64),
                                                *[np.asarray(n, dtype=np.int64) for n in near]])))
    return places


def unseen_scores(placeset, db, queries, *, sequence_length: int, radius: float | None, exclusion: float,
                  names: Sequence[str] = SCORE_NAMES) -> dict[str, np.ndarray]:
    """Each query's never-seen twin under every decision score (name -> Q values, in the PlaceSet's query
    order); NaN where there is no twin: a query whose place the database lacks already is a never-seen
    query, and a twin left with no database entry at all has nothing to score."""
    positions, _ = route_positions(placeset)
    db = np.asarray(db, dtype=np.float32)
    queries = np.asarray(queries, dtype=np.float32)
    places = place_entries(placeset, radius, exclusion)
    if sequence_length == 1:
        return _single_frame_twins(db, queries, places, positions, exclusion, names)
    out = {name: np.full(len(queries), np.nan) for name in names}
    db_order, query_order = traversal_order(placeset)
    windows: list = [None] * len(queries)
    for rank, q in enumerate(query_order):  # the query and the frames before it along the route
        windows[q] = query_order[max(0, rank - sequence_length + 1): rank + 1]
    for q, window in enumerate(windows):
        removed = np.unique(np.concatenate([places[w] for w in window]))
        kept = db_order[~np.isin(db_order, removed)]  # route order, the place cut out
        if removed.size == 0 or kept.size == 0:
            continue
        rows = sequence_scores(squared_distances(queries[window], db[kept]), sequence_length)[-1:]
        scores = decision_scores(rows, positions[kept], exclusion, names)
        for name in names:
            out[name][q] = scores.scores[name][0]
    return out


def _single_frame_twins(db, queries, places, positions, exclusion, names) -> dict[str, np.ndarray]:
    """The single-frame twins a block of queries at a time: each row's place set to inf (absent), then the
    decision scores over the entries left, as `decision_scores` computes them on the shortened row."""
    out = {name: np.full(len(queries), np.nan) for name in names}
    step = max(1, CHUNK_ENTRIES // max(len(db) * positions.shape[1], 1))
    for start in range(0, len(queries), step):
        stop = min(start + step, len(queries))
        rows = squared_distances(queries[start:stop], db).astype(np.float64)
        removed = np.zeros(rows.shape, dtype=bool)
        for row, q in enumerate(range(start, stop)):
            removed[row, places[q]] = True
        twin = removed.any(axis=1) & ~removed.all(axis=1)
        rows[removed] = np.inf
        top1 = rows.argmin(axis=1)
        best = rows[np.arange(len(rows)), top1]
        values = {"distance": best}
        if "ratio" in names:
            values["ratio"] = ratio_of(best, best_outside_zone(rows, top1, positions, exclusion))
        if "normalised" in names:
            kept = ~removed
            count = np.maximum(kept.sum(axis=1), 1)
            mean = np.where(kept, rows, 0.0).sum(axis=1) / count
            std = np.sqrt(np.where(kept, (rows - mean[:, None]) ** 2, 0.0).sum(axis=1) / count)
            values["normalised"] = z_scores(best, mean, std)
        for name in names:
            out[name][start:stop] = np.where(twin, values[name], np.nan)
    return out

def with_unseen(decisions, placeset, db, queries, *, sequence_length: int, radius: float | None):
    """`decisions` (a SplitDecisions of these queries) with their never-seen twins under the same scores."""
    twins = unseen_scores(placeset, db, queries, sequence_length=sequence_length, radius=radius,
                          exclusion=decisions.scores.exclusion, names=list(decisions.scores.scores))
    return replace(decisions, unseen=twins)


def unseen_accepted(decisions, name: str, threshold: float) -> float | None:
    """The share of never-seen twins a threshold accepts (false closures at places the map lacks); None without twins."""
    twins = decisions.unseen[name]
    twins = twins[~np.isnan(twins)]
    return float(np.mean(twins <= threshold)) if twins.size else None

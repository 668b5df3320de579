"""A query's hits in a `PlaceIndex` as `Place` results, each decided by the index's calibrated threshold.

With a threshold (tscm.deploy.retrieval.calibration) stored for the index's search space, the first place
of a query gets the threshold's decision score (tscm.evaluation.decision: distance, distinctiveness ratio
or z-score), whether it is `accepted` and a `confidence`; without one both are None.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tscm.deploy.retrieval.index import PlaceIndex
from tscm.errors import TscmError
from tscm.evaluation.decision import DecisionRule, decide_from_hits, decide_row
from tscm.evaluation.ranking import squared_distances


@dataclass
class Place:
    """One hit of a query: the database image's id, path (None if added from memory), coordinates."""

    rank: int
    id: int
    distance: float  # squared L2 in the space the back-end searches (a sequence score for query_sequence)
    path: str | None
    xy: tuple[float, float] | None
    accepted: bool | None = None  # score ≤ the index's calibrated threshold; None without one
    confidence: float | None = None  # threshold / (threshold + score): 0.5 at the threshold; None without one
    time: float | None = None
    decision_score: float | None = None  # the threshold's decision score of this place; None without one
    score_name: str | None = None  # which score (tscm.evaluation.decision): distance, ratio, normalised

    def to_json(self) -> dict[str, Any]:
        return {"rank": self.rank, "id": self.id, "distance": self.distance, "path": self.path,
                "east": None if self.xy is None else self.xy[0], "north": None if self.xy is None else self.xy[1],
                "accepted": self.accepted, "confidence": self.confidence, "time": self.time,
                "decision_score": self.decision_score, "score_name": self.score_name}


def threshold_rule(index: PlaceIndex | None, sequence_length: int) -> DecisionRule | None:
    """The DecisionRule of the index's threshold for this sequence length and search space, or None."""
    entry = None if index is None else index.threshold(sequence_length)
    return None if entry is None else DecisionRule.of(entry)


def zone_positions(index: PlaceIndex, searchable: int) -> np.ndarray:
    """The first `searchable` entries' coordinates, for a rule whose exclusion zone is in metres
    (other zones count map entries in the order they were added: positions None)."""
    xy = index.coordinates
    if xy is None:
        raise TscmError("the threshold's 'ratio' score compares places in metres, but this map has no "
                        "coordinates; build it with positions or calibrate it on frame-ordered data")
    return np.asarray(xy[:searchable], dtype=np.float64)


def _metric_zone(index: PlaceIndex, rule: DecisionRule, searchable: int) -> np.ndarray | None:
    """The entries' coordinates where the rule's exclusion zone is in metres, else None."""
    return zone_positions(index, searchable) if rule.score == "ratio" and rule.unit == "m" else None


def distance_row(index: PlaceIndex, descriptor: np.ndarray, searchable: int) -> np.ndarray:
    """Squared L2 from one descriptor to each of the first `searchable` entries, in the search space."""
    return squared_distances(index.to_search_space(descriptor[None]), index.vectors()[:searchable],
                             index.vector_norms()[:searchable])[0]


def top1_decision_score(index: PlaceIndex, rule: DecisionRule, descriptor: np.ndarray, hit_rows: np.ndarray,
                        hit_scores: np.ndarray, searchable: int) -> float:
    """The rule's score of the top-1 hit: from the nearest hits where they settle it, else from the full row."""
    return decide_from_hits(rule, hit_rows, hit_scores, searchable, _metric_zone(index, rule, searchable),
                            row=lambda: distance_row(index, descriptor, searchable))


def sequence_decision_score(index: PlaceIndex, rule: DecisionRule, scores: np.ndarray, top_row: int) -> float:
    """The rule's score of the best sequence match `top_row` from the sequence scores of the map's first
    len(scores) entries (every entry, or those old enough to be loop closures)."""
    return decide_row(rule, scores, top_row, _metric_zone(index, rule, len(scores)))


def ranked_places(index: PlaceIndex, rows: list[int], scores: list[float], rule: DecisionRule | None,
                  decision_score: float | None, consistent: bool = True) -> list[Place]:
    """Places for map rows ranked in the given order with their match scores.

    With a rule, the first place gets the decision (its score passes the threshold and, where
    temporal consistency is asked for, the run is consistent); for the top-1 distance every
    place is decided by its own distance, for the other scores the places after the first are
    not accepted (a decision score is about the best match).
    """
    places = []
    for rank, (position, score) in enumerate(zip(rows, scores), start=1):
        entry = index.entry(position)
        accepted = confidence = value = None
        if rule is not None:
            if rank == 1:
                value = float(decision_score)
            elif rule.score == "distance":
                value = float(score)
            if value is not None:
                accepted = rule.accepts(value) and (consistent or rank > 1)
                confidence = rule.confidence(value)
            else:
                accepted = False
        places.append(Place(rank, entry["id"], float(score), entry["path"], entry["xy"], accepted, confidence,
                            entry["time"], decision_score=value, score_name=None if rule is None else rule.score))
    return places

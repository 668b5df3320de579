"""Decision scores for loop closure: how sure is a query's top-1 match? Smaller = more confident.

Every score is computed from one row of match scores per query (the single-frame squared
distances to every database entry, or the sequence scores of tscm.evaluation.sequence), where
smaller is better, and the row's best entry (its top-1, ties to the lower index):

- `distance`: the top-1 score itself (what tscm decided by before). Raw distances do not carry
  over between places: a threshold chosen on one stretch of route is too loose on another.
- `ratio` (distinctiveness, SeqSLAM's uniqueness, Lowe's ratio): the top-1 score divided by the
  best score *outside* an exclusion zone around the top-1 match: database entries farther than
  `exclusion` from it, in the data's unit (±frames along the route for frame data, metres for
  metric data; for listed matches the database's order stands for the route). A match that
  stands out from every other place scores near 0, one among look-alikes near 1. When no entry
  lies outside the zone, or both are 0, there is no evidence either way and the ratio is 1.
- `normalised` (per-query normalisation): the top-1 score as a z-score of the query's own row,
  (top-1 − mean) / standard deviation over every database entry: how far the best match stands
  below what this query scores against an average place (negative; a flat row scores 0).

`ratio` needs non-negative scores (distances; not sequence scores after local contrast).
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Real
from typing import Sequence

import numpy as np

from tscm.data.places import default_radius
from tscm.errors import TscmError
from tscm.evaluation.precision_recall import pr_curve, pr_summary, top1_labels
from tscm.evaluation.ranking import squared_distances
from tscm.evaluation.sequence import sequence_scores, traversal_order

SCORE_NAMES = ("distance", "ratio", "normalised")
# The score decisions use unless told otherwise (and the tie-breaker of `index calibrate --score auto`,
# which keeps the best on the calibration split): on Nordland (a student-lite's descriptors, measured
# outside tscm with a plain diagonal sequence score) a 99 % val threshold on the ratio of 10-frame
# sequences gave 98.3 % precision at 74.5 % recall on test, where the top-1 distance's fell to 83 %.
DEFAULT_SCORE = "ratio"
# Exclusion zone of `ratio`, per unit: ±5 frames (a SeqSLAM-style window; a sequence's neighbours
# along the route score almost as well as it does), 50 m (twice the community's 25 m match
# radius), 5 entries of the database's order for listed matches.
DEFAULT_EXCLUSION = {"frame": 5.0, "m": 50.0, "explicit": 5.0}
CHUNK_ENTRIES = 4_000_000  # query rows × database entries per block, to bound memory on large sets


def check_score_name(name: str) -> str:
    if name not in SCORE_NAMES:
        raise TscmError(f"decision score {name!r} is unknown; expected one of {', '.join(SCORE_NAMES)}")
    return name


def check_exclusion(exclusion, what: str = "exclusion") -> float:
    if not (isinstance(exclusion, Real) and np.isfinite(exclusion) and exclusion >= 0):
        raise TscmError(f"{what}: expected a non-negative distance in the data's unit, got {exclusion!r}")
    return float(exclusion)


def route_positions(placeset) -> tuple[np.ndarray, float]:
    """(N×P database positions, default exclusion) of a PlaceSet: its coordinates (frames or metres),
    or each entry's index for listed matches."""
    if placeset.db_xy is not None:
        return np.asarray(placeset.db_xy, dtype=np.float64), DEFAULT_EXCLUSION[placeset.unit]
    return np.arange(placeset.num_db, dtype=np.float64)[:, None], DEFAULT_EXCLUSION["explicit"]


def _positions(positions, num_db: int) -> np.ndarray:
    array = np.asarray(positions, dtype=np.float64)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2 or len(array) != num_db or not np.isfinite(array).all():
        raise TscmError(f"positions: expected {num_db} finite database positions (N or N×P), got shape {np.shape(positions)}")
    return array


def best_outside_zone(rows: np.ndarray, top1: np.ndarray, positions: np.ndarray, exclusion: float) -> np.ndarray:
    """Per row, the smallest entry farther than `exclusion` from the row's top-1 position (inf if none; entries
    that are inf count as absent)."""
    offsets = positions[None, :, :] - positions[top1][:, None, :]
    outside = np.einsum("qnp,qnp->qn", offsets, offsets) > exclusion * exclusion
    return np.where(outside, rows, np.inf).min(axis=1)


def ratio_of(best: np.ndarray, competitor: np.ndarray) -> np.ndarray:
    """best / competitor, 1 where the competitor is missing (inf) or both are 0."""
    best = np.asarray(best, dtype=np.float64)
    competitor = np.asarray(competitor, dtype=np.float64)
    defined = np.isfinite(competitor) & (competitor > 0)
    return np.divide(best, competitor, out=np.ones_like(best), where=defined)


def z_scores(best: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return np.divide(best - mean, std, out=np.zeros_like(best), where=std > 0)


@dataclass(frozen=True)
class DecisionScores:
    """Each query's top-1 (a database index) and its score under every decision score."""

    top1: np.ndarray  # Q int64
    scores: dict[str, np.ndarray]  # name -> Q float64, smaller = more confident
    exclusion: float  # the `ratio` exclusion zone, in the unit of the positions


def decision_scores(rows, positions, exclusion: float, names: Sequence[str] = SCORE_NAMES) -> DecisionScores:
    """The decision scores of every row of a Q×N match-score matrix (smaller = better).

    `positions`: the N database entries' positions (N, or N×P; frames, metres, or route index),
    `exclusion`: the `ratio` zone around the top-1, in the same unit.
    """
    rows = np.asarray(rows)
    if rows.ndim != 2 or rows.shape[1] == 0 or rows.dtype.kind not in "fiu":
        raise TscmError(f"match scores: expected a numeric Q×N matrix with N ≥ 1, got {rows.dtype} with shape {rows.shape}")
    if not np.isfinite(rows).all():
        raise TscmError("match scores: contains NaN or infinite values")
    names = [check_score_name(name) for name in names]
    exclusion = check_exclusion(exclusion)
    positions = _positions(positions, rows.shape[1])
    if "ratio" in names and rows.size and rows.min() < 0:
        raise TscmError("decision score 'ratio' needs non-negative match scores (distances); "
                        "these have negative values (sequence scores after local contrast?)")
    num_q, num_db = rows.shape
    top1 = np.empty(num_q, dtype=np.int64)
    out = {name: np.empty(num_q, dtype=np.float64) for name in names}
    step = max(1, CHUNK_ENTRIES // max(num_db * positions.shape[1], 1))
    for start in range(0, num_q, step):
        block = rows[start:start + step].astype(np.float64)
        best_index = block.argmin(axis=1)  # the first minimum: ties to the lower index
        best = block[np.arange(len(block)), best_index]
        top1[start:start + step] = best_index
        if "distance" in out:
            out["distance"][start:start + step] = best
        if "ratio" in out:
            out["ratio"][start:start + step] = ratio_of(best, best_outside_zone(block, best_index, positions, exclusion))
        if "normalised" in out:
            out["normalised"][start:start + step] = z_scores(best, block.mean(axis=1), block.std(axis=1))
    return DecisionScores(top1, out, exclusion)


@dataclass(frozen=True)
class SplitDecisions:
    """Decision scores of a split's queries (in the PlaceSet's order) with their ground-truth labels."""

    scores: DecisionScores  # top1 as database indices of the PlaceSet
    correct: np.ndarray  # Q bool: the top-1 is a true match
    has_match: np.ndarray  # Q bool: the query has a true match
    query_order: np.ndarray  # the queries in route order (for temporal consistency); the given order if unknown
    route_position: np.ndarray  # Q float: each top-1's position along the database route
    unseen: dict[str, np.ndarray] | None = None  # the queries' never-seen twins (tscm.evaluation.unseen), if asked

    def curve_inputs(self, name: str, twins: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(scores, correct, has_match) of the queries under score `name`, followed by their never-seen twins
        when there are any and `twins` is on (every accepted twin is a false closure; a twin left without entries
        is skipped)."""
        values = self.scores.scores[name]
        if self.unseen is None or not twins:
            return values, self.correct, self.has_match
        twins = self.unseen[name][~np.isnan(self.unseen[name])]
        no = np.zeros(len(twins), dtype=bool)
        return np.concatenate([values, twins]), np.concatenate([self.correct, no]), np.concatenate([self.has_match, no])


def split_decisions(placeset, db, queries, *, sequence_length: int = 1, radius: float | None = None,
                    exclusion: float | None = None, names: Sequence[str] = SCORE_NAMES) -> SplitDecisions:
    """Decision scores of every query of `placeset` over its single-frame distances (`sequence_length` 1)
    or its sequence scores over the last L frames along the route (exact squared L2 between the
    given descriptors, e.g. in an index's search space)."""
    positions, default_exclusion = route_positions(placeset)
    exclusion = default_exclusion if exclusion is None else check_exclusion(exclusion)
    db = np.asarray(db, dtype=np.float32)
    queries = np.asarray(queries, dtype=np.float32)
    if sequence_length == 1:
        # Distance rows a block of queries at a time: the whole Q×N matrix may not fit in memory.
        step = max(1, CHUNK_ENTRIES // max(len(db), 1))
        blocks = [decision_scores(squared_distances(queries[start:start + step], db), positions, exclusion, names)
                  for start in range(0, len(queries), step)]
        result = DecisionScores(np.concatenate([b.top1 for b in blocks]),
                                {name: np.concatenate([b.scores[name] for b in blocks]) for name in blocks[0].scores},
                                exclusion)
        try:
            db_order, query_order = traversal_order(placeset)
        except TscmError:  # no route: consistency then follows the given order
            query_order, db_order = np.arange(len(queries)), np.arange(len(db))
    else:
        db_order, query_order = traversal_order(placeset)
        rows = sequence_scores(squared_distances(queries[query_order], db[db_order]), sequence_length)
        ordered = decision_scores(rows, positions[db_order], exclusion, names)
        top1 = np.empty(len(queries), dtype=np.int64)
        top1[query_order] = db_order[ordered.top1]
        scores = {}
        for name, values in ordered.scores.items():
            scores[name] = np.empty(len(queries))
            scores[name][query_order] = values
        result = DecisionScores(top1, scores, exclusion)
    radius = default_radius(placeset.unit) if radius is None else placeset.check_radius(radius, "--radius")
    correct, has_match = top1_labels(result.top1, placeset.positives(radius))
    rank_along_route = np.empty(len(db), dtype=np.float64)
    rank_along_route[db_order] = np.arange(len(db))
    return SplitDecisions(result, correct, has_match, np.asarray(query_order), rank_along_route[result.top1])


def pr_by_score(decisions: SplitDecisions) -> dict[str, dict]:
    """`pr_summary` (percent) of accepting queries by each decision score, with the score's settings."""
    return {name: {**pr_summary(pr_curve(values, decisions.correct, decisions.has_match)), "score": name,
                   **({"exclusion": decisions.scores.exclusion} if name == "ratio" else {})}
            for name, values in decisions.scores.scores.items()}


@dataclass(frozen=True)
class DecisionRule:
    """How a stored threshold decides: its score, the threshold, and `ratio`'s exclusion zone.

    `unit` says what the zone is measured in at decision time: "m" compares map coordinates (metres);
    "frame" and "explicit" compare map entries' places in the order they were added (one entry per
    frame along the route, as a map built from a traversal holds them).
    """

    score: str
    threshold: float
    exclusion: float
    unit: str

    @classmethod
    def of(cls, entry: dict) -> DecisionRule:
        """The rule of an index threshold entry (an entry without `score` is a top-1 distance threshold)."""
        unit = entry.get("unit") or "frame"
        exclusion = entry.get("exclusion")
        return cls(check_score_name(entry.get("score", "distance")), float(entry["distance"]),
                   DEFAULT_EXCLUSION.get(unit, DEFAULT_EXCLUSION["frame"]) if exclusion is None else float(exclusion),
                   unit)

    def accepts(self, score: float) -> bool:
        return bool(score <= self.threshold)

    def confidence(self, score: float) -> float:
        """0.5 at the threshold, towards 1 for more confident scores and towards 0 for less.

        Distances and ratios (≥ 0): threshold / (threshold + score), as tscm.evaluation.precision_recall.confidence.
        z-scores (signed): the logistic of (threshold − score).
        """
        if self.score == "normalised":
            return float(1.0 / (1.0 + np.exp(score - self.threshold)))
        if self.threshold <= 0:
            return 1.0 if score <= 0 else 0.0
        return float(self.threshold / (self.threshold + max(score, 0.0)))

    def hits_needed(self) -> int:
        """Nearest hits among which `ratio`'s competitor is sure to be (for entry-order zones; 1 for other scores)."""
        if self.score != "ratio":
            return 1
        if self.unit == "m":
            return 64  # a first guess; decide_from_hits says when the zone held them all
        return 2 * int(np.floor(self.exclusion)) + 2


def decide_from_hits(rule: DecisionRule, hit_rows: np.ndarray, hit_scores: np.ndarray, num_entries: int,
                     positions: np.ndarray | None = None, row=None) -> float | None:
    """The decision score of a query from its nearest hits (map rows, nearest first, with their scores),
    or, where the hits cannot settle it (`normalised`; `ratio` whose hits all lie in the zone), from
    `row`, a callable giving the query's full row of scores (None if not given).

    `num_entries`: how many map entries the hits were drawn from; `positions`: their positions (N×P)
    in the zone's unit, or None when the entries' order is the route (a contiguous zone).
    """
    best_row, best = int(hit_rows[0]), float(hit_scores[0])
    if rule.score == "distance":
        return best
    others = np.asarray(hit_rows[1:], dtype=np.int64)
    if rule.score == "ratio":
        if positions is None:
            outside = np.flatnonzero(np.abs(others - best_row) > np.floor(rule.exclusion))
        else:
            offsets = positions[others] - positions[best_row]
            outside = np.flatnonzero(np.einsum("np,np->n", offsets, offsets) > rule.exclusion ** 2)
        if outside.size:
            return float(ratio_of(np.array([best]), np.array([hit_scores[1 + outside[0]]]))[0])
        if len(hit_rows) == num_entries:  # every entry was a hit: nothing lies outside the zone
            return 1.0
    if row is None:
        return None
    return decide_row(rule, row(), best_row, positions)


def best_outside_window(row: np.ndarray, top1: int, window: float) -> float:
    """The smallest entry of `row` more than `window` places from `top1`, positions being 0..N-1 (inf if none).

    The zone is a contiguous stretch of the row, so two reductions replace `best_outside_zone`'s
    distance to every position (what the streaming path does for maps along a route).
    """
    reach = int(np.floor(window))  # |j − top1| > window ⟺ |j − top1| > ⌊window⌋ for whole j
    left, right = row[: max(top1 - reach, 0)], row[top1 + reach + 1:]
    candidates = [float(part.min()) for part in (left, right) if len(part)]
    return min(candidates) if candidates else float("inf")


def decide_row(rule: DecisionRule, row, top1: int | None = None, positions: np.ndarray | None = None) -> float:
    """The rule's decision score of one full row of match scores (the first minimum is the top-1 unless
    given); `positions` None means the row's own order is the route (a contiguous exclusion zone)."""
    row = np.asarray(row)
    top1 = int(np.argmin(row)) if top1 is None else int(top1)
    best = float(row[top1])
    if rule.score == "distance":
        return best
    if rule.score == "ratio":
        if positions is None:
            competitor = np.array([best_outside_window(row, top1, rule.exclusion)])
        else:
            competitor = best_outside_zone(row[None, :].astype(np.float64), np.array([top1]), _positions(positions, len(row)),
                                       rule.exclusion)
        return float(ratio_of(np.array([best]), competitor)[0])
    full = row.astype(np.float64)
    return float(z_scores(np.array([best]), np.array([full.mean()]), np.array([full.std()]))[0])

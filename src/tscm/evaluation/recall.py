"""The evaluation protocol: Recall@N by exact L2 search, with the radius and its unit always stated.

A query is correct at N when one of its N nearest database descriptors (exact L2; ties broken by
lower database index, `tscm.evaluation.ranking`) is a true match: within the radius (metres, or
±frames for frame-ordered data) or listed (explicit ground truth). Queries without any true match
are dropped from the denominator and counted. Recall is in percent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from tscm.data.places import PlaceSet, default_radius, radius_text
from tscm.errors import TscmError
from tscm.evaluation.precision_recall import pr_from_ranking, pr_summary
from tscm.evaluation.ranking import Ranking, descriptor_matrix, first_hit_rank, rank_exact

DEFAULT_NS = (1, 5, 10, 20)
COMMUNITY_RADIUS_M = 25.0
PUBLISHED_RADIUS_M = 10.0  # the published TSCM code counts matches within sqrt(nonTrivPosDistSqThr)


def protocol_label(radius: float | None, unit: str = "m") -> str:
    """How a result's ground truth reads: "radius 25 m (community standard)", "radius ±1 frame", ..."""
    if unit == "explicit":
        return "listed matches (explicit ground truth)"
    if unit == "m" and radius == COMMUNITY_RADIUS_M:
        return "radius 25 m (community standard)"
    if unit == "m" and radius == PUBLISHED_RADIUS_M:
        return "radius 10 m (published TSCM protocol)"
    return f"radius {radius_text(radius, unit)}" + (" (custom)" if unit == "m" else "")


def check_ns(ns: Sequence[int]) -> tuple[int, ...]:
    values = tuple(sorted({int(n) for n in ns}))
    if not values or values[0] < 1:
        raise TscmError(f"Recall@N: expected positive N values, got {tuple(ns)}")
    return values


@dataclass
class RecallCounts:
    """Recall@N in percent over the queries that have a true match, and how many queries that was."""

    recall: dict[int, float]
    num_evaluated: int
    num_without_positive: int


def recall_from_ranking(indices: np.ndarray, positives: Sequence[np.ndarray], ns: Sequence[int] = DEFAULT_NS) -> RecallCounts:
    """Recall@N (percent) of ranked database indices (Q×k, nearest first) against per-query true matches.

    An N larger than k counts what the k ranked entries hold (k is the whole database when
    N exceeds it).
    """
    ns = check_ns(ns)
    if len(positives) != len(indices):
        raise TscmError(f"positives: {len(positives)} lists for {len(indices)} queries")
    evaluated = np.asarray([len(p) > 0 for p in positives], dtype=bool)
    num_evaluated = int(evaluated.sum())
    if num_evaluated == 0:
        raise TscmError("Recall@N is undefined: no query has a true match in the database "
                        "(check the radius and its unit)")
    first = first_hit_rank(indices[evaluated], [positives[q] for q in np.flatnonzero(evaluated)])
    recall = {n: 100.0 * float(np.mean(first < n)) for n in ns}
    return RecallCounts(recall, num_evaluated, len(indices) - num_evaluated)


def recall_at_1(top1: np.ndarray, positives: Sequence[np.ndarray]) -> float:
    """Recall@1 (percent) of each query's top database index against its true matches (`recall_from_ranking`)."""
    return recall_from_ranking(np.asarray(top1).reshape(-1, 1), positives, (1,)).recall[1]


def recall_at_n(db, queries, positives: Sequence[np.ndarray], ns: Sequence[int] = DEFAULT_NS) -> RecallCounts:
    """Recall@N (percent) of `queries` against `db` by exact L2 search; `positives[j]` are query j's true matches."""
    ns = check_ns(ns)
    queries = descriptor_matrix(queries, "query descriptors")
    if len(positives) != len(queries):
        raise TscmError(f"positives: {len(positives)} lists for {len(queries)} queries")
    ranking = rank_exact(db, queries, ns[-1])
    return recall_from_ranking(ranking.indices, positives, ns)


@dataclass
class EvalResult:
    """Recall@N (and precision-recall) of one descriptor set on one PlaceSet, with what is needed to read it right."""

    recall: dict[int, float]
    radius: float | None
    unit: str
    num_db: int
    num_queries: int
    num_queries_evaluated: int
    num_queries_without_positive: int
    dataset: str = ""
    pr: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        entry = {
            "recall": {str(n): value for n, value in sorted(self.recall.items())},
            "radius": self.radius,
            "unit": self.unit,
            "protocol": protocol_label(self.radius, self.unit),
            "num_db": self.num_db,
            "num_queries": self.num_queries,
            "num_queries_evaluated": self.num_queries_evaluated,
            "num_queries_without_positive": self.num_queries_without_positive,
            "dataset": self.dataset,
        }
        if self.unit == "m":
            entry["radius_m"] = self.radius  # the field name of earlier releases
        if self.pr is not None:
            entry["pr"] = self.pr
        if self.warnings:
            entry["warnings"] = list(self.warnings)
        entry.update(self.extra)
        return entry

    def format_table(self) -> str:
        ns = sorted(self.recall)
        title = f"{self.dataset}: " if self.dataset else ""
        dropped = "no true match" if self.unit == "explicit" else f"no database image within {radius_text(self.radius, self.unit)}"
        lines = [
            f"{title}Recall@N, {protocol_label(self.radius, self.unit)}",
            f"database {self.num_db} images; {self.num_queries} queries, {self.num_queries_evaluated} evaluated, "
            f"{self.num_queries_without_positive} dropped ({dropped})",
            "  ".join(f"{'R@' + str(n):>7}" for n in ns),
            "  ".join(f"{self.recall[n]:7.2f}" for n in ns),
        ]
        if self.pr is not None:
            lines.append(
                f"precision-recall over top-1 distances (all {self.num_queries} queries): average precision "
                f"{self.pr['average_precision']:.2f}, recall at 100 % precision {self.pr['recall_at_100_precision']:.2f}, "
                f"F1-max {self.pr['f1_max']:.2f}"
            )
        for name, block in self.extra.get("pr_by_score", {}).items():
            lines.append(f"  decision score {name:<10}: average precision {block['average_precision']:6.2f}, recall at "
                         f"100 % precision {block['recall_at_100_precision']:6.2f}, F1-max {block['f1_max']:6.2f}")
        lines += [f"warning: {text}" for text in self.warnings]
        return "\n".join(lines)


def check_descriptors(placeset: PlaceSet, db, queries) -> tuple[np.ndarray, np.ndarray]:
    """`db` and `queries` as float32 matrices whose rows match the PlaceSet's images, or TscmError."""
    where = f"{placeset.name}/{placeset.split}"
    db = np.asarray(db)
    queries = np.asarray(queries)
    for what, array, count in (("db", db, placeset.num_db), ("queries", queries, placeset.num_queries)):
        if array.ndim != 2 or array.shape[0] != count:
            raise TscmError(f"descriptors '{what}': expected shape ({count}, D) for {where}, got {array.shape}")
    db, queries = _centred_if_wide(db, queries)
    db = descriptor_matrix(db, "descriptors 'db'")
    queries = descriptor_matrix(queries, "descriptors 'queries'", dim=db.shape[1])
    return db, queries


def _centred_if_wide(db: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float64 (or wide integer) descriptors minus the database mean, computed in float64.

    The search runs in float32, whose 24-bit mantissa drops the differences between values like 1e8 + x
    (every distance becomes 0). Subtracting one shared vector leaves every L2 distance as it was and
    keeps those differences; values float32 cannot hold even then are refused, naming the array.
    """
    wide = [a for a in (db, queries) if (a.dtype.kind == "f" and a.dtype.itemsize > 4) or (a.dtype.kind in "iu" and a.dtype.itemsize >= 4)]
    if not wide or db.shape[1:] != queries.shape[1:] or db.shape[1] == 0:
        return db, queries
    db = db.astype(np.float64)
    queries = queries.astype(np.float64)
    for what, array in (("db", db), ("queries", queries)):
        if not np.isfinite(array).all():
            raise TscmError(f"descriptors '{what}': contains NaN or infinite values")
    centre = db.mean(axis=0) if len(db) else np.zeros(db.shape[1])
    db, queries = db - centre, queries - centre
    largest = float(np.finfo(np.float32).max)
    for what, array in (("db", db), ("queries", queries)):
        if array.size and np.abs(array).max() > largest:
            raise TscmError(f"descriptors '{what}': values differ by up to {np.abs(array).max():.3g}, beyond float32's range "
                            f"(±{largest:.3g}) in which the search runs; scale them")
    return db, queries


def evaluate_ranking(placeset: PlaceSet, ranking: Ranking, radius: float | None = None,
                     ns: Sequence[int] = DEFAULT_NS) -> EvalResult:
    """Recall@N and precision-recall of a ranking (single frames or sequences) of the PlaceSet's queries."""
    if radius is None:
        radius = default_radius(placeset.unit)
    radius = placeset.check_radius(radius)
    positives = placeset.positives(radius)
    if positives and not any(len(p) for p in positives):
        within = "no listed match" if placeset.unit == "explicit" else f"no database image within {placeset.radius_text(radius)}"
        raise TscmError(f"{placeset.name}/{placeset.split}: every query has {within}, so Recall@N is undefined "
                        "(check the radius, its unit and the coordinates)")
    counts = recall_from_ranking(ranking.indices, positives, ns)
    pr = pr_summary(pr_from_ranking(ranking.top1_distance, ranking.top1, positives))
    return EvalResult(
        recall=counts.recall,
        radius=radius,
        unit=placeset.unit,
        num_db=placeset.num_db,
        num_queries=placeset.num_queries,
        num_queries_evaluated=counts.num_evaluated,
        num_queries_without_positive=counts.num_without_positive,
        dataset=f"{placeset.name}/{placeset.split}",
        pr=pr,
    )


def evaluate_descriptors(placeset: PlaceSet, db, queries, radius: float | None = None,
                         ns: Sequence[int] = DEFAULT_NS) -> EvalResult:
    """Recall@N and precision-recall of descriptors given in the PlaceSet's database and query order.

    `radius` is in the set's unit (default: 25 m, ±1 frame; ignored for explicit ground truth).
    """
    ns = check_ns(ns)
    db, queries = check_descriptors(placeset, db, queries)
    return evaluate_ranking(placeset, rank_exact(db, queries, ns[-1]), radius, ns)

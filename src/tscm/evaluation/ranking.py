"""Exact nearest-neighbour ranking with one tie rule, for everything in tscm that ranks.

Distances are squared Euclidean (L2²). Ties go to the lower database index, whatever the search
back-end returned, so Recall@N, precision-recall, pictures and benchmarks agree on every query.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tscm.errors import TscmError
from tscm.evaluation.search import ScanTarget, exact_search


@dataclass
class Ranking:
    """The k nearest database entries of every query, nearest first."""

    distances: np.ndarray  # Q×k float32, squared L2 (or the score the ranking was made from)
    indices: np.ndarray  # Q×k int64 database indices

    @property
    def top1(self) -> np.ndarray:
        return self.indices[:, 0]

    @property
    def top1_distance(self) -> np.ndarray:
        return self.distances[:, 0]


def descriptor_matrix(array, what: str, dim: int | None = None) -> np.ndarray:
    """A finite float32 N×D array (D ≥ 1, equal to `dim` when given), or TscmError naming `what`."""
    array = np.asarray(array)
    if array.ndim != 2 or array.dtype.kind not in "fiu":
        raise TscmError(f"{what}: expected a numeric N×D array, got {array.dtype} with shape {array.shape}")
    if array.shape[1] == 0:
        raise TscmError(f"{what}: descriptors have zero columns (shape {array.shape}); expected N×D with D ≥ 1")
    if dim is not None and array.shape[1] != dim:
        raise TscmError(f"{what}: expected {dim}-d descriptors, got shape {array.shape}")
    matrix = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(matrix).all():
        raise TscmError(f"{what}: contains NaN or infinite values")
    return matrix


def _check_k(k: int, num_db: int) -> int:
    if not (isinstance(k, (int, np.integer)) and k >= 1):
        raise TscmError(f"ranking: k must be a positive integer, got {k!r}")
    if num_db == 0:
        raise TscmError("ranking: the database is empty")
    return int(min(k, num_db))


def rank_exact(db, queries, k: int) -> Ranking:
    """The k nearest database descriptors of each query by exact L2 (`tscm.evaluation.search`), ties to
    the lower index.

    k larger than the database is answered with the whole database.
    """
    db = descriptor_matrix(db, "database descriptors")
    queries = descriptor_matrix(queries, "query descriptors")
    if queries.shape[1] != db.shape[1]:
        raise TscmError(f"query descriptors have dimension {queries.shape[1]}, database descriptors {db.shape[1]}")
    k = _check_k(k, len(db))
    distances, indices = exact_search(queries, ScanTarget.of(db), k)
    return Ranking(distances, indices)


def rank_matrix(scores, k: int) -> Ranking:
    """The k smallest entries of each row of a Q×N score matrix (e.g. sequence scores), ties to the lower index."""
    scores = np.asarray(scores, dtype=np.float32)
    if scores.ndim != 2:
        raise TscmError(f"ranking: expected a Q×N score matrix, got shape {scores.shape}")
    k = _check_k(k, scores.shape[1])
    if np.isnan(scores).any():
        raise TscmError("ranking: the score matrix contains NaN")
    # A stable sort of each row keeps equal scores in index order.
    if k < scores.shape[1]:
        part = np.argpartition(scores, k - 1, axis=1)[:, :k]
        kth = np.take_along_axis(scores, part, axis=1).max(axis=1, keepdims=True)
        # Everything below the k-th score, plus the lowest-index entries equal to it.
        below = scores < kth
        equal = scores == kth
        need = k - below.sum(axis=1, keepdims=True)
        keep = below | (equal & (np.cumsum(equal, axis=1) <= need))
        cols = np.nonzero(keep)[1].reshape(len(scores), k)
    else:
        cols = np.broadcast_to(np.arange(scores.shape[1]), scores.shape).copy()
    chosen = np.take_along_axis(scores, cols, axis=1)
    order = np.argsort(chosen, axis=1, kind="stable")
    indices = np.take_along_axis(cols, order, axis=1).astype(np.int64)
    return Ranking(np.take_along_axis(chosen, order, axis=1), indices)


def squared_distances(queries, db, db_norms: np.ndarray | None = None) -> np.ndarray:
    """Q×N squared L2 distances (float32; ‖q‖² + ‖x‖² − 2⟨q, x⟩, clipped at 0). `db_norms`: the rows'
    `squared_norms`, where the caller keeps them (a map searched frame after frame), else computed here."""
    queries = np.asarray(queries, dtype=np.float32)
    db = np.asarray(db, dtype=np.float32)
    out = queries @ db.T
    out *= -2.0
    out += squared_norms(queries)[:, None]
    out += (squared_norms(db) if db_norms is None else db_norms)[None, :]
    np.maximum(out, 0.0, out=out)
    return out


def squared_norms(rows: np.ndarray) -> np.ndarray:
    """‖x‖² of each float32 row, in float32 (each row's value does not depend on the rows beside it)."""
    return np.einsum("nd,nd->n", rows, rows)


def first_hit_rank(indices: np.ndarray, positives) -> np.ndarray:
    """Per query, the rank (0-based) of its first true match in `indices` (Q×k), or k when none is there."""
    indices = np.asarray(indices)
    q, k = indices.shape
    first = np.full(q, k, dtype=np.int64)
    for row in range(q):
        hits = np.flatnonzero(np.isin(indices[row], positives[row]))
        if hits.size:
            first[row] = hits[0]
    return first

"""The one exact k-nearest-neighbour search of tscm (squared L2, ties to the lower row).

Used by evaluation (`ranking.rank_exact`: Recall@N, precision-recall, pictures, `tscm bench`
accuracy) and by the place index's exhaustive back-ends (flat and PCA-flat with fp32 storage,
IVF's coarse assignment, IVF-PQ's re-ranking), so every ranking tscm reports agrees.

How: a fast approximate pass (BLAS: ‖x‖² − 2 q·x; a matrix-vector product for one query, tiled
matrix products for a batch) keeps every row that can still be among the k nearest, given a
proven bound on that pass' rounding error; those few rows then get their squared distance
computed pair by pair in float64 (rounded to float32) and are ordered by (distance, row). A
query therefore gets bitwise the same hits, distances and tie order alone or in any batch, and
the batch keeps the speed of matrix products. The bound: for s-dim rows, the float32 dot product
errs by at most s·u·‖q‖‖x‖ (any summation order), the norms and sums add a few u·(‖x‖+‖q‖)², the
float64 distance rounded to float32 u·(‖x‖+‖q‖)² (u = 2^-24); SCAN_ERROR_FACTOR doubles that.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from tscm.threads import blas_threads

SCAN_ERROR_FACTOR = 2.0
SCAN_DB_TILE = 32_768  # database rows per matrix product of a batch
SCAN_QUERY_TILE = 256  # queries per matrix product of a batch
RERANK_PAIR_ELEMENTS = 1 << 21  # float64 elements of (candidate, query) differences held at once
# A lone query in a PCA space scans the first LEADING_DIMS dims of every row first (`_candidates_by_leading_dims`),
# where the space has LEADING_MIN_RATIO times as many; it falls back to the full scan when more than
# 1 / LEADING_GIVE_UP of the rows could still be among the nearest.
LEADING_DIMS = 64
LEADING_MIN_RATIO = 4
LEADING_SEED = 64  # rows measured in full first (at least 4k): the nearest by their leading dims
LEADING_GIVE_UP = 8
# After a query whose bound kept too many rows, this many lone queries scan in full straight away: a stream's
# frames are alike from one to the next, so where the bound does not prune a scan costs about the full one.
LEADING_RETRY_AFTER = 16
MISSING_DISTANCE = np.float32(np.finfo(np.float32).max)  # faiss' value for a hit that does not exist


def _row_dots(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dot product of each row of `a` with the same row of `b` (numpy ≥ 2: the vecdot ufunc, fastest)."""
    vecdot = getattr(np, "vecdot", None)
    return vecdot(a, b) if vecdot is not None else np.einsum("ij,ij->i", a, b)


class RetryCountdown:
    """Lone queries left to scan in full before the leading dims are tried again; one per map, shared by the
    targets it becomes as it grows and by their prefixes (`ScanTarget.first`)."""

    def __init__(self) -> None:
        self.left = 0


@dataclass
class LeadingDims:
    """The first p dims of every row, held contiguously with their squared norms (`ScanTarget.leading`)."""

    vectors: np.ndarray  # N×p float32
    norms: np.ndarray  # N float32
    countdown: RetryCountdown = field(default_factory=RetryCountdown)


@dataclass
class ScanTarget:
    """Rows searched exhaustively: a view of faiss' storage, their squared norms and the largest norm.

    `leading` (optional) holds the rows' first dims where those carry most of the spread (a PCA space:
    components in order of decreasing variance), so a lone query can scan them first (`_candidates_by_leading_dims`).
    """

    vectors: np.ndarray  # N×s float32 (may be a view of faiss-owned memory: valid until the next add)
    norms: np.ndarray  # N float32, ‖x‖²
    max_norm: float  # max ‖x‖
    leading: LeadingDims | None = None

    @classmethod
    def of(cls, vectors: np.ndarray, leading_dims: int | None = None) -> ScanTarget:
        squared = np.einsum("ij,ij->i", vectors, vectors, dtype=np.float64)
        leading = None
        if leading_dims is not None and vectors.shape[1] >= LEADING_MIN_RATIO * leading_dims:
            head = np.ascontiguousarray(vectors[:, :leading_dims])
            leading = LeadingDims(head, np.einsum("ij,ij->i", head, head, dtype=np.float64).astype(np.float32))
        return cls(vectors, squared.astype(np.float32), float(np.sqrt(squared.max())) if len(squared) else 0.0, leading)

    def extended(self, vectors: np.ndarray, added: np.ndarray,
                 grow: Callable[[str, np.ndarray, np.ndarray], np.ndarray]) -> ScanTarget:
        """The target after `added` rows were appended (`vectors`: the storage now); the norms are computed
        for the new rows only (as `of` computes each), `grow(name, current, rows)` appends to a buffer."""
        squared = np.einsum("ij,ij->i", added, added, dtype=np.float64)
        max_norm = max(self.max_norm, float(np.sqrt(squared.max()))) if len(added) else self.max_norm
        leading = self.leading
        if leading is not None:
            head = np.ascontiguousarray(added[:, : leading.vectors.shape[1]])
            leading = LeadingDims(grow("leading", leading.vectors, head),
                                  grow("leading_norms", leading.norms,
                                       np.einsum("ij,ij->i", head, head, dtype=np.float64).astype(np.float32)),
                                  leading.countdown)
        return ScanTarget(vectors, grow("norms", self.norms, squared.astype(np.float32)), max_norm, leading)

    def first(self, count: int) -> ScanTarget:
        """The target of the first `count` rows (views; the largest norm of all rows still bounds theirs)."""
        if count >= len(self.vectors):
            return self
        leading = self.leading
        if leading is not None:
            leading = LeadingDims(leading.vectors[:count], leading.norms[:count], leading.countdown)
        return ScanTarget(self.vectors[:count], self.norms[:count], self.max_norm, leading)


def pair_distances(queries: np.ndarray, vectors: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """float32(Σ (q − x)² in float64) for each (query row, vector col) pair; each pair on its own."""
    out = np.empty(len(rows), dtype=np.float32)
    step = max(1, RERANK_PAIR_ELEMENTS // max(1, vectors.shape[1]))
    for start in range(0, len(rows), step):
        stop = start + step
        diff = np.subtract(vectors[cols[start:stop]], queries[rows[start:stop]], dtype=np.float64)
        out[start:stop] = _row_dots(diff, diff)
    return out


def top_k_of_pairs(num_queries: int, k: int, rows: np.ndarray, cols: np.ndarray,
                    distances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q×k (distances, cols) of the k best pairs per query by (distance, col); missing: (max float, -1)."""
    out_d = np.full((num_queries, k), MISSING_DISTANCE, dtype=np.float32)
    out_i = np.full((num_queries, k), -1, dtype=np.int64)
    if num_queries == 1:  # the single query: no grouping by row
        order = np.lexsort((cols, distances))[:k]
        out_d[0, : len(order)] = distances[order]
        out_i[0, : len(order)] = cols[order]
    elif len(rows):
        order = np.lexsort((cols, distances, rows))
        rows, cols, distances = rows[order], cols[order], distances[order]
        first = np.searchsorted(rows, rows, side="left")
        rank = np.arange(len(rows)) - first
        keep = rank < k
        out_d[rows[keep], rank[keep]] = distances[keep]
        out_i[rows[keep], rank[keep]] = cols[keep]
    return out_d, out_i


def _scan_slack(dim: int, max_norm, query_norms):
    """Twice the bound on the approximate scores' error (module doc), per query."""
    unit = float(np.finfo(np.float32).eps) / 2
    return 2 * SCAN_ERROR_FACTOR * (dim + 8) * unit * (max_norm + query_norms) ** 2


def exact_search(queries: np.ndarray, target: ScanTarget, k: int,
                 threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest rows of `target` per query (Q×k distances float32, Q×k rows int64; -1 and
    MISSING_DISTANCE where fewer than k rows exist), see the module doc. A batch runs numpy's BLAS on
    `threads` threads (None: as it is set); a single query on one (a second thread shortens a large scan on
    an idle machine, but a lone query then waits on whatever else holds the other core).
    """
    num_queries, dim = queries.shape
    count = len(target.vectors)
    if num_queries == 1 and count:
        return _exact_search_one_query(queries, target, k)
    out_d = np.empty((num_queries, k), dtype=np.float32)
    out_i = np.empty((num_queries, k), dtype=np.int64)
    query_norms = np.sqrt(np.einsum("ij,ij->i", queries, queries, dtype=np.float64))
    slack = _scan_slack(dim, target.max_norm, query_norms).astype(np.float32)
    with blas_threads(threads) if threads else contextlib.nullcontext():
        for q0 in range(0, num_queries, SCAN_QUERY_TILE):
            block = queries[q0 : q0 + SCAN_QUERY_TILE]
            m = len(block)
            scaled = block * np.float32(-2.0)
            best = np.full((m, k), np.inf, dtype=np.float32)  # k smallest approximate scores so far
            found_rows, found_cols, found_scores = [], [], []
            for d0 in range(0, count, SCAN_DB_TILE):
                tile = target.vectors[d0 : d0 + SCAN_DB_TILE]
                scores = scaled @ tile.T
                scores += target.norms[d0 : d0 + SCAN_DB_TILE]  # ‖x‖² − 2 q·x (‖q‖² is the same per query)
                if k == 1:
                    np.minimum(best[:, 0], scores.min(axis=1), out=best[:, 0])
                else:
                    best = np.partition(np.concatenate([best, scores], axis=1), k - 1, axis=1)[:, :k]
                limit = best.max(axis=1) + slack[q0 : q0 + m]
                rows, cols = np.nonzero(scores <= limit[:, None])
                found_rows.append(rows)
                found_cols.append(cols + d0)
                found_scores.append(scores[rows, cols])
            if not found_rows:  # an empty target: every hit is missing
                out_d[q0 : q0 + m], out_i[q0 : q0 + m] = MISSING_DISTANCE, -1
                continue
            rows, cols, scores = (np.concatenate(parts) for parts in (found_rows, found_cols, found_scores))
            keep = scores <= (best.max(axis=1) + slack[q0 : q0 + m])[rows]  # the final k-th score's bound
            rows, cols = rows[keep], cols[keep].astype(np.int64)
            distances = pair_distances(block, target.vectors, rows, cols)
            out_d[q0 : q0 + m], out_i[q0 : q0 + m] = top_k_of_pairs(m, k, rows, cols, distances)
    return out_d, out_i


def _exact_search_one_query(queries: np.ndarray, target: ScanTarget, k: int) -> tuple[np.ndarray, np.ndarray]:
    """`exact_search` for one query in a dozen numpy calls: one matrix-vector product over all rows
    (memory-bound: N·s·4 bytes read), then the same candidate rule, pair distances and order; by the
    leading dims first where the target holds them."""
    query = queries[0]
    slack = np.float32(_scan_slack(len(query), target.max_norm, float(np.sqrt(np.dot(query, query)))))
    leading = target.leading
    if leading is not None and k < len(target.vectors):
        if leading.countdown.left:
            leading.countdown.left -= 1
        else:
            candidates = _candidates_by_leading_dims(query, target, k, slack)
            if candidates is not None:
                return _top_k_one(query, target.vectors, candidates, k)
            leading.countdown.left = LEADING_RETRY_AFTER
    with blas_threads(1):
        scores = target.vectors @ (query * np.float32(-2.0))
    scores += target.norms
    if k >= len(scores):
        candidates = np.arange(len(scores))
    else:
        kth = scores.min() if k == 1 else np.partition(scores, k - 1)[k - 1]
        candidates = np.flatnonzero(scores <= kth + slack)
    return _top_k_one(query, target.vectors, candidates, k)


def _candidates_by_leading_dims(query: np.ndarray, target: ScanTarget, k: int, slack: np.float32) -> np.ndarray | None:
    """Rows that can still be among the k nearest, found from the leading dims (N·p·4 bytes read, not N·s·4).

    The squared distance over the first p dims is a lower bound of the whole. The LEADING_SEED rows nearest
    in those dims get the full scan's approximate score; their k-th, plus half a slack, is at least the k-th
    distance over all rows, so a row whose bound, less half a slack for its own rounding, is above that is
    not among the k nearest (2 slacks cover both, with room for ‖q‖²'s rounding). The rows left then get the
    full scan's rule, among themselves (they hold every row that can be among the k nearest, so their k-th
    score is no smaller than the full scan's: they keep at least what the full scan keeps). In a PCA space
    the bound is tight and few rows pass; None when more than 1 / LEADING_GIVE_UP do (the full scan is then
    cheaper).
    """
    leading = target.leading
    dims = leading.vectors.shape[1]
    scaled = query * np.float32(-2.0)
    with blas_threads(1):
        bound = leading.vectors @ scaled[:dims]
    bound += leading.norms
    bound += np.float32(np.dot(query[:dims], query[:dims]))
    count = len(bound)
    seed_size = min(count, max(LEADING_SEED, 4 * k))
    seed = np.argpartition(bound, seed_size - 1)[:seed_size]
    kth = np.partition(_scores_of_rows(scaled, target, seed), k - 1)[k - 1] + np.float32(np.dot(query, query))
    candidates = np.flatnonzero(bound <= kth + 2 * slack)
    if len(candidates) * LEADING_GIVE_UP > count or len(candidates) < k:
        return None
    scores = _scores_of_rows(scaled, target, candidates)
    return candidates[scores <= np.partition(scores, k - 1)[k - 1] + slack]


def _scores_of_rows(scaled_query: np.ndarray, target: ScanTarget, rows: np.ndarray) -> np.ndarray:
    """The full scan's approximate scores ‖x‖² − 2 q·x of some rows (`scaled_query` = −2 q)."""
    with blas_threads(1):
        scores = target.vectors[rows] @ scaled_query
    scores += target.norms[rows]
    return scores


def _top_k_one(query: np.ndarray, vectors: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest of the candidate rows by (distance, row); distances as pair_distances computes them:
    float64 differences, one dot product per pair, rounded to float32."""
    diff = np.subtract(vectors[candidates], query, dtype=np.float64)
    distances = _row_dots(diff, diff).astype(np.float32)
    order = np.lexsort((candidates, distances))[:k] if len(candidates) > 1 else slice(None)
    out_d = np.full((1, k), MISSING_DISTANCE, dtype=np.float32)
    out_i = np.full((1, k), -1, dtype=np.int64)
    found = min(k, len(candidates))
    out_d[0, :found] = distances[order]
    out_i[0, :found] = candidates[order]
    return out_d, out_i

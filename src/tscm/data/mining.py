"""Descriptor cache and NetVLAD-style hard-negative mining, batched over queries with matrix products.

Settings are `tscm.config.sections.MiningSettings`; radii are in the data set's unit (metres or frames), and a
set with explicit ground truth uses its listed matches instead. For each query: the positive is
chosen among its true matches within the positive radius (`positive_rule`: "descriptor", published:
nearest in descriptor space; "heading": the same among views whose heading differs by at most
heading_tolerance_deg; "nearest": the geographically nearest — both fall back to "descriptor" where
the set has no headings or positions); `num_random` database images beyond the negative radius,
drawn with the miner's own generator, plus the query's previous hard negatives are ranked by
Euclidean descriptor distance to the query; up to `num_negatives` of them that violate
d_neg < d_pos + √margin (margin is the published squared margin, 0.1) are kept, hardest first. A
query without a positive or without a violating negative yields no tuple.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from tscm.config.sections import MiningSettings
from tscm.data.places import PlaceSet
from tscm.errors import TscmError

CACHE_DTYPES = {"float32": np.float32, "float16": np.float16}


class DescriptorCache:
    """Descriptors of every training database image and query, held in memory (float32 or float16)."""

    def __init__(self, db: np.ndarray, queries: np.ndarray, dtype: str | type = np.float32) -> None:
        self.dtype = _cache_dtype(dtype)
        db = np.asarray(db)
        queries = np.asarray(queries)
        if db.ndim != 2 or queries.ndim != 2 or db.shape[1] != queries.shape[1]:
            raise TscmError(
                f"descriptor cache: expected database N×D and queries M×D with the same D, "
                f"got {db.shape} and {queries.shape}"
            )
        self.db = np.empty(db.shape, dtype=self.dtype)
        self.queries = np.empty(queries.shape, dtype=self.dtype)
        self.set_db(0, db)
        self.set_queries(0, queries)

    @property
    def dim(self) -> int:
        return self.db.shape[1]

    @property
    def num_db(self) -> int:
        return self.db.shape[0]

    @property
    def num_queries(self) -> int:
        return self.queries.shape[0]

    @property
    def nbytes(self) -> int:
        return self.db.nbytes + self.queries.nbytes

    def set_db(self, start: int, values: np.ndarray) -> None:
        """Write database descriptors `values` at rows start…start+len(values)."""
        _write_rows(self.db, start, values, "database")

    def set_queries(self, start: int, values: np.ndarray) -> None:
        """Write query descriptors `values` at rows start…start+len(values)."""
        _write_rows(self.queries, start, values, "query")


def _cache_dtype(dtype: str | type) -> type:
    name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    if name not in CACHE_DTYPES:
        raise TscmError(f"descriptor cache dtype: expected float32 or float16, got {dtype!r}")
    return CACHE_DTYPES[name]


def _write_rows(target: np.ndarray, start: int, values: np.ndarray, what: str) -> None:
    values = np.asarray(values)
    if values.ndim != 2 or values.shape[1] != target.shape[1] or not 0 <= start <= target.shape[0] - len(values):
        raise TscmError(
            f"descriptor cache: cannot write {what} descriptors of shape {values.shape} at row {start} "
            f"of a {target.shape} cache"
        )
    with np.errstate(over="ignore"):  # overflow to inf is reported just below, with context
        converted = values.astype(target.dtype)
    if not np.isfinite(converted).all():
        raise TscmError(f"descriptor cache: {what} descriptors are not finite in {target.dtype} (NaN, inf or overflow)")
    target[start : start + len(values)] = converted


@dataclass(frozen=True)
class MinedTuple:
    """One training tuple: query index, positive database index, negative database indices (hardest first)."""

    query: int
    positive: int
    negatives: np.ndarray


@dataclass
class MiningStats:
    """Counts from the last `mine` call (logged per epoch in epochs.csv)."""

    requested: int = 0
    tuples: int = 0
    no_positive: int = 0
    no_violating_negative: int = 0


def heading_difference_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Absolute angle between headings in degrees, in [0, 180]."""
    return np.abs((np.asarray(a) - np.asarray(b) + 180.0) % 360.0 - 180.0)


def _padded(rows: Sequence[np.ndarray], width: int | None = None) -> np.ndarray:
    """Ragged index lists as a matrix padded with −1."""
    width = max([len(r) for r in rows] + [1]) if width is None else width
    out = np.full((len(rows), width), -1, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


# Mining reads the distances of ~num_random + num_negatives + a few positives per query. Up to this
# many database images per needed distance, one matrix product with the whole database is cheaper
# than gathering the needed rows (random reads, latency-bound); the crossover, near 50, comes from
# `tscm bench`'s mining rows. At Pittsburgh30k size (10k database) the product wins; at
# Pittsburgh250k it would compute 25× the distances mining reads.
DENSE_MINING_RATIO = 48
GATHER_QUERIES = 4  # queries whose candidate rows are gathered at once (4 × 1,000 × 2048 × 4 B = 33 MB)


def _distance_function(queries: np.ndarray, db: np.ndarray, db_sq_norms: np.ndarray, needed: int):
    """distances_at(indices Q×K) -> Q×K Euclidean distances of the chunk's queries to database rows
    (entries of indices < 0 are computed for row 0 and are for the caller to ignore)."""
    if len(db) <= DENSE_MINING_RATIO * needed:
        # ‖q − x‖² = ‖q‖² + ‖x‖² − 2⟨q, x⟩ for the whole database: one matrix product per chunk.
        squared = queries @ db.T
        squared *= -2.0
        squared += np.einsum("qd,qd->q", queries, queries)[:, None]
        squared += db_sq_norms[None, :]

        def dense(indices: np.ndarray) -> np.ndarray:
            return np.sqrt(np.maximum(np.take_along_axis(squared, np.maximum(indices, 0), 1), 0.0))

        return dense

    query_sq_norms = np.einsum("qd,qd->q", queries, queries)

    def gathered(indices: np.ndarray) -> np.ndarray:
        rows = np.maximum(indices, 0)
        out = np.empty(rows.shape, dtype=np.float32)
        for start in range(0, len(rows), GATHER_QUERIES):
            block = slice(start, start + GATHER_QUERIES)
            # einsum, not a batched matmul: BLAS matrix-vector products over the gathered rows pay a
            # thread spin-up per call.
            dots = np.einsum("gkd,gd->gk", db[rows[block]], queries[block])
            out[block] = query_sq_norms[block, None] + db_sq_norms[rows[block]] - 2.0 * dots
        return np.sqrt(np.maximum(out, 0.0))

    return gathered


class Miner:
    """Hard-negative miner over one PlaceSet; its random draws come from its own generator (exact resume)."""

    def __init__(self, placeset: PlaceSet, settings: MiningSettings | None = None, seed: int = 0) -> None:
        self.placeset = placeset
        self.settings = settings or MiningSettings()
        self.settings.check()
        self.rng = np.random.default_rng(seed)
        self.last_stats = MiningStats()
        rule = self.settings.positive_rule
        has_headings = placeset.db_heading is not None and placeset.query_heading is not None
        # Without headings (or positions) the heading (nearest) rule has nothing to test: it becomes the published rule.
        if (rule == "heading" and not has_headings) or (rule == "nearest" and not placeset.has_positions):
            rule = "descriptor"
        self.effective_positive_rule = rule
        pos_radius, neg_radius = self.settings.radii(placeset.unit)
        self.positive_candidates = self._positive_candidates(placeset.positives(pos_radius))
        self.negative_exclusions = placeset.positives(neg_radius)
        self._positive_matrix = _padded(self.positive_candidates)
        self._far_count = np.array([placeset.num_db - len(n) for n in self.negative_exclusions], dtype=np.int64)
        # For sampling "the r-th database image not excluded": with the sorted exclusions e_0 < e_1 < …,
        # that image is r + #{j : e_j − j ≤ r}. The keys e_j − j of all queries, offset by query so that one
        # sorted array serves every query, let one searchsorted map a whole batch of draws.
        stride = placeset.num_db + 1
        self._exclusion_offsets = np.concatenate([[0], np.cumsum([len(n) for n in self.negative_exclusions])]).astype(np.int64)
        self._exclusion_keys = np.concatenate(
            [n - np.arange(len(n)) + q * stride for q, n in enumerate(self.negative_exclusions)] + [np.zeros(0, np.int64)]
        ).astype(np.int64)
        self._stride = stride
        self.previous_negatives = np.full((placeset.num_queries, self.settings.num_negatives), -1, dtype=np.int64)

    def _positive_candidates(self, within_radius: list[np.ndarray]) -> list[np.ndarray]:
        rule = self.effective_positive_rule
        placeset = self.placeset
        if rule == "descriptor":
            return within_radius
        candidates = []
        for q, hits in enumerate(within_radius):
            if rule == "heading":
                keep = heading_difference_deg(placeset.db_heading[hits], placeset.query_heading[q])
                candidates.append(hits[keep <= self.settings.heading_tolerance_deg])
            else:  # nearest: one candidate, the geographically closest (lowest index on ties)
                if len(hits) == 0:
                    candidates.append(hits)
                    continue
                metres = np.linalg.norm(placeset.db_xy[hits] - placeset.query_xy[q], axis=1)
                candidates.append(hits[[int(np.argmin(metres))]])
        return candidates

    def sample_random_negatives(self, query_indices: np.ndarray) -> np.ndarray:
        """`num_random` database indices beyond neg_radius_m per query (with replacement), Q×num_random.

        Draws one uniform double per slot from the miner's generator (row by row, in query order);
        slot value u picks the ⌊u·F⌋-th of the query's F eligible images in index order. Rows of
        queries with no eligible image are −1.
        """
        uniform = self.rng.random((len(query_indices), self.settings.num_random))
        far_count = self._far_count[query_indices][:, None]
        rank = np.minimum(np.floor(uniform * far_count).astype(np.int64), np.maximum(far_count - 1, 0))
        keys = rank + (query_indices * self._stride)[:, None]
        skipped = np.searchsorted(self._exclusion_keys, keys, side="right") - self._exclusion_offsets[query_indices][:, None]
        return np.where(far_count > 0, rank + skipped, -1)

    def mine(self, cache: DescriptorCache, query_indices: Sequence[int] | np.ndarray) -> list[MinedTuple]:
        """Tuples for the given queries (each index once), in their order; queries without one are skipped."""
        query_indices = self._checked_queries(cache, query_indices)
        settings = self.settings
        threshold_gap = math.sqrt(settings.margin)
        # float16 caches are multiplied in float32 (numpy has no fast half-precision products).
        db = cache.db if cache.dtype == np.float32 else cache.db.astype(np.float32)
        db_sq_norms = np.einsum("nd,nd->n", db, db)
        stats = MiningStats(requested=len(query_indices))
        mined: list[MinedTuple] = []
        for start in range(0, len(query_indices), settings.query_chunk):
            chunk = query_indices[start : start + settings.query_chunk]
            sampled = self.sample_random_negatives(chunk)
            queries = cache.queries[chunk].astype(np.float32)
            positives = self._positive_matrix[chunk]
            candidates = np.sort(np.concatenate([sampled, self.previous_negatives[chunk]], axis=1), axis=1)
            distances_at = _distance_function(queries, db, db_sq_norms, positives.shape[1] + candidates.shape[1])

            positive_distances = np.where(positives >= 0, distances_at(positives), np.inf)
            best = np.argmin(positive_distances, axis=1)
            positive = positives[np.arange(len(chunk)), best]
            positive_distance = positive_distances[np.arange(len(chunk)), best]

            usable = candidates >= 0
            usable[:, 1:] &= candidates[:, 1:] != candidates[:, :-1]  # each image once
            candidate_distances = distances_at(candidates)
            violating = usable & (candidate_distances < positive_distance[:, None] + threshold_gap)
            ranked = np.argsort(np.where(violating, candidate_distances, np.inf), axis=1, kind="stable")
            ranked = ranked[:, : settings.num_negatives]
            kept = np.take_along_axis(candidates, ranked, 1)
            kept_valid = np.take_along_axis(violating, ranked, 1)

            for row, query in enumerate(chunk):
                if positive[row] < 0:
                    stats.no_positive += 1
                    continue
                negatives = kept[row][kept_valid[row]]
                if len(negatives) == 0:
                    stats.no_violating_negative += 1
                    continue
                self.previous_negatives[query] = -1
                self.previous_negatives[query, : len(negatives)] = negatives
                mined.append(MinedTuple(int(query), int(positive[row]), negatives))
        stats.tuples = len(mined)
        self.last_stats = stats
        return mined

    def _checked_queries(self, cache: DescriptorCache, query_indices: Sequence[int] | np.ndarray) -> np.ndarray:
        if cache.num_db != self.placeset.num_db or cache.num_queries != self.placeset.num_queries:
            raise TscmError(
                f"descriptor cache holds {cache.num_db} database / {cache.num_queries} query descriptors, "
                f"but {self.placeset.summary()}"
            )
        indices = np.asarray(query_indices, dtype=np.int64).reshape(-1)
        if len(indices) and (indices.min() < 0 or indices.max() >= self.placeset.num_queries):
            raise TscmError(f"query indices: expected values in [0, {self.placeset.num_queries}), got {indices.min()}…{indices.max()}")
        if len(np.unique(indices)) != len(indices):
            raise TscmError("query indices: each query may appear only once per mining call")
        return indices

    def state_dict(self) -> dict:
        """Previous negatives (int64 array, −1 = none) and the generator state (a JSON string)."""
        return {
            "previous_negatives": self.previous_negatives.copy(),
            "rng_state": json.dumps(self.rng.bit_generator.state),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore what state_dict returned, so mining continues exactly as before the save."""
        previous = np.asarray(state.get("previous_negatives"))
        if previous.shape != self.previous_negatives.shape or not np.issubdtype(previous.dtype, np.integer):
            raise TscmError(
                f"mining state: previous_negatives must be an integer array of shape {self.previous_negatives.shape}, "
                f"got {previous.dtype} {previous.shape}"
            )
        if previous.min(initial=-1) < -1 or previous.max(initial=-1) >= self.placeset.num_db:
            raise TscmError(f"mining state: previous_negatives holds indices outside [-1, {self.placeset.num_db})")
        try:
            rng_state = json.loads(state["rng_state"])
            self.rng.bit_generator.state = rng_state
        except (KeyError, TypeError, ValueError) as error:
            raise TscmError(f"mining state: rng_state is not a saved generator state ({error})") from None
        self.previous_negatives = previous.astype(np.int64).copy()

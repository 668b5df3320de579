"""How a `PlaceIndex` searches: the exhaustive back-ends (flat and PCA-flat with fp32 storage, IVF's
coarse lists, IVF-PQ's re-ranking) through `tscm.evaluation.search.exact_search`, faiss for the rest,
batches smaller than SINGLE_THREAD_BELOW on one thread; and what the search keeps between calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tscm.deploy.retrieval.index_backends import flat_vectors
from tscm.deploy.retrieval.pca import PcaProjection
from tscm.evaluation.search import (LEADING_DIMS, MISSING_DISTANCE, ScanTarget, exact_search, pair_distances,
                                   top_k_of_pairs)
from tscm.threads import limit_threads

# faiss spreads even one query over its threads, and on a shared CPU the thread barrier can cost
# more than the search itself (`tscm bench` shows single-query rows), so batches smaller than this
# run on one thread: faiss (OpenMP) and numpy's BLAS both.
SINGLE_THREAD_BELOW = 8


@dataclass
class SearchResult:
    """Top-k hits per query. `indices` are row numbers in the index (the order descriptors were
    added), -1 where fewer than k hits exist; `ids`/`xy`/`paths` describe the same hits."""

    distances: np.ndarray  # Q×k float32, squared L2 in the searched space
    indices: np.ndarray  # Q×k int64
    ids: np.ndarray  # Q×k int64, -1 for a missing hit
    xy: np.ndarray | None  # Q×k×2 float64 (NaN for a missing hit), None if the index has no coordinates
    paths: list[list[str | None]] | None  # None if the index has no paths


class IndexSearch:
    """The search of one faiss index with its caches: the flat rows with their norms (`scan`), the IVF
    centroids, the re-ranking rows. The index drops them when it changes (`forget_rows`, `forget_training`)."""

    def __init__(self, backend: str, faiss_index) -> None:
        self.backend = backend
        self._faiss = faiss_index
        self.scan: ScanTarget | None = None
        self._coarse: tuple[Any, ScanTarget] | None = None  # (faiss IVF, its centroids)
        self._refine: np.ndarray | None = None

    def forget_training(self) -> None:
        """The quantisers were trained again: the centroids are new."""
        self._coarse = None

    def forget_rows(self) -> ScanTarget | None:
        """Drop the views of faiss' storage, which an add may move; returns the scan target as it was."""
        scan = self.scan
        self.scan = self._refine = None
        return scan

    def search(self, queries: np.ndarray, k: int, params: dict[str, Any], pca: PcaProjection | None,
               count: int, entries: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(Q×k float32 squared distances, Q×k int64 rows, -1 where missing) in the searched space, among the
        first `entries` rows (None: all). The exhaustive back-ends scan those rows only; the others search
        k + the rows left out and drop those, so a long run of new entries left out costs them a longer search."""
        import faiss

        threads = 1 if len(queries) < SINGLE_THREAD_BELOW else max(1, faiss.omp_get_max_threads())
        entries = count if entries is None else entries
        with limit_threads(faiss=1 if threads == 1 else None):
            if pca is not None:
                queries = pca.apply(queries)
            if self.backend in ("flat", "pca-flat") and params["storage"] == "fp32":
                return exact_search(queries, self._scan_target(count, params).first(entries), k, threads)
            wanted = min(k + count - entries, count)
            if self.backend == "ivfpq":
                distances, indices = self._search_ivfpq(queries, wanted, threads, int(params["rerank"]), count)
            else:
                distances, indices = self._faiss.search(queries, wanted)
                indices = indices.astype(np.int64, copy=False)
            return _hits_among_first(distances, indices, k, entries) if entries < count else (distances, indices)

    def _scan_target(self, count: int, params: dict[str, Any]) -> ScanTarget:
        """The flat index' rows (a view of faiss' storage) with their norms, and their leading dims where the
        space is PCA's without whitening (components by decreasing variance); rebuilt after adds."""
        if self.scan is None or len(self.scan.vectors) != count:
            ordered = self.backend == "pca-flat" and not params.get("whiten")
            self.scan = ScanTarget.of(flat_vectors(self._faiss), LEADING_DIMS if ordered else None)
        return self.scan

    def _search_ivfpq(self, queries: np.ndarray, k: int, threads: int, rerank: int,
                      count: int) -> tuple[np.ndarray, np.ndarray]:
        """Coarse lists by exact search over the centroids, faiss' PQ scan of them, exact re-ranking."""
        import faiss

        if self._coarse is None:
            ivf = faiss.extract_index_ivf(self._faiss)
            centroids = np.ascontiguousarray(ivf.quantizer.reconstruct_n(0, ivf.nlist), dtype=np.float32)
            self._coarse = (ivf, ScanTarget.of(centroids))
        ivf, coarse = self._coarse
        # More lists than exist come back as -1, which faiss skips (as its own search does).
        coarse_d, coarse_i = exact_search(queries, coarse, int(ivf.nprobe), threads)
        wanted = k * rerank if rerank > 0 else k
        distances, labels = ivf.search_preassigned(queries, wanted, coarse_i, coarse_d)
        labels = labels.astype(np.int64, copy=False)
        if rerank == 0:
            return distances, labels
        rows, slots = np.nonzero(labels >= 0)
        cols = labels[rows, slots]
        if self._refine is None or len(self._refine) != count:
            self._refine = flat_vectors(self._faiss.refine_index)
        exact = pair_distances(queries, self._refine, rows, cols)
        return top_k_of_pairs(len(queries), k, rows, cols, exact)


def _hits_among_first(distances: np.ndarray, indices: np.ndarray, k: int, entries: int) -> tuple[np.ndarray, np.ndarray]:
    """The first k hits of each query (hits come nearest first) whose row is below `entries`; missing after."""
    out_d = np.full((len(indices), k), MISSING_DISTANCE, dtype=np.float32)
    out_i = np.full((len(indices), k), -1, dtype=np.int64)
    for query, (found_d, found_i) in enumerate(zip(distances, indices)):
        keep = np.flatnonzero((found_i >= 0) & (found_i < entries))[:k]
        out_d[query, : len(keep)], out_i[query, : len(keep)] = found_d[keep], found_i[keep]
    return out_d, out_i

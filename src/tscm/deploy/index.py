"""Place index: descriptors of known places, searchable through faiss, saved as one safetensors file.

Back-ends (``PlaceIndex.create(backend, dim, **params)``):

- ``flat``: exact L2 search on the full descriptors (``storage="fp16"`` halves memory).
- ``pca-flat``: PCA (optionally whitened) to ``pca_dim`` dims, then exact search there.
- ``ivfpq``: inverted lists + product quantisation, optionally after PCA, with exact re-ranking
  of ``rerank × k`` candidates on the (reduced) vectors.
- ``hnsw``: HNSW graph on the (optionally PCA-reduced) vectors.

Distances returned by ``search`` are squared L2 in the space the back-end searches (after PCA and
whitening where those are used), so they are comparable within one index, not across back-ends.
A query gets bitwise the same hits, distances and tie order (lower row first) alone as in any
batch: PCA projects each query with its own matrix-vector product, and the exhaustive searches
(flat and PCA-flat with fp32 storage, IVF's coarse lists, IVF-PQ's re-ranking) select candidates
with matrix products and then compute each candidate's distance on its own (see "exhaustive
search" below). A lone query runs on one thread, with a handful of numpy calls around one
memory-bound matrix-vector product over the stored vectors (N·d·4 bytes).

File format (one file, written atomically): safetensors arrays ``faiss_index`` (faiss'
``serialize_index`` bytes, plain binary), ``ids``, optional ``xy``, optional ``times`` (frame
numbers or seconds, for sequences and loop closure), optional ``paths_utf8`` + ``paths_end`` and,
for PCA, ``pca_mean`` + ``pca_projection``; the safetensors header metadata holds key
``tscm_index`` with JSON: format version, backend, params, dim, count, memory in bytes, model
fingerprint and metadata, calibrated thresholds with the search space they apply to, the unit
of ``xy`` (``position_unit``: "m" for east/north metres, "frame" for (frame, 0); absent in older
files: metres), and a SHA-256 of every array so a damaged file is detected.

A threshold (``calibrate``) is a distance below which a top-1 match is accepted, chosen on a
validation split for a target precision; it is only meaningful in the space it was measured in
(back-end, PCA), so it records that space and is ignored, with a warning, in any other.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from tscm import __version__
from tscm.errors import TscmError, excerpt
from tscm.fileio import atomic_path, check_header, parse_json
from tscm.threads import limit_threads

FORMAT_NAME = "tscm-place-index"
FORMAT_VERSION = 1
METADATA_KEY = "tscm_index"
BACKENDS = ("flat", "pca-flat", "ivfpq", "hnsw")

# Training uses at most this many vectors (a fixed-seed sample): 20k is ten times a 2048-d
# descriptor, plenty for the leading PCA axes; 50k (reduced) vectors give 1024 IVF lists ~50
# points each. Both keep training time bounded on large maps.
PCA_TRAIN_LIMIT = 20_000
QUANTIZER_TRAIN_LIMIT = 50_000
# faiss spreads even one query over its threads; on a shared CPU the thread barrier then costs
# milliseconds (measured on a loaded 2-core machine, 10k×256 flat search: median 0.13 ms on one
# thread, 0.4 to 40 ms on two), so batches smaller than this run on one thread: faiss (OpenMP)
# and numpy's BLAS both (a 2 MB matrix-vector product on two BLAS threads of a busy 2-core
# machine took 10 ms instead of 0.08).
SINGLE_THREAD_BELOW = 8

_DEFAULT_PARAMS: dict[str, dict[str, Any]] = {
    "flat": {"storage": "fp32"},
    "pca-flat": {"pca_dim": 256, "whiten": False, "storage": "fp32"},
    "ivfpq": {"pca_dim": None, "whiten": False, "nlist": 1024, "pq_m": 64, "pq_bits": 8, "nprobe": 16, "rerank": 8},
    "hnsw": {"pca_dim": None, "whiten": False, "hnsw_m": 32, "ef_construction": 80, "ef_search": 128},
}
# Parameters that only affect search, so they may change after the index is built.
_SEARCH_PARAMS = {"ivfpq": ("nprobe", "rerank"), "hnsw": ("ef_search",)}
_STORAGES = ("fp32", "fp16")


def recommended_config(num_db: int, dim: int) -> tuple[str, dict[str, Any]]:
    """Back-end and parameters for a database of `num_db` descriptors of `dim` dims.

    From the matching benchmark (tscm.bench.matching, synthetic 2048-d descriptors, 2 shared CPU cores):
    exact search while the database is at most 8 MB; PCA to 256 dims + exact search up to 25k
    images (0.18 ms CPU per query at 10k, Recall@1 as exact; it grows linearly with size);
    beyond that an HNSW graph on the PCA-reduced vectors.
    """
    if num_db < 1 or dim < 1:
        raise TscmError(f"recommended_config: need a positive database size and dimension, got {num_db}×{dim}")
    if num_db * dim * 4 <= 8 * 2**20:
        return "flat", {}
    reduce = {"pca_dim": 256} if dim > 256 else {}
    if num_db <= 25_000:
        return ("pca-flat", reduce) if reduce else ("flat", {})
    return "hnsw", {**reduce, "hnsw_m": 32, "ef_construction": 80, "ef_search": 128}


@dataclass
class SearchResult:
    """Top-k hits per query. `indices` are row numbers in the index (the order descriptors were
    added), -1 where fewer than k hits exist; `ids`/`xy`/`paths` describe the same hits."""

    distances: np.ndarray  # Q×k float32, squared L2 in the searched space
    indices: np.ndarray  # Q×k int64
    ids: np.ndarray  # Q×k int64, -1 for a missing hit
    xy: np.ndarray | None  # Q×k×2 float64 (NaN for a missing hit), None if the index has no coordinates
    paths: list[list[str | None]] | None  # None if the index has no paths


@dataclass
class PcaProjection:
    """Centre, project onto the leading principal axes, optionally whiten (then re-normalise).

    `apply` projects each query with its own matrix-vector product (numpy's BLAS on one thread,
    the matrix pre-transposed, the centring folded into an offset), so a query's projection is
    bitwise the same alone or in any batch: a batched matrix product rounds differently per row
    shape, which would let a lone query's distances differ from the same query's in a batch.
    One thread because BLAS threads spin-waited for milliseconds per query on the shared CPU.
    """

    mean: np.ndarray  # D float32
    projection: np.ndarray  # D×d float32, columns scaled by 1/sqrt(eigenvalue) when whitening
    whiten: bool
    _transposed: Any = field(default=None, init=False, repr=False, compare=False)
    _offset: Any = field(default=None, init=False, repr=False, compare=False)
    _sha256: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        projection = np.asarray(self.projection, dtype=np.float32)
        self._transposed = np.ascontiguousarray(projection.T)  # d×D: one row per output axis
        self._offset = (-(self.mean.astype(np.float64) @ projection.astype(np.float64))).astype(np.float32)

    @property
    def sha256(self) -> str:
        """SHA-256 of the projection matrix (the search space's identity; computed once)."""
        if self._sha256 is None:
            self._sha256 = _sha256(self.projection)
        return self._sha256

    @classmethod
    def fit(cls, descriptors: np.ndarray, out_dim: int, whiten: bool) -> PcaProjection:
        if len(descriptors) < 2:
            raise TscmError(f"PCA needs at least 2 training descriptors, got {len(descriptors)}")
        mean = descriptors.mean(axis=0, dtype=np.float64)
        centred = (descriptors - mean).astype(np.float32)
        # The product in float32 (twice as fast); the eigen-decomposition in float64.
        covariance = (centred.T @ centred).astype(np.float64) / (len(descriptors) - 1)
        eigenvalues, eigenvectors = np.linalg.eigh(covariance)
        order = np.argsort(eigenvalues)[::-1][:out_dim]
        projection = eigenvectors[:, order]
        if whiten:
            # A floor on tiny eigenvalues keeps near-empty directions from being blown up into noise.
            floor = max(eigenvalues[order[0]], 1e-12) * 1e-6
            projection = projection / np.sqrt(np.maximum(eigenvalues[order], floor))
        return cls(mean.astype(np.float32), np.ascontiguousarray(projection, dtype=np.float32), whiten)

    def apply(self, descriptors: np.ndarray) -> np.ndarray:
        """N×D float32 -> N×d float32 (contiguous)."""
        descriptors = np.ascontiguousarray(descriptors, dtype=np.float32)
        with _blas_threads(1):
            # (d×D) @ (N×D×1): numpy runs one gemv per query, the same call whatever N is.
            reduced = np.matmul(self._transposed, descriptors[:, :, None])[:, :, 0]
        reduced += self._offset
        if self.whiten:
            norms = np.sqrt(np.einsum("ij,ij->i", reduced, reduced))
            reduced /= np.maximum(norms, 1e-12)[:, None]
        return reduced


@functools.lru_cache(maxsize=1)
def _numpy_blas():
    """numpy's bundled OpenBLAS (ctypes handle, looked up once), or None."""
    from tscm.threads import _numpy_openblas

    return _numpy_openblas()


@contextlib.contextmanager
def _blas_threads(count: int) -> Iterator[None]:
    """numpy's BLAS on `count` threads for the block (a no-op when it already is, or numpy has another BLAS).

    Cheaper than tscm.threads.limit_threads(blas=...) per call (no library lookup), which matters
    for the single-query path.
    """
    library = _numpy_blas()
    previous = library.scipy_openblas_get_num_threads64_() if library is not None else count
    if previous == count:
        yield
        return
    library.scipy_openblas_set_num_threads64_(int(count))
    try:
        yield
    finally:
        library.scipy_openblas_set_num_threads64_(previous)


def _sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _check_params(backend: str, dim: int, params: dict[str, Any]) -> dict[str, Any]:
    """Defaults merged with `params`, every value checked; raises TscmError naming the bad one."""
    if backend not in _DEFAULT_PARAMS:
        raise TscmError(f"index backend {backend!r} is unknown; expected one of {', '.join(BACKENDS)}")
    unknown = sorted(set(params) - set(_DEFAULT_PARAMS[backend]))
    if unknown:
        raise TscmError(
            f"index backend {backend!r} has no parameter(s) {', '.join(unknown)}; "
            f"it takes {', '.join(_DEFAULT_PARAMS[backend])}"
        )
    merged = {**_DEFAULT_PARAMS[backend], **params}
    if dim < 1:
        raise TscmError(f"index dim must be a positive integer, got {dim}")
    pca_dim = merged.get("pca_dim")
    if backend == "pca-flat" and pca_dim is None:
        raise TscmError("index backend 'pca-flat' needs pca_dim (the reduced dimension)")
    if pca_dim is not None and not (isinstance(pca_dim, int) and 1 <= pca_dim <= dim):
        raise TscmError(f"index pca_dim must be an integer in 1..{dim} (the descriptor dim), got {pca_dim!r}")
    if "storage" in merged and merged["storage"] not in _STORAGES:
        raise TscmError(f"index storage must be one of {', '.join(_STORAGES)}, got {merged['storage']!r}")
    search_dim = pca_dim or dim
    positive_ints = [name for name in ("nlist", "pq_m", "pq_bits", "nprobe", "hnsw_m", "ef_construction", "ef_search")
                     if name in merged]
    for name in positive_ints:
        if not (isinstance(merged[name], int) and merged[name] >= 1):
            raise TscmError(f"index parameter {name} must be a positive integer, got {merged[name]!r}")
    if "rerank" in merged and not (isinstance(merged["rerank"], int) and merged["rerank"] >= 0):
        raise TscmError(f"index parameter rerank must be an integer >= 0 (0 = no re-ranking), got {merged['rerank']!r}")
    if backend == "ivfpq" and search_dim % merged["pq_m"] != 0:
        raise TscmError(f"index parameter pq_m={merged['pq_m']} must divide the searched dimension {search_dim}")
    return merged


def _build_faiss_index(backend: str, search_dim: int, params: dict[str, Any]):
    import faiss

    if backend in ("flat", "pca-flat"):
        if params["storage"] == "fp16":
            return faiss.IndexScalarQuantizer(search_dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_L2)
        return faiss.IndexFlatL2(search_dim)
    if backend == "hnsw":
        index = faiss.IndexHNSWFlat(search_dim, params["hnsw_m"])
        index.hnsw.efConstruction = params["ef_construction"]
        return index
    coarse = faiss.IndexFlatL2(search_dim)
    # faiss' Python wrappers keep the quantizer and base index alive as long as the outer index.
    ivfpq = faiss.IndexIVFPQ(coarse, search_dim, params["nlist"], params["pq_m"], params["pq_bits"])
    if params["rerank"] == 0:
        return ivfpq
    return faiss.IndexRefineFlat(ivfpq)


def _apply_search_params(backend: str, index, params: dict[str, Any]) -> None:
    import faiss

    if backend == "hnsw":
        index.hnsw.efSearch = params["ef_search"]
    elif backend == "ivfpq":
        if params["rerank"] > 0:
            index.k_factor = float(params["rerank"])
            faiss.extract_index_ivf(index.base_index).nprobe = params["nprobe"]
        else:
            faiss.extract_index_ivf(index).nprobe = params["nprobe"]


def _sample_rows(array: np.ndarray, limit: int) -> np.ndarray:
    """At most `limit` rows, a fixed-seed sample in their original order."""
    if len(array) <= limit:
        return array
    keep = np.random.default_rng(0).choice(len(array), limit, replace=False)
    return array[np.sort(keep)]


def _as_descriptors(values, dim: int, what: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float32)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[1] != dim:
        raise TscmError(f"{what}: expected an N×{dim} array of descriptors, got shape {np.shape(values)}")
    if not np.isfinite(array).all():
        raise TscmError(f"{what}: descriptors must be finite numbers (found NaN or inf)")
    return np.ascontiguousarray(array)


# ----- exhaustive search --------------------------------------------------------------------------
# One routine serves the flat back-ends (fp32 storage), IVF's coarse assignment and the re-ranking:
# a fast approximate pass (BLAS: ‖x‖² − 2 q·x; a matrix-vector product for one query, tiled
# matrix products for a batch) keeps every row that can still be among the k nearest, given a
# proven bound on that pass' rounding error; those few rows then get their squared distance
# computed pair by pair in float64 (rounded to float32) and are ordered by (distance, row). A
# query therefore gets bitwise the same hits, distances and tie order alone or in any batch, and
# the batch keeps the speed of matrix products. The bound: for s-dim rows, the float32 dot product
# errs by at most s·u·‖q‖‖x‖ (any summation order), the norms and sums add a few u·(‖x‖+‖q‖)², the
# float64 distance rounded to float32 u·(‖x‖+‖q‖)² (u = 2^-24); SCAN_ERROR_FACTOR doubles that.
SCAN_ERROR_FACTOR = 2.0
SCAN_DB_TILE = 32_768  # database rows per matrix product of a batch
SCAN_QUERY_TILE = 256  # queries per matrix product of a batch
RERANK_PAIR_ELEMENTS = 1 << 21  # float64 elements of (candidate, query) differences held at once
MISSING_DISTANCE = np.float32(np.finfo(np.float32).max)  # faiss' value for a hit that does not exist


def _row_dots(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dot product of each row of `a` with the same row of `b` (numpy ≥ 2: the vecdot ufunc, fastest)."""
    vecdot = getattr(np, "vecdot", None)
    return vecdot(a, b) if vecdot is not None else np.einsum("ij,ij->i", a, b)


@dataclass
class _ScanTarget:
    """Rows searched exhaustively: a view of faiss' storage, their squared norms and the largest norm."""

    vectors: np.ndarray  # N×s float32 (may be a view of faiss-owned memory: valid until the next add)
    norms: np.ndarray  # N float32, ‖x‖²
    max_norm: float  # max ‖x‖

    @classmethod
    def of(cls, vectors: np.ndarray) -> _ScanTarget:
        squared = np.einsum("ij,ij->i", vectors, vectors, dtype=np.float64)
        return cls(vectors, squared.astype(np.float32), float(np.sqrt(squared.max())) if len(squared) else 0.0)


def _flat_vectors(flat_index) -> np.ndarray:
    """The N×d float32 rows of a faiss IndexFlat, without a copy."""
    import faiss

    flat = faiss.downcast_index(flat_index)
    count, dim = int(flat.ntotal), int(flat.d)
    if count == 0:
        return np.zeros((0, dim), dtype=np.float32)
    return faiss.rev_swig_ptr(flat.get_xb(), count * dim).reshape(count, dim)


def _pair_distances(queries: np.ndarray, vectors: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """float32(Σ (q − x)² in float64) for each (query row, vector col) pair; each pair on its own."""
    out = np.empty(len(rows), dtype=np.float32)
    step = max(1, RERANK_PAIR_ELEMENTS // max(1, vectors.shape[1]))
    for start in range(0, len(rows), step):
        stop = start + step
        diff = np.subtract(vectors[cols[start:stop]], queries[rows[start:stop]], dtype=np.float64)
        out[start:stop] = _row_dots(diff, diff)
    return out


def _top_k_of_pairs(num_queries: int, k: int, rows: np.ndarray, cols: np.ndarray,
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
    """Twice the bound on the approximate scores' error (module note above), per query."""
    unit = float(np.finfo(np.float32).eps) / 2
    return 2 * SCAN_ERROR_FACTOR * (dim + 8) * unit * (max_norm + query_norms) ** 2


def _exact_search(queries: np.ndarray, target: _ScanTarget, k: int, threads: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest rows of `target` per query (Q×k distances float32, Q×k rows int64), see above."""
    num_queries, dim = queries.shape
    count = len(target.vectors)
    if num_queries == 1 and count:
        return _exact_search_one(queries, target, k)
    out_d = np.empty((num_queries, k), dtype=np.float32)
    out_i = np.empty((num_queries, k), dtype=np.int64)
    query_norms = np.sqrt(np.einsum("ij,ij->i", queries, queries, dtype=np.float64))
    slack = _scan_slack(dim, target.max_norm, query_norms).astype(np.float32)
    with _blas_threads(threads):
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
            distances = _pair_distances(block, target.vectors, rows, cols)
            out_d[q0 : q0 + m], out_i[q0 : q0 + m] = _top_k_of_pairs(m, k, rows, cols, distances)
    return out_d, out_i


def _exact_search_one(queries: np.ndarray, target: _ScanTarget, k: int) -> tuple[np.ndarray, np.ndarray]:
    """`_exact_search` for one query in a dozen numpy calls: one matrix-vector product over all rows
    (memory-bound: N·s·4 bytes read), then the same candidate rule, pair distances and order."""
    query = queries[0]
    with _blas_threads(1):
        scores = target.vectors @ (query * np.float32(-2.0))
    scores += target.norms
    if k >= len(scores):
        candidates = np.arange(len(scores))
    else:
        kth = scores.min() if k == 1 else np.partition(scores, k - 1)[k - 1]
        slack = _scan_slack(len(query), target.max_norm, float(np.sqrt(np.dot(query, query))))
        candidates = np.flatnonzero(scores <= kth + np.float32(slack))
    # As _pair_distances: float64 differences, one dot product per pair, rounded to float32.
    diff = np.subtract(target.vectors[candidates], query, dtype=np.float64)
    distances = _row_dots(diff, diff).astype(np.float32)
    order = np.lexsort((candidates, distances))[:k] if len(candidates) > 1 else slice(None)
    out_d = np.full((1, k), MISSING_DISTANCE, dtype=np.float32)
    out_i = np.full((1, k), -1, dtype=np.int64)
    found = min(k, len(candidates))
    out_d[0, :found] = distances[order]
    out_i[0, :found] = candidates[order]
    return out_d, out_i


class PlaceIndex:
    """Descriptors of database places with their image ids, optional coordinates and paths."""

    def __init__(self, backend: str, dim: int, params: dict[str, Any], faiss_index, pca: PcaProjection | None,
                 model_fingerprint: str | None, model_meta: dict[str, Any] | None) -> None:
        self.backend = backend
        self.dim = dim
        self.params = params
        self.model_fingerprint = model_fingerprint
        self.model_meta = model_meta
        self._faiss = faiss_index
        self._pca = pca
        self._ids = np.zeros(0, dtype=np.int64)
        self._xy: np.ndarray | None = None
        self._times: np.ndarray | None = None
        self._paths: list[str] | None = None
        self._vectors: np.ndarray | None = None  # the searched vectors, reconstructed on demand
        # Search caches: flat rows with norms, IVF centroids, re-ranking rows (reset by train/add).
        self._scan: _ScanTarget | None = None
        self._coarse: tuple[Any, _ScanTarget] | None = None  # (faiss IVF, its centroids)
        self._refine: np.ndarray | None = None
        self.thresholds: list[dict[str, Any]] = []
        self.position_unit = "m"  # of the coordinates in `xy`: "m" (east, north) or "frame" (frame, 0)
        _apply_search_params(backend, faiss_index, params)

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def create(cls, backend: str, dim: int, *, model_fingerprint: str | None = None,
               model_meta: dict[str, Any] | None = None, **params: Any) -> PlaceIndex:
        """An empty index; back-ends with PCA or IVF need `train` before `add`."""
        params = _check_params(backend, dim, params)
        if model_meta is not None:
            try:
                json.dumps(model_meta)
            except (TypeError, ValueError) as error:
                raise TscmError(f"index model_meta must be JSON-serialisable: {error}") from None
        search_dim = params.get("pca_dim") or dim
        return cls(backend, dim, params, _build_faiss_index(backend, search_dim, params), None,
                   model_fingerprint, model_meta)

    @classmethod
    def build(cls, descriptors, ids=None, *, paths: Sequence[str] | None = None, xy=None, times=None, backend: str = "auto",
              train_descriptors=None, model_fingerprint: str | None = None,
              model_meta: dict[str, Any] | None = None, **params: Any) -> PlaceIndex:
        """Create, train (on `train_descriptors`, else the database itself) and fill an index.

        `backend="auto"` takes `recommended_config` for this database size (`params` override it).
        """
        descriptors = np.asarray(descriptors, dtype=np.float32)
        if descriptors.ndim != 2 or len(descriptors) == 0:
            raise TscmError(f"index build: expected a non-empty N×D descriptor array, got shape {descriptors.shape}")
        if backend == "auto":
            backend, chosen = recommended_config(len(descriptors), descriptors.shape[1])
            params = {**chosen, **params}
        index = cls.create(backend, descriptors.shape[1], model_fingerprint=model_fingerprint,
                           model_meta=model_meta, **params)
        if index.needs_training:
            index.train(descriptors if train_descriptors is None else train_descriptors)
        if ids is None:
            ids = np.arange(len(descriptors), dtype=np.int64)
        index.add(descriptors, ids, paths=paths, xy=xy, times=times)
        return index

    # ---- state --------------------------------------------------------------------------
    @property
    def count(self) -> int:
        return int(len(self._ids))

    @property
    def ids(self) -> np.ndarray:
        """The image ids of the entries, in the order they were added (read-only view)."""
        view = self._ids.view()
        view.flags.writeable = False
        return view

    def entry(self, position: int) -> dict[str, Any]:
        """What the index knows of the entry at `position` (order of adding): id, xy, path, time."""
        return {
            "id": int(self._ids[position]),
            "xy": None if self._xy is None else (float(self._xy[position, 0]), float(self._xy[position, 1])),
            "path": None if self._paths is None else (self._paths[position] or None),
            "time": None if self._times is None else float(self._times[position]),
        }

    @property
    def times(self) -> np.ndarray | None:
        """Each entry's time (frame number or seconds), if the map was given them."""
        return None if self._times is None else self._times.copy()

    @property
    def search_dim(self) -> int:
        return int(self._faiss.d)

    def space(self) -> dict[str, Any]:
        """What distances returned by `search` depend on: back-end, its build parameters, the PCA."""
        search_only = _SEARCH_PARAMS.get(self.backend, ())
        return {
            "backend": self.backend,
            "params": {k: v for k, v in sorted(self.params.items()) if k not in search_only},
            "pca_sha256": None if self._pca is None else self._pca.sha256,
        }

    def empty_copy(self) -> PlaceIndex:
        """An index with the same back-end, parameters, PCA and trained quantisers, holding no entries:
        distances in it are in this index's space (used to calibrate thresholds on other images)."""
        import faiss

        clone = faiss.clone_index(self._faiss)
        clone.reset()
        copy = PlaceIndex(self.backend, self.dim, dict(self.params), clone, self._pca, self.model_fingerprint,
                          self.model_meta)
        return copy

    def to_search_space(self, descriptors) -> np.ndarray:
        """Descriptors as the back-end searches them (PCA-projected where the index uses PCA)."""
        descriptors = _as_descriptors(descriptors, self.dim, "index descriptors")
        return self._pca.apply(descriptors) if self._pca is not None else descriptors

    def vectors(self) -> np.ndarray:
        """The searched vectors of every entry (after PCA; approximate for quantised back-ends), N×search_dim."""
        if self._vectors is None or len(self._vectors) != self.count:
            import faiss

            if self.backend == "ivfpq":
                ivf = faiss.extract_index_ivf(self._faiss)
                ivf.make_direct_map()
            self._vectors = np.ascontiguousarray(self._faiss.reconstruct_n(0, self.count), dtype=np.float32)
        return self._vectors

    def threshold(self, sequence_length: int = 1) -> dict[str, Any] | None:
        """The calibrated threshold for scores over `sequence_length` frames, if one applies to this space."""
        for entry in self.thresholds:
            if entry.get("sequence_length", 1) == sequence_length and entry.get("space") == self.space():
                return entry
        return None

    def stale_thresholds(self) -> list[dict[str, Any]]:
        """Thresholds measured in another space (the index was rebuilt or retrained since)."""
        return [entry for entry in self.thresholds if entry.get("space") != self.space()]

    def set_threshold(self, entry: dict[str, Any]) -> None:
        """Store a calibrated threshold for this space (replacing one for the same sequence length)."""
        length = entry.get("sequence_length", 1)
        self.thresholds = [t for t in self.thresholds if t.get("sequence_length", 1) != length]
        self.thresholds.append({**entry, "sequence_length": length, "space": self.space()})

    @property
    def needs_training(self) -> bool:
        return (self.params.get("pca_dim") is not None and self._pca is None) or not self._faiss.is_trained

    @property
    def memory_bytes(self) -> int:
        """Bytes held for search: the faiss index (as serialised), PCA, ids, coordinates, paths."""
        return sum(array.nbytes for array in self._arrays().values())

    def set_search_params(self, **params: Any) -> None:
        """Change search-time parameters (ivfpq: nprobe, rerank > 0 if built with re-ranking; hnsw: ef_search)."""
        allowed = _SEARCH_PARAMS.get(self.backend, ())
        unknown = sorted(set(params) - set(allowed))
        if unknown:
            raise TscmError(f"index backend {self.backend!r} cannot change {', '.join(unknown)} after building; "
                            f"search parameters: {', '.join(allowed) or 'none'}")
        if self.backend == "ivfpq" and "rerank" in params and (params["rerank"] == 0) != (self.params["rerank"] == 0):
            raise TscmError("index parameter rerank can change between positive values only; "
                            "turning re-ranking on or off needs a rebuild")
        merged = _check_params(self.backend, self.dim, {**self.params, **params})
        self.params = merged
        _apply_search_params(self.backend, self._faiss, merged)

    # ---- training and adding ------------------------------------------------------------
    def train(self, descriptors) -> None:
        """Fit PCA and/or the faiss quantisers on representative descriptors (database or training set)."""
        descriptors = _as_descriptors(descriptors, self.dim, "index train")
        if self.count:
            raise TscmError("index train: the index already holds descriptors; train before adding")
        descriptors = _sample_rows(descriptors, QUANTIZER_TRAIN_LIMIT)
        pca_dim = self.params.get("pca_dim")
        if pca_dim is not None:
            if len(descriptors) < pca_dim:
                raise TscmError(f"index train: PCA to {pca_dim} dims needs at least {pca_dim} training "
                                f"descriptors, got {len(descriptors)}")
            self._pca = PcaProjection.fit(_sample_rows(descriptors, PCA_TRAIN_LIMIT), pca_dim, self.params["whiten"])
            descriptors = self._pca.apply(descriptors)
        if not self._faiss.is_trained:
            minimum = max(self.params.get("nlist", 1), 2 ** self.params.get("pq_bits", 0))
            if len(descriptors) < minimum:
                raise TscmError(f"index train: backend {self.backend!r} with {self.params} needs at least "
                                f"{minimum} training descriptors, got {len(descriptors)}")
            self._faiss.train(descriptors)
            self._coarse = None

    def add(self, descriptors, ids, paths: Sequence[str] | None = None, xy=None, times=None) -> None:
        """Append descriptors with their image ids (unique int64), and paths/coordinates/times if known.

        Either every add gives paths (or coordinates, or times), or none does.
        """
        descriptors = _as_descriptors(descriptors, self.dim, "index add")
        count = len(descriptors)
        if self.needs_training:
            raise TscmError(f"index add: backend {self.backend!r} with these parameters must be trained first "
                            "(call train() with database or training descriptors)")
        ids = np.asarray(ids)
        if ids.shape != (count,) or not np.issubdtype(ids.dtype, np.integer):
            raise TscmError(f"index add: expected {count} integer ids, got shape {ids.shape} dtype {ids.dtype}")
        ids = ids.astype(np.int64)
        all_ids = np.concatenate([self._ids, ids])
        if len(np.unique(all_ids)) != len(all_ids):
            raise TscmError("index add: image ids must be unique within the index (found a repeated id)")
        first = self.count == 0
        if xy is not None:
            xy = np.asarray(xy, dtype=np.float64)
            if xy.shape != (count, 2) or not np.isfinite(xy).all():
                raise TscmError(f"index add: expected finite coordinates of shape ({count}, 2), got {xy.shape}")
        if paths is not None:
            paths = [str(path) for path in paths]
            if len(paths) != count:
                raise TscmError(f"index add: expected {count} paths, got {len(paths)}")
        if not first and (xy is None) != (self._xy is None):
            raise TscmError("index add: coordinates must be given for every batch or for none")
        if not first and (paths is None) != (self._paths is None):
            raise TscmError("index add: paths must be given for every batch or for none")
        if times is not None:
            times = np.asarray(times, dtype=np.float64)
            if times.shape != (count,) or not np.isfinite(times).all():
                raise TscmError(f"index add: expected {count} finite times (frames or seconds), got shape {times.shape}")
        if not first and (times is None) != (self._times is None):
            raise TscmError("index add: times must be given for every batch or for none")
        searched = self._pca.apply(descriptors) if self._pca is not None else descriptors
        self._scan = self._refine = None  # views of faiss' storage, which the add may move
        self._faiss.add(searched)
        self._ids = all_ids
        if xy is not None:
            self._xy = xy if first else np.concatenate([self._xy, xy])
        if times is not None:
            self._times = times if first else np.concatenate([self._times, times])
        if paths is not None:
            self._paths = paths if first else self._paths + paths

    # ---- search -------------------------------------------------------------------------
    def search(self, queries, k: int) -> SearchResult:
        """The `k` nearest database entries for each query (N×dim, or one dim-vector).

        A query gets the same hits, distances and tie order alone as in any batch. Batches smaller
        than SINGLE_THREAD_BELOW run on one thread.
        """
        if self.count == 0:
            raise TscmError("index search: the index is empty; add database descriptors before querying")
        if not (isinstance(k, (int, np.integer)) and k >= 1):
            raise TscmError(f"index search: k must be a positive integer, got {k!r}")
        queries = _as_descriptors(queries, self.dim, "index search")
        distances, indices = self._search_rows(queries, int(k))
        missing = indices < 0
        rows = np.maximum(indices, 0)
        ids = self._ids[rows]
        if missing.any():
            ids[missing] = -1
        xy = None
        if self._xy is not None:
            xy = self._xy[rows]
            xy[missing] = np.nan
        paths = None
        if self._paths is not None:
            table = self._paths
            paths = [[table[i] if i >= 0 else None for i in row] for row in indices.tolist()]
        return SearchResult(distances, indices, ids, xy, paths)

    def _search_rows(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(Q×k float32 squared distances, Q×k int64 rows, -1 where missing) in the searched space."""
        import faiss

        threads = 1 if len(queries) < SINGLE_THREAD_BELOW else max(1, faiss.omp_get_max_threads())
        with limit_threads(faiss=1 if threads == 1 else None):
            if self._pca is not None:
                queries = self._pca.apply(queries)
            if self.backend in ("flat", "pca-flat") and self.params["storage"] == "fp32":
                return _exact_search(queries, self._scan_target(), k, threads)
            if self.backend == "ivfpq":
                return self._search_ivfpq(queries, k, threads)
            distances, indices = self._faiss.search(queries, k)
            return distances, indices.astype(np.int64, copy=False)

    def _scan_target(self) -> _ScanTarget:
        """The flat index' rows (a view of faiss' storage) with their norms; rebuilt after adds."""
        if self._scan is None or len(self._scan.vectors) != self.count:
            self._scan = _ScanTarget.of(_flat_vectors(self._faiss))
        return self._scan

    def _search_ivfpq(self, queries: np.ndarray, k: int, threads: int) -> tuple[np.ndarray, np.ndarray]:
        """Coarse lists by exact search over the centroids, faiss' PQ scan of them, exact re-ranking."""
        import faiss

        if self._coarse is None:
            ivf = faiss.extract_index_ivf(self._faiss)
            centroids = np.ascontiguousarray(ivf.quantizer.reconstruct_n(0, ivf.nlist), dtype=np.float32)
            self._coarse = (ivf, _ScanTarget.of(centroids))
        ivf, coarse = self._coarse
        # More lists than exist come back as -1, which faiss skips (as its own search does).
        coarse_d, coarse_i = _exact_search(queries, coarse, int(ivf.nprobe), threads)
        rerank = int(self.params["rerank"])
        wanted = k * rerank if rerank > 0 else k
        distances, labels = ivf.search_preassigned(queries, wanted, coarse_i, coarse_d)
        labels = labels.astype(np.int64, copy=False)
        if rerank == 0:
            return distances, labels
        rows, slots = np.nonzero(labels >= 0)
        cols = labels[rows, slots]
        if self._refine is None or len(self._refine) != self.count:
            self._refine = _flat_vectors(self._faiss.refine_index)
        exact = _pair_distances(queries, self._refine, rows, cols)
        return _top_k_of_pairs(len(queries), k, rows, cols, exact)

    # ---- files --------------------------------------------------------------------------
    def _arrays(self) -> dict[str, np.ndarray]:
        import faiss

        arrays = {"faiss_index": faiss.serialize_index(self._faiss), "ids": self._ids}
        if self._xy is not None:
            arrays["xy"] = self._xy
        if self._times is not None:
            arrays["times"] = self._times
        if self._paths is not None:
            encoded = [path.encode("utf-8") for path in self._paths]
            arrays["paths_utf8"] = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()
            arrays["paths_end"] = np.cumsum([len(item) for item in encoded], dtype=np.int64)
        if self._pca is not None:
            arrays["pca_mean"] = self._pca.mean
            arrays["pca_projection"] = self._pca.projection
        return arrays

    def save(self, path: str | Path) -> None:
        """Write the index to one safetensors file, atomically (a failed save keeps the old file)."""
        from safetensors.numpy import save_file

        arrays = {name: np.ascontiguousarray(array) for name, array in self._arrays().items()}
        meta = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "package_version": __version__,
            "backend": self.backend,
            "params": self.params,
            "dim": self.dim,
            "search_dim": self.search_dim,
            "count": self.count,
            "memory_bytes": sum(array.nbytes for array in arrays.values()),
            "model_fingerprint": self.model_fingerprint,
            "model_meta": self.model_meta,
            "pca_whiten": None if self._pca is None else self._pca.whiten,
            "thresholds": self.thresholds,
            "position_unit": self.position_unit,
            "sha256": {name: _sha256(array) for name, array in arrays.items()},
        }
        with atomic_path(path) as tmp:
            save_file(arrays, str(tmp), metadata={METADATA_KEY: json.dumps(meta)})

    @classmethod
    def load(cls, path: str | Path, expected_fingerprint: str | None = None) -> PlaceIndex:
        """Read an index; with `expected_fingerprint`, refuse one built from another model's descriptors."""
        import faiss

        meta = read_index_metadata(path)
        if expected_fingerprint is not None and meta["model_fingerprint"] != expected_fingerprint:
            raise TscmError(
                f"{path}: index was built from descriptors of model {meta['model_fingerprint']!r}, "
                f"but the model in use has fingerprint {expected_fingerprint!r}; rebuild the index with this model"
            )
        arrays = _read_arrays(path, meta)
        try:
            faiss_index = faiss.deserialize_index(arrays["faiss_index"])
        except RuntimeError as error:
            raise TscmError(f"{path}: the stored faiss index cannot be read ({error}); the file is corrupt") from None
        pca = None
        if "pca_mean" in arrays:
            pca = PcaProjection(arrays["pca_mean"], arrays["pca_projection"], bool(meta["pca_whiten"]))
        count = meta["count"]
        try:
            _check_params(meta["backend"], meta["dim"], meta["params"])
        except TscmError as error:
            raise TscmError(f"{path}: stored index parameters are invalid: {error}") from None
        index = cls(meta["backend"], meta["dim"], meta["params"], faiss_index, pca,
                    meta["model_fingerprint"], meta["model_meta"])
        if faiss_index.ntotal != count or len(arrays["ids"]) != count:
            raise TscmError(f"{path}: metadata says {count} entries, but the faiss index holds "
                            f"{faiss_index.ntotal} and ids {len(arrays['ids'])}; the file is inconsistent")
        index._ids = arrays["ids"].astype(np.int64)
        if "xy" in arrays:
            index._xy = arrays["xy"]
        if "times" in arrays:
            index._times = arrays["times"]
        thresholds = meta.get("thresholds", [])
        if not isinstance(thresholds, list) or not all(isinstance(t, dict) and _finite_number(t.get("distance"))
                                                       for t in thresholds):
            raise TscmError(f"{path}: field 'thresholds' must be a list of calibrations with a finite 'distance'")
        index.thresholds = thresholds
        index.position_unit = "frame" if meta.get("position_unit") == "frame" else "m"  # older files: metres
        if "paths_utf8" in arrays:
            blob = arrays["paths_utf8"].tobytes()
            ends = arrays["paths_end"].tolist()
            starts = [0] + ends[:-1]
            index._paths = [blob[a:b].decode("utf-8") for a, b in zip(starts, ends)]
        return index


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and bool(np.isfinite(value))


def read_index_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON metadata of an index file (backend, params, count, memory, fingerprint...) without its arrays."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise TscmError(f"{path}: no such index file")
    try:
        with safe_open(str(path), framework="np") as handle:
            header = handle.metadata() or {}
    except Exception as error:  # safetensors raises its own error types for damaged headers
        raise TscmError(f"{path}: not a readable index file ({error})") from None
    if METADATA_KEY not in header:
        raise TscmError(f"{path}: safetensors file without {METADATA_KEY!r} metadata; not a tscm place index")
    meta = parse_json(header[METADATA_KEY], f"{path}: index metadata")
    required = ("backend", "params", "dim", "count", "model_fingerprint", "model_meta", "sha256")
    check_header(meta, FORMAT_NAME, FORMAT_VERSION, str(path), required)
    for name in ("dim", "count"):
        value = meta[name]
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= (1 if name == "dim" else 0)):
            raise TscmError(f"{path}: metadata field {name!r} must be a non-negative integer, got {excerpt(value)}")
    if not isinstance(meta["params"], dict):
        raise TscmError(f"{path}: metadata field 'params' must be a JSON object, got {excerpt(meta['params'])}")
    if meta["backend"] not in BACKENDS:
        raise TscmError(f"{path}: unknown index backend {excerpt(meta['backend'])}")
    return meta


def _read_arrays(path: str | Path, meta: dict[str, Any]) -> dict[str, np.ndarray]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as handle:
            arrays = {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as error:  # truncated or damaged data sections
        raise TscmError(f"{path}: index arrays cannot be read ({error}); the file is corrupt") from None
    expected = meta["sha256"]
    if set(arrays) != set(expected):
        raise TscmError(f"{path}: index holds arrays {sorted(arrays)}, metadata lists {sorted(expected)}")
    for name, array in arrays.items():
        if _sha256(array) != expected[name]:
            raise TscmError(f"{path}: array {name!r} does not match its checksum; the file is corrupt")
    return arrays

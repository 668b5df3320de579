"""The place index's search back-ends: their parameters and checks, the faiss index each one builds,
and the back-end recommended for a database size.

- ``flat``: exact L2 search on the full descriptors (``storage="fp16"`` halves memory).
- ``pca-flat``: PCA (optionally whitened) to ``pca_dim`` dims, then exact search there.
- ``ivfpq``: inverted lists + product quantisation, optionally after PCA, with exact re-ranking
  of ``rerank × k`` candidates on the (reduced) vectors.
- ``hnsw``: HNSW graph on the (optionally PCA-reduced) vectors.

The exhaustive searches themselves (flat, IVF's coarse lists, re-ranking) are
`tscm.evaluation.search.exact_search` over the rows faiss stores (`flat_vectors`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tscm.errors import TscmError

BACKENDS = ("flat", "pca-flat", "ivfpq", "hnsw")

# The quantisers are trained on at most this many (reduced) vectors, a fixed-seed sample: 1024
# IVF lists get ~50 points each, and training time stays bounded on large maps.
QUANTIZER_TRAIN_LIMIT = 50_000
DEFAULT_PARAMS: dict[str, dict[str, Any]] = {
    "flat": {"storage": "fp32"},
    "pca-flat": {"pca_dim": 256, "whiten": False, "storage": "fp32"},
    "ivfpq": {"pca_dim": None, "whiten": False, "nlist": 1024, "pq_m": 64, "pq_bits": 8, "nprobe": 16, "rerank": 8},
    "hnsw": {"pca_dim": None, "whiten": False, "hnsw_m": 32, "ef_construction": 80, "ef_search": 128},
}
# Parameters that only affect search, so they may change after the index is built.
SEARCH_PARAMS = {"ivfpq": ("nprobe", "rerank"), "hnsw": ("ef_search",)}
STORAGES = ("fp32", "fp16")


def recommended_config(num_db: int, dim: int) -> tuple[str, dict[str, Any]]:
    """Back-end and parameters for a database of `num_db` descriptors of `dim` dims.

    Chosen from the matching benchmark (`tscm bench`, synthetic 2048-d descriptors): exact search
    while the database is at most 8 MB; PCA to 256 dims + exact search up to 25k images (Recall@1
    as exact, cost growing linearly with size); beyond that an HNSW graph on the PCA-reduced vectors.
    """
    if num_db < 1 or dim < 1:
        raise TscmError(f"recommended_config: need a positive database size and dimension, got {num_db}×{dim}")
    if num_db * dim * 4 <= 8 * 2**20:
        return "flat", {}
    reduce = {"pca_dim": 256} if dim > 256 else {}
    if num_db <= 25_000:
        return ("pca-flat", reduce) if reduce else ("flat", {})
    return "hnsw", {**reduce, "hnsw_m": 32, "ef_construction": 80, "ef_search": 128}


def check_params(backend: str, dim: int, params: dict[str, Any]) -> dict[str, Any]:
    """Defaults merged with `params`, every value checked; raises TscmError naming the bad one."""
    if backend not in DEFAULT_PARAMS:
        raise TscmError(f"index backend {backend!r} is unknown; expected one of {', '.join(BACKENDS)}")
    unknown = sorted(set(params) - set(DEFAULT_PARAMS[backend]))
    if unknown:
        raise TscmError(
            f"index backend {backend!r} has no parameter(s) {', '.join(unknown)}; "
            f"it takes {', '.join(DEFAULT_PARAMS[backend])}"
        )
    merged = {**DEFAULT_PARAMS[backend], **params}
    if dim < 1:
        raise TscmError(f"index dim must be a positive integer, got {dim}")
    pca_dim = merged.get("pca_dim")
    if backend == "pca-flat" and pca_dim is None:
        raise TscmError("index backend 'pca-flat' needs pca_dim (the reduced dimension)")
    if pca_dim is not None and not (isinstance(pca_dim, int) and 1 <= pca_dim <= dim):
        raise TscmError(f"index pca_dim must be an integer in 1..{dim} (the descriptor dim), got {pca_dim!r}")
    if "storage" in merged and merged["storage"] not in STORAGES:
        raise TscmError(f"index storage must be one of {', '.join(STORAGES)}, got {merged['storage']!r}")
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


def build_faiss_index(backend: str, search_dim: int, params: dict[str, Any]):
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


def apply_search_params(backend: str, index, params: dict[str, Any]) -> None:
    import faiss

    if backend == "hnsw":
        index.hnsw.efSearch = params["ef_search"]
    elif backend == "ivfpq":
        if params["rerank"] > 0:
            index.k_factor = float(params["rerank"])
            faiss.extract_index_ivf(index.base_index).nprobe = params["nprobe"]
        else:
            faiss.extract_index_ivf(index).nprobe = params["nprobe"]


def flat_vectors(flat_index) -> np.ndarray:
    """The N×d float32 rows of a faiss IndexFlat, without a copy."""
    import faiss

    flat = faiss.downcast_index(flat_index)
    count, dim = int(flat.ntotal), int(flat.d)
    if count == 0:
        return np.zeros((0, dim), dtype=np.float32)
    return faiss.rev_swig_ptr(flat.get_xb(), count * dim).reshape(count, dim)

"""PCA for the place index: fitted on database (or training) descriptors, applied to every query.

Training uses at most PCA_TRAIN_LIMIT vectors (a fixed-seed sample, `sample_rows`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tscm.errors import TscmError
from tscm.threads import blas_threads

# PCA is fitted on at most this many vectors (a fixed-seed sample): ten times a 2048-d
# descriptor, plenty for the leading axes, and training time stays bounded on large maps.
PCA_TRAIN_LIMIT = 20_000


def sample_rows(array: np.ndarray, limit: int) -> np.ndarray:
    """At most `limit` rows, a fixed-seed sample in their original order."""
    if len(array) <= limit:
        return array
    keep = np.random.default_rng(0).choice(len(array), limit, replace=False)
    return array[np.sort(keep)]


def array_sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


@dataclass
class PcaProjection:
    """Centre, project onto the leading principal axes, optionally whiten (then re-normalise).

    `apply` projects each query with its own matrix-vector product (numpy's BLAS on one thread,
    the matrix pre-transposed, the centring folded into an offset), so a query's projection is
    bitwise the same alone or in any batch: a batched matrix product rounds differently per row
    shape, which would let a lone query's distances differ from the same query's in a batch.
    One thread because BLAS threads that wait for a core cost more than the product itself.
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
            self._sha256 = array_sha256(self.projection)
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
        with blas_threads(1):
            # (d×D) @ (N×D×1): numpy runs one gemv per query, the same call whatever N is.
            reduced = np.matmul(self._transposed, descriptors[:, :, None])[:, :, 0]
        reduced += self._offset
        if self.whiten:
            norms = np.sqrt(np.einsum("ij,ij->i", reduced, reduced))
            reduced /= np.maximum(norms, 1e-12)[:, None]
        return reduced

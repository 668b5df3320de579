"""PlaceSet: the one description of a place-recognition data set that every reader returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from tscm.errors import TscmError


def _as_xy(values, what: str) -> np.ndarray:
    xy = np.asarray(values, dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise TscmError(f"{what}: expected an N×2 array of planar coordinates in metres, got shape {xy.shape}")
    if not np.isfinite(xy).all():
        raise TscmError(f"{what}: coordinates must be finite numbers")
    return xy


def _as_headings(values, count: int, what: str) -> np.ndarray | None:
    if values is None:
        return None
    headings = np.asarray(values, dtype=np.float64)
    if headings.shape != (count,):
        raise TscmError(f"{what}: expected {count} headings in degrees, got shape {headings.shape}")
    return headings


@dataclass
class PlaceSet:
    """Database and query images with planar coordinates (metres, UTM-like) for one split.

    Paths are absolute. Headings (degrees, optional) are kept when the format carries them;
    they let training pick heading-aware positives. Images are never opened here.
    """

    name: str
    split: str
    db_paths: list[Path]
    query_paths: list[Path]
    db_xy: np.ndarray
    query_xy: np.ndarray
    db_heading: np.ndarray | None = None
    query_heading: np.ndarray | None = None
    _db_tree: cKDTree | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.db_paths = [Path(p) for p in self.db_paths]
        self.query_paths = [Path(p) for p in self.query_paths]
        self.db_xy = _as_xy(self.db_xy, f"{self.name}/{self.split} database coordinates")
        self.query_xy = _as_xy(self.query_xy, f"{self.name}/{self.split} query coordinates")
        if len(self.db_paths) != len(self.db_xy):
            raise TscmError(
                f"{self.name}/{self.split}: {len(self.db_paths)} database images but {len(self.db_xy)} coordinates"
            )
        if len(self.query_paths) != len(self.query_xy):
            raise TscmError(
                f"{self.name}/{self.split}: {len(self.query_paths)} query images but {len(self.query_xy)} coordinates"
            )
        self.db_heading = _as_headings(self.db_heading, self.num_db, f"{self.name}/{self.split} database headings")
        self.query_heading = _as_headings(
            self.query_heading, self.num_queries, f"{self.name}/{self.split} query headings"
        )

    @property
    def num_db(self) -> int:
        return len(self.db_paths)

    @property
    def num_queries(self) -> int:
        return len(self.query_paths)

    @property
    def db_tree(self) -> cKDTree:
        if self._db_tree is None:
            self._db_tree = cKDTree(self.db_xy)
        return self._db_tree

    def positives(self, radius_m: float) -> list[np.ndarray]:
        """For each query, the sorted indices of database images within `radius_m` metres."""
        if radius_m <= 0:
            raise TscmError(f"radius must be positive metres, got {radius_m}")
        found = self.db_tree.query_ball_point(self.query_xy, r=radius_m)
        return [np.asarray(sorted(hits), dtype=np.int64) for hits in found]

    def summary(self) -> str:
        return f"{self.name}/{self.split}: {self.num_db} database images, {self.num_queries} queries"

"""PlaceSet: the one description of a place-recognition data set that every reader returns."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy.spatial import cKDTree

from tscm.errors import TscmError

# How a data set says which database images show a query's place.
UNITS = ("m", "frame", "explicit")
UNIT_WORDS = {"m": "metres", "frame": "frames", "explicit": "listed matches"}
# The radius a table reports by default: 25 m (community standard), ±1 frame (Nordland-style routes),
# none for listed matches.
DEFAULT_RADIUS = {"m": 25.0, "frame": 1.0, "explicit": None}
# Beyond this a coordinate is no longer a position on Earth (UTM northings stay below 1e7 m); the
# KD-tree's squared distances would overflow long before 1e308.
MAX_COORDINATE = 1e9


def _as_positions(values, what: str, unit: str) -> np.ndarray:
    if unit == "frame":
        frames = np.asarray(values, dtype=np.float64).reshape(-1)
        if not np.isfinite(frames).all() or (frames != np.round(frames)).any():
            raise TscmError(f"{what}: frame numbers must be integers")
        values = np.stack([frames, np.zeros_like(frames)], axis=1)
    xy = np.asarray(values, dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise TscmError(f"{what}: expected an N×2 array of planar coordinates in metres, got shape {xy.shape}")
    if not np.isfinite(xy).all():
        raise TscmError(f"{what}: coordinates must be finite numbers")
    if xy.size and np.abs(xy).max() > MAX_COORDINATE:
        raise TscmError(f"{what}: a coordinate of {np.abs(xy).max():g} {UNIT_WORDS[unit]} is out of range "
                        f"(expected |value| ≤ {MAX_COORDINATE:g})")
    return xy


def _as_optional(values, count: int, what: str, unit: str) -> np.ndarray | None:
    if values is None:
        return None
    array = np.asarray(values, dtype=np.float64)
    if array.shape != (count,):
        raise TscmError(f"{what}: expected {count} values in {unit}, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise TscmError(f"{what}: values must be finite {unit}")
    return array


def _as_ground_truth(values: Sequence, num_queries: int, num_db: int, what: str) -> list[np.ndarray]:
    if len(values) != num_queries:
        raise TscmError(f"{what}: {len(values)} lists of true matches for {num_queries} queries")
    lists = []
    for query, matches in enumerate(values):
        array = np.asarray(matches, dtype=np.float64).reshape(-1)
        if array.size and ((array != np.round(array)).any() or array.min() < 0 or array.max() >= num_db):
            raise TscmError(f"{what}: query {query} lists matches outside the database indices 0..{num_db - 1}")
        lists.append(np.unique(array.astype(np.int64)))
    return lists


@dataclass
class PlaceSet:
    """Database and query images of one split, and what says which database images show a query's place.

    `unit` is how places are compared:
    - "m": `db_xy` / `query_xy` are planar coordinates in metres (UTM-like); a database image within
      the radius (metres) is a true match;
    - "frame": positions along an ordered traversal, given as frame numbers (stored as (frame, 0) rows,
      so every distance is in frames); a database frame within ±radius frames is a true match;
    - "explicit": `ground_truth[q]` lists query q's true matches; there is no radius and positions are None.

    Paths are absolute. Headings (degrees) and times (seconds, e.g. from timestamps) are optional.
    Images are never opened here.
    """

    name: str
    split: str
    db_paths: list[Path]
    query_paths: list[Path]
    db_xy: np.ndarray | None
    query_xy: np.ndarray | None
    db_heading: np.ndarray | None = None
    query_heading: np.ndarray | None = None
    unit: str = "m"
    ground_truth: list[np.ndarray] | None = None
    db_time: np.ndarray | None = None
    query_time: np.ndarray | None = None
    _db_tree: cKDTree | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        where = f"{self.name}/{self.split}"
        if self.unit not in UNITS:
            raise TscmError(f"{where}: unit must be one of {', '.join(UNITS)}, got {self.unit!r}")
        self.db_paths = [Path(p) for p in self.db_paths]
        self.query_paths = [Path(p) for p in self.query_paths]
        if self.unit == "explicit":
            if self.ground_truth is None:
                raise TscmError(f"{where}: unit 'explicit' needs ground_truth (the true matches of every query)")
            if self.db_xy is not None or self.query_xy is not None:
                raise TscmError(f"{where}: a set with explicit ground truth has no positions")
            self.ground_truth = _as_ground_truth(self.ground_truth, self.num_queries, self.num_db, f"{where} ground truth")
        else:
            if self.ground_truth is not None:
                raise TscmError(f"{where}: ground_truth is only for unit 'explicit'; unit {self.unit!r} uses positions")
            self.db_xy = _as_positions(self.db_xy, f"{where} database positions", self.unit)
            self.query_xy = _as_positions(self.query_xy, f"{where} query positions", self.unit)
            for role, paths, xy in (("database", self.db_paths, self.db_xy), ("query", self.query_paths, self.query_xy)):
                if len(paths) != len(xy):
                    raise TscmError(f"{where}: {len(paths)} {role} images but {len(xy)} positions")
        self.db_heading = _as_optional(self.db_heading, self.num_db, f"{where} database headings", "degrees")
        self.query_heading = _as_optional(self.query_heading, self.num_queries, f"{where} query headings", "degrees")
        self.db_time = _as_optional(self.db_time, self.num_db, f"{where} database times", "seconds")
        self.query_time = _as_optional(self.query_time, self.num_queries, f"{where} query times", "seconds")

    @property
    def num_db(self) -> int:
        return len(self.db_paths)

    @property
    def num_queries(self) -> int:
        return len(self.query_paths)

    @property
    def has_positions(self) -> bool:
        return self.unit != "explicit"

    @property
    def db_tree(self) -> cKDTree:
        if not self.has_positions:
            raise TscmError(f"{self.name}/{self.split}: explicit ground truth has no positions to search")
        if self._db_tree is None:
            self._db_tree = cKDTree(self.db_xy)
        return self._db_tree

    def check_radius(self, radius: float | None, what: str = "radius") -> float | None:
        """`radius` if it is meaningful for this set's unit (metres > 0, frames ≥ 0, explicit: ignored)."""
        if self.unit == "explicit":
            return None
        unit = UNIT_WORDS[self.unit]
        try:
            value = float(radius)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise TscmError(f"{what}: expected a number of {unit}, got {radius!r}") from None
        if not math.isfinite(value):
            raise TscmError(f"{what}: expected a finite number of {unit}, got {radius!r}")
        if self.unit == "m" and value <= 0:
            raise TscmError(f"{what}: expected a positive number of metres, got {radius!r}")
        if self.unit == "frame" and (value < 0 or value != round(value)):
            raise TscmError(f"{what}: expected a whole number of frames ≥ 0 (±radius), got {radius!r}")
        return value

    def positives(self, radius: float | None = None) -> list[np.ndarray]:
        """For each query, the sorted indices of its true database matches: those within `radius`
        (metres, or ±frames), or the listed ones for explicit ground truth (`radius` is then ignored)."""
        if self.unit == "explicit":
            assert self.ground_truth is not None
            return [matches.copy() for matches in self.ground_truth]
        value = self.check_radius(radius)
        found = self.db_tree.query_ball_point(self.query_xy, r=value)
        return [np.asarray(sorted(hits), dtype=np.int64) for hits in found]

    def radius_text(self, radius: float | None) -> str:
        """How a radius reads for this set: "25 m", "±1 frame", or "listed matches"."""
        return radius_text(radius, self.unit)

    def summary(self) -> str:
        return f"{self.name}/{self.split}: {self.num_db} database images, {self.num_queries} queries"


def default_radius(unit: str) -> float | None:
    return DEFAULT_RADIUS[unit]


def radius_text(radius: float | None, unit: str) -> str:
    """"25 m", "±1 frame" / "±3 frames", or "listed matches" (explicit ground truth)."""
    if unit == "explicit" or radius is None:
        return "listed matches"
    if unit == "frame":
        count = int(round(float(radius)))
        return f"±{count} frame" + ("" if count == 1 else "s")
    return f"{float(radius):g} m"

"""Sequence matching for ordered traversals (SeqSLAM-style): recognise a place by its last L frames.

Database frames and queries are both in route order, and D is the Q×N single-frame distance
matrix (squared L2, or any score where smaller is better). The sequence score of query q against
database frame j is the best, over relative speeds v (database frames per query frame), of the
mean single-frame distance along the straight path that ends at (q, j):

    score[q, j] = min over v of  mean over t = 0..L-1 of  D[q − t, j − round(v·t)]

with round(v·t) = ⌊v·t + ½⌋ (halves round up). Edges:

- causal: only queries ≤ q are used; the first L − 1 queries use the t that exist (t ≤ q), so
  their scores rest on fewer frames and are as ambiguous as single frames (on the toy route of
  the tests, query 0 is the most confident false positive);
- a path point whose database index falls before the start of the database counts as the mean
  distance of its query row (what a random database frame would score): neither clamped
  (which rewards paths that pile up on frame 0) nor left out (which lets a path with one or two
  points inside the database beat full-length ones, so queries were drawn to the database's
  first frames). Every score is finite.

Optionally each D entry is first normalised by the mean and standard deviation of its row over a
window of database neighbours (SeqSLAM's local contrast enhancement). It is off by default: on
the ambiguous toy route of the tests (L = 5) it costs Recall@1 (95.0 % off, 87.9 % with 5
neighbours a side, 91.0 % with 10); it pays where stretches of the database are offset, as
under appearance change (same route with a per-segment offset added to D, L = 5, mean of 5
seeds: 51.5 % off, 85.8 % on).

Rank sequence scores like distances: `sequence_ranking` gives a Ranking (ties to the lower index)
whose top1_distance is the sequence score, so Recall@N (first_hit_rank) and precision-recall
(pr_from_ranking) apply unchanged.
"""

from __future__ import annotations

from numbers import Integral
from typing import Sequence

import numpy as np

from tscm.data.places import PlaceSet
from tscm.errors import TscmError
from tscm.evaluation.ranking import Ranking, rank_matrix

# Squared L2 of two opposite unit descriptors, the farthest two can be (a PCA projection only shortens
# distances): what a map entry counts as for a frame from before it was added (`SequenceMatcher`, `unseen`).
UNSEEN_SQUARED_DISTANCE = 4.0
# Geometric steps from 0.8 to 1.25 (= 1/0.8): slowing down and speeding up are treated alike, 1.0 included.
DEFAULT_SPEEDS = tuple(float(v) for v in 1.25 ** np.linspace(-1.0, 1.0, 5))  # 0.8, 0.894, 1.0, 1.118, 1.25


def _check_length(length) -> int:
    if not (isinstance(length, Integral) and length >= 1):
        raise TscmError(f"sequence length: expected a positive integer, got {length!r}")
    return int(length)


def _path_offsets(speeds: Sequence[float], length: int) -> np.ndarray:
    """S×L database offsets round(v·t) ≥ 0 of each speed's path, t = 0..L-1."""
    try:
        values = np.asarray(speeds, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        values = np.empty(0)
    if values.size == 0 or not np.isfinite(values).all() or (values <= 0).any():
        raise TscmError(f"speeds: expected positive finite database frames per query frame, got {speeds!r}")
    return np.floor(np.unique(values)[:, None] * np.arange(length) + 0.5).astype(np.int64)


def _check_contrast_window(window) -> int | None:
    if window is not None and not (isinstance(window, Integral) and window >= 1):
        raise TscmError(f"contrast_window: expected None (off) or a positive number of neighbours, got {window!r}")
    return window


def local_contrast(distances: np.ndarray, window: int) -> np.ndarray:
    """Each entry minus the mean, over the std, of its row's entries j − window..j + window (clipped at the ends)."""
    d = np.asarray(distances, dtype=np.float64)
    num_db = d.shape[1]
    # Window sums from running sums, so the cost does not grow with the window.
    zero = np.zeros((len(d), 1))
    running = np.concatenate([zero, np.cumsum(d, axis=1)], axis=1)
    running_sq = np.concatenate([zero, np.cumsum(d * d, axis=1)], axis=1)
    columns = np.arange(num_db)
    lo, hi = np.maximum(columns - window, 0), np.minimum(columns + window + 1, num_db)
    size = hi - lo
    mean = (running[:, hi] - running[:, lo]) / size
    var = (running_sq[:, hi] - running_sq[:, lo]) / size - mean * mean
    # A flat window has no contrast: keep its entries at 0 instead of dividing rounding noise by ~0.
    std = np.maximum(np.sqrt(np.maximum(var, 0.0)), 1e-6 * np.abs(mean) + np.finfo(np.float64).tiny)
    return ((d - mean) / std).astype(np.float32)


def _distance_matrix(distances) -> np.ndarray:
    d = np.asarray(distances)
    if d.ndim != 2 or d.dtype.kind not in "fiu" or d.shape[1] == 0:
        raise TscmError(f"distances: expected a numeric Q×N matrix with N ≥ 1, got {d.dtype} with shape {d.shape}")
    d = np.ascontiguousarray(d, dtype=np.float32)
    if not np.isfinite(d).all():
        raise TscmError("distances: contains NaN or infinite values")
    return d


def sequence_scores(distances, length: int, speeds: Sequence[float] = DEFAULT_SPEEDS, *,
                    contrast_window: int | None = None) -> np.ndarray:
    """Q×N float32 sequence scores of every query against every database frame (module docstring)."""
    length = _check_length(length)
    d = _distance_matrix(distances)
    if _check_contrast_window(contrast_window) is not None:
        d = local_contrast(d, contrast_window)
    num_q, num_db = d.shape
    # A path never reaches further back than the first query, so a longer length scores the same (and a
    # huge one would allocate offsets that go unused, or overflow).
    length = min(length, max(num_q, 1))
    offsets = _path_offsets(speeds, length)
    row_means = d.mean(axis=1, keepdims=True)  # the score of a path point outside the database
    # How many frames each query's paths have: q + 1 for the first queries, then L.
    frames = np.minimum(np.arange(num_q) + 1, length).astype(np.float32)[:, None]
    best = np.full((num_q, num_db), np.inf, dtype=np.float32)
    total = np.empty_like(best)
    for speed_offsets in offsets:
        total.fill(0.0)
        for t in range(min(length, num_q)):
            # Row q, column j takes D[q − t, j − offset]: D shifted down t rows and right `offset` columns.
            start = min(speed_offsets[t], num_db)
            total[t:, start:] += d[: num_q - t, : num_db - start]
            total[t:, :start] += row_means[: num_q - t]
        total /= frames
        np.minimum(best, total, out=best)
    return best


class SequenceMatcher:
    """Online sequence matching: push each new query's distance row, get that query's sequence-score row.

    Keeps only the last `length` rows, in a ring buffer that grows with the rows pushed up to `length` rows
    (a length longer than the stream costs the stream's rows, not the length's). push() returns the same
    row as sequence_scores does for that query over all the rows pushed so far.

    With `unseen` (a distance), the map may grow between pushes, as in loop closure within one traversal:
    a row may be longer than the rows before it, and an earlier row counts as `unseen` at the entries
    added after it (an entry cannot match a frame from before it existed). A path point before the
    first entry counts as its row's mean over the entries of that row (`unseen` for an empty row).
    """

    FIRST_ROWS = 64  # the buffer's first size; it doubles as rows arrive, up to `length`

    def __init__(self, length: int, num_db: int, speeds: Sequence[float] = DEFAULT_SPEEDS, *,
                 contrast_window: int | None = None, unseen: float | None = None):
        self.length = _check_length(length)
        if not (isinstance(num_db, Integral) and num_db >= (0 if unseen is not None else 1)):
            raise TscmError(f"num_db: expected a positive number of database frames, got {num_db!r}")
        if unseen is not None and not np.isfinite(unseen):
            raise TscmError(f"unseen: expected a finite distance, got {unseen!r}")
        if unseen is not None and contrast_window is not None:
            raise TscmError("contrast_window needs a map of fixed size; it cannot be used with a growing map (unseen)")
        self.num_db = int(num_db)
        self.unseen = unseen
        self.contrast_window = _check_contrast_window(contrast_window)
        self._speeds = speeds
        self._history = np.zeros((0, self.num_db), dtype=np.float32)
        self._history_means = np.zeros(0, dtype=np.float32)
        self._resize(min(self.length, self.FIRST_ROWS), self.num_db)
        self.num_pushed = 0

    def _resize(self, rows: int, columns: int) -> None:
        """Room for `rows` rows of `columns` entries, keeping those pushed (rows only grow before the buffer
        first wraps around; new columns of a growing map start as unseen)."""
        history = np.full((rows, columns), 0.0 if self.unseen is None else self.unseen, dtype=np.float32)
        means = np.zeros(rows, dtype=np.float32)
        kept, width = self._history.shape
        history[:kept, :width], means[:kept] = self._history, self._history_means
        self._history, self._history_means = history, means
        self._offsets = _path_offsets(self._speeds, rows)
        self._total = np.empty(columns, dtype=np.float32)
        self._best = np.empty(columns, dtype=np.float32)

    def reset(self) -> None:
        """Forget the rows pushed so far (a new traversal starts)."""
        self.num_pushed = 0

    def _check_row(self, distance_row) -> np.ndarray:
        row = np.asarray(distance_row)
        growing = self.unseen is not None
        if (row.ndim != 1 or (len(row) < self.num_db if growing else len(row) != self.num_db)
                or row.dtype.kind not in "fiu"):
            wanted = f"at least {self.num_db}" if growing else f"{self.num_db}"
            raise TscmError(f"distance row: expected {wanted} numeric distances, got {row.dtype} with shape {row.shape}")
        if not np.isfinite(row).all():
            raise TscmError("distance row: contains NaN or infinite values")
        return row

    def push(self, distance_row) -> np.ndarray:
        """The newest query's N sequence scores, given its N single-frame distances (N: the map's size now)."""
        row = self._check_row(distance_row)
        n = self.num_db = len(row)
        capacity, width = self._history.shape
        more_rows, more_columns = self.num_pushed == capacity < self.length, n > width
        if more_rows or more_columns:
            self._resize(min(self.length, 2 * capacity) if more_rows else capacity,
                         max(n, 2 * width) if more_columns else width)
            capacity = len(self._history)
        newest = self.num_pushed % capacity
        if self.contrast_window is None:
            self._history[newest, :n] = row
        else:
            self._history[newest] = local_contrast(row[None], self.contrast_window)[0]
        if self.unseen is not None:
            self._history[newest, n:] = self.unseen  # the slot's earlier row may have been longer
        self._history_means[newest] = self._history[newest, :n].mean() if n else self.unseen
        self.num_pushed += 1
        used = min(self.num_pushed, self.length)
        total, best = self._total[:n], self._best[:n]
        best.fill(np.inf)
        for speed_offsets in self._offsets:
            total.fill(0.0)
            for t in range(used):
                start = min(speed_offsets[t], n)
                slot = (newest - t) % capacity
                total[start:] += self._history[slot, : n - start]
                total[:start] += self._history_means[slot]
            total /= used
            np.minimum(best, total, out=best)
        return best.copy()


def sequence_ranking(distances, length: int, speeds: Sequence[float] = DEFAULT_SPEEDS, k: int = 20, *,
                     contrast_window: int | None = None) -> Ranking:
    """The k best database frames of each query by sequence score; top1_distance is the sequence score."""
    return rank_matrix(sequence_scores(distances, length, speeds, contrast_window=contrast_window), k)


def traversal_order(placeset: PlaceSet) -> tuple[np.ndarray, np.ndarray]:
    """(database order, query order) along the route: by frame, else by time; TscmError when neither is known."""
    if placeset.unit == "frame":
        return np.argsort(placeset.db_xy[:, 0], kind="stable"), np.argsort(placeset.query_xy[:, 0], kind="stable")
    if placeset.db_time is not None and placeset.query_time is not None:
        return np.argsort(placeset.db_time, kind="stable"), np.argsort(placeset.query_time, kind="stable")
    raise TscmError(f"{placeset.name}/{placeset.split}: sequence matching needs ordered traversals: frame numbers "
                    "(a 'frame' column) or timestamps for the database and the queries")

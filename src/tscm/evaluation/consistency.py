"""Temporal consistency for loop closure, as SLAM front-ends check it: a match is accepted only when the
last k frames all passed the threshold and their matches move through the map the way a vehicle does.

Frame by frame, each frame brings whether its score passed the threshold and the route position of
its top-1 match (a frame number, or the map entry's place in the order it was added). The newest
frame is accepted when it and the k − 1 frames before it all passed and every step between
consecutive matched positions lies in [0, max_step] (moving forward, or standing still), or every
one lies in [−max_step, 0] (driving the route backwards). k = 1 accepts whatever passed.
A frame that does not pass breaks the run: the next k − 1 frames cannot be accepted.
"""

from __future__ import annotations

from collections import deque
from numbers import Integral, Real
from typing import Sequence

import numpy as np

from tscm.errors import TscmError

DEFAULT_MAX_STEP = 3.0  # route positions per frame: a speed of up to ~2.4× the map's, with a frame of slack


def check_consistency(frames, max_step) -> tuple[int, float]:
    if not (isinstance(frames, Integral) and frames >= 1):
        raise TscmError(f"consistency frames: expected a positive number of consecutive frames, got {frames!r}")
    if not (isinstance(max_step, Real) and np.isfinite(max_step) and max_step >= 0):
        raise TscmError(f"consistency max_step: expected a non-negative number of route positions, got {max_step!r}")
    return int(frames), float(max_step)


class ConsistencyFilter:
    """Push each frame's (passed, matched position); get whether that frame's match is accepted (module doc)."""

    def __init__(self, frames: int, max_step: float = DEFAULT_MAX_STEP):
        self.frames, self.max_step = check_consistency(frames, max_step)
        self._positions: deque[float] = deque(maxlen=self.frames)

    def reset(self) -> None:
        """Forget the frames seen (a new traversal starts)."""
        self._positions.clear()

    def push(self, passed: bool, position: float) -> bool:
        if not passed:
            self._positions.clear()
            return False
        self._positions.append(float(position))
        if len(self._positions) < self.frames:
            return False
        steps = np.diff(np.asarray(self._positions))
        forward = bool(np.all((steps >= 0) & (steps <= self.max_step)))
        backward = bool(np.all((steps <= 0) & (steps >= -self.max_step)))
        return forward or backward


def consistent_acceptance(passed: Sequence[bool], positions: Sequence[float], frames: int,
                          max_step: float = DEFAULT_MAX_STEP) -> np.ndarray:
    """ConsistencyFilter over a whole traversal (frames in route order): one bool per frame."""
    passed = np.asarray(passed, dtype=bool)
    positions = np.asarray(positions, dtype=np.float64)
    if passed.ndim != 1 or positions.shape != passed.shape:
        raise TscmError(f"consistency: expected one position per frame, got {positions.shape} for {passed.shape} frames")
    stream = ConsistencyFilter(frames, max_step)
    return np.array([stream.push(bool(p), float(x)) for p, x in zip(passed, positions)], dtype=bool)

"""Temporal consistency: k consecutive passing frames whose matches progress through the map."""

from __future__ import annotations

import numpy as np
import pytest

from tscm.errors import TscmError
from tscm.evaluation.consistency import ConsistencyFilter, consistent_acceptance


def plain_consistency(passed, positions, frames, max_step):
    accepted = []
    for i in range(len(passed)):
        window = range(i - frames + 1, i + 1)
        if window.start < 0 or not all(passed[j] for j in window):
            accepted.append(False)
            continue
        steps = [positions[j] - positions[j - 1] for j in window][1:]
        accepted.append(all(0 <= s <= max_step for s in steps) or all(-max_step <= s <= 0 for s in steps))
    return accepted


def test_filter_matches_a_plain_loop_over_random_traversals():
    rng = np.random.default_rng(0)
    for frames in (1, 2, 4):
        passed = rng.random(300) < 0.8
        positions = np.cumsum(rng.choice([-4, -1, 0, 1, 2, 5], size=300))
        assert consistent_acceptance(passed, positions, frames, 3.0).tolist() == plain_consistency(
            passed.tolist(), positions.tolist(), frames, 3.0)


def test_a_lone_jump_is_held_back_and_a_steady_run_accepted():
    stream = ConsistencyFilter(3, max_step=2)
    decisions = [stream.push(True, p) for p in (10, 11, 12, 50, 13, 14, 15)]
    assert decisions == [False, False, True, False, False, False, True]
    stream.reset()
    assert [stream.push(True, p) for p in (30, 29, 27)] == [False, False, True]  # backwards is consistent too
    assert stream.push(False, 26) is False and stream.push(True, 25) is False  # a miss breaks the run


def test_settings_are_checked():
    with pytest.raises(TscmError, match="consecutive"):
        ConsistencyFilter(0)
    with pytest.raises(TscmError, match="max_step"):
        ConsistencyFilter(2, max_step=-1)

"""Functions of the step number that a resumed run draws again: which train images a step teaches, and the
weight of the distillation terms."""

from __future__ import annotations

import numpy as np


def teaching_keys(seed: int, count: int, per_step: int, step: int) -> np.ndarray:
    """Keys `per_step` teaching images of `step` out of `count` train images: consecutive slices of a seeded
    permutation, a new one each pass, so every image is taught once per pass. A function of the step alone,
    so a resumed run draws the same images."""
    if per_step == 0 or count == 0:
        return np.zeros(0, dtype=np.int64)
    first, last = step * per_step, (step + 1) * per_step
    keys = []
    for turn in range(first // count, (last - 1) // count + 1):
        order = np.random.default_rng([seed, 0x7EAC, turn]).permutation(count)
        keys.append(order[max(first - turn * count, 0) : min(last - turn * count, count)])
    return np.concatenate(keys).astype(np.int64)


def distillation_factor(step: int, warmup_steps: int, final_weight: float, planned_steps: int) -> float:
    """The factor on the distillation terms at `step` (0-based): a linear rise over `warmup_steps`, then a
    linear move from 1 to `final_weight` at the last planned step (constant 1 with the defaults)."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, planned_steps - warmup_steps))
    return 1.0 + (final_weight - 1.0) * progress

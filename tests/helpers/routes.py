"""Frame-ordered toy routes with known ground truth for the loop-closure tests."""

from __future__ import annotations

import numpy as np

from tscm.data.places import PlaceSet


def aliased_route(num: int = 120, seed: int = 0, dim: int = 8, split: str = "val") -> tuple[PlaceSet, np.ndarray, np.ndarray]:
    """Database frame i and query frame i show the same place; places come in look-alike pairs (frame i
    and i + num/2), half of them made distinct, with query noise that varies, so a raw distance
    cannot tell a right match from a look-alike but a distinctiveness ratio can."""
    rng = np.random.default_rng(seed)
    half = rng.normal(size=(num // 2, dim))
    db = np.concatenate([half, half + 0.05 * rng.normal(size=half.shape)]).astype(np.float32)
    noise = rng.uniform(0.05, 0.6, size=(num, 1))
    queries = (db + noise * rng.normal(size=db.shape)).astype(np.float32)
    distinct = rng.random(num) < 0.5
    extra = rng.normal(size=(num, dim)).astype(np.float32)
    db[distinct] += extra[distinct]
    queries[distinct] += extra[distinct]
    frames = np.arange(num, dtype=np.float64)
    placeset = PlaceSet("route", split, [f"/db/{i}.png" for i in range(num)], [f"/q/{i}.png" for i in range(num)],
                        frames, frames, unit="frame")
    return placeset, db, queries

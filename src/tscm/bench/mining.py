"""Benchmark: one mining refresh, batched (tscm.data.mining) against a per-query numpy loop, side by side.

Run `tscm bench mining` (Pittsburgh30k train size by default: 10,000 database images,
7,416 queries, 2048-d descriptors). Data are synthetic but structured: places along a street grid,
12 headings per place, descriptors a smooth random function of position and heading plus noise.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np

from tscm.config.sections import MiningSettings
from tscm.data.mining import DescriptorCache, MinedTuple, Miner
from tscm.data.places import PlaceSet

HEADINGS_PER_PLACE = 12
T = TypeVar("T")


def structured_places(num_db: int, num_queries: int, dim: int, seed: int = 0, dtype: str = "float32") -> tuple[PlaceSet, DescriptorCache]:
    """A street-grid place set (10 m between places, 100 m blocks) and its descriptor cache."""
    rng = np.random.default_rng(seed)
    num_places = math.ceil(num_db / HEADINGS_PER_PLACE)
    places = np.zeros((0, 2))
    streets = 2  # grid lines per axis, 100 m apart; grown until the grid has enough places
    while len(places) < num_places:
        along = np.arange(0.0, 100.0 * (streets - 1) + 1e-9, 10.0)
        horizontal = np.stack(np.meshgrid(along, np.arange(streets) * 100.0), -1).reshape(-1, 2)
        places = np.unique(np.concatenate([horizontal, horizontal[:, ::-1]]), axis=0)
        streets += 1
    places = places[rng.permutation(len(places))[:num_places]]
    db_xy = np.repeat(places, HEADINGS_PER_PLACE, axis=0)[:num_db]
    db_heading = np.tile(np.arange(HEADINGS_PER_PLACE) * (360.0 / HEADINGS_PER_PLACE), num_places)[:num_db]
    query_xy = places[rng.integers(0, len(places), num_queries)] + rng.normal(0.0, 3.0, (num_queries, 2))
    query_heading = rng.uniform(0.0, 360.0, num_queries)

    frequencies = rng.normal(0.0, 1.0, (4, dim))
    phases = rng.uniform(0.0, 2 * np.pi, dim)

    def describe(xy: np.ndarray, heading: np.ndarray) -> np.ndarray:
        radians = np.deg2rad(heading)
        inputs = np.column_stack([xy / 30.0, 2.0 * np.cos(radians), 2.0 * np.sin(radians)])
        values = np.cos(inputs @ frequencies + phases) + 0.5 * rng.normal(0.0, 1.0, (len(xy), dim))
        return (values / np.linalg.norm(values, axis=1, keepdims=True)).astype(np.float32)

    placeset = PlaceSet(
        name="bench",
        split="train",
        db_paths=[Path(f"db/{i:06d}.jpg") for i in range(num_db)],
        query_paths=[Path(f"query/{i:06d}.jpg") for i in range(num_queries)],
        db_xy=db_xy,
        query_xy=query_xy,
        db_heading=db_heading,
        query_heading=query_heading,
    )
    return placeset, DescriptorCache(describe(db_xy, db_heading), describe(query_xy, query_heading), dtype)


def eligible_negatives(miner: Miner, query_indices: np.ndarray) -> dict[int, np.ndarray]:
    """Per query, database images beyond neg_radius_m (the published code precomputes these once)."""
    everything = np.arange(miner.placeset.num_db)
    return {int(q): np.setdiff1d(everything, miner.negative_exclusions[q]) for q in query_indices}


def mine_per_query_loop(miner: Miner, cache: DescriptorCache, query_indices: np.ndarray, eligible: dict[int, np.ndarray]) -> list[MinedTuple]:
    """The same mining, one query at a time with numpy (as the published code does), on the miner's state."""
    settings = miner.settings
    db = cache.db
    mined = []
    for q in query_indices:
        query = cache.queries[q].astype(np.float32)
        pool = eligible[int(q)]
        uniform = miner.rng.random(settings.num_random)
        candidates = miner.positive_candidates[q]
        if len(candidates) == 0:
            continue
        positive_distances = np.linalg.norm(db[candidates].astype(np.float32) - query, axis=1)
        positive = int(candidates[np.argmin(positive_distances)])
        sampled = pool[np.minimum((uniform * len(pool)).astype(np.int64), len(pool) - 1)]
        previous = miner.previous_negatives[q]
        negatives = np.unique(np.concatenate([sampled, previous[previous >= 0]]))
        distances = np.linalg.norm(db[negatives].astype(np.float32) - query, axis=1)
        order = np.argsort(distances, kind="stable")
        violating = order[distances[order] < positive_distances.min() + math.sqrt(settings.margin)]
        kept = negatives[violating[: settings.num_negatives]]
        if len(kept) == 0:
            continue
        miner.previous_negatives[q] = -1
        miner.previous_negatives[q, : len(kept)] = kept
        mined.append(MinedTuple(int(q), positive, kept))
    return mined


def same_tuples(a: list[MinedTuple], b: list[MinedTuple]) -> int:
    """How many tuples agree exactly (query, positive and negatives in order)."""
    by_query = {t.query: t for t in b}
    return sum(
        1
        for t in a
        if t.query in by_query and t.positive == by_query[t.query].positive and np.array_equal(t.negatives, by_query[t.query].negatives)
    )


def _timed(work: Callable[[], T]) -> tuple[T, float, float]:
    """The result, wall seconds and process CPU seconds (all threads) of `work()`."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = work()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def benchmark_mining(
    num_db: int = 10_000,
    num_queries: int = 7_416,
    dim: int = 2048,
    loop_queries: int = 300,
    dtype: str = "float32",
    seed: int = 0,
) -> dict[str, float]:
    """Seconds per full refresh: batched (measured) and per-query loop (measured on `loop_queries`, extrapolated)."""
    placeset, cache = structured_places(num_db, num_queries, dim, seed, dtype)
    settings = MiningSettings(positive_rule="heading")  # the rule the benchmark was first measured with
    every_query = np.arange(num_queries)
    subset = every_query[:loop_queries]

    batched = Miner(placeset, settings, seed)
    (first, first_refresh_s, first_refresh_cpu_s) = _timed(lambda: batched.mine(cache, every_query))
    (_, second_refresh_s, second_refresh_cpu_s) = _timed(lambda: batched.mine(cache, every_query))

    looped = Miner(placeset, settings, seed)
    eligible = eligible_negatives(looped, subset)
    (loop_tuples, loop_s, loop_cpu_s) = _timed(lambda: mine_per_query_loop(looped, cache, subset, eligible))
    subset_batched = Miner(placeset, settings, seed).mine(cache, subset)

    return {
        "num_db": num_db,
        "num_queries": num_queries,
        "dim": dim,
        "cache_mib": cache.nbytes / 2**20,
        "num_random": settings.num_random,
        "num_negatives": settings.num_negatives,
        "tuples_first_refresh": len(first),
        "batched_first_refresh_s": first_refresh_s,
        "batched_first_refresh_cpu_s": first_refresh_cpu_s,
        "batched_second_refresh_s": second_refresh_s,
        "batched_second_refresh_cpu_s": second_refresh_cpu_s,
        "loop_queries": len(subset),
        "loop_measured_s": loop_s,
        "loop_refresh_extrapolated_s": loop_s / len(subset) * num_queries,
        "loop_refresh_extrapolated_cpu_s": loop_cpu_s / len(subset) * num_queries,
        "loop_tuples": len(loop_tuples),
        "batched_tuples_on_loop_queries": len(subset_batched),
        "tuples_agreeing": same_tuples(loop_tuples, subset_batched),
    }


def format_mining(result: dict[str, float]) -> str:
    """The mining benchmark as printed lines (wall s / process CPU s)."""
    loop_refresh = result["loop_refresh_extrapolated_s"]
    return "\n".join([
        f"mining refresh: {result['num_db']} database, {result['num_queries']} queries, {result['dim']}-d cache "
        f"({result['cache_mib']:.0f} MiB), {result['num_random']} random negatives + previous, up to "
        f"{result['num_negatives']} kept (wall s / process CPU s; wall depends on what else shares the CPU)",
        f"  batched, first refresh (no previous negatives): {result['batched_first_refresh_s']:8.2f} / "
        f"{result['batched_first_refresh_cpu_s']:.2f}",
        f"  batched, second refresh (with previous):        {result['batched_second_refresh_s']:8.2f} / "
        f"{result['batched_second_refresh_cpu_s']:.2f}",
        f"  per-query numpy loop, measured on {result['loop_queries']} queries and extrapolated to "
        f"{result['num_queries']}: {loop_refresh:8.2f} / {result['loop_refresh_extrapolated_cpu_s']:.2f}",
        f"  speed-up (first refresh): {loop_refresh / result['batched_first_refresh_s']:.1f}x wall, "
        f"{result['loop_refresh_extrapolated_cpu_s'] / result['batched_first_refresh_cpu_s']:.1f}x CPU",
        f"  tuples: {result['tuples_first_refresh']} of {result['num_queries']} queries; on the loop's queries "
        f"{result['tuples_agreeing']} of {result['loop_tuples']} loop tuples identical to the batched ones "
        f"({result['batched_tuples_on_loop_queries']} batched)",
    ])

"""Timing benchmarks, printed side by side: place matching (index search) per back-end.

Matching: `bench_matching(datasets)` builds each index configuration on each database, times
search one query at a time (the robot case, median latency) and in one batch, and reports
Recall@1 against exact search on the same data. Real descriptors can be passed as
`MatchingData` (e.g. from the synthetic city, with `PlaceSet.positives(radius)`); without them
`synthetic_matching_data` makes structured stand-ins.

Run: `tscm bench matching --sizes 10000 250000`.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from tscm.deploy.index import PlaceIndex

EXACT_LABEL = "exact (flat fp32)"


@dataclass
class MatchingData:
    """Database and query descriptors, and for each query the database rows that count as correct."""

    name: str
    database: np.ndarray  # N×D float32, L2-normalised
    queries: np.ndarray  # Q×D float32
    query_positives: list[np.ndarray]  # per query: indices of correct database rows


@dataclass
class MatchingConfig:
    label: str
    backend: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class MatchingRow:
    data: str
    num_db: int
    label: str
    build_s: float
    memory_mb: float
    single_ms: float  # median wall-clock latency of one query searched alone
    single_cpu_ms: float  # median CPU time of the same (the work, without waiting for a shared core)
    single_queries: int  # how many single queries were timed
    batched_ms: float  # wall time of one batch of all queries, per query
    batched_cpu_ms: float  # CPU time of all threads for that batch, per query
    recall_at_1: float  # percent
    recall_delta: float  # points, this configuration minus exact search


def synthetic_matching_data(num_db: int, num_queries: int, *, dim: int = 2048, views_per_place: int = 4,
                            places_per_group: int = 8, rank: int = 256, place_spread: float = 0.5,
                            view_noise: float = 0.45, view_noise_floor: float = 0.85,
                            isotropic_noise: float = 0.1, seed: int = 0) -> MatchingData:
    """Descriptors of places seen from several views: a low-rank mixture plus noise, L2-normalised.

    Latent space: `rank` axes with variances 1/i (i = 1..rank), a decaying spectrum like real
    global descriptors. Places come in groups of look-alikes (the hard negatives of real streets):
    a group centre, plus `place_spread` times that spectrum per place. Each view adds latent noise
    (`view_noise` times the spectrum plus a floor of `view_noise_floor` times the mean axis spread
    on every axis), is mapped to `dim` dims by a fixed random basis and gets isotropic noise
    (`isotropic_noise` of the signal's norm). Queries are fresh views of distinct database places;
    a hit is any database view of the same place.
    """
    rng = np.random.default_rng(seed)
    num_places = -(-num_db // views_per_place)
    if num_queries > num_places:
        raise ValueError(f"{num_queries} queries need at least as many places, got {num_places}")
    scale = (1.0 / np.sqrt(np.arange(1, rank + 1))).astype(np.float32)
    basis = rng.standard_normal((rank, dim), dtype=np.float32) / np.float32(np.sqrt(dim))
    num_groups = -(-num_places // places_per_group)
    groups = rng.standard_normal((num_groups, rank), dtype=np.float32) * scale
    centres = groups[np.arange(num_places) // places_per_group]
    centres += place_spread * rng.standard_normal((num_places, rank), dtype=np.float32) * scale
    view_scale = np.sqrt(view_noise**2 * scale**2 + view_noise_floor**2 * np.mean(scale**2)).astype(np.float32)
    isotropic_std = np.float32(isotropic_noise * np.sqrt((scale**2).sum() / dim))

    def views(places: np.ndarray) -> np.ndarray:
        out = np.empty((len(places), dim), dtype=np.float32)
        for start in range(0, len(places), 50_000):  # chunks bound the temporary memory
            chunk = places[start : start + 50_000]
            latent = centres[chunk] + rng.standard_normal((len(chunk), rank), dtype=np.float32) * view_scale
            block = latent @ basis + isotropic_std * rng.standard_normal((len(chunk), dim), dtype=np.float32)
            block /= np.linalg.norm(block, axis=1, keepdims=True)
            out[start : start + len(chunk)] = block
        return out

    db_place = np.repeat(np.arange(num_places), views_per_place)[:num_db]
    query_place = rng.choice(int(db_place.max()) + 1, size=num_queries, replace=False)
    first_view = np.searchsorted(db_place, query_place)
    last_view = np.searchsorted(db_place, query_place, side="right")
    positives = [np.arange(a, b) for a, b in zip(first_view, last_view)]
    return MatchingData(f"synthetic {num_db // 1000}k×{dim}", views(db_place), views(query_place), positives)


def default_matching_configs(num_db: int) -> list[MatchingConfig]:
    """Exact search first (the reference), then the candidates worth comparing at this size."""
    configs = [MatchingConfig(EXACT_LABEL, "flat")]
    if num_db <= 50_000:
        configs += [
            MatchingConfig("flat fp16", "flat", {"storage": "fp16"}),
            MatchingConfig("pca-flat 256", "pca-flat", {"pca_dim": 256}),
            MatchingConfig("pca-flat 256 whitened", "pca-flat", {"pca_dim": 256, "whiten": True}),
            MatchingConfig("pca-flat 128", "pca-flat", {"pca_dim": 128}),
            MatchingConfig("hnsw pca256 M32 ef128", "hnsw", {"pca_dim": 256, "hnsw_m": 32, "ef_search": 128}),
            MatchingConfig("ivfpq pca256 nlist256 m64 np16 rr16", "ivfpq",
                           {"pca_dim": 256, "nlist": 256, "pq_m": 64, "nprobe": 16, "rerank": 16}),
        ]
    else:
        # Exhaustive search over 256-d is already ~12 ms per query here; only sub-linear back-ends remain.
        configs += [
            MatchingConfig("pca-flat 256", "pca-flat", {"pca_dim": 256}),
            MatchingConfig("hnsw pca256 M32 ef128", "hnsw", {"pca_dim": 256, "hnsw_m": 32, "ef_search": 128}),
            MatchingConfig("ivfpq pca256 nlist1024 m64 np32 rr16", "ivfpq",
                           {"pca_dim": 256, "nlist": 1024, "pq_m": 64, "nprobe": 32, "rerank": 16}),
        ]
    return configs


def recall_at_1(top1: np.ndarray, query_positives: Sequence[np.ndarray]) -> float:
    hits = sum(int(row in positives) for row, positives in zip(top1.tolist(), query_positives))
    return 100.0 * hits / len(query_positives)


def _time_single_queries(index: PlaceIndex, queries: np.ndarray, limit: int,
                         budget_s: float) -> tuple[list[float], list[float]]:
    """Wall and CPU ms per query, one query per call, stopping at `limit` queries or `budget_s` seconds.

    Single queries run on one thread (see tscm.deploy.index), so this thread's CPU time is the work done;
    wall time adds waiting for a core when other processes share the CPU.
    """
    index.search(queries[:1], k=1)  # warm-up: first-call allocations are not the steady state
    wall, cpu = [], []
    started = time.perf_counter()
    for row in range(min(limit, len(queries))):
        tic, cpu_tic = time.perf_counter(), time.thread_time()
        index.search(queries[row : row + 1], k=1)
        cpu.append((time.thread_time() - cpu_tic) * 1e3)
        wall.append((time.perf_counter() - tic) * 1e3)
        if time.perf_counter() - started > budget_s and len(wall) >= 5:
            break
    return wall, cpu


MATCHING_HEADER = (f"{'data':<18} {'configuration':<40} {'build s':>8} {'mem MB':>7} "
                   f"{'1q wall ms':>10} {'1q CPU ms':>9} {'(n)':>4} {'batch ms/q':>10} {'CPU ms/q':>8} "
                   f"{'R@1 %':>6} {'ΔR@1':>5}")


def format_matching_row(row: MatchingRow) -> str:
    return (f"{row.data:<18} {row.label:<40} {row.build_s:>8.1f} {row.memory_mb:>7.1f} "
            f"{row.single_ms:>10.3f} {row.single_cpu_ms:>9.3f} {row.single_queries:>4} "
            f"{row.batched_ms:>10.3f} {row.batched_cpu_ms:>8.3f} {row.recall_at_1:>6.1f} {row.recall_delta:>+5.1f}")


def bench_matching(datasets: Iterable[MatchingData],
                   configs_for: Callable[[int], Sequence[MatchingConfig]] = default_matching_configs, *,
                   num_single: int = 200, single_budget_s: float = 10.0, threads: int = 2,
                   print_fn: Callable[[str], None] = print) -> list[MatchingRow]:
    """Build and time every configuration on every data set; print the table and return its rows.

    The first configuration of each list must be exact search: Recall@1 deltas are relative to it.
    `datasets` may be a generator, so only one database need be in memory at a time.
    """
    import faiss
    import torch

    faiss.omp_set_num_threads(threads)
    torch.set_num_threads(threads)
    rows: list[MatchingRow] = []
    print_fn(MATCHING_HEADER)
    for data in datasets:
        exact_recall = None
        for config in configs_for(len(data.database)):
            tic = time.perf_counter()
            index = PlaceIndex.build(data.database, backend=config.backend, **config.params)
            build_s = time.perf_counter() - tic
            wall, cpu = _time_single_queries(index, data.queries, num_single, single_budget_s)
            tic, cpu_tic = time.perf_counter(), time.process_time()
            result = index.search(data.queries, k=1)
            batched_ms = (time.perf_counter() - tic) * 1e3 / len(data.queries)
            batched_cpu_ms = (time.process_time() - cpu_tic) * 1e3 / len(data.queries)
            recall = recall_at_1(result.indices[:, 0], data.query_positives)
            if exact_recall is None:
                exact_recall = recall
            row = MatchingRow(data.name, len(data.database), config.label, build_s, index.memory_bytes / 2**20,
                              statistics.median(wall), statistics.median(cpu), len(wall), batched_ms,
                              batched_cpu_ms, recall, recall - exact_recall)
            rows.append(row)
            print_fn(format_matching_row(row))
            del index
    return rows

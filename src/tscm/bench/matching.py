"""Timing benchmarks, printed side by side: place matching (index search) per back-end.

Matching: `bench_matching(datasets)` builds each index configuration on each database, times
search one query at a time (the robot case, median latency) and in one batch, and reports
Recall@1 against exact search on the same data. The two take turns (`rounds` rounds of a block of
single queries, then the whole batch), so load from other processes falls on both alike; the
single-query median is over every round's queries, the batched figure the median round. Real
descriptors can be passed as `MatchingData` (e.g. from the synthetic city, with
`PlaceSet.positives(radius)`); without them `synthetic_matching_data` makes structured stand-ins.

Bytes per query (`estimate_query_bytes`): what one query reads, estimated from the index layout
and faiss' own search counters, set against the machine's one-thread copy bandwidth (single
queries run on one thread): the PCA matrix D·d·4 where PCA is used; flat: N·d·4 (+ N·4 of norms;
fp16 storage N·d·2); HNSW: distance computations × d·4 + graph hops × 2M·4 (level-0 neighbour
lists); IVF-PQ: the centroids nlist·d·4, scanned codes × (code bytes + 8 of id), the per-list
distance tables nprobe·m·2^bits·4 and the re-ranked rows k·rerank·d·4. A single query cannot be
faster than bytes / bandwidth; a batch re-uses what it reads from cache across queries, which is
why it can be far cheaper per query than a lone one when the scan is memory-bound.

Run: `tscm bench matching --sizes 10000 250000`.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from tscm.bench.gpu import bench_gpu_matching
from tscm.deploy.retrieval.index import PlaceIndex
from tscm.evaluation.recall import recall_at_1

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
    rounds: int = 1  # turns of (single block, batch)
    bytes_per_query: float = float("nan")  # estimated bytes one query reads (module doc)
    single_gb_s: float = float("nan")  # bytes_per_query / median single-query wall time
    bandwidth_fraction: float = float("nan")  # single_gb_s / the machine's one-thread copy bandwidth


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


def _time_single_queries(index: PlaceIndex, queries: np.ndarray, limit: int,
                         budget_s: float) -> tuple[list[float], list[float]]:
    """Wall and CPU ms per query, one query per call, stopping at `limit` queries or `budget_s` seconds.

    Single queries run on one thread (see tscm.deploy.retrieval.index), so this thread's CPU time is the work done;
    wall time adds waiting for a core when other processes share the CPU.
    """
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


def _time_batch(index: PlaceIndex, queries: np.ndarray) -> tuple[float, float, Any]:
    """(wall ms per query, process CPU ms per query, result) of one search of all `queries`."""
    tic, cpu_tic = time.perf_counter(), time.process_time()
    result = index.search(queries, k=1)
    return ((time.perf_counter() - tic) * 1e3 / len(queries), (time.process_time() - cpu_tic) * 1e3 / len(queries),
            result)


def time_single_and_batched(index: PlaceIndex, queries: np.ndarray, *, num_single: int, budget_s: float,
                            rounds: int) -> dict[str, Any]:
    """Single-query and batched latency measured in turns: each round a block of single queries (fresh
    rows each round), then all queries in one batch. Medians over all single queries and over rounds."""
    index.search(queries[:1], k=1)  # warm-up: first-call allocations are not the steady state
    index.search(queries[: min(len(queries), 16)], k=1)
    rounds = max(1, rounds)
    wall: list[float] = []
    cpu: list[float] = []
    batched: list[tuple[float, float]] = []
    result = None
    for turn in range(rounds):
        count = max(1, num_single // rounds + (1 if turn < num_single % rounds else 0))
        start = (turn * (num_single // rounds + 1)) % len(queries)
        block = queries[start : start + count]
        w, c = _time_single_queries(index, block, count, budget_s / rounds)
        wall += w
        cpu += c
        batch_wall, batch_cpu, result = _time_batch(index, queries)
        batched.append((batch_wall, batch_cpu))
    batched.sort()
    middle = batched[len(batched) // 2]
    return {"single_ms": statistics.median(wall), "single_cpu_ms": statistics.median(cpu), "single_queries": len(wall),
            "batched_ms": middle[0], "batched_cpu_ms": middle[1], "rounds": rounds, "result": result}


def estimate_query_bytes(index: PlaceIndex, queries: np.ndarray, sample: int = 20) -> float:
    """Estimated bytes one query reads (k=1), from the index layout and faiss' search counters (module doc)."""
    import faiss

    count, dim = index.count, index.search_dim
    total = 0.0
    if index._pca is not None:
        total += index.dim * dim * 4
    params = index.params
    if index.backend in ("flat", "pca-flat"):
        return total + count * dim * (2 if params.get("storage") == "fp16" else 4) + count * 4
    probe = np.ascontiguousarray(queries[:sample])
    if index.backend == "hnsw":
        stats = faiss.cvar.hnsw_stats
        stats.reset()
        index.search(probe, k=1)
        ndis, nhops = stats.ndis / len(probe), stats.nhops / len(probe)
        return total + ndis * dim * 4 + nhops * 2 * params["hnsw_m"] * 4
    stats = faiss.cvar.indexIVF_stats
    stats.reset()
    index.search(probe, k=1)
    codes = stats.ndis / len(probe)
    code_bytes = params["pq_m"] * params["pq_bits"] / 8
    tables = params["nprobe"] * params["pq_m"] * 2 ** params["pq_bits"] * 4
    rerank = params["rerank"] * dim * 4
    return total + params["nlist"] * dim * 4 + codes * (code_bytes + 8) + tables + rerank


MATCHING_HEADER = (f"{'data':<18} {'configuration':<40} {'build s':>8} {'mem MB':>7} "
                   f"{'1q wall ms':>10} {'1q CPU ms':>9} {'(n)':>4} {'batch ms/q':>10} {'CPU ms/q':>8} {'1q/batch':>8} "
                   f"{'R@1 %':>6} {'ΔR@1':>5} {'MB/query':>8} {'1q GB/s':>7} {'% bw':>5}")


def format_matching_row(row: MatchingRow) -> str:
    ratio = row.single_ms / row.batched_ms if row.batched_ms > 0 else float("nan")
    return (f"{row.data:<18} {row.label:<40} {row.build_s:>8.1f} {row.memory_mb:>7.1f} "
            f"{row.single_ms:>10.3f} {row.single_cpu_ms:>9.3f} {row.single_queries:>4} "
            f"{row.batched_ms:>10.3f} {row.batched_cpu_ms:>8.3f} {ratio:>7.1f}× {row.recall_at_1:>6.1f} "
            f"{row.recall_delta:>+5.1f} {row.bytes_per_query / 2**20:>8.2f} {row.single_gb_s:>7.1f} "
            f"{100 * row.bandwidth_fraction:>4.0f}%")


def bench_matching(datasets: Iterable[MatchingData],
                   configs_for: Callable[[int], Sequence[MatchingConfig]] = default_matching_configs, *,
                   num_single: int = 200, single_budget_s: float = 10.0, threads: int = 2, rounds: int = 3,
                   bandwidth_gb_s: float | None = None, gpu_rows: list | None = None, gpu_device: Any = "cuda",
                   print_fn: Callable[[str], None] = print) -> list[MatchingRow]:
    """Build and time every configuration on every data set; print the table and return its rows.

    The first configuration of each list must be exact search: Recall@1 deltas are relative to it.
    `datasets` may be a generator, so only one database need be in memory at a time.
    `bandwidth_gb_s`: the machine's one-thread copy bandwidth (tscm.bench.machine), for the "% bw" column.
    `gpu_rows`: a list to receive, for each exact configuration (flat, pca-flat), the same search on
    `gpu_device` (tscm.bench.gpu), printed after the CPU table's row.
    """
    import faiss

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
            timed = time_single_and_batched(index, data.queries, num_single=num_single, budget_s=single_budget_s,
                                            rounds=rounds)
            recall = recall_at_1(timed["result"].indices[:, 0], data.query_positives)
            if exact_recall is None:
                exact_recall = recall
            query_bytes = estimate_query_bytes(index, data.queries)
            single_gb_s = query_bytes / (timed["single_ms"] / 1e3) / 1e9
            row = MatchingRow(data.name, len(data.database), config.label, build_s, index.memory_bytes / 2**20,
                              timed["single_ms"], timed["single_cpu_ms"], timed["single_queries"], timed["batched_ms"],
                              timed["batched_cpu_ms"], recall, recall - exact_recall, rounds=timed["rounds"],
                              bytes_per_query=query_bytes, single_gb_s=single_gb_s,
                              bandwidth_fraction=single_gb_s / bandwidth_gb_s if bandwidth_gb_s else float("nan"))
            rows.append(row)
            print_fn(format_matching_row(row))
            if gpu_rows is not None and config.backend in ("flat", "pca-flat"):
                gpu_rows.append(bench_gpu_matching(data, index, config.label, device=gpu_device,
                                                   print_fn=lambda line: print_fn(f"  GPU: {line}")))
            del index
    return rows

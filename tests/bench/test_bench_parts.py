"""Benchmark mechanics: side-by-side single/batched timing, bytes per query, the int8 summary, GPU rows' fallbacks."""

from __future__ import annotations

import numpy as np
import pytest

from tscm.bench import gpu as gpu_module
from tscm.bench.matching import (MatchingConfig, bench_matching, estimate_query_bytes, synthetic_matching_data,
                                 time_single_and_batched)
from tscm.deploy.index import PlaceIndex
from tscm.evaluation.recall import recall_at_1


@pytest.fixture(scope="module")
def data():
    return synthetic_matching_data(2000, 40, dim=64, rank=16, seed=1)


def test_single_and_batched_take_turns(data, monkeypatch):
    index = PlaceIndex.build(data.database, backend="flat")
    calls: list[int] = []
    original = index.search
    monkeypatch.setattr(index, "search", lambda queries, k: calls.append(len(np.atleast_2d(queries))) or
                        original(queries, k))
    timed = time_single_and_batched(index, data.queries, num_single=7, budget_s=60, rounds=3)
    batch = len(data.queries)
    assert calls[2:] == [1, 1, 1, batch, 1, 1, batch, 1, 1, batch]  # after the warm-up: 3 + 2 + 2 singles, a batch each
    assert timed["single_queries"] == 7 and timed["rounds"] == 3
    assert timed["single_ms"] > 0 and timed["batched_ms"] > 0 and timed["result"].indices.shape == (batch, 1)


def test_bytes_per_query_follow_the_layout(data):
    count, dim = data.database.shape
    flat = PlaceIndex.build(data.database, backend="flat")
    assert estimate_query_bytes(flat, data.queries) == count * dim * 4 + count * 4
    pca = PlaceIndex.build(data.database, backend="pca-flat", pca_dim=16)
    assert estimate_query_bytes(pca, data.queries) == dim * 16 * 4 + count * 16 * 4 + count * 4
    hnsw = PlaceIndex.build(data.database, backend="hnsw", hnsw_m=8, ef_search=32)
    ivf = PlaceIndex.build(data.database, backend="ivfpq", nlist=16, pq_m=8, pq_bits=4, nprobe=4, rerank=4)
    for index in (hnsw, ivf):  # estimated from faiss' counters: positive, below a full scan
        assert 0 < estimate_query_bytes(index, data.queries) < count * dim * 4 + 16 * dim * 4 + 4 * 8 * 16 * 4 + 4 * dim * 4


def test_matching_rows_carry_bandwidth_columns(data):
    printed: list[str] = []
    rows = bench_matching([data], lambda n: [MatchingConfig("exact", "flat")], num_single=4, threads=1, rounds=2,
                          bandwidth_gb_s=10.0, print_fn=printed.append)
    (row,) = rows
    assert row.rounds == 2 and row.single_queries == 4
    assert row.single_gb_s == pytest.approx(row.bytes_per_query / (row.single_ms / 1e3) / 1e9)
    assert row.bandwidth_fraction == pytest.approx(row.single_gb_s / 10.0)
    assert "MB/query" in printed[0] and "% bw" in printed[0]


def test_int8_summary_table():
    from tscm.bench.suite import _int8_summary

    def row(runtime, ms, precision="float32", auto_ms=None):
        return {"model": "m", "batch_size": 1, "runtime": runtime, "median_ms": ms, "precision": precision,
                "auto_ms": auto_ms}

    lines = _int8_summary([row("torch", 90.0), row("onnx", 60.0), row("onnx-int8", 30.0, "int8"),
                           row("onnx-auto", 31.0, "int8", {"float32": 61.0, "int8": 29.0})])
    assert "| m | 1 | 90.00 | 60.00 | 30.00 | 3.00× | 2.00× | int8 | 61.0 / 29.0 ms |" in lines
    assert _int8_summary([row("torch", 90.0)]) == []  # nothing to compare without int8


def test_gpu_rows_say_why_they_are_missing():
    reason = gpu_module.unavailable_reason()
    import torch

    assert (reason is None) == torch.cuda.is_available()
    if reason is not None:
        assert "CUDA" in reason
    for check in (gpu_module.onnx_cuda_reason, gpu_module.faiss_gpu_reason):
        assert check() is None or isinstance(check(), str)


def test_gpu_code_paths_run_on_the_cpu(data, tmp_path):
    """The GPU benchmarks take a device; on the CPU they exercise the same logic (numbers meaningless)."""
    index = PlaceIndex.build(data.database, backend="pca-flat", pca_dim=16)
    printed: list[str] = []
    row = gpu_module.bench_gpu_matching(data, index, "pca-flat 16", device="cpu", num_single=3, print_fn=printed.append)
    expected = index.search(data.queries, 1).indices[:, 0]
    assert row.engine == "torch flat" and row.device == "cpu" and row.single_ms > 0 and row.batched_ms > 0
    assert row.recall_at_1 == pytest.approx(recall_at_1(expected, data.query_positives))
    rows = gpu_module.bench_gpu_extraction(["student-tiny"], [2], device="cpu", cycles=1, calls=1, onnx=False,
                                           print_fn=printed.append)
    assert [(r.runtime, r.batch_size) for r in rows] == [("cuda-fp32", 2), ("cuda-fp16", 2)]
    assert rows[0].speedup == pytest.approx(1.0) and all(r.gflops > 0 for r in rows)

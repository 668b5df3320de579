"""`tscm bench streaming`: every pipeline, every runtime asked for, every stage timed."""

from __future__ import annotations

import pytest

from tscm.bench.streaming import STAGES, bench_streaming


@pytest.mark.slow
def test_streaming_rows_per_runtime_pipeline_and_map_size():
    pytest.importorskip("onnxruntime")
    lines: list[str] = []
    rows = bench_streaming(preset="student-tiny", map_sizes=(300,), frames=12, threads=1,
                           runtimes=("torch", "onnx"), print_fn=lines.append)
    assert [(row.runtime, row.pipeline) for row in rows] == [
        (runtime, pipeline) for runtime in ("torch", "onnx") for pipeline in ("sequence", "observe", "observe-seq")]
    for row in rows:
        assert set(row.stage_ms) == set(STAGES[row.pipeline]) and row.stage_ms["describe"] > 0
        assert row.total_ms == pytest.approx(sum(row.stage_ms.values()))
        assert sum(row.share.values()) == pytest.approx(1.0)
    assert sum(" onnx " in line for line in lines) == 3

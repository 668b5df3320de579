"""`tscm bench streaming`: every pipeline, every runtime asked for, every stage timed."""

from __future__ import annotations

import argparse

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


@pytest.mark.slow
def test_observe_leaves_out_as_many_newest_entries_as_asked(monkeypatch):
    """--streaming-exclude-recent reaches observe: the map's newest entries are never searched, even when they
    are more than the map held before the stream (then no frame has anything to match at first)."""
    from tscm.bench.settings import BenchSettings
    from tscm.commands import bench as bench_command
    from tscm.config.fields import build_settings, flags_given
    from tscm.deploy.retrieval.recognizer import PlaceRecognizer

    parser = argparse.ArgumentParser()
    bench_command.add_arguments(parser)
    args = parser.parse_args(["streaming", "--streaming-exclude-recent", "900", "--streaming-sizes", "300"])
    settings = build_settings(BenchSettings, {}, flags_given(args, BenchSettings))
    assert settings.streaming_exclude_recent == 900 and settings.streaming_sizes == [300]

    seen = []
    observe = PlaceRecognizer.observe

    def spy(self, image, **options):
        seen.append((self.count, options["exclude_recent"], len(observe(self, image, **options))))
        return seen[-1][2] * [None]

    monkeypatch.setattr(PlaceRecognizer, "observe", spy)
    rows = bench_streaming(preset="student-tiny", map_sizes=(300,), frames=12, threads=1, runtimes=("torch",),
                           exclude_recent=305, print_fn=lambda line: None)
    assert all(row.settings["exclude_recent"] == 305 for row in rows)
    assert {excluded for _, excluded, _ in seen} == {305}
    # a frame's time is the map's size, so entries 0..count − 305 are old enough: none before the map holds 305
    assert [found for count, _, found in seen if count < 305] == [0] * sum(count < 305 for count, _, _ in seen)
    assert all(found for count, _, found in seen if count >= 305)

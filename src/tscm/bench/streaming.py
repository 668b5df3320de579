"""`tscm bench streaming`: the cost per frame of streaming place recognition, stage by stage.

Two pipelines of `PlaceRecognizer`, one frame at a time on the bench threads:

- `sequence` (`query_sequence`, localising against a fixed map): decode (read the image file,
  convert, resize, normalise), describe (the model's forward pass on one image), search (the
  frame's distance row over the map), sequence (the L-frame sequence scores and their ranking),
  decision (the threshold's decision score, the threshold and temporal consistency);
- `observe` (loop closure in one traversal, the map growing by one entry per frame, its newest
  `exclude_recent` entries left out of the search): decode, describe, search (nearest hits and the
  decision score), decision (threshold and consistency), add (the frame joins the map);
- `observe-seq` (the same with L-frame sequences, `observe(sequence=L)`): decode, describe, search
  (the frame's distance row over the map), sequence, decision, add.

Each runtime (default: eager `torch` and `onnx` Runtime, whose single-image call costs far less) is timed
in turn. Maps of 1k, 10k and 100k entries are synthetic unit descriptors along a random walk (the back-end
`auto` picks for that size: exact flat, PCA + flat, HNSW); the frames are PNG files of the
model's input shape's aspect, written once. Each row gives the median ms per frame of every stage,
its share of the total, and frames per second (1000 / the sum of the stage medians).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from tscm.errors import TscmError

PIPELINES = ("sequence", "observe", "observe-seq")
STAGES = {"sequence": ("decode", "describe", "search", "sequence", "decision"),
          "observe": ("decode", "describe", "search", "decision", "add"),
          "observe-seq": ("decode", "describe", "search", "sequence", "decision", "add")}


@dataclass
class StreamingRow:
    pipeline: str
    map_size: int
    backend: str
    runtime: str
    frames: int
    stage_ms: dict[str, float]  # median ms per frame of each stage
    share: dict[str, float]  # each stage's fraction of the total
    total_ms: float
    frames_per_s: float
    settings: dict = field(default_factory=dict)


def route_descriptors(num: int, dim: int, seed: int) -> np.ndarray:
    """Unit descriptors along a random walk: neighbours along the route look alike, as frames of a drive do."""
    rng = np.random.default_rng(seed)
    walk = np.cumsum(rng.normal(scale=0.15, size=(num, dim)).astype(np.float32), axis=0)
    walk += rng.normal(size=(num, dim)).astype(np.float32)
    return walk / np.linalg.norm(walk, axis=1, keepdims=True)


def write_frames(folder: Path, count: int, size: tuple[int, int], seed: int) -> list[Path]:
    """`count` PNG frames of `size` (W, H) with smooth random content (a camera-like, compressible picture)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    width, height = size
    coarse = rng.integers(0, 256, size=(count, max(height // 4, 1), max(width // 4, 1), 3), dtype=np.uint8)
    paths = []
    for i in range(count):
        path = folder / f"frame-{i:05d}.png"
        Image.fromarray(coarse[i]).resize((width, height), Image.BILINEAR).save(path)
        paths.append(path)
    return paths


def _row(pipeline: str, size: int, backend: str, runtime: str, per_frame: list[dict[str, float]],
         settings: dict) -> StreamingRow:
    stage_ms = {stage: 1e3 * float(np.median([t.get(stage, 0.0) for t in per_frame])) for stage in STAGES[pipeline]}
    total = sum(stage_ms.values())
    share = {stage: (value / total if total > 0 else 0.0) for stage, value in stage_ms.items()}
    return StreamingRow(pipeline, size, backend, runtime, len(per_frame), stage_ms, share, total,
                        1e3 / total if total > 0 else float("inf"), settings)


def bench_streaming(*, preset: str = "student-lite", map_sizes=(1000, 10_000, 100_000), frames: int = 200,
                    sequence_length: int = 10, consistency: int = 3, threads: int = 2, frame_size=(64, 32),
                    seed: int = 0, runtimes=("torch", "onnx"), exclude_recent: int = 20,
                    print_fn: Callable[[str], None] = print) -> list[StreamingRow]:
    """Per-frame stage costs of both pipelines at each map size and runtime (module docstring); a runtime
    whose package is missing is left out with a printed line."""
    from tscm.deploy.retrieval.recognizer import PlaceRecognizer
    from tscm.models import build_model
    from tscm.models.checkpoint import save_checkpoint
    from tscm.threads import limit_threads

    rows: list[StreamingRow] = []
    with tempfile.TemporaryDirectory(prefix="tscm-streaming-") as tmp:
        folder = Path(tmp)
        model = build_model(preset)
        checkpoint = folder / "model"
        save_checkpoint(checkpoint, model, model.config)
        images = write_frames(folder, frames, tuple(frame_size), seed)
        settings = {"preset": preset, "threads": threads, "sequence_length": sequence_length,
                    "consistency": consistency, "frame_size": list(frame_size), "score": "ratio",
                    "exclude_recent": exclude_recent}
        print_fn(f"streaming: {preset}, {threads} threads, {frames} frames of {frame_size[0]}×{frame_size[1]} PNG per "
                 f"row; median ms per frame per stage (share), frames/s = 1000 / sum; ratio score, "
                 f"L = {sequence_length}, consistency over {consistency} frames, observe leaves out the newest "
                 f"{exclude_recent} entries")
        with limit_threads(torch=threads, faiss=threads):
            for runtime in runtimes:
                for size in map_sizes:
                    try:
                        recognizer = PlaceRecognizer.from_checkpoint(checkpoint, runtime=runtime, threads=threads)
                    except TscmError as error:  # e.g. onnxruntime not installed
                        print_fn(f"  {runtime}: left out ({error})")
                        break
                    rows += _time_map(recognizer, size, runtime, images, sequence_length, consistency, seed, settings,
                                      exclude_recent)
                    for row in rows[-len(PIPELINES):]:
                        print_fn(format_row(row))
    return rows


def _time_map(recognizer, size: int, runtime: str, images: list[Path], sequence_length: int, consistency: int,
              seed: int, settings: dict, exclude_recent: int) -> list[StreamingRow]:
    """The `sequence`, `observe` and `observe-seq` rows of one map size with one recognizer."""
    map_descriptors = route_descriptors(size, recognizer.dim, seed + size)
    recognizer.add_descriptors(map_descriptors, np.arange(size), times=np.arange(size, dtype=np.float64))
    for length in (1, sequence_length):
        recognizer.index.set_threshold({"distance": 0.9, "score": "ratio", "exclusion": 5.0,
                                        "unit": "frame", "sequence_length": length})
    backend = recognizer.index.backend
    per_frame = []
    for path in images:
        timings: dict[str, float] = {}
        recognizer.query_sequence(path, 1, length=sequence_length, consistency=consistency, timings=timings)
        per_frame.append(timings)
    rows = [_row("sequence", size, backend, runtime, per_frame[len(per_frame) // 10:], settings)]
    for pipeline, length in (("observe", 1), ("observe-seq", sequence_length)):
        per_frame = []
        for path in images:
            timings = {}
            # An entry's time is its place in the map (the map's entries have times 0, 1, ...).
            recognizer.observe(path, time=float(recognizer.count), exclude_recent=exclude_recent, sequence=length,
                               consistency=consistency, timings=timings)
            per_frame.append(timings)
        rows.append(_row(pipeline, size, backend, runtime, per_frame[len(per_frame) // 10:], settings))
    return rows


def format_row(row: StreamingRow) -> str:
    stages = ", ".join(f"{stage} {ms:.3f} ({100 * row.share[stage]:.0f} %)" for stage, ms in row.stage_ms.items())
    return (f"  {row.pipeline:<11} {row.runtime:<5} map {row.map_size:>7,} ({row.backend}): {row.total_ms:.2f} ms/frame, "
            f"{row.frames_per_s:,.0f} frames/s; {stages}")

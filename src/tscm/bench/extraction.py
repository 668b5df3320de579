"""Extraction benchmark: descriptor ms per image per model, runtime and batch size, side by side;
and the accuracy check of each runtime (Recall@1 and top-1 agreement with eager float32).

Timing: the runtimes of one model and batch size take turns (a block of calls each, several
turns), so load from other processes hits them alike; the table gives the median and the minimum
over the timed calls, and the median process CPU time (all threads, spinning ones included) beside
the wall time. The speed-up compares medians. Each row also gives the model's multiply-adds per
image (float32 model, torch's FLOP counter), the GFLOP/s they amount to at the median time
(2 FLOP per multiply-add) and that as a fraction of the machine's fp32 matmul peak
(tscm.bench.machine; int8 rows can pass 100 %: their own peak is higher). Models without a
checkpoint (the paper presets) get random weights: speed
does not depend on the weights, accuracy does, so their agreement columns only say how far each
runtime moves descriptors, not what recall it keeps.

Runtimes: those of tscm.inference.runtimes, plus `onnx-auto` (onnx-int8 with precision "auto": the
graph its own quick timing keeps, shown in the precision column). The ONNX runtimes of a model
share one export (trace, quantisation), whose time each of their rows shows as "prep s".

Run through `tscm bench extraction` (and `tscm bench accuracy --checkpoint CKPT`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from tscm.bench.machine import gflops_fraction
from tscm.bench.settings import BENCH_RUNTIMES
from tscm.data.formats import load_placeset
from tscm.data.places import default_radius
from tscm.data.synthetic import resolve_path_or_synthetic
from tscm.errors import TscmError
from tscm.evaluation.extract import InputSpec, describe_placeset
from tscm.evaluation.ranking import rank_exact
from tscm.evaluation.recall import evaluate_descriptors
from tscm.inference.onnx_export import calibration_subset, export_graphs, rowwise_cosine
from tscm.inference.runtimes import OnnxDescriptorModel, RUNTIME_PRECISION, runtime_model
from tscm.machine import median_ms, time_turns
from tscm.models.checkpoint import load_checkpoint, model_fingerprint
from tscm.models.presets import build_model, list_presets, model_config_to_dict, multiply_adds_per_image
from tscm.threads import limit_threads

REFERENCE_RUNTIME = "torch"  # eager float32: speed-ups and agreement are relative to it
DEFAULT_RUNTIMES = BENCH_RUNTIMES
ONNX_PRECISION = {"onnx": "float32", "onnx-int8": "int8", "onnx-auto": "auto"}
NEEDS_CALIBRATION = ("onnx-int8", "onnx-auto")


@dataclass
class ExtractionRow:
    model: str
    runtime: str
    batch_size: int
    image_size: tuple[int, int]
    median_ms: float  # per image, median over timed calls
    min_ms: float  # per image, fastest call
    calls: int  # timed calls
    speedup: float  # reference median / this median, same model and batch size
    min_cosine: float  # lowest descriptor cosine against the reference on the timed batch
    prepare_s: float  # export / quantisation / conversion time (shared by a model's ONNX runtimes)
    median_cpu_ms: float = float("nan")  # per image, median process CPU time (all threads) of the timed calls
    precision: str = ""  # what ran (for onnx-auto: the graph it kept)
    multiply_adds: int = 0  # per image, float32 model (FLOPs / 2)
    gflops: float = float("nan")  # 2 · multiply_adds / median time per image
    peak_fraction: float = float("nan")  # gflops / the machine's fp32 matmul GFLOP/s (nan without a probe)
    auto_ms: dict[str, float] | None = None  # onnx-auto: the batch-1 timings its choice was made on


def model_and_meta(source: str) -> tuple[nn.Module, dict[str, Any]]:
    """A checkpoint directory, or a preset name (random weights, seed 0), as (float32 model, metadata)."""
    if Path(source).is_dir():
        return load_checkpoint(source)
    if source not in list_presets():
        raise TscmError(f"model {source!r}: expected a checkpoint directory or a preset ({', '.join(list_presets())})")
    torch.manual_seed(0)
    model = build_model(source).eval()
    config = model.config
    meta = {
        "preset": source, "role": model.role, "config": model_config_to_dict(config),
        "descriptor_dim": int(model.descriptor_dim), "image_size": list(config.image_size),
        "mean": list(config.mean), "std": list(config.std), "fingerprint": model_fingerprint(model),
    }
    return model, meta


def prepare_runtimes(model: nn.Module, meta: dict[str, Any], runtimes: Sequence[str], *, threads: int,
                     calibration_paths: Sequence[str | Path], exporter: str = "dynamo",
                     ) -> tuple[dict[str, nn.Module], dict[str, float]]:
    """({runtime: extractor}, {runtime: preparation seconds}); the ONNX runtimes share one export."""
    extractors: dict[str, nn.Module] = {}
    prepare_s: dict[str, float] = {}
    onnx_runtimes = [r for r in runtimes if r in ONNX_PRECISION]
    for runtime in runtimes:
        if runtime in ONNX_PRECISION:
            continue
        tic = time.perf_counter()
        extractors[runtime] = runtime_model(model, meta, runtime, threads=threads, calibration_paths=calibration_paths,
                                            exporter=exporter)
        prepare_s[runtime] = time.perf_counter() - tic
    if onnx_runtimes:
        tic = time.perf_counter()
        graphs = export_graphs(model, meta, [ONNX_PRECISION[r] for r in onnx_runtimes], exporter=exporter,
                               calibration_paths=calibration_paths, threads=threads)
        shared = time.perf_counter() - tic
        for runtime in onnx_runtimes:
            extractors[runtime] = OnnxDescriptorModel(graphs[ONNX_PRECISION[runtime]], threads)
            prepare_s[runtime] = shared
    return {runtime: extractors[runtime] for runtime in runtimes}, {runtime: prepare_s[runtime] for runtime in runtimes}


def _precision_of(runtime: str, extractor: nn.Module) -> tuple[str, dict[str, float] | None]:
    if isinstance(extractor, OnnxDescriptorModel):
        choice = extractor.meta.get("precision_choice")
        return extractor.meta["precision"], None if not choice else dict(choice["ms_per_image"])
    return RUNTIME_PRECISION[runtime], None


def bench_model(source: str, runtimes: Sequence[str], batch_sizes: Sequence[int], *, threads: int,
                calibration_paths: Sequence[str | Path], cycles: int, calls_per_block: int, budget_s: float,
                exporter: str = "dynamo", peak_gflops: float | None = None,
                print_fn: Callable[[str], None] = print) -> list[ExtractionRow]:
    """Rows for one model: every runtime at every batch size, reference first."""
    model, meta = model_and_meta(source)
    name = meta["preset"] if not Path(source).is_dir() else f"{meta['preset']} ({Path(source).name})"
    height, width = (int(s) for s in meta["image_size"])
    order = [REFERENCE_RUNTIME] + [r for r in runtimes if r != REFERENCE_RUNTIME]
    macs = int(multiply_adds_per_image(model))
    extractors, prepare_s = prepare_runtimes(model, meta, order, threads=threads, calibration_paths=calibration_paths,
                                             exporter=exporter)
    rows = []
    generator = torch.Generator().manual_seed(1)
    for batch_size in batch_sizes:
        images = torch.randn(batch_size, 3, height, width, generator=generator)
        with torch.inference_mode():
            outputs = {runtime: extractor(images).float().numpy() for runtime, extractor in extractors.items()}

            def call(extractor: nn.Module) -> Callable[[], Any]:
                return lambda: extractor(images)

            cpu_times: dict[str, list[float]] = {}
            times = time_turns({runtime: call(extractor) for runtime, extractor in extractors.items()},
                               cycles, calls_per_block, budget_s=budget_s, cpu_times=cpu_times)
        reference_ms = median_ms(times[REFERENCE_RUNTIME], batch_size)
        for runtime in order:
            runtime_ms = median_ms(times[runtime], batch_size)
            precision, auto_ms = _precision_of(runtime, extractors[runtime])
            gflops = 2.0 * macs / (runtime_ms / 1e3) / 1e9
            row = ExtractionRow(
                name, runtime, batch_size, (height, width), runtime_ms, min(times[runtime]) * 1e3 / batch_size,
                len(times[runtime]), reference_ms / runtime_ms,
                float(np.min(rowwise_cosine(outputs[REFERENCE_RUNTIME], outputs[runtime]))), prepare_s[runtime],
                median_cpu_ms=median_ms(cpu_times[runtime], batch_size), precision=precision,
                multiply_adds=macs, gflops=gflops,
                peak_fraction=gflops_fraction(macs, runtime_ms / 1e3, peak_gflops) if peak_gflops else float("nan"),
                auto_ms=auto_ms,
            )
            rows.append(row)
            print_fn(format_extraction_row(row))
    return rows


EXTRACTION_HEADER = (f"{'model':<28} {'runtime':<11} {'batch':>5} {'size':>7} {'median ms/img':>13} {'min ms/img':>10} "
                     f"{'CPU ms/img':>10} {'calls':>5} {'speed-up':>8} {'min cos':>8} {'prep s':>7} {'precision':<19} "
                     f"{'GMAC/img':>8} {'GFLOP/s':>7} {'% peak':>6}")


def format_extraction_row(row: ExtractionRow) -> str:
    size = f"{row.image_size[0]}×{row.image_size[1]}"
    return (f"{row.model:<28} {row.runtime:<11} {row.batch_size:>5} {size:>7} {row.median_ms:>13.2f} {row.min_ms:>10.2f} "
            f"{row.median_cpu_ms:>10.2f} {row.calls:>5} {row.speedup:>7.2f}× {row.min_cosine:>8.5f} {row.prepare_s:>7.1f} "
            f"{row.precision:<19} {row.multiply_adds / 1e9:>8.3f} {row.gflops:>7.1f} {100 * row.peak_fraction:>5.1f}%")


def bench_extraction(sources: Sequence[str], runtimes: Sequence[str] = DEFAULT_RUNTIMES,
                     batch_sizes: Sequence[int] = (1, 16), *, threads: int = 2,
                     calibration_paths: Sequence[str | Path] = (), cycles: int = 3, calls_per_block: int = 5,
                     budget_s: float = 60.0, exporter: str = "dynamo", peak_gflops: float | None = None,
                     print_fn: Callable[[str], None] = print) -> list[ExtractionRow]:
    """Time every runtime of every model at every batch size with `threads` threads; print and return the rows.

    `peak_gflops`: the machine's fp32 peak (tscm.bench.machine) the rows' efficiency is a fraction of.
    """
    check_runtimes(runtimes, calibration_paths)
    if any(b < 1 for b in batch_sizes):
        raise TscmError(f"batch sizes must be positive, got {list(batch_sizes)}")
    torch.set_num_threads(threads)
    print_fn(EXTRACTION_HEADER)
    rows: list[ExtractionRow] = []
    for source in sources:
        rows += bench_model(source, runtimes, batch_sizes, threads=threads, calibration_paths=calibration_paths,
                            cycles=cycles, calls_per_block=calls_per_block, budget_s=budget_s, exporter=exporter,
                            peak_gflops=peak_gflops, print_fn=print_fn)
    return rows


# ----- accuracy ---------------------------------------------------------------------------------


@dataclass
class AccuracyRow:
    runtime: str
    recall_at_1: float  # percent
    recall_delta: float  # points, this runtime minus the reference
    top1_agreement: float  # percent of queries whose nearest database image is the reference's
    min_cosine: float  # lowest database-descriptor cosine against the reference
    num_queries: int


def check_runtimes(runtimes: Sequence[str], calibration_paths: Sequence[str | Path]) -> None:
    """Refuse unknown runtimes, and int8 runtimes without calibration images."""
    unknown = [r for r in runtimes if r not in BENCH_RUNTIMES]
    if unknown:
        raise TscmError(f"runtimes {unknown}: expected some of {', '.join(BENCH_RUNTIMES)}")
    needing = [r for r in runtimes if r in NEEDS_CALIBRATION]
    if needing and not calibration_paths:
        raise TscmError(f"runtime {needing[0]} needs calibration images (--calibration DATA)")


def bench_accuracy(checkpoint: str | Path, placeset: Any, runtimes: Sequence[str] = DEFAULT_RUNTIMES, *,
                   radius: float | None = None, threads: int = 2, calibration_paths: Sequence[str | Path] = (),
                   batch_size: int = 32, print_fn: Callable[[str], None] = print) -> list[AccuracyRow]:
    """Recall@1 of the checkpoint on `placeset` with each runtime, against eager float32."""
    if radius is None:  # the data set's own default (25 m, ±1 frame; None for listed matches), as evaluate uses
        radius = default_radius(placeset.unit)
    model, meta = model_and_meta(str(checkpoint))
    order = [REFERENCE_RUNTIME] + [r for r in runtimes if r != REFERENCE_RUNTIME]
    check_runtimes(order, calibration_paths)
    extractors, _ = prepare_runtimes(model, meta, order, threads=threads, calibration_paths=calibration_paths)
    spec = InputSpec.of(meta)
    print_fn(f"accuracy of {meta['preset']} ({checkpoint}) on {placeset.name}/{placeset.split}, "
             f"radius {placeset.radius_text(radius)}")
    print_fn(f"{'runtime':<11} {'R@1 %':>7} {'ΔR@1':>6} {'top-1 agree %':>13} {'min cos':>8} {'queries':>7}")
    rows: list[AccuracyRow] = []
    reference: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    for runtime in order:
        extractor = extractors[runtime]
        with limit_threads(torch=threads):
            db, queries = describe_placeset(extractor, spec, placeset, batch_size=batch_size)
        result = evaluate_descriptors(placeset, db, queries, radius=radius, ns=(1,))
        top1 = rank_exact(db, queries, 1).top1
        if reference is None:
            reference = (db, top1, np.asarray(result.recall[1]))
        row = AccuracyRow(runtime, result.recall[1], result.recall[1] - float(reference[2]),
                          100.0 * float(np.mean(top1 == reference[1])),
                          float(np.min(rowwise_cosine(reference[0], db))), result.num_queries_evaluated)
        rows.append(row)
        print_fn(f"{row.runtime:<11} {row.recall_at_1:>7.2f} {row.recall_delta:>+6.2f} {row.top1_agreement:>13.1f} "
                 f"{row.min_cosine:>8.5f} {row.num_queries:>7}")
    return rows


def calibration_images(data: str | None, count: int) -> list[Path]:
    """`count` train-split database images of `data` (default: the synthetic demo city, generated on first use)."""
    placeset = placeset_or_demo_city(data, "train")
    return calibration_subset(placeset.db_paths, count)


def placeset_or_demo_city(data: str | None, split: str) -> Any:
    return load_placeset(resolve_path_or_synthetic(data or "synthetic:demo"), split=split)

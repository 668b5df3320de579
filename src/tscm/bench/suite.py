"""The `tscm bench` suite: every benchmark of tscm, run side by side in one process, printed and saved.

Parts: `extraction` (descriptor ms per image: teacher vs student, eager vs ONNX Runtime vs
quantised, batch 1 and 16), `accuracy` (Recall@1 of a checkpoint per runtime), `matching` (ms per
query per search back-end on synthetic 10k/250k descriptors, Recall@1 vs exact), `city` (the same
on descriptors of the synthetic city), `mining` (the batched mining refresh against the published
per-query loop), `training` (images per second through forward + backward of the presets the demo
trains), `streaming` (ms per frame of each stage of `query_sequence`, `observe` and `observe` with sequences
at 1k/10k/100k-entry maps, tscm.bench.streaming). Numbers go to bench.json and bench.md.

The suite first measures the machine (tscm.bench.machine: CPU, ISA flags, fp32 matmul GFLOP/s and
copy bandwidth with the chosen threads, load average), prints it and puts it in the report: every
extraction row is also given as a fraction of that fp32 peak, every matching row as bytes read per
query against the bandwidth. With a CUDA device, extraction and matching also get GPU rows
(tscm.bench.gpu); without one the report says why they are missing.
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from tscm.bench import gpu as gpu_bench
from tscm.bench.extraction import (NEEDS_CALIBRATION, bench_accuracy, bench_extraction, calibration_images,
                                   model_and_meta, placeset_or_demo_city)
from tscm.bench.machine import MachineProfile, probe_machine
from tscm.bench.matching import MatchingData, bench_matching, default_matching_configs, synthetic_matching_data
from tscm.bench.mining import benchmark_mining, format_mining
from tscm.bench.settings import BenchSettings
from tscm.bench.training import bench_training
from tscm.data.formats import load_placeset
from tscm.data.synthetic import resolve_path_or_synthetic
from tscm.evaluation.extract import InputSpec, describe_placeset
from tscm.fileio import atomic_group, check_output_folder, write_json_atomic, write_text_atomic
from tscm.threads import limit_threads

BENCH_JSON, BENCH_MD = "bench.json", "bench.md"
PQ_MIN_TRAIN = 39 * 256  # faiss warns below 39 training points per centroid; PQ codebooks have 256


def feasible_configs(num_db: int, dim: int) -> list[MatchingConfig]:
    """tscm.bench.matching's default configurations, kept or scaled down so that each can be trained on `num_db` vectors of `dim` dims.

    PCA is kept only when it reduces the dimension and has at least `pca_dim` vectors to fit; IVF
    lists are cut to about one per 39 vectors (faiss' advice), and IVF-PQ is left out under
    PQ_MIN_TRAIN vectors (faiss' minimum for its 256-centroid codebooks).
    """
    configs = []
    for config in default_matching_configs(num_db):
        params = dict(config.params)
        pca_dim = params.get("pca_dim")
        if pca_dim is not None and (pca_dim >= dim or pca_dim > num_db):
            if config.backend == "pca-flat":
                continue
            del params["pca_dim"]
        if config.backend == "ivfpq":
            lists_cap = max(1, num_db // 39)
            params["nlist"] = min(params["nlist"], 1 << (lists_cap.bit_length() - 1))
            params["nprobe"] = min(params["nprobe"], params["nlist"])
            if num_db < PQ_MIN_TRAIN or (params.get("pca_dim") or dim) % params["pq_m"]:
                continue
        configs.append(replace(config, label=_label(config.backend, params), params=params)
                       if params != config.params else config)
    return configs


def _label(backend: str, params: dict) -> str:
    """A configuration label in tscm.bench.matching's style, for scaled-down parameters."""
    reduce = f" pca{params['pca_dim']}" if params.get("pca_dim") else ""
    if backend == "hnsw":
        return f"hnsw{reduce} M{params['hnsw_m']} ef{params['ef_search']}"
    if backend == "ivfpq":
        return f"ivfpq{reduce} nlist{params['nlist']} m{params['pq_m']} np{params['nprobe']} rr{params['rerank']}"
    return f"{backend}{reduce}"


def _environment(threads: int) -> dict:
    import faiss

    return {"machine": platform.machine(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "threads": threads, "python": platform.python_version(),
            "torch": torch.__version__, "faiss": faiss.__version__,
            "note": "CPU timings; other processes may share the cores (the CPU-time columns are less affected)"}


def _city_data(settings: BenchSettings, print_fn: Callable[[str], None]):
    """MatchingData of the synthetic city's database and queries described by the chosen model, and its description."""
    root = resolve_path_or_synthetic(f"synthetic:{settings.city}", progress=False)
    placeset = load_placeset(root, split=settings.city_split)
    model, meta = model_and_meta(settings.checkpoint or "student-tiny")
    described_by = (f"checkpoint {settings.checkpoint} ({meta['preset']})" if settings.checkpoint
                    else "untrained student-tiny (random weights, seed 0)")
    print_fn(f"synthetic city '{settings.city}' {placeset.summary()}, described by {described_by}")
    db, queries = describe_placeset(model, InputSpec.of(meta), placeset, batch_size=32)
    positives = placeset.positives(settings.radius)
    keep = [i for i, hits in enumerate(positives) if len(hits)]
    name = f"city {settings.city}"
    data = MatchingData(name, db, np.ascontiguousarray(queries[keep]), [positives[i] for i in keep])
    info = {"name": name, "city": settings.city, "split": settings.city_split, "root": str(root),
            "described_by": described_by, "fingerprint": meta["fingerprint"], "descriptor_dim": int(db.shape[1]),
            "num_db": int(len(db)), "num_queries": int(len(queries)), "num_queries_evaluated": len(keep),
            "radius": settings.radius, "unit": placeset.unit}
    return data, info


def markdown_report(report: dict) -> str:
    """The benchmark as Markdown tables (same numbers as the JSON)."""
    environment = ", ".join(f"{key} {value}" for key, value in report["environment"].items())
    lines = ["# tscm bench", "", f"Environment: {environment}.", ""]
    machine = report.get("machine")
    if machine:
        lines += ["## Machine", "", _machine_line(machine) + ".", ""]
        lines += [f"Note: {note}." for note in machine.get("notes", [])] + ([""] if machine.get("notes") else [])
    if report.get("extraction"):
        lines += ["## Descriptor extraction (ms per image)", "",
                  "Efficiency: 2 × multiply-adds per image / median time, against the fp32 matmul peak above "
                  "(int8 rows may pass 100 %). CPU ms: process CPU time, all threads.", "",
                  "| model | runtime | batch | size | median ms/img | min ms/img | CPU ms/img | calls | speed-up | "
                  "min cos | prep s | precision | GMAC/img | GFLOP/s | % fp32 peak |",
                  "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|"]
        for row in report["extraction"]:
            lines.append(f"| {row['model']} | {row['runtime']} | {row['batch_size']} | "
                         f"{row['image_size'][0]}×{row['image_size'][1]} | {row['median_ms']:.2f} | {row['min_ms']:.2f} | "
                         f"{row['median_cpu_ms']:.2f} | {row['calls']} | {row['speedup']:.2f}× | {row['min_cosine']:.5f} | "
                         f"{row['prepare_s']:.1f} | {row['precision']} | {row['multiply_adds'] / 1e9:.3f} | "
                         f"{row['gflops']:.1f} | {100 * row['peak_fraction']:.1f} % |")
        lines.append("")
        lines += _int8_summary(report["extraction"])
    if report.get("accuracy"):
        lines += ["## Accuracy per runtime", "", "| runtime | R@1 % | ΔR@1 | top-1 agreement % | min cos | queries |",
                  "|---|---:|---:|---:|---:|---:|"]
        for row in report["accuracy"]:
            lines.append(f"| {row['runtime']} | {row['recall_at_1']:.2f} | {row['recall_delta']:+.2f} | "
                         f"{row['top1_agreement']:.1f} | {row['min_cosine']:.5f} | {row['num_queries']} |")
        lines.append("")
    if report.get("matching"):
        lines += ["## Matching (ms per query; Recall@1 against each data set's true matches)", ""]
        if report.get("city") is not None:
            city = report["city"]
            lines += [f"City data: {city['num_db']} database images, {city['num_queries_evaluated']} of "
                      f"{city['num_queries']} queries with a match within {city['radius']:g} m, "
                      f"described by {city['described_by']}.", ""]
        lines += ["Single queries and the batch take turns (rounds per row in the JSON). MB/query: estimated bytes "
                  "one query reads (tscm.bench.matching); GB/s: that over the single-query time; % bw: of the "
                  "one-thread copy bandwidth above (a memory-bound scan cannot pass ~100 %).", "",
                  "| data | configuration | build s | mem MB | 1q wall ms | 1q CPU ms | (n) | batch ms/q | CPU ms/q "
                  "| 1q / batch | R@1 % | ΔR@1 vs exact | MB/query | 1q GB/s | % bw |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for row in report["matching"]:
            ratio = row["single_ms"] / row["batched_ms"] if row["batched_ms"] > 0 else float("nan")
            lines.append(f"| {row['data']} | {row['label']} | {row['build_s']:.1f} | {row['memory_mb']:.1f} | "
                         f"{row['single_ms']:.3f} | {row['single_cpu_ms']:.3f} | {row['single_queries']} | "
                         f"{row['batched_ms']:.3f} | {row['batched_cpu_ms']:.3f} | {ratio:.1f}× | {row['recall_at_1']:.1f} | "
                         f"{row['recall_delta']:+.1f} | {row['bytes_per_query'] / 2**20:.2f} | {row['single_gb_s']:.1f} | "
                         f"{100 * row['bandwidth_fraction']:.0f} % |")
        lines.append("")
    lines += _gpu_markdown(report.get("gpu"))
    if report.get("training"):
        lines += ["## Training throughput (forward + backward + Adam step)", "",
                  "| preset | images/step | threads | median images/s | best images/s | median ms/step | MACs/image |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for row in report["training"]:
            lines.append(f"| {row['preset']} | {row['images_per_step']} | {row['threads']} | "
                         f"{row['median_images_per_s']:.0f} | {row['best_images_per_s']:.0f} | "
                         f"{row['median_step_ms']:.1f} | {row['multiply_adds'] / 1e6:.1f} M |")
        lines.append("")
    if report.get("mining"):
        m = report["mining"]
        lines += ["## Mining refresh (seconds; wall / process CPU)", "",
                  f"{m['num_db']} database, {m['num_queries']} queries, {m['dim']}-d: batched first refresh "
                  f"{m['batched_first_refresh_s']:.2f} / {m['batched_first_refresh_cpu_s']:.2f}; per-query loop "
                  f"(extrapolated from {m['loop_queries']} queries) {m['loop_refresh_extrapolated_s']:.2f} / "
                  f"{m['loop_refresh_extrapolated_cpu_s']:.2f}; {m['tuples_agreeing']} of {m['loop_tuples']} loop tuples "
                  "identical to the batched ones.", ""]
    if report.get("streaming"):
        lines += ["## Streaming, ms per frame by stage (share)", "",
                  "| pipeline | runtime | map | back-end | stages | ms/frame | frames/s |", "|---|---|---:|---|---|---:|---:|"]
        for row in report["streaming"]:
            stages = ", ".join(f"{stage} {ms:.3f} ({100 * row['share'][stage]:.0f} %)" for stage, ms in row["stage_ms"].items())
            lines.append(f"| {row['pipeline']} | {row.get('runtime', 'torch')} | {row['map_size']:,} | {row['backend']} | {stages} | "
                         f"{row['total_ms']:.2f} | {row['frames_per_s']:,.0f} |")
        lines.append("")
    return "\n".join(lines)


def _machine_line(machine: dict) -> str:
    return MachineProfile(**machine).line()


def _gpu_extraction(settings: BenchSettings, gpu: dict, print_fn) -> list[dict]:
    onnx_reason = gpu_bench.onnx_cuda_reason()
    if onnx_reason:
        gpu["notes"].append(f"ONNX Runtime CUDA rows skipped: {onnx_reason}")
    print_fn("GPU extraction (CUDA; eager fp32, fp16 autocast, ONNX Runtime CUDA provider): ms per image")
    print_fn(gpu_bench.GPU_EXTRACTION_HEADER)
    rows = gpu_bench.bench_gpu_extraction(settings.models, settings.batch_sizes, cycles=settings.cycles,
                                          calls=settings.calls, onnx=onnx_reason is None,
                                          exporter="torchscript" if settings.quick else "dynamo", print_fn=print_fn)
    return [{**asdict(row), "image_size": list(row.image_size)} for row in rows]


def _int8_summary(rows: list[dict]) -> list[str]:
    """Per model and batch size: eager fp32, ONNX fp32, ONNX int8 and what precision auto kept, side by side."""
    wanted = ("torch", "onnx", "onnx-int8", "onnx-auto")
    groups: dict[tuple[str, int], dict[str, dict]] = {}
    for row in rows:
        if row["runtime"] in wanted:
            groups.setdefault((row["model"], row["batch_size"]), {})[row["runtime"]] = row
    if not any("onnx-int8" in group for group in groups.values()):
        return []
    lines = ["### int8 against float32 (ms per image, median; speed-up vs eager fp32)", "",
             "| model | batch | eager fp32 | ONNX fp32 | ONNX int8 | int8 vs eager | int8 vs ONNX fp32 | auto kept "
             "| auto's own timing fp32 / int8 (batch 1) |",
             "|---|---:|---:|---:|---:|---:|---:|---|---|"]

    def ms(group: dict, runtime: str) -> str:
        return f"{group[runtime]['median_ms']:.2f}" if runtime in group else "–"

    for (model, batch), group in groups.items():
        eager, fp32, int8 = (group[r]["median_ms"] if r in group else None for r in ("torch", "onnx", "onnx-int8"))
        auto = group.get("onnx-auto")
        auto_ms = (auto or {}).get("auto_ms") or {}
        cells = [model, str(batch), ms(group, "torch"), ms(group, "onnx"), ms(group, "onnx-int8"),
                 f"{eager / int8:.2f}×" if eager and int8 else "–", f"{fp32 / int8:.2f}×" if fp32 and int8 else "–",
                 auto["precision"] if auto else "–",
                 f"{auto_ms['float32']:.1f} / {auto_ms['int8']:.1f} ms" if auto_ms else "–"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def _gpu_markdown(gpu: dict | None) -> list[str]:
    if not gpu:
        return []
    if not gpu.get("available"):
        return ["## GPU", "", f"GPU rows skipped: {gpu.get('reason')}.", ""]
    lines = ["## GPU", "", f"Device {gpu.get('device')}."]
    lines += [f"Note: {note}." for note in gpu.get("notes", [])]
    lines.append("")
    if gpu.get("extraction"):
        lines += ["| model | runtime | batch | median ms/img | min ms/img | calls | speed-up vs cuda-fp32 | GFLOP/s |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]
        for row in gpu["extraction"]:
            lines.append(f"| {row['model']} | {row['runtime']} | {row['batch_size']} | {row['median_ms']:.3f} | "
                         f"{row['min_ms']:.3f} | {row['calls']} | {row['speedup']:.2f}× | {row['gflops']:.1f} |")
        lines.append("")
    if gpu.get("matching"):
        lines += ["| data | space of | engine | 1q ms | batch ms/q | R@1 % |", "|---|---|---|---:|---:|---:|"]
        for row in gpu["matching"]:
            lines.append(f"| {row['data']} | {row['label']} | {row['engine']} | {row['single_ms']:.3f} | "
                         f"{row['batched_ms']:.4f} | {row['recall_at_1']:.1f} |")
        lines.append("")
    return lines


def run_bench(settings: BenchSettings, out_dir: str | Path | None = None,
              print_fn: Callable[[str], None] = print) -> dict:
    """Run the chosen parts, print their tables, and write bench.json / bench.md to `out_dir`; returns the report."""
    settings.check()
    if out_dir is not None:  # checked now, not after an hour of timing
        models = [model for model in settings.models if Path(model).exists()]
        check_output_folder("--out", out_dir, (BENCH_JSON, BENCH_MD), {
            "the --checkpoint input": settings.checkpoint, "the --accuracy-data input": settings.accuracy_data,
            "a --models checkpoint": models})
    report: dict = {"settings": asdict(settings), "environment": _environment(settings.threads)}
    small = dict(matmul_size=512, copy_mb=32, repeats=2) if settings.quick else {}
    machine = probe_machine(settings.threads, **small)
    report["machine"] = machine.to_json()
    print_fn(machine.line())
    for note in machine.notes:
        print_fn(f"note: {note}")
    reason = gpu_bench.unavailable_reason() if settings.gpu else "not requested (--no-gpu)"
    report["gpu"] = {"available": reason is None, "reason": reason, "device": machine.gpu, "notes": []}
    if reason is not None and ({"extraction", "matching", "city"} & set(settings.parts)):
        print_fn(f"GPU rows skipped: {reason}")
    # numpy's BLAS on one thread: PCA fitting (index build) and mining products, see tscm.threads.
    with limit_threads(blas=1):
        if "extraction" in settings.parts:
            report["extraction"] = _extraction(settings, print_fn, machine.fp32_gflops)
            if reason is None:
                report["gpu"]["extraction"] = _gpu_extraction(settings, report["gpu"], print_fn)
        if "accuracy" in settings.parts:
            report["accuracy"] = _accuracy(settings, print_fn)
        if "matching" in settings.parts or "city" in settings.parts:
            report["matching"] = _matching(settings, report, print_fn, machine.copy_gb_s_1thread)
    if "mining" in settings.parts:
        report["mining"] = _mining(settings, print_fn)
    if "training" in settings.parts:
        rounds = 1 if settings.quick else 3
        report["training"] = [asdict(row) for row in bench_training(
            settings.training_presets, threads=settings.threads, steps=settings.training_steps, rounds=rounds,
            seed=settings.seed, kernels=settings.training_kernels, print_fn=print_fn)]
    if "streaming" in settings.parts:
        from tscm.bench.streaming import bench_streaming

        report["streaming"] = [asdict(row) for row in bench_streaming(
            preset=settings.streaming_preset, map_sizes=settings.streaming_sizes, frames=settings.streaming_frames,
            threads=settings.threads, seed=settings.seed, runtimes=settings.streaming_runtimes,
            exclude_recent=settings.streaming_exclude_recent, print_fn=print_fn)]
    if out_dir is not None:
        with atomic_group():
            write_json_atomic(Path(out_dir) / BENCH_JSON, report)
            write_text_atomic(Path(out_dir) / BENCH_MD, markdown_report(report))
        print_fn(f"wrote {Path(out_dir) / 'bench.json'} and {Path(out_dir) / 'bench.md'}")
    return report


def _calibration(settings: BenchSettings) -> list:
    needed = any(runtime in NEEDS_CALIBRATION for runtime in settings.runtimes)
    return calibration_images(settings.accuracy_data, 64) if needed else []


def _extraction(settings: BenchSettings, print_fn, peak_gflops: float | None = None) -> list[dict]:
    calibration = _calibration(settings)
    print_fn(f"extraction: {settings.threads} threads, ms per image; speed-up and descriptor cosine vs eager float32"
             + (f"; int8 calibrated on {len(calibration)} images" if calibration else ""))
    rows = bench_extraction(settings.models, settings.runtimes, settings.batch_sizes, threads=settings.threads,
                            calibration_paths=calibration, cycles=settings.cycles, calls_per_block=settings.calls,
                            budget_s=settings.budget, exporter="torchscript" if settings.quick else "dynamo",
                            peak_gflops=peak_gflops, print_fn=print_fn)
    return [{**asdict(row), "image_size": list(row.image_size)} for row in rows]


def _accuracy(settings: BenchSettings, print_fn) -> list[dict]:
    placeset = placeset_or_demo_city(settings.accuracy_data, settings.accuracy_split)
    rows = bench_accuracy(settings.checkpoint, placeset, settings.runtimes, threads=settings.threads,
                          calibration_paths=_calibration(settings), print_fn=print_fn)
    return [asdict(row) for row in rows]


def _matching(settings: BenchSettings, report: dict, print_fn, bandwidth_gb_s: float | None = None) -> list[dict]:
    datasets = []
    if "matching" in settings.parts:
        for size in settings.sizes:
            queries = min(settings.queries, -(-size // 4))
            datasets.append(lambda size=size, queries=queries: synthetic_matching_data(
                size, queries, dim=settings.dim, seed=settings.seed))
    if "city" in settings.parts:
        def city():
            data, report["city"] = _city_data(settings, print_fn)
            return data
        datasets.append(city)
    print_fn(f"matching: {settings.threads} threads; {settings.rounds} rounds of single queries timed one at a time "
             f"(median of up to {settings.single} in all), each followed by all queries in one batch; Recall@1 vs exact "
             "search on the same data; MB/query estimated, % bw of the one-thread copy bandwidth")
    current_dim = {}

    def generated():
        # bench_matching asks for the configurations right after taking each data set.
        for make in datasets:
            data = make()
            current_dim["dim"] = data.database.shape[1]
            yield data

    gpu_rows: list | None = [] if report.get("gpu", {}).get("available") else None
    rows = bench_matching(generated(), lambda num_db: feasible_configs(num_db, current_dim["dim"]),
                          num_single=settings.single, threads=settings.threads, rounds=settings.rounds,
                          bandwidth_gb_s=bandwidth_gb_s, gpu_rows=gpu_rows, print_fn=print_fn)
    if gpu_rows is not None:
        report["gpu"]["matching"] = [asdict(row) for row in gpu_rows]
    return [asdict(row) for row in rows]


def _mining(settings: BenchSettings, print_fn) -> dict:
    result = benchmark_mining(settings.mining_db, settings.mining_queries, settings.mining_dim,
                              settings.mining_loop_queries, "float32", settings.seed)
    print_fn(format_mining(result))
    return result

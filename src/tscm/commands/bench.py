"""`tscm bench`: descriptor extraction and place matching timed side by side on this machine; JSON + Markdown."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    from tscm.bench.matching import MatchingConfig

NAME = "bench"
HELP = ("time descriptor extraction (teacher vs student, eager vs ONNX Runtime vs quantised, batch 1 and 16) and "
        "matching per search back-end (10k/250k synthetic descriptors and the synthetic city), with Recall@1 vs exact")
RUNTIMES = ("torch", "torch-bf16", "torch-int8", "onnx", "onnx-int8")  # mirror of tscm.deploy.onnx_export.RUNTIMES
PQ_MIN_TRAIN = 39 * 256  # faiss warns below 39 training points per centroid; PQ codebooks have 256
QUICK = {"sizes": [1000], "queries": 40, "single": 10, "dim": 512, "models": ["student-tiny"],
         "runtimes": ["torch", "torch-int8"], "batch_sizes": [1, 4], "cycles": 1, "calls": 2, "city": "tiny"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=None, metavar="DIR", help="write bench.json and bench.md here")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test in seconds: tiny sizes, student-tiny, tiny city (numbers are not meaningful)")
    parser.add_argument("--threads", type=int, default=2, help="torch / ONNX Runtime / faiss threads (default: 2)")
    parts = parser.add_argument_group("parts")
    parts.add_argument("--skip-extraction", action="store_true", help="leave out the extraction timing")
    parts.add_argument("--skip-matching", action="store_true", help="leave out matching on synthetic descriptors")
    parts.add_argument("--skip-city", action="store_true", help="leave out matching on descriptors of the synthetic city")
    extraction = parser.add_argument_group("extraction")
    extraction.add_argument("--models", nargs="+", default=None,
                            help="checkpoint directories or presets (default: student-paper teacher-paper, 224×224)")
    extraction.add_argument("--runtimes", nargs="+", choices=RUNTIMES, default=None, help="default: all")
    extraction.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="default: 1 16")
    extraction.add_argument("--cycles", type=int, default=None, help="turns of every runtime (default: 3)")
    extraction.add_argument("--calls", type=int, default=None, help="timed calls per turn (default: 5)")
    extraction.add_argument("--budget", type=float, default=60.0, help="seconds of timing per model and batch size")
    matching = parser.add_argument_group("matching")
    matching.add_argument("--sizes", type=int, nargs="+", default=None,
                          help="synthetic database sizes (default: 10000 250000)")
    matching.add_argument("--dim", type=int, default=None, help="synthetic descriptor dimension (default: 2048)")
    matching.add_argument("--queries", type=int, default=None, help="queries per synthetic database (default: 1000)")
    matching.add_argument("--single", type=int, default=None, help="queries timed one at a time (default: 200)")
    matching.add_argument("--seed", type=int, default=0)
    city = parser.add_argument_group("synthetic city")
    city.add_argument("--checkpoint", default=None,
                      help="model describing the city (default: an untrained student-tiny, random weights seed 0)")
    city.add_argument("--city", default=None, help="synthetic city preset (default: demo)")
    city.add_argument("--city-split", default="test", help="split whose database and queries are matched")
    city.add_argument("--radius", type=float, default=25.0, help="metres for a correct match (default: 25)")


def _settings(args: argparse.Namespace) -> dict:
    """Every option with the --quick or normal default filled in."""
    defaults = {"sizes": [10_000, 250_000], "queries": 1000, "single": 200, "dim": 2048,
                "models": ["student-paper", "teacher-paper"], "runtimes": list(RUNTIMES), "batch_sizes": [1, 16],
                "cycles": 3, "calls": 5, "city": "demo"}
    if args.quick:
        defaults.update(QUICK)
    settings = {name: getattr(args, name) if getattr(args, name) is not None else value
                for name, value in defaults.items()}
    for name in ("threads", "budget", "seed", "checkpoint", "city_split", "radius", "quick"):
        settings[name] = getattr(args, name)
    return settings


def feasible_configs(num_db: int, dim: int) -> list[MatchingConfig]:
    """tscm.bench.matching's default configurations, kept or scaled down so that each can be trained on `num_db` vectors of `dim` dims.

    PCA is kept only when it reduces the dimension and has at least `pca_dim` vectors to fit; IVF
    lists are cut to about one per 39 vectors (faiss' advice), and IVF-PQ is left out under
    PQ_MIN_TRAIN vectors (faiss' minimum for its 256-centroid codebooks).
    """
    from dataclasses import replace

    from tscm.bench.matching import default_matching_configs

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


@contextlib.contextmanager
def numpy_blas_threads(count: int) -> Iterator[bool]:
    """Limit numpy's bundled OpenBLAS to `count` threads in the block; yields whether it could.

    Why: PCA fitting (tscm.deploy.index) runs numpy's eigh; on this 2-core machine shared with other work,
    two OpenBLAS threads made a 512×512 eigh take 7.8 s instead of 0.05 s on one (2048×2048: 45 s vs 2.3 s).
    """
    import ctypes
    import glob

    import numpy

    found = glob.glob(str(Path(numpy.__file__).parent.parent / "numpy.libs" / "libscipy_openblas64_*.so"))
    library = ctypes.CDLL(found[0]) if found else None
    if library is None or not hasattr(library, "scipy_openblas_set_num_threads64_"):
        yield False
        return
    previous = library.scipy_openblas_get_num_threads64_()
    library.scipy_openblas_set_num_threads64_(count)
    try:
        yield True
    finally:
        library.scipy_openblas_set_num_threads64_(previous)


def _environment(threads: int) -> dict:
    import os
    import platform

    import faiss
    import torch

    return {"machine": platform.machine(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "threads": threads, "python": platform.python_version(),
            "torch": torch.__version__, "faiss": faiss.__version__,
            "note": "CPU timings; other processes may share the cores (the CPU-time columns are less affected)"}


def _city_data(settings: dict, print_fn):
    """MatchingData of the synthetic city's database and queries described by the chosen model, and its description."""
    import numpy as np

    from tscm.bench.matching import MatchingData
    from tscm.bench.extraction import model_and_meta
    from tscm.data.formats import load_placeset
    from tscm.data.synthetic.city import ensure_synthetic_city
    from tscm.evaluation.recall import extract_descriptors

    root = ensure_synthetic_city(settings["city"], progress=False)
    placeset = load_placeset(root, split=settings["city_split"])
    source = settings["checkpoint"] or "student-tiny"
    model, meta = model_and_meta(source)
    described_by = (f"checkpoint {settings['checkpoint']} ({meta['preset']})" if settings["checkpoint"]
                    else "untrained student-tiny (random weights, seed 0)")
    print_fn(f"synthetic city '{settings['city']}' {placeset.summary()}, described by {described_by}")
    options = dict(image_size=meta["image_size"], mean=meta["mean"], std=meta["std"], batch_size=32, progress=False)
    db = extract_descriptors(model, placeset.db_paths, **options)
    queries = extract_descriptors(model, placeset.query_paths, **options)
    positives = placeset.positives(settings["radius"])
    keep = [i for i, hits in enumerate(positives) if len(hits)]
    name = f"city {settings['city']}"
    data = MatchingData(name, db, np.ascontiguousarray(queries[keep]), [positives[i] for i in keep])
    info = {"name": name, "city": settings["city"], "split": settings["city_split"], "root": str(root),
            "described_by": described_by, "fingerprint": meta["fingerprint"], "descriptor_dim": int(db.shape[1]),
            "num_db": int(len(db)), "num_queries": int(len(queries)), "num_queries_evaluated": len(keep),
            "radius_m": settings["radius"]}
    return data, info


def markdown_report(report: dict) -> str:
    """The benchmark as Markdown tables (same numbers as the JSON)."""
    environment = ", ".join(f"{key} {value}" for key, value in report["environment"].items())
    lines = ["# tscm bench", "", f"Environment: {environment}.", ""]
    if report["extraction"] is not None:
        lines += ["## Descriptor extraction (ms per image)", "",
                  "| model | runtime | batch | size | median ms/img | min ms/img | calls | speed-up | min cos | prep s |",
                  "|---|---|---:|---|---:|---:|---:|---:|---:|---:|"]
        for row in report["extraction"]:
            lines.append(f"| {row['model']} | {row['runtime']} | {row['batch_size']} | "
                         f"{row['image_size'][0]}×{row['image_size'][1]} | {row['median_ms']:.2f} | {row['min_ms']:.2f} | "
                         f"{row['calls']} | {row['speedup']:.2f}× | {row['min_cosine']:.5f} | {row['prepare_s']:.1f} |")
        lines.append("")
    if report["matching"]:
        lines += ["## Matching (ms per query; Recall@1 against each data set's true matches)", ""]
        if report["city"] is not None:
            city = report["city"]
            lines += [f"City data: {city['num_db']} database images, {city['num_queries_evaluated']} of "
                      f"{city['num_queries']} queries with a match within {city['radius_m']:g} m, "
                      f"described by {city['described_by']}.", ""]
        lines += ["| data | configuration | build s | mem MB | 1q wall ms | 1q CPU ms | (n) | batch ms/q | CPU ms/q "
                  "| R@1 % | ΔR@1 vs exact |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for row in report["matching"]:
            lines.append(f"| {row['data']} | {row['label']} | {row['build_s']:.1f} | {row['memory_mb']:.1f} | "
                         f"{row['single_ms']:.3f} | {row['single_cpu_ms']:.3f} | {row['single_queries']} | "
                         f"{row['batched_ms']:.3f} | {row['batched_cpu_ms']:.3f} | {row['recall_at_1']:.1f} | "
                         f"{row['recall_delta']:+.1f} |")
        lines.append("")
    return "\n".join(lines)


def run_bench(settings: dict, *, skip_extraction: bool, skip_matching: bool, skip_city: bool,
              out_dir: str | None, print_fn=print) -> dict:
    """Run the chosen parts, print their tables, and write bench.json / bench.md to `out_dir`; returns the report."""
    from dataclasses import asdict

    from tscm.bench.matching import bench_matching, synthetic_matching_data
    from tscm.bench.extraction import bench_extraction, calibration_images
    from tscm.errors import TscmError
    from tscm.fileio import write_json_atomic, write_text_atomic

    if skip_extraction and skip_matching and skip_city:
        raise TscmError("every part is skipped; nothing to run")
    if any(size < 2 for size in settings["sizes"]) or settings["queries"] < 1 or settings["dim"] < 2:
        raise TscmError(f"--sizes, --queries, --dim: expected positive sizes, got {settings['sizes']}, "
                        f"{settings['queries']}, {settings['dim']}")
    report: dict = {"settings": settings, "environment": _environment(settings["threads"]),
                    "extraction": None, "matching": [], "city": None}
    if not skip_extraction:
        runtimes = settings["runtimes"]
        calibration = calibration_images(None, 64) if "onnx-int8" in runtimes else []
        print_fn(f"extraction: {settings['threads']} threads, ms per image; speed-up and descriptor cosine vs eager "
                 f"float32" + (f"; int8 calibrated on {len(calibration)} images of the demo city" if calibration else ""))
        rows = bench_extraction(settings["models"], runtimes, settings["batch_sizes"], threads=settings["threads"],
                                calibration_paths=calibration, cycles=settings["cycles"],
                                calls_per_block=settings["calls"], budget_s=settings["budget"],
                                exporter="torchscript" if settings["quick"] else "dynamo", print_fn=print_fn)
        report["extraction"] = [{**asdict(row), "image_size": list(row.image_size)} for row in rows]
    datasets = []
    if not skip_matching:
        for size in settings["sizes"]:
            queries = min(settings["queries"], -(-size // 4))
            datasets.append(lambda size=size, queries=queries: synthetic_matching_data(
                size, queries, dim=settings["dim"], seed=settings["seed"]))
    if not skip_city:
        def city():
            data, report["city"] = _city_data(settings, print_fn)
            return data
        datasets.append(city)
    if datasets:
        print_fn(f"matching: {settings['threads']} threads; single queries timed one at a time (median of up to "
                 f"{settings['single']}), then all queries in one batch; Recall@1 vs exact search on the same data")
        current_dim = {}

        def generated():
            # bench_matching asks for the configurations right after taking each data set.
            for make in datasets:
                data = make()
                current_dim["dim"] = data.database.shape[1]
                yield data

        rows = bench_matching(generated(), lambda num_db: feasible_configs(num_db, current_dim["dim"]),
                              num_single=settings["single"], threads=settings["threads"], print_fn=print_fn)
        report["matching"] = [asdict(row) for row in rows]
    if out_dir is not None:
        write_json_atomic(Path(out_dir) / "bench.json", report)
        write_text_atomic(Path(out_dir) / "bench.md", markdown_report(report))
        print_fn(f"wrote {Path(out_dir) / 'bench.json'} and {Path(out_dir) / 'bench.md'}")
    return report


def run(args: argparse.Namespace) -> int:
    with numpy_blas_threads(1) as limited:
        if limited:
            print("numpy BLAS limited to 1 thread for this run (PCA fitting; see numpy_blas_threads)")
        run_bench(_settings(args), skip_extraction=args.skip_extraction, skip_matching=args.skip_matching,
                  skip_city=args.skip_city, out_dir=args.out)
    return 0

"""GPU rows of `tscm bench`: the extraction and matching benchmarks on a CUDA device, when there is one.

Extraction on the device: eager float32, eager under float16 autocast, and ONNX Runtime's CUDA
execution provider when onnxruntime-gpu is installed (the exported float32 graph). Matching on
the device: faiss-gpu's exact flat index when faiss has GPU support, otherwise an exact torch
search (one matrix product, then top-k) on the device; vectors are PCA-reduced first where the
CPU configuration is (`pca_dim`), the projection made on the CPU index so both search the same space.

Every timed call ends with `torch.cuda.synchronize()` (the device runs asynchronously). Without a
device each function returns no rows and `unavailable_reason()` says why; the code takes a
`device` argument so its logic can also run on the CPU (the tests do that; their numbers mean
nothing).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from tscm.bench.extraction import model_and_meta
from tscm.evaluation.recall import recall_at_1
from tscm.inference.onnx_export import INPUT_NAME, OUTPUT_NAME, export_model, make_session
from tscm.machine import median_ms, time_turns
from tscm.models.presets import multiply_adds_per_image


def unavailable_reason() -> str | None:
    """None when torch sees a CUDA device, else why the GPU rows are skipped."""
    try:
        import torch
    except ImportError:  # torch is a dependency; be explicit all the same
        return "torch is not importable"
    if not torch.cuda.is_available():
        return (f"no CUDA device visible to torch {torch.__version__} (torch.cuda.is_available() is False; "
                f"CUDA build: {torch.version.cuda or 'none'})")
    return None


def onnx_cuda_reason() -> str | None:
    """None when onnxruntime offers the CUDA execution provider, else why ONNX GPU rows are skipped."""
    try:
        import onnxruntime as ort
    except ImportError:
        return "onnxruntime is not installed"
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return (f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (install onnxruntime-gpu); "
                f"providers: {', '.join(ort.get_available_providers())}")
    return None


def faiss_gpu_reason() -> str | None:
    """None when faiss has GPU support and sees a device, else why faiss-gpu rows fall back to torch."""
    try:
        import faiss
    except ImportError:
        return "faiss is not installed"
    if not hasattr(faiss, "StandardGpuResources"):
        return f"faiss {faiss.__version__} is a CPU build (install faiss-gpu)"
    if faiss.get_num_gpus() < 1:
        return "faiss sees no GPU"
    return None


def _synchronize(device: Any) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class GpuExtractionRow:
    model: str
    runtime: str  # cuda-fp32, cuda-fp16 (autocast), onnx-cuda
    device: str
    batch_size: int
    image_size: tuple[int, int]
    median_ms: float  # per image
    min_ms: float
    calls: int
    speedup: float  # cuda-fp32 median / this median
    multiply_adds: int
    gflops: float  # 2 · multiply_adds / median time


def bench_gpu_extraction(sources: Sequence[str], batch_sizes: Sequence[int], *, device: Any = "cuda",
                         cycles: int = 3, calls: int = 5, onnx: bool = True, exporter: str = "dynamo",
                         print_fn: Callable[[str], None] = print) -> list[GpuExtractionRow]:
    """Rows per model and batch size: eager fp32, fp16 autocast and (if available) ORT's CUDA provider."""
    import torch

    device = torch.device(device)
    rows: list[GpuExtractionRow] = []
    onnx_reason = onnx_cuda_reason() if onnx and device.type == "cuda" else "not requested on this device"
    if onnx and onnx_reason:
        print_fn(f"GPU extraction: ONNX Runtime rows skipped: {onnx_reason}")
    for source in sources:
        model, meta = model_and_meta(source)
        macs = int(multiply_adds_per_image(model))
        height, width = (int(s) for s in meta["image_size"])
        on_device = copy.deepcopy(model).to(device).eval()
        session = None
        if onnx and onnx_reason is None:
            data = export_model(model, meta, exporter=exporter)
            session = make_session(data, providers=("CUDAExecutionProvider", "CPUExecutionProvider"))
        for batch_size in batch_sizes:
            images = torch.randn(batch_size, 3, height, width, generator=torch.Generator().manual_seed(1)).to(device)
            functions: dict[str, Callable[[], Any]] = {}

            def eager() -> Any:
                with torch.inference_mode():
                    return on_device(images)

            def half() -> Any:
                with torch.inference_mode(), torch.autocast(device.type, dtype=torch.float16):
                    return on_device(images)

            functions["cuda-fp32"], functions["cuda-fp16"] = eager, half
            if session is not None:
                host = images.cpu().numpy()
                functions["onnx-cuda"] = lambda host=host: session.run([OUTPUT_NAME], {INPUT_NAME: host})
            times = time_turns(functions, cycles, calls, synchronize=lambda: _synchronize(device))
            reference = median_ms(times["cuda-fp32"], batch_size) / 1e3
            for runtime, values in times.items():
                median = median_ms(values, batch_size) / 1e3
                row = GpuExtractionRow(meta["preset"], runtime, str(device), batch_size, (height, width),
                                       median * 1e3, min(values) * 1e3 / batch_size, len(values), reference / median,
                                       macs, 2.0 * macs / median / 1e9)
                rows.append(row)
                print_fn(format_gpu_extraction_row(row))
    return rows


def format_gpu_extraction_row(row: GpuExtractionRow) -> str:
    return (f"{row.model:<20} {row.runtime:<10} {row.device:<8} {row.batch_size:>5} {row.median_ms:>10.3f} "
            f"{row.min_ms:>10.3f} {row.calls:>5} {row.speedup:>7.2f}× {row.gflops:>9.1f}")


GPU_EXTRACTION_HEADER = (f"{'model':<20} {'runtime':<10} {'device':<8} {'batch':>5} {'median ms':>10} "
                         f"{'min ms':>10} {'calls':>5} {'speed-up':>8} {'GFLOP/s':>9}")


@dataclass
class GpuMatchingRow:
    data: str
    num_db: int
    label: str  # the CPU configuration whose search space is used
    engine: str  # faiss-gpu flat, or torch flat
    device: str
    single_ms: float  # median wall ms of one query (synchronised)
    batched_ms: float  # wall ms per query of one batch of all queries
    recall_at_1: float


class _TorchFlat:
    """Exact squared-L2 top-1 on a device: one matrix product, then the minimum."""

    def __init__(self, vectors: np.ndarray, device: Any) -> None:
        import torch

        self.device = torch.device(device)
        self.vectors = torch.from_numpy(np.ascontiguousarray(vectors)).to(self.device)
        self.norms = (self.vectors * self.vectors).sum(dim=1)

    def search(self, queries: np.ndarray) -> np.ndarray:
        import torch

        q = torch.from_numpy(np.ascontiguousarray(queries)).to(self.device)
        scores = self.norms[None, :] - 2.0 * (q @ self.vectors.T)
        return torch.argmin(scores, dim=1).cpu().numpy()


class _FaissGpuFlat:
    def __init__(self, vectors: np.ndarray, device: Any) -> None:
        import faiss

        self.resources = faiss.StandardGpuResources()
        cpu = faiss.IndexFlatL2(vectors.shape[1])
        cpu.add(np.ascontiguousarray(vectors))
        self.index = faiss.index_cpu_to_gpu(self.resources, 0, cpu)

    def search(self, queries: np.ndarray) -> np.ndarray:
        return self.index.search(np.ascontiguousarray(queries), 1)[1][:, 0]


def bench_gpu_matching(data: Any, index: Any, label: str, *, device: Any = "cuda", num_single: int = 100,
                       use_faiss: bool = True, print_fn: Callable[[str], None] = print) -> GpuMatchingRow:
    """Exact search on the device in the space of CPU index `index` (a tscm PlaceIndex built on `data`)."""
    import torch

    vectors = index.vectors()
    queries = index.to_search_space(data.queries)
    engine_reason = faiss_gpu_reason() if use_faiss and torch.device(device).type == "cuda" else "not requested"
    if engine_reason is None:
        engine, name = _FaissGpuFlat(vectors, device), "faiss-gpu flat"
    else:
        engine, name = _TorchFlat(vectors, device), "torch flat"
    engine.search(queries[:1])
    _synchronize(device)
    single = []
    for row in range(min(num_single, len(queries))):
        tic = time.perf_counter()
        engine.search(queries[row : row + 1])
        _synchronize(device)
        single.append(time.perf_counter() - tic)
    tic = time.perf_counter()
    top1 = engine.search(queries)
    _synchronize(device)
    batched = (time.perf_counter() - tic) / len(queries)
    row = GpuMatchingRow(data.name, len(data.database), label, name, str(torch.device(device)),
                         median_ms(single), batched * 1e3, recall_at_1(top1, data.query_positives))
    print_fn(format_gpu_matching_row(row))
    return row


GPU_MATCHING_HEADER = (f"{'data':<18} {'space of':<40} {'engine':<15} {'device':<8} {'1q ms':>8} {'batch ms/q':>10} "
                       f"{'R@1 %':>6}")


def format_gpu_matching_row(row: GpuMatchingRow) -> str:
    return (f"{row.data:<18} {row.label:<40} {row.engine:<15} {row.device:<8} {row.single_ms:>8.3f} "
            f"{row.batched_ms:>10.4f} {row.recall_at_1:>6.1f}")

"""What this machine can do at most: the yardsticks `tscm bench` puts beside every timing.

Absolute times move several-fold between machines (and with the load other processes put on a
shared one), so each benchmark row is also given as a fraction of this machine's own peak:

- CPU model, logical CPUs, the ISA extensions that decide which kernels run (AVX2, AVX-512,
  VNNI, BF16/FP16, AMX...), torch's CPU capability, and the load average when probed;
- fp32 GFLOP/s: the best of a few `torch.mm` calls on two n×n float32 matrices (2·n³ FLOP each)
  with the benchmark's thread count (the ceiling extraction rows are compared with);
- copy bandwidth: the best of a few copies of a large float32 buffer, counting the bytes read and
  written (2 × size per copy), on one thread (numpy; what a single query's scan has) and on the
  benchmark's threads (torch).

Best-of, not median: the yardstick is what the machine can do, and load only slows it down; the
medians are kept too, and their gap to the best says how disturbed the run was.
"""

from __future__ import annotations

import os
import statistics
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch

from tscm.machine import cpu_model, isa_flags, load_average, time_turns
from tscm.threads import limit_threads

@dataclass
class MachineProfile:
    cpu_model: str
    logical_cpus: int
    isa_flags: list[str]  # the ISA_FLAGS this CPU has
    torch_cpu_capability: str  # the kernel level torch dispatches to (e.g. AVX512, AVX2, DEFAULT)
    threads: int
    load_average: list[float]  # 1, 5, 15 minutes, when probed (empty where the OS has none)
    matmul_size: int
    fp32_gflops: float  # best of the matmul calls, on `threads` threads
    fp32_gflops_median: float
    copy_mb: int
    copy_gb_s: float  # best copy, on `threads` threads (torch), bytes read + written per second
    copy_gb_s_median: float
    copy_gb_s_1thread: float  # best copy on one thread (numpy)
    copy_gb_s_1thread_median: float
    gpu: str | None = None  # CUDA device name when torch sees one
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        """One line for the console and the report."""
        load = "/".join(f"{value:.1f}" for value in self.load_average) or "n/a"
        flags = " ".join(self.isa_flags) or "none detected"
        gpu = f"; GPU {self.gpu}" if self.gpu else ""
        return (f"machine: {self.cpu_model}, {self.logical_cpus} logical CPUs, ISA {flags} (torch: "
                f"{self.torch_cpu_capability}); {self.threads} threads: fp32 matmul {self.fp32_gflops:.0f} GFLOP/s "
                f"(median {self.fp32_gflops_median:.0f}), copy {self.copy_gb_s:.1f} GB/s (median "
                f"{self.copy_gb_s_median:.1f}); 1 thread: copy {self.copy_gb_s_1thread:.1f} GB/s (median "
                f"{self.copy_gb_s_1thread_median:.1f}); load average {load}{gpu}")

    def to_json(self) -> dict:
        return asdict(self)


def _best_and_median(function: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Seconds per call: the fastest and the median of `repeats` timed calls (after one untimed)."""
    times = time_turns({"call": function}, cycles=1, calls_per_block=repeats)["call"]
    return min(times), statistics.median(times)


def measure_matmul_gflops(threads: int, size: int = 2048, repeats: int = 5) -> tuple[float, float]:
    """(best, median) fp32 GFLOP/s of torch.mm on two size×size matrices with `threads` threads."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator)
    b = torch.randn(size, size, generator=generator)
    out = torch.empty(size, size)
    with limit_threads(torch=threads), torch.inference_mode():
        best, median = _best_and_median(lambda: torch.mm(a, b, out=out), repeats)
    flop = 2.0 * size**3
    return flop / best / 1e9, flop / median / 1e9


def measure_copy_bandwidth(threads: int, megabytes: int = 256, repeats: int = 5) -> dict[str, float]:
    """Copy bandwidth in GB/s (bytes read + written): best and median on one thread and on `threads`."""
    count = megabytes * 2**20 // 4
    source = np.ones(count, dtype=np.float32)
    target = np.empty_like(source)
    moved = 2.0 * source.nbytes / 1e9
    best_1, median_1 = _best_and_median(lambda: np.copyto(target, source), repeats)
    source_t, target_t = torch.from_numpy(source), torch.from_numpy(target)
    with limit_threads(torch=threads):
        best_n, median_n = _best_and_median(lambda: target_t.copy_(source_t), repeats)
    return {"copy_gb_s": moved / best_n, "copy_gb_s_median": moved / median_n,
            "copy_gb_s_1thread": moved / best_1, "copy_gb_s_1thread_median": moved / median_1}


def cuda_device_name() -> str | None:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # a broken CUDA install must not stop a CPU benchmark
        return None


def probe_machine(threads: int, *, matmul_size: int = 2048, copy_mb: int = 256, repeats: int = 5) -> MachineProfile:
    """Measure this machine (a few seconds: `repeats` matmuls and copies)."""
    load = load_average() or []
    best, median = measure_matmul_gflops(threads, matmul_size, repeats)
    copy = measure_copy_bandwidth(threads, copy_mb, repeats)
    notes = []
    if load and load[0] > (os.cpu_count() or 1) * 0.5:
        notes.append(f"the machine was busy when probed (1-minute load {load[0]:.1f} on {os.cpu_count()} CPUs): "
                     "other processes share the cores, timings are slower and noisier than on an idle machine")
    return MachineProfile(
        cpu_model=cpu_model(), logical_cpus=os.cpu_count() or 1, isa_flags=isa_flags(),
        torch_cpu_capability=str(torch.backends.cpu.get_cpu_capability()), threads=threads,
        load_average=load, matmul_size=matmul_size, fp32_gflops=best,
        fp32_gflops_median=median, copy_mb=copy_mb, gpu=cuda_device_name(), notes=notes, **copy,
    )


def gflops_fraction(multiply_adds: float, seconds: float, peak_gflops: float) -> float:
    """Fraction of the fp32 peak reached by `multiply_adds` done in `seconds` (2 FLOP per multiply-add)."""
    if seconds <= 0 or peak_gflops <= 0:
        return float("nan")
    return 2.0 * multiply_adds / seconds / 1e9 / peak_gflops

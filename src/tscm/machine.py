"""Facts about the machine a timing was taken on, and the one way tscm times repeated calls.

Every timing tscm records (model card, ONNX precision `auto`, `tscm bench`) names the CPU and the
load average next to it, and every repeated-call timing goes through `time_turns`; its statistic
is the median (`median_ms`): load from other processes only slows calls down, and the median
keeps one disturbed call from moving the figure.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Sequence

# ISA extensions worth naming, in the order printed (names as in /proc/cpuinfo).
ISA_FLAGS = (
    "sse4_2", "avx", "fma", "f16c", "avx2", "avx_vnni", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
    "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16", "asimd", "sve", "sve2",
)


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return ""


def cpu_model() -> str:
    """The CPU's marketing name (/proc/cpuinfo, else platform), e.g. 'Intel(R) Xeon(R) Processor'."""
    for line in _cpuinfo().splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model", "Hardware") and value.strip():
            return value.strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def isa_flags() -> list[str]:
    """The ISA_FLAGS this CPU reports (Linux /proc/cpuinfo 'flags' or 'Features'); [] where unknown."""
    present: set[str] = set()
    for line in _cpuinfo().splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            present.update(value.split())
    return [flag for flag in ISA_FLAGS if flag in present]


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (2 decimals), or None where the OS has none."""
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def time_turns(functions: dict[str, Callable[[], Any]], cycles: int, calls_per_block: int, *,
               budget_s: float = float("inf"), synchronize: Callable[[], None] | None = None,
               cpu_times: dict[str, list[float]] | None = None) -> dict[str, list[float]]:
    """Seconds per call of each function, timed in blocks of consecutive calls, the functions taking turns.

    Each block starts with one untimed call: thread pools of the previous function may still be
    spinning, and the first call after a switch pays for it. Stops after `cycles` turns of every
    function, or after a turn once `budget_s` has passed. `synchronize` (e.g. a CUDA synchronise) runs
    after every call, inside the timed span. `cpu_times`, if given, receives the process CPU seconds of
    each timed call (all threads).
    """
    sync = synchronize or (lambda: None)
    times: dict[str, list[float]] = {name: [] for name in functions}
    if cpu_times is not None:
        cpu_times.update({name: [] for name in functions})
    started = time.perf_counter()
    for _ in range(cycles):
        for name, function in functions.items():
            function()
            sync()
            for _ in range(calls_per_block):
                tic, cpu_tic = time.perf_counter(), time.process_time()
                function()
                sync()
                times[name].append(time.perf_counter() - tic)
                if cpu_times is not None:
                    cpu_times[name].append(time.process_time() - cpu_tic)
        if time.perf_counter() - started > budget_s:
            break
    return times


def median_ms(seconds: Sequence[float], per: int = 1) -> float:
    """The statistic of every timing: median milliseconds, per item when one call handles `per` items."""
    return 1e3 * statistics.median(seconds) / per

"""CPU thread counts of torch, faiss (OpenMP) and numpy's BLAS, set for a block and restored after.

Timings and single-query latency depend on them: faiss spreads even one query over its threads,
and on a shared machine numpy's OpenBLAS threads can spin-wait far longer than the work takes
(an eigh when fitting PCA). Every place in tscm that changes a thread count uses `limit_threads`
or `blas_threads`, so the previous settings always come back.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import glob
from pathlib import Path
from typing import Iterator

import numpy


@functools.lru_cache(maxsize=1)
def numpy_openblas():
    """numpy's bundled OpenBLAS (ctypes handle, looked up once), or None when numpy uses another BLAS."""
    found = glob.glob(str(Path(numpy.__file__).parent.parent / "numpy.libs" / "libscipy_openblas64_*.so"))
    if not found:
        return None
    library = ctypes.CDLL(found[0])
    return library if hasattr(library, "scipy_openblas_set_num_threads64_") else None


@contextlib.contextmanager
def blas_threads(count: int) -> Iterator[None]:
    """numpy's BLAS on `count` threads for the block, then the previous count again.

    A no-op when it already runs on `count` threads or numpy has another BLAS; cheap enough for
    every single-query search (the library is looked up once).
    """
    library = numpy_openblas()
    previous = library.scipy_openblas_get_num_threads64_() if library is not None else count
    if previous == count:
        yield
        return
    library.scipy_openblas_set_num_threads64_(int(count))
    try:
        yield
    finally:
        library.scipy_openblas_set_num_threads64_(previous)


@contextlib.contextmanager
def limit_threads(torch: int | None = None, faiss: int | None = None, blas: int | None = None) -> Iterator[None]:
    """Run the block with these thread counts (None or 0: leave that library alone).

    `blas` applies to numpy's bundled OpenBLAS when numpy has one; otherwise it is ignored.
    """
    restore = []
    try:
        if torch:
            import torch as torch_module

            restore.append((torch_module.set_num_threads, torch_module.get_num_threads()))
            torch_module.set_num_threads(int(torch))
        if faiss:
            import faiss as faiss_module

            restore.append((faiss_module.omp_set_num_threads, faiss_module.omp_get_max_threads()))
            faiss_module.omp_set_num_threads(int(faiss))
        with blas_threads(int(blas)) if blas else contextlib.nullcontext():
            yield
    finally:
        for setter, previous in reversed(restore):
            setter(previous)


def all_threads(count: int | None) -> contextlib.AbstractContextManager:
    """`limit_threads` with the same count for torch and faiss (the usual setting of a command)."""
    return limit_threads(torch=count, faiss=count)

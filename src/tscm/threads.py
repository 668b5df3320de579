"""CPU thread counts of torch, faiss (OpenMP) and numpy's BLAS, set for a block and restored after.

Timings and single-query latency depend on them: faiss spreads even one query over its threads,
and on a shared 2-core machine numpy's OpenBLAS threads spin-waited for seconds in an eigh that
takes 50 ms on one thread (PCA fitting). Every place in tscm that changes a thread count uses
`limit_threads`, so the previous settings always come back.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator


def _numpy_openblas():
    """numpy's bundled OpenBLAS (ctypes handle), or None when numpy uses another BLAS."""
    import ctypes
    import glob

    import numpy

    found = glob.glob(str(Path(numpy.__file__).parent.parent / "numpy.libs" / "libscipy_openblas64_*.so"))
    if not found:
        return None
    library = ctypes.CDLL(found[0])
    return library if hasattr(library, "scipy_openblas_set_num_threads64_") else None


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
        if blas:
            library = _numpy_openblas()
            if library is not None:
                restore.append((library.scipy_openblas_set_num_threads64_, library.scipy_openblas_get_num_threads64_()))
                library.scipy_openblas_set_num_threads64_(int(blas))
        yield
    finally:
        for setter, previous in reversed(restore):
            setter(previous)


def all_threads(count: int | None) -> contextlib.AbstractContextManager:
    """`limit_threads` with the same count for torch and faiss (the usual setting of a command)."""
    return limit_threads(torch=count, faiss=count)

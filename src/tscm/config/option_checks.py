"""Checks of the options commands share: a torch device, seeds, and upper bounds of count options."""

from __future__ import annotations

import re
import sys
from typing import Any

from tscm.errors import TscmError, excerpt


def check_device(name: str, what: str = "--device") -> str:
    """`name` if it is a torch device this machine has (cpu, cuda, cuda:N), else TscmError naming it."""
    if name == "cpu":
        return name
    if not re.fullmatch(r"cuda(:\d+)?", str(name)):
        raise TscmError(f"{what}: expected cpu, cuda or cuda:N, got {name!r}")
    import torch

    if not torch.cuda.is_available():
        raise TscmError(f"{what} {name}: CUDA is not available on this machine; use cpu")
    index = int(name.split(":")[1]) if ":" in name else 0
    if index >= torch.cuda.device_count():
        raise TscmError(f"{what} {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return name


# Seeds go to Python's, NumPy's and torch's generators; all three take 0..2**32-1 (NumPy's legacy seed range).
MAX_SEED = 2**32 - 1


def check_seed(value: Any, what: str = "seed") -> int:
    """`value` as a seed in 0..MAX_SEED, or TscmError naming `what` (a negative or huge seed otherwise fails
    deep inside NumPy or torch, after a run folder was made)."""
    if isinstance(value, bool) or not isinstance(value, (int, np_integer())):
        raise TscmError(f"{what}: expected an integer seed in 0..{MAX_SEED}, got {excerpt(value)}")
    if not 0 <= value <= MAX_SEED:
        raise TscmError(f"{what}: expected an integer seed in 0..{MAX_SEED}, got {excerpt(int(value))}")
    return int(value)


# Upper bounds of the count options every command shares (by their argparse names): beyond them a value is
# a slip of the keyboard, and it would start that many threads or processes, or put that many images in
# one batch, before anything failed. Lower bounds are each command's own (0 or 1, with its meaning).
OPTION_LIMITS = {"threads": 1024, "jobs": 64, "workers": 256, "num_workers": 256, "batch_size": 1 << 16, "batch_sizes": 1 << 16}


def check_option_limits(options: Any) -> None:
    """Refuse a count option (OPTION_LIMITS: threads, jobs, workers, batch sizes) above its bound, naming it; `options`
    is an argparse Namespace (or anything with those attributes)."""
    for name, limit in OPTION_LIMITS.items():
        value = getattr(options, name, None)
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(item, int) and not isinstance(item, bool) and item > limit:
                raise TscmError(f"--{name.replace('_', '-')}: expected at most {limit}, got {excerpt(item)}")


def np_integer() -> type:
    """NumPy's integer base type when NumPy is loaded (a seed read from a file may be one), else int."""
    numpy = sys.modules.get("numpy")
    return numpy.integer if numpy is not None else int

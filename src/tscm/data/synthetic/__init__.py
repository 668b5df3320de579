"""The built-in synthetic city: street plans (`city`), the ray-cast renderer (`render`), and the
`synthetic:<preset>` data spec that generates a city on first use and reuses it after."""

from __future__ import annotations

import os
from pathlib import Path

from tscm.data.synthetic.city import PRESETS, ensure_synthetic_city
from tscm.errors import TscmError

SYNTHETIC_PREFIX = "synthetic:"


def is_synthetic_spec(data: str) -> bool:
    return str(data).startswith(SYNTHETIC_PREFIX)


def resolve_path_or_synthetic(data: str | os.PathLike, *, seed: int = 0,
                              cache_dir: str | os.PathLike | None = None, progress: bool = True) -> Path:
    """The path of a data set: `synthetic:<preset>` generates the built-in city on first use (cached
    in `cache_dir`, default ~/.cache/tscm) and reuses it after; anything else must exist."""
    text = str(data)
    if not is_synthetic_spec(text):
        path = Path(text)
        if not text or not path.exists():
            raise TscmError(f"data {text!r}: no such file or folder (or use synthetic:<preset>, e.g. synthetic:demo)")
        return path

    preset = text[len(SYNTHETIC_PREFIX):] or "demo"
    if preset not in PRESETS:
        raise TscmError(f"data {text}: unknown synthetic preset {preset!r}; expected one of {', '.join(PRESETS)}")
    return ensure_synthetic_city(preset, seed=seed, cache_dir=cache_dir, progress=progress)

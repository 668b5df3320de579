"""Reader for ground-truth `.npz` files: coordinates (and optionally image paths) without a `.mat`.

Keys: `utmDb` and `utmQ` (coordinates in metres, 2×N as in the Pittsburgh files or N×2; a 2×2
array is read as 2×N), `posDistThr` (positive, metres), and optionally `dbImageFns` / `qImageFns`
(string arrays of paths, relative to the .npz's folder or absolute). The file is read with
`allow_pickle=False`, so path arrays must be plain string arrays, not object arrays.

Without a path array, that role has no images: its paths are placeholders
`<file.npz>.no-images/database/000000` (or `/query/...`), which `is_placeholder_path` recognises,
so such a set can evaluate precomputed descriptors but cannot feed a model.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from tscm.data.places import PlaceSet
from tscm.errors import TscmError
from tscm.fileio import real_path

PLACEHOLDER_SUFFIX = ".no-images"


def is_placeholder_path(path: str | Path) -> bool:
    """True for the stand-in path of an image a ground-truth .npz does not name."""
    return Path(path).parent.parent.name.endswith(".npz" + PLACEHOLDER_SUFFIX)


def _coordinates(array: np.ndarray, npz_path: Path, key: str) -> np.ndarray:
    if array.dtype.kind not in "fiu":
        raise TscmError(f"{npz_path}: '{key}' must be numeric UTM metres, got {array.dtype}")
    if array.ndim == 2 and array.shape[0] == 2:
        return array.T.astype(np.float64)
    if array.ndim == 2 and array.shape[1] == 2:
        return array.astype(np.float64)
    raise TscmError(f"{npz_path}: '{key}' must have shape 2×N or N×2, got {array.shape}")


def _paths(contents, key: str, count: int, npz_path: Path, role: str) -> list[Path]:
    if key not in contents:
        stand_in = Path(os.path.abspath(npz_path)).with_name(npz_path.name + PLACEHOLDER_SUFFIX) / role
        return [stand_in / f"{i:06d}" for i in range(count)]
    names = contents[key]
    if names.dtype.kind not in "US":
        raise TscmError(f"{npz_path}: '{key}' must be an array of strings, got {names.dtype}")
    names = names.reshape(-1)
    if len(names) != count:
        raise TscmError(f"{npz_path}: '{key}' has {len(names)} paths but its coordinates have {count} rows")
    base = real_path(npz_path).parent
    return [Path(os.path.abspath(base / str(n))) for n in names.astype(str)]


def read_ground_truth_npz(npz_path: str | Path, split: str = "test") -> PlaceSet:
    """Read a ground-truth .npz (format in this module's docstring); named after the file."""
    npz_path = Path(npz_path)
    if not npz_path.is_file():
        raise TscmError(f"{npz_path}: ground-truth file not found")
    try:
        contents = dict(np.load(npz_path, allow_pickle=False))
    except (ValueError, OSError, zipfile.BadZipFile) as error:
        raise TscmError(f"{npz_path}: not a readable .npz without pickled objects: {error}") from None
    missing = [k for k in ("utmDb", "utmQ", "posDistThr") if k not in contents]
    if missing:
        raise TscmError(f"{npz_path}: missing key(s) {missing}; found {sorted(contents)}")
    threshold = contents["posDistThr"]
    if threshold.dtype.kind not in "fiu" or threshold.size != 1 or not 0 < float(threshold.reshape(-1)[0]) < float("inf"):
        raise TscmError(f"{npz_path}: 'posDistThr' must be one positive finite number of metres")
    db_xy = _coordinates(contents["utmDb"], npz_path, "utmDb")
    query_xy = _coordinates(contents["utmQ"], npz_path, "utmQ")
    db_paths = _paths(contents, "dbImageFns", len(db_xy), npz_path, "database")
    query_paths = _paths(contents, "qImageFns", len(query_xy), npz_path, "query")
    try:
        return PlaceSet(name=npz_path.stem, split=split, db_paths=db_paths, query_paths=query_paths,
                        db_xy=db_xy, query_xy=query_xy)
    except TscmError as error:  # name the file, not only the set (e.g. a NaN coordinate)
        raise TscmError(f"{npz_path}: {error}") from None

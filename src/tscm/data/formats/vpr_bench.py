"""Reader for the VPR-Bench layout, used by many public benchmarks (Gardens Point, ESSEX3IN1, SPEDTest…).

Layout::

    <root>/ref/*.jpg|jpeg|png      the database
    <root>/query/*.jpg|jpeg|png    the queries
    <root>/ground_truth_new.npy    one row per query: [query_index, [matching ref indices…]]

Indices count from 0 into each folder's image files sorted by name (plain string order, so
names should be zero-padded, as the published sets are; other files are ignored). Ground truth
is explicit: a query's true matches are exactly the listed ones, and a query may list none.
Every query index must appear exactly once and every index must lie within its file list.

`ground_truth_new.npy` is normally a pickled NumPy object array (rows are lists or 1-D arrays).
It is never handed to `np.load(allow_pickle=True)`: its header is parsed here and the payload is
unpickled by an unpickler that can only rebuild plain NumPy arrays, dtypes, numbers, lists and
tuples; a file naming any other global is refused before anything in it runs. A plain integer
array of shape N×(1+M) is accepted too, row = [query_index, match_1, …, match_M] (M matches for
every query). VPR-Bench sets have a single split; the split argument only labels the set.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import numpy.lib.format as npy_format

from tscm.data.places import PlaceSet
from tscm.errors import TscmError, excerpt
from tscm.fileio import stat_regular

try:  # NumPy ≥ 2 moved the array internals to numpy._core
    from numpy._core import multiarray as _multiarray
except ImportError:  # pragma: no cover - NumPy 1.x
    from numpy.core import multiarray as _multiarray

REF_FOLDER = "ref"
QUERY_FOLDER = "query"
GROUND_TRUTH_FILE = "ground_truth_new.npy"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# Far above a real ground truth (a few bytes per match), far below what would exhaust memory.
MAX_GROUND_TRUTH_BYTES = 256 << 20
# Matches listed in all rows together. A pickle can name one list from every row (a memo reference costs
# two bytes), so a small file can list billions; a real ground truth lists a few per query.
MAX_GROUND_TRUTH_MATCHES = 10_000_000
# What pickled NumPy arrays refer to, under the module names NumPy 1.x and 2.x write. Nothing
# here runs code from the file: _reconstruct makes an empty ndarray, scalar a number from bytes.
_ALLOWED_GLOBALS = {
    (module, name): obj
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name, obj in (("_reconstruct", _multiarray._reconstruct), ("scalar", _multiarray.scalar))
} | {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}


class _RefusedGlobal(Exception):
    pass


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals NumPy needs to rebuild plain arrays."""

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise _RefusedGlobal(f"{module}.{name}") from None

    def persistent_load(self, pid):
        raise _RefusedGlobal(f"persistent id {excerpt(pid)}")


def is_vpr_bench_root(path: Path) -> bool:
    return (path / REF_FOLDER).is_dir() and (path / QUERY_FOLDER).is_dir() and (path / GROUND_TRUTH_FILE).is_file()


def load_npy_without_code(npy_path: Path) -> np.ndarray:
    """The array in a .npy file; a pickled (object) payload may rebuild arrays and numbers only."""
    size = stat_regular(npy_path, "ground-truth file").st_size
    if size > MAX_GROUND_TRUTH_BYTES:
        raise TscmError(f"{npy_path}: {size} bytes; a ground-truth file larger than {MAX_GROUND_TRUTH_BYTES} bytes is "
                        "not read")
    try:
        with open(npy_path, "rb") as handle:
            version = npy_format.read_magic(handle)
            if version == (1, 0):
                shape, _, dtype = npy_format.read_array_header_1_0(handle)
            elif version == (2, 0):
                shape, _, dtype = npy_format.read_array_header_2_0(handle)
            else:
                major, minor = version
                raise TscmError(f"{npy_path}: unsupported .npy format version {major}.{minor} (expected 1.0 or 2.0)")
            if not dtype.hasobject:
                handle.seek(0)
                return np.load(handle, allow_pickle=False)
            try:
                array = _ArrayOnlyUnpickler(handle).load()
            except _RefusedGlobal as refused:
                raise TscmError(
                    f"{npy_path}: refused to unpickle {refused}: only NumPy arrays, numbers, lists and tuples are allowed"
                ) from None
            except Exception as error:  # a damaged pickle can fail in any way; none of it ran foreign code
                raise TscmError(f"{npy_path}: damaged pickled array: {type(error).__name__}: {excerpt(str(error))}") from None
    except ValueError as error:  # bad magic or header
        raise TscmError(f"{npy_path}: not a .npy file: {error}") from None
    except OSError as error:
        raise TscmError(f"{npy_path}: cannot read: {error}") from None
    if not isinstance(array, np.ndarray) or array.shape != shape:
        raise TscmError(f"{npy_path}: the pickled payload is not the {shape} array its header announces")
    return array


def _index(value, npy_path: Path, row: int, what: str, count: int) -> int:
    """`value` as an index into a list of `count` images; an error naming the row otherwise."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TscmError(f"{npy_path}: row {row}: {what}: expected an integer index, got {excerpt(value)}")
    if not 0 <= value < count:
        raise TscmError(f"{npy_path}: row {row}: {what} {excerpt(value)} is outside 0..{count - 1}")
    return int(value)


def _rows(array: np.ndarray, npy_path: Path) -> list[tuple[object, object]]:
    """(query index, matches) per row, from an object array of pairs or an N×(1+M) integer array."""
    if array.dtype.kind in "iu":
        if array.ndim != 2 or array.shape[1] < 1:
            raise TscmError(
                f"{npy_path}: an integer ground-truth array must be N×(1+M) rows [query, matches…], got shape {array.shape}"
            )
        return [(row[0], row[1:]) for row in array]
    if array.dtype != object:
        raise TscmError(f"{npy_path}: expected rows [query_index, [ref indices…]], got an array of {array.dtype}")
    if array.ndim == 2 and array.shape[1] == 2:
        return [(row[0], row[1]) for row in array]
    if array.ndim == 1:
        rows = []
        for number, row in enumerate(array):
            if not isinstance(row, (list, tuple, np.ndarray)) or len(row) != 2:
                raise TscmError(f"{npy_path}: row {number}: expected [query_index, [ref indices…]], got {excerpt(row)}")
            rows.append((row[0], row[1]))
        return rows
    raise TscmError(
        f"{npy_path}: expected N rows [query_index, [ref indices…]], got an object array of shape {array.shape}"
    )


def _check_match_count(rows: list[tuple[object, object]], npy_path: Path) -> None:
    """Refuse rows that list more than MAX_GROUND_TRUTH_MATCHES matches together, counted before any is
    read (rows sharing one list would otherwise expand it once per row)."""
    total = 0
    for row, (_, refs) in enumerate(rows):
        sized = isinstance(refs, (list, tuple)) or (isinstance(refs, np.ndarray) and refs.ndim >= 1)
        total += len(refs) if sized else 1  # len only: converting a list could expand what it nests
        if total > MAX_GROUND_TRUTH_MATCHES:
            raise TscmError(f"{npy_path}: rows 0..{row} list more than {MAX_GROUND_TRUTH_MATCHES} matches in all "
                            "(rows that share one list repeat it); a ground truth lists each query's true matches")


def read_ground_truth(npy_path: Path, num_queries: int, num_db: int) -> list[np.ndarray]:
    """Each query's true matches (ref indices), in query order, from `ground_truth_new.npy`."""
    rows = _rows(load_npy_without_code(npy_path), npy_path)
    if len(rows) != num_queries:
        raise TscmError(f"{npy_path}: {len(rows)} rows for {num_queries} query images (one row per query expected)")
    _check_match_count(rows, npy_path)
    matches: list[np.ndarray | None] = [None] * num_queries
    for row, (query, refs) in enumerate(rows):
        query = _index(query, npy_path, row, "query index", num_queries)
        if matches[query] is not None:
            raise TscmError(f"{npy_path}: row {row}: query index {query} appears a second time")
        if not (isinstance(refs, (list, tuple)) or (isinstance(refs, np.ndarray) and refs.ndim == 1)):
            raise TscmError(f"{npy_path}: row {row}: expected a list of ref indices, got {excerpt(refs)}")
        matches[query] = np.asarray([_index(r, npy_path, row, "ref index", num_db) for r in refs], dtype=np.int64)
    # len(rows) == num_queries and no index twice, so every query has its row.
    return [m for m in matches if m is not None]


def _images(folder: Path) -> list[Path]:
    paths = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise TscmError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    return paths


def read_vpr_bench(root: str | Path, split: str = "test") -> PlaceSet:
    """Read `<root>/{ref,query}/` and `<root>/ground_truth_new.npy` (format in this module's docstring)."""
    root = Path(os.path.realpath(root))  # realpath: a symbolic link loop is reported below, not raised
    if not is_vpr_bench_root(root):
        raise TscmError(f"{root}: expected {REF_FOLDER}/, {QUERY_FOLDER}/ and {GROUND_TRUTH_FILE} (VPR-Bench layout)")
    db_paths = _images(root / REF_FOLDER)
    query_paths = _images(root / QUERY_FOLDER)
    ground_truth = read_ground_truth(root / GROUND_TRUTH_FILE, len(query_paths), len(db_paths))
    return PlaceSet(
        name=root.name,
        split=split,
        db_paths=db_paths,
        query_paths=query_paths,
        db_xy=None,
        query_xy=None,
        unit="explicit",
        ground_truth=ground_truth,
    )

"""Reader for Pittsburgh-style `.mat` structure files (`dbStruct`), as used by pitts30k/pitts250k.

Layout: `<root>/database/<dbImageFns[i]>` and `<root>/query/<qImageFns[j]>` (some copies use
`<root>/queries_real/`). The structure file is `<root>/<name>_<split>.mat` or
`<root>/datasets/<name>_<split>.mat`. Images are not opened here.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from tscm.data.places import PlaceSet
from tscm.errors import TscmError
from tscm.fileio import real_path

# Field order of the published structure files; readers address fields by name, this order is
# what writers (the synthetic city, the tests) must produce.
DBSTRUCT_FIELDS = (
    "whichSet",
    "dbImageFns",
    "utmDb",
    "qImageFns",
    "utmQ",
    "numImages",
    "numQueries",
    "posDistThr",
    "posDistSqThr",
    "nonTrivPosDistSqThr",
)
QUERY_FOLDERS = ("query", "queries_real")
_YAW_PATTERN = re.compile(r"_yaw(\d+)")


def find_structure_files(root: Path, split: str, name: str | None = None) -> list[Path]:
    """All `<name>_<split>.mat` files in `root` or `root/datasets` (any name when `name` is None)."""
    stem = f"{name}_{split}.mat" if name else f"*_{split}.mat"
    found: list[Path] = []
    for folder in (root, root / "datasets"):
        if folder.is_dir():
            found.extend(sorted(p for p in folder.glob(stem) if p.is_file()))
    return found


def dataset_root(mat_path: Path) -> Path:
    """The folder that holds `database/`: the .mat's folder, or the one above `datasets/`."""
    folder = real_path(mat_path).parent
    return folder.parent if folder.name == "datasets" else folder


def yaw_heading(relative_path: str) -> float | None:
    """Heading in degrees from a Pittsburgh name such as `000/000000_pitch1_yaw3.jpg` ((K-1)*30)."""
    match = _YAW_PATTERN.search(Path(relative_path).name)
    return None if match is None else (int(match.group(1)) - 1) * 30.0


def _headings(relative_paths: list[str]) -> np.ndarray | None:
    """Headings when every name carries `_yaw<K>`, otherwise None (a partial set is no use for mining)."""
    values = [yaw_heading(p) for p in relative_paths]
    if not values or any(v is None for v in values):
        return None
    return np.asarray(values, dtype=np.float64)


def _load_dbstruct(mat_path: Path):
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    if not mat_path.is_file():
        raise TscmError(f"{mat_path}: structure file not found")
    try:
        contents = loadmat(str(mat_path), squeeze_me=False, struct_as_record=True)
    except NotImplementedError as error:  # MATLAB v7.3 files are HDF5, which loadmat cannot read
        raise TscmError(f"{mat_path}: unsupported .mat version (save it as MATLAB v7 or older): {error}") from None
    except (MatReadError, ValueError, OSError, TypeError, EOFError, KeyError, IndexError) as error:
        # scipy raises many types on short or foreign files (a pickle renamed .mat, 10 bytes of text)
        raise TscmError(f"{mat_path}: not a readable MATLAB .mat file ({type(error).__name__}: {error})") from None
    if "dbStruct" not in contents:
        found = sorted(k for k in contents if not k.startswith("__"))
        raise TscmError(f"{mat_path}: expected a variable 'dbStruct', found {found or 'none'}")
    struct = contents["dbStruct"]
    if not isinstance(struct, np.ndarray) or struct.dtype.names is None or struct.size != 1:
        raise TscmError(f"{mat_path}: 'dbStruct' must be a 1×1 MATLAB struct")
    missing = [f for f in DBSTRUCT_FIELDS if f not in struct.dtype.names]
    if missing:
        raise TscmError(f"{mat_path}: dbStruct lacks field(s) {', '.join(missing)}; expected {', '.join(DBSTRUCT_FIELDS)}")
    return {name: struct[name].reshape(-1)[0] for name in struct.dtype.names}


def _as_string(value, where: str) -> str:
    """One MATLAB string: a char array, possibly wrapped in 1-element cells."""
    while isinstance(value, np.ndarray) and value.dtype == object and value.size == 1:
        value = value.reshape(-1)[0]
    if isinstance(value, str):
        return value
    if isinstance(value, np.ndarray) and value.dtype.kind == "U" and value.size == 1:
        return str(value.reshape(-1)[0])
    raise TscmError(f"{where}: expected a string, got {type(value).__name__} {getattr(value, 'dtype', '')}")


def _as_string_list(value, where: str) -> list[str]:
    """A cell array of strings, or a char matrix (one padded row per string)."""
    if not isinstance(value, np.ndarray):
        raise TscmError(f"{where}: expected a cell array of relative paths, got {type(value).__name__}")
    if value.dtype == object:
        return [_as_string(item, f"{where}[{i}]") for i, item in enumerate(value.reshape(-1))]
    if value.dtype.kind == "U":
        # savemat turns a list of str into a char matrix padded with spaces; paths never end in one.
        return [str(row).rstrip(" ") for row in value.reshape(-1)]
    raise TscmError(f"{where}: expected a cell array of relative paths, got an array of {value.dtype}")


def _as_utm(value, where: str) -> np.ndarray:
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "fiu":
        raise TscmError(f"{where}: expected a numeric 2×N array of UTM metres, got {getattr(value, 'dtype', type(value).__name__)}")
    if value.size == 0:
        return np.zeros((0, 2), dtype=np.float64)
    if value.ndim != 2 or value.shape[0] != 2:
        raise TscmError(f"{where}: expected shape 2×N (easting; northing), got {value.shape}")
    return value.astype(np.float64).T


def _as_number(value, where: str) -> float:
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "fiu" or value.size != 1:
        raise TscmError(f"{where}: expected a single number, got {getattr(value, 'shape', type(value).__name__)}")
    return float(value.reshape(-1)[0])


def read_pittsburgh_mat(mat_path: str | Path) -> PlaceSet:
    """Read a `dbStruct` structure file; the split is the file's `whichSet`, the name its stem before `_`."""
    mat_path = Path(mat_path)
    fields = _load_dbstruct(mat_path)
    where = f"{mat_path}: dbStruct"
    split = _as_string(fields["whichSet"], f"{where}.whichSet")
    db_names = _as_string_list(fields["dbImageFns"], f"{where}.dbImageFns")
    query_names = _as_string_list(fields["qImageFns"], f"{where}.qImageFns")
    db_xy = _as_utm(fields["utmDb"], f"{where}.utmDb")
    query_xy = _as_utm(fields["utmQ"], f"{where}.utmQ")
    num_images = _as_number(fields["numImages"], f"{where}.numImages")
    num_queries = _as_number(fields["numQueries"], f"{where}.numQueries")
    for threshold in ("posDistThr", "posDistSqThr", "nonTrivPosDistSqThr"):
        value = _as_number(fields[threshold], f"{where}.{threshold}")
        if not (np.isfinite(value) and value > 0):
            raise TscmError(f"{where}.{threshold}: expected a positive finite distance in metres, got {value:g}")
    for count_field, count, field, actual in (
        ("numImages", num_images, "dbImageFns", len(db_names)),
        ("numImages", num_images, "utmDb", len(db_xy)),
        ("numQueries", num_queries, "qImageFns", len(query_names)),
        ("numQueries", num_queries, "utmQ", len(query_xy)),
    ):
        if count != actual:
            raise TscmError(f"{where}.{count_field} is {count:g} but {field} has {actual} entries")

    root = dataset_root(mat_path)
    query_folder = next((root / f for f in QUERY_FOLDERS if (root / f).is_dir()), root / QUERY_FOLDERS[0])
    name = mat_path.stem.rsplit("_", 1)[0] if "_" in mat_path.stem else mat_path.stem
    try:
        return PlaceSet(
            name=name,
            split=split,
            db_paths=[root / "database" / p for p in db_names],
            query_paths=[query_folder / p for p in query_names],
            db_xy=db_xy,
            query_xy=query_xy,
            db_heading=_headings(db_names),
            query_heading=_headings(query_names),
        )
    except TscmError as error:  # name the file, not only the set (e.g. a coordinate of 1e308)
        raise TscmError(f"{mat_path}: {error}") from None

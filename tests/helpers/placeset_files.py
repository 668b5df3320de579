"""Writers of tiny on-disk data sets for the format, check-data and evaluate tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

from tscm.data.formats.pittsburgh_mat import DBSTRUCT_FIELDS


def write_jpeg(path: Path, seed: int = 0, size: tuple[int, int] = (12, 10)) -> Path:
    """A real, small JPEG with random pixels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG")
    return path


def cell(strings: list[str]) -> np.ndarray:
    """A MATLAB N×1 cell array of strings, as in the published structure files."""
    array = np.empty((len(strings), 1), dtype=object)
    for i, s in enumerate(strings):
        array[i, 0] = s
    return array


def dbstruct(db_names, db_xy, query_names, query_xy, which_set="test", **overrides) -> dict:
    """Field values of a dbStruct in the published order; `overrides` replace single fields."""
    values = {
        "whichSet": which_set,
        "dbImageFns": cell(list(db_names)),
        "utmDb": np.asarray(db_xy, dtype=np.float64).T,
        "qImageFns": cell(list(query_names)),
        "utmQ": np.asarray(query_xy, dtype=np.float64).T,
        "numImages": len(db_names),
        "numQueries": len(query_names),
        "posDistThr": 25,
        "posDistSqThr": 625,
        "nonTrivPosDistSqThr": 100,
    }
    values.update(overrides)
    return {name: values[name] for name in DBSTRUCT_FIELDS}


def write_mat(path: Path, fields: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(str(path), {"dbStruct": fields})
    return path


# A small city: 4 database images on a line 10 m apart, 3 queries (the last far from everything).
DB_NAMES = ["000/000000_pitch1_yaw1.jpg", "000/000001_pitch1_yaw4.jpg", "001/000002_pitch2_yaw12.jpg", "001/000003_pitch1_yaw2.jpg"]
DB_XY = [(500000.0, 4000000.0), (500010.0, 4000000.0), (500020.0, 4000000.0), (500030.0, 4000000.0)]
QUERY_NAMES = ["q/000000_pitch1_yaw1.jpg", "q/000001_pitch1_yaw3.jpg", "q/000002_pitch1_yaw5.jpg"]
QUERY_XY = [(500001.0, 4000003.0), (500024.0, 4000000.0), (500500.0, 4000500.0)]


def write_pittsburgh(root: Path, name: str = "pitts30k", split: str = "test", in_datasets: bool = True,
                     with_images: bool = True) -> Path:
    """The small city as `<root>/datasets/<name>_<split>.mat` (or `<root>/...`) with its JPEGs."""
    mat_folder = root / "datasets" if in_datasets else root
    mat = write_mat(mat_folder / f"{name}_{split}.mat", dbstruct(DB_NAMES, DB_XY, QUERY_NAMES, QUERY_XY, split))
    if with_images:
        for i, rel in enumerate(DB_NAMES):
            write_jpeg(root / "database" / rel, seed=i)
        for i, rel in enumerate(QUERY_NAMES):
            write_jpeg(root / "query" / rel, seed=100 + i)
    return mat

"""On-disk data-set formats, each read into a PlaceSet; `load_placeset` picks the reader.

Recognised, in this order:
- a `.mat` file: Pittsburgh `dbStruct` (split and name come from the file);
- a `.csv` file: manifest (see `csv_manifest`);
- a `.npz` file: ground truth (see `ground_truth_npz`);
- a ROS bag (`.bag`, `.db3`, `.mcap`, or a ROS 2 bag folder): camera frames and positions (see `rosbag`);
- a folder with `<name>_<split>.mat` in it or in `datasets/`: Pittsburgh;
- a folder with `database/` and `queries/` (directly, in `<split>/` or `images/<split>/`): `@utm@` names;
- a folder with `ref/`, `query/` and `ground_truth_new.npy`: VPR-Bench (see `vpr_bench`);
- a folder with `summer/` and `winter/`: Nordland frames (see `nordland`).
"""

from __future__ import annotations

from pathlib import Path

from tscm.data.formats.csv_manifest import ALL_SPLITS, read_csv_manifest
from tscm.data.formats.ground_truth_npz import is_placeholder_path, read_ground_truth_npz
from tscm.data.formats.nordland import is_nordland_root, read_nordland, write_nordland_manifest
from tscm.data.formats.pittsburgh_mat import find_structure_files, read_pittsburgh_mat
from tscm.data.formats.bag_frames import is_bag_path
from tscm.data.formats.rosbag import BagSelection, read_bag_placeset
from tscm.data.formats.utm_folder import find_utm_root, read_utm_folder
from tscm.data.formats.vpr_bench import is_vpr_bench_root, read_vpr_bench
from tscm.data.places import PlaceSet
from tscm.errors import TscmError
from tscm.fileio import stat_regular

__all__ = [
    "ALL_SPLITS",
    "BagSelection",
    "is_placeholder_path",
    "load_placeset",
    "read_csv_manifest",
    "read_bag_placeset",
    "read_ground_truth_npz",
    "read_nordland",
    "read_pittsburgh_mat",
    "read_utm_folder",
    "read_vpr_bench",
    "write_nordland_manifest",
]


def load_placeset(path: str | Path, split: str | None = None, name: str | None = None,
                  bag: BagSelection | None = None) -> PlaceSet:
    """Read the data set at `path`, whatever its format.

    `split` selects the structure file or sub-folder inside a folder, the rows of a CSV manifest
    with a `split` column and the section of a Nordland folder; it labels other CSV, .npz and
    VPR-Bench sets (default "test"). For a file, ALL_SPLITS ("*") reads every row whatever its split
    (the set is then labelled with the splits it holds, e.g. "train+test"). A `.mat` file carries its own split: a different `split` is
    an error (None, the default, accepts the file's). `name` picks `<name>_<split>.mat` when a folder holds several (pitts30k
    and pitts250k side by side). `bag` chooses the topics, frames and query bag of a ROS bag.
    """
    path = Path(path)
    if not path.exists():
        raise TscmError(f"{path}: no such file or folder")
    if is_bag_path(path):
        return read_bag_placeset(path, bag, split)
    if bag is not None and bag != BagSelection():
        raise TscmError(f"{path}: --topic, --position-topic, --every and --query-bag apply to ROS bags "
                        "(.bag, .db3, .mcap or a ROS 2 bag folder)")
    if not path.is_dir():
        stat_regular(path, "data-set file")  # a FIFO or device is named, never read (it would block)
    if path.is_file():
        suffix = path.suffix.lower()
        readers = {".mat": read_pittsburgh_mat, ".csv": read_csv_manifest, ".npz": read_ground_truth_npz}
        if suffix not in readers:
            raise TscmError(f"{path}: unknown data-set file type {suffix!r}; expected .mat, .csv, .npz or a ROS bag "
                            "(.bag, .db3, .mcap)")
        if suffix == ".mat":
            placeset = read_pittsburgh_mat(path)
            if split not in (None, ALL_SPLITS) and placeset.split != split:
                raise TscmError(f"{path}: holds split {placeset.split!r}, not {split!r}; pass the {split} structure "
                                f"file (e.g. {path.name.replace(placeset.split, split)}) or the folder holding it")
            return placeset
        if suffix == ".npz" and split == ALL_SPLITS:  # one split: the name only labels it
            split = None
        return readers[suffix](path, split or "test")
    if split == ALL_SPLITS:
        raise TscmError(f"{path}: every split at once is read from a data-set file (.csv, .mat, .npz); name a split "
                        "for a folder")
    split = split or "test"

    structure_files = find_structure_files(path, split, name)
    if len(structure_files) == 1:
        return read_pittsburgh_mat(structure_files[0])
    if len(structure_files) > 1:
        listed = ", ".join(str(p) for p in structure_files)
        raise TscmError(f"{path}: several structure files for split '{split}' ({listed}); pass one of them or a name")
    if find_utm_root(path, split) is not None:
        return read_utm_folder(path, split)
    if is_vpr_bench_root(path):
        return read_vpr_bench(path, split)
    if is_nordland_root(path):
        return read_nordland(path, split)
    other_mats = sorted(p.name for p in [*path.glob("*.mat"), *path.glob("datasets/*.mat")])
    pattern = f"{name or '<name>'}_{split}.mat"
    raise TscmError(
        f"{path}: no data set found for split '{split}'. Looked for {pattern} in it and in datasets/"
        + (f" (found only {', '.join(other_mats)})" if other_mats else "")
        + f", for database/ + queries/ folders in it, in {split}/ and in images/{split}/"
        + ", for ref/ + query/ + ground_truth_new.npy (VPR-Bench) and for summer/ + winter/ (Nordland)"
        + "; or pass a .mat, .csv or .npz file"
    )

"""Nordland folder: the real summer/winter frames by split, the equivalent manifest, and bad copies."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from tscm.data.formats import load_placeset, read_nordland, write_nordland_manifest
from tscm.errors import TscmError

REAL_COUNTS = {"train": 1800, "val": 300, "test": 400, "all": 2700}


SECTIONS = [("train", 1, 1800), ("val", 1901, 2200), ("test", 2301, 2700), ("all", 1, 2700)]


@pytest.mark.parametrize("split, first, last", SECTIONS)
def test_real_splits(nordland_root, split, first, last):
    ps = load_placeset(nordland_root, split=split)
    assert (ps.unit, ps.split, ps.num_db, ps.num_queries) == ("frame", split, REAL_COUNTS[split], REAL_COUNTS[split])
    np.testing.assert_array_equal(ps.db_xy[:, 0], np.arange(first, last + 1))
    np.testing.assert_array_equal(ps.query_xy, ps.db_xy)
    assert ps.db_paths[0] == nordland_root.resolve() / "summer" / f"images-{10 * first:05d}.png"
    assert ps.query_paths[-1] == nordland_root.resolve() / "winter" / f"images-{10 * last:05d}.png"
    assert all(p.is_file() for p in (ps.db_paths[0], ps.db_paths[-1], ps.query_paths[0], ps.query_paths[-1]))


def test_real_positives_stay_inside_the_section(nordland_root):
    ps = read_nordland(nordland_root, "test")
    positives = ps.positives(1)
    assert [list(p) for p in positives[:2]] == [[0, 1], [0, 1, 2]]  # frame 2301 has no 2300 in this split
    assert list(positives[-1]) == [398, 399]
    assert [list(p) for p in ps.positives(0)][:3] == [[0], [1], [2]]


@pytest.mark.slow
def test_real_manifest_reads_like_the_folder(nordland_root, tmp_path):
    manifest = write_nordland_manifest(nordland_root, tmp_path / "nordland.csv")
    with open(manifest, newline="") as handle:
        first = next(csv.DictReader(handle))
    # The frames are not under the CSV's folder, so the paths are absolute.
    assert first == {"path": (nordland_root.resolve() / "summer" / "images-00010.png").as_posix(), "frame": "1",
                     "role": "database", "split": "train"}
    for split in REAL_COUNTS:
        from_csv, from_folder = load_placeset(manifest, split=split), read_nordland(nordland_root, split)
        assert from_csv.unit == "frame" and from_csv.split == split
        assert from_csv.db_paths == from_folder.db_paths and from_csv.query_paths == from_folder.query_paths
        np.testing.assert_array_equal(from_csv.db_xy, from_folder.db_xy)
        np.testing.assert_array_equal(from_csv.query_xy, from_folder.query_xy)


def tiny_copy(root, frames=range(1, 6), summer_extra=(), winter_extra=()):
    """A synthetic Nordland copy of empty frame files (the reader never opens them)."""
    for season, extra in (("summer", summer_extra), ("winter", winter_extra)):
        (root / season).mkdir(parents=True, exist_ok=True)
        for name in [f"images-{10 * k:05d}.png" for k in frames] + list(extra):
            (root / season / name).write_bytes(b"")
    (root / "README.md").write_text("not a frame")
    return root


def test_tiny_copy_and_relative_manifest(tmp_path):
    root = tiny_copy(tmp_path / "nordland")
    ps = load_placeset(root, split="train")
    assert (ps.name, ps.num_db, ps.num_queries) == ("nordland", 5, 5)
    np.testing.assert_array_equal(ps.db_xy[:, 0], [1, 2, 3, 4, 5])
    manifest = write_nordland_manifest(root, tmp_path / "nordland.csv", splits=("train",))
    lines = manifest.read_text().splitlines()
    assert lines[:2] == ["path,frame,role,split", "nordland/summer/images-00010.png,1,database,train"]
    assert lines[-1] == "nordland/winter/images-00050.png,5,query,train"
    again = load_placeset(manifest, split="train")
    assert again.db_paths == ps.db_paths and again.query_paths == ps.query_paths


def test_season_mismatch_names_an_example(tmp_path):
    root = tiny_copy(tmp_path / "n", summer_extra=["images-00060.png", "images-00070.png"])
    with pytest.raises(TscmError, match=r"summer/images-00060.png: no winter/images-00060.png \(and 1 more\)"):
        read_nordland(root, "train")
    root = tiny_copy(tmp_path / "m", winter_extra=["images-00060.png"])
    with pytest.raises(TscmError, match=r"winter/images-00060.png: no summer/images-00060.png; both seasons"):
        read_nordland(root, "train")


def test_gap_in_both_seasons_is_an_error(tmp_path):
    root = tiny_copy(tmp_path / "n", frames=[1, 2, 4, 5])
    with pytest.raises(TscmError, match=r"summer/images-00040.png: frame 3 in sorted order should be images-00030.png"):
        read_nordland(root, "train")


def test_bad_names_splits_and_empty_folders(tmp_path):
    root = tiny_copy(tmp_path / "n", summer_extra=["images-abc.png"], winter_extra=["images-abc.png"])
    with pytest.raises(TscmError, match=r"images-abc.png: expected a frame name like images-00010.png"):
        read_nordland(root, "train")
    root = tiny_copy(tmp_path / "m")
    with pytest.raises(TscmError, match=r"unknown Nordland split 'dev'; expected one of train, val, test, all"):
        read_nordland(root, "dev")
    with pytest.raises(TscmError, match=r"split 'val' is frames 1901–2200, but this copy has frames 1–5"):
        load_placeset(root, split="val")
    empty = tmp_path / "empty"
    (empty / "summer").mkdir(parents=True)
    (empty / "winter").mkdir()
    with pytest.raises(TscmError, match=r"summer: no images-\*.png frames found"):
        load_placeset(empty)

"""CSV manifest: frame positions, splits, timestamps, and the header and encoding errors."""

from __future__ import annotations

import numpy as np
import pytest

from tscm.data.formats import load_placeset, read_csv_manifest
from tscm.errors import TscmError


def write(tmp_path, text: str, name: str = "set.csv"):
    manifest = tmp_path / name
    manifest.write_text(text, encoding="utf-8")
    return manifest


FRAMES = (
    "path,frame,role,split\n"
    "s/1.png,1,database,train\n"
    "s/2.png,2,database,train\n"
    "s/3.png,3,database,train\n"
    "w/1.png,1,query,train\n"
    "w/3.png,3,query,train\n"
    "s/9.png,9,database,test\n"
    "w/9.png,9,query,test\n"
)


def test_frame_manifest_measures_in_frames(tmp_path):
    ps = load_placeset(write(tmp_path, FRAMES), split="train")
    assert (ps.unit, ps.split, ps.num_db, ps.num_queries) == ("frame", "train", 3, 2)
    assert ps.db_paths == [tmp_path / "s" / f"{k}.png" for k in (1, 2, 3)]
    np.testing.assert_array_equal(ps.query_xy[:, 0], [1, 3])
    assert [list(p) for p in ps.positives(0)] == [[0], [2]]
    assert [list(p) for p in ps.positives(1)] == [[0, 1], [1, 2]]
    assert ps.radius_text(1) == "±1 frame"


def test_split_column_keeps_only_that_split(tmp_path):
    ps = read_csv_manifest(write(tmp_path, FRAMES), split="test")
    assert ps.db_paths == [tmp_path / "s" / "9.png"] and ps.query_paths == [tmp_path / "w" / "9.png"]
    with pytest.raises(TscmError, match=r"no rows of split 'val'; the file has split\(s\) train, test"):
        read_csv_manifest(tmp_path / "set.csv", split="val")


def test_without_split_column_every_row_is_used_and_the_split_only_labels(tmp_path):
    manifest = write(tmp_path, "path,east,north,role\nd.jpg,0,0,database\nq.jpg,1,1,query\n")
    ps = read_csv_manifest(manifest, split="anything")
    assert (ps.split, ps.num_db, ps.num_queries, ps.unit) == ("anything", 1, 1, "m")


def test_split_without_one_role_names_the_split(tmp_path):
    manifest = write(tmp_path, "path,frame,role,split\na.png,1,database,train\nb.png,1,query,train\nc.png,5,database,val\n")
    with pytest.raises(TscmError, match=r"no rows with role 'query' of split 'val'"):
        read_csv_manifest(manifest, split="val")


def test_rows_of_other_splits_are_checked_too(tmp_path):
    manifest = write(tmp_path, FRAMES + "w/x.png,x,query,test\n")
    with pytest.raises(TscmError, match=r"line 9: column 'frame'.*'x'"):
        read_csv_manifest(manifest, split="train")


def test_timestamps_iso_and_seconds(tmp_path):
    manifest = write(
        tmp_path,
        "path,east,north,role,timestamp\n"
        "a.jpg,0,0,database,2024-05-01T10:00:00Z\n"
        "b.jpg,0,0,database,2024-05-01T12:00:30+02:00\n"
        "c.jpg,0,0,database,2024-05-01T10:01:00\n"  # no offset: UTC
        "q.jpg,0,0,query,1714557600.5\n",
    )
    ps = read_csv_manifest(manifest)
    start = 1714557600.0  # 2024-05-01T10:00:00Z
    np.testing.assert_array_equal(ps.db_time, [start, start + 30, start + 60])
    np.testing.assert_array_equal(ps.query_time, [start + 0.5])


@pytest.mark.parametrize(
    "text, message",
    [
        ("path,east,north,frame,role\na.jpg,1,2,3,query\n", r"both metric \(east,north\) and frame positions"),
        ("path,role\na.jpg,query\n", r"missing column\(s\) \['east', 'north'\].*either east,north or frame"),
        ("path,north,role\na.jpg,1,query\n", r"missing column\(s\) \['east'\]"),
        ("path,frame,role\nd.png,1,database\nq.png,1.5,query\n", r"line 3: column 'frame': expected an integer.*got '1.5'"),
        ("path,frame,role\nd.png,,database\n", r"line 2: column 'frame': expected an integer.*got ''"),
        ("path,east,north,role,east\na.jpg,1,2,query,3\n", r"column\(s\) \['east'\] named more than once"),
        ("path,frame,role,split\nd.png,1,database,train\nq.png,1,query,\n", r"line 3: column 'split' is empty"),
        (
            "path,east,north,role,timestamp\nd.jpg,1,2,database,yesterday\nq.jpg,1,2,query,\n",
            r"line 2: column 'timestamp': expected ISO 8601.*got 'yesterday'",
        ),
        (
            "path,east,north,role,timestamp\nd.jpg,1,2,database,5\ne.jpg,1,2,database,\nq.jpg,1,2,query,\n",
            r"line 3: column 'timestamp' is empty, but other database rows have one",
        ),
        ("path,east,north,role\nd.jpg,1,2,database,extra\n", r"line 2: more values than header columns"),
        ("", r"missing column\(s\) \['path', 'role', 'east', 'north'\]"),
    ],
)
def test_manifest_errors(tmp_path, text, message):
    manifest = write(tmp_path, text)
    with pytest.raises(TscmError, match=message) as error:
        read_csv_manifest(manifest, split="train")
    assert str(manifest) in str(error.value) and "\n" not in str(error.value)


def test_not_utf8_names_file_line_and_byte(tmp_path):
    manifest = tmp_path / "latin1.csv"
    manifest.write_bytes("path,east,north,role\ncafé.jpg,1,2,query\n".encode("latin-1"))
    with pytest.raises(TscmError) as error:
        read_csv_manifest(manifest)
    offset = len(b"path,east,north,role\ncaf")
    assert str(error.value) == f"{manifest} line 2 (byte {offset}): not UTF-8 text (byte 0xe9); save the manifest as UTF-8"


def test_utf8_with_bom_and_non_ascii_paths(tmp_path):
    manifest = tmp_path / "bom.csv"
    manifest.write_bytes(b"\xef\xbb\xbf" + "path,east,north,role\ncafé.jpg,1,2,database\nq.jpg,3,4,query\n".encode())
    ps = read_csv_manifest(manifest)
    assert ps.db_paths == [tmp_path / "café.jpg"]

"""Format readers: each on small files written here, plus the errors bad input must give."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.placeset_files import DB_NAMES, DB_XY, QUERY_NAMES, QUERY_XY, dbstruct, write_mat, write_pittsburgh

from tscm.data.formats import (
    is_placeholder_path,
    load_placeset,
    read_csv_manifest,
    read_ground_truth_npz,
    read_pittsburgh_mat,
    read_utm_folder,
)
from tscm.errors import TscmError


def brute_force_positives(db_xy, query_xy, radius):
    db_xy, query_xy = np.asarray(db_xy), np.asarray(query_xy)
    return [[i for i in range(len(db_xy)) if np.hypot(*(db_xy[i] - q)) <= radius] for q in query_xy]


# --- Pittsburgh .mat -------------------------------------------------------------------------


@pytest.mark.parametrize("in_datasets", [True, False])
def test_pittsburgh_from_folder(tmp_path, in_datasets):
    write_pittsburgh(tmp_path, in_datasets=in_datasets, with_images=False)
    ps = load_placeset(tmp_path, split="test")
    assert (ps.name, ps.split, ps.num_db, ps.num_queries) == ("pitts30k", "test", 4, 3)
    assert ps.db_paths == [tmp_path.resolve() / "database" / n for n in DB_NAMES]
    assert ps.query_paths == [tmp_path.resolve() / "query" / n for n in QUERY_NAMES]
    assert all(p.is_absolute() for p in ps.db_paths + ps.query_paths)
    np.testing.assert_array_equal(ps.db_xy, np.asarray(DB_XY))
    np.testing.assert_array_equal(ps.query_xy, np.asarray(QUERY_XY))
    # yaw1 -> 0, yaw4 -> 90, yaw12 -> 330, yaw2 -> 30 degrees
    np.testing.assert_array_equal(ps.db_heading, [0.0, 90.0, 330.0, 30.0])
    np.testing.assert_array_equal(ps.query_heading, [0.0, 60.0, 120.0])


def test_pittsburgh_direct_mat_path_and_queries_real(tmp_path):
    mat = write_pittsburgh(tmp_path, split="val", with_images=False)
    (tmp_path / "queries_real").mkdir()
    ps = load_placeset(mat)  # the file's whichSet wins over the default split
    assert ps.split == "val"
    assert ps.query_paths[0] == tmp_path.resolve() / "queries_real" / QUERY_NAMES[0]
    assert ps.db_paths[0] == tmp_path.resolve() / "database" / DB_NAMES[0]


def test_pittsburgh_char_matrix_names_and_no_yaw(tmp_path):
    # savemat writes a list of str as a space-padded char matrix
    db_names = ["a.jpg", "bb/long_name.jpg", "c.jpg", "d.jpg"]
    fields = dbstruct(db_names, DB_XY, ["q1.jpg", "q22.jpg", "q3.jpg"], QUERY_XY, dbImageFns=db_names)
    ps = read_pittsburgh_mat(write_mat(tmp_path / "city_test.mat", fields))
    assert [p.name for p in ps.db_paths] == ["a.jpg", "long_name.jpg", "c.jpg", "d.jpg"]
    assert ps.db_heading is None and ps.query_heading is None
    assert ps.name == "city"


def test_pittsburgh_positives_by_radius(tmp_path):
    write_pittsburgh(tmp_path, with_images=False)
    ps = load_placeset(tmp_path)
    for radius in (10.0, 25.0):
        got = [list(p) for p in ps.positives(radius)]
        assert got == brute_force_positives(DB_XY, QUERY_XY, radius)
    assert [list(p) for p in ps.positives(10.0)] == [[0, 1], [2, 3], []]


def test_pittsburgh_missing_file_lists_what_was_looked_for(tmp_path):
    write_pittsburgh(tmp_path, split="train", with_images=False)
    with pytest.raises(TscmError) as error:
        load_placeset(tmp_path, split="test")
    message = str(error.value)
    assert "_test.mat" in message and "datasets/" in message and "pitts30k_train.mat" in message
    with pytest.raises(TscmError, match="not found"):
        read_pittsburgh_mat(tmp_path / "nothing_test.mat")


def test_pittsburgh_several_files_need_a_name(tmp_path):
    write_pittsburgh(tmp_path, name="pitts30k", with_images=False)
    write_pittsburgh(tmp_path, name="pitts250k", with_images=False)
    with pytest.raises(TscmError, match="several structure files"):
        load_placeset(tmp_path)
    assert load_placeset(tmp_path, name="pitts250k").name == "pitts250k"


@pytest.mark.parametrize(
    "override, field",
    [
        ({"utmDb": "not numbers"}, "utmDb"),
        ({"dbImageFns": np.arange(4.0).reshape(4, 1)}, "dbImageFns"),
        ({"whichSet": np.array([[1.0]])}, "whichSet"),
        ({"numQueries": "three"}, "numQueries"),
        ({"posDistThr": -25}, "posDistThr"),
    ],
)
def test_pittsburgh_wrong_field_type(tmp_path, override, field):
    mat = write_mat(tmp_path / "bad_test.mat", dbstruct(DB_NAMES, DB_XY, QUERY_NAMES, QUERY_XY, **override))
    with pytest.raises(TscmError) as error:
        read_pittsburgh_mat(mat)
    assert str(mat) in str(error.value) and f"dbStruct.{field}" in str(error.value)


def test_pittsburgh_wrong_coordinate_shape(tmp_path):
    fields = dbstruct(DB_NAMES, DB_XY, QUERY_NAMES, QUERY_XY, utmDb=np.asarray(DB_XY))  # N×2 instead of 2×N
    with pytest.raises(TscmError, match=r"dbStruct\.utmDb: expected shape 2×N.*\(4, 2\)"):
        read_pittsburgh_mat(write_mat(tmp_path / "bad_test.mat", fields))


def test_pittsburgh_count_mismatch(tmp_path):
    fields = dbstruct(DB_NAMES, DB_XY, QUERY_NAMES, QUERY_XY, numImages=5)
    with pytest.raises(TscmError, match=r"numImages is 5 but dbImageFns has 4"):
        read_pittsburgh_mat(write_mat(tmp_path / "bad_test.mat", fields))
    fields = dbstruct(DB_NAMES, DB_XY, QUERY_NAMES, QUERY_XY, utmQ=np.asarray(QUERY_XY[:2]).T)
    with pytest.raises(TscmError, match=r"numQueries is 3 but utmQ has 2"):
        read_pittsburgh_mat(write_mat(tmp_path / "bad_test.mat", fields))


def test_pittsburgh_missing_field_and_garbage_file(tmp_path):
    fields = dbstruct(DB_NAMES, DB_XY, QUERY_NAMES, QUERY_XY)
    del fields["posDistSqThr"]
    with pytest.raises(TscmError, match="lacks field.*posDistSqThr"):
        read_pittsburgh_mat(write_mat(tmp_path / "bad_test.mat", fields))
    garbage = tmp_path / "garbage_test.mat"
    garbage.write_bytes(b"this is not a mat file at all" * 10)
    with pytest.raises(TscmError, match=str(garbage)):
        read_pittsburgh_mat(garbage)


# --- @utm@ folders ---------------------------------------------------------------------------


def full_utm_name(east, north, heading=""):
    return f"@{east}@{north}@17@T@40.4@-79.9@pano@0@{heading}@@@@20200101_000000@@.jpg"


def test_utm_folder(tmp_path):
    root = tmp_path / "city"
    for name in (full_utm_name(500010.5, 4000000, 90), full_utm_name(500000, 4000001, 180)):
        (root / "database" / "sub").mkdir(parents=True, exist_ok=True)
        (root / "database" / "sub" / name).write_bytes(b"")
    (root / "queries").mkdir()
    (root / "queries" / "@500002@4000002@.jpg").write_bytes(b"")
    (root / "queries" / "notes.txt").write_text("not an image")
    ps = load_placeset(root)
    assert ps.num_db == 2 and ps.num_queries == 1 and ps.name == "city"
    # sorted by path: "@500000..." before "@500010.5..."
    np.testing.assert_array_equal(ps.db_xy, [[500000, 4000001], [500010.5, 4000000]])
    np.testing.assert_array_equal(ps.db_heading, [180.0, 90.0])
    np.testing.assert_array_equal(ps.query_xy, [[500002, 4000002]])
    assert ps.query_heading is None
    assert ps.query_paths == [(root / "queries" / "@500002@4000002@.jpg").resolve()]


def test_utm_folder_split_layout_and_bad_name(tmp_path):
    base = tmp_path / "images" / "val"
    (base / "database").mkdir(parents=True)
    (base / "queries").mkdir()
    (base / "database" / "@1@2@.jpg").write_bytes(b"")
    (base / "queries" / "@3@4@.png").write_bytes(b"")
    ps = read_utm_folder(tmp_path, split="val")
    assert ps.split == "val" and ps.num_db == 1 and ps.num_queries == 1
    with pytest.raises(TscmError, match="no data set found for split 'test'"):
        load_placeset(tmp_path, split="test")
    bad = base / "queries" / "@east@4@.jpg"
    bad.write_bytes(b"")
    with pytest.raises(TscmError, match=r"@east@4@\.jpg.*not numbers"):
        read_utm_folder(tmp_path, split="val")


# --- CSV manifest ----------------------------------------------------------------------------


def test_csv_manifest(tmp_path):
    absolute = tmp_path / "elsewhere" / "q.jpg"
    (tmp_path / "data").mkdir()
    manifest = tmp_path / "data" / "mine.csv"
    manifest.write_text(
        "role,path,east,north,heading,timestamp\n"
        "database,db/b.jpg,10.5,20,45,2024-01-01T00:00:00Z\n"
        "query,{abs},11,21,,\n"
        "\n"
        "database, db/a.jpg ,0,-5,90,1704067210\n".format(abs=absolute)
    )
    ps = load_placeset(manifest, split="mine-split")
    assert (ps.name, ps.split) == ("mine", "mine-split")
    assert ps.db_paths == [tmp_path / "data" / "db" / "b.jpg", tmp_path / "data" / "db" / "a.jpg"]
    assert ps.query_paths == [absolute]
    np.testing.assert_array_equal(ps.db_xy, [[10.5, 20.0], [0.0, -5.0]])
    np.testing.assert_array_equal(ps.db_heading, [45.0, 90.0])
    assert ps.query_heading is None
    # timestamps: ISO 8601 or plain seconds; now kept per role only when every row has one, like headings
    np.testing.assert_array_equal(ps.db_time, [1704067200.0, 1704067210.0])
    assert ps.query_time is None


@pytest.mark.parametrize(
    "text, message",
    [
        ("path,east,role\na.jpg,1,query\n", r"missing column\(s\) \['north'\]"),
        ("path,east,north,role,yaw\na.jpg,1,2,query,3\n", r"unknown column\(s\) \['yaw'\]"),
        ("path,east,north,role\nd.jpg,1,2,database\nq.jpg,1,abc,query\n", r"line 3: column 'north'.*'abc'"),
        ("path,east,north,role\nd.jpg,1,2,database\nq.jpg,1,2,queries\n", r"line 3: column 'role'"),
        ("path,east,north,role\nd.jpg,1,2,database\n", r"no rows with role 'query'"),
        (
            "path,east,north,role,heading\nd.jpg,1,2,database,5\ne.jpg,1,2,database,\nq.jpg,1,2,query,\n",
            r"line 3: column 'heading' is empty",
        ),
    ],
)
def test_csv_manifest_errors(tmp_path, text, message):
    manifest = tmp_path / "bad.csv"
    manifest.write_text(text)
    with pytest.raises(TscmError, match=message):
        read_csv_manifest(manifest)


# --- ground-truth .npz -----------------------------------------------------------------------


def test_npz_ground_truth_with_and_without_paths(tmp_path):
    gt = tmp_path / "gt.npz"
    np.savez(gt, utmDb=np.asarray(DB_XY).T, utmQ=np.asarray(QUERY_XY), posDistThr=25, dbImageFns=np.array(DB_NAMES))
    ps = load_placeset(gt)
    np.testing.assert_array_equal(ps.db_xy, np.asarray(DB_XY))  # 2×N
    np.testing.assert_array_equal(ps.query_xy, np.asarray(QUERY_XY))  # N×2
    assert ps.db_paths[2] == tmp_path / DB_NAMES[2]
    assert not any(is_placeholder_path(p) for p in ps.db_paths)
    assert all(is_placeholder_path(p) for p in ps.query_paths)
    assert len(set(ps.query_paths)) == 3
    assert [list(p) for p in ps.positives(25.0)] == brute_force_positives(DB_XY, QUERY_XY, 25.0)


def test_npz_errors(tmp_path):
    gt = tmp_path / "gt.npz"
    np.savez(gt, utmDb=np.asarray(DB_XY).T, utmQ=np.asarray(QUERY_XY))
    with pytest.raises(TscmError, match=r"missing key\(s\) \['posDistThr'\]"):
        read_ground_truth_npz(gt)
    np.savez(gt, utmDb=np.zeros((3, 4)), utmQ=np.asarray(QUERY_XY), posDistThr=25)
    with pytest.raises(TscmError, match=r"'utmDb' must have shape 2×N or N×2, got \(3, 4\)"):
        read_ground_truth_npz(gt)
    np.savez(gt, utmDb=np.asarray(DB_XY).T, utmQ=np.asarray(QUERY_XY), posDistThr=25, qImageFns=np.array(["a.jpg"]))
    with pytest.raises(TscmError, match="'qImageFns' has 1 paths but its coordinates have 3 rows"):
        read_ground_truth_npz(gt)
    np.savez(gt, utmDb=np.asarray(DB_XY).T, utmQ=np.asarray(QUERY_XY), posDistThr=25, dbImageFns=np.array(DB_NAMES, dtype=object))
    with pytest.raises(TscmError, match="pickled"):
        read_ground_truth_npz(gt)


# --- dispatch --------------------------------------------------------------------------------


def test_load_placeset_dispatch_errors(tmp_path):
    with pytest.raises(TscmError, match="no such file or folder"):
        load_placeset(tmp_path / "absent")
    other = tmp_path / "data.json"
    other.write_text("{}")
    with pytest.raises(TscmError, match=r"unknown data-set file type '\.json'"):
        load_placeset(other)
    with pytest.raises(TscmError, match=r"database/ \+ queries/"):
        load_placeset(tmp_path)

"""Broken data sets (CSV manifests, .mat structure files, ground-truth .npz, folders): one line naming
the file and the line, column or field, and what was expected; the check-data findings that make a
set useless (shared paths, no query with a match) are reported, never an OK."""

from __future__ import annotations

import os

import numpy as np
import pytest
import scipy.io

from helpers.placeset_files import DB_NAMES, DB_XY, QUERY_NAMES, QUERY_XY, dbstruct, write_mat
from reliability.support import (assert_no_traceback, assert_problems, assert_refused, image_set, previous_output, tscm,
                                 write_image, write_manifest)

# (case id, CSV text, what the message must name)
CSV_CASES = [
    ("column-twice", "path,east,north,east,role\ndb/000.jpg,1,2,3,database\n", ["set.csv", "'east'", "more than once"]),
    ("unknown-column", "path,east,north,role,headng\ndb/000.jpg,1,2,database,90\n", ["set.csv", "headng", "expected"]),
    ("coordinate-1e308", "path,east,north,role\ndb/000.jpg,1e308,2,database\nq/000.jpg,1,2,query\n",
     ["set.csv", "1e+308", "out of range"]),
    ("empty-cell", "path,east,north,role\ndb/000.jpg,,2,database\nq/000.jpg,1,2,query\n", ["set.csv line 2", "'east'", "number"]),
    ("nan-cell", "path,east,north,role\ndb/000.jpg,nan,2,database\nq/000.jpg,1,2,query\n", ["set.csv line 2", "'east'", "finite"]),
    ("frame-not-integer", "path,frame,role\ndb/000.jpg,1.5,database\nq/000.jpg,1,query\n", ["set.csv line 2", "'frame'", "integer"]),
    ("frame-word", "path,frame,role\ndb/000.jpg,first,database\nq/000.jpg,1,query\n", ["set.csv line 2", "'frame'", "'first'"]),
    ("split-empty", "path,east,north,role,split\ndb/000.jpg,1,2,database,test\nq/000.jpg,1,2,query,\n",
     ["set.csv line 3", "'split'", "every row"]),
    ("role-unknown", "path,east,north,role\ndb/000.jpg,1,2,reference\n", ["set.csv line 2", "'role'", "'reference'"]),
    ("no-queries", "path,east,north,role\ndb/000.jpg,1,2,database\n", ["set.csv", "role 'query'"]),
    ("too-many-cells", "path,east,north,role\ndb/000.jpg,1,2,database,extra\n", ["set.csv line 2", "more values"]),
    ("header-only", "path,east,north,role\n", ["set.csv", "no rows"]),
    # numbers a float cannot hold, in every numeric column
    ("coordinate-1e400", "path,east,north,role\ndb/000.jpg,1e400,2,database\nq/000.jpg,1,2,query\n",
     ["set.csv line 2", "'east'", "finite"]),
    ("coordinate-of-400-digits", "path,east,north,role\ndb/000.jpg,1,%s,database\nq/000.jpg,1,2,query\n" % ("9" * 400),
     ["set.csv line 2", "'north'", "finite"]),
    ("heading-1e999", "path,east,north,role,heading\ndb/000.jpg,1,2,database,1e999\nq/000.jpg,1,2,query,0\n",
     ["set.csv line 2", "'heading'", "finite"]),
    ("timestamp-of-5000-digits", "path,east,north,role,timestamp\ndb/000.jpg,1,2,database,%s\nq/000.jpg,1,2,query,0\n"
     % ("9" * 5000), ["set.csv line 2", "'timestamp'", "..."]),
    ("frame-1e300", "path,frame,role\ndb/000.jpg,1e300,database\nq/000.jpg,1,query\n", ["set.csv line 2", "'frame'", "integer"]),
]


@pytest.mark.parametrize("command", ["check-data", "evaluate"])
@pytest.mark.parametrize("case, text, named", CSV_CASES, ids=[c[0] for c in CSV_CASES])
def test_a_broken_manifest_is_refused_naming_the_problem(case, text, named, command, tmp_path, capsys):
    manifest = tmp_path / "set.csv"
    manifest.write_text(text, encoding="utf-8")
    extra = ["--descriptors", tmp_path / "none.npz"] if command == "evaluate" else []
    assert_refused(tscm(capsys, command, manifest, *extra), command, *named)


def test_a_manifest_that_is_not_utf8_names_the_line_and_byte(tmp_path, capsys):
    manifest = tmp_path / "set.csv"
    manifest.write_bytes("path,east,north,role\ndb/000.jpg,1,2,database\nq/Zürich.jpg,1,2,query\n".encode("latin-1"))
    assert_refused(tscm(capsys, "check-data", manifest), "check-data", "set.csv line 3", "UTF-8", "0xfc")


def test_a_split_no_row_has_lists_the_splits_present(tmp_path, capsys):
    manifest = write_manifest(tmp_path / "set.csv", [("db/0.jpg", 1, 2, "database", "train"), ("q/0.jpg", 1, 2, "query", "train")],
                              header="path,east,north,role,split")
    assert_refused(tscm(capsys, "check-data", manifest, "--split", "val"), "check-data", "set.csv", "'val'", "train")


def write_small_mat(path, **overrides):
    return write_mat(path, dbstruct(DB_NAMES, DB_XY, QUERY_NAMES, QUERY_XY, "test", **overrides))


def test_a_mat_file_shorter_than_its_header_is_refused(tmp_path, capsys):
    mat = tmp_path / "tiny_test.mat"
    mat.write_bytes(b"MATLAB 5.0 MAT-file" + b"\0" * 20)
    assert_refused(tscm(capsys, "check-data", mat), "check-data", "tiny_test.mat", "MATLAB")


def test_a_text_file_named_mat_is_refused(tmp_path, capsys):
    mat = tmp_path / "notes_test.mat"
    mat.write_text("dbStruct = the test split, see the wiki\n" * 10, encoding="utf-8")
    assert_refused(tscm(capsys, "evaluate", mat, "--descriptors", tmp_path / "d.npz"), "evaluate", "notes_test.mat", "MATLAB")


@pytest.mark.parametrize("field, value", [("posDistThr", float("nan")), ("posDistThr", -25.0),
                                          ("posDistSqThr", float("inf")), ("numImages", 7)])
def test_a_bad_number_in_a_mat_file_names_the_field(field, value, tmp_path, capsys):
    mat = write_small_mat(tmp_path / "pitts30k_test.mat", **{field: value})
    assert_refused(tscm(capsys, "check-data", mat, "--skip-images"), "check-data", "pitts30k_test.mat", f"dbStruct.{field}")


def test_a_mat_without_dbstruct_lists_what_it_holds(tmp_path, capsys):
    mat = tmp_path / "other_test.mat"
    scipy.io.savemat(str(mat), {"features": np.zeros((2, 2))})
    assert_refused(tscm(capsys, "check-data", mat), "check-data", "other_test.mat", "dbStruct", "features")


def test_evaluating_a_mat_file_with_another_split_is_refused(small, tmp_path, capsys):
    before = previous_output(tmp_path / "result.json")
    outcome = tscm(capsys, "evaluate", small, "--split", "train", "--descriptors", tmp_path / "d.npz", "--json",
                   tmp_path / "result.json")
    assert_refused(outcome, "evaluate", "pitts30k_test.mat", "'test'", "'train'")
    before.assert_unchanged()


def test_a_missing_data_set_and_an_unknown_file_type_are_named(tmp_path, capsys):
    assert_refused(tscm(capsys, "check-data", tmp_path / "nowhere"), "check-data", "nowhere", "no such file")
    (tmp_path / "set.txt").write_text("x", encoding="utf-8")
    assert_refused(tscm(capsys, "check-data", tmp_path / "set.txt"), "check-data", "set.txt", ".txt", ".csv")
    (tmp_path / "empty").mkdir()
    assert_refused(tscm(capsys, "check-data", tmp_path / "empty"), "check-data", "empty", "no data set found")


@pytest.mark.parametrize("case, arrays, named", [
    ("missing-key", {"utmDb": np.zeros((2, 3)), "utmQ": np.zeros((2, 2))}, ["posDistThr"]),
    ("nan-threshold", {"utmDb": np.zeros((2, 3)), "utmQ": np.zeros((2, 2)), "posDistThr": np.array(np.nan)}, ["posDistThr", "positive"]),
    ("inf-threshold", {"utmDb": np.zeros((2, 3)), "utmQ": np.zeros((2, 2)), "posDistThr": np.array(np.inf)}, ["posDistThr", "finite"]),
    ("coordinate-1e308", {"utmDb": np.full((2, 3), 1e308), "utmQ": np.zeros((2, 2)), "posDistThr": np.array(25.0)}, ["out of range"]),
    ("bad-shape", {"utmDb": np.zeros((3, 3)), "utmQ": np.zeros((2, 2)), "posDistThr": np.array(25.0)}, ["utmDb", "2×N"]),
    ("paths-count", {"utmDb": np.zeros((2, 3)), "utmQ": np.zeros((2, 2)), "posDistThr": np.array(25.0),
                     "dbImageFns": np.array(["a.jpg"])}, ["dbImageFns", "1 paths"]),
], ids=lambda value: value if isinstance(value, str) else "")
def test_a_broken_ground_truth_npz_names_the_key(case, arrays, named, tmp_path, capsys):
    path = tmp_path / "gt.npz"
    np.savez(path, **arrays)
    assert_refused(tscm(capsys, "check-data", path), "check-data", "gt.npz", *named)


def test_queries_that_are_the_database_images_are_warned_about(tmp_path, capsys):
    db = [write_image(tmp_path / "db" / f"{i}.jpg", seed=i) for i in range(3)]
    rows = [(f"db/{p.name}", 10 * i, 0, role) for role in ("database", "query") for i, p in enumerate(db)]
    manifest = write_manifest(tmp_path / "set.csv", rows)
    descriptors = tmp_path / "d.npz"
    values = np.eye(3, 8, dtype=np.float32)
    np.savez(descriptors, db=values, queries=values)
    outcome = tscm(capsys, "evaluate", manifest, "--descriptors", descriptors)
    assert_no_traceback(outcome)
    assert outcome.code == 0
    assert "warning: every query image is also a database image" in outcome.out, outcome.out
    outcome = tscm(capsys, "check-data", manifest)
    assert "paths used as both database and query: 3" in outcome.out and "warning: every query" in outcome.out


def test_a_query_folder_linked_to_the_database_is_reported_as_shared(tmp_path, capsys):
    db = [write_image(tmp_path / "db" / f"{i}.jpg", seed=i) for i in range(3)]
    os.symlink(tmp_path / "db", tmp_path / "q")
    rows = [(f"db/{p.name}", 10 * i, 0, "database") for i, p in enumerate(db)]
    rows += [(f"q/{p.name}", 10 * i, 0, "query") for i, p in enumerate(db)]
    outcome = tscm(capsys, "check-data", write_manifest(tmp_path / "set.csv", rows))
    assert_no_traceback(outcome)
    assert "paths used as both database and query: 3" in outcome.out, outcome.out
    assert "warning: every query is also a database image" in outcome.out


def test_a_set_where_no_query_has_a_match_is_not_ok(tmp_path, capsys):
    manifest, _, _ = image_set(tmp_path)
    text = manifest.read_text(encoding="utf-8").replace(",500002,", ",900002,").replace(",500012,", ",900012,")
    manifest.write_text(text, encoding="utf-8")
    outcome = tscm(capsys, "check-data", manifest)
    assert_problems(outcome, "no query has a true match")
    # evaluate cannot give a number either: one line, exit 2
    descriptors = tmp_path / "d.npz"
    np.savez(descriptors, db=np.eye(4, 8, dtype=np.float32), queries=np.eye(2, 8, dtype=np.float32))
    assert_refused(tscm(capsys, "evaluate", manifest, "--descriptors", descriptors), "evaluate", "set/test",
                   "no database image within 25 m", "Recall@N is undefined")


def test_a_huge_coordinate_in_a_mat_file_names_the_file(tmp_path, capsys):
    mat = write_mat(tmp_path / "pitts30k_test.mat", dbstruct(DB_NAMES, [(1e308, 0.0)] * 4, QUERY_NAMES, QUERY_XY, "test"))
    assert_refused(tscm(capsys, "check-data", mat, "--skip-images"), "check-data", "pitts30k_test.mat", "out of range")

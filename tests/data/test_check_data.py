"""`tscm check-data` and the checks behind it, on tiny data sets with real JPEGs."""

from __future__ import annotations

import numpy as np
from helpers.placeset_files import DB_NAMES, DB_XY, QUERY_NAMES, QUERY_XY, write_jpeg, write_pittsburgh

from tscm.cli import main
from tscm.data.checks import check_placeset, image_problem
from tscm.data.formats import load_placeset


def test_check_data_good_set(tmp_path, capsys):
    write_pittsburgh(tmp_path)
    assert main(["check-data", str(tmp_path), "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert "database images   4 (with headings)" in out and "queries           3 (with headings)" in out
    # bounding box of all coordinates: east 500000..500500, north 4000000..4000500
    assert "500.0 m east × 500.0 m north" in out
    assert "queries without a database image within 25 m: 1  [#2]" in out
    assert "missing images: 0" in out and "unreadable images: 0" in out and "result: OK" in out


def test_check_data_missing_and_corrupt_images(tmp_path, capsys):
    write_pittsburgh(tmp_path)
    (tmp_path / "database" / DB_NAMES[1]).unlink()
    cut = tmp_path / "query" / QUERY_NAMES[0]
    write_jpeg(cut, size=(64, 64))
    cut.write_bytes(cut.read_bytes()[:-300])
    (tmp_path / "query" / QUERY_NAMES[2]).write_bytes(b"plain text, not an image")
    assert main(["check-data", str(tmp_path), "--workers", "1"]) == 1
    out = capsys.readouterr().out
    assert "missing images: 1" in out and DB_NAMES[1] in out
    assert "unreadable images: 2" in out and QUERY_NAMES[0] in out and QUERY_NAMES[2] in out
    assert "result: PROBLEMS" in out
    # without opening images the same set passes
    assert main(["check-data", str(tmp_path), "--skip-images"]) == 0


def test_image_problem_reasons(tmp_path):
    good = write_jpeg(tmp_path / "good.jpg")
    assert image_problem(good) is None
    assert image_problem(tmp_path / "absent.jpg") == "missing"
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    assert image_problem(bad).startswith("unreadable")


def test_duplicates_and_shared_paths(tmp_path):
    for name in ("a.jpg", "b.jpg", "q.jpg"):
        write_jpeg(tmp_path / name)
    manifest = tmp_path / "set.csv"
    manifest.write_text(
        "path,east,north,role\n"
        "a.jpg,0,0,database\nb.jpg,1,0,database\na.jpg,0,0,database\n"
        "q.jpg,0,1,query\nb.jpg,1,0,query\n"
    )
    report = check_placeset(load_placeset(manifest), workers=1, progress=False)
    assert report.duplicate_db == [tmp_path / "a.jpg"]
    assert report.duplicate_queries == []
    assert report.shared_paths == [tmp_path / "b.jpg"]
    assert report.ok and report.queries_without_positive == []


def test_ground_truth_npz_without_images(tmp_path, capsys):
    gt = tmp_path / "gt.npz"
    np.savez(gt, utmDb=np.asarray(DB_XY).T, utmQ=np.asarray(QUERY_XY).T, posDistThr=25)
    assert main(["check-data", str(gt), "--radius", "10"]) == 0
    out = capsys.readouterr().out
    assert "images not named by the data set (ground truth only): 7" in out
    assert "queries without a database image within 10 m: 1" in out

"""`tscm index calibrate` takes ROS bags as `index build` and `evaluate` do: a database bag, the queries'
bag with --query-bag (ground truth by position), --topic/--position-topic/--every; the threshold it
stores is the one a map of the same bag then uses, and bad combinations are refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("rosbags")

from helpers.bag_files import loop_route, write_formats  # noqa: E402
from helpers.model_files import write_checkpoint  # noqa: E402
from tscm import cli  # noqa: E402
from tscm.deploy.retrieval.index import PlaceIndex  # noqa: E402

FRAMES = 6  # six distinct places 20 m apart, 0.5 s apart


def tscm(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def mapped(tmp_path_factory) -> tuple[dict[str, Path], Path, Path]:
    """The route recorded as ROS 1 and MCAP bags, a tiny student, and a flat map of the ROS 1 bag."""
    folder = tmp_path_factory.mktemp("calibrate-bags")
    bags = write_formats(folder / "bags", loop_route(FRAMES, 0), formats=("ros1", "mcap"))
    checkpoint = write_checkpoint(folder / "student", "student-tiny", 0)
    index = folder / "map.idx"
    assert cli.main(["index", "build", "--checkpoint", str(checkpoint), "--bag", str(bags["ros1"]), "--backend", "flat",
                     "--out", str(index)]) == 0
    return bags, checkpoint, index


@pytest.mark.slow
def test_calibrate_on_a_database_bag_and_a_query_bag(mapped, tmp_path, capsys):
    bags, _, built = mapped
    index = tmp_path / "map.idx"
    index.write_bytes(built.read_bytes())
    report = tmp_path / "calibration.json"
    code, out, err = tscm(capsys, "index", "calibrate", "--index", index, "--data", bags["ros1"], "--query-bag",
                          bags["mcap"], "--topic", "/camera/image", "--position-topic", "/gps/fix", "--radius", "10",
                          "--bound", "none", "--score", "distance", "--json", report)
    assert code == 0, err
    assert "threshold" in out and "written to" in out
    # The same frames recorded twice: every query's top-1 is its own place, so all are accepted and right.
    threshold = PlaceIndex.load(index).threshold(1)
    assert threshold is not None and threshold["num_queries"] == FRAMES and threshold["unit"] == "m"
    assert threshold["recall"] == pytest.approx(1.0) and threshold["precision"] == pytest.approx(1.0)
    assert json.loads(report.read_text())["calibration"]["split"] == "val"
    # --every keeps every other frame of both bags (frames come every 0.5 s).
    code, _, err = tscm(capsys, "index", "calibrate", "--index", index, "--data", bags["ros1"], "--query-bag",
                        bags["mcap"], "--every", "1s", "--radius", "10", "--bound", "none", "--score", "distance")
    assert code == 0, err
    assert PlaceIndex.load(index).threshold(1)["num_queries"] == FRAMES // 2


@pytest.mark.parametrize("extra, expected", [
    ((), "give the query traversal with --query-bag"),
    (("--query-bag", "{mcap}", "--measure", "test"), "--measure test: a bag pair has no other split"),
    (("--query-bag", "{mcap}", "--topic", "/nothing"), "/nothing"),
    (("--query-bag", "{mcap_file}", "--json", "{mcap_file}"), "is the --query-bag input"),
], ids=["no query bag", "--measure", "unknown topic", "--json the query bag"])
def test_bad_bag_calibrations_are_one_line_and_leave_the_index(extra, expected, mapped, tmp_path, capsys):
    bags, _, built = mapped
    index = tmp_path / "map.idx"
    index.write_bytes(built.read_bytes())
    mcap_file = next(bags["mcap"].glob("*.mcap"))  # the storage file of the ROS 2 bag folder
    before = {path: path.read_bytes() for path in (index, mcap_file)}
    argv = [word.format(mcap=bags["mcap"], mcap_file=mcap_file) for word in extra]
    code, _, err = tscm(capsys, "index", "calibrate", "--index", index, "--data", bags["ros1"], *argv)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and expected in lines[0], err
    assert {path: path.read_bytes() for path in before} == before
    assert PlaceIndex.load(index).threshold(1) is None


def test_bag_options_with_a_data_set_that_is_not_a_bag_are_refused(mapped, tmp_path, capsys):
    _, _, built = mapped
    index = tmp_path / "map.idx"
    index.write_bytes(built.read_bytes())
    folder = tmp_path / "photos"
    folder.mkdir()
    code, _, err = tscm(capsys, "index", "calibrate", "--index", index, "--data", folder, "--topic", "/camera/image")
    assert code == 2 and "apply to ROS bags" in err, err

"""`tscm loop-closure`: one traversal recorded as ROS 1, ROS 2 sqlite3 and MCAP gives the same
loop_closures.csv, finds the revisited places, accepts them under a calibrated threshold, and refuses
bad input in one line."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rosbags")

from helpers.bag_files import loop_route, write_bag, write_formats  # noqa: E402
from helpers.model_files import write_checkpoint  # noqa: E402
from tscm import cli  # noqa: E402
from tscm.deploy.retrieval.index import PlaceIndex  # noqa: E402

FRAMES, REVISITS = 10, 3  # places 0..6, then places 0..2 again, 0.5 s apart


def tscm(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[dict[str, Path], Path]:
    folder = tmp_path_factory.mktemp("loop")
    bags = write_formats(folder / "bags", loop_route(FRAMES, REVISITS))
    return bags, write_checkpoint(folder / "student", "student-tiny", 0)


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_the_three_formats_give_the_same_csv_and_find_the_revisited_places(setup, tmp_path, capsys):
    bags, checkpoint = setup
    texts = {}
    for fmt, bag in bags.items():
        code, out, err = tscm(capsys, "loop-closure", bag, "--checkpoint", checkpoint, "--out", tmp_path / fmt,
                              "--exclude-recent", "2", "--threads", "1", "--no-progress")
        assert code == 0, err
        assert (tmp_path / fmt / "trajectory.png").stat().st_size > 0
        texts[fmt] = (tmp_path / fmt / "loop_closures.csv").read_text()
        assert f"{FRAMES} frames" in out and "none accepted" in out
        # the default eager runtime points to the faster one where it is installed
        assert ("tip:" in out and "--runtime onnx" in out) == (importlib.util.find_spec("onnxruntime") is not None)
    assert texts["ros1"] == texts["sqlite3"] == texts["mcap"]
    rows = read_rows(tmp_path / "ros1" / "loop_closures.csv")
    assert list(rows[0])[:4] == ["query_stamp", "match_stamp", "score", "accepted"]
    assert len(rows) == FRAMES
    # Frames within 2 s of the start have no earlier frame outside the exclusion window.
    assert [row["match_stamp"] for row in rows[:4]] == [""] * 4
    for k in range(REVISITS):  # the revisit of place k: the same pixels, so the exact frame k at distance 0
        row = rows[FRAMES - REVISITS + k]
        assert int(row["match_index"]) == k and float(row["score"]) == pytest.approx(0.0, abs=1e-6)
        assert float(row["match_distance_m"]) == pytest.approx(5.0, abs=0.1)  # the way back runs 5 m beside
        assert row["accepted"] == "false"  # no threshold without --index
    stamps = [int(round(float(row["query_stamp"]) * 2)) for row in rows]
    assert stamps == list(range(stamps[0], stamps[0] + FRAMES))


@pytest.mark.slow
def test_onnx_runtime_gives_the_same_loop_closures_without_the_tip(setup, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    bags, checkpoint = setup
    tables = {}
    for runtime in ("torch", "onnx"):
        code, out, err = tscm(capsys, "loop-closure", bags["mcap"], "--checkpoint", checkpoint, "--out",
                              tmp_path / runtime, "--exclude-recent", "2", "--threads", "1", "--no-progress",
                              "--runtime", runtime)
        assert code == 0, err
        assert ("tip:" in out) == (runtime == "torch")
        tables[runtime] = read_rows(tmp_path / runtime / "loop_closures.csv")
    assert [row["match_index"] for row in tables["onnx"]] == [row["match_index"] for row in tables["torch"]]
    assert [row["accepted"] for row in tables["onnx"]] == [row["accepted"] for row in tables["torch"]]


@pytest.mark.slow
def test_a_calibrated_index_decides_and_sequences_score_the_last_frames(setup, tmp_path, capsys):
    bags, checkpoint = setup
    bag = bags["mcap"]
    code, _, err = tscm(capsys, "index", "build", "--checkpoint", checkpoint, "--bag", bag, "--backend", "flat",
                        "--out", tmp_path / "map.idx")
    assert code == 0, err
    # No threshold yet: refused in one line, nothing written.
    code, _, err = tscm(capsys, "loop-closure", bag, "--checkpoint", checkpoint, "--out", tmp_path / "none",
                        "--index", tmp_path / "map.idx", "--no-progress")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "no threshold calibrated for single frames" in err
    assert not (tmp_path / "none").exists()
    index = PlaceIndex.load(tmp_path / "map.idx")
    index.set_threshold({"distance": 1e-6, "target_precision": 0.99, "precision": 1.0, "recall": 1.0,
                         "calibrated_on": "test"})
    index.save(tmp_path / "map.idx")
    code, out, err = tscm(capsys, "loop-closure", bag, "--checkpoint", checkpoint, "--out", tmp_path / "single",
                          "--index", tmp_path / "map.idx", "--exclude-recent", "2", "--no-progress", "--threads", "1")
    assert code == 0, err
    rows = read_rows(tmp_path / "single" / "loop_closures.csv")
    accepted = [(int(row["query_index"]), int(row["match_index"])) for row in rows if row["accepted"] == "true"]
    assert accepted == [(FRAMES - REVISITS + k, k) for k in range(REVISITS)]
    assert f"{REVISITS} accepted" in out
    # Sequences of 2 frames: the second and third revisit frames continue a sequence through places 0, 1, 2.
    code, _, err = tscm(capsys, "loop-closure", bag, "--checkpoint", checkpoint, "--out", tmp_path / "seq",
                        "--sequence", "2", "--exclude-recent", "2", "--no-progress", "--threads", "1")
    assert code == 0, err
    rows = read_rows(tmp_path / "seq" / "loop_closures.csv")
    for k in (1, 2):
        row = rows[FRAMES - REVISITS + k]
        assert int(row["match_index"]) == k and float(row["score"]) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("score, threshold", [("ratio", 0.05), ("normalised", 0.0)])
def test_sequences_decide_by_the_score_their_threshold_was_calibrated_for(setup, tmp_path, capsys, score, threshold):
    """A sequence threshold on the ratio or the (signed) normalised score is applied to that score of the
    sequence row, not compared with the raw sequence distance."""
    bags, checkpoint = setup
    bag = bags["mcap"]
    code, _, err = tscm(capsys, "index", "build", "--checkpoint", checkpoint, "--bag", bag, "--backend", "flat",
                        "--out", tmp_path / "map.idx")
    assert code == 0, err
    index = PlaceIndex.load(tmp_path / "map.idx")
    index.set_threshold({"distance": threshold, "score": score, "exclusion": 1.0, "unit": "frame",
                         "sequence_length": 2, "target_precision": 0.99, "precision": 1.0, "recall": 1.0,
                         "calibrated_on": "test"})
    index.save(tmp_path / "map.idx")
    code, _, err = tscm(capsys, "loop-closure", bag, "--checkpoint", checkpoint, "--out", tmp_path / "seq",
                        "--index", tmp_path / "map.idx", "--sequence", "2", "--exclude-recent", "2", "--no-progress",
                        "--threads", "1")
    assert code == 0, err
    rows = read_rows(tmp_path / "seq" / "loop_closures.csv")
    for k in (1, 2):  # revisits continuing a sequence through places 0, 1, 2: distance 0, far below the rest
        row = rows[FRAMES - REVISITS + k]
        assert int(row["match_index"]) == k and row["accepted"] == "true"
        assert 0.5 < float(row["confidence"]) <= 1.0  # beyond the threshold on the confident side


@pytest.mark.slow
@pytest.mark.parametrize("sequence", [1, 2])
def test_a_threshold_in_metres_needs_positions_before_any_frame_is_read(setup, tmp_path, capsys, sequence):
    bags, checkpoint = setup
    code, _, err = tscm(capsys, "index", "build", "--checkpoint", checkpoint, "--bag", bags["ros1"], "--backend", "flat",
                        "--out", tmp_path / "map.idx")
    assert code == 0, err
    index = PlaceIndex.load(tmp_path / "map.idx")
    index.set_threshold({"distance": 0.5, "score": "ratio", "exclusion": 50.0, "unit": "m", "sequence_length": sequence,
                         "target_precision": 0.99, "precision": 1.0, "recall": 1.0, "calibrated_on": "test"})
    index.save(tmp_path / "map.idx")
    code, _, err = tscm(capsys, "loop-closure", bags["ros1"], "--checkpoint", checkpoint, "--out", tmp_path / "out",
                        "--index", tmp_path / "map.idx", "--sequence", sequence, "--position-topic", "none",
                        "--no-progress", "--threads", "1")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "compares places in metres" in err and "--position-topic" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_without_positions_the_picture_plots_stamps(setup, tmp_path, capsys):
    bags, checkpoint = setup
    code, _, err = tscm(capsys, "loop-closure", bags["ros1"], "--checkpoint", checkpoint, "--out", tmp_path,
                        "--position-topic", "none", "--every", "1s", "--no-progress", "--threads", "1")
    assert code == 0, err
    assert (tmp_path / "loop_closures.png").is_file() and not (tmp_path / "trajectory.png").exists()
    rows = read_rows(tmp_path / "loop_closures.csv")
    assert len(rows) == FRAMES // 2 and all(row["query_east"] == "" for row in rows)


def test_bad_input_is_one_line(setup, tmp_path, capsys):
    bags, checkpoint = setup
    unknown = loop_route(3, 0)
    for frame in unknown.frames:
        frame.encoding = "yuv422"
    weird = write_bag(tmp_path / "weird.bag", unknown, "ros1")
    cases = [
        (("loop-closure", weird, "--checkpoint", checkpoint, "--out", tmp_path / "a"), "encoding 'yuv422'"),
        (("loop-closure", bags["ros1"], "--topic", "/odom", "--checkpoint", checkpoint, "--out", tmp_path / "b"),
         "carries nav_msgs/Odometry, not images"),
        (("loop-closure", bags["ros1"], "--checkpoint", checkpoint, "--out", tmp_path / "c", "--exclude-recent", "-1"),
         "--exclude-recent"),
        (("loop-closure", bags["ros1"], "--checkpoint", checkpoint, "--out", tmp_path / "d", "--sequence", "0"),
         "--sequence"),
    ]
    for argv, expected in cases:
        code, _, err = tscm(capsys, *argv, "--no-progress")
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and expected in lines[0], (argv, err)
        assert not (tmp_path / "loop_closures.csv").exists()


def test_rerun_recording_or_a_clear_message_without_the_package(setup, tmp_path, capsys):
    bags, checkpoint = setup
    target = tmp_path / "run.rrd"
    code, _, err = tscm(capsys, "loop-closure", bags["ros1"], "--checkpoint", checkpoint, "--out", tmp_path / "out",
                        "--rerun", target, "--exclude-recent", "2", "--no-progress", "--threads", "1")
    try:
        import rerun  # noqa: F401
    except ImportError:
        assert code == 2 and "pip install 'tscm[rerun]'" in err and not target.exists()
        return
    assert code == 0, err
    assert target.stat().st_size > 0 and not list(tmp_path.glob(".run.rrd*"))


def snapshot(*paths: Path) -> dict[Path, bytes]:
    """The bytes of every file at or below `paths`."""
    files = [f for p in paths for f in ([p] if p.is_file() else sorted(q for q in p.rglob("*") if q.is_file()))]
    return {f: f.read_bytes() for f in files}


def test_an_out_folder_that_is_an_input_is_refused_before_the_bag_is_read(setup, tmp_path, capsys):
    """The checkpoint's or the ROS 2 bag's own folder, a folder whose loop_closures.csv or picture is a link
    to the bag, and a --rerun file named as one of the folder's files: one line each, nothing changed."""
    bags, checkpoint = setup
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "loop_closures.csv").symlink_to(bags["ros1"])
    hard = tmp_path / "hard"
    hard.mkdir()
    (hard / "trajectory.png").hardlink_to(bags["ros1"])
    cases = [
        (bags["ros1"], checkpoint, f"--out {checkpoint}: is the --checkpoint input"),
        (bags["sqlite3"], bags["sqlite3"], f"--out {bags['sqlite3']}: is the bag"),
        (next(bags["mcap"].glob("*.mcap")), bags["mcap"], f"--out {bags['mcap']}: is the bag's folder"),
        (bags["ros1"], linked, f"--out {linked / 'loop_closures.csv'}: is the bag"),
        (bags["ros1"], hard, f"--out {hard / 'trajectory.png'}: is the bag"),
        (bags["ros1"], bags["ros1"], f"--out {bags['ros1']}: is a file"),
    ]
    before = snapshot(checkpoint, *bags.values(), linked, hard)
    for bag, out, expected in cases:
        code, _, err = tscm(capsys, "loop-closure", bag, "--checkpoint", checkpoint, "--out", out, "--no-progress")
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and expected in lines[0], (out, err)
    assert snapshot(checkpoint, *bags.values(), linked, hard) == before
    assert sorted(p.name for p in linked.iterdir()) == ["loop_closures.csv"]


@pytest.mark.slow
def test_the_csv_and_its_picture_are_written_together_or_not_at_all(setup, tmp_path, capsys, monkeypatch):
    """A full disk while the picture is written keeps the earlier run's CSV: never a new table beside an
    old picture."""
    from tscm.experiments import traversal_loop_closure

    bags, checkpoint = setup
    out = tmp_path / "out"
    argv = ("loop-closure", bags["ros1"], "--checkpoint", checkpoint, "--out", out, "--no-progress", "--threads", "1")
    assert tscm(capsys, *argv, "--exclude-recent", "2")[0] == 0
    before = snapshot(out)

    def full_disk(folder, traversal, rows):
        raise OSError(28, "No space left on device", str(folder / "trajectory.png"))

    monkeypatch.setattr(traversal_loop_closure, "plot_loop_closures", full_disk)
    code, _, err = tscm(capsys, *argv, "--exclude-recent", "0")  # other matches: a different CSV
    assert code == 2 and "No space left" in err, err
    assert snapshot(out) == before
    assert sorted(p.name for p in out.iterdir()) == ["loop_closures.csv", "trajectory.png"]


@pytest.mark.parametrize("length", [str(2 * 10**9), str(10**30)])
def test_a_sequence_longer_than_the_traversal_scores_as_the_whole_traversal(length, setup, tmp_path, capsys):
    """--sequence 2e9 once allocated a 2e9-row history (and 10**30 overflowed): no frame looks back past the
    first, so any length past the traversal gives the CSV of the whole traversal's length."""
    bags, checkpoint = setup
    texts = {}
    for given in (str(FRAMES), length):
        out = tmp_path / f"seq-{len(given)}"
        code, _, err = tscm(capsys, "loop-closure", bags["mcap"], "--checkpoint", checkpoint, "--out", out,
                            "--sequence", given, "--exclude-recent", "2", "--no-progress", "--threads", "1")
        assert code == 0 and "Traceback" not in err, err
        texts[given] = (out / "loop_closures.csv").read_text()
    assert texts[str(FRAMES)] == texts[length]

"""Numeric and choice options out of range, for every command: refused at once (exit 2) with one line
naming the option and what it accepts, before any model runs or any output is touched."""

from __future__ import annotations

import pytest

from reliability.support import Snapshot, assert_refused, previous_output, tscm, write_image, write_manifest


@pytest.fixture
def frames_csv(tmp_path):
    """A frame-numbered CSV set (unit: frames) of real images."""
    for i in range(3):
        write_image(tmp_path / "f" / f"db{i}.jpg", seed=i)
        write_image(tmp_path / "f" / f"q{i}.jpg", seed=10 + i)
    rows = [(f"db{i}.jpg", i, "database") for i in range(3)] + [(f"q{i}.jpg", i, "query") for i in range(3)]
    return write_manifest(tmp_path / "f" / "frames.csv", rows, header="path,frame,role")


# (command words, the option's value in context, what the message must name)
EVALUATE = [
    (["--radius", "inf"], ["--radius", "finite"]),
    (["--radius", "nan"], ["--radius", "finite"]),
    (["--radius", "-1"], ["--radius", "positive"]),
    (["--radius", "0"], ["--radius", "positive"]),
    (["--device", "tpu"], ["--device", "'tpu'", "cpu"]),
    (["--ns", "0", "5"], ["Recall@N", "positive"]),
    (["--sequence", "0"], ["--sequence", "≥ 1"]),
]


@pytest.mark.parametrize("words, named", EVALUATE, ids=[" ".join(w) for w, _ in EVALUATE])
def test_evaluate_refuses_a_bad_option(words, named, small, tmp_path, capsys):
    import numpy as np

    descriptors = tmp_path / "d.npz"
    np.savez(descriptors, db=np.eye(4, 8, dtype=np.float32), queries=np.eye(3, 8, dtype=np.float32))
    before = previous_output(tmp_path / "result.json")
    outcome = tscm(capsys, "evaluate", small, "--descriptors", descriptors, "--json", tmp_path / "result.json", *words)
    assert_refused(outcome, "evaluate", *named)
    before.assert_unchanged()


CHECKPOINT_EVALUATE = [
    (["--batch-size", "0"], ["--batch-size", "0"]),
    (["--num-workers", "-1"], ["--num-workers", "-1"]),
]


@pytest.mark.parametrize("words, named", CHECKPOINT_EVALUATE, ids=[" ".join(w) for w, _ in CHECKPOINT_EVALUATE])
def test_evaluate_with_a_checkpoint_refuses_a_bad_option(words, named, small, tmp_path, capsys, checkpoints):
    before = previous_output(tmp_path / "d.npz")
    outcome = tscm(capsys, "evaluate", small, "--checkpoint", checkpoints["student"], "--save-descriptors",
                   tmp_path / "d.npz", *words)
    assert_refused(outcome, "evaluate", *named)
    before.assert_unchanged()


@pytest.mark.parametrize("radius, named", [("1.5", ["--radius", "whole number of frames"]), ("-1", ["--radius", "frames"]),
                                           ("nan", ["--radius", "finite"])])
def test_a_frame_radius_must_be_whole_frames(radius, named, frames_csv, capsys):
    assert_refused(tscm(capsys, "check-data", frames_csv, "--radius", radius), "check-data", *named)


def test_check_data_refuses_bad_radius_and_workers(small, capsys):
    assert_refused(tscm(capsys, "check-data", small, "--radius", "inf"), "check-data", "--radius", "finite")
    assert_refused(tscm(capsys, "check-data", small, "--workers", "0"), "check-data", "--workers", "≥ 1")


QUERY = [
    (["-k", "0"], ["-k", "positive"]),
    (["-k", "-3"], ["-k", "positive"]),
    (["--threads", "-1"], ["--threads", "positive"]),
    (["--threads", "0"], ["--threads", "positive"]),
]


@pytest.mark.parametrize("words, named", QUERY, ids=[" ".join(w) for w, _ in QUERY])
def test_query_refuses_a_bad_option(words, named, index_file, small, capsys):
    image = small.parent.parent / "query" / "q" / "000000_pitch1_yaw1.jpg"
    assert_refused(tscm(capsys, "query", "--index", index_file, image, *words), "query", *named)


INDEX_BUILD = [
    (["--batch-size", "0"], ["--batch-size", "positive"]),
    (["--threads", "-1"], ["--threads", "≥ 1"]),
    (["--backend", "flat", "--param", "storage"], ["--param", "NAME=VALUE"]),
    (["--backend", "ivfpq", "--param", "nlist=-4"], ["nlist", "positive"]),
    (["--backend", "flat", "--param", "storage=fp8"], ["storage", "fp8"]),
]


@pytest.mark.parametrize("words, named", INDEX_BUILD, ids=[" ".join(w) for w, _ in INDEX_BUILD])
def test_index_build_refuses_a_bad_option(words, named, small, tmp_path, capsys, checkpoints):
    before = previous_output(tmp_path / "map.idx")
    outcome = tscm(capsys, "index", "build", "--checkpoint", checkpoints["student"], "--images", small,
                   "--out", tmp_path / "map.idx", *words)
    assert_refused(outcome, "index", *named)
    before.assert_unchanged()


CALIBRATE = [
    pytest.param(["--target-precision", "150"], ["--target-precision", "150"], id="--target-precision 150"),
    pytest.param(["--target-precision", "0"], ["precision"], id="--target-precision 0"),
    pytest.param(["--target-precision", "nan"], ["precision", "nan"], id="--target-precision nan"),
    pytest.param(["--sequence", "0"], ["--sequence", "≥ 1"], id="--sequence 0"),
    pytest.param(["--radius", "-1"], ["--radius", "positive"], id="--radius -1"),
]


@pytest.mark.parametrize("words, named", CALIBRATE)
def test_index_calibrate_refuses_a_bad_option(words, named, index_file, small, tmp_path, capsys):
    import shutil

    index = tmp_path / "map.idx"
    shutil.copy(index_file, index)
    before = Snapshot(index)
    outcome = tscm(capsys, "index", "calibrate", "--index", index, "--data", small.parent.parent, "--split", "val", *words)
    assert_refused(outcome, "index", *named)
    before.assert_unchanged()


EXPORT = [
    pytest.param(["--opset", "5"], ["--opset", "5"], id="--opset 5"),
    pytest.param(["--opset", "99"], ["--opset", "99"], id="--opset 99"),
    pytest.param(["--precision", "int8"], ["--calibration"], id="int8 without --calibration"),
    pytest.param(["--precision", "int8", "--calibration", "{small}", "--calibration-images", "0"],
                 ["--calibration-images", "0"], id="--calibration-images 0"),
]


@pytest.mark.parametrize("words, named", EXPORT)
def test_export_refuses_a_bad_option(words, named, small, tmp_path, capsys, checkpoints):
    before = previous_output(tmp_path / "model.onnx")
    outcome = tscm(capsys, "export", checkpoints["student"], "--onnx", tmp_path / "model.onnx", "--exporter", "torchscript",
                   *[w.format(small=small) for w in words])
    assert_refused(outcome, "export", *named)
    before.assert_unchanged()


SYNTH = [
    (["--image-size", "0"], ["image_size", "8"]),
    (["--jpeg-quality", "0"], ["jpeg_quality", "1..100"]),
    (["--workers", "-1"], ["--workers", "-1"]),
    (["--db-headings", "5"], ["db_headings", "5"]),
    (["--difficulty", "nan"], ["difficulty", "nan"]),
    (["--street-length", "inf"], ["street_length", "inf"]),
    (["--db-spacing", "-2"], ["spacing", "positive"]),
    (["--supersample", "9"], ["supersample", "1..4"]),
]


@pytest.mark.parametrize("words, named", SYNTH, ids=[" ".join(w) for w, _ in SYNTH])
def test_synth_refuses_a_bad_knob(words, named, tmp_path, capsys):
    outcome = tscm(capsys, "synth", tmp_path / "city", "--preset", "tiny", *words)
    assert_refused(outcome, "synth", *named)
    assert not (tmp_path / "city").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".city")]  # no staging folder left


RUNS = [
    (["--device", "tpu"], ["--device", "'tpu'"]),
    (["--batch-size", "0"], ["--batch-size", "≥ 1"]),
    (["--threads", "-1"], ["--threads", "≥ 0"]),
    (["--epochs", "0"], ["--epochs", "≥ 1"]),
    (["--max-queries", "0"], ["--max-queries", "≥ 1"]),
    (["--set", "train.lr=fast"], ["train.lr", "'fast'"]),
    (["--set", "train.colour=blue"], ["train.colour"]),
    (["--set", "lr=1"], ["'lr'"]),
    (["--teacher-config", "no_such_preset"], ["no_such_preset"]),
    (["--data", "{tmp}/nowhere"], ["nowhere"]),
]


@pytest.mark.parametrize("command", ["demo", "ablation"])
@pytest.mark.parametrize("words, named", RUNS, ids=[" ".join(w) for w, _ in RUNS])
def test_demo_and_ablation_refuse_a_bad_option_before_starting(command, words, named, small_root, tmp_path, capsys,
                                                               stop_before_work):
    out = tmp_path / "run"
    words = [w.format(tmp=tmp_path) for w in words]
    data = [] if "--data" in words else ["--data", small_root]
    outcome = tscm(capsys, command, *data, "--out", out, "--quick", "--no-progress", *words)
    assert_refused(outcome, command, *named)
    assert not out.exists(), "a refused run left its folder behind (a second try with the same --out is refused)"


def test_ablation_refuses_an_unknown_row_and_a_missing_teacher(small_root, tmp_path, capsys, stop_before_work):
    out = tmp_path / "run"
    outcome = tscm(capsys, "ablation", "--data", small_root, "--out", out, "--quick", "--rows", "tscm", "sparkle")
    assert_refused(outcome, "ablation", "sparkle")
    outcome = tscm(capsys, "ablation", "--data", small_root, "--out", out, "--quick", "--teacher", tmp_path / "no-teacher")
    assert_refused(outcome, "ablation", "no-teacher")
    assert not out.exists()


BENCH = [
    pytest.param(["--threads", "-1"], ["--threads", "≥ 1"], id="--threads -1"),
    pytest.param(["--sizes", "0"], ["--sizes", "0", "2.."], id="--sizes 0"),
    pytest.param(["--queries", "-5"], ["--queries", "-5", "1.."], id="--queries -5"),
    pytest.param(["--batch-sizes", "0"], ["--batch-sizes", "0"], id="--batch-sizes 0"),
    pytest.param(["--radius", "nan"], ["--radius", "nan"], id="--radius nan"),
    pytest.param(["--budget", "-1"], ["--budget", "-1"], id="--budget -1"),
]


@pytest.mark.parametrize("words, named", BENCH)
def test_bench_refuses_a_bad_option_before_timing(words, named, capsys, stop_before_work):
    assert_refused(tscm(capsys, "bench", "--quick", *words), "bench", *named)


TRAINING = [
    (["--train.lr", "nan"], ["train.lr", "nan"]),
    (["--set", "train.epochs=0"], ["train.epochs", "≥ 1"]),
    (["--train.device", "tpu"], ["train.device", "'tpu'"]),
    (["--set", "data.num_workers=-1"], ["data.num_workers", "≥ 0"]),
    (["--set", "train.batch_size=0"], ["train.batch_size", "≥ 1"]),
    (["--set", "mining.pos_radius_m=inf"], ["mining.pos_radius_m", "finite"]),
    (["--set", "train.checkpoint_every_steps=0"], ["train.checkpoint_every_steps", "≥ 1"]),
    (["--set", "train.optimizer=adamw"], ["train.optimizer", "adam"]),
    (["--set", "train.lr"], ["train.lr", "section.field=value"]),
]


@pytest.mark.parametrize("command", ["train-teacher", "distill"])
@pytest.mark.parametrize("words, named", TRAINING, ids=[" ".join(w) for w, _ in TRAINING])
def test_training_refuses_a_bad_setting(command, words, named, tmp_path, capsys):
    outcome = tscm(capsys, command, "--set", f"run.output_dir={tmp_path}", *words)
    assert_refused(outcome, command, *named)
    assert not any(tmp_path.iterdir()), "a refused run left a run folder behind"


@pytest.mark.parametrize("command", ["demo", "ablation"])
def test_demo_and_ablation_refuse_an_out_folder_that_holds_something(command, small_root, tmp_path, capsys,
                                                                    stop_before_work):
    out = tmp_path / "run"
    before = previous_output(out / "results.json")
    outcome = tscm(capsys, command, "--data", small_root, "--out", out, "--quick")
    assert_refused(outcome, command, str(out), "not an empty folder")
    before.assert_unchanged()


def test_synth_keeps_a_folder_that_is_not_a_city(tmp_path, capsys):
    out = tmp_path / "photos"
    before = previous_output(out / "holiday.jpg", b"\xff\xd8 my own picture")
    assert_refused(tscm(capsys, "synth", out, "--preset", "tiny"), "synth", str(out), "not empty")
    assert_refused(tscm(capsys, "synth", out, "--preset", "tiny", "--overwrite"), "synth", str(out), "synth.json")
    before.assert_unchanged()


SYNTH_LINKS = [  # (id, make OUT in a folder, what the message names)
    ("a symbolic link loop", lambda d: _linked(d / "out", d / "out2", d / "out"), "Too many levels of symbolic links"),
    ("a dangling link", lambda d: _linked(d / "out", d / "nowhere"), "symbolic link to a missing folder"),
    ("a path through a file", lambda d: previous_output(d / "file", b"mine\n") and d / "file" / "out", "Not a directory"),
]


def _linked(link, target, back=None):
    link.symlink_to(target)
    if back is not None:
        target.symlink_to(back)
    return link


@pytest.mark.parametrize("case, make, named", SYNTH_LINKS, ids=[c[0] for c in SYNTH_LINKS])
def test_synth_refuses_an_out_it_cannot_create_before_rendering(case, make, named, tmp_path, capsys):
    """A loop or dangling link as OUT failed only after the whole city was rendered ("....partial: Not a
    directory")."""
    folder = tmp_path / "here"
    folder.mkdir()
    out = make(folder)
    before = Snapshot(folder)
    assert_refused(tscm(capsys, "synth", out, "--preset", "tiny"), "synth", str(out), named, absent=["partial"])
    before.assert_unchanged()
    assert not [p.name for p in folder.iterdir() if ".partial-" in p.name]


@pytest.mark.slow
def test_synth_into_a_link_to_an_empty_folder_writes_the_city_there(tmp_path, capsys):
    """The city used to replace the link itself, leaving the old link behind as a hidden .partial entry."""
    target = tmp_path / "disk" / "city"
    target.mkdir(parents=True)
    link = tmp_path / "city-link"
    link.symlink_to(target)
    outcome = tscm(capsys, "synth", link, "--preset", "tiny", "--workers", 1)
    assert outcome.code == 0, outcome.err
    assert link.is_symlink() and (target / "synth.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["city-link", "disk"]


def test_synth_overwrite_keeps_the_users_files_in_a_city(city, tmp_path, capsys):
    import shutil

    out = tmp_path / "city"
    shutil.copytree(city, out)
    (out / "notes.txt").write_text("my notes\n", encoding="utf-8")
    before = Snapshot(out)
    assert_refused(tscm(capsys, "synth", out, "--preset", "tiny", "--overwrite"), "synth", str(out), "notes.txt")
    before.assert_unchanged()

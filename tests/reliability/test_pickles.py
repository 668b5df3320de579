"""A pickle whose `__reduce__` would create a marker file, put in every kind of file a command accepts:
each is refused with one line naming the file, and the marker never appears (the `marker` fixture
fails the test if it does)."""

from __future__ import annotations

import pickle
import shutil

import numpy as np
import pytest
import torch

from reliability.support import Payload, Snapshot, assert_refused, copy_tree, training_args, tscm


def evil_object_array(marker, count=3):
    array = np.empty(count, dtype=object)
    array[:] = [Payload(marker)] * count
    return array


def raw_pickle(marker):
    return pickle.dumps({"state_dict": {"w": Payload(marker)}}, protocol=2)


def test_ground_truth_npz(tmp_path, capsys, marker):
    path = tmp_path / "gt.npz"
    np.savez(path, utmDb=evil_object_array(marker), utmQ=np.zeros((2, 2)), posDistThr=np.array(25.0))
    assert_refused(tscm(capsys, "check-data", path), "check-data", "gt.npz", "pickled")


def vpr_bench_folder(root, ground_truth):
    from reliability.support import write_image

    for i in range(2):
        write_image(root / "ref" / f"{i}.jpg", seed=i)
        write_image(root / "query" / f"{i}.jpg", seed=10 + i)
    np.save(root / "ground_truth_new.npy", ground_truth, allow_pickle=True)
    return root


def test_vpr_bench_ground_truth_npy(tmp_path, capsys, marker):
    rows = np.empty((2, 2), dtype=object)
    rows[0] = [0, Payload(marker)]
    rows[1] = [1, [1]]
    root = vpr_bench_folder(tmp_path / "vpr", rows)
    assert_refused(tscm(capsys, "check-data", root), "check-data", "ground_truth_new.npy", "refused to unpickle")
    # the same layout with plain rows is read (the restricted unpickler is not simply refusing everything)
    plain = np.empty((2, 2), dtype=object)
    plain[0], plain[1] = [0, [0]], [1, [1]]
    root = vpr_bench_folder(tmp_path / "vpr-plain", plain)
    outcome = tscm(capsys, "check-data", root)
    assert outcome.code == 0 and "result: OK" in outcome.out, outcome.out


def test_a_pickle_named_mat(tmp_path, capsys, marker):
    path = tmp_path / "pitts30k_test.mat"
    path.write_bytes(pickle.dumps(Payload(marker), protocol=2))
    assert_refused(tscm(capsys, "check-data", path), "check-data", "pitts30k_test.mat", "MATLAB")


def test_a_pickle_named_csv(tmp_path, capsys, marker):
    path = tmp_path / "set.csv"
    path.write_bytes(pickle.dumps(Payload(marker), protocol=2))
    assert_refused(tscm(capsys, "check-data", path), "check-data", "set.csv")


def test_a_pickle_as_index_file(tmp_path, small, capsys, marker):
    index = tmp_path / "map.idx"
    index.write_bytes(pickle.dumps(Payload(marker), protocol=2))
    before = Snapshot(index)
    image = small.parent.parent / "query" / "q" / "000000_pitch1_yaw1.jpg"
    assert_refused(tscm(capsys, "query", "--index", index, image), "query", "map.idx")
    assert_refused(tscm(capsys, "index", "calibrate", "--index", index, "--data", small.parent.parent), "index", "map.idx")
    before.assert_unchanged()


def test_a_pickle_as_onnx_model(tmp_path, small, capsys, marker):
    model = tmp_path / "model.onnx"
    model.write_bytes(pickle.dumps(Payload(marker), protocol=2))
    assert_refused(tscm(capsys, "evaluate", small, "--checkpoint", model), "evaluate", "model.onnx")
    assert_refused(tscm(capsys, "index", "build", "--checkpoint", model, "--images", small, "--out", tmp_path / "m.idx"),
                   "index", "model.onnx")


@pytest.mark.parametrize("target", ["model.safetensors", "meta.json"])
def test_a_pickle_inside_a_checkpoint(target, student, small, capsys, marker):
    (student / target).write_bytes(pickle.dumps(Payload(marker), protocol=2))
    assert_refused(tscm(capsys, "evaluate", small, "--checkpoint", student), "evaluate", target)
    assert_refused(tscm(capsys, "export", student, "--onnx", student.parent / "m.onnx"), "export", target)


def test_a_pickle_as_published_checkpoint(tmp_path, capsys, marker):
    path = tmp_path / "published.pth.tar"
    path.write_bytes(raw_pickle(marker))
    outcome = tscm(capsys, "import-official", path, "--role", "teacher", "--out", tmp_path / "out")
    assert_refused(outcome, "import-official", "published.pth.tar", absent=["weights_only=False"])


def test_a_pickle_as_backbone_weights(city, tmp_path, capsys, marker):
    weights = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": Payload(marker)}, weights)
    outcome = tscm(capsys, *training_args("train-teacher", city, tmp_path / "runs", "r", "model.pretrained=true",
                                          f"model.backbone_weights={weights}"))
    assert_refused(outcome, "train-teacher", "resnet.pth", absent=["weights_only=False"])


def test_a_pickle_as_training_state(trained_runs, tmp_path, capsys, marker):
    run = copy_tree(trained_runs["teacher"], tmp_path / "teacher")
    for folder in ("last", "last.prev"):
        (run / folder / "training_state.safetensors").write_bytes(raw_pickle(marker))
    outcome = tscm(capsys, "train-teacher", "--resume", run, "--set", "train.epochs=2")
    assert_refused(outcome, "train-teacher", "last.prev/", "unreadable training state", "no intact checkpoint")


def test_a_pickle_as_run_results(tmp_path, capsys, marker):
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_bytes(pickle.dumps(Payload(marker), protocol=2))
    assert_refused(tscm(capsys, "visualize", run), "visualize", "results.json")


def test_a_pickle_as_teacher_folder(tmp_path, city, capsys, marker):
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "meta.json").write_bytes(pickle.dumps(Payload(marker), protocol=2))
    shutil.copy(teacher / "meta.json", teacher / "model.safetensors")
    outcome = tscm(capsys, *training_args("distill", city, tmp_path / "runs", "s"), "--teacher", teacher)
    assert_refused(outcome, "distill", "meta.json")

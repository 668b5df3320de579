"""Faults outside the input: a full disk, a read-only output folder, and SIGKILL in the middle of a
write. Afterwards the output is the old file or folder or the complete new one (loaded with tscm's
own loaders), and a failed command says so in one line, not a raw OSError or SafetensorError."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from reliability.support import Snapshot, assert_refused, copy_tree, tscm

DRIVER = Path(__file__).with_name("kill_driver.py")


class SmallDisk:
    """A tmpfs mounted for one test: fill it up, or make it read-only."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def fill(self, leave: int = 0) -> None:
        """Use up the free space, leaving about `leave` bytes."""
        filler = self.root / ".filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            while True:
                os.write(fd, b"\0" * 65536)
        except OSError as error:
            assert error.errno == errno.ENOSPC
        finally:
            os.close(fd)
        if leave:
            os.truncate(filler, max(0, filler.stat().st_size - leave))
        stats = os.statvfs(self.root)
        assert stats.f_bavail * stats.f_frsize <= leave + 65536

    def read_only(self) -> None:
        subprocess.run(["mount", "-o", "remount,ro", str(self.root)], check=True, capture_output=True)


def mount_tmpfs(root: Path, size: str) -> SmallDisk:
    root.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a small tmpfs needs root and mount(8); the simulated ENOSPC cases below still run")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(root)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"mount -t tmpfs is not allowed here ({done.stderr.strip()}); the simulated ENOSPC cases still run")
    return SmallDisk(root)


@pytest.fixture
def disk(tmp_path):
    disk = mount_tmpfs(tmp_path / "disk", "48m")
    yield disk
    subprocess.run(["umount", "-l", str(disk.root)], capture_output=True)


def evaluate_args(small, out):
    return ["evaluate", small, "--checkpoint", "{student}", "--json", out]


# ----- full disk and read-only folder --------------------------------------------------------------


def write_old(path: Path, data: bytes = b"earlier output\n") -> Snapshot:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return Snapshot(path)


@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_evaluate_outputs_on_a_failing_disk(fault, disk, small, checkpoints, capsys):
    json_out, npz_out = disk.root / "result.json", disk.root / "d.npz"
    before = Snapshot(*(p for p in (json_out, npz_out) if write_old(p)))
    disk.fill() if fault == "full" else disk.read_only()
    outcome = tscm(capsys, "evaluate", small, "--checkpoint", checkpoints["student"], "--save-descriptors", npz_out,
                   "--json", json_out)
    message = assert_refused(outcome, "evaluate", "d.npz", absent=["Errno"])
    assert ("No space left" if fault == "full" else "Read-only") in message
    before.assert_unchanged()


@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_index_build_on_a_failing_disk(fault, disk, small, checkpoints, capsys):
    index = disk.root / "map.idx"
    before = write_old(index)
    disk.fill() if fault == "full" else disk.read_only()
    outcome = tscm(capsys, "index", "build", "--checkpoint", checkpoints["student"], "--images", small, "--out", index)
    assert_refused(outcome, "index", "map.idx", absent=["SafetensorError", "IoError"])
    before.assert_unchanged()


@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_index_calibrate_on_a_failing_disk(fault, disk, index_file, small, capsys):
    index = disk.root / "map.idx"
    shutil.copy(index_file, index)
    before = Snapshot(index)
    disk.fill() if fault == "full" else disk.read_only()
    outcome = tscm(capsys, "index", "calibrate", "--index", index, "--data", small.parent.parent, "--target-precision", 50,
                   "--bound", "none")  # three queries: too few for a confidence bound; the disk is what fails here
    assert_refused(outcome, "index", "map.idx", absent=["SafetensorError", "IoError"])
    before.assert_unchanged()


@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_export_on_a_failing_disk(fault, disk, checkpoints, capsys):
    onnx = disk.root / "model.onnx"
    before = write_old(onnx)
    disk.fill() if fault == "full" else disk.read_only()
    outcome = tscm(capsys, "export", checkpoints["student"], "--onnx", onnx, "--exporter", "torchscript", "--no-parity-check")
    assert_refused(outcome, "export", "model.onnx")
    before.assert_unchanged()


@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_synth_overwrite_on_a_failing_disk(fault, disk, city, capsys):
    target = copy_tree(city, disk.root / "city")
    before = Snapshot(target)
    disk.fill(leave=200_000) if fault == "full" else disk.read_only()  # room for a few images, not a city
    outcome = tscm(capsys, "synth", target, "--preset", "tiny", "--seed", 3, "--overwrite")
    assert_refused(outcome, "synth", str(target))
    before.assert_unchanged()
    assert [p.name for p in disk.root.iterdir() if p.name.startswith(".city")] == []  # no half city left


@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_import_official_on_a_failing_disk(fault, disk, tmp_path, capsys, monkeypatch, checkpoints):
    """--overwrite onto a checkpoint on a failing disk keeps it (the published file is stood in for by
    a small model, so the test needs no published weights)."""
    from tscm.models import official
    from tscm.models.checkpoint import load_checkpoint

    model, _ = load_checkpoint(checkpoints["student_other"])
    monkeypatch.setattr(official, "load_official_with_report", lambda path, role: (model, official.ImportReport()))
    out = copy_tree(checkpoints["student"], disk.root / "imported")
    before = Snapshot(out)
    disk.fill() if fault == "full" else disk.read_only()
    published = tmp_path / "published.pth.tar"
    published.write_bytes(b"stand-in")
    outcome = tscm(capsys, "import-official", published, "--role", "student", "--out", out, "--overwrite")
    assert_refused(outcome, "import-official", "imported", absent=["SafetensorError", "IoError"])
    before.assert_unchanged()


@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_a_checkpoint_write_on_a_failing_disk_keeps_the_last_checkpoint(fault, disk, trained_runs, capsys):
    run = copy_tree(trained_runs["teacher"], disk.root / "teacher")
    before = Snapshot(run / "last", run / "best", run / "last.prev")
    # room for the command log and the metrics, not for a checkpoint
    disk.fill(leave=300_000) if fault == "full" else disk.read_only()
    outcome = tscm(capsys, "train-teacher", "--resume", run, "--set", "train.epochs=2",
                   "--set", "train.checkpoint_every_steps=1")
    assert_refused(outcome, "train-teacher", str(run), absent=["SafetensorError", "IoError"])
    before.assert_unchanged()


def test_a_safetensors_disk_error_is_one_line(student, tmp_path, capsys, monkeypatch):
    """Without a tmpfs: safetensors reports ENOSPC as SafetensorError; the user sees one line, the old file stays."""
    import safetensors.torch
    from safetensors import SafetensorError

    from tscm.models import official
    from tscm.models.checkpoint import load_checkpoint

    def full_disk(*args, **kwargs):
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                              'message: "No space left on device" })')

    model, _ = load_checkpoint(student)
    monkeypatch.setattr(official, "load_official_with_report", lambda path, role: (model, official.ImportReport()))
    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    before = Snapshot(student)
    published = tmp_path / "published.pth.tar"
    published.write_bytes(b"stand-in")
    outcome = tscm(capsys, "import-official", published, "--role", "student", "--out", student, "--overwrite")
    message = assert_refused(outcome, "import-official", "model.safetensors", "No space left on device",
                             absent=["SafetensorError", "IoError"])
    assert "previous file is kept" in message
    before.assert_unchanged()


def test_an_enospc_while_writing_json_is_one_line(small, tmp_path, capsys, monkeypatch):
    """Without a tmpfs: a write that raises OSError(ENOSPC) keeps the old file and says so in one line."""
    import numpy as np

    from tscm import fileio

    descriptors = tmp_path / "d.npz"
    np.savez(descriptors, db=np.eye(4, 8, dtype=np.float32), queries=np.eye(3, 8, dtype=np.float32))
    before = write_old(tmp_path / "result.json")

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(fileio.os, "replace", no_space)
    outcome = tscm(capsys, "evaluate", small, "--descriptors", descriptors, "--json", tmp_path / "result.json")
    assert_refused(outcome, "evaluate", "result.json", "No space left on device", "previous file is kept")
    before.assert_unchanged()


# ----- SIGKILL in the middle of a write ----------------------------------------------------------


def kill_trials(tmp_path: Path, spec: dict) -> dict:
    """Run the kill driver in a subprocess; its report lists every trial and what it left."""
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec))
    report = tmp_path / "report.json"
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(DRIVER), str(spec_file), str(report)], capture_output=True, text=True,
                          timeout=600, env=environment)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(report.read_text())
    trials = result["trials"]
    assert trials[0]["exit"] == 0 and trials[0]["state"] == "new", trials[0]
    broken = [t for t in trials if t["state"] not in ("old", "new")]
    assert not broken, json.dumps(broken, indent=1)
    assert any(t["killed"] for t in trials[1:]), "no trial was killed"
    return result


def stringify(argv):
    return [str(a) for a in argv]


@pytest.mark.slow
def test_kill_during_index_build(tmp_path, small_root, checkpoints, index_file, city):
    target = tmp_path / "out" / "map.idx"
    target.parent.mkdir()
    argv = ["index", "build", "--checkpoint", checkpoints["student"], "--images", city / "synth_test.mat", "--out", target]
    result = kill_trials(tmp_path, {"argv": stringify(argv), "target": str(target), "old": str(index_file),
                                    "check": "index", "points": 4, "delays": [0.5, 0.8, 0.9, 0.97], "seed": 1})
    assert result["renames"] >= 1


@pytest.mark.slow
def test_kill_during_export(tmp_path, checkpoints, capsys):
    old = tmp_path / "old.onnx"
    assert tscm(capsys, "export", checkpoints["student_other"], "--onnx", old, "--exporter", "torchscript",
                "--no-parity-check").code == 0
    target = tmp_path / "out" / "model.onnx"
    target.parent.mkdir()
    argv = ["export", checkpoints["student"], "--onnx", target, "--exporter", "torchscript", "--no-parity-check"]
    result = kill_trials(tmp_path, {"argv": stringify(argv), "target": str(target), "old": str(old), "check": "onnx",
                                    "points": 4, "delays": [0.6, 0.85, 0.95], "seed": 2})
    assert result["renames"] >= 1


@pytest.mark.slow
def test_kill_during_a_training_checkpoint_write(tmp_path, trained_runs):
    old = trained_runs["teacher"]
    target = tmp_path / "runs" / "teacher"
    target.parent.mkdir()
    argv = ["train-teacher", "--resume", target, "--set", "train.epochs=2", "--set", "train.checkpoint_every_steps=1"]
    result = kill_trials(tmp_path, {"argv": stringify(argv), "target": str(target), "old": str(old), "check": "run",
                                    "points": 4, "delays": [0.6, 0.9], "seed": 3})
    assert result["renames"] >= 4  # checkpoint folders swapped into place several times


@pytest.mark.slow
def test_kill_during_synth_overwrite(tmp_path, city):
    old = tmp_path / "old-city"
    shutil.copytree(city, old)
    target = tmp_path / "out" / "city"
    target.parent.mkdir()
    argv = ["synth", target, "--preset", "tiny", "--seed", 5, "--overwrite"]
    kill_trials(tmp_path, {"argv": stringify(argv), "target": str(target), "old": str(old), "check": "city",
                           "points": 6, "delays": [0.3, 0.6, 0.9, 0.95, 0.99], "seed": 4,
                           "city": {"preset": "tiny", "old_seed": 0, "new_seed": 5}})

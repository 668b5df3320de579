"""Fixtures of the reliability suite: tiny checkpoints, a small data set and index, two short training runs
(the tiny city and the checkpoints themselves come from tests/conftest.py); all made once per session and
copied by the tests that damage them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tscm import cli

from helpers.placeset_files import write_pittsburgh
from reliability.support import training_args


@pytest.fixture
def marker(tmp_path) -> Path:
    """Where a pickle payload would leave its trace; the test fails if it exists afterwards."""
    path = tmp_path / "PAYLOAD-RAN"
    yield path
    assert not path.exists(), "a pickle payload was executed"


@pytest.fixture(scope="session")
def small_root(tmp_path_factory) -> Path:
    """A seven-image Pittsburgh-layout set (4 database images, 3 queries; splits test and val with the same
    images); never damaged."""
    root = tmp_path_factory.mktemp("small") / "small"
    write_pittsburgh(root)
    write_pittsburgh(root, split="val", with_images=False)
    return root


@pytest.fixture
def small(small_root, tmp_path) -> Path:
    """A private copy of the small set; returns its structure file (root/datasets/pitts30k_test.mat)."""
    root = tmp_path / "small"
    shutil.copytree(small_root, root)
    return root / "datasets" / "pitts30k_test.mat"


@pytest.fixture(scope="session")
def checkpoints(tiny_student, tiny_student_other, tiny_teacher) -> dict[str, Path]:
    """Untrained tiny checkpoints (tests/conftest.py): two students with different weights and a teacher."""
    return {"student": tiny_student, "student_other": tiny_student_other, "teacher": tiny_teacher}


@pytest.fixture
def student(checkpoints, tmp_path) -> Path:
    """A private copy of the student checkpoint (safe to damage)."""
    copy = tmp_path / "student_copy"
    shutil.copytree(checkpoints["student"], copy)
    return copy


@pytest.fixture(scope="session")
def index_file(tmp_path_factory, small_root, checkpoints) -> Path:
    """An index of the small set's database, built with the student; copy it before damaging it."""
    out = tmp_path_factory.mktemp("index") / "map.idx"
    assert cli.main(["index", "build", "--checkpoint", str(checkpoints["student"]),
                     "--images", str(small_root / "datasets" / "pitts30k_test.mat"), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def trained_runs(tmp_path_factory, city) -> dict[str, Path]:
    """A finished tiny teacher run (checkpointed every step, so it keeps last.prev/) and a student run
    distilled from its best checkpoint."""
    out = tmp_path_factory.mktemp("runs")
    assert cli.main(training_args("train-teacher", city, out, "teacher", "train.checkpoint_every_steps=1")) == 0
    assert cli.main([*training_args("distill", city, out, "student"), "--teacher", str(out / "teacher" / "best")]) == 0
    return {"teacher": out / "teacher", "student": out / "student"}


@pytest.fixture
def stop_before_work(monkeypatch):
    """Make the heavy part of demo, ablation and bench fail loudly: an unchecked option would reach it."""
    def reached(*args, **kwargs):
        raise AssertionError("the command started working: its options were not checked first")

    import tscm.bench.suite
    import tscm.experiments.ablation
    import tscm.experiments.demo

    monkeypatch.setattr(tscm.experiments.demo, "measure_raw_pixels", reached)
    monkeypatch.setattr(tscm.experiments.ablation, "measure_raw_pixels", reached)
    for part in ("_extraction", "_accuracy", "_matching", "_mining"):
        monkeypatch.setattr(tscm.bench.suite, part, reached)

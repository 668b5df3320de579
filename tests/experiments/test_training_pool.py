"""Training runs side by side (`--jobs`): each run in its own process gives the same weights as alone with
the same threads; a distilled student waits for its teacher; a failed run stops the pool with its error."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tscm.config import load_config
from tscm.data.synthetic.city import ensure_synthetic_city
from tscm.errors import TscmError
from tscm.experiments.training_pool import TrainingTask, run_tasks, threads_per_job
from tscm.models.checkpoint import read_metadata

TINY = ["train.max_queries_per_epoch=8", "train.batch_size=4", "train.epochs=1", "train.patience=0",
        "train.progress=false", "train.threads=1", "mining.num_negatives=2", "mining.num_random=16",
        "mining.batch_size=36", "eval.batch_size=36", "run.tensorboard=false"]


@pytest.fixture(scope="module")
def city(tmp_path_factory) -> Path:
    return ensure_synthetic_city("tiny", seed=0, cache_dir=tmp_path_factory.mktemp("city"), progress=False)


def tasks_in(city: Path, out: Path, *, bad_student: bool = False) -> list[TrainingTask]:
    def config(preset: str, kind: str, name: str, *extra: str):
        return load_config(preset, [f"data.path={city}", f"run.output_dir={out}", f"run.name={name}", *TINY, *extra],
                           kind=kind)

    student_extra = ["train.frozen_trunk_stages=9"] if bad_student else []  # refused once the run starts
    return [
        TrainingTask("teacher", "teacher", config("demo_teacher", "teacher", "teacher"), "test"),
        TrainingTask("baseline", "student", config("demo_student", "student", "baseline", "loss.preset=none",
                                                   "mining.descriptors=student"), "test"),
        TrainingTask("distilled", "student", config("demo_student", "student", "distilled", *student_extra), "test",
                     teacher_task="teacher"),
    ]


def test_threads_are_shared_between_jobs():
    assert [threads_per_job(threads, 2) for threads in (0, 1, 2, 3, 8)] == [0, 1, 1, 1, 4]
    assert threads_per_job(8, 1) == 8


@pytest.mark.slow
def test_runs_side_by_side_equal_the_same_runs_in_order(city, tmp_path):
    events: list[str] = []
    alone = run_tasks(tasks_in(city, tmp_path / "alone"), 1, lambda task: None, lambda task, trained: None)
    side_by_side = run_tasks(tasks_in(city, tmp_path / "pool"), 2, lambda task: events.append(f"start {task.name}"),
                             lambda task, trained: events.append(f"done {task.name}"))
    assert set(side_by_side) == {"teacher", "baseline", "distilled"}
    assert events.index("done teacher") < events.index("start distilled")  # the student waited for its teacher
    assert events.index("start baseline") < events.index("done teacher")  # the baseline trained beside it
    for name in alone:
        first = load_file(str(alone[name].checkpoint / "model.safetensors"))
        second = load_file(str(side_by_side[name].checkpoint / "model.safetensors"))
        assert first.keys() == second.keys()
        assert all(torch.equal(first[key], second[key]) for key in first), name
    teacher_fingerprint = read_metadata(side_by_side["distilled"].checkpoint).get("teacher_fingerprint")
    assert teacher_fingerprint is not None


@pytest.mark.slow
def test_a_failed_run_stops_the_pool_with_its_error(city, tmp_path):
    with pytest.raises(TscmError, match="frozen_trunk_stages: expected 0..3"):
        run_tasks(tasks_in(city, tmp_path, bad_student=True), 2, lambda task: None, lambda task, trained: None)


def test_a_task_naming_a_missing_teacher_is_refused(city, tmp_path):
    task = tasks_in(city, tmp_path)[2]
    with pytest.raises(TscmError, match="teacher task 'teacher' is not among the tasks"):
        run_tasks([task], 2, lambda task: None, lambda task, trained: None)


def test_jobs_are_checked_before_the_run_folder_exists(tmp_path, capsys):
    from tscm import cli

    out = tmp_path / "run"
    assert cli.main(["demo", "--data", "synthetic:tiny", "--quick", "--jobs", "0", "--out", str(out)]) == 2
    assert "--jobs: expected an integer ≥ 1, got 0" in capsys.readouterr().err and not out.exists()
    assert cli.main(["demo", "--data", "synthetic:tiny", "--quick", "--jobs", "65", "--out", str(out)]) == 2
    assert "--jobs: expected at most 64, got 65" in capsys.readouterr().err and not out.exists()

"""Training mechanics on a tiny synthetic city: resume, distillation from the cache, baseline,
non-finite loss, early stopping. Learning itself is measured outside the suite (too slow)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from helpers.model_files import write_checkpoint
from tscm import cli
from tscm.models.checkpoint import load_checkpoint, read_metadata
from tscm.config import load_config
from tscm.errors import TscmError
from tscm.models import build_model
from tscm.train import runs as session
from tscm.train.runs import distill, resume_run, train_teacher
from tscm.train.runtime import seed_everything

TINY = [
    "train.max_queries_per_epoch=8",
    "train.batch_size=4",
    "train.epochs=2",
    "train.patience=0",
    "train.lr=1e-3",
    "train.progress=false",
    "train.threads=1",
    "mining.num_negatives=2",
    "mining.num_random=16",
    "mining.positive_rule=heading",
    "mining.batch_size=36",
    "eval.batch_size=36",
    "run.tensorboard=false",
]


def tiny_overrides(city: Path, out: Path, name: str, *extra: str) -> list[str]:
    return [f"data.path={city}", f"run.output_dir={out}", f"run.name={name}", *TINY, *extra]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def steps_csv(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "steps.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def teacher_checkpoint(tmp_path_factory) -> Path:
    """An untrained tiny teacher: distillation mechanics need a frozen teacher, not a good one."""
    return write_checkpoint(tmp_path_factory.mktemp("teacher") / "teacher", "teacher-tiny", seed=7)


def test_killed_run_resumes_to_the_same_weights(city, tmp_path):
    # teacher-tiny has dropout (RNG state); two mining chunks per epoch (4 + 2 queries, a cache
    # refresh inside the epoch); the crash falls inside the first chunk of epoch 2, after a
    # mid-chunk checkpoint.
    extra = (
        "model.preset=teacher-tiny", "train.max_queries_per_epoch=6", "train.batch_size=2", "mining.num_negatives=1",
        "mining.refresh_every_queries=4", "train.checkpoint_every_steps=2",
    )
    full = train_teacher(load_config("demo_teacher", tiny_overrides(city, tmp_path, "full", *extra)))
    steps = full.metrics["steps"]
    assert steps >= 4, "the tiny city should give at least two steps per epoch"

    crash_at = steps - 1
    args = ["train-teacher", "--config", "demo_teacher"]
    for item in tiny_overrides(city, tmp_path, "crashed", *extra, f"train.stop_after_steps={crash_at}"):
        args += ["--set", item]
    assert cli.main(args) == 0
    crashed = tmp_path / "crashed"
    state = json.loads((crashed / "last" / "training_state.json").read_text())
    assert state["global_step"] < crash_at  # the simulated crash lost the steps after the last checkpoint
    assert state["position"]["epoch"] == 1 and state["position"]["batch"] > 0  # saved mid-epoch, mid-chunk
    assert not (crashed / "result.json").exists()

    assert cli.main(["train-teacher", "--resume", str(crashed), "--set", "train.stop_after_steps=0"]) == 0
    resumed, uninterrupted = weights(crashed / "last"), weights(full.last_checkpoint)
    assert resumed.keys() == uninterrupted.keys()
    for name in resumed:
        assert torch.equal(resumed[name], uninterrupted[name]), name
    assert [r["total"] for r in steps_csv(crashed)] == [r["total"] for r in steps_csv(full.run_dir)]
    assert len((crashed / "command.txt").read_text().splitlines()) == 2
    result = json.loads((crashed / "result.json").read_text())
    assert result["best_val_recall_at_1"] == full.metrics["best_val_recall_at_1"]


def test_resume_refuses_settings_that_change_the_run(city, tmp_path):
    with pytest.raises(TscmError, match="cannot change"):
        resume_run(tmp_path, ["train.lr=1"])
    with pytest.raises(TscmError, match="not a run folder"):
        resume_run(tmp_path, [])


@pytest.mark.slow
def test_teacher_descriptors_from_the_cache_equal_running_the_teacher(city, tmp_path, teacher_checkpoint, capsys):
    results = {}
    for name, extra in (
        ("cache", ["distill.teacher_outputs=cache"]),
        ("per_batch", ["distill.teacher_outputs=per_batch"]),
        ("timed", ["distill.teacher_outputs=cache", "distill.time_steps=2"]),
    ):
        overrides = tiny_overrides(city, tmp_path, name, "train.epochs=1", "train.batch_size=2", "loss.preset=tscm", *extra)
        results[name] = distill(load_config("demo_student", overrides), teacher_checkpoint)
    rows = {name: steps_csv(result.run_dir) for name, result in results.items()}
    assert len(rows["cache"]) == len(rows["per_batch"]) >= 2
    for a, b in zip(rows["cache"], rows["per_batch"]):
        for term in ("triplet", "soft", "cross_metric", "total"):
            assert float(a[term]) == pytest.approx(float(b[term]), rel=1e-4, abs=1e-6)
    student, meta = load_checkpoint(results["cache"].best_checkpoint)
    assert meta["teacher_fingerprint"] == read_metadata(teacher_checkpoint)["fingerprint"]
    assert meta["role"] == "student"

    report = json.loads((results["timed"].run_dir / "step_timing.json").read_text())
    assert set(report["median_ms"]) == {"student_only", "teacher_from_cache", "teacher_per_batch"}
    assert report["steps_timed"] == 2 and report["ratio_to_student_only"]["student_only"] == 1.0
    assert "teacher from cache" in capsys.readouterr().out
    # the timing must not change the run that follows it
    timed = weights(results["timed"].last_checkpoint)
    for name, tensor in weights(results["cache"].last_checkpoint).items():
        assert torch.equal(tensor, timed[name]), name


@pytest.mark.slow
def test_a_second_student_reuses_the_stored_teacher_descriptors_and_trains_the_same(city, tmp_path, teacher_checkpoint,
                                                                                     monkeypatch):
    from tscm.train import caches, teacher_store

    described = []
    original = caches.TrainingCaches.describe

    def counting(self, model, *args, **kwargs):
        described.append(model is self.teacher)
        return original(self, model, *args, **kwargs)

    monkeypatch.setattr(caches.TrainingCaches, "describe", counting)
    common = ("train.epochs=1", "train.batch_size=2", "loss.preset=tscm", "distill.teacher_outputs=cache")
    first = distill(load_config("demo_student", tiny_overrides(city, tmp_path, "first", *common)), teacher_checkpoint)
    assert described.count(True) == 1
    stored = list((tmp_path / teacher_store.FOLDER).glob("*.safetensors"))
    assert len(stored) == 1
    second = distill(load_config("demo_student", tiny_overrides(city, tmp_path, "second", *common)), teacher_checkpoint)
    assert described.count(True) == 1  # read from the file, not described again
    for name, tensor in weights(first.last_checkpoint).items():
        assert torch.equal(tensor, weights(second.last_checkpoint)[name]), name

    stored[0].write_bytes(b"not a safetensors file")  # a damaged file is recomputed, and replaced
    distill(load_config("demo_student", tiny_overrides(city, tmp_path, "third", *common)), teacher_checkpoint)
    assert described.count(True) == 2 and stored[0].read_bytes() != b"not a safetensors file"
    off = tiny_overrides(city, tmp_path / "off", "off", *common, "distill.reuse_teacher_descriptors=false")
    distill(load_config("demo_student", off), teacher_checkpoint)
    assert described.count(True) == 3 and not (tmp_path / "off" / teacher_store.FOLDER).exists()


def test_student_baseline_needs_no_teacher(city, tmp_path):
    overrides = tiny_overrides(city, tmp_path, "baseline", "train.epochs=1", "loss.preset=none", "mining.descriptors=student")
    result = distill(load_config("demo_student", overrides))
    assert result.metrics["steps"] >= 1 and result.best_checkpoint.is_dir()
    with pytest.raises(TscmError, match="a teacher is needed"):
        distill(load_config("demo_student", tiny_overrides(city, tmp_path, "needs", "train.epochs=1")))


@pytest.mark.slow
def test_non_finite_loss_stops_after_keeping_the_last_good_state(city, tmp_path, monkeypatch):
    real_build = session.build_loss_for

    class PoisonedAtStep2(torch.nn.Module):
        needs_teacher = False

        def __init__(self) -> None:
            super().__init__()
            self.inner, self.calls = real_build(config), 0

        def forward(self, student, teacher=None):
            self.calls += 1
            total, parts = self.inner(student, teacher)
            if self.calls == 2:
                total = total * float("nan")
                parts = {**parts, "triplet": total.detach()}
            return total, parts

    config = load_config("demo_teacher", tiny_overrides(city, tmp_path, "nan", "train.checkpoint_every_steps=100"))
    monkeypatch.setattr(session, "build_loss_for", lambda cfg: PoisonedAtStep2())
    with pytest.raises(TscmError) as error:
        train_teacher(config)
    message = str(error.value)
    assert "non-finite loss at step 2" in message and "batch 2" in message and "triplet=nan" in message
    state = json.loads((tmp_path / "nan" / "last" / "training_state.json").read_text())
    assert state["global_step"] == 1
    assert all(torch.isfinite(t).all() for t in weights(tmp_path / "nan" / "last").values())


@pytest.mark.slow
def test_early_stopping_on_validation_recall(city, tmp_path):
    # lr so small nothing changes: validation R@1 never improves after epoch 1
    overrides = tiny_overrides(
        city, tmp_path, "patience", "model.preset=student-tiny", "loss.preset=none", "mining.descriptors=student",
        "train.lr=1e-30", "train.batchnorm=frozen", "train.epochs=5", "train.patience=2",
    )
    result = distill(load_config("demo_student", overrides))
    assert result.metrics["stopped"] == "early_stop"
    # As published: stop once more than `patience` (2) epochs in a row brought no gain: epochs 2, 3 and 4.
    assert result.metrics["epochs_completed"] == 4 and result.metrics["best_epoch"] == 1
    with (result.run_dir / "epochs.csv").open(newline="") as handle:
        epochs = [int(row["epoch"]) for row in csv.DictReader(handle)]
    assert epochs == [0, 1, 2, 3, 4]
    saved = (result.run_dir / "config.yaml").read_text()
    assert "patience: 2" in saved and (result.run_dir / "command.txt").read_text().strip()


def test_teaching_keys_cover_every_image_each_pass_and_the_schedule():
    from tscm.train.schedule import distillation_factor, teaching_keys

    count, per_step = 10, 4
    drawn = np.concatenate([teaching_keys(3, count, per_step, step) for step in range(5)])  # two passes
    assert sorted(drawn[:10]) == list(range(count)) and sorted(drawn[10:20]) == list(range(count))
    assert not np.array_equal(drawn[:10], drawn[10:20])  # a new order each pass
    assert np.array_equal(teaching_keys(3, count, per_step, 2), drawn[8:12])  # a function of the step
    assert len(teaching_keys(3, count, 0, 5)) == 0
    factors = [distillation_factor(step, 4, 0.5, 14) for step in range(14)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[4] == 1.0 and factors[-1] == pytest.approx(1.0 - 0.5 * 9 / 10)
    assert all(a >= b for a, b in zip(factors[3:], factors[4:]))
    assert {distillation_factor(step, 0, 1.0, 14) for step in range(14)} == {1.0}


@pytest.mark.slow
def test_augmented_distillation_with_teaching_images_resumes_exactly(city, tmp_path, teacher_checkpoint):
    extra = ("loss.preset=listwise+regression", "augment.strength=1", "distill.teach_images=5",
             "distill.warmup_steps=2", "mining.descriptors=student", "train.batch_size=2",
             "train.checkpoint_every_steps=2")
    full = distill(load_config("demo_student", tiny_overrides(city, tmp_path, "full", *extra)), teacher_checkpoint)
    steps = full.metrics["steps"]
    rows = steps_csv(full.run_dir)
    assert {"listwise", "regression", "triplet"} <= set(rows[0]) and float(rows[0]["listwise"]) > 0
    crashed = distill(load_config("demo_student", tiny_overrides(city, tmp_path, "crashed", *extra,
                                                                  f"train.stop_after_steps={steps - 1}")),
                      teacher_checkpoint)
    assert crashed.metrics["stopped"] == "stop_after_steps"
    resume_run(tmp_path / "crashed", ["train.stop_after_steps=0"])
    resumed, uninterrupted = weights(tmp_path / "crashed" / "last"), weights(full.last_checkpoint)
    for name in resumed:
        assert torch.equal(resumed[name], uninterrupted[name]), name
    # Augmentation on: the teacher cannot come from the cache of unaugmented images.
    with pytest.raises(TscmError, match="teacher_outputs=per_batch"):
        load_config("demo_student", ["augment.strength=1", "distill.teacher_outputs=cache"])


@pytest.mark.slow
def test_frozen_trunk_stages_keep_their_weights_and_the_rest_learns(city, tmp_path):
    overrides = tiny_overrides(city, tmp_path, "frozen", "train.epochs=1", "loss.preset=none",
                               "mining.descriptors=student", "train.frozen_trunk_stages=2")
    config = load_config("demo_student", overrides)
    seed_everything(config.train.seed)
    initial = build_model(config.model.preset)  # the run builds its model from the same seed
    result = distill(config)
    trained, _ = load_checkpoint(result.last_checkpoint)
    before, after = initial.cnn.stages(), trained.cnn.stages()
    for index, (old, new) in enumerate(zip(before, after)):
        same = all(torch.equal(a, b) for a, b in zip(old.parameters(), new.parameters()))
        assert same == (index <= 2), f"stage {index} (0 = stem): unchanged={same}"
    with pytest.raises(TscmError, match="frozen_trunk_stages: expected 0..3"):
        distill(load_config("demo_student", tiny_overrides(city, tmp_path, "too-many", "train.epochs=1",
                                                           "loss.preset=none", "mining.descriptors=student",
                                                           "train.frozen_trunk_stages=4")))

"""Run folders and training configs: resuming the wrong kind, a replaced teacher, a damaged last
checkpoint, two resumes at once, the stop_after_steps advice, a folder left by an early crash, and
hostile or misspelt YAML. Refusals leave the run folder as it was."""

from __future__ import annotations

import fcntl
import re
import shutil
import warnings

import pytest
import yaml

from reliability.support import (Snapshot, assert_no_traceback, assert_refused, copy_tree, previous_output, training_args,
                                 tscm)


def run_files(run):
    """What a refused resume must not touch: the config, the command log and the checkpoints."""
    return Snapshot(run / "config.yaml", run / "command.txt", run / "last", run / "best")


def test_distill_refuses_to_resume_a_teacher_run(trained_runs, tmp_path, capsys):
    run = copy_tree(trained_runs["teacher"], tmp_path / "teacher")
    before = run_files(run)
    outcome = tscm(capsys, "distill", "--resume", run)
    assert_refused(outcome, "distill", str(run), "teacher run", "tscm train-teacher --resume")
    before.assert_unchanged()


def test_train_teacher_refuses_to_resume_a_student_run(trained_runs, tmp_path, capsys):
    run = copy_tree(trained_runs["student"], tmp_path / "student")
    before = run_files(run)
    outcome = tscm(capsys, "train-teacher", "--resume", run)
    assert_refused(outcome, "train-teacher", str(run), "student run", "tscm distill --resume")
    before.assert_unchanged()


def test_resume_refuses_a_replaced_teacher_naming_it(trained_runs, checkpoints, tmp_path, capsys):
    teacher = copy_tree(trained_runs["teacher"] / "best", tmp_path / "teacher-best")
    run = copy_tree(trained_runs["student"], tmp_path / "student")
    config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    config["distill"]["teacher_checkpoint"] = str(teacher)
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    shutil.rmtree(teacher)
    shutil.copytree(checkpoints["teacher"], teacher)  # another teacher under the same name
    before = run_files(run)
    outcome = tscm(capsys, "distill", "--resume", run, "--set", "train.epochs=2")
    assert_refused(outcome, "distill", str(teacher), "replaced")
    before.assert_unchanged()


def test_a_damaged_last_checkpoint_falls_back_to_the_previous_one(trained_runs, tmp_path, capsys):
    run = copy_tree(trained_runs["teacher"], tmp_path / "teacher")
    assert (run / "last.prev").is_dir(), "the fixture run should keep its previous checkpoint"
    state = run / "last" / "training_state.safetensors"
    state.write_bytes(state.read_bytes()[:100])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outcome = tscm(capsys, "train-teacher", "--resume", run, "--set", "train.epochs=2")
    assert_no_traceback(outcome)
    assert outcome.code == 0, outcome.err
    said = outcome.out + outcome.err
    assert "last/" in said and "last.prev" in said and "resuming from the previous checkpoint" in said, said
    # resumed at an epoch's end, the restored schedule steps before this process' first optimiser step, rightly
    assert not [w for w in caught if "lr_scheduler.step()" in str(w.message)]


def test_with_both_checkpoints_damaged_the_resume_names_both(trained_runs, tmp_path, capsys):
    run = copy_tree(trained_runs["teacher"], tmp_path / "teacher")
    for folder in ("last", "last.prev"):
        state = run / folder / "training_state.safetensors"
        state.write_bytes(state.read_bytes()[:100])
    before = run_files(run)
    outcome = tscm(capsys, "train-teacher", "--resume", run, "--set", "train.epochs=2")
    assert_refused(outcome, "train-teacher", "last/", "last.prev/", "no intact checkpoint")
    before.assert_unchanged()


def test_a_second_resume_of_a_running_run_is_refused_by_the_lock(trained_runs, tmp_path, capsys):
    run = copy_tree(trained_runs["teacher"], tmp_path / "teacher")
    with open(run / ".lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as the first `--resume` holds it while it trains
        handle.seek(0)
        handle.truncate()
        handle.write("process 4242")
        handle.flush()
        before = run_files(run)
        outcome = tscm(capsys, "train-teacher", "--resume", run, "--set", "train.epochs=3")
        assert_refused(outcome, "train-teacher", str(run), "in use", "process 4242")
        before.assert_unchanged()


def test_a_second_start_under_a_running_runs_name_is_refused_by_the_lock(city, tmp_path, capsys):
    run = tmp_path / "early"
    run.mkdir()
    (run / "config.yaml").write_text("kind: teacher\n", encoding="utf-8")
    (run / "steps.csv").write_text("step,total\n1,0.5\n", encoding="utf-8")
    with open(run / ".lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a run still before its first checkpoint
        before = Snapshot(run / "config.yaml", run / "steps.csv")
        outcome = tscm(capsys, *training_args("train-teacher", city, tmp_path, "early"))
        assert_refused(outcome, "train-teacher", str(run), "in use")
        before.assert_unchanged()


@pytest.mark.parametrize("stop_after", [1, pytest.param(3, marks=pytest.mark.slow)],
                         ids=["before-the-first-checkpoint", "after-a-checkpoint"])
def test_the_stop_after_steps_advice_works(stop_after, city, tmp_path, capsys):
    # two steps per epoch; the simulated crash comes after `stop_after` steps, before that step's checkpoint
    first = training_args("train-teacher", city, tmp_path, "stopped", "train.epochs=2", "train.checkpoint_every_steps=2")
    outcome = tscm(capsys, *first, "--set", f"train.stop_after_steps={stop_after}")
    assert outcome.code == 0, outcome.err
    assert not (tmp_path / "stopped" / "result.json").exists()
    advice = re.search(r"continue with (--resume \S+ --set \S+)", outcome.out)
    if advice:
        outcome = tscm(capsys, "train-teacher", *advice.group(1).split())
    else:
        assert "start the run again under the same name" in outcome.out, outcome.out
        outcome = tscm(capsys, *first)
    assert_no_traceback(outcome)
    assert outcome.code == 0 and "stopped: epochs" in outcome.out, (outcome.out, outcome.err)
    assert (tmp_path / "stopped" / "result.json").is_file()
    assert (advice is None) == (stop_after == 1)


def test_a_folder_left_before_the_first_checkpoint_can_start_again(city, tmp_path, capsys):
    from tscm.config import load_config

    run = tmp_path / "crashed"
    run.mkdir()
    config = load_config("demo_teacher", [f"data.path={city}", f"run.output_dir={tmp_path}", "run.name=crashed"])
    (run / "config.yaml").write_text(config.to_yaml(), encoding="utf-8")
    (run / "command.txt").write_text("tscm train-teacher\n", encoding="utf-8")
    (run / "steps.csv").write_text("step,total\n", encoding="utf-8")
    (run / ".lock").write_text("process 1", encoding="utf-8")
    outcome = tscm(capsys, "train-teacher", "--resume", run)
    assert_refused(outcome, "train-teacher", "no resumable checkpoint", "start it again under the same name")
    outcome = tscm(capsys, *training_args("train-teacher", city, tmp_path, "crashed"))
    assert_no_traceback(outcome)
    assert outcome.code == 0, outcome.err
    assert (run / "best" / "model.safetensors").is_file()


def test_starting_over_a_finished_run_is_refused(trained_runs, city, tmp_path, capsys):
    copy_tree(trained_runs["teacher"], tmp_path / "teacher")
    before = run_files(tmp_path / "teacher")
    outcome = tscm(capsys, *training_args("train-teacher", city, tmp_path, "teacher"))
    assert_refused(outcome, "train-teacher", "holds a run", "--resume")
    before.assert_unchanged()


@pytest.mark.parametrize("override, named", [("train.lr=1", "train.lr"), ("model.preset=student-tiny", "model.preset"),
                                             ("data.path=/elsewhere", "data.path")])
def test_resume_refuses_settings_that_would_make_another_run(override, named, trained_runs, tmp_path, capsys):
    run = copy_tree(trained_runs["teacher"], tmp_path / "teacher")
    before = run_files(run)
    assert_refused(tscm(capsys, "train-teacher", "--resume", run, "--set", override), "train-teacher", named, "cannot change")
    before.assert_unchanged()


def test_resume_of_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert_refused(tscm(capsys, "train-teacher", "--resume", tmp_path / "nothing"), "train-teacher", "nothing", "not a run folder")
    assert_refused(tscm(capsys, "train-teacher", "--resume", tmp_path, "--config", "demo_teacher"), "train-teacher", "--config")


YAMLS = [
    ("python-object", "kind: teacher\ntrain: !!python/object/apply:builtins.open ['{marker}', 'w']\n", ["evil.yaml", "YAML"]),
    ("python-name", "kind: !!python/name:os.system teacher\n", ["evil.yaml", "YAML"]),
    ("unknown-key", "kind: teacher\ntrain:\n  learning_rate: 0.1\n", ["evil.yaml", "train.learning_rate"]),
    ("unknown-section", "kind: teacher\ntraining:\n  lr: 0.1\n", ["evil.yaml", "'training'"]),
    ("bad-value", "kind: teacher\ntrain:\n  epochs: many\n", ["evil.yaml", "train.epochs", "'many'"]),
    ("a-list", "- kind\n- teacher\n", ["evil.yaml", "mapping"]),
    ("syntax", "kind: teacher\ntrain: {lr: 0.1\n", ["evil.yaml", "YAML"]),
    ("student-kind", "kind: student\n", ["evil.yaml", "student", "teacher"]),
    ("section-scalar", "kind: teacher\ntrain: fast\n", ["evil.yaml", "'train'", "mapping"]),
]


@pytest.mark.parametrize("case, text, named", YAMLS, ids=[c[0] for c in YAMLS])
def test_a_hostile_or_misspelt_config_is_refused(case, text, named, tmp_path, capsys, marker):
    config = tmp_path / "evil.yaml"
    config.write_text(text.replace("{marker}", str(marker)), encoding="utf-8")
    outcome = tscm(capsys, "train-teacher", "--config", config, "--set", f"run.output_dir={tmp_path / 'runs'}")
    assert_refused(outcome, "train-teacher", *named)
    assert not (tmp_path / "runs").exists()


def test_a_config_file_that_is_not_utf8_or_absent(tmp_path, capsys):
    config = tmp_path / "latin.yaml"
    config.write_bytes("kind: teacher\nrun:\n  name: Zürich\n".encode("latin-1"))
    assert_refused(tscm(capsys, "train-teacher", "--config", config), "train-teacher", "latin.yaml")
    assert_refused(tscm(capsys, "train-teacher", "--config", tmp_path / "absent.yaml"), "train-teacher", "absent.yaml")


def test_a_hostile_config_yaml_in_a_run_folder_is_refused_on_resume(trained_runs, tmp_path, capsys, marker):
    run = copy_tree(trained_runs["teacher"], tmp_path / "teacher")
    (run / "config.yaml").write_text(f"kind: teacher\ntrain: !!python/object/apply:builtins.open ['{marker}', 'w']\n",
                                     encoding="utf-8")
    before = run_files(run)
    assert_refused(tscm(capsys, "train-teacher", "--resume", run), "train-teacher", "config.yaml", "YAML")
    before.assert_unchanged()

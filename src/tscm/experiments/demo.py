"""`tscm demo`: the main job. Train a teacher; per seed distil a student with the paper's loss and with tscm's
recommended loss, and train the same student without a teacher; compare them (and reference floors) on the
test split. Every student arm gets the same preset (augmentation, schedule, mining, best-on-val selection).

Run folder: results.json / results.md / pictures (report, plots), settings.json (the command and
every knob), train/<model>/ (each training run with its config.yaml and checkpoints).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tscm.data.formats import load_placeset
from tscm.data.images import DecodedImages
from tscm.evaluation.extract import InputSpec, describe_placeset
from tscm.experiments.common import (SETTINGS_FILE, Measurement, RunOptions, TrainedModel, chance_recall_at_1,
                                     finish_run, load_run_data, measure_checkpoint, measure_off_the_shelf,
                                     measure_raw_pixels, model_result, prepare_run_dir, say, training_config,
                                     training_summary)
from tscm.experiments.loop_closure import (TRANSFER_HEADER, decision_report, sequence_table, threshold_transfer,
                                           transfer_rows)
from tscm.experiments.training_pool import TrainingTask, options_per_job, run_tasks_logged, threads_per_job
from tscm.fileio import write_json_atomic
from tscm.models.checkpoint import load_checkpoint

DEFAULT_DATA = "synthetic:demo"
PAPER_LOSS = "tscm"  # L_hard + L_soft + L_cm, the paper's total
BASELINE_LOSS = "none"  # L_hard only: the student without a teacher


@dataclass
class DemoOutcome:
    run_dir: Path
    results: dict[str, Any]
    pictures: list[Path]
    picture_failures: list[str]


def loop_closure_report(data_root: Path, test_set, radius, options: RunOptions, student: str,
                        checkpoints: dict[str, Path], test_descriptors: dict[str, tuple],
                        run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Tables (and their numbers) for deciding: per decision score, a threshold calibrated on val for 99 %
    precision and its precision and recall on test (with a precision-recall picture per score); the raw
    distance's transfer as before; for frame-ordered routes, sequence matching with L = 1, 5, 10, 20."""
    val_set = load_placeset(data_root, "val", name=options.name or None)
    lengths = (1, 10) if test_set.unit == "frame" else (1,)
    rows, transfers, decision_rows, decisions = [], {}, [], {}
    decision_header: list[str] = []
    for name, checkpoint in checkpoints.items():
        model, meta = load_checkpoint(checkpoint)
        val = (val_set, *describe_placeset(model, InputSpec.of(meta), val_set, batch_size=options.batch_size))
        test = (test_set, *test_descriptors[name])
        transfers[name] = [threshold_transfer(val, test, radius, 0.99, length) for length in lengths]
        rows += transfer_rows(name, transfers[name])
        report = decision_report(val, test, radius, name, run_dir)
        decision_header, decision_rows = report["header"], decision_rows + report["rows"]
        decisions[name] = report["values"]
    tables = {"Loop closure by decision score: threshold calibrated on val for 99 % precision, applied to test":
              {"header": decision_header, "rows": decision_rows},
              "Loop closure, raw top-1 distance (no bound): threshold calibrated on val for 99 % precision, applied "
              "to test": {"header": TRANSFER_HEADER, "rows": rows}}
    sections: dict[str, Any] = {"threshold_transfer": transfers, "decision_scores": decisions}
    if test_set.unit == "frame":
        table = sequence_table(test_set, {k: test_descriptors[k] for k in (student, "raw-pixels")}, radius)
        tables["Sequence matching (SeqSLAM-style scores over the last L frames)"] = {
            "header": table["header"], "rows": table["rows"]}
        sections["sequences"] = table["values"]
    return tables, sections


@dataclass(frozen=True)
class StudentArm:
    """One student row of the demo: its name, the loss it trains with, and what the row means."""

    name: str
    loss: str
    note: str

    @property
    def needs_teacher(self) -> bool:
        return self.loss != BASELINE_LOSS


@dataclass
class StudentRun:
    """One seed of one arm: the finished training run and its test-split measurement."""

    seed: int
    trained: TrainedModel
    measured: Measurement


def student_arms(recommended_loss: str) -> list[StudentArm]:
    """The paper's loss, the recommended loss, and the baseline without a teacher; every arm trains with the same
    student preset (augmentation, schedule, mining, best-on-val selection) and differs only in its loss."""
    arms = [StudentArm("student-tscm", PAPER_LOSS, "the paper's L_total = L_hard + L_soft + L_cm")]
    if recommended_loss not in (PAPER_LOSS, BASELINE_LOSS):
        arms.append(StudentArm(f"student-{recommended_loss}", recommended_loss,
                               "tscm's recommended distillation: L_hard + the teacher's ranking of every image of the "
                               "step (listwise) + its descriptors (regression), on every train image in turn"))
    arms.append(StudentArm("student-baseline", BASELINE_LOSS, "the same student, L_hard only, no teacher"))
    return arms


TEACHER_TASK = "teacher"


def training_tasks(arms: list[StudentArm], seeds: list[int], teacher_config: str, student_config: str,
                   options: RunOptions, data_root: Path, run_dir: Path, command: str) -> list[TrainingTask]:
    """The teacher, the arms that need no teacher (they train beside it), then the distilled arms, seed by seed,
    the paper's loss last (the recommended arm teaches more images a step: its longer runs start first, so the
    last run to finish is a short one); every run with its share of the threads (`--jobs`)."""
    share = options_per_job(options, options.jobs)
    tasks = [TrainingTask(TEACHER_TASK, "teacher", training_config(teacher_config, "teacher", share, data_root, run_dir,
                                                                   TEACHER_TASK, seeds[0]), command)]
    ordered = sorted(arms, key=lambda arm: (arm.needs_teacher, arm.loss == PAPER_LOSS))  # stable within groups
    for arm in ordered:
        for seed in seeds:
            config = training_config(student_config, "student", share, data_root, run_dir, f"{arm.name}-seed{seed}",
                                     seed, loss=arm.loss)
            tasks.append(TrainingTask(f"{arm.name}-seed{seed}", "student", config, command,
                                      TEACHER_TASK if arm.needs_teacher else None))
    return tasks


def train_all(tasks: list[TrainingTask], options: RunOptions, log: Callable[[str], None]) -> dict[str, TrainedModel]:
    jobs = min(options.jobs, len(tasks))
    log(f"[3/5] training {len(tasks)} runs, {jobs} at a time, "
        f"{threads_per_job(options.threads, options.jobs) or 'default'} thread(s) each")
    return run_tasks_logged(tasks, jobs, log)


def measure_students(arms: list[StudentArm], seeds: list[int], trained: dict[str, TrainedModel], test_set, radii,
                     options: RunOptions, decoded, log: Callable[[str], None]) -> dict[str, list[StudentRun]]:
    """Every student on the test split (its images decoded once, `decoded`), one after another with all the
    threads (so timings are not shared); the first seed of each arm timed."""
    runs: dict[str, list[StudentRun]] = {arm.name: [] for arm in arms}
    for seed in seeds:
        for arm in arms:
            run = trained[f"{arm.name}-seed{seed}"]
            measured = measure_checkpoint(run.checkpoint, test_set, radii, options, decoded, timed=seed == seeds[0])
            runs[arm.name].append(StudentRun(seed, run, measured))
            log(f"  {arm.name} seed {seed}: R@1 {measured.main.recall[1]:.1f} % (trained in {run.wall_s:.0f} s)")
    return runs


def arm_result(arm: StudentArm, runs: list[StudentRun], run_dir: Path):
    return model_result(arm.name, "student", arm.loss if arm.needs_teacher else None, [r.seed for r in runs],
                        [r.measured for r in runs], walls=[r.trained.wall_s for r in runs],
                        per_seed_extra=[{"training": training_summary(r.trained, run_dir)} for r in runs])


def run_demo(options: RunOptions, log: Callable[[str], None] = say) -> DemoOutcome:
    """Teacher; per seed the paper-loss student, the recommended distilled student and the baseline; references;
    one report."""
    started = time.perf_counter()
    run_dir = prepare_run_dir(options.out)
    seeds = list(dict.fromkeys(int(s) for s in options.seeds))
    wall: dict[str, float] = {}
    command = options.command_line("demo")
    settings: dict[str, Any] = {"command": command, "kind": "demo", "options": options.to_json(), "distillation": PAPER_LOSS}
    write_json_atomic(run_dir / SETTINGS_FILE, settings)
    log(f"tscm demo → {run_dir}\n  command: {command}")

    log("[1/5] data set")
    tic = time.perf_counter()
    data = load_run_data(options)
    data_root, test_set, recipe = data.root, data.test_set, data.recipe
    teacher_config, student_config = data.teacher_config, data.student_config
    arms = student_arms(recipe.recommended_loss)
    wall["data"] = time.perf_counter() - tic
    settings.update(data_root=str(data_root), teacher_config=teacher_config, student_config=student_config,
                    radii=list(recipe.radii), unit=test_set.unit, recommended=recipe.recommended_loss,
                    arms=[{"name": arm.name, "loss": arm.loss} for arm in arms])
    write_json_atomic(run_dir / SETTINGS_FILE, settings)
    log(f"  {data_root}: {test_set.summary()} ({recipe.label}); training presets {teacher_config}, {student_config}")

    log("[2/5] reference floor: raw pixels")
    raw = measure_raw_pixels(test_set, recipe.radii, options, recipe.raw_pixel_size)
    off_the_shelf = measure_off_the_shelf(student_config, test_set, recipe.radii, options)
    if off_the_shelf is not None:
        log(f"  the student's ImageNet trunk + GeM, untrained: R@1 {off_the_shelf.main.recall[1]:.1f} %")
    tic_training = time.perf_counter()

    tasks = training_tasks(arms, seeds, teacher_config, student_config, options, data_root, run_dir, command)
    trained = train_all(tasks, options, log)
    teacher = trained[TEACHER_TASK]
    wall["teacher"] = teacher.wall_s
    wall["training"] = time.perf_counter() - tic_training
    log("[4/5] measuring every model on the test split")
    decoded = DecodedImages(test_set.db_paths + test_set.query_paths)  # decoded once for every model
    teacher_measured = measure_checkpoint(teacher.checkpoint, test_set, recipe.radii, options, decoded)
    log(f"  teacher: R@1 {teacher_measured.main.recall[1]:.1f} % (trained in {teacher.wall_s:.0f} s)")
    students = measure_students(arms, seeds, trained, test_set, recipe.radii, options, decoded, log)
    for name, runs in students.items():
        for run in runs:
            wall[f"{name}-seed{run.seed}"] = run.trained.wall_s

    log("[5/5] report")
    models = [
        model_result("teacher", "teacher", None, [seeds[0]], [teacher_measured], walls=[teacher.wall_s],
                     extra={"training": training_summary(teacher, run_dir)}),
        *[arm_result(arm, students[arm.name], run_dir) for arm in arms],
        model_result("raw-pixels", "reference", None, [None], [raw],
                     extra={"raw_pixel_size": list(recipe.raw_pixel_size)}),
    ]
    descriptors = {"teacher": (teacher_measured.db, teacher_measured.queries), "raw-pixels": (raw.db, raw.queries)}
    if off_the_shelf is not None:
        models.append(model_result("imagenet-trunk", "reference", None, [None], [off_the_shelf]))
        descriptors["imagenet-trunk"] = (off_the_shelf.db, off_the_shelf.queries)
    for name, runs in students.items():
        descriptors[name] = (runs[0].measured.db, runs[0].measured.queries)
    main = recipe.radii[0] if recipe.radii else None
    log("  loop closure: threshold calibrated on val, sequences")
    tic = time.perf_counter()
    distilled = arms[1] if len(arms) > 2 else arms[0]  # the recommended student where there is one
    first = students[distilled.name][0]
    tables, sections = loop_closure_report(
        data_root, test_set, main, options, distilled.name,
        checkpoints={"teacher": teacher.checkpoint, distilled.name: first.trained.checkpoint},
        test_descriptors={distilled.name: (first.measured.db, first.measured.queries),
                          "teacher": (teacher_measured.db, teacher_measured.queries), "raw-pixels": (raw.db, raw.queries)},
        run_dir=run_dir)
    wall["loop_closure"] = time.perf_counter() - tic
    wall["total_before_pictures"] = time.perf_counter() - started
    comparisons = [(arm.name, "student-baseline") for arm in arms if arm.needs_teacher]
    comparisons += [(arm.name, "teacher") for arm in arms if arm.needs_teacher]
    results, pictures, failures = finish_run(
        run_dir, data_root, test_set, recipe.radii, models, descriptors, command=command, comparisons=comparisons,
        seeds=seeds, wall_s=wall, notes=demo_notes(arms, seeds, test_set, main, options, off_the_shelf is not None),
        sections={"tables": tables, **sections}, log=log)
    log(f"wrote {run_dir / 'results.json'}, {run_dir / 'results.md'} and {len(pictures)} picture(s); "
        f"{time.perf_counter() - started:.0f} s in all")
    return DemoOutcome(run_dir, results, pictures, failures)


def demo_notes(arms: list[StudentArm], seeds: list[int], test_set, main, options: RunOptions,
               has_trunk: bool) -> list[str]:
    return [
        "Checkpoints evaluated: the best epoch on the validation split (the test split is only reported).",
        f"The teacher is trained once (seed {seeds[0]}); each student row is the mean ± standard error over "
        f"seeds {', '.join(map(str, seeds))} (one seed: no error); comparisons give the per-seed range of the difference.",
        f"Chance level (random ranking): R@1 {chance_recall_at_1(test_set, main):.1f} % on this test split.",
        "Every student row: the same preset, augmentation, schedule, mining and selection; only the loss differs.",
        *[f"{arm.name}: {arm.note}." for arm in arms],
        *(["imagenet-trunk: the student preset's trunk with its ImageNet weights and GeM pooling, no training "
           "(what a user gets for free)."] if has_trunk else []),
        "AP = average precision and R@100%P = recall at 100 % precision over the top-1 distance of every query "
        "(queries without a true match count as possible false positives).",
        f"Timings on this machine with {options.threads} thread(s), device {options.device}; training runs "
        f"{options.jobs} at a time with {threads_per_job(options.threads, options.jobs) or 'the default'} thread(s) each.",
    ]

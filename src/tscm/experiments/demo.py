"""`tscm demo`: the main job. Train a teacher, distil a student with the paper's loss, train the same
student without a teacher, over several seeds, and compare them (and reference floors) on the test split.

Run folder: results.json / results.md / pictures (report, plots), settings.json (the command and
every knob), train/<model>/ (each training run with its config.yaml and checkpoints).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tscm.experiments.common import (
    SETTINGS_FILE,
    Measurement,
    RunOptions,
    chance_recall_at_1,
    finish_run,
    measure_checkpoint,
    measure_off_the_shelf,
    measure_raw_pixels,
    model_result,
    prepare_run_dir,
    recipe_for,
    resolve_data,
    say,
    train_student_run,
    train_teacher_run,
    training_config,
    training_summary,
)
from tscm.experiments.report import format_table
from tscm.fileio import write_json_atomic

DEFAULT_DATA = "synthetic:demo"
PAPER_LOSS = "tscm"  # L_hard + L_soft + L_cm, the paper's total


@dataclass
class DemoOutcome:
    run_dir: Path
    results: dict[str, Any]
    pictures: list[Path]
    picture_failures: list[str]


def loop_closure_report(data_root: Path, test_set, radius, options: RunOptions, checkpoints: dict[str, Path],
                        test_descriptors: dict[str, tuple]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Tables (and their numbers) for deciding: a threshold calibrated on val for 99 % precision and its
    precision and recall on test; for frame-ordered routes, sequence matching with L = 1, 5, 10, 20."""
    from tscm.data.formats import load_placeset
    from tscm.evaluation.extract import InputSpec, describe_placeset
    from tscm.experiments.loop_closure import (
        TRANSFER_HEADER,
        sequence_table,
        threshold_transfer,
        transfer_rows,
    )
    from tscm.models.checkpoint import load_checkpoint

    val_set = load_placeset(data_root, "val", name=options.name or None)
    lengths = (1, 10) if test_set.unit == "frame" else (1,)
    rows, transfers = [], {}
    for name, checkpoint in checkpoints.items():
        model, meta = load_checkpoint(checkpoint)
        val = (val_set, *describe_placeset(model, InputSpec.of(meta), val_set, batch_size=options.batch_size))
        test = (test_set, *test_descriptors[name])
        transfers[name] = [threshold_transfer(val, test, radius, 0.99, length) for length in lengths]
        rows += transfer_rows(name, transfers[name])
    tables = {"Loop closure: threshold calibrated on val for 99 % precision, applied to test":
              {"header": TRANSFER_HEADER, "rows": rows}}
    sections: dict[str, Any] = {"threshold_transfer": transfers}
    if test_set.unit == "frame":
        table = sequence_table(test_set, {k: test_descriptors[k] for k in ("student-tscm", "raw-pixels")}, radius)
        tables["Sequence matching (SeqSLAM-style scores over the last L frames)"] = {
            "header": table["header"], "rows": table["rows"]}
        sections["sequences"] = table["values"]
    return tables, sections


def run_demo(options: RunOptions, log: Callable[[str], None] = say) -> DemoOutcome:
    """Teacher, distilled student (paper loss) and baseline student per seed, reference rows; one report."""
    from tscm.data.formats import load_placeset

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
    data_root = resolve_data(options)
    test_set = load_placeset(data_root, "test", name=options.name or None)
    recipe = recipe_for(test_set)
    teacher_config = options.teacher_config or recipe.teacher_config
    student_config = options.student_config or recipe.student_config
    wall["data"] = time.perf_counter() - tic
    settings.update(data_root=str(data_root), teacher_config=teacher_config, student_config=student_config,
                    radii=list(recipe.radii), unit=test_set.unit)
    write_json_atomic(run_dir / SETTINGS_FILE, settings)
    log(f"  {data_root}: {test_set.summary()} ({recipe.label}); training presets {teacher_config}, {student_config}")

    log("[2/5] reference floor: raw pixels")
    raw = measure_raw_pixels(test_set, recipe.radii, options, recipe.raw_pixel_size)
    off_the_shelf = measure_off_the_shelf(student_config, test_set, recipe.radii, options)
    if off_the_shelf is not None:
        log(f"  the student's ImageNet trunk + GeM, untrained: R@1 {off_the_shelf.main.recall[1]:.1f} %")

    log(f"[3/5] training the teacher (seed {seeds[0]})")
    teacher = train_teacher_run(training_config(teacher_config, "teacher", options, data_root, run_dir, "teacher",
                                                seeds[0]), command)
    wall["teacher"] = teacher.wall_s
    teacher_measured = measure_checkpoint(teacher.checkpoint, test_set, recipe.radii, options)

    students: dict[str, list[tuple[Measurement, float, dict]]] = {"student-tscm": [], "student-baseline": []}
    for number, seed in enumerate(seeds, start=1):
        log(f"[4/5] seed {seed} ({number}/{len(seeds)}): distilling the student (loss: tscm = L_hard + L_soft + L_cm)")
        distilled = train_student_run(training_config(student_config, "student", options, data_root, run_dir,
                                                      f"student-tscm-seed{seed}", seed, loss=PAPER_LOSS),
                                      teacher.checkpoint, command)
        log(f"[4/5] seed {seed}: the same student without distillation (triplet only, mining on its own descriptors)")
        baseline = train_student_run(training_config(student_config, "student", options, data_root, run_dir,
                                                     f"student-baseline-seed{seed}", seed, loss="none",
                                                     mining_descriptors="student"), None, command)
        for name, trained in (("student-tscm", distilled), ("student-baseline", baseline)):
            measured = measure_checkpoint(trained.checkpoint, test_set, recipe.radii, options)
            students[name].append((measured, trained.wall_s, {"training": training_summary(trained, run_dir)}))
            wall[f"{name}-seed{seed}"] = trained.wall_s
            log(f"  {name} seed {seed}: R@1 {measured.main.recall[1]:.1f} %")

    log("[5/5] report")
    models = [
        model_result("teacher", "teacher", None, [seeds[0]], [teacher_measured], walls=[teacher.wall_s],
                     extra={"training": training_summary(teacher, run_dir)}),
        model_result("student-tscm", "student", PAPER_LOSS, seeds, [m for m, _, _ in students["student-tscm"]],
                     walls=[w for _, w, _ in students["student-tscm"]],
                     per_seed_extra=[e for _, _, e in students["student-tscm"]]),
        model_result("student-baseline", "student", None, seeds, [m for m, _, _ in students["student-baseline"]],
                     walls=[w for _, w, _ in students["student-baseline"]],
                     per_seed_extra=[e for _, _, e in students["student-baseline"]]),
        model_result("raw-pixels", "reference", None, [None], [raw],
                     extra={"raw_pixel_size": list(recipe.raw_pixel_size)}),
    ]
    descriptors = {"teacher": (teacher_measured.db, teacher_measured.queries), "raw-pixels": (raw.db, raw.queries)}
    if off_the_shelf is not None:
        models.append(model_result("imagenet-trunk", "reference", None, [None], [off_the_shelf]))
        descriptors["imagenet-trunk"] = (off_the_shelf.db, off_the_shelf.queries)
    for name, runs in students.items():
        descriptors[name] = (runs[0][0].db, runs[0][0].queries)
    main = recipe.radii[0] if recipe.radii else None
    log("  loop closure: threshold calibrated on val, sequences")
    tic = time.perf_counter()
    best_student = students["student-tscm"][0][0]
    tables, sections = loop_closure_report(
        data_root, test_set, main, options,
        checkpoints={"teacher": teacher.checkpoint,
                     "student-tscm": run_dir / students["student-tscm"][0][2]["training"]["checkpoint"]},
        test_descriptors={"student-tscm": (best_student.db, best_student.queries),
                          "teacher": (teacher_measured.db, teacher_measured.queries), "raw-pixels": (raw.db, raw.queries)})
    wall["loop_closure"] = time.perf_counter() - tic
    wall["total_before_pictures"] = time.perf_counter() - started
    notes = [
        "Checkpoints evaluated: the best epoch on the validation split (the test split is only reported).",
        f"The teacher is trained once (seed {seeds[0]}); each student row is the mean ± standard error over "
        f"seeds {', '.join(map(str, seeds))} (one seed: no error).",
        f"Chance level (random ranking): R@1 {chance_recall_at_1(test_set, main):.1f} % on this test split.",
        "student-baseline: the same student preset and schedule, loss triplet only (L_hard), hard negatives "
        "mined on its own descriptors; no teacher involved.",
        *(["imagenet-trunk: the student preset's trunk with its ImageNet weights and GeM pooling, no training "
           "(what a user gets for free)."] if off_the_shelf is not None else []),
        "AP = average precision and R@100%P = recall at 100 % precision over the top-1 distance of every query "
        "(queries without a true match count as possible false positives).",
        f"Timings on this machine with {options.threads} thread(s), device {options.device}.",
    ]
    results, pictures, failures = finish_run(
        run_dir, data_root, test_set, recipe.radii, models, descriptors, command=command,
        comparisons=[("student-tscm", "student-baseline"), ("student-tscm", "teacher")], seeds=seeds, wall_s=wall,
        notes=notes, sections={"tables": tables, **sections}, log=log)
    print(format_table(results))
    log(f"wrote {run_dir / 'results.json'}, {run_dir / 'results.md'} and {len(pictures)} picture(s); "
        f"{time.perf_counter() - started:.0f} s in all")
    return DemoOutcome(run_dir, results, pictures, failures)


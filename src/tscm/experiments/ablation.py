"""`tscm ablation`: the same student trained with each distillation loss, over several seeds.

One teacher (trained once, or given) serves every row. Every row trains the student preset as the demo
does (same augmentation, schedule, mining on the student's own descriptors, seed), to the full epoch
count (no early stop, so every row takes the same steps from the same initial weights), and differs only
in its loss; the main figure is the checkpoint that was best on the validation split. With `grid`, each
row is also trained with the teacher's tuples (as published) and both runs are measured with their last
weights too: a 2×2 (tuples × checkpoint) that shows what moves the numbers. Each row is compared with
"none" (difference ± combined standard error, and the per-seed range).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from tscm.errors import TscmError
from tscm.experiments.common import (SETTINGS_FILE, RunOptions, chance_recall_at_1, finish_run, load_run_data,
                                     measure_checkpoint, measure_raw_pixels, model_result, prepare_run_dir, say,
                                     train_teacher_run, training_config, training_summary)
from tscm.experiments.report import binomial_stderr_points, format_table, mean_and_stderr
from tscm.experiments.training_pool import TrainingTask, options_per_job, run_tasks_logged, threads_per_job
from tscm.fileio import write_json_atomic
from tscm.losses import DISTILLATION_PRESETS, PUBLISHED_ROWS, preset_terms

DEFAULT_DATA = "synthetic:ablation"
BASELINE_PRESET = "none"
TERM_LABELS = {
    "triplet": "L_hard",
    "soft": "L_soft",
    "cross_metric": "L_cm",
    "squared_hinge": "published squared hinge",
    "regression": "L_reg",
    "rkd": "L_rkd",
    "stun": "L_stun",
    "listwise": "L_list",
}
PRESET_NOTES = {"none": "no distillation", "tscm": "the paper's L_total"}


def row_sets() -> dict[str, list[str]]:
    """Named sets of rows: the losses tscm has compared from the start, the published code's variants
    (each inside its squared hinge) with STUN, and both."""
    classic = ["none", "soft", "cm", "soft+cm", "tscm", "tscm-published", "regression", "rkd"]
    paper = ["none", *PUBLISHED_ROWS, "stun"]
    ranking = ["none", "tscm", "rkd", "listwise", "regression", "listwise+regression"]
    every = list(dict.fromkeys([*classic, *paper, *ranking, *DISTILLATION_PRESETS]))
    return {"classic": classic, "paper": paper, "ranking": ranking, "all": every}


@dataclass
class AblationSetting:
    """One row: the loss preset trained, every preset name with the same terms, and a readable label."""

    preset: str
    aliases: tuple[str, ...]
    terms: dict[str, Any]

    @property
    def label(self) -> str:
        parts = []
        for term, weight, options in preset_terms(self.preset):
            name = TERM_LABELS.get(term, term)
            if options.get("terms"):
                name += f" ({'+'.join(options['terms'])})"
            parts.append(name if weight == 1.0 else f"{weight:g}·{name}")
        notes = [PRESET_NOTES[a] for a in self.aliases if a in PRESET_NOTES]
        return f"{' = '.join(self.aliases)}: {' + '.join(parts)}" + (f" ({'; '.join(notes)})" if notes else "")

    @property
    def model_name(self) -> str:
        return "student-" + self.preset.replace("+", "_")


def ablation_settings(rows: Sequence[str] | None = None) -> list[AblationSetting]:
    """Rows for the given presets or row-set names (default: all), presets with identical terms merged."""
    sets = row_sets()
    chosen: list[str] = []
    for item in rows or ["all"]:
        chosen += sets.get(item, [item])
    chosen = list(dict.fromkeys(chosen))
    unknown = [p for p in chosen if p not in DISTILLATION_PRESETS]
    if unknown:
        raise TscmError(f"--rows: unknown loss preset(s) {unknown}; expected row sets {', '.join(sets)} or presets "
                        f"{', '.join(DISTILLATION_PRESETS)}")
    settings: list[AblationSetting] = []
    for preset in chosen:
        terms = {term: (weight, options) for term, weight, options in preset_terms(preset)}
        twin = next((row for row in settings if row.terms == terms), None)
        if twin is None:
            settings.append(AblationSetting(preset, (preset,), terms))
        else:
            # Train the later name (e.g. "tscm" over its twin "soft+cm"): it is the one users ask for.
            twin.aliases = (*twin.aliases, preset)
            twin.preset = preset
    return settings


def run_ablation(options: RunOptions, rows: Sequence[str] | None = None, teacher: Path | None = None,
                 grid: bool = False, log: Callable[[str], None] = say) -> dict[str, Any]:
    """Train and evaluate every row for every seed; returns the results.json document."""
    seeds = list(dict.fromkeys(int(s) for s in options.seeds))
    if not seeds:
        raise TscmError("--seeds: give at least one seed (three or more for a standard error)")
    settings_rows = ablation_settings(rows)
    started = time.perf_counter()
    run_dir = prepare_run_dir(options.out)
    extra = (["--rows", *[r.preset for r in settings_rows]] + (["--teacher", str(teacher)] if teacher else [])
             + (["--grid"] if grid else []))
    command = options.command_line("ablation", extra)
    settings: dict[str, Any] = {
        "command": command, "kind": "ablation", "options": options.to_json(),
        "rows": [{"label": r.label, "preset": r.preset, "aliases": list(r.aliases)} for r in settings_rows],
        "teacher": str(teacher) if teacher else None, "checkpoint": "best", "grid": grid,
    }
    write_json_atomic(run_dir / SETTINGS_FILE, settings)
    log(f"tscm ablation → {run_dir}\n  command: {command}\n  rows: {[r.label for r in settings_rows]}\n  seeds: {seeds}")

    data = load_run_data(options)
    data_root, test_set, recipe = data.root, data.test_set, data.recipe
    teacher_config, student_config = data.teacher_config, data.student_config
    settings.update(data_root=str(data_root), teacher_config=teacher_config, student_config=student_config)
    write_json_atomic(run_dir / SETTINGS_FILE, settings)
    log(f"  {data_root}: {test_set.summary()}")
    wall: dict[str, float] = {}

    raw = measure_raw_pixels(test_set, recipe.radii, options, recipe.raw_pixel_size)
    teacher_extra: dict[str, Any] = {"checkpoint": str(teacher)} if teacher else {}
    teacher_seed, teacher_wall = None, None
    if teacher is None:
        log(f"training the shared teacher (seed {seeds[0]})")
        trained = train_teacher_run(training_config(teacher_config, "teacher", options, data_root, run_dir, "teacher",
                                                    seeds[0]), command)
        teacher, teacher_seed, teacher_wall = trained.checkpoint, seeds[0], trained.wall_s
        teacher_extra = {"training": training_summary(trained, run_dir)}
        wall["teacher"] = trained.wall_s
    teacher_measured = measure_checkpoint(teacher, test_set, recipe.radii, options)
    fixed = [
        model_result("teacher", "teacher", None, [teacher_seed], [teacher_measured], walls=[teacher_wall], extra=teacher_extra),
        model_result("raw-pixels", "reference", None, [None], [raw], extra={"raw_pixel_size": list(recipe.raw_pixel_size)}),
    ]
    descriptors = {"teacher": (teacher_measured.db, teacher_measured.queries), "raw-pixels": (raw.db, raw.queries)}

    finished = []
    grid_cells: dict[str, dict[str, list[float]]] = {}
    results: dict[str, Any] = {}
    minings = MINING_GRID if grid else MINING_GRID[:1]
    jobs = min(options.jobs, len(seeds) * len(minings))
    share = options_per_job(options, jobs)
    for number, row in enumerate(settings_rows, start=1):
        measured, walls, extras = [], [], []
        cells: dict[str, list[float]] = {}
        log(f"[row {number}/{len(settings_rows)}] {row.label}: {len(seeds) * len(minings)} runs, {jobs} at a time")
        tasks = [TrainingTask(run_name(row, mining, seed), "student",
                              training_config(student_config, "student", share, data_root, run_dir,
                                              run_name(row, mining, seed), seed, loss=row.preset,
                                              mining_descriptors=mining, fixed_steps=True),
                              command, teacher=teacher)
                 for seed in seeds for mining in minings]
        trained_runs = run_tasks_logged(tasks, jobs, log)
        for seed in seeds:
            for mining in minings:
                trained = trained_runs[run_name(row, mining, seed)]
                best = measure_checkpoint(trained.checkpoint, test_set, recipe.radii, options)
                cells.setdefault(f"{mining}/best", []).append(best.main.recall[1])
                if grid:
                    last = measure_checkpoint(trained.last_checkpoint, test_set, recipe.radii, options)
                    cells.setdefault(f"{mining}/last", []).append(last.main.recall[1])
                log(f"  {run_name(row, mining, seed)}: R@1 {best.main.recall[1]:.1f} % (best on val), "
                    f"{trained.metrics.get('steps')} steps, {trained.wall_s:.0f} s")
                if mining == MINING_GRID[0]:
                    measured.append(best)
                    walls.append(trained.wall_s)
                    extras.append({"training": training_summary(trained, run_dir)})
        grid_cells[row.model_name] = cells
        descriptors[row.model_name] = (measured[0].db, measured[0].queries)
        finished.append(model_result(row.model_name, "student", row.preset, seeds, measured, walls=walls,
                                     per_seed_extra=extras, label=row.label,
                                     extra={"aliases": list(row.aliases), "grid": cells} if grid else
                                     {"aliases": list(row.aliases)}))
        wall["total_before_pictures"] = time.perf_counter() - started
        last_row = number == len(settings_rows)
        baseline = next((r.model_name for r in settings_rows if r.preset == BASELINE_PRESET), None)
        comparisons = [(m.name, baseline) for m in finished if baseline and m.name != baseline]
        sections = {"tables": {GRID_TITLE: grid_table(grid_cells)}} if grid else None
        results, _, _ = finish_run(
            run_dir, data_root, test_set, recipe.radii, [*fixed, *finished], descriptors, command=command,
            comparisons=comparisons, seeds=seeds, wall_s=wall, sections=sections,
            notes=_notes(finished, settings_rows, test_set, recipe.radii, options, complete=last_row), draw=last_row,
            log=log)
    print(format_table(results))
    log(f"wrote {run_dir / 'results.json'} and {run_dir / 'results.md'}; {time.perf_counter() - started:.0f} s in all")
    return results


def run_name(row: AblationSetting, mining: str, seed: int) -> str:
    """The training run's folder name: the row, `-teacher-mined` for the grid's teacher-mined tuples, the seed."""
    return f"{row.model_name}{'' if mining == MINING_GRID[0] else '-teacher-mined'}-seed{seed}"


GRID_TITLE = "Tuples × checkpoint: test R@1, mean ± standard error over seeds"
# The student's own tuples first: the fair protocol's (the baseline has no teacher to mine with).
MINING_GRID = ("student", "teacher")


def grid_table(cells: dict[str, dict[str, list[float]]]) -> dict[str, Any]:
    """One line per row: R@1 with own-mined and teacher-mined tuples, best-on-val and last weights."""
    order = [f"{mining}/{which}" for mining in MINING_GRID for which in ("best", "last")]
    header = ["Row", *[f"{c.split('/')[0]}-mined, {c.split('/')[1]}" for c in order]]
    rows = []
    for name, row in cells.items():
        values = []
        for cell in order:
            if not row.get(cell):
                values.append("-")
                continue
            mean, error = mean_and_stderr(row[cell])
            values.append(f"{mean:.1f}" if error is None else f"{mean:.1f} ± {error:.1f}")
        rows.append([name, *values])
    return {"header": header, "rows": rows}


def _notes(finished, rows, test_set, radii, options: RunOptions, complete: bool) -> list[str]:
    notes = []
    if not complete:
        notes.append(f"Partial: {len(finished)} of {len(rows)} rows finished so far.")
    notes.append("Every row: the same student preset (augmentation, schedule), initial weights (seed), number of steps "
                 "and tuples mined on the student's own descriptors; rows differ only in the loss. The checkpoint best on "
                 "the validation split is evaluated.")
    steps = {tuple(e["training"]["steps"] for e in m.to_json().get("per_seed", [])) for m in finished}
    if len(steps) > 1:
        notes.append(f"Warning: rows took different numbers of steps: {sorted(steps)}")
    main = radii[0] if radii else None
    evaluated = sum(len(p) > 0 for p in test_set.positives(main))
    if finished:
        first = finished[0].to_json()["recall"]["1"]
        notes.append(f"Test split: {evaluated} evaluated queries; one run's binomial standard error at R@1 ≈ "
                     f"{binomial_stderr_points(first, evaluated):.1f} points (row '{finished[0].name}'); chance level "
                     f"(random ranking) R@1 {chance_recall_at_1(test_set, main):.1f} %.")
    notes.append(f"Timings with {options.threads} thread(s) on {options.device}; training runs {options.jobs} at a time, "
                 f"{threads_per_job(options.threads, options.jobs) or 'the default'} thread(s) each.")
    return notes

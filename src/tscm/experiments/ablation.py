"""`tscm ablation`: the same student trained with each distillation loss, over several seeds.

One teacher (trained once, or given) serves every row. Every row mines its tuples on the teacher's
descriptors with the same seed, so for a given seed all rows see the same tuples, take the same
number of steps from the same initial weights, and differ only in their loss. Rows run to the
full epoch count (no early stopping) and their final weights are evaluated on the test split.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from tscm.data.places import PlaceSet
from tscm.experiments.demo import (
    RADIUS_M,
    RAW_PIXEL_SIZE,
    SETTINGS_FILE,
    STUDENT_CONFIG,
    TEACHER_CONFIG,
    RunOptions,
    chance_recall_at_1,
    finish_run,
    measure_checkpoint,
    measure_raw_pixels,
    model_result,
    prepare_run_dir,
    resolve_data,
    say,
    train_student_run,
    train_teacher_run,
    training_summary,
)
from tscm.errors import TscmError
from tscm.fileio import write_json_atomic
from tscm.experiments.report import AblationRow, format_table

DEFAULT_DATA = "synthetic:ablation"
BASELINE_PRESET = "none"
TERM_LABELS = {
    "triplet": "L_hard",
    "soft": "L_soft",
    "cross_metric": "L_cm",
    "squared_hinge": "published squared hinge",
    "regression": "L_reg",
    "rkd": "L_rkd",
}
PRESET_NOTES = {"none": "no distillation", "tscm": "the paper's L_total"}
# Rows need the same steps; early stopping would end them at different epochs.
ABLATION_OVERRIDES = ("train.patience=0", "mining.descriptors=teacher")


@dataclass
class AblationSetting:
    """One row: the loss preset trained, every preset name with the same terms, and a readable label."""

    preset: str
    aliases: tuple[str, ...]
    weights: dict[str, float]

    @property
    def label(self) -> str:
        terms = " + ".join(
            (TERM_LABELS.get(term, term) if weight == 1.0 else f"{weight:g}·{TERM_LABELS.get(term, term)}")
            for term, weight in self.weights.items()
        )
        notes = [PRESET_NOTES[a] for a in self.aliases if a in PRESET_NOTES]
        return f"{' = '.join(self.aliases)}: {terms}" + (f" ({'; '.join(notes)})" if notes else "")

    @property
    def model_name(self) -> str:
        return "student-" + self.preset.replace("+", "_")


def ablation_settings(presets: Sequence[str] | None = None) -> list[AblationSetting]:
    """Rows for `presets` (default: every distillation preset), presets with identical terms merged."""
    from tscm.losses import DISTILLATION_PRESETS

    chosen = list(DISTILLATION_PRESETS) if not presets else list(dict.fromkeys(presets))
    unknown = [p for p in chosen if p not in DISTILLATION_PRESETS]
    if unknown:
        raise TscmError(f"--rows: unknown loss preset(s) {unknown}; expected some of {', '.join(DISTILLATION_PRESETS)}")
    rows: list[AblationSetting] = []
    for preset in chosen:
        weights = dict(DISTILLATION_PRESETS[preset])
        twin = next((row for row in rows if row.weights == weights), None)
        if twin is None:
            rows.append(AblationSetting(preset, (preset,), weights))
        else:
            # Train the later name (e.g. "tscm" over its twin "soft+cm"): it is the one users ask for.
            twin.aliases = (*twin.aliases, preset)
            twin.preset = preset
    return rows


def compare_to_baseline(rows: Sequence[Mapping[str, Any]], baseline_label: str, n: int = 1) -> list[str]:
    """One sentence per row: its mean Recall@n minus the baseline's, with the combined standard error."""
    by_name = {row["name"]: row for row in rows}
    if baseline_label not in by_name:
        return []
    base = by_name[baseline_label]["recall"][str(n)]
    lines = []
    for row in rows:
        if row["name"] == baseline_label:
            continue
        summary = row["recall"][str(n)]
        delta = summary["mean"] - base["mean"]
        if summary["stderr"] is None or base["stderr"] is None:
            lines.append(f"{row['name']}: R@{n} {delta:+.1f} points vs {baseline_label} (one seed: no error estimate)")
            continue
        error = math.hypot(summary["stderr"], base["stderr"])
        verdict = "a clear gain" if delta > 2 * error else "a clear loss" if delta < -2 * error else "within noise (|Δ| < 2 SE)"
        lines.append(f"{row['name']}: R@{n} {delta:+.1f} ± {error:.1f} points vs {baseline_label}: {verdict}")
    return lines


def sampling_stderr_points(recall_percent: float, num_queries: int) -> float:
    """Binomial standard error (points) of one run's Recall on `num_queries` queries."""
    p = recall_percent / 100.0
    return 100.0 * math.sqrt(max(p * (1.0 - p), 0.0) / max(num_queries, 1))


def run_ablation(
    options: RunOptions,
    seeds: Sequence[int],
    presets: Sequence[str] | None = None,
    teacher: Path | None = None,
    log: Callable[[str], None] = say,
) -> dict[str, Any]:
    """Train and evaluate every row for every seed; returns the results.json document."""
    from tscm.data.formats import load_placeset

    if not seeds:
        raise TscmError("--seeds: give at least one seed (three or more for a standard error)")
    seeds = list(dict.fromkeys(int(s) for s in seeds))
    rows = ablation_settings(presets)
    started = time.perf_counter()
    run_dir = prepare_run_dir(options.out)
    student_options = replace(options, overrides=[*ABLATION_OVERRIDES, *options.overrides])
    extra = ["--seeds", *map(str, seeds)]
    if presets:
        extra += ["--rows", *[r.preset for r in rows]]
    if teacher is not None:
        extra += ["--teacher", str(teacher)]
    command = options.command_line("ablation", extra)
    settings = {
        "command": command, "kind": "ablation", "options": options.to_json(), "seeds": seeds,
        "rows": [{"label": r.label, "preset": r.preset, "aliases": list(r.aliases), "weights": r.weights} for r in rows],
        "teacher": str(teacher) if teacher else None, "teacher_config": TEACHER_CONFIG,
        "student_config": STUDENT_CONFIG, "student_overrides": list(ABLATION_OVERRIDES), "checkpoint": "last",
    }
    write_json_atomic(run_dir / SETTINGS_FILE, settings)
    log(f"tscm ablation → {run_dir}\n  command: {settings['command']}\n  rows: {[r.label for r in rows]}\n"
        f"  seeds: {seeds}")

    data_root = resolve_data(options.data, options.cache_dir, options.progress)
    test_set = load_placeset(data_root, "test", name=options.name or None)
    settings["data_root"] = str(data_root)
    write_json_atomic(run_dir / SETTINGS_FILE, settings)
    log(f"  {data_root}: {test_set.summary()}")
    wall: dict[str, float] = {}

    raw = measure_raw_pixels(test_set, options)
    teacher_wall = None
    teacher_extra: dict[str, Any] = {}
    if teacher is None:
        log(f"training the shared teacher (seed {seeds[0]})")
        trained = train_teacher_run(options, data_root, run_dir, seeds[0], command)
        teacher, teacher_wall = trained.checkpoint, trained.wall_s
        teacher_extra = {"training": training_summary(trained, run_dir)}
        wall["teacher"] = teacher_wall
    else:
        teacher_extra = {"checkpoint": str(teacher)}
    teacher_measured = measure_checkpoint(teacher, test_set, options)
    models = [
        model_result("teacher", "teacher", None, teacher_measured, seed=seeds[0] if teacher_wall is not None else None,
                     wall_s=teacher_wall, extra=teacher_extra),
        model_result("raw-pixels", "reference", None, raw, seed=None, wall_s=None, extra={"raw_pixel_size": RAW_PIXEL_SIZE}),
    ]
    descriptors = {"teacher": (teacher_measured.db, teacher_measured.queries), "raw-pixels": (raw.db, raw.queries)}

    finished: list[AblationRow] = []
    for number, row in enumerate(rows, start=1):
        recalls, walls, steps = [], [], []
        for seed in seeds:
            log(f"[row {number}/{len(rows)}, seed {seed}] {row.label}")
            trained = train_student_run(
                student_options, data_root, run_dir, f"{row.model_name}-seed{seed}", seed, row.preset, teacher,
                command, use_last=True,
            )
            measured = measure_checkpoint(trained.checkpoint, test_set, options)
            recalls.append(measured.recall)
            walls.append(trained.wall_s)
            steps.append(trained.metrics.get("steps"))
            log(f"  R@1 {measured.recall[1]:.1f} %, {trained.metrics.get('steps')} steps, {trained.wall_s:.0f} s")
            if seed == seeds[0]:
                name = f"{row.model_name}-seed{seed}"
                models.append(model_result(name, "student", row.preset, measured, seed=seed, wall_s=trained.wall_s,
                                           extra={"training": training_summary(trained, run_dir)}))
                descriptors[name] = (measured.db, measured.queries)
        finished.append(AblationRow(row.label, seeds, recalls, walls, settings={
            "preset": row.preset, "aliases": list(row.aliases), "terms": row.weights, "steps_per_seed": steps,
            "checkpoint": "last",
        }))
        wall["total_before_pictures"] = time.perf_counter() - started
        last = number == len(rows)
        results, pictures, failures = finish_run(
            run_dir, data_root, test_set, models, descriptors, command=command, ablation=finished, seeds=seeds, wall_s=wall,
            notes=_notes(finished, rows, test_set, options, complete=last), draw=last,
        )
    print(format_table(results))
    for line in results.get("notes", []):
        print(f"- {line}")
    for failure in failures:
        log(f"picture failed: {failure}")
    log(f"wrote {run_dir / 'results.json'}, {run_dir / 'results.md'} and {len(pictures)} picture(s); "
        f"{time.perf_counter() - started:.0f} s in all")
    return results


def _notes(finished: Sequence[AblationRow], rows: Sequence[AblationSetting], test_set: PlaceSet, options: RunOptions,
           complete: bool) -> list[str]:
    rows_json = [row.to_json() for row in finished]
    baseline = next((r.label for r in rows if r.preset == BASELINE_PRESET), None)
    notes = []
    if not complete:
        notes.append(f"Partial: {len(finished)} of {len(rows)} rows finished so far.")
    notes.append(
        "Every row: the same student preset, initial weights (seed), tuples (mined on the shared teacher's "
        "descriptors) and number of steps; rows differ only in the loss. Final weights are evaluated (no early stop)."
    )
    step_counts = {tuple(r["settings"]["steps_per_seed"]) for r in rows_json}
    if len(step_counts) > 1:
        notes.append(f"Warning: rows took different numbers of steps: {sorted(step_counts)}")
    evaluated = sum(len(p) > 0 for p in test_set.positives(RADIUS_M))
    if rows_json:
        first = rows_json[0]["recall"]["1"]["mean"]
        notes.append(
            f"Test split: {evaluated} evaluated queries; one run's binomial standard error at R@1 ≈ "
            f"{sampling_stderr_points(first, evaluated):.1f} points (row '{rows_json[0]['name']}'); chance level "
            f"(random ranking) R@1 {chance_recall_at_1(test_set):.1f} %."
        )
    if baseline is not None:
        notes += compare_to_baseline(rows_json, baseline)
    notes.append(f"Timings with {options.threads} thread(s) on {options.device}; other work may have shared the CPU.")
    return notes

"""Results of a run: results.json, results.md, the printed table, and saved descriptors.

Callers (`tscm demo`, `tscm ablation`) measure models and hand them here. A model row holds one
measurement per seed; the report gives mean ± standard error over seeds (one seed: no error), and
comparisons of a row with its baseline (difference ± combined error, "within noise" below two
errors). Run directory layout:

    <run>/results.json                 the numbers and what a reader needs to trust them
    <run>/results.md                   the same as Markdown tables
    <run>/descriptors/<model>.npz      arrays `db` (num_db×D) and `queries` (num_queries×D), float32 (first seed)
    <run>/*.png                        pictures (tscm.experiments.plots), redrawn by `tscm visualize <run>`
"""

from __future__ import annotations

import math
import sys
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from tscm import __version__
from tscm.data.places import PlaceSet, radius_text
from tscm.errors import TscmError
from tscm.evaluation.recall import protocol_label
from tscm.evaluation.results_format import (MODEL_NAME_PATTERN, RESULTS_FORMAT, RESULTS_FORMAT_VERSION, RESULTS_JSON, ROLES,
                                           read_results_file)
from tscm.fileio import atomic_path, write_json_atomic, write_text_atomic

RESULTS_MD = "results.md"
DESCRIPTOR_DIR = "descriptors"
TABLE_NS = (1, 5, 10)
PR_KEYS = ("average_precision", "recall_at_100_precision", "f1_max")


@dataclass
class DatasetInfo:
    """Which data set and split the numbers were measured on, and the ground truth's radius and unit."""

    path: str
    name: str
    split: str
    radius: float | None
    unit: str
    num_db: int
    num_queries: int
    num_queries_evaluated: int
    other_radii: tuple[float, ...] = ()

    @classmethod
    def from_placeset(cls, path: str | Path, placeset: PlaceSet, radius: float | None,
                      other_radii: Sequence[float] = ()) -> DatasetInfo:
        """Counts from the PlaceSet; queries without a true match at the main radius are not evaluated."""
        evaluated = sum(len(p) > 0 for p in placeset.positives(radius))
        return cls(str(Path(path).resolve()), placeset.name, placeset.split, radius, placeset.unit,
                   placeset.num_db, placeset.num_queries, evaluated, tuple(other_radii))

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "name": self.name,
            "split": self.split,
            "radius": self.radius,
            "unit": self.unit,
            "protocol": protocol_label(self.radius, self.unit),
            "other_radii": list(self.other_radii),
            "num_db": int(self.num_db),
            "num_queries": int(self.num_queries),
            "num_queries_evaluated": int(self.num_queries_evaluated),
            "num_queries_without_positive": int(self.num_queries - self.num_queries_evaluated),
        }


@dataclass
class SeedMeasurement:
    """One trained model (one seed) measured on the test split."""

    recall: Mapping[int, float]  # at the data set's main radius
    pr: Mapping[str, float] | None = None  # precision-recall summary, percent
    recall_at: Mapping[str, Mapping[int, float]] = field(default_factory=dict)  # other radii, by radius text
    wall_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelResult:
    """One evaluated model over one or more seeds (a reference has one measurement, seed None)."""

    name: str
    role: str
    distillation: str | None
    seeds: Sequence[int | None]
    measurements: Sequence[SeedMeasurement]
    params: int | None = None
    multiply_adds: int | None = None
    ms_per_image: float | None = None
    forward_ms_per_image: float | None = None
    matching_ms_per_query: float | None = None
    descriptor_dim: int | None = None
    label: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        check_model_name(self.name)
        where = f"model {self.name!r}"
        if self.role not in ROLES:
            raise TscmError(f"{where}: role must be one of {', '.join(ROLES)}, got {self.role!r}")
        if not self.measurements or len(self.seeds) != len(self.measurements):
            raise TscmError(f"{where}: need one measurement per seed, got {len(self.measurements)} for {len(self.seeds)} seeds")
        per_seed = [_recall_json(m.recall, where) for m in self.measurements]
        summaries = _summaries(per_seed, where)
        entry: dict[str, Any] = {
            "name": self.name,
            "label": self.label or self.name,
            "role": self.role,
            "distillation": self.distillation,
            "seeds": list(self.seeds),
            "recall": {n: s["mean"] for n, s in summaries.items()},
            "recall_stderr": {n: s["stderr"] for n, s in summaries.items()},
            "recall_per_seed": per_seed,
            "params": None if self.params is None else int(self.params),
            "multiply_adds": None if self.multiply_adds is None else int(self.multiply_adds),
            "ms_per_image": _optional_float(self.ms_per_image),
            "forward_ms_per_image": _optional_float(self.forward_ms_per_image),
            "matching_ms_per_query": _optional_float(self.matching_ms_per_query),
            "descriptor_dim": None if self.descriptor_dim is None else int(self.descriptor_dim),
        }
        prs = [m.pr for m in self.measurements]
        if all(pr is not None for pr in prs):
            summaries = {key: _summary_json([pr[key] for pr in prs]) for key in PR_KEYS}
            entry["pr"] = {key: s["mean"] for key, s in summaries.items()}
            entry["pr_stderr"] = {key: s["stderr"] for key, s in summaries.items()}
        labels = sorted({label for m in self.measurements for label in m.recall_at})
        if labels:
            entry["recall_at"] = {
                label: {n: s["mean"] for n, s in _summaries(
                    [_recall_json(m.recall_at[label], where) for m in self.measurements], where).items()}
                for label in labels
            }
        walls = [m.wall_s for m in self.measurements]
        if all(w is not None for w in walls):
            entry["wall_s_per_seed"] = [float(w) for w in walls]
        extras = [m.extra for m in self.measurements if m.extra]
        if extras:
            entry["per_seed"] = extras
        clashes = sorted(set(self.extra) & set(entry))
        if clashes:
            raise TscmError(f"{where}: extra fields {', '.join(clashes)} clash with standard fields")
        entry.update(self.extra)
        return entry


def mean_and_stderr(values: Iterable[float]) -> tuple[float, float | None]:
    """Mean and standard error (sample std, ddof=1, over sqrt(n)); the error is None for one value."""
    array = np.asarray(list(values), dtype=np.float64)
    if array.size == 0:
        raise TscmError("mean and standard error need at least one value")
    mean = float(array.mean())
    if array.size == 1:
        return mean, None
    return mean, float(array.std(ddof=1) / math.sqrt(array.size))


def binomial_stderr_points(recall_percent: float, num_queries: int) -> float:
    """Binomial standard error (points) of one run's recall on `num_queries` queries."""
    p = recall_percent / 100.0
    return 100.0 * math.sqrt(max(p * (1.0 - p), 0.0) / max(num_queries, 1))


def compare(entry: Mapping[str, Any], baseline: Mapping[str, Any], n: int = 1) -> dict[str, Any]:
    """Recall@n of `entry` minus `baseline`, with the combined standard error and a verdict.

    "within noise" when |difference| < 2 combined errors; without an error (one seed) no verdict.
    """
    key = str(n)
    delta = entry["recall"][key] - baseline["recall"][key]
    errors = (entry["recall_stderr"][key], baseline["recall_stderr"][key])
    comparison: dict[str, Any] = {"model": entry["name"], "baseline": baseline["name"], "metric": f"R@{n}",
                                  "difference": delta, "stderr": None, "verdict": "one seed: no error estimate"}
    if None not in errors:
        error = math.hypot(*errors)
        comparison["stderr"] = error
        comparison["verdict"] = ("a clear gain" if delta > 2 * error else "a clear loss" if delta < -2 * error
                                 else "within noise (|difference| < 2 SE)")
    # Rows trained with the same seeds: the difference seed by seed (how much a change of seed, or of CPU, moves it).
    seeds = entry.get("seeds") or []
    if len(seeds) > 1 and list(seeds) == list(baseline.get("seeds") or []):
        paired = [a[key] - b[key] for a, b in zip(entry["recall_per_seed"], baseline["recall_per_seed"])]
        comparison["per_seed_difference"] = paired
    return comparison


def format_comparison(c: Mapping[str, Any]) -> str:
    error = f" ± {c['stderr']:.1f}" if c["stderr"] is not None else ""
    paired = c.get("per_seed_difference")
    spread = f" (per seed {min(paired):+.1f} to {max(paired):+.1f})" if paired else ""
    return f"{c['model']} vs {c['baseline']}: {c['metric']} {c['difference']:+.1f}{error} points{spread}: {c['verdict']}"


def check_model_name(name: str) -> str:
    """Model names become file names (descriptors/<name>.npz), so keep them plain."""
    if not MODEL_NAME_PATTERN.match(name):
        raise TscmError(f"model name {name!r}: use letters, digits, '.', '_', '+' or '-' (it names a file)")
    return name


def build_results(
    dataset: DatasetInfo,
    models: Sequence[ModelResult],
    *,
    comparisons: Sequence[tuple[str, str]] = (),
    seeds: Sequence[int] = (),
    wall_s: Mapping[str, float] | None = None,
    command: str | None = None,
    run_dir: str | Path | None = None,
    notes: Sequence[str] = (),
    sections: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The results.json document (a plain dict), validated. `comparisons` are (model, baseline) names."""
    entries = [model.to_json() for model in models]
    names = [entry["name"] for entry in entries]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise TscmError(f"model names must be unique, repeated: {', '.join(duplicates)}")
    by_name = {entry["name"]: entry for entry in entries}
    compared = []
    for model, baseline in comparisons:
        if model in by_name and baseline in by_name:
            compared.append(compare(by_name[model], by_name[baseline]))
    if run_dir is not None:
        for entry in entries:
            if descriptor_path(run_dir, entry["name"]).exists():
                entry["descriptors"] = f"{DESCRIPTOR_DIR}/{entry['name']}.npz"
    document = {
        "format": RESULTS_FORMAT,
        "format_version": RESULTS_FORMAT_VERSION,
        "tscm_version": __version__,
        "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": command if command is not None else " ".join(["tscm", *sys.argv[1:]]),
        "dataset": dataset.to_json(),
        "seeds": [int(s) for s in seeds],
        "wall_s": {key: float(value) for key, value in (wall_s or {}).items()},
        "models": entries,
        "comparisons": compared,
        "notes": list(notes),
    }
    document.update(sections or {})
    return document


def write_results(run_dir: str | Path, results: Mapping[str, Any]) -> tuple[Path, Path]:
    """Write results.json and results.md atomically; returns their paths."""
    run_dir = Path(run_dir)
    json_path = run_dir / RESULTS_JSON
    md_path = run_dir / RESULTS_MD
    write_json_atomic(json_path, results)
    write_text_atomic(md_path, format_markdown(results))
    return json_path, md_path


def read_results(run_dir: str | Path) -> dict[str, Any]:
    """Read and check <run>/results.json."""
    path = Path(run_dir) / RESULTS_JSON
    if not path.is_symlink() and not path.exists():  # a FIFO or a loop there is named by the reader
        raise TscmError(f"{path}: no results.json here (expected a run directory written by tscm demo/ablation)")
    return read_results_file(path)


def descriptor_path(run_dir: str | Path, name: str) -> Path:
    return Path(run_dir) / DESCRIPTOR_DIR / f"{check_model_name(name)}.npz"


def save_descriptors(run_dir: str | Path, name: str, db: np.ndarray, queries: np.ndarray) -> Path:
    """Save one model's database and query descriptors (float32) as <run>/descriptors/<name>.npz."""
    db = np.ascontiguousarray(db, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if db.ndim != 2 or queries.ndim != 2 or db.shape[1] != queries.shape[1]:
        raise TscmError(
            f"descriptors of {name!r}: expected db N×D and queries M×D with the same D, "
            f"got {db.shape} and {queries.shape}"
        )
    path = descriptor_path(run_dir, name)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        # A file handle, not a name: np.savez would append ".npz" to the temporary name.
        np.savez(handle, db=db, queries=queries)
    return path


def load_descriptors(run_dir: str | Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Load (db, queries) saved by save_descriptors."""
    path = descriptor_path(run_dir, name)
    if not path.is_file():
        raise TscmError(f"{path}: no saved descriptors for model {name!r}")
    try:
        with np.load(path, allow_pickle=False) as arrays:
            missing = {"db", "queries"} - set(arrays.files)
            if missing:
                raise TscmError(f"{path}: missing arrays {', '.join(sorted(missing))} (expected 'db' and 'queries')")
            return arrays["db"].astype(np.float32), arrays["queries"].astype(np.float32)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise TscmError(f"{path}: not a readable descriptor .npz ({error})") from error


# ----- tables ------------------------------------------------------------------------------------


def format_table(results: Mapping[str, Any]) -> str:
    """Plain-text report for the terminal: protocol line, the model table, comparisons, extra tables."""
    blocks = [_protocol_line(results), _aligned(*_model_table(results))]
    for title, (header, rows) in _extra_tables(results):
        blocks.append(f"{title}\n" + _aligned(header, rows))
    if results.get("comparisons"):
        blocks.append("\n".join(format_comparison(c) for c in results["comparisons"]))
    return "\n\n".join(blocks) + "\n"


def format_markdown(results: Mapping[str, Any]) -> str:
    """results.md: a short header (data set, radius, counts, provenance), Markdown tables and notes."""
    dataset = results["dataset"]
    lines = [
        f"# tscm results: {dataset['name']} / {dataset['split']}",
        "",
        f"- Data set: `{dataset['path']}` ({dataset['name']}, split {dataset['split']})",
        f"- Protocol: {protocol_label(dataset['radius'], dataset['unit'])}; {dataset['num_db']} database images, "
        f"{dataset['num_queries']} queries, {dataset['num_queries_evaluated']} evaluated "
        f"({dataset['num_queries'] - dataset['num_queries_evaluated']} dropped: no true match)",
    ]
    if results.get("seeds"):
        lines.append(f"- Seeds: {', '.join(str(s) for s in results['seeds'])} (mean ± standard error over seeds)")
    if results.get("wall_s"):
        lines.append("- Wall time: " + ", ".join(f"{k} {_fmt_seconds(v)}" for k, v in results["wall_s"].items()))
    lines.append(
        f"- tscm {results.get('tscm_version', '?')}, {results.get('created_utc', '?')}: `{results.get('command', '')}`"
    )
    lines += ["", "## Models", "", _markdown(*_model_table(results))]
    for title, (header, rows) in _extra_tables(results):
        lines += ["", f"## {title}", "", _markdown(header, rows)]
    if results.get("comparisons"):
        lines += ["", "## Comparisons", ""] + [f"- {format_comparison(c)}" for c in results["comparisons"]]
    if results.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {note}" for note in results["notes"]]
    return "\n".join(lines) + "\n"


def _model_table(results: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    dataset = results["dataset"]
    unit = dataset["unit"]
    others = [radius_text(r, unit) for r in dataset.get("other_radii", [])]
    header = ["Model", "Role", "Distillation", "Seeds"] + [f"R@{n}" for n in TABLE_NS]
    header += [f"R@1 {label}" for label in others] + ["AP", "R@100%P", "Params", "MACs", "ms/image", "Match ms/q"]
    rows = []
    for model in results["models"]:
        recall, stderr = model.get("recall", {}), model.get("recall_stderr", {})
        pr, pr_err = model.get("pr") or {}, model.get("pr_stderr") or {}
        recall_at = model.get("recall_at", {})
        rows.append(
            [model.get("label") or model["name"], model["role"], model.get("distillation") or "-",
             str(len([s for s in model.get("seeds", []) if s is not None]) or "-")]
            + [_fmt_mean_se(recall.get(str(n)), stderr.get(str(n))) for n in TABLE_NS]
            + [_fmt_percent((recall_at.get(label) or {}).get("1")) for label in others]
            + [_fmt_mean_se(pr.get("average_precision"), pr_err.get("average_precision")),
               _fmt_mean_se(pr.get("recall_at_100_precision"), pr_err.get("recall_at_100_precision")),
               _fmt_count(model.get("params")), _fmt_count(model.get("multiply_adds")),
               _fmt_ms(model.get("ms_per_image")), _fmt_ms(model.get("matching_ms_per_query"))]
        )
    return header, rows


def _extra_tables(results: Mapping[str, Any]) -> list[tuple[str, tuple[list[str], list[list[str]]]]]:
    """Tables other parts of a run add under `tables`: {title: {"header": [...], "rows": [[...]]}}."""
    return [(title, (table["header"], table["rows"])) for title, table in (results.get("tables") or {}).items()]


def _protocol_line(results: Mapping[str, Any]) -> str:
    dataset = results["dataset"]
    seeds = results.get("seeds") or []
    over = f"; mean ± standard error over seeds {', '.join(map(str, seeds))}" if len(seeds) > 1 else ""
    return (
        f"{dataset['name']}/{dataset['split']}: Recall@N in percent, {protocol_label(dataset['radius'], dataset['unit'])}; "
        f"{dataset['num_db']} database images, {dataset['num_queries_evaluated']} of "
        f"{dataset['num_queries']} queries evaluated{over}; AP and R@100%P over all queries (top-1 distance)"
    )


def _aligned(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    lines = ["  ".join(cell.ljust(w) if i < 3 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths)))
             for line in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    align = ["---" if i < 3 else "---:" for i in range(len(header))]
    return "\n".join("| " + " | ".join(line) + " |" for line in [header, align, *rows])


def _recall_json(recall: Mapping[Any, float], what: str) -> dict[str, float]:
    out = {}
    for n, value in sorted(recall.items(), key=lambda item: int(item[0])):
        value = float(value)
        if int(n) < 1 or not 0.0 <= value <= 100.0:
            raise TscmError(f"{what}: Recall@{n} = {value} is not a percentage for N ≥ 1")
        out[str(int(n))] = value
    return out


def _summaries(per_seed: Sequence[Mapping[str, float]], where: str) -> dict[str, dict[str, Any]]:
    ns = sorted({n for r in per_seed for n in r}, key=int)
    summaries = {}
    for n in ns:
        values = [r.get(n) for r in per_seed]
        if any(v is None for v in values):
            raise TscmError(f"{where}: Recall@{n} missing for some seeds")
        summaries[n] = _summary_json(values)
    return summaries


def _summary_json(values: Sequence[float]) -> dict[str, Any]:
    mean, stderr = mean_and_stderr(values)
    return {"mean": mean, "stderr": stderr, "n": len(values)}


def _optional_float(value: float | None) -> float | None:
    return None if value is None else float(value)


def _fmt_percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _fmt_mean_se(mean: float | None, stderr: float | None) -> str:
    if mean is None:
        return "-"
    return f"{mean:.1f}" if stderr is None else f"{mean:.1f} ± {stderr:.1f}"


def _fmt_ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if value < 1 else f"{value:.2f}"


def _fmt_seconds(value: float) -> str:
    return f"{value:.1f} s"


def _fmt_count(value: int | None) -> str:
    if value is None:
        return "-"
    for limit, suffix in ((1e9, " G"), (1e6, " M"), (1e3, " k")):
        if value >= limit:
            return f"{value / limit:.2f}{suffix}" if limit > 1e3 else f"{value / limit:.1f}{suffix}"
    return str(value)

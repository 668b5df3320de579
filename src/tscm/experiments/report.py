"""Results of a run: results.json, results.md, the printed table, and saved descriptors.

Callers (`tscm demo`, `tscm ablation`) compute numbers and hand them here. Run directory layout:

    <run>/results.json                 the numbers and what a reader needs to trust them
    <run>/results.md                   the same as Markdown tables
    <run>/descriptors/<model>.npz      arrays `db` (num_db×D) and `queries` (num_queries×D), float32
    <run>/*.png                        pictures (tscm.experiments.plots), re-drawable by `tscm visualize <run>`

results.json records the data set path and split, so pictures can be redrawn from the saved
descriptors without recomputing them.
"""

from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from tscm import __version__
from tscm.data.places import PlaceSet
from tscm.errors import TscmError
from tscm.evaluation.recall import protocol_label
from tscm.fileio import atomic_path, write_json_atomic, write_text_atomic

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
DESCRIPTOR_DIR = "descriptors"
RESULTS_FORMAT = "tscm-results"
RESULTS_FORMAT_VERSION = 1
ROLES = ("teacher", "student", "reference")
RAW_PIXELS = "raw-pixels"
TABLE_NS = (1, 5, 10)

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class DatasetInfo:
    """Which data set and split the numbers were measured on, and the evaluation protocol."""

    path: str
    name: str
    split: str
    radius_m: float
    num_db: int
    num_queries: int
    num_queries_evaluated: int

    @classmethod
    def from_placeset(cls, path: str | Path, placeset: PlaceSet, radius_m: float) -> DatasetInfo:
        """Counts from the PlaceSet; queries without a database image within the radius are not evaluated."""
        evaluated = sum(len(p) > 0 for p in placeset.positives(radius_m))
        return cls(str(Path(path).resolve()), placeset.name, placeset.split, float(radius_m),
                   placeset.num_db, placeset.num_queries, evaluated)

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "name": self.name,
            "split": self.split,
            "radius_m": float(self.radius_m),
            "num_db": int(self.num_db),
            "num_queries": int(self.num_queries),
            "num_queries_evaluated": int(self.num_queries_evaluated),
            "num_queries_without_positive": int(self.num_queries - self.num_queries_evaluated),
        }


@dataclass
class ModelResult:
    """One evaluated model: recall (N → percent at the data set's radius), size and speed.

    `recall` holds at least N = 1, 5, 10, 20; give every N in 1..20 to get the Recall@N curve.
    """

    name: str
    role: str
    distillation: str | None
    recall: Mapping[int, float]
    params: int | None
    ms_per_image: float | None
    matching_ms_per_query: float | None = None
    descriptor_dim: int | None = None
    seed: int | None = None
    wall_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        check_model_name(self.name)
        if self.role not in ROLES:
            raise TscmError(f"model {self.name!r}: role must be one of {', '.join(ROLES)}, got {self.role!r}")
        entry: dict[str, Any] = {
            "name": self.name,
            "role": self.role,
            "distillation": self.distillation,
            "recall": _recall_json(self.recall, f"model {self.name!r}"),
            "params": None if self.params is None else int(self.params),
            "ms_per_image": _optional_float(self.ms_per_image),
            "matching_ms_per_query": _optional_float(self.matching_ms_per_query),
            "descriptor_dim": None if self.descriptor_dim is None else int(self.descriptor_dim),
            "seed": self.seed,
            "wall_s": _optional_float(self.wall_s),
        }
        clashes = sorted(set(self.extra) & set(entry))
        if clashes:
            raise TscmError(f"model {self.name!r}: extra fields {', '.join(clashes)} clash with standard fields")
        entry.update(self.extra)
        return entry


@dataclass
class AblationRow:
    """One ablation setting measured over several seeds; mean and standard error are derived here."""

    name: str
    seeds: Sequence[int]
    recall_per_seed: Sequence[Mapping[int, float]]
    wall_s_per_seed: Sequence[float] | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        if len(self.seeds) == 0 or len(self.seeds) != len(self.recall_per_seed):
            raise TscmError(
                f"ablation row {self.name!r}: need one recall entry per seed, "
                f"got {len(self.recall_per_seed)} for {len(self.seeds)} seeds"
            )
        per_seed = [_recall_json(r, f"ablation row {self.name!r}") for r in self.recall_per_seed]
        ns = sorted({int(n) for r in per_seed for n in r}, key=int)
        recall_summary = {}
        for n in ns:
            values = [r.get(str(n)) for r in per_seed]
            if any(v is None for v in values):
                raise TscmError(f"ablation row {self.name!r}: Recall@{n} missing for some seeds")
            recall_summary[str(n)] = _summary_json(values)
        entry: dict[str, Any] = {
            "name": self.name,
            "settings": dict(self.settings),
            "seeds": [int(s) for s in self.seeds],
            "recall_per_seed": per_seed,
            "recall": recall_summary,
        }
        if self.wall_s_per_seed is not None:
            if len(self.wall_s_per_seed) != len(self.seeds):
                raise TscmError(f"ablation row {self.name!r}: need one wall time per seed")
            entry["wall_s_per_seed"] = [float(w) for w in self.wall_s_per_seed]
            entry["wall_s"] = _summary_json(entry["wall_s_per_seed"])
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


def check_model_name(name: str) -> str:
    """Model names become file names (descriptors/<name>.npz), so keep them plain."""
    if not _SAFE_NAME.match(name):
        raise TscmError(f"model name {name!r}: use letters, digits, '.', '_' or '-' (it names a file)")
    return name


def build_results(
    dataset: DatasetInfo,
    models: Sequence[ModelResult],
    *,
    ablation: Sequence[AblationRow] = (),
    seeds: Sequence[int] = (),
    wall_s: Mapping[str, float] | None = None,
    command: str | None = None,
    run_dir: str | Path | None = None,
) -> dict[str, Any]:
    """The results.json document (a plain dict), validated."""
    entries = [model.to_json() for model in models]
    names = [entry["name"] for entry in entries]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise TscmError(f"model names must be unique, repeated: {', '.join(duplicates)}")
    if run_dir is not None:
        for entry in entries:
            if descriptor_path(run_dir, entry["name"]).exists():
                entry["descriptors"] = f"{DESCRIPTOR_DIR}/{entry['name']}.npz"
    return {
        "format": RESULTS_FORMAT,
        "format_version": RESULTS_FORMAT_VERSION,
        "tscm_version": __version__,
        "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": command if command is not None else " ".join(["tscm", *sys.argv[1:]]),
        "dataset": dataset.to_json(),
        "radius_m": float(dataset.radius_m),
        "seeds": [int(s) for s in seeds],
        "wall_s": {key: float(value) for key, value in (wall_s or {}).items()},
        "models": entries,
        "ablation": [row.to_json() for row in ablation],
    }


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
    if not path.is_file():
        raise TscmError(f"{path}: no results.json here (expected a run directory written by tscm demo/ablation)")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise TscmError(f"{path}: not readable JSON ({error})") from error
    if not isinstance(results, dict) or results.get("format") != RESULTS_FORMAT:
        raise TscmError(f"{path}: field 'format' should be {RESULTS_FORMAT!r}")
    for key in ("dataset", "models"):
        if key not in results:
            raise TscmError(f"{path}: field {key!r} is missing")
    return results


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
    except (OSError, ValueError) as error:
        raise TscmError(f"{path}: not a readable descriptor .npz ({error})") from error


def format_table(results: Mapping[str, Any]) -> str:
    """Plain-text table for the terminal: one line per model (and per ablation row)."""
    header = _protocol_line(results)
    blocks = [header]
    if results.get("models"):
        blocks.append(_aligned(*_model_table(results["models"])))
    if results.get("ablation"):
        blocks.append(_aligned(*_ablation_table(results["ablation"])))
    return "\n\n".join(blocks) + "\n"


def format_markdown(results: Mapping[str, Any]) -> str:
    """results.md: a short header (data set, radius, counts, provenance) and Markdown tables."""
    dataset = results["dataset"]
    lines = [
        f"# tscm results: {dataset['name']} / {dataset['split']}",
        "",
        f"- Data set: `{dataset['path']}` ({dataset['name']}, split {dataset['split']})",
        f"- Protocol: {protocol_label(dataset['radius_m'])}; {dataset['num_db']} database images, "
        f"{dataset['num_queries']} queries, {dataset['num_queries_evaluated']} evaluated "
        f"({dataset['num_queries'] - dataset['num_queries_evaluated']} dropped: no database image within radius)",
    ]
    if results.get("seeds"):
        lines.append(f"- Seeds: {', '.join(str(s) for s in results['seeds'])}")
    if results.get("wall_s"):
        lines.append("- Wall time: " + ", ".join(f"{k} {_fmt_seconds(v)}" for k, v in results["wall_s"].items()))
    lines.append(
        f"- tscm {results.get('tscm_version', '?')}, {results.get('created_utc', '?')}: `{results.get('command', '')}`"
    )
    if results.get("models"):
        lines += ["", "## Models", "", _markdown(*_model_table(results["models"]))]
    if results.get("ablation"):
        lines += [
            "",
            "## Ablation (mean ± standard error over seeds)",
            "",
            _markdown(*_ablation_table(results["ablation"])),
        ]
    return "\n".join(lines) + "\n"


def _model_table(models: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    header = ["Model", "Role", "Distillation"] + [f"R@{n}" for n in TABLE_NS]
    header += ["Params", "ms/image", "Match ms/query"]
    rows = []
    for model in models:
        recall = model.get("recall", {})
        rows.append(
            [model["name"], model["role"], model.get("distillation") or "-"]
            + [_fmt_percent(recall.get(str(n))) for n in TABLE_NS]
            + [
                _fmt_params(model.get("params")),
                _fmt_ms(model.get("ms_per_image")),
                _fmt_ms(model.get("matching_ms_per_query")),
            ]
        )
    return header, rows


def _ablation_table(rows: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    header = ["Setting", "Seeds"] + [f"R@{n}" for n in TABLE_NS] + ["Wall time/seed"]
    table = []
    for row in rows:
        recall = row.get("recall", {})
        wall = row.get("wall_s")
        table.append(
            [row["name"], str(len(row["seeds"]))]
            + [_fmt_mean_se(recall.get(str(n))) for n in TABLE_NS]
            + [_fmt_mean_se(wall, _fmt_seconds) if wall else "-"]
        )
    return header, table


def _protocol_line(results: Mapping[str, Any]) -> str:
    dataset = results["dataset"]
    return (
        f"{dataset['name']}/{dataset['split']}: Recall@N in percent, {protocol_label(dataset['radius_m'])}; "
        f"{dataset['num_db']} database images, {dataset['num_queries_evaluated']} of "
        f"{dataset['num_queries']} queries evaluated"
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


def _summary_json(values: Sequence[float]) -> dict[str, Any]:
    mean, stderr = mean_and_stderr(values)
    return {"mean": mean, "stderr": stderr, "n": len(values)}


def _optional_float(value: float | None) -> float | None:
    return None if value is None else float(value)


def _fmt_percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _fmt_ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if value < 1 else f"{value:.2f}"


def _fmt_seconds(value: float) -> str:
    return f"{value:.1f} s"


def _fmt_params(value: int | None) -> str:
    if value is None:
        return "-"
    if value >= 1_000_000:
        return f"{value / 1e6:.2f} M"
    if value >= 1_000:
        return f"{value / 1e3:.1f} k"
    return str(value)


def _fmt_mean_se(summary: Mapping[str, Any] | None, fmt=_fmt_percent) -> str:
    if not summary:
        return "-"
    if summary.get("stderr") is None:
        return fmt(summary["mean"])
    return f"{fmt(summary['mean'])} ± {fmt(summary['stderr'])}"

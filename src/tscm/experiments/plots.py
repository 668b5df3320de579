"""Pictures of a run (PNG, matplotlib Agg): Recall@N curves, a retrieval grid, a map of recognised queries.

Every picture is drawn from descriptors and a PlaceSet, so `tscm visualize` can redraw them from
the saved descriptors of a run. Figures are built with matplotlib.figure.Figure (no pyplot, no
global backend state) and written atomically.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from tscm.data.places import PlaceSet
from tscm.errors import TscmError
from tscm.evaluation.recall import recall_at_n
from tscm.fileio import atomic_path

CURVE_MAX_N = 20
GRID_TOP_K = 5
GRID_QUERIES = 6
CORRECT_COLOUR = "#1a9641"
WRONG_COLOUR = "#d7191c"
QUERY_COLOUR = "#2b83ba"
DATABASE_COLOUR = "#b0b0b0"


@dataclass
class Retrieval:
    """Nearest database images of every query (exact L2), with the ground truth at one radius."""

    ranked: np.ndarray  # num_queries × k database indices, nearest first
    positives: list[np.ndarray]  # per query, database indices within the radius
    radius_m: float

    @property
    def evaluated(self) -> np.ndarray:
        """Queries that have at least one database image within the radius (the others are dropped)."""
        return np.array([len(p) > 0 for p in self.positives], dtype=bool)

    def correct_within(self, n: int) -> np.ndarray:
        """Per query: is one of its top-n results within the radius?"""
        top = self.ranked[:, :n]
        return np.array([np.isin(row, pos).any() for row, pos in zip(top, self.positives)], dtype=bool)


def retrieve(
    db: np.ndarray, queries: np.ndarray, positives: Sequence[np.ndarray], radius_m: float, k: int = CURVE_MAX_N
) -> Retrieval:
    """Exact L2 search (faiss IndexFlatL2) of every query's k nearest database images."""
    import faiss

    db = np.ascontiguousarray(db, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if db.ndim != 2 or queries.ndim != 2 or db.shape[1] != queries.shape[1]:
        raise TscmError(f"descriptors: expected db N×D and queries M×D, got {db.shape} and {queries.shape}")
    if len(positives) != len(queries):
        raise TscmError(f"ground truth covers {len(positives)} queries but there are {len(queries)} query descriptors")
    index = faiss.IndexFlatL2(db.shape[1])
    index.add(db)
    distances, ranked = index.search(queries, min(k, len(db)))
    # Ties go to the lower database index, the rule tscm.evaluation.recall uses, so maps agree with Recall@1.
    order = np.lexsort((ranked, distances), axis=-1)
    ranked = np.take_along_axis(ranked, order, axis=-1)
    return Retrieval(ranked=ranked.astype(np.int64), positives=[np.asarray(p) for p in positives], radius_m=radius_m)


def retrieve_for_placeset(placeset: PlaceSet, db: np.ndarray, queries: np.ndarray, radius_m: float) -> Retrieval:
    """retrieve() with counts checked against the PlaceSet the descriptors claim to describe."""
    if len(db) != placeset.num_db or len(queries) != placeset.num_queries:
        raise TscmError(
            f"descriptors ({len(db)} database, {len(queries)} queries) do not match {placeset.summary()}"
        )
    return retrieve(db, queries, placeset.positives(radius_m), radius_m)


def choose_grid_queries(retrieval: Retrieval, count: int = GRID_QUERIES) -> list[int]:
    """A deterministic mix of recognised and missed queries (Recall@1), spread over the query list."""
    evaluated = retrieval.evaluated
    correct = retrieval.correct_within(1)
    successes = np.flatnonzero(evaluated & correct)
    failures = np.flatnonzero(evaluated & ~correct)
    want_failures = min(len(failures), count // 2)
    want_successes = min(len(successes), count - want_failures)
    want_failures = min(len(failures), count - want_successes)
    chosen = list(_spread(successes, want_successes)) + list(_spread(failures, want_failures))
    return sorted(int(q) for q in chosen)


def _spread(indices: np.ndarray, count: int) -> np.ndarray:
    if count <= 0:
        return indices[:0]
    return indices[np.unique(np.linspace(0, len(indices) - 1, count).round().astype(int))]


def plot_recall_curves(
    path: str | Path,
    curves: Mapping[str, Mapping[int, float]],
    roles: Mapping[str, str],
    subtitle: str,
) -> Path:
    """Recall@N (percent) against N for each model; the reference floor drawn dashed grey."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.8), dpi=120)
    ax = fig.add_subplot()
    students = 0
    for name, curve in curves.items():
        ns = sorted(int(n) for n in curve)
        values = [curve[n] if n in curve else curve[str(n)] for n in ns]
        role = roles.get(name, "student")
        who = name if name == role else f"{name} ({role})"
        label = f"{who}, R@1 {values[0]:.1f}%" if ns and ns[0] == 1 else who
        if role == "reference":
            ax.plot(ns, values, linestyle="--", color="grey", marker=".", label=label)
        elif role == "teacher":
            ax.plot(ns, values, color="black", linewidth=2.2, marker="o", markersize=4, label=label)
        else:
            ax.plot(ns, values, color=f"C{students}", linewidth=1.8, marker="s", markersize=4, label=label)
            students += 1
    ax.set_xlabel("N (number of retrieved database images)")
    ax.set_ylabel("Recall@N (%)")
    ax.set_ylim(0, 102)  # headroom so curves at 100 % stay visible
    ax.set_yticks(range(0, 101, 20))
    max_n = max([int(n) for c in curves.values() for n in c] + [1])
    ax.set_xlim(0.5, max_n + 0.5)
    ax.set_xticks([n for n in (1, 5, 10, 15, 20, 25, 50, 100) if n <= max_n])
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"Recall@N\n{subtitle}", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_retrieval_grid(
    path: str | Path,
    placeset: PlaceSet,
    retrieval: Retrieval,
    query_indices: Sequence[int],
    model_name: str,
    top_k: int = GRID_TOP_K,
    thumb_px: int = 160,
) -> Path:
    """Rows of queries: the query image, then its top-k database images framed green (within radius) or red."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    if len(query_indices) == 0:
        raise TscmError(f"retrieval grid for {model_name!r}: no query to show")
    top_k = min(top_k, retrieval.ranked.shape[1])
    rows, cols = len(query_indices), top_k + 1
    fig = Figure(figsize=(1.7 * cols, 2.0 * rows + 0.8), dpi=110)
    axes = fig.subplots(rows, cols, squeeze=False)
    for row, q in enumerate(query_indices):
        positives = set(retrieval.positives[q].tolist())
        ax = axes[row][0]
        _show_image(ax, placeset.query_paths[q], thumb_px, QUERY_COLOUR)
        outcome = "hit" if int(retrieval.ranked[q, 0]) in positives else "miss"
        ax.set_title(f"query {q} (R@1 {outcome})", fontsize=8, color=QUERY_COLOUR)
        for rank in range(top_k):
            d = int(retrieval.ranked[q, rank])
            ok = d in positives
            colour = CORRECT_COLOUR if ok else WRONG_COLOUR
            ax = axes[row][rank + 1]
            _show_image(ax, placeset.db_paths[d], thumb_px, colour)
            metres = float(np.linalg.norm(placeset.db_xy[d] - placeset.query_xy[q]))
            ax.set_title(f"#{rank + 1}: {metres:.0f} m", fontsize=8, color=colour)
    fig.legend(
        handles=[
            Patch(edgecolor=QUERY_COLOUR, facecolor="none", linewidth=3, label="query"),
            Patch(edgecolor=CORRECT_COLOUR, facecolor="none", linewidth=3,
                  label=f"within {retrieval.radius_m:g} m"),
            Patch(edgecolor=WRONG_COLOUR, facecolor="none", linewidth=3,
                  label=f"farther than {retrieval.radius_m:g} m"),
        ],
        loc="lower center",
        ncol=3,
        fontsize=8,
        frameon=False,
    )
    fig.suptitle(
        f"{model_name}: top-{top_k} database images per query ({placeset.name}/{placeset.split})\n"
        "titles: rank and distance from the query's position",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return _save(fig, path)


def plot_recall_map(path: str | Path, placeset: PlaceSet, retrieval: Retrieval, model_name: str) -> Path:
    """Database positions (grey) and queries coloured by Recall@1 success (green) or failure (red)."""
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure

    evaluated = retrieval.evaluated
    correct = retrieval.correct_within(1)
    origin = np.vstack([placeset.db_xy, placeset.query_xy]).min(axis=0)
    db_xy = placeset.db_xy - origin
    query_xy = placeset.query_xy - origin
    fig = Figure(figsize=(6.5, 6.5), dpi=120)
    ax = fig.add_subplot()
    ax.scatter(db_xy[:, 0], db_xy[:, 1], s=6, color=DATABASE_COLOUR, label=f"database ({placeset.num_db})", zorder=1)
    hit = evaluated & correct
    miss = evaluated & ~correct
    if miss.any():  # where each missed query was wrongly placed
        wrong_xy = db_xy[retrieval.ranked[miss, 0]]
        segments = np.stack([query_xy[miss], wrong_xy], axis=1)
        alpha = min(0.35, 10.0 / len(segments))  # many misses would otherwise hide the map
        ax.add_collection(LineCollection(segments, colors=WRONG_COLOUR, alpha=alpha, linewidths=0.8, zorder=2,
                                         label="missed query → its top-1 image"))
    ax.scatter(query_xy[hit, 0], query_xy[hit, 1], s=16, color=CORRECT_COLOUR, zorder=3,
               label=f"query recognised at R@1 ({hit.sum()})")
    ax.scatter(query_xy[miss, 0], query_xy[miss, 1], s=16, color=WRONG_COLOUR, marker="x", zorder=3,
               label=f"query missed at R@1 ({miss.sum()})")
    if (~evaluated).any():
        ax.scatter(query_xy[~evaluated, 0], query_xy[~evaluated, 1], s=16, facecolors="none", edgecolors="black",
                   zorder=2, label=f"query without a match within {retrieval.radius_m:g} m ({(~evaluated).sum()})")
    recall_1 = 100.0 * hit.sum() / max(int(evaluated.sum()), 1)
    ax.set_title(
        f"{model_name}: Recall@1 {recall_1:.1f}% at {retrieval.radius_m:g} m\n{placeset.name}/{placeset.split}",
        fontsize=10,
    )
    ax.set_xlabel(f"east − {origin[0]:.0f} (m)")
    ax.set_ylabel(f"north − {origin[1]:.0f} (m)")
    ax.set_aspect("equal", adjustable="datalim")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, fontsize=8, frameon=False)
    fig.tight_layout()
    return _save(fig, path)


def _show_image(ax, image_path: Path, thumb_px: int, frame_colour: str) -> None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(image_path) as image:
            image = image.convert("RGB")
            image.thumbnail((thumb_px, thumb_px))
            pixels = np.asarray(image)
    except (OSError, UnidentifiedImageError) as error:
        raise TscmError(f"{image_path}: cannot open image for the retrieval grid ({error})") from error
    ax.imshow(pixels)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(frame_colour)
        spine.set_linewidth(4)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


@dataclass
class PictureReport:
    """What draw_run_pictures wrote, and which pictures failed (with the reason)."""

    written: list[Path]
    failed: list[str]


def draw_run_pictures(
    run_dir: str | Path,
    results: Mapping,
    placeset: PlaceSet,
    descriptors: Mapping[str, tuple[np.ndarray, np.ndarray]],
) -> PictureReport:
    """Draw every picture of a run into run_dir; one picture's failure does not stop the others.

    `results` is the results.json document (models, roles, radius); `descriptors` maps model
    names to (db, queries). Recall@N curves (N = 1..20) come from tscm.evaluation.recall.recall_at_n;
    models without descriptors are drawn from the recall in `results`.
    Grids and maps are drawn for teachers and students (not the reference floor).
    """
    run_dir = Path(run_dir)
    radius_m = float(results["dataset"]["radius_m"])
    report = PictureReport(written=[], failed=[])
    retrievals: dict[str, Retrieval] = {}
    for name, (db, queries) in descriptors.items():
        try:
            retrievals[name] = retrieve_for_placeset(placeset, db, queries, radius_m)
        except TscmError as error:
            report.failed.append(f"{name}: {error}")

    roles = {model["name"]: model["role"] for model in results["models"]}
    dataset = results["dataset"]
    subtitle = (
        f"{dataset['name']}/{dataset['split']}, radius {radius_m:g} m, "
        f"{dataset['num_queries_evaluated']} queries, {dataset['num_db']} database images"
    )
    curves_path = run_dir / "recall_curves.png"
    _attempt(report, curves_path.name, lambda: plot_recall_curves(
        curves_path, _recall_curves(results, descriptors, retrievals), roles, subtitle))
    for name, retrieval in retrievals.items():
        if roles.get(name) == "reference":
            continue
        grid_path = run_dir / f"retrieval_{name}.png"
        map_path = run_dir / f"map_{name}.png"
        _attempt(report, grid_path.name, lambda: plot_retrieval_grid(
            grid_path, placeset, retrieval, choose_grid_queries(retrieval), name))
        _attempt(report, map_path.name, lambda: plot_recall_map(map_path, placeset, retrieval, name))
    return report


def _recall_curves(
    results: Mapping, descriptors: Mapping[str, tuple[np.ndarray, np.ndarray]], retrievals: Mapping[str, Retrieval]
) -> dict[str, dict[int, float]]:
    curves = {}
    for model in results["models"]:
        name = model["name"]
        if name in retrievals:
            db, queries = descriptors[name]
            positives = retrievals[name].positives
            curves[name] = recall_at_n(db, queries, positives, ns=range(1, CURVE_MAX_N + 1)).recall
        elif model.get("recall"):
            curves[name] = {int(n): float(v) for n, v in model["recall"].items()}
    return curves


def _attempt(report: PictureReport, label: str, draw) -> None:
    # Pictures are extras: any failure is recorded and the run's results stay intact.
    try:
        report.written.append(draw())
    except Exception as error:  # noqa: BLE001 - matplotlib/PIL raise many types; all are reported
        report.failed.append(f"{label}: {type(error).__name__}: {error}")

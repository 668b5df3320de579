"""Pictures of a run (PNG, matplotlib Agg): Recall@N and precision-recall curves, a retrieval grid, a map of
recognised queries (metric data).

Every picture is drawn from descriptors and a PlaceSet, so `tscm visualize` can redraw them from
the saved descriptors of a run. Figures are built with matplotlib.figure.Figure (no pyplot, no
global backend state) and written atomically.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from tscm.data.images import load_rgb
from tscm.data.places import PlaceSet, radius_text
from tscm.errors import TscmError
from tscm.evaluation.precision_recall import pr_from_ranking, pr_summary
from tscm.evaluation.ranking import rank_exact
from tscm.evaluation.recall import recall_from_ranking
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
    distances: np.ndarray  # num_queries × k squared L2 distances
    positives: list[np.ndarray]  # per query, its true matches
    radius: float | None
    unit: str = "m"

    @property
    def match_text(self) -> str:
        return "a listed match" if self.unit == "explicit" else f"within {radius_text(self.radius, self.unit)}"

    @property
    def evaluated(self) -> np.ndarray:
        """Queries that have at least one database image within the radius (the others are dropped)."""
        return np.array([len(p) > 0 for p in self.positives], dtype=bool)

    def correct_within(self, n: int) -> np.ndarray:
        """Per query: is one of its top-n results within the radius?"""
        top = self.ranked[:, :n]
        return np.array([np.isin(row, pos).any() for row, pos in zip(top, self.positives)], dtype=bool)


def retrieve(db: np.ndarray, queries: np.ndarray, positives: Sequence[np.ndarray], radius: float | None,
             unit: str = "m", k: int = CURVE_MAX_N) -> Retrieval:
    """Every query's k nearest database images (tscm.evaluation.ranking: exact L2, ties to the lower index)."""
    if len(positives) != len(queries):
        raise TscmError(f"ground truth covers {len(positives)} queries but there are {len(queries)} query descriptors")
    ranking = rank_exact(db, queries, k)
    return Retrieval(ranking.indices, ranking.distances, [np.asarray(p) for p in positives], radius, unit)


def retrieve_for_placeset(placeset: PlaceSet, db: np.ndarray, queries: np.ndarray, radius: float | None) -> Retrieval:
    """retrieve() with counts checked against the PlaceSet the descriptors claim to describe."""
    if len(db) != placeset.num_db or len(queries) != placeset.num_queries:
        raise TscmError(
            f"descriptors ({len(db)} database, {len(queries)} queries) do not match {placeset.summary()}"
        )
    return retrieve(db, queries, placeset.positives(radius), radius, placeset.unit)


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
            ax.set_title(f"#{rank + 1}: {_offset_text(placeset, q, d)}", fontsize=8, color=colour)
    fig.legend(
        handles=[
            Patch(edgecolor=QUERY_COLOUR, facecolor="none", linewidth=3, label="query"),
            Patch(edgecolor=CORRECT_COLOUR, facecolor="none", linewidth=3, label=f"true match ({retrieval.match_text})"),
            Patch(edgecolor=WRONG_COLOUR, facecolor="none", linewidth=3, label="wrong place"),
        ],
        loc="lower center",
        ncol=3,
        fontsize=8,
        frameon=False,
    )
    fig.suptitle(
        f"{model_name}: top-{top_k} database images per query ({placeset.name}/{placeset.split})\n"
        "titles: rank and " + ("distance from the query's position" if placeset.unit == "m" else
                               "frames from the query's place" if placeset.unit == "frame" else "whether it is listed"),
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
                   zorder=2, label=f"query without a match {retrieval.match_text} ({(~evaluated).sum()})")
    recall_1 = 100.0 * hit.sum() / max(int(evaluated.sum()), 1)
    ax.set_title(
        f"{model_name}: Recall@1 {recall_1:.1f}% {retrieval.match_text}\n{placeset.name}/{placeset.split}",
        fontsize=10,
    )
    ax.set_xlabel(f"east − {origin[0]:.0f} (m)")
    ax.set_ylabel(f"north − {origin[1]:.0f} (m)")
    ax.set_aspect("equal", adjustable="datalim")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, fontsize=8, frameon=False)
    fig.tight_layout()
    return _save(fig, path)


def _offset_text(placeset: PlaceSet, query: int, database: int) -> str:
    if placeset.unit == "m":
        return f"{float(np.linalg.norm(placeset.db_xy[database] - placeset.query_xy[query])):.0f} m"
    if placeset.unit == "frame":
        return f"{int(round(placeset.db_xy[database, 0] - placeset.query_xy[query, 0])):+d} fr"
    return "listed" if database in set(placeset.positives()[query].tolist()) else "not listed"


def _show_image(ax, image_path: Path, thumb_px: int, frame_colour: str) -> None:
    image = load_rgb(image_path)
    # Small images (e.g. 64×32 route frames) are scaled up, so a grid cell is not a dot.
    scale = thumb_px / max(image.size)
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
    pixels = np.asarray(image)
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

    `results` is the results.json document (models, roles, radius and unit); `descriptors` maps
    model names to (db, queries). Recall@N and precision-recall curves come from the descriptors
    (models without descriptors: Recall@N from `results`). Grids (and, for metric data, maps) are
    drawn for teachers and students, not the reference floors.
    """
    run_dir = Path(run_dir)
    dataset = results["dataset"]
    radius, unit = dataset.get("radius"), dataset.get("unit", "m")
    report = PictureReport(written=[], failed=[])
    retrievals: dict[str, Retrieval] = {}
    for name, (db, queries) in descriptors.items():
        try:
            retrievals[name] = retrieve_for_placeset(placeset, db, queries, radius)
        except TscmError as error:
            report.failed.append(f"{name}: {error}")

    roles = {model["name"]: model["role"] for model in results["models"]}
    ground_truth = "listed matches" if unit == "explicit" else f"radius {radius_text(radius, unit)}"
    subtitle = (f"{dataset['name']}/{dataset['split']}, {ground_truth}, "
                f"{dataset['num_queries_evaluated']} queries, {dataset['num_db']} database images")
    curves_path = run_dir / "recall_curves.png"
    _attempt(report, curves_path.name, lambda: plot_recall_curves(
        curves_path, _recall_curves(results, retrievals), roles, subtitle))
    pr_path = run_dir / "precision_recall.png"
    if retrievals:
        _attempt(report, pr_path.name, lambda: plot_precision_recall(pr_path, retrievals, roles, subtitle))
    for name, retrieval in retrievals.items():
        if roles.get(name) == "reference":
            continue
        grid_path = run_dir / f"retrieval_{name}.png"
        _attempt(report, grid_path.name, lambda: plot_retrieval_grid(
            grid_path, placeset, retrieval, choose_grid_queries(retrieval), name))
        if unit == "m":
            map_path = run_dir / f"map_{name}.png"
            _attempt(report, map_path.name, lambda: plot_recall_map(map_path, placeset, retrieval, name))
    return report


def plot_precision_recall(path: str | Path, retrievals: Mapping[str, Retrieval], roles: Mapping[str, str],
                          subtitle: str) -> Path:
    """Precision against recall over the top-1 distance (every query; tscm.evaluation.precision_recall)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.8), dpi=120)
    ax = fig.add_subplot()
    students = 0
    for name, retrieval in retrievals.items():
        curve = pr_from_ranking(retrieval.distances[:, 0], retrieval.ranked[:, 0], retrieval.positives)
        summary = pr_summary(curve)
        role = roles.get(name, "student")
        label = f"{name}: AP {summary['average_precision']:.1f}, R@100%P {summary['recall_at_100_precision']:.1f}"
        recall, precision = 100 * np.asarray(curve.recall), 100 * np.asarray(curve.precision)
        if role == "reference":
            ax.step(recall, precision, where="post", linestyle="--", color="grey", label=label)
        elif role == "teacher":
            ax.step(recall, precision, where="post", color="black", linewidth=2.2, label=label)
        else:
            ax.step(recall, precision, where="post", color=f"C{students}", linewidth=1.8, label=label)
            students += 1
    ax.set_xlabel("recall (%) of queries that have a true match")
    ax.set_ylabel("precision (%) of accepted top-1 matches")
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 102)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title(f"Precision-recall (accept the top-1 match when its distance ≤ t)\n{subtitle}", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _recall_curves(results: Mapping, retrievals: Mapping[str, Retrieval]) -> dict[str, dict[int, float]]:
    curves = {}
    for model in results["models"]:
        name = model["name"]
        if name in retrievals:
            retrieval = retrievals[name]
            curves[name] = recall_from_ranking(retrieval.ranked, retrieval.positives,
                                               range(1, min(CURVE_MAX_N, retrieval.ranked.shape[1]) + 1)).recall
        elif model.get("recall"):
            curves[name] = {int(n): float(v) for n, v in model["recall"].items()}
    return curves


def _attempt(report: PictureReport, label: str, draw) -> None:
    # Pictures are extras: any failure is recorded and the run's results stay intact.
    try:
        report.written.append(draw())
    except Exception as error:  # noqa: BLE001 - matplotlib/PIL raise many types; all are reported
        report.failed.append(f"{label}: {type(error).__name__}: {error}")

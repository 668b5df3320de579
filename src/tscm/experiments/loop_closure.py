"""The loop-closure parts of a run's report: sequence matching, a calibrated threshold's transfer from the
validation to the test split per decision score (tscm.evaluation.decision), precision-recall pictures
per score, and which score (distance, uncertainty, both) decides best."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from tscm.data.images import ImageListDataset
from tscm.data.places import PlaceSet, radius_text
from tscm.deploy.retrieval.calibration import calibrate, measure
from tscm.deploy.retrieval.index import PlaceIndex
from tscm.errors import TscmError
from tscm.evaluation.calibration import calibrate_bounded, precision_lower_bound
from tscm.evaluation.consistency import consistent_acceptance
from tscm.evaluation.decision import SCORE_NAMES, split_decisions
from tscm.evaluation.extract import InputSpec, describe_placeset
from tscm.evaluation.precision_recall import pr_curve, pr_summary, top1_labels
from tscm.evaluation.protocol import evaluate_sequences
from tscm.evaluation.ranking import rank_exact
from tscm.evaluation.recall import evaluate_descriptors
from tscm.evaluation.unseen import unseen_accepted, with_unseen
from tscm.fileio import atomic_path
from tscm.models.checkpoint import load_checkpoint

SEQUENCE_LENGTHS = (1, 5, 10, 20)


def sequence_table(placeset: PlaceSet, descriptors: Mapping[str, tuple[np.ndarray, np.ndarray]], radius: float,
                   lengths: Sequence[int] = SEQUENCE_LENGTHS) -> dict[str, Any]:
    """Recall@1/5 and precision-recall of each model when queries are scored over their last L frames."""
    header = ["Model", "L", f"R@1 {radius_text(radius, placeset.unit)}", "R@5", "AP", "R@100%P", "R@1 vs L=1"]
    rows, values = [], {}
    for name, (db, queries) in descriptors.items():
        single = None
        for length in lengths:
            result = (evaluate_descriptors(placeset, db, queries, radius, (1, 5)) if length == 1
                      else evaluate_sequences(placeset, db, queries, length, radius, (1, 5)))
            single = result.recall[1] if length == 1 else single
            ratio = result.recall[1] / single if single else float("nan")
            values[f"{name}/L{length}"] = {"recall": result.recall, "pr": result.pr}
            rows.append([name, str(length), f"{result.recall[1]:.1f}", f"{result.recall[5]:.1f}",
                         f"{result.pr['average_precision']:.1f}", f"{result.pr['recall_at_100_precision']:.1f}",
                         f"{ratio:.2f}×"])
    return {"header": header, "rows": rows, "values": values}


def threshold_transfer(val: tuple[PlaceSet, np.ndarray, np.ndarray], test: tuple[PlaceSet, np.ndarray, np.ndarray],
                       radius: float | None, target_precision: float = 0.99, sequence_length: int = 1) -> dict[str, Any]:
    """A threshold calibrated on val (exact search) for `target_precision`, and what it reaches on test."""
    val_set, val_db, val_queries = val
    test_set, test_db, test_queries = test
    val_index = PlaceIndex.build(val_db, backend="flat")
    try:
        # Today's rule: the top-1 distance, chosen by the split's plain precision (decision_transfers has the others).
        entry = calibrate(val_index, val_db, val_queries, val_set, target_precision=target_precision,
                          sequence_length=sequence_length, radius=radius, score="distance", bound="none",
                          unseen=False)
    except TscmError as error:
        return {"target_precision": target_precision, "sequence_length": sequence_length, "reached": False,
                "reason": str(error)}
    test_index = PlaceIndex.build(test_db, backend="flat")
    test_index.thresholds = [{**entry, "space": test_index.space()}]  # exact search: the same space on both splits
    measured = measure(test_index, test_db, test_queries, test_set, sequence_length=sequence_length, radius=radius)
    return {"target_precision": target_precision, "sequence_length": sequence_length, "reached": True,
            "threshold": entry["distance"], "val_precision": entry["precision"], "val_recall": entry["recall"],
            "test_precision": measured["precision"], "test_recall": measured["recall"],
            "test_accepted": measured["accepted_count"], "test_false_positives": measured["fp"]}


def transfer_rows(name: str, transfers: Sequence[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for t in transfers:
        if not t["reached"]:
            rows.append([name, str(t["sequence_length"]), f"{100 * t['target_precision']:g}", "-", "-", "-", "-",
                         "not reachable on val"])
            continue
        rows.append([name, str(t["sequence_length"]), f"{100 * t['target_precision']:g}",
                     f"{100 * t['val_precision']:.1f}", f"{100 * t['val_recall']:.1f}",
                     f"{100 * t['test_precision']:.1f}", f"{100 * t['test_recall']:.1f}",
                     f"{t['test_false_positives']} false of {t['test_accepted']} accepted"])
    return rows


TRANSFER_HEADER = ["Model", "L", "target P %", "val P %", "val R %", "test P %", "test R %", "test"]


def uncertainty_comparison(checkpoint: str | Path, placeset: PlaceSet, radius: float | None,
                           batch_size: int = 64) -> dict[str, float]:
    """Average precision (percent) of three ways to score a query's top-1 match: the distance, the
    student's uncertainty (mean of its uncertainty head's outputs for the query), and their product."""
    model, meta = load_checkpoint(checkpoint)
    if not hasattr(model, "uncertainty"):
        raise TscmError(f"{checkpoint}: a {meta.get('role')} has no uncertainty head")
    spec = InputSpec.of(meta)
    db, queries = describe_placeset(model, spec, placeset, batch_size=batch_size)
    dataset = ImageListDataset(placeset.query_paths, spec.image_size, spec.mean, spec.std)
    with torch.inference_mode():
        sigma = torch.cat([model.uncertainty(torch.stack([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]))
                           for start in range(0, len(dataset), batch_size)]).mean(dim=1).numpy().astype(np.float64)
    ranking = rank_exact(db, queries, 1)
    correct, has_match = top1_labels(ranking.top1, placeset.positives(radius))
    distance = ranking.top1_distance.astype(np.float64)
    scores = {"distance": distance, "uncertainty": sigma, "distance × uncertainty": distance * sigma}
    return {name: pr_summary(pr_curve(score, correct, has_match))["average_precision"] for name, score in scores.items()}


DECISION_HEADER = ["Model", "L", "score", "bound", "never-seen", "target P %", "val threshold", "val P %", "val bound %",
                   "val R %", "test P %", "test R %", "test bound %", "test never-seen acc %", "test"]
# (precision bound, count never-seen twins) of each calibration the demo compares
CALIBRATIONS = (("clopper-pearson", False), ("none", False), ("none", True))


def decision_transfers(val: tuple[PlaceSet, np.ndarray, np.ndarray], test: tuple[PlaceSet, np.ndarray, np.ndarray],
                       radius: float | None, *, lengths: Sequence[int] = (1, 10), target_precision: float = 0.99,
                       scores: Sequence[str] | None = None,
                       calibrations: Sequence[tuple[str, bool]] = CALIBRATIONS,
                       confidence: float = 0.95, consistency: Sequence[int] = ()) -> list[dict[str, Any]]:
    """One entry per sequence length × decision score × calibration (precision bound, and whether precision
    counts the val queries' never-seen twins, tscm.evaluation.unseen): the threshold calibrated on val (exact
    search) for `target_precision`, and the precision and recall it gives on test, with the share of test's
    never-seen twins it accepts (false closures at places the map lacks).

    Each entry: `sequence_length`, `score`, `bound`, `unseen`, `target_precision`, `reached`, and either
    `reason` (why val gives no threshold) or `threshold`, `val_precision`, `val_precision_bound`,
    `val_recall`, `val_accepted`, `test_precision`, `test_recall`, `test_precision_bound` (the same
    bound over test's accepted queries), `test_accepted`, `test_false_positives` (fractions and counts),
    `test_unseen_accepted` (a fraction of test's twins).
    Each k in `consistency` adds the same entries with `consistency` = k: on test a query is accepted
    only when it and the k − 1 queries before it along the route passed on a consistent progression
    (tscm.evaluation.consistency; the val threshold is the same).
    """
    val_set, val_db, val_queries = val
    test_set, test_db, test_queries = test
    entries = []
    for length in lengths:
        on_val = with_unseen(split_decisions(val_set, val_db, val_queries, sequence_length=length, radius=radius),
                             val_set, val_db, val_queries, sequence_length=length, radius=radius)
        on_test = with_unseen(split_decisions(test_set, test_db, test_queries, sequence_length=length, radius=radius),
                              test_set, test_db, test_queries, sequence_length=length, radius=radius)
        for score in scores or SCORE_NAMES:
            for bound, unseen in calibrations:
                curve = pr_curve(*on_val.curve_inputs(score, twins=unseen))
                entry: dict[str, Any] = {"sequence_length": int(length), "score": score, "bound": bound,
                                         "unseen": unseen, "target_precision": target_precision}
                try:
                    chosen = calibrate_bounded(curve, target_precision, bound=bound, confidence=confidence,
                                               where=f"{val_set.name}/{val_set.split}")
                except TscmError as error:
                    entries.append({**entry, "reached": False, "reason": str(error)})
                    continue
                test_scores = on_test.scores.scores[score]
                for frames in (None, *consistency):
                    accepted = test_scores <= chosen.threshold
                    if frames is not None:
                        order = on_test.query_order
                        kept = consistent_acceptance(accepted[order], on_test.route_position[order], frames)
                        accepted = np.zeros_like(accepted)
                        accepted[order] = kept
                    num_accepted = int(accepted.sum())
                    tp = int((accepted & on_test.correct).sum())
                    test_bound = float(precision_lower_bound([tp], [num_accepted], confidence)[0])
                    entries.append({**entry, **({"consistency": frames} if frames else {}), "reached": True,
                                    "threshold": chosen.threshold,
                                    "val_precision": chosen.precision, "val_precision_bound": chosen.precision_bound,
                                    "val_recall": chosen.recall, "val_accepted": chosen.accepted,
                                    "test_precision": tp / num_accepted if num_accepted else 1.0,
                                    "test_recall": tp / int(on_test.has_match.sum()),
                                    "test_precision_bound": test_bound, "test_accepted": num_accepted,
                                    "test_false_positives": num_accepted - tp,
                                    "test_unseen_accepted": unseen_accepted(on_test, score, chosen.threshold)})
    return entries


def decision_rows(name: str, entries: Sequence[dict[str, Any]]) -> list[list[str]]:
    """Rows of DECISION_HEADER for one model's decision_transfers entries."""
    rows = []
    for e in entries:
        length = str(e["sequence_length"]) + (f", {e['consistency']} consistent" if e.get("consistency") else "")
        start = [name, length, e["score"], e["bound"], "counted" if e.get("unseen") else "-",
                 f"{100 * e['target_precision']:g}"]
        if not e["reached"]:
            needed = ""
            if "needs at least" in e["reason"]:
                needed = ": needs ≥ " + e["reason"].split("needs at least ")[1].split(" ")[0] + " correct accepted"
            rows.append(start + ["-"] * 8 + ["not reachable on val" + needed])
            continue
        rows.append(start + [f"{e['threshold']:.4g}", f"{100 * e['val_precision']:.1f}",
                             f"{100 * e['val_precision_bound']:.1f}", f"{100 * e['val_recall']:.1f}",
                             f"{100 * e['test_precision']:.1f}", f"{100 * e['test_recall']:.1f}",
                             f"{100 * e['test_precision_bound']:.1f}",
                             "-" if e.get("test_unseen_accepted") is None else f"{100 * e['test_unseen_accepted']:.1f}",
                             f"{e['test_false_positives']} false of {e['test_accepted']} accepted"])
    return rows


def plot_decision_scores(path: str | Path, placeset: PlaceSet, db: np.ndarray, queries: np.ndarray,
                         radius: float | None, model_name: str, lengths: Sequence[int] = (1, 10)) -> Path:
    """One precision-recall panel per sequence length, one curve per decision score (a PNG, written atomically)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.2 * len(lengths), 4.6), dpi=120)
    for panel, length in enumerate(lengths, start=1):
        ax = fig.add_subplot(1, len(lengths), panel)
        decisions = split_decisions(placeset, db, queries, sequence_length=length, radius=radius)
        for colour, (score, values) in enumerate(decisions.scores.scores.items()):
            curve = pr_curve(values, decisions.correct, decisions.has_match)
            summary = pr_summary(curve)
            ax.step(100 * curve.recall, 100 * curve.precision, where="post", color=f"C{colour}", linewidth=1.8,
                    label=f"{score}: AP {summary['average_precision']:.1f}, "
                          f"R@100%P {summary['recall_at_100_precision']:.1f}")
        ax.set_xlim(0, 100)
        ax.set_ylim(0, 102)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower left", fontsize=8)
        ax.set_xlabel("recall (%) of queries that have a true match")
        ax.set_ylabel("precision (%) of accepted top-1 matches")
        ax.set_title(f"{model_name}, L = {length}", fontsize=10)
    fig.suptitle(f"Decision scores on {placeset.name}/{placeset.split}", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def decision_report(val: tuple[PlaceSet, np.ndarray, np.ndarray], test: tuple[PlaceSet, np.ndarray, np.ndarray],
                    radius: float | None, model_name: str, out_dir: str | Path | None = None, *,
                    target_precision: float = 0.99) -> dict[str, Any]:
    """Everything the demo shows about decision scores for one model: the table (header, rows), the
    numbers behind it, and (with `out_dir`) the precision-recall picture per score on test.

    Frame-ordered data gets L = 1 and 10; other data single frames only.
    """
    test_set, test_db, test_queries = test
    lengths = (1, 10) if test_set.unit == "frame" else (1,)
    entries = decision_transfers(val, test, radius, lengths=lengths, target_precision=target_precision)
    pictures = []
    if out_dir is not None:
        pictures.append(plot_decision_scores(Path(out_dir) / f"decision_scores_{model_name}.png", test_set, test_db,
                                             test_queries, radius, model_name, lengths))
    return {"header": DECISION_HEADER, "rows": decision_rows(model_name, entries), "values": entries,
            "pictures": pictures}

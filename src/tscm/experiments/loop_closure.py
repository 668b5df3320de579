"""The loop-closure parts of a run's report: sequence matching, a calibrated threshold's transfer from the
validation to the test split, and which score (distance, uncertainty, both) decides best."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from tscm.data.places import PlaceSet, radius_text
from tscm.errors import TscmError
from tscm.evaluation.recall import evaluate_descriptors

SEQUENCE_LENGTHS = (1, 5, 10, 20)


def sequence_table(placeset: PlaceSet, descriptors: Mapping[str, tuple[np.ndarray, np.ndarray]], radius: float,
                   lengths: Sequence[int] = SEQUENCE_LENGTHS) -> dict[str, Any]:
    """Recall@1/5 and precision-recall of each model when queries are scored over their last L frames."""
    from tscm.evaluation.protocol import evaluate_sequences

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
    from tscm.deploy.retrieval.calibration import calibrate, measure
    from tscm.deploy.retrieval.index import PlaceIndex

    val_set, val_db, val_queries = val
    test_set, test_db, test_queries = test
    val_index = PlaceIndex.build(val_db, backend="flat")
    try:
        entry = calibrate(val_index, val_db, val_queries, val_set, target_precision=target_precision,
                          sequence_length=sequence_length, radius=radius)
    except TscmError as error:
        return {"target_precision": target_precision, "sequence_length": sequence_length, "reached": False,
                "reason": str(error)}
    test_index = PlaceIndex.build(test_db, backend="flat")
    test_index.thresholds = [{**entry, "space": test_index.space()}]  # exact search: the same space on both splits
    measured = measure(test_index, test_db, test_queries, test_set, sequence_length=sequence_length, radius=radius)
    return {"target_precision": target_precision, "sequence_length": sequence_length, "reached": True,
            "threshold": entry["distance"], "val_precision": entry["precision"], "val_recall": entry["recall"],
            "test_precision": measured["precision"], "test_recall": measured["recall"],
            "test_accepted": measured["accepted"], "test_false_positives": measured["fp"]}


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
    import torch

    from tscm.data.images import ImageListDataset
    from tscm.evaluation.extract import InputSpec, describe_placeset
    from tscm.evaluation.precision_recall import pr_curve, pr_summary, top1_labels
    from tscm.evaluation.ranking import rank_exact
    from tscm.models.checkpoint import load_checkpoint

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

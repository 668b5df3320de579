"""Thresholds that make a match mean something: calibrated on a validation split, stored in the place index.

A query's score is the distance of its top-1 match (single frames) or its sequence score over the
last L frames (tscm.evaluation.sequence). `calibrate` chooses, on a validation split with known
ground truth, the largest score whose precision reaches the target (default 99 %), measured in
the index's own search space: the validation database is put into an empty copy of the index
(same back-end, PCA and trained quantisers), so the stored distance compares with what
`PlaceIndex.search` returns. `measure` says what a stored threshold gives on another split.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tscm.data.places import PlaceSet, default_radius
from tscm.errors import TscmError
from tscm.evaluation.precision_recall import apply_threshold, calibrate_threshold, pr_curve, top1_labels

DEFAULT_TARGET_PRECISION = 0.99


def index_scores(index, db: np.ndarray, queries: np.ndarray, placeset: PlaceSet,
                 sequence_length: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(top-1 score, top-1 database index) of every query, in the index's search space."""
    copy = index.empty_copy()
    copy.add(db, np.arange(len(db)))
    if sequence_length == 1:
        result = copy.search(queries, 1)
        return result.distances[:, 0].astype(np.float64), result.indices[:, 0]
    from tscm.evaluation.protocol import traversal_order
    from tscm.evaluation.ranking import squared_distances
    from tscm.evaluation.sequence import sequence_ranking

    db_order, query_order = traversal_order(placeset)
    distances = squared_distances(copy.to_search_space(queries)[query_order], copy.vectors()[db_order])
    ranking = sequence_ranking(distances, sequence_length, k=1)
    scores = np.empty(len(queries))
    top1 = np.empty(len(queries), dtype=np.int64)
    scores[query_order] = ranking.distances[:, 0]
    top1[query_order] = db_order[ranking.indices[:, 0]]
    return scores, top1


def _labels(placeset: PlaceSet, top1: np.ndarray, radius: float | None) -> tuple[np.ndarray, np.ndarray]:
    radius = default_radius(placeset.unit) if radius is None else placeset.check_radius(radius, "--radius")
    return top1_labels(top1, placeset.positives(radius))


def calibrate(index, db: np.ndarray, queries: np.ndarray, placeset: PlaceSet, *,
              target_precision: float = DEFAULT_TARGET_PRECISION, sequence_length: int = 1,
              radius: float | None = None) -> dict[str, Any]:
    """Choose and store in `index` the threshold reaching `target_precision` on `placeset` (a validation split).

    `db`/`queries` are the split's descriptors by the index's model. Raises TscmError when no
    threshold reaches the target (nothing is stored then).
    """
    if not 0 < target_precision <= 1:
        raise TscmError(f"target precision: expected a fraction in (0, 1], got {target_precision}")
    scores, top1 = index_scores(index, db, queries, placeset, sequence_length)
    correct, has_match = _labels(placeset, top1, radius)
    calibration = calibrate_threshold(pr_curve(scores, correct, has_match), target_precision)
    if not calibration.reached:
        raise TscmError(f"{placeset.name}/{placeset.split}: no threshold reaches precision {100 * target_precision:g} % "
                        f"(the most precise one reaches {100 * calibration.precision:.1f} %); lower the target")
    entry = {
        "distance": float(calibration.threshold),
        "target_precision": float(target_precision),
        "precision": float(calibration.precision),
        "recall": float(calibration.recall),
        "sequence_length": int(sequence_length),
        "calibrated_on": f"{placeset.name}/{placeset.split}",
        "radius": radius if radius is not None else default_radius(placeset.unit),
        "unit": placeset.unit,
        "num_queries": int(len(queries)),
    }
    index.set_threshold(entry)
    return index.threshold(sequence_length)


def measure(index, db: np.ndarray, queries: np.ndarray, placeset: PlaceSet, *, sequence_length: int = 1,
            radius: float | None = None) -> dict[str, Any]:
    """Precision and recall that the index's stored threshold reaches on `placeset` (e.g. the test split)."""
    entry = index.threshold(sequence_length)
    if entry is None:
        raise TscmError(f"the index has no threshold for sequences of {sequence_length} frame(s) in its search space; "
                        "calibrate it first (tscm index calibrate)")
    scores, top1 = index_scores(index, db, queries, placeset, sequence_length)
    correct, has_match = _labels(placeset, top1, radius)
    return {**apply_threshold(scores, correct, has_match, entry["distance"]), "threshold": entry["distance"],
            "measured_on": f"{placeset.name}/{placeset.split}"}


def calibrate_index_file(index_path: str, data: str, *, split: str = "val", target_precision: float = DEFAULT_TARGET_PRECISION,
                         sequence_length: int = 1, radius: float | None = None, measure_split: str | None = None,
                         checkpoint: str | None = None, batch_size: int = 32) -> dict[str, Any]:
    """Calibrate the index file's threshold on `data`/`split` with the model recorded in the index, and,
    with `measure_split`, measure the threshold there too; then save the index (atomically, once: a
    failure anywhere before keeps the previous file)."""
    from tscm.data.formats import load_placeset
    from tscm.deploy.recognizer import PlaceRecognizer
    from tscm.evaluation.extract import InputSpec, describe_placeset

    if split == "test":
        raise TscmError("--split test: calibrate on a validation split; the test split is for measuring (--measure test)")
    recognizer = PlaceRecognizer.load(index_path, checkpoint, batch_size=batch_size)
    spec = InputSpec.of(recognizer.meta)

    def described(which: str):
        placeset = load_placeset(data, split=which)
        return (placeset, *describe_placeset(recognizer.extractor, spec, placeset, batch_size=batch_size, progress=True))

    placeset, db, queries = described(split)
    measured_set = described(measure_split) if measure_split else None  # read before anything is written
    entry = calibrate(recognizer.index, db, queries, placeset, target_precision=target_precision,
                      sequence_length=sequence_length, radius=radius)
    report = {"threshold": entry}
    if measured_set is not None:
        other, db, queries = measured_set
        report["measured"] = measure(recognizer.index, db, queries, other, sequence_length=sequence_length, radius=radius)
    recognizer.index.save(index_path)  # once, after the measurement: a failure keeps the previous file
    return report

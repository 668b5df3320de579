"""Thresholds that make a match mean something: calibrated on a validation split, stored in the place index.

A query is decided by a decision score (tscm.evaluation.decision: the top-1 distance, the
distinctiveness `ratio`, or the per-query `normalised` z-score), over single frames or over the
sequence scores of the last L frames (tscm.evaluation.sequence). `calibrate` chooses, on a
validation split with known ground truth, the largest score whose precision reaches the target
(default 99 %) with confidence: by default the one-sided 95 % Clopper–Pearson lower bound on
precision must reach it (tscm.evaluation.calibration), and a split too small to show it is refused
with the number of queries needed. With `score="auto"` every score is calibrated and the one with
the highest recall on the calibration split is kept (the default `ratio` where it is within noise of
that: `pick_score`); the index records which score its threshold
is for. Scores are measured in the index's own search space: the validation database is put into
an empty copy of the index (same back-end, PCA and trained quantisers), so the stored threshold
compares with what the recognizer computes. `measure` says what a stored threshold gives on
another split.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tscm.data.formats import is_bag_path, is_placeholder_path, load_placeset
from tscm.data.formats.rosbag import BagSelection
from tscm.data.places import PlaceSet, default_radius
from tscm.deploy.retrieval.recognizer import PlaceRecognizer
from tscm.errors import TscmError
from tscm.evaluation.calibration import DEFAULT_BOUND, DEFAULT_CONFIDENCE, calibrate_bounded, precision_upper_bound
from tscm.evaluation.decision import (DEFAULT_SCORE, SCORE_NAMES, DecisionRule, SplitDecisions, check_score_name,
                                      split_decisions)
from tscm.evaluation.extract import InputSpec, describe_placeset
from tscm.evaluation.precision_recall import apply_threshold, pr_curve
from tscm.evaluation.unseen import unseen_accepted, with_unseen
from tscm.fileio import atomic_group, check_outputs, write_json_atomic

DEFAULT_TARGET_PRECISION = 0.99
AUTO_SCORE = "auto"


def index_decisions(index, db: np.ndarray, queries: np.ndarray, placeset: PlaceSet, *, sequence_length: int = 1,
                    radius: float | None = None, exclusion: float | None = None,
                    names=SCORE_NAMES, unseen: bool = False) -> SplitDecisions:
    """Decision scores of every query of `placeset`, in the index's search space (its database in an empty copy);
    `unseen` adds every query's never-seen twin (tscm.evaluation.unseen)."""
    copy = index.empty_copy()
    copy.add(db, np.arange(len(db)))
    vectors, searched = copy.vectors(), copy.to_search_space(queries)
    decisions = split_decisions(placeset, vectors, searched, sequence_length=sequence_length, radius=radius,
                                exclusion=exclusion, names=names)
    if not unseen:
        return decisions
    return with_unseen(decisions, placeset, vectors, searched, sequence_length=sequence_length,
                       radius=_radius(placeset, radius))


def index_scores(index, db: np.ndarray, queries: np.ndarray, placeset: PlaceSet,
                 sequence_length: int = 1, score: str = "distance") -> tuple[np.ndarray, np.ndarray]:
    """(decision score, top-1 database index) of every query, in the index's search space."""
    decisions = index_decisions(index, db, queries, placeset, sequence_length=sequence_length,
                                names=(check_score_name(score),))
    return decisions.scores.scores[score], decisions.scores.top1


def _radius(placeset: PlaceSet, radius: float | None) -> float | None:
    return default_radius(placeset.unit) if radius is None else placeset.check_radius(radius, "--radius")


def choose_threshold(index, db: np.ndarray, queries: np.ndarray, placeset: PlaceSet, *,
                     target_precision: float = DEFAULT_TARGET_PRECISION, sequence_length: int = 1,
                     radius: float | None = None, score: str = AUTO_SCORE, bound: str = DEFAULT_BOUND,
                     confidence: float = DEFAULT_CONFIDENCE, exclusion: float | None = None,
                     unseen: bool = True) -> dict[str, Any]:
    """The threshold entry `calibrate` stores, without storing it (TscmError when none reaches the target).
    `unseen`: precision counts every query's never-seen twin too (an accepted twin is a false closure), so the
    threshold must also refuse places the map has never seen."""
    if not 0 < target_precision <= 1:
        raise TscmError(f"target precision: expected a fraction in (0, 1], got {target_precision}")
    names = SCORE_NAMES if score == AUTO_SCORE else (check_score_name(score),)
    decisions = index_decisions(index, db, queries, placeset, sequence_length=sequence_length, radius=radius,
                                exclusion=exclusion, names=names, unseen=unseen)
    where = f"{placeset.name}/{placeset.split}"
    chosen, reasons, compared, curves = {}, {}, {}, {}
    for name in names:
        curve = curves[name] = pr_curve(*decisions.curve_inputs(name))
        try:
            chosen[name] = calibrate_bounded(curve, target_precision, bound=bound, confidence=confidence, where=where)
            compared[name] = chosen[name].recall
        except TscmError as error:
            reasons[name] = str(error)
            compared[name] = None
    if not chosen:
        shown = DEFAULT_SCORE if DEFAULT_SCORE in reasons else names[0]
        prefix = f"no decision score ({', '.join(names)}) reaches the target; {shown}: " if len(names) > 1 else ""
        raise TscmError(prefix + reasons[shown])
    best = pick_score({name: result.recall for name, result in chosen.items()}, int(np.sum(decisions.has_match)))
    result = chosen[best]
    return {
        "distance": _between_scores(curves[best].thresholds, result.threshold),  # the key of earlier releases
        "score": best,
        "exclusion": decisions.scores.exclusion,
        "bound": result.bound,
        "confidence": result.confidence,
        "target_precision": float(target_precision),
        "precision": result.precision,
        "precision_bound": result.precision_bound,
        "recall": result.recall,
        "accepted": result.accepted,
        "false_positives": result.false_positives,
        "scores_compared": compared,  # each score's calibration-split recall at the target (None: not reached)
        "unseen": bool(unseen),  # precision counted the queries' never-seen twins too
        "sequence_length": int(sequence_length),
        "calibrated_on": where,
        "radius": _radius(placeset, radius),
        "unit": placeset.unit,
        "num_queries": int(len(queries)),
    }


def pick_score(recalls: dict[str, float], queries_with_match: int) -> str:
    """The score `auto` keeps: the highest recall at the target on the calibration split, except that the
    default score stays when its recall is within noise of the best (less than two binomial standard
    errors below): a score that wins on val by a hair need not carry to other places (on Nordland
    `normalised` beat `ratio` on val by 1.4 points and lost 5 points of precision on test)."""
    best = max(recalls, key=lambda name: (recalls[name], name == DEFAULT_SCORE))
    if DEFAULT_SCORE not in recalls or best == DEFAULT_SCORE:
        return best
    top = recalls[best]
    noise = 2.0 * np.sqrt(max(top * (1.0 - top), 0.0) / max(queries_with_match, 1))
    return DEFAULT_SCORE if recalls[DEFAULT_SCORE] >= top - noise else best


def _between_scores(thresholds: np.ndarray, chosen: float) -> float:
    """Halfway from the chosen score to the next larger one of the split (the chosen one if it is the largest).

    The split's decisions are the same; a query whose score the deployed recognizer computes a
    rounding error apart (another summation order) is not flipped by a threshold that sits on its score.
    """
    above = thresholds[thresholds > chosen]
    return float(chosen if above.size == 0 else (chosen + float(above[0])) / 2)


def calibrate(index, db: np.ndarray, queries: np.ndarray, placeset: PlaceSet, **settings: Any) -> dict[str, Any]:
    """Choose (choose_threshold) and store in `index` the threshold for its settings' target on `placeset`
    (a validation split); returns the stored entry. Nothing is stored when no threshold reaches the target."""
    entry = choose_threshold(index, db, queries, placeset, **settings)
    index.set_threshold(entry)
    return index.threshold(entry["sequence_length"])


def measure_entry(index, entry: dict[str, Any], db: np.ndarray, queries: np.ndarray, placeset: PlaceSet, *,
                  radius: float | None = None) -> dict[str, Any]:
    """What a threshold entry gives on `placeset`: precision, recall, and accepted and false-positive
    queries as fractions of the split's queries, with the counts."""
    rule = DecisionRule.of(entry)
    decisions = index_decisions(index, db, queries, placeset, sequence_length=entry.get("sequence_length", 1),
                                radius=radius, exclusion=rule.exclusion, names=(rule.score,), unseen=True)
    counts = apply_threshold(decisions.scores.scores[rule.score], decisions.correct, decisions.has_match, rule.threshold)
    twins = decisions.unseen[rule.score]
    num = len(queries)
    confidence = entry.get("confidence") or DEFAULT_CONFIDENCE  # a plain-precision threshold has none of its own
    upper = float(precision_upper_bound(counts["tp"], counts["accepted"], confidence))
    return {"split": placeset.split, "precision": counts["precision"], "recall": counts["recall"],
            # the target missed here with this confidence: the threshold does not carry over to these places
            "precision_upper_bound": upper, "below_target": upper < entry["target_precision"], "confidence": confidence,
            # never-seen twins accepted: the share of queries at places the map lacks that would close a false loop
            "unseen_accepted": unseen_accepted(decisions, rule.score, rule.threshold),
            "unseen_count": int(np.sum(~np.isnan(twins))),
            "accepted": counts["accepted"] / num, "false_positives": counts["fp"] / num,
            "accepted_count": counts["accepted"], "false_positive_count": counts["fp"], "num_queries": num,
            "num_with_match": int(decisions.has_match.sum()), "threshold": rule.threshold, "score": rule.score,
            "measured_on": f"{placeset.name}/{placeset.split}",
            # the keys of earlier releases
            "tp": counts["tp"], "fp": counts["fp"]}


def measure(index, db: np.ndarray, queries: np.ndarray, placeset: PlaceSet, *, sequence_length: int = 1,
            radius: float | None = None) -> dict[str, Any]:
    """Precision and recall that the index's stored threshold reaches on `placeset` (e.g. the test split)."""
    entry = index.threshold(sequence_length)
    if entry is None:
        raise TscmError(f"the index has no threshold for sequences of {sequence_length} frame(s) in its search space; "
                        "calibrate it first (tscm index calibrate)")
    return measure_entry(index, entry, db, queries, placeset, radius=radius)


def calibration_report(entry: dict[str, Any], measured: dict[str, Any] | None) -> dict[str, Any]:
    """The machine-readable calibration (`tscm index calibrate --json`): fractions throughout."""
    report = {
        "threshold": entry["distance"], "score": entry["score"], "sequence_length": entry["sequence_length"],
        "target_precision": entry["target_precision"], "bound": entry["bound"], "confidence": entry["confidence"],
        "unseen": entry.get("unseen", False),
        "calibration": {"split": entry["calibrated_on"].rsplit("/", 1)[-1], "precision": entry["precision"],
                        "precision_bound": entry["precision_bound"], "recall": entry["recall"]},
        "scores_compared": entry.get("scores_compared"),
    }
    if measured is not None:
        report["measured"] = {key: measured[key] for key in ("split", "precision", "recall", "accepted", "false_positives",
                                                             "unseen_accepted", "precision_upper_bound", "below_target")}
    return report


def calibrate_index_file(index_path: str, data: str, *, split: str = "val", target_precision: float = DEFAULT_TARGET_PRECISION,
                         sequence_length: int = 1, radius: float | None = None, measure_split: str | None = None,
                         checkpoint: str | None = None, batch_size: int = 32, score: str = AUTO_SCORE,
                         bound: str = DEFAULT_BOUND, confidence: float = DEFAULT_CONFIDENCE,
                         json_path: str | None = None, bag: BagSelection | None = None,
                         unseen: bool = True) -> dict[str, Any]:
    """Calibrate the index file's threshold on `data`/`split` with the model recorded in the index and, with
    `measure_split`, measure it there; only then save the index (atomically, once) and, with
    `json_path`, the calibration_report. A failure anywhere writes nothing.

    `data` may be a ROS bag: its frames are the validation database and `bag.query_bag`'s frames the
    queries (ground truth by position, as `tscm evaluate` takes bags); `split` then only labels them."""
    if split == "test":
        raise TscmError("--split test: calibrate on a validation split; the test split is for measuring (--measure test)")
    if measure_split is not None and is_bag_path(data):
        raise TscmError(f"--measure {measure_split}: a bag pair has no other split to measure on; measure the "
                        "threshold on another pair of traversals with tscm loop-closure --index or tscm evaluate")
    query_bag = None if bag is None else bag.query_bag
    inputs = {"the --index input": [index_path], "the --data input": [data], "the --query-bag input": query_bag}
    check_outputs({"--json": json_path}, inputs)
    if score != AUTO_SCORE:
        check_score_name(score)
    recognizer = PlaceRecognizer.load(index_path, checkpoint, batch_size=batch_size)
    spec = InputSpec.of(recognizer.meta)

    def loaded(which: str) -> PlaceSet:
        placeset = load_placeset(data, split=which, bag=bag)
        if not placeset.query_paths:
            hint = " (a bag alone is a map: give the query traversal with --query-bag BAG)" if is_bag_path(data) else ""
            raise TscmError(f"{data}: no queries to calibrate on{hint}")
        return placeset

    calibration_set = loaded(split)
    measure_set = loaded(measure_split) if measure_split else None
    # Again with every file read known: the model (recorded in the index or given) and each split's images.
    images = [p for s in (calibration_set, measure_set) if s is not None for p in s.db_paths + s.query_paths
              if not is_placeholder_path(p)]
    check_outputs({"--json": json_path}, {**inputs, "the model's checkpoint": [recognizer.source],
                                          "an image of the data set": images})

    def described(placeset: PlaceSet):
        return (placeset, *describe_placeset(recognizer.extractor, spec, placeset, batch_size=batch_size, progress=True))

    placeset, db, queries = described(calibration_set)
    measured_set = described(measure_set) if measure_set is not None else None  # read before any work is kept
    entry = choose_threshold(recognizer.index, db, queries, placeset, target_precision=target_precision,
                             sequence_length=sequence_length, radius=radius, score=score, bound=bound,
                             confidence=confidence, unseen=unseen)
    entry = {**entry, "space": recognizer.index.space()}
    measured = None
    if measured_set is not None:
        other, db, queries = measured_set
        measured = measure_entry(recognizer.index, entry, db, queries, other, radius=radius)
    recognizer.index.set_threshold(entry)
    report = {"threshold": recognizer.index.threshold(sequence_length), "json": calibration_report(entry, measured)}
    if measured is not None:
        report["measured"] = measured
    with atomic_group():  # the index and its JSON together, or neither (each keeps its previous content)
        recognizer.index.save(index_path)
        if json_path is not None:
            write_json_atomic(json_path, report["json"])
    return report

"""`tscm evaluate` as one library call: descriptors of a data set (read, or computed by a checkpoint),
single-frame or sequence ranking, Recall@N and precision-recall, optional JSON and saved descriptors."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np

from tscm.config import check_device
from tscm.data.formats import is_placeholder_path
from tscm.data.places import PlaceSet
from tscm.errors import TscmError
from tscm.evaluation.extract import InputSpec, describe_placeset
from tscm.evaluation.ranking import Ranking, squared_distances
from tscm.evaluation.recall import (DEFAULT_NS, EvalResult, check_descriptors, check_ns, evaluate_descriptors,
                                    evaluate_ranking)
from tscm.evaluation.sequence import DEFAULT_SPEEDS, sequence_ranking
from tscm.fileio import atomic_path, write_json_atomic
from tscm.inference.runtimes import make_extractor
from tscm.models.checkpoint import load_checkpoint


def load_descriptor_file(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Arrays `db` and `queries` of an .npz file (never unpickled)."""
    path = Path(path)
    if path.suffix.lower() != ".npz":
        raise TscmError(f"{path}: expected an .npz file with arrays 'db' and 'queries' (np.savez(path, db=..., queries=...))")
    try:
        with np.load(path, allow_pickle=False) as contents:
            missing = [k for k in ("db", "queries") if k not in contents]
            if missing:
                raise TscmError(f"{path}: missing array(s) {missing}; found {sorted(contents.files)}")
            return contents["db"], contents["queries"]
    except FileNotFoundError:
        raise TscmError(f"{path}: descriptor file not found") from None
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as error:
        raise TscmError(f"{path}: not a readable .npz without pickled objects: {error}") from None


def save_descriptor_file(path: str | Path, db: np.ndarray, queries: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, db=db, queries=queries)


def traversal_order(placeset: PlaceSet) -> tuple[np.ndarray, np.ndarray]:
    """(database order, query order) along the route: by frame, else by time; TscmError when neither is known."""
    if placeset.unit == "frame":
        return np.argsort(placeset.db_xy[:, 0], kind="stable"), np.argsort(placeset.query_xy[:, 0], kind="stable")
    if placeset.db_time is not None and placeset.query_time is not None:
        return np.argsort(placeset.db_time, kind="stable"), np.argsort(placeset.query_time, kind="stable")
    raise TscmError(f"{placeset.name}/{placeset.split}: sequence matching needs ordered traversals: frame numbers "
                    "(a 'frame' column) or timestamps for the database and the queries")


def evaluate_sequences(placeset: PlaceSet, db, queries, length: int, radius: float | None = None,
                       ns: Sequence[int] = DEFAULT_NS, speeds: Sequence[float] | None = None) -> EvalResult:
    """Recall@N and precision-recall when each query is scored by its last `length` queries along the route."""
    ns = check_ns(ns)
    db, queries = check_descriptors(placeset, db, queries)
    db_order, query_order = traversal_order(placeset)
    distances = squared_distances(queries[query_order], db[db_order])
    ordered = sequence_ranking(distances, length, speeds or DEFAULT_SPEEDS, k=ns[-1])
    # Back to the PlaceSet's numbering: rows by query index, entries by database index.
    indices = np.empty_like(ordered.indices)
    scores = np.empty_like(ordered.distances)
    indices[query_order] = db_order[ordered.indices]
    scores[query_order] = ordered.distances
    result = evaluate_ranking(placeset, Ranking(scores, indices), radius, ns)
    result.extra["sequence_length"] = int(length)
    return result


def data_set_warnings(placeset: PlaceSet, db: np.ndarray, queries: np.ndarray) -> list[str]:
    """What makes a result meaningless although it computes: queries that are database images."""
    warnings = []
    paths = [p for p in placeset.query_paths if not is_placeholder_path(p)]
    if paths:
        database = {Path(p).resolve() for p in placeset.db_paths}
        shared = sum(Path(p).resolve() in database for p in paths)
        if shared == len(paths):
            warnings.append("every query image is also a database image (a folder linked to the other?): "
                            "recall is near 100 % by construction and says nothing about recognition")
        elif shared:
            warnings.append(f"{shared} query image(s) are also database images")
    if len(db) == len(queries) and np.array_equal(db, queries):
        warnings.append("the query descriptors equal the database descriptors row for row")
    return warnings


def evaluate_data_set(placeset: PlaceSet, *, descriptors: str | None = None, checkpoint: str | None = None,
                      radius: float | None = None, ns: Sequence[int] = DEFAULT_NS, sequence: int = 1,
                      save_descriptors: str | None = None, json_path: str | None = None, batch_size: int = 32,
                      device: str = "cpu", num_workers: int = 0) -> EvalResult:
    """Evaluate the descriptors of `placeset` given as an .npz file or computed with a checkpoint."""
    if (descriptors is None) == (checkpoint is None):
        raise TscmError("give exactly one of --descriptors FILE.npz and --checkpoint CKPT")
    if save_descriptors and not checkpoint:
        raise TscmError("--save-descriptors needs --checkpoint (with --descriptors they are already saved)")
    if not (isinstance(sequence, int) and sequence >= 1):
        raise TscmError(f"--sequence: expected a number of queries ≥ 1, got {sequence!r}")
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise TscmError(f"--batch-size: expected a number of images ≥ 1, got {batch_size!r}")
    if not (isinstance(num_workers, int) and num_workers >= 0):
        raise TscmError(f"--num-workers: expected a number of processes ≥ 0 (0: load in this process), got {num_workers!r}")
    ns = check_ns(ns)

    check_device(device)
    radius = placeset.check_radius(radius, "--radius") if radius is not None else None
    for target in (json_path, save_descriptors):
        if target and Path(target).is_dir():
            raise TscmError(f"{target}: is a folder; give a file name")
    if checkpoint:
        if Path(checkpoint).suffix.lower() == ".onnx":  # an exported model runs in ONNX Runtime, on the CPU
            if device != "cpu":
                raise TscmError(f"--device {device}: an exported .onnx model runs on the CPU (ONNX Runtime); drop --device")

            model, meta = make_extractor(checkpoint, "onnx")
        else:
            model, meta = load_checkpoint(checkpoint)
            model.to(device)
        db, queries = describe_placeset(model, InputSpec.of(meta), placeset, batch_size=batch_size, device=device,
                                        num_workers=num_workers, progress=True)
        if save_descriptors:
            save_descriptor_file(save_descriptors, db, queries)
    else:
        db, queries = load_descriptor_file(descriptors)
        try:
            db, queries = check_descriptors(placeset, db, queries)
        except TscmError as error:  # name the file the arrays came from
            raise TscmError(f"{descriptors}: {error}") from None
    if sequence > 1:
        result = evaluate_sequences(placeset, db, queries, sequence, radius, ns)
    else:
        result = evaluate_descriptors(placeset, db, queries, radius, ns)
    result.warnings += data_set_warnings(placeset, db, queries)
    if json_path:
        write_json_atomic(json_path, result.to_json())
    return result

"""`tscm evaluate` as one library call: descriptors of a data set (read, or computed by a checkpoint),
single-frame or sequence ranking, Recall@N and precision-recall, optional JSON and saved descriptors."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np

from tscm.config.option_checks import check_device
from tscm.data.formats import is_placeholder_path
from tscm.data.places import PlaceSet
from tscm.errors import TscmError
from tscm.evaluation.decision import pr_by_score, split_decisions
from tscm.evaluation.extract import InputSpec, describe_placeset
from tscm.evaluation.ranking import Ranking, squared_distances
from tscm.evaluation.recall import (DEFAULT_NS, EvalResult, check_descriptors, check_ns, evaluate_descriptors,
                                    evaluate_ranking)
from tscm.evaluation.sequence import DEFAULT_SPEEDS, sequence_ranking, traversal_order
from tscm.fileio import atomic_path, check_outputs, real_path, stat_regular, write_json_atomic
from tscm.inference.runtimes import make_extractor
from tscm.models.checkpoint import load_checkpoint


def load_descriptor_file(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Arrays `db` and `queries` of an .npz file (never unpickled)."""
    path = Path(path)
    if path.suffix.lower() != ".npz":
        raise TscmError(f"{path}: expected an .npz file with arrays 'db' and 'queries' (np.savez(path, db=..., queries=...))")
    if path.exists() or path.is_symlink():
        stat_regular(path, "descriptor file")  # a FIFO would block np.load, a link loop would raise
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
        database = {real_path(p) for p in placeset.db_paths}
        shared = sum(real_path(p) in database for p in paths)
        if shared == len(paths):
            warnings.append("every query image is also a database image (a folder linked to the other?): "
                            "recall is near 100 % by construction and says nothing about recognition")
        elif shared:
            warnings.append(f"{shared} query image(s) are also database images")
    if len(db) == len(queries) and np.array_equal(db, queries):
        warnings.append("the query descriptors equal the database descriptors row for row")
    return warnings


def input_files(placeset: PlaceSet, data: str | Path | None = None, **named: str | Path | None) -> dict[str, list[Path]]:
    """The files a command reads, by role, for `check_outputs`: the data set's images, its file `data`
    (a folder's own files are its images), and each named input (a checkpoint folder stands for its files)."""
    files = {"an image of the data set": [p for p in placeset.db_paths + placeset.query_paths if not is_placeholder_path(p)]}
    if data is not None and Path(data).is_file():
        files["the data-set file"] = [Path(data)]
    for name, value in named.items():
        if value is not None:
            files[f"the --{name.replace('_', '-')} input"] = [Path(value)]
    return files


def evaluate_data_set(placeset: PlaceSet, *, descriptors: str | None = None, checkpoint: str | None = None,
                      radius: float | None = None, ns: Sequence[int] = DEFAULT_NS, sequence: int = 1,
                      save_descriptors: str | None = None, json_path: str | None = None, batch_size: int = 32,
                      device: str = "cpu", num_workers: int = 0, data_path: str | Path | None = None) -> EvalResult:
    """Evaluate the descriptors of `placeset` given as an .npz file or computed with a checkpoint.

    Every output path is checked first (`check_outputs`): none may be an input (`data_path` is the
    data set's file, when it has one).
    """
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
    check_outputs({"--save-descriptors": save_descriptors, "--json": json_path},  # in the order they are written
                  input_files(placeset, data_path, descriptors=descriptors, checkpoint=checkpoint))
    if save_descriptors and Path(save_descriptors).suffix.lower() != ".npz":
        raise TscmError(f"--save-descriptors {save_descriptors}: expected a file name ending in .npz (the format "
                        "--descriptors reads)")
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

    # Today's `pr` block (top-1 distance) stays as it is; one block per decision score beside it.
    result.extra["pr_by_score"] = pr_by_score(split_decisions(placeset, db, queries, sequence_length=sequence,
                                                              radius=radius))
    if json_path:
        write_json_atomic(json_path, result.to_json())
    return result

"""The evaluation protocol: descriptor extraction and Recall@N by exact L2 search.

A query is correct at N when one of its N nearest database descriptors (exact L2; ties broken
by lower database index) lies within the radius. Queries without any database image within the
radius are dropped from the denominator and counted. Recall is in percent.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from tscm.data.places import PlaceSet
from tscm.errors import TscmError

DEFAULT_NS = (1, 5, 10, 20)
COMMUNITY_RADIUS_M = 25.0
PUBLISHED_RADIUS_M = 10.0  # the published TSCM code counts matches within sqrt(nonTrivPosDistSqThr)


@dataclass
class RecallCounts:
    """Recall@N in percent over the queries that have a positive, and how many queries that was."""

    recall: dict[int, float]
    num_evaluated: int
    num_without_positive: int


def protocol_label(radius_m: float) -> str:
    """`radius 25 m (community standard)`, `radius 10 m (published TSCM protocol)`, or the bare radius."""
    if radius_m == COMMUNITY_RADIUS_M:
        return "radius 25 m (community standard)"
    if radius_m == PUBLISHED_RADIUS_M:
        return "radius 10 m (published TSCM protocol)"
    return f"radius {radius_m:g} m (custom)"


@dataclass
class EvalResult:
    """Recall@N of one descriptor set on one PlaceSet, with everything needed to read it right."""

    recall: dict[int, float]
    radius_m: float
    num_db: int
    num_queries: int
    num_queries_evaluated: int
    num_queries_without_positive: int
    dataset: str = ""

    def to_json(self) -> dict:
        return {
            "recall": {str(n): value for n, value in sorted(self.recall.items())},
            "radius_m": self.radius_m,
            "protocol": protocol_label(self.radius_m),
            "num_db": self.num_db,
            "num_queries": self.num_queries,
            "num_queries_evaluated": self.num_queries_evaluated,
            "num_queries_without_positive": self.num_queries_without_positive,
            "dataset": self.dataset,
        }

    def format_table(self) -> str:
        ns = sorted(self.recall)
        title = f"{self.dataset}: " if self.dataset else ""
        lines = [
            f"{title}Recall@N, {protocol_label(self.radius_m)}",
            f"database {self.num_db} images; {self.num_queries} queries, {self.num_queries_evaluated} evaluated, "
            f"{self.num_queries_without_positive} dropped (no database image within {self.radius_m:g} m)",
            "  ".join(f"{'R@' + str(n):>7}" for n in ns),
            "  ".join(f"{self.recall[n]:7.2f}" for n in ns),
        ]
        return "\n".join(lines)


def _descriptor_matrix(array: np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 2 or array.dtype.kind not in "fiu":
        raise TscmError(f"{what}: expected a numeric N×D array, got {array.dtype} with shape {array.shape}")
    matrix = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(matrix).all():
        raise TscmError(f"{what}: contains NaN or infinite values")
    return matrix


def _check_ns(ns: Sequence[int]) -> tuple[int, ...]:
    values = tuple(sorted({int(n) for n in ns}))
    if not values or values[0] < 1:
        raise TscmError(f"Recall@N: expected positive N values, got {tuple(ns)}")
    return values


def recall_at_n(
    db: np.ndarray,
    queries: np.ndarray,
    positives: Sequence[np.ndarray],
    ns: Sequence[int] = DEFAULT_NS,
) -> RecallCounts:
    """Recall@N (percent) of `queries` against `db` by exact L2 search (faiss IndexFlatL2).

    `positives[j]` holds the database indices that count as correct for query j. An N larger
    than the database is answered with the whole database.
    """
    import faiss

    ns = _check_ns(ns)
    db = _descriptor_matrix(db, "database descriptors")
    queries = _descriptor_matrix(queries, "query descriptors")
    if len(db) == 0:
        raise TscmError("database descriptors: empty")
    if queries.shape[1] != db.shape[1]:
        raise TscmError(f"query descriptors have dimension {queries.shape[1]}, database descriptors {db.shape[1]}")
    if len(positives) != len(queries):
        raise TscmError(f"positives: {len(positives)} lists for {len(queries)} queries")
    evaluated = np.asarray([len(p) > 0 for p in positives], dtype=bool)
    num_evaluated = int(evaluated.sum())
    if num_evaluated == 0:
        raise TscmError("Recall@N is undefined: no query has a database image within the radius")

    k = min(ns[-1], len(db))
    index = faiss.IndexFlatL2(db.shape[1])
    index.add(db)
    distances, labels = index.search(queries[evaluated], k)
    # Make the tie rule explicit instead of relying on the search backend's order.
    order = np.lexsort((labels, distances), axis=-1)
    labels = np.take_along_axis(labels, order, axis=-1)

    first_hit = np.full(num_evaluated, np.iinfo(np.int64).max, dtype=np.int64)
    for row, query_index in enumerate(np.flatnonzero(evaluated)):
        hits = np.flatnonzero(np.isin(labels[row], positives[query_index]))
        if hits.size:
            first_hit[row] = hits[0]
    recall = {n: 100.0 * float(np.mean(first_hit < n)) for n in ns}
    return RecallCounts(recall, num_evaluated, len(queries) - num_evaluated)


def evaluate_descriptors(
    placeset: PlaceSet,
    db: np.ndarray,
    queries: np.ndarray,
    radius_m: float = COMMUNITY_RADIUS_M,
    ns: Sequence[int] = DEFAULT_NS,
) -> EvalResult:
    """Recall@N of descriptors given in the PlaceSet's database and query order."""
    db = np.asarray(db)
    queries = np.asarray(queries)
    for what, array, count in (("db", db, placeset.num_db), ("queries", queries, placeset.num_queries)):
        if array.ndim != 2 or array.shape[0] != count:
            raise TscmError(
                f"descriptors '{what}': expected shape ({count}, D) for {placeset.name}/{placeset.split}, got {array.shape}"
            )
    if db.shape[1] != queries.shape[1]:
        raise TscmError(f"descriptors: 'db' has dimension {db.shape[1]} but 'queries' has {queries.shape[1]}")
    counts = recall_at_n(db, queries, placeset.positives(radius_m), ns)
    return EvalResult(
        recall=counts.recall,
        radius_m=float(radius_m),
        num_db=placeset.num_db,
        num_queries=placeset.num_queries,
        num_queries_evaluated=counts.num_evaluated,
        num_queries_without_positive=counts.num_without_positive,
        dataset=f"{placeset.name}/{placeset.split}",
    )


def extract_descriptors(
    model,
    paths: Sequence[str | Path],
    image_size: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 32,
    device: str = "cpu",
    num_workers: int = 0,
    progress: bool = True,
) -> np.ndarray:
    """float32 N×D descriptors of the images at `paths` (in order) from a model mapping B×3×H×W to B×D.

    The model must already be on `device`. It runs in eval mode without gradients; its previous
    train/eval mode is restored afterwards.
    """
    import torch
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from tscm.data.transforms import ImageListDataset

    if batch_size < 1:
        raise TscmError(f"batch_size: expected a positive number, got {batch_size}")
    dataset = ImageListDataset(paths, image_size, mean, std)
    if len(dataset) == 0:
        return np.zeros((0, int(getattr(model, "descriptor_dim", 0))), dtype=np.float32)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    was_training = model.training
    model.eval()
    chunks: list[np.ndarray] = []
    try:
        with torch.no_grad():
            for images in tqdm(loader, desc="descriptors", unit="batch", disable=None if progress else True):
                output = model(images.to(device))
                if not isinstance(output, torch.Tensor) or output.ndim != 2 or output.shape[0] != images.shape[0]:
                    shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
                    raise TscmError(f"model output: expected a {images.shape[0]}×D tensor of descriptors, got {shape}")
                chunks.append(output.detach().float().cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(chunks, axis=0).astype(np.float32, copy=False)

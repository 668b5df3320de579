"""Training tuples (query, positive, negatives), their batches, and the flat image numbering.

Training images of a PlaceSet are numbered in one flat range: database image j is key j, query i
is key `num_db + i`. A batch of tuples is laid out [q, p, n1..nK] per tuple (K fixed, padding
where a tuple has fewer negatives); only the real images are loaded and run through the network,
and `positions` says where each one sits in the padded layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from tscm.data.places import PlaceSet
from tscm.errors import TscmError


def flat_image_paths(placeset: PlaceSet) -> list:
    """Database paths then query paths: the order of the flat image keys."""
    return list(placeset.db_paths) + list(placeset.query_paths)


@dataclass
class TupleArrays:
    """T mined tuples as arrays: query index, positive database index, negatives T×K (-1 = none)."""

    query: np.ndarray
    positive: np.ndarray
    negatives: np.ndarray

    def __post_init__(self) -> None:
        self.query = np.asarray(self.query, dtype=np.int64).reshape(-1)
        self.positive = np.asarray(self.positive, dtype=np.int64).reshape(-1)
        self.negatives = np.asarray(self.negatives, dtype=np.int64)
        count = len(self.query)
        if self.negatives.ndim != 2 or self.negatives.shape[0] != count or len(self.positive) != count:
            raise TscmError(
                f"tuples: expected query (T,), positive (T,), negatives (T×K) with T={count}, got "
                f"{self.positive.shape} and {self.negatives.shape}"
            )

    def __len__(self) -> int:
        return len(self.query)

    @property
    def num_negatives(self) -> int:
        return self.negatives.shape[1]

    @classmethod
    def from_mined(cls, tuples: Sequence[Any], num_negatives: int) -> TupleArrays:
        """Pack the miner's tuples (objects with query/positive/negatives, or 3-tuples) padded to K."""
        count = len(tuples)
        query = np.empty(count, dtype=np.int64)
        positive = np.empty(count, dtype=np.int64)
        negatives = np.full((count, num_negatives), -1, dtype=np.int64)
        for row, item in enumerate(tuples):
            if hasattr(item, "negatives"):
                q, p, negs = item.query, item.positive, item.negatives
            else:
                q, p, negs = item
            negs = np.asarray(negs, dtype=np.int64).reshape(-1)
            if len(negs) == 0 or len(negs) > num_negatives:
                raise TscmError(f"tuple of query {q}: {len(negs)} negatives, expected 1..{num_negatives}")
            query[row], positive[row] = int(q), int(p)
            negatives[row, : len(negs)] = negs
        return cls(query, positive, negatives)

    def subset(self, rows: np.ndarray) -> TupleArrays:
        return TupleArrays(self.query[rows], self.positive[rows], self.negatives[rows])

    def to_tensors(self) -> dict[str, Tensor]:
        return {
            "query": torch.from_numpy(self.query.copy()),
            "positive": torch.from_numpy(self.positive.copy()),
            "negatives": torch.from_numpy(self.negatives.copy()),
        }

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor]) -> TupleArrays:
        return cls(tensors["query"].numpy(), tensors["positive"].numpy(), tensors["negatives"].numpy())


@dataclass
class TupleLayout:
    """Where a batch's real images sit: flat image keys, their slot in the padded [q,p,n..] layout."""

    keys: Tensor  # N real images, flat image keys
    positions: Tensor  # N, row in the padded B·(K+2) layout
    negative_mask: Tensor  # B×K bool
    query_indices: Tensor  # B, the tuples' query indices (for reports)

    @property
    def batch_size(self) -> int:
        return self.negative_mask.shape[0]

    @property
    def num_negatives(self) -> int:
        return self.negative_mask.shape[1]

    @property
    def padded_rows(self) -> int:
        return self.batch_size * (self.num_negatives + 2)


def tuple_layout(tuples: TupleArrays, num_db: int) -> TupleLayout:
    """Flat keys and padded positions of the real images of `tuples`."""
    count, k = tuples.negatives.shape
    per_tuple = k + 2
    slots = np.empty((count, per_tuple), dtype=np.int64)
    slots[:, 0] = num_db + tuples.query
    slots[:, 1] = tuples.positive
    slots[:, 2:] = tuples.negatives
    real = np.ones((count, per_tuple), dtype=bool)
    real[:, 2:] = tuples.negatives >= 0
    positions = np.flatnonzero(real.reshape(-1))
    return TupleLayout(
        keys=torch.from_numpy(slots.reshape(-1)[positions].copy()),
        positions=torch.from_numpy(positions),
        negative_mask=torch.from_numpy(real[:, 2:].copy()),
        query_indices=torch.from_numpy(tuples.query.copy()),
    )


def scatter_to_layout(descriptors: Tensor, layout: TupleLayout) -> Tensor:
    """Place N real-image descriptors into the padded B·(K+2)×D layout (zeros where padded)."""
    padded = descriptors.new_zeros((layout.padded_rows, descriptors.shape[1]))
    return padded.index_copy(0, layout.positions.to(descriptors.device), descriptors)


@dataclass
class TupleBatch:
    """One batch: its real images, as the loader gives them (model inputs N×3×H×W, or the trainer's
    `ImageViews` to be augmented and turned into each network's inputs), and their layout."""

    images: Any
    layout: TupleLayout


class TupleBatchDataset(Dataset):
    """Batches of tuples in a fixed order; item b is batch b, images loaded by `load_image(key)`.

    `batches` lists each batch's rows of `tuples`; a DataLoader with batch_size=None iterates it.
    A `load_image` with a `batch(keys)` method loads a batch's images in one call (the same tensor
    as stacking one call per key).
    """

    def __init__(
        self,
        tuples: TupleArrays,
        batches: Sequence[np.ndarray],
        num_db: int,
        load_image: Callable[[int], Tensor],
    ) -> None:
        self.tuples = tuples
        self.batches = list(batches)
        self.num_db = num_db
        self.load_image = load_image

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> TupleBatch:
        layout = tuple_layout(self.tuples.subset(self.batches[index]), self.num_db)
        keys = [int(key) for key in layout.keys]
        load_many = getattr(self.load_image, "batch", None)
        images = load_many(keys) if load_many is not None else torch.stack([self.load_image(key) for key in keys])
        return TupleBatch(images, layout)

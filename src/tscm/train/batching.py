"""Which tuples a step trains on: the epoch's query order, its mining chunks, global batches and each
process's share of a batch under DistributedDataParallel."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BatchPlan:
    """The seeded order of one run's training queries and how tuples are cut into batches."""

    num_queries: int
    seed: int
    max_queries_per_epoch: int  # 0: every train query each epoch
    refresh_every_queries: int  # 0: one mining chunk per epoch
    batch_size: int  # tuples per global batch, over all processes
    world_size: int = 1
    rank: int = 0

    def epoch_queries(self, epoch: int) -> np.ndarray:
        """The epoch's train queries in a seeded order (a random subset when max_queries_per_epoch is set)."""
        order = np.random.default_rng([self.seed, epoch]).permutation(self.num_queries)
        return order[: self.max_queries_per_epoch] if self.max_queries_per_epoch else order

    def chunks(self, queries: np.ndarray) -> list[np.ndarray]:
        """The epoch's queries cut into mining chunks (the cache is refreshed before each one)."""
        size = self.refresh_every_queries
        if size <= 0 or size >= len(queries):
            return [queries]
        return [queries[i : i + size] for i in range(0, len(queries), size)]

    def global_batches(self, num_tuples: int) -> list[np.ndarray]:
        """Rows of each global batch; under DDP, batches too small to give every process a tuple are dropped."""
        size = self.batch_size
        batches = [np.arange(i, min(i + size, num_tuples)) for i in range(0, num_tuples, size)]
        return [b for b in batches if len(b) >= self.world_size]

    def local_rows(self, batch_rows: np.ndarray) -> np.ndarray:
        """This process's share of one global batch."""
        return np.array_split(batch_rows, self.world_size)[self.rank]

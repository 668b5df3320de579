"""Descriptor caches of a training run and the mining that reads them.

The teacher cache holds the frozen teacher's descriptors of every train image (computed once: it
serves as distillation targets and, as published, drives a student's mining). The mining cache
holds the model's own descriptors, refreshed every `mining.refresh_every_epochs` epochs and before
every chunk of `mining.refresh_every_queries` queries. Descriptors are computed in shards over the
processes and gathered.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from tscm.config import TrainConfig
from tscm.data.mining import DescriptorCache, Miner, MiningStats
from tscm.data.places import PlaceSet
from tscm.data.tuples import TupleArrays, flat_image_paths
from tscm.evaluation.extract import InputSpec, extract_descriptors
from tscm.train.runtime import Runtime


class DescriptorCaches:
    """The run's teacher and mining caches, the miner, and the tuples they give."""

    def __init__(self, config: TrainConfig, runtime: Runtime, train_set: PlaceSet, model: nn.Module, spec: InputSpec,
                 teacher: nn.Module | None, teacher_spec: InputSpec | None, teacher_from_cache: bool) -> None:
        self.config = config
        self.runtime = runtime
        self.device = runtime.device
        self.train_set = train_set
        self.model = model
        self.spec = spec
        self.teacher = teacher
        self.teacher_spec = teacher_spec
        self.train_paths = flat_image_paths(train_set)
        self.miner = Miner(train_set, config.mining, seed=config.train.seed)
        self.mining_by_teacher = config.kind == "student" and config.mining.descriptors == "teacher"
        self.teacher_from_cache = teacher_from_cache
        self.teacher_cache: torch.Tensor | None = None  # teacher descriptors of every train image
        self.mining_cache: np.ndarray | None = None  # the model's flat train descriptors, when they drive mining
        self.cache_epoch = -1
        self.stats = MiningStats()  # summed over the epoch's mining calls

    def describe(self, model: nn.Module, spec: InputSpec, paths: list, batch_size: int, progress: bool) -> np.ndarray:
        """Descriptors of `paths`, computed in shards over the processes and gathered in order."""
        share = self.runtime.shard(len(paths))
        local = extract_descriptors(model, paths[share.start : share.stop], spec, batch_size=batch_size,
                                    device=str(self.device), num_workers=self.config.data.num_workers,
                                    progress=progress)
        if len(local) == 0:
            local = np.zeros((0, int(getattr(model, "descriptor_dim", 1))), dtype=np.float32)
        return self.runtime.gather_rows(local, len(paths))

    def ensure_teacher_cache(self, progress: bool) -> None:
        """Compute the teacher's descriptors of every train image, once, when they are used."""
        if self.teacher_cache is None and (self.teacher_from_cache or self.mining_by_teacher):
            assert self.teacher is not None and self.teacher_spec is not None
            flat = self.describe(self.teacher, self.teacher_spec, self.train_paths, self.config.mining.batch_size, progress)
            self.teacher_cache = torch.from_numpy(flat).to(self.device)

    def cache_reused_later(self) -> bool:
        """Whether the mining cache outlives an epoch (so a resumable checkpoint must hold it)."""
        return not self.mining_by_teacher and self.config.mining.refresh_every_epochs > 1

    def refresh(self, epoch: int, chunk: int, progress: bool) -> None:
        """Bring the cache that drives mining up to date for this epoch and chunk."""
        if self.mining_by_teacher:
            self.ensure_teacher_cache(progress)
            return
        due = (self.mining_cache is None or chunk > 0
               or epoch - self.cache_epoch >= self.config.mining.refresh_every_epochs)
        if due:
            self.mining_cache = self.describe(self.model, self.spec, self.train_paths, self.config.mining.batch_size,
                                              progress)
            self.cache_epoch = epoch

    def mine(self, queries: np.ndarray) -> TupleArrays:
        """Tuples for `queries` from the cache that drives mining (refresh it first)."""
        flat = self.teacher_cache.cpu().numpy() if self.mining_by_teacher else self.mining_cache
        assert flat is not None, "refresh() before mine()"
        num_db = self.train_set.num_db
        cache = DescriptorCache(flat[:num_db], flat[num_db:], dtype=self.config.mining.cache_dtype)
        mined = self.miner.mine(cache, queries)
        last = self.miner.last_stats
        for name in ("requested", "tuples", "no_positive", "no_violating_negative"):
            setattr(self.stats, name, getattr(self.stats, name) + getattr(last, name))
        return TupleArrays.from_mined(mined, self.config.mining.num_negatives)

    def take_stats(self) -> dict[str, int]:
        """The epoch's mining counts (for epochs.csv), reset for the next epoch."""
        stats, self.stats = self.stats, MiningStats()
        return {"mined_queries": stats.requested, "mined_tuples": stats.tuples,
                "skipped_no_positive": stats.no_positive, "skipped_no_hard_negative": stats.no_violating_negative}

    def state_dict(self) -> dict[str, Any]:
        return {
            "miner": self.miner.state_dict(),
            "cache_epoch": self.cache_epoch,
            "mining_cache": self.mining_cache if (self.cache_reused_later() and self.mining_cache is not None) else None,
            "mining_stats": [self.stats.requested, self.stats.tuples, self.stats.no_positive,
                             self.stats.no_violating_negative],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.miner.load_state_dict(state["miner"])
        self.cache_epoch = int(state["cache_epoch"])
        if state["mining_cache"] is not None:
            self.mining_cache = np.asarray(state["mining_cache"])
        counts = state.get("mining_stats") or [0, 0, 0, 0]
        self.stats = MiningStats(*[int(c) for c in counts])

    def forget_mining_cache(self) -> None:
        """Drop the model's cache (it will be recomputed before the next mining)."""
        if not self.mining_by_teacher:
            self.mining_cache, self.cache_epoch = None, -1

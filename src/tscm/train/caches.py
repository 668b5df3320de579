"""Descriptor caches of a training run and the mining that reads them.

The teacher cache holds the frozen teacher's descriptors of every train image (computed once: it
serves as distillation targets and, as published, drives a student's mining). The mining cache
holds the model's own descriptors, refreshed every `mining.refresh_every_epochs` epochs and before
every chunk of `mining.refresh_every_queries` queries; when it serves one chunk only, just the database
and that chunk's queries are described (mining reads no other rows). Descriptors are computed in shards
over the processes and gathered. Images come from the run's in-memory cache of decoded pixels
(`DecodedImages`), so a small training set is read from disk once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tscm.config import TrainConfig
from tscm.data.images import DecodedImages
from tscm.data.mining import DescriptorCache, Miner, MiningStats
from tscm.data.places import PlaceSet
from tscm.data.tuples import TupleArrays, flat_image_paths
from tscm.evaluation.extract import InputSpec, describe_decoded, extract_descriptors
from tscm.train import teacher_store
from tscm.train.runtime import Runtime


class TrainingCaches:
    """The run's teacher and mining caches, the miner, and the tuples they give."""

    def __init__(self, config: TrainConfig, runtime: Runtime, train_set: PlaceSet, model: nn.Module, spec: InputSpec,
                 teacher: nn.Module | None, teacher_spec: InputSpec | None, teacher_from_cache: bool,
                 teacher_fingerprint: str | None = None, store: Path | None = None) -> None:
        self.config = config
        self.runtime = runtime
        self.device = runtime.device
        self.train_set = train_set
        self.model = model
        self.spec = spec
        self.teacher = teacher
        self.teacher_spec = teacher_spec
        self.train_paths = flat_image_paths(train_set)
        # With loader worker processes the run keeps the file-based pipeline (workers would each hold a copy).
        self.in_memory = config.data.num_workers == 0
        self.train_images = self.decoded_images(self.train_paths)
        self.miner = Miner(train_set, config.mining, seed=config.train.seed)
        self.mining_by_teacher = config.kind == "student" and config.mining.descriptors == "teacher"
        self.teacher_from_cache = teacher_from_cache
        self.teacher_fingerprint = teacher_fingerprint
        self.store = store  # where the teacher's descriptors are kept for other runs (teacher_store); None: nowhere
        self.teacher_cache: torch.Tensor | None = None  # teacher descriptors of every train image
        self.mining_cache: np.ndarray | None = None  # the model's flat train descriptors, when they drive mining
        self.cache_epoch = -1
        self.stats = MiningStats()  # summed over the epoch's mining calls

    def decoded_images(self, paths: list) -> DecodedImages:
        """A decoded-image cache for `paths` (one that keeps nothing when loader workers are used)."""
        return DecodedImages(paths) if self.in_memory else DecodedImages(paths, max_bytes=0)

    def describe(self, model: nn.Module, spec: InputSpec, images: DecodedImages, batch_size: int, progress: bool,
                 rows: np.ndarray | None = None) -> np.ndarray:
        """Descriptors of `images` (or of its `rows`, in that order), computed in shards over the processes
        and gathered in order."""
        rows = np.arange(len(images)) if rows is None else np.asarray(rows, dtype=np.int64)
        share = self.runtime.shard(len(rows))
        local_rows = rows[share.start : share.stop]
        if self.in_memory:
            local = describe_decoded(model, images, local_rows, spec, batch_size, self.device, progress)
        else:
            local = extract_descriptors(model, [images.paths[int(r)] for r in local_rows], spec, batch_size=batch_size,
                                        device=str(self.device), num_workers=self.config.data.num_workers,
                                        progress=progress)
        if len(local) == 0:
            local = np.zeros((0, int(getattr(model, "descriptor_dim", 1))), dtype=np.float32)
        return self.runtime.gather_rows(local, len(rows))

    def ensure_teacher_cache(self, progress: bool) -> None:
        """Compute the teacher's descriptors of every train image, once, when they are used."""
        if self.teacher_cache is None and (self.teacher_from_cache or self.mining_by_teacher):
            self.teacher_cache = torch.from_numpy(self._teacher_descriptors(progress)).to(self.device)

    def _teacher_descriptors(self, progress: bool) -> np.ndarray:
        """The teacher's flat train descriptors: from the store when an earlier run from the same teacher, images
        and threads left them there (teacher_store), else described (and stored for the next run)."""
        assert self.teacher is not None and self.teacher_spec is not None
        batch_size = self.config.mining.batch_size
        key = None
        if self.store is not None and self.teacher_fingerprint:
            compute = f"{self.device}, {torch.get_num_threads()} threads, {self.runtime.world_size} processes"
            key = teacher_store.descriptor_key(self.teacher_fingerprint, self.teacher_spec, self.train_paths,
                                               batch_size, compute)
            stored = teacher_store.load_descriptors(self.store, key, len(self.train_paths))
            if stored is not None:
                return stored
        flat = self.describe(self.teacher, self.teacher_spec, self.train_images, batch_size, progress)
        if key is not None and self.runtime.is_main:
            teacher_store.save_descriptors(self.store, key, flat)
        return flat

    def cache_reused_later(self) -> bool:
        """Whether the mining cache outlives an epoch (so a resumable checkpoint must hold it)."""
        return not self.mining_by_teacher and self.config.mining.refresh_every_epochs > 1

    def refresh(self, epoch: int, chunk: int, progress: bool, queries: np.ndarray | None = None) -> None:
        """Bring the cache that drives mining up to date for this epoch and chunk.

        `queries`: the chunk's train queries. When the refreshed cache serves only them (it is refreshed
        again before any other mining), the other queries are not described; their rows stay zero.
        """
        if self.mining_by_teacher:
            self.ensure_teacher_cache(progress)
            return
        due = (self.mining_cache is None or chunk > 0
               or epoch - self.cache_epoch >= self.config.mining.refresh_every_epochs)
        if due:
            rows = None
            if queries is not None and not self.cache_reused_later():
                num_db = self.train_set.num_db
                rows = np.concatenate([np.arange(num_db), num_db + np.unique(np.asarray(queries, dtype=np.int64))])
            flat = self.describe(self.model, self.spec, self.train_images, self.config.mining.batch_size, progress, rows)
            if rows is not None:
                full = np.zeros((len(self.train_paths), flat.shape[1]), dtype=flat.dtype)
                full[rows] = flat
                flat = full
            self.mining_cache = flat
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


"""`--quick`, defined once: the overrides that make `tscm demo`, `tscm ablation` and `tscm bench` a mechanics
check in seconds (tests, smoke runs), applied through the one override path (`tscm.config.fields`). Their
numbers mean nothing."""

from __future__ import annotations

from typing import Any, Mapping

# `tscm demo` / `tscm ablation` (experiments.common.RunOptions): one seed unless --seeds is given.
QUICK_RUN: Mapping[str, Any] = {"quick": True, "seeds": (0,)}

# Every training run of `tscm demo` / `tscm ablation` (TrainConfig): one epoch of 8 queries, tiny mining.
QUICK_TRAINING: Mapping[str, Any] = {
    "train.epochs": 1, "train.max_queries_per_epoch": 8, "train.batch_size": 4, "train.patience": 0,
    "mining.num_negatives": 2, "mining.num_random": 16, "mining.batch_size": 64, "eval.batch_size": 64,
    "run.tensorboard": False,
}

# `tscm bench` (bench.settings.BenchSettings): tiny sizes, student-tiny, the tiny city.
QUICK_BENCH: Mapping[str, Any] = {
    "quick": True, "sizes": [1000], "queries": 40, "single": 10, "dim": 512, "models": ["student-tiny"],
    "runtimes": ["torch", "torch-int8"], "batch_sizes": [1, 4], "cycles": 1, "calls": 2, "city": "tiny",
    "mining_db": 600, "mining_queries": 120, "mining_loop_queries": 30, "training_steps": 2,
    "streaming_preset": "student-tiny", "streaming_sizes": [300], "streaming_frames": 12, "streaming_runtimes": ["torch"],
}

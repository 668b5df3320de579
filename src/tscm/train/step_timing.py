"""Cost of a distillation step next to a student-only step, measured inside one run.

On the same mined batches (images already decoded, so the views' transforms and compute are timed) it times, in turn:
the student with the triplet loss alone; the configured distillation loss with the teacher's
descriptors looked up in the cache; and the same loss with the teacher run on every batch (the
published pipeline). The model, optimiser, miner and RNG are restored afterwards, so the run
that follows is the one that would have run without the timing.
"""

from __future__ import annotations

import copy
import statistics
import time
from typing import Any

import torch

from tscm.data.tuples import TupleBatchDataset
from tscm.errors import TscmError
from tscm.fileio import write_json_atomic
from tscm.losses import build_preset
from tscm.train.runtime import rng_state, set_rng_state

MODES = (
    ("student_only", "student only (triplet loss)"),
    ("teacher_from_cache", "distillation, teacher from cache"),
    ("teacher_per_batch", "distillation, teacher per batch"),
)


def time_distillation_steps(trainer, steps: int) -> dict[str, Any]:
    """Median milliseconds per step for each mode; printed and written to step_timing.json."""
    if trainer.teacher is None:
        raise TscmError("distill.time_steps: timing distillation needs a teacher (--teacher CKPT)")
    config = trainer.config
    saved_model = copy.deepcopy(trainer.raw_model.state_dict())
    saved_optimizer = copy.deepcopy(trainer.optimizer.state_dict())
    saved_scaler = copy.deepcopy(trainer.scaler.state_dict())
    saved_caches = copy.deepcopy(trainer.caches.state_dict())
    saved_teacher_cache = trainer.caches.teacher_cache
    saved_rng = rng_state()
    options = {"triplet": {"margin": config.loss.margin}}
    student_only = build_preset("none", options=options).to(trainer.device)
    distills = bool(getattr(trainer.loss_fn, "needs_teacher", False))
    distillation = trainer.loss_fn if distills else build_preset("tscm", options=options).to(trainer.device)
    try:
        trainer.caches.refresh(0, 0, progress=False)
        tuples = trainer.caches.mine(trainer.plan.epoch_queries(0))
        batches = trainer.plan.global_batches(len(tuples))[: steps + 1]
        if len(batches) < 2:
            raise TscmError(f"distill.time_steps: only {len(batches)} batches could be mined; need at least 2")
        local = [trainer.plan.local_rows(rows) for rows in batches]
        dataset = TupleBatchDataset(tuples, local, trainer.job.train_set.num_db, trainer.views)
        loaded = [dataset[i] for i in range(len(dataset))]
        settings = {
            "student_only": (student_only, True),
            "teacher_from_cache": (distillation, True),
            "teacher_per_batch": (distillation, False),
        }
        seconds: dict[str, list[float]] = {mode: [] for mode, _ in MODES}
        trainer.raw_model.train()
        for index, batch in enumerate(loaded):
            for mode, _ in MODES:  # interleaved, so load from other work on the CPU hits every mode alike
                loss_fn, from_cache = settings[mode]
                start = time.perf_counter()
                total, _ = trainer.compute_loss(batch, loss_fn=loss_fn, teacher_from_cache=from_cache, step=index)
                trainer.optimisation_step(total, len(local[index]), len(batches[index]))
                if trainer.device.type == "cuda":
                    torch.cuda.synchronize(trainer.device)
                if index > 0:  # the first batch warms up every mode
                    seconds[mode].append(time.perf_counter() - start)
    finally:
        trainer.raw_model.load_state_dict(saved_model)
        trainer.optimizer.load_state_dict(saved_optimizer)
        trainer.scaler.load_state_dict(saved_scaler)
        trainer.caches.load_state_dict(saved_caches)
        trainer.caches.forget_mining_cache()
        trainer.caches.teacher_cache = saved_teacher_cache
        set_rng_state(saved_rng)

    medians = {mode: 1000 * statistics.median(values) for mode, values in seconds.items()}
    base = medians["student_only"]
    report = {
        "steps_timed": len(seconds["student_only"]),
        "tuples_per_step": config.train.batch_size,
        "images_per_tuple": config.mining.num_negatives + 2,
        "device": str(trainer.device),
        "threads": torch.get_num_threads(),
        "distillation_loss": config.loss.preset if distills else "tscm",
        "median_ms": medians,
        "ratio_to_student_only": {mode: value / base for mode, value in medians.items()},
    }
    if trainer.rt.is_main:
        lines = [
            f"step timing: median of {report['steps_timed']} steps, {config.train.batch_size} tuples per step, "
            f"{trainer.device}, {report['threads']} threads"
        ]
        for mode, label in MODES:
            lines.append(f"  {label:<36} {medians[mode]:9.1f} ms  {medians[mode] / base:5.2f}×")
        print("\n".join(lines), flush=True)
        write_json_atomic(trainer.job.run_dir / "step_timing.json", report)
    return report

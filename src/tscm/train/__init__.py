"""Training: teacher with hard-negative mining, student by distillation, resumable and DDP-ready.

Python API: `train_teacher(config)`, `distill(config, teacher_checkpoint)`, `resume_run(run_dir)`,
each returning a `RunResult(run_dir, best_checkpoint, last_checkpoint, metrics)`; configs come
from `tscm.config.load_config(preset, overrides, kind)`.
"""

from __future__ import annotations

from tscm.train.trainer import RunResult
from tscm.train.runs import distill, resume_run, train_teacher

__all__ = ["RunResult", "distill", "resume_run", "train_teacher"]

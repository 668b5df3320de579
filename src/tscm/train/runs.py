"""The Python API of training: `train_teacher(config)` and `distill(config, teacher_checkpoint)`.

Both set up the runtime (device, DDP under torchrun, threads, seeds), the data, the model, the
loss and the run folder, then hand over to the shared loop. A student run with loss preset
"none" is the no-distillation baseline; with `mining.descriptors=student` it needs no teacher.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from torch import nn

from tscm.config import TrainConfig
from tscm.errors import TscmError
from tscm.train.trainer import InputSpec, RunResult, Trainer, TrainingJob
from tscm.train.run_folder import (
    create_run_dir,
    current_command_line,
    load_training_data,
    reopen_run_dir,
)
from tscm.train.runtime import seed_everything, start_runtime, stop_runtime, torch_threads


def spec_of(model_config) -> InputSpec:
    return InputSpec(
        image_size=tuple(int(v) for v in model_config.image_size),
        mean=tuple(float(v) for v in model_config.mean),
        std=tuple(float(v) for v in model_config.std),
    )


def build_loss_for(config: TrainConfig) -> nn.Module:
    from tscm.losses import DISTILLATION_PRESETS, build_preset

    name = config.loss.preset
    if name not in DISTILLATION_PRESETS:
        raise TscmError(f"config: loss.preset must be one of {', '.join(DISTILLATION_PRESETS)}, got {name!r}")
    options = {"triplet": {"margin": config.loss.margin}}
    loss = build_preset(name, options=options)
    if config.kind == "teacher" and loss.needs_teacher:
        raise TscmError(f"config: loss.preset={name} distils from a teacher; a teacher run needs loss.preset=none")
    return loss


def _run(config: TrainConfig, teacher_checkpoint: str | Path | None, resume: str | Path | None, command_line: str | None) -> RunResult:
    from tscm.models.checkpoint import load_checkpoint, model_fingerprint, save_checkpoint
    from tscm.models import build_model

    command_line = command_line or current_command_line()
    runtime = start_runtime(config.train.device, config.train.amp)
    try:
        with torch_threads(config.train.threads):
            loss = build_loss_for(config)
            if not teacher_checkpoint and (loss.needs_teacher or (config.kind == "student" and config.mining.descriptors == "teacher")):
                raise TscmError(
                    f"loss.preset={config.loss.preset}, mining.descriptors={config.mining.descriptors}: a teacher is "
                    "needed (distill --teacher CKPT), or use loss.preset=none with mining.descriptors=student"
                )
            train_set, val_set = load_training_data(config, runtime)

            teacher, teacher_spec, teacher_fp = None, None, None
            if teacher_checkpoint:
                teacher, meta = load_checkpoint(teacher_checkpoint)
                if meta.get("role") != "teacher":
                    raise TscmError(f"--teacher {teacher_checkpoint}: holds a {meta.get('role')} model, expected a teacher")
                teacher_spec = spec_of(teacher.config)
                teacher_fp = meta["fingerprint"]

            seed_everything(config.train.seed)
            model = build_model(
                config.model.preset,
                pretrained=config.model.pretrained,
                backbone_weights=config.model.backbone_weights or None,
            )
            expected_role = "teacher" if config.kind == "teacher" else "student"
            if getattr(model, "role", expected_role) != expected_role:
                raise TscmError(
                    f"config: model.preset={config.model.preset} builds a {model.role}, but this is a {config.kind} run"
                )

            if resume is not None:
                run_dir = reopen_run_dir(resume, config, runtime, command_line)
            else:
                run_dir = create_run_dir(config, runtime, command_line)

            def save_model(path: Path, trained: nn.Module, extra: dict) -> None:
                save_checkpoint(path, trained, trained.config, extra=extra, teacher_fingerprint=teacher_fp)

            job = TrainingJob(
                config=config,
                runtime=runtime,
                run_dir=run_dir,
                model=model,
                spec=spec_of(model.config),
                save_model=save_model,
                loss=loss,
                train_set=train_set,
                val_set=val_set,
                teacher=teacher,
                teacher_spec=teacher_spec,
                resume_from=Path(resume) if resume is not None else None,
            )
            trainer = Trainer(job)
            if config.kind == "student" and config.distill.time_steps and resume is None:
                from tscm.train.step_timing import time_distillation_steps

                time_distillation_steps(trainer, config.distill.time_steps)
            result = trainer.run()
            result.metrics["model_fingerprint"] = model_fingerprint(model)
            return result
    finally:
        stop_runtime(runtime)


def train_teacher(
    config: TrainConfig, *, resume: str | Path | None = None, command_line: str | None = None
) -> RunResult:
    """Train a teacher (triplet loss, hard-negative mining on its own descriptors)."""
    if config.kind != "teacher":
        raise TscmError(f"train_teacher: config describes a {config.kind} run")
    return _run(config, None, resume, command_line)


def distill(
    config: TrainConfig,
    teacher_checkpoint: str | Path | None = None,
    *,
    resume: str | Path | None = None,
    command_line: str | None = None,
) -> RunResult:
    """Train a student from a frozen teacher checkpoint (or, with loss preset none and
    mining.descriptors=student, without one: the no-distillation baseline)."""
    if config.kind != "student":
        raise TscmError(f"distill: config describes a {config.kind} run")
    teacher_checkpoint = teacher_checkpoint or config.distill.teacher_checkpoint or None
    if teacher_checkpoint:
        config.distill.teacher_checkpoint = str(teacher_checkpoint)
    return _run(config, teacher_checkpoint, resume, command_line)


# Settings a resumed run may change; anything else would make it a different run.
RESUME_OVERRIDABLE = ("train.epochs", "train.patience", "train.progress", "train.threads", "train.device",
                      "train.stop_after_steps", "train.checkpoint_every_steps", "data.num_workers", "run.tensorboard")


def resume_run(
    run_dir: str | Path, overrides: Iterable[str] = (), *, command_line: str | None = None
) -> RunResult:
    """Continue the run in `run_dir` from its last checkpoint, with its saved config."""
    from tscm.train.run_folder import load_run_config

    overrides = list(overrides)
    for item in overrides:
        key = item.partition("=")[0].strip()
        if key not in RESUME_OVERRIDABLE:
            raise TscmError(
                f"--resume: {key} cannot change when resuming a run; allowed: {', '.join(RESUME_OVERRIDABLE)}"
            )
    config = load_run_config(run_dir, overrides)
    if config.kind == "teacher":
        return train_teacher(config, resume=run_dir, command_line=command_line)
    return distill(config, config.distill.teacher_checkpoint or None, resume=run_dir, command_line=command_line)

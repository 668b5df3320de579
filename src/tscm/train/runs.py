"""The Python API of training: `train_teacher(config)`, `distill(config, teacher_checkpoint)`, `resume_run(run_dir)`.

Each sets up the runtime (device, DDP under torchrun, threads, seeds), the data, the model, the
loss and the run folder (locked while it trains), then hands over to the Trainer. A student run
with loss preset "none" is the no-distillation baseline; with `mining.descriptors=student` it
needs no teacher.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from torch import nn

from tscm.config import TrainConfig
from tscm.data.formats import load_placeset
from tscm.data.places import PlaceSet
from tscm.data.synthetic import is_synthetic_spec, resolve_path_or_synthetic
from tscm.errors import TscmError
from tscm.evaluation.extract import InputSpec
from tscm.losses import DISTILLATION_PRESETS, build_preset, parse_weights
from tscm.models import build_model
from tscm.models.checkpoint import load_checkpoint, model_fingerprint, save_checkpoint
from tscm.threads import limit_threads
from tscm.train.checkpoints import RunCheckpoints
from tscm.train.run_folder import current_command_line, load_run_config, open_run_dir
from tscm.train.runtime import Runtime, seed_everything, start_runtime, stop_runtime
from tscm.train.step_timing import time_distillation_steps
from tscm.train.trainer import TRAINING_STATE_FORMAT, RunResult, Trainer, TrainingJob

# Settings a resumed run may change; anything else would make it a different run.
RESUME_OVERRIDABLE = ("train.epochs", "train.patience", "train.progress", "train.threads", "train.device",
                      "train.stop_after_steps", "train.checkpoint_every_steps", "data.num_workers", "run.tensorboard")


def build_loss_for(config: TrainConfig) -> nn.Module:
    name = config.loss.preset
    if name not in DISTILLATION_PRESETS:
        raise TscmError(f"config: loss.preset must be one of {', '.join(DISTILLATION_PRESETS)}, got {name!r}")
    weights = parse_weights(config.loss.weights)
    options: dict = {"triplet": {"margin": config.loss.margin}}
    if "listwise" in {**DISTILLATION_PRESETS[name].weights, **weights}:
        options["listwise"] = {"temperature": config.loss.temperature}
    loss = build_preset(name, weights=weights, options=options, reduction=config.loss.reduction)
    if config.kind == "teacher" and loss.needs_teacher:
        raise TscmError(f"config: loss.preset={name} distils from a teacher; a teacher run needs loss.preset=none")
    return loss


def pretrained_backbones(config: TrainConfig) -> bool | set[str]:
    """What `build_model(pretrained=...)` gets: False, or the backbones that start from ImageNet weights."""
    if not config.model.pretrained or config.model.backbone_weights:
        return False  # a local weights file replaces the download
    return {"cnn", "vit"} if config.model.pretrained_vit else {"cnn"}


def load_training_data(config: TrainConfig, runtime: Runtime) -> tuple[PlaceSet, PlaceSet]:
    """The train and validation PlaceSets; `synthetic:<preset>` generates the built-in city once."""
    data = config.data
    if not data.path:
        raise TscmError("config: data.path is empty; give a data set (--set data.path=DIR) or synthetic:demo")
    # One process generates the city; the others wait and then find it cached.
    if runtime.is_main or not is_synthetic_spec(data.path):
        root = resolve_path_or_synthetic(data.path, seed=data.synthetic_seed, progress=config.train.progress)
    runtime.barrier()
    if not runtime.is_main and is_synthetic_spec(data.path):
        root = resolve_path_or_synthetic(data.path, seed=data.synthetic_seed, progress=False)
    name = data.name or None
    if data.val_split == "test":
        raise TscmError("config: data.val_split is the test split; model selection must use a validation split")
    train_set = load_placeset(root, data.train_split, name=name)
    val_set = load_placeset(root, data.val_split, name=name)
    if val_set.split == "test":
        raise TscmError("config: data.val_split is the test split; model selection must use a validation split")
    return train_set, val_set


def _load_teacher(teacher_checkpoint: str | Path) -> tuple[nn.Module, InputSpec, str]:
    teacher, meta = load_checkpoint(teacher_checkpoint, expected_role="teacher")
    return teacher, InputSpec.of(teacher.config), meta["fingerprint"]


def _run(config: TrainConfig, teacher_checkpoint: str | Path | None, resume: str | Path | None,
         command_line: str | None) -> RunResult:
    command_line = command_line or current_command_line()
    runtime = start_runtime(config.train.device, config.train.amp)
    try:
        with limit_threads(torch=config.train.threads):
            loss = build_loss_for(config)
            if not teacher_checkpoint and (loss.needs_teacher or (config.kind == "student" and config.mining.descriptors == "teacher")):
                raise TscmError(
                    f"loss.preset={config.loss.preset}, mining.descriptors={config.mining.descriptors}: a teacher is "
                    "needed (distill --teacher CKPT), or use loss.preset=none with mining.descriptors=student"
                )
            train_set, val_set = load_training_data(config, runtime)
            teacher, teacher_spec, teacher_fp = (None, None, None)
            if teacher_checkpoint:
                teacher, teacher_spec, teacher_fp = _load_teacher(teacher_checkpoint)

            seed_everything(config.train.seed)
            model = build_model(config.model.preset, pretrained=pretrained_backbones(config),
                                backbone_weights=config.model.backbone_weights or None)
            if getattr(model, "role", config.kind) != config.kind:
                raise TscmError(
                    f"config: model.preset={config.model.preset} builds a {model.role}, but this is a {config.kind} run"
                )

            def save_model(path: Path, trained: nn.Module, extra: dict) -> None:
                save_checkpoint(path, trained, trained.config, extra=extra, teacher_fingerprint=teacher_fp)

            def check_resumable(run_dir: Path) -> None:
                if resume is not None:  # every rank: they read the same files, and all stop on a refusal
                    check_resume(run_dir, config, teacher_fp)

            with open_run_dir(config, runtime, command_line, resume, check_resumable) as run_dir:
                job = TrainingJob(config=config, runtime=runtime, run_dir=run_dir, model=model,
                                  spec=InputSpec.of(model.config), save_model=save_model, loss=loss, train_set=train_set,
                                  val_set=val_set, teacher=teacher, teacher_spec=teacher_spec,
                                  teacher_fingerprint=teacher_fp, resume_from=Path(resume) if resume is not None else None)
                trainer = Trainer(job)
                if config.kind == "student" and config.distill.time_steps and resume is None:
                    time_distillation_steps(trainer, config.distill.time_steps)
                result = trainer.run()
            result.metrics["model_fingerprint"] = model_fingerprint(model)
            return result
    finally:
        stop_runtime(runtime)


def check_resume(run_dir: Path, config: TrainConfig, teacher_fingerprint: str | None) -> None:
    """Refuse a resume that cannot continue (no intact checkpoint, another kind, a replaced teacher)
    before the run folder is touched; the trainer repeats these checks when it restores."""
    folder, _, state = RunCheckpoints(run_dir, save_model=None).load_last(lambda text: None)
    if state.get("format") != TRAINING_STATE_FORMAT:
        raise TscmError(f"{folder}: training state format {state.get('format')!r}; this tscm resumes format "
                        f"{TRAINING_STATE_FORMAT} (start the run again)")
    if state.get("kind") != config.kind:
        raise TscmError(f"--resume {run_dir}: a {state.get('kind')} run cannot be resumed as a {config.kind} run")
    if state.get("teacher_fingerprint") != teacher_fingerprint:
        raise TscmError(
            f"--resume {run_dir}: the teacher {config.distill.teacher_checkpoint or '(none)'} has fingerprint "
            f"{teacher_fingerprint}, but this run was trained from {state.get('teacher_fingerprint')}; "
            "the teacher folder was replaced: restore it, or start a new run"
        )


def train_teacher(config: TrainConfig, *, resume: str | Path | None = None, command_line: str | None = None) -> RunResult:
    """Train a teacher (triplet loss, hard-negative mining on its own descriptors)."""
    if config.kind != "teacher":
        raise TscmError(f"train_teacher: config describes a {config.kind} run")
    return _run(config, None, resume, command_line)


def distill(config: TrainConfig, teacher_checkpoint: str | Path | None = None, *, resume: str | Path | None = None,
            command_line: str | None = None) -> RunResult:
    """Train a student from a frozen teacher checkpoint (or, with loss preset none and
    mining.descriptors=student, without one: the no-distillation baseline)."""
    if config.kind != "student":
        raise TscmError(f"distill: config describes a {config.kind} run")
    teacher_checkpoint = teacher_checkpoint or config.distill.teacher_checkpoint or None
    if teacher_checkpoint:
        config.distill.teacher_checkpoint = str(teacher_checkpoint)
    return _run(config, teacher_checkpoint, resume, command_line)


def resume_run(run_dir: str | Path, overrides: Iterable[str] = (), *, kind: str | None = None,
               command_line: str | None = None) -> RunResult:
    """Continue the run in `run_dir` from its last checkpoint, with its saved config.

    `kind` ("teacher" or "student") refuses a run of the other kind (e.g. `distill --resume` on a teacher run).
    """
    overrides = list(overrides)
    for item in overrides:
        key = item.partition("=")[0].strip()
        if key not in RESUME_OVERRIDABLE:
            raise TscmError(
                f"--resume: {key} cannot change when resuming a run; allowed: {', '.join(RESUME_OVERRIDABLE)}"
            )
    config = load_run_config(run_dir, overrides)
    if kind is not None and config.kind != kind:
        command = "train-teacher" if config.kind == "teacher" else "distill"
        raise TscmError(f"--resume {run_dir}: this is a {config.kind} run; resume it with `tscm {command} --resume`")
    if config.kind == "teacher":
        return train_teacher(config, resume=run_dir, command_line=command_line)
    return distill(config, config.distill.teacher_checkpoint or None, resume=run_dir, command_line=command_line)

"""The training loop shared by teacher training and distillation.

One epoch: the train queries in a seeded order (`BatchPlan`), cut into mining chunks; before a
chunk the descriptor cache is refreshed when due and tuples are mined (`TrainingCaches`); the
tuples are cut into global batches, each process training on its share. After the epoch: LR
schedule step, validation Recall@1 (val split only), early stopping, best checkpoint. A resumable
`last` checkpoint (`RunCheckpoints`) is written every `train.checkpoint_every_steps` steps and at
each epoch end; it holds the model, optimiser, scheduler, gradient scaler, RNG, position (epoch,
chunk, batch), the chunk's tuples, the miner's state, the epoch's running loss and, when it will
be reused, the mining cache, so a resumed run retraces the uninterrupted one exactly.

On the CPU the networks run in channels-last layout and Adam is the fused kernel (both faster for
the small presets); train and validation images are decoded once and kept in memory
(`tscm.data.images.DecodedImages`), so a step reads its images from memory.

A step's images are the batch's tuple images and, for distillation, `distill.teach_images` more train
images in turn (so every train image is taught); each gets one augmented view (`augment.*`) that the
student and the teacher both read (`tscm.train.views`). Views, teaching images and the distillation
weight schedule are functions of the run's seed and the step number, so a resumed run draws them again.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from tscm.config import TrainConfig
from tscm.data.augment import Augmenter
from tscm.data.places import PlaceSet
from tscm.data.tuples import TupleArrays, TupleBatch, TupleBatchDataset, flat_image_paths, scatter_to_layout
from tscm.errors import TscmError
from tscm.evaluation.extract import InputSpec
from tscm.evaluation.recall import evaluate_descriptors
from tscm.fileio import write_json_atomic
from tscm.losses import TupleDescriptors
from tscm.train.batching import BatchPlan
from tscm.train.caches import TrainingCaches
from tscm.train.checkpoints import RunCheckpoints
from tscm.train.metrics_log import MetricsLog, NullLog
from tscm.train.optim import batchnorm_mode, build_optimizer, freeze_trunk_stages, match_state_layout, to_fast_layout
from tscm.train.runtime import Runtime, rng_state, set_rng_state
from tscm.train.schedule import distillation_factor, teaching_keys
from tscm.train.training_state import RunProgress
from tscm.train.views import ImageViews, TrainViews

TRAINING_STATE_FORMAT = 2


@dataclass
class RunResult:
    """A finished (or stopped) run: its folder, checkpoints and summary metrics."""

    run_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainingJob:
    """Everything the loop needs, prepared by `train_teacher` or `distill`."""

    config: TrainConfig
    runtime: Runtime
    run_dir: Path
    model: nn.Module
    spec: InputSpec
    save_model: Callable[[Path, nn.Module, dict], None]  # writes a native checkpoint folder
    loss: nn.Module
    train_set: PlaceSet
    val_set: PlaceSet
    teacher: nn.Module | None = None
    teacher_spec: InputSpec | None = None
    teacher_fingerprint: str | None = None
    resume_from: Path | None = None


class NonFiniteLoss(TscmError):
    """The loss became NaN or infinite; the message names step, batch and loss terms."""


class Interrupted(TscmError):
    """Ctrl-C: the state was saved; the message says how to resume."""

    exit_code = 130


class Trainer:
    """Runs one TrainingJob: mining, steps, validation, checkpoints; `run()` returns a RunResult."""

    def __init__(self, job: TrainingJob) -> None:
        self.job = job
        self.config = config = job.config
        self.rt = job.runtime
        self.device = self.rt.device
        self.raw_model = to_fast_layout(job.model.to(self.device), self.device)
        freeze_trunk_stages(self.raw_model, config.train.frozen_trunk_stages)
        self.model: nn.Module = self.raw_model
        if self.rt.distributed:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(self.raw_model, device_ids=device_ids, find_unused_parameters=True)
        self.teacher = to_fast_layout(job.teacher.to(self.device), self.device).eval() if job.teacher is not None else None
        if self.teacher is not None:
            for parameter in self.teacher.parameters():
                parameter.requires_grad_(False)
        self.loss_fn = job.loss.to(self.device)
        self.k = config.mining.num_negatives
        needs_teacher = bool(getattr(self.loss_fn, "needs_teacher", False))
        mining_by_teacher = config.kind == "student" and config.mining.descriptors == "teacher"
        if (needs_teacher or mining_by_teacher) and self.teacher is None:
            raise TscmError(
                f"loss.preset={config.loss.preset}, mining.descriptors={config.mining.descriptors}: a teacher is needed "
                "(distill --teacher CKPT), or use loss.preset=none with mining.descriptors=student"
            )
        a = config.augment
        self.augmenter = Augmenter(a.strength, a.photometric, a.geometric)
        outputs = config.distill.teacher_outputs
        self.teacher_from_cache = needs_teacher and (outputs == "cache" or (outputs == "auto" and not self.augmenter.active))
        self.teach_images = config.distill.teach_images if getattr(self.loss_fn, "reads_extra_images", False) else 0
        self.caches = TrainingCaches(config, self.rt, job.train_set, self.raw_model, job.spec, self.teacher,
                                       job.teacher_spec, self.teacher_from_cache, job.teacher_fingerprint,
                                       Path(config.run.output_dir) if config.distill.reuse_teacher_descriptors else None)
        self.plan = BatchPlan(job.train_set.num_queries, config.train.seed, config.train.max_queries_per_epoch,
                              config.mining.refresh_every_queries, config.train.batch_size, self.rt.world_size,
                              self.rt.rank)
        self.checkpoints = RunCheckpoints(job.run_dir, job.save_model)
        self.val_images = self.caches.decoded_images(flat_image_paths(job.val_set))

        self.optimizer = self._build_optimizer()
        self.scheduler = torch.optim.lr_scheduler.ExponentialLR(self.optimizer, gamma=config.train.lr_gamma)
        use_scaler = self.rt.amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler)

        self.run_progress = RunProgress()
        self.tuples: TupleArrays | None = None
        self.step_seconds: list[float] = []
        self._resumed_rng: dict | None = None
        self.views = TrainViews(self.caches.train_images)
        self.planned_steps = config.train.epochs * math.ceil(
            len(self.plan.epoch_queries(0)) / max(1, config.train.batch_size))

    # ----- building blocks -----------------------------------------------------------------

    def _build_optimizer(self) -> torch.optim.Optimizer:
        return build_optimizer(self.raw_model, self.config.train)

    @property
    def progress(self) -> bool:
        return self.config.train.progress and self.rt.is_main

    def teach_keys(self, step: int) -> np.ndarray:
        """The step's teaching images (flat train keys): see `teaching_keys`."""
        return teaching_keys(self.config.train.seed, len(self.caches.train_images), self.teach_images, step)

    def teacher_factor(self, step: int) -> float:
        d = self.config.distill
        return distillation_factor(step, d.warmup_steps, d.final_weight, self.planned_steps)

    def step_generator(self, step: int) -> torch.Generator:
        """The augmentation draws of `step`: seeded by run seed and step, so a resumed run draws the same views."""
        return torch.Generator().manual_seed(int(np.random.default_rng([self.config.train.seed, 0xA06, step])
                                                 .integers(2**62)))

    # ----- one step ---------------------------------------------------------------------------

    def compute_loss(self, batch: TupleBatch, *, loss_fn: nn.Module | None = None,
                     teacher_from_cache: bool | None = None, step: int | None = None,
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of one batch at `step` (default: the run's next step), with the run's loss and teacher
        source unless given: the tuples' images and the step's teaching images, one augmented view each,
        read by the student and (per batch) by the teacher."""
        loss_fn = self.loss_fn if loss_fn is None else loss_fn
        from_cache = self.teacher_from_cache if teacher_from_cache is None else teacher_from_cache
        step = self.run_progress.global_step if step is None else step
        needs_teacher = bool(getattr(loss_fn, "needs_teacher", False))
        layout = batch.layout
        mask = layout.negative_mask.to(self.device)
        keys = layout.keys
        views: ImageViews = batch.images
        teach = self.teach_keys(step) if getattr(loss_fn, "reads_extra_images", False) else np.zeros(0, dtype=np.int64)
        if len(teach):
            views = views.then(self.views.batch(teach))
            keys = torch.cat([keys, torch.from_numpy(teach)])
        if self.augmenter.active:
            views = views.augmented(self.augmenter, self.step_generator(step))
        images = views.inputs(self.job.spec).to(self.device, non_blocking=True)
        wants_uncertainty = bool(getattr(loss_fn, "needs_uncertainty", False))
        with self.rt.autocast():
            output = self.model(images, with_uncertainty=True) if wants_uncertainty else self.model(images)
        descriptors, uncertainty = output if wants_uncertainty else (output, None)
        descriptors = descriptors.float()
        tuple_count = len(layout.keys)
        student = TupleDescriptors.from_flat(scatter_to_layout(descriptors[:tuple_count], layout), self.k, mask)
        if len(teach):
            student.extra = descriptors[tuple_count:]
        if uncertainty is not None:
            student.uncertainty = TupleDescriptors.from_flat(
                scatter_to_layout(uncertainty[:tuple_count].float(), layout), self.k, mask)
        teacher = None
        if needs_teacher:
            if from_cache:
                self.caches.ensure_teacher_cache(self.progress)
                assert self.caches.teacher_cache is not None
                teacher_desc = self.caches.teacher_cache.index_select(0, keys.to(self.device))
            else:
                assert self.teacher is not None and self.job.teacher_spec is not None
                teacher_images = images
                if self.job.teacher_spec != self.job.spec:
                    teacher_images = views.inputs(self.job.teacher_spec).to(self.device, non_blocking=True)
                with torch.no_grad(), self.rt.autocast():
                    teacher_desc = self.teacher(teacher_images).float()
            teacher = TupleDescriptors.from_flat(scatter_to_layout(teacher_desc[:tuple_count], layout), self.k, mask)
            if len(teach):
                teacher.extra = teacher_desc[tuple_count:]
        if hasattr(loss_fn, "teacher_scale"):
            loss_fn.teacher_scale = self.teacher_factor(step)
        return loss_fn(student, teacher)

    def optimisation_step(self, total: torch.Tensor, local_count: int, global_count: int) -> None:
        # DDP averages gradients over processes; weighting each process's mean by its share of the
        # global batch makes the update equal to the mean over the whole global batch.
        scaled = total * (local_count * self.rt.world_size / global_count)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(scaled).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()

    # ----- state --------------------------------------------------------------------------------

    def model_extra(self) -> dict[str, Any]:
        """What a saved checkpoint records about the training that made it."""
        val_set = self.job.val_set
        return {
            "training": self.config.to_dict(),
            "epoch": self.run_progress.position["epoch"],
            "step": self.run_progress.global_step,
            "validation": self.run_progress.last_val,
            "eval_protocol": {"radius": self.config.eval.radius(val_set.unit), "unit": val_set.unit,
                              "split": self.config.data.val_split},
        }

    def training_state(self) -> dict[str, Any]:
        return {
            "format": TRAINING_STATE_FORMAT,
            "kind": self.config.kind,
            "teacher_fingerprint": self.job.teacher_fingerprint,
            **self.run_progress.to_state(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
            "caches": self.caches.state_dict(),
            "tuples": self.tuples.to_tensors() if self.tuples is not None else None,
        }

    def save_last(self) -> None:
        if self.rt.is_main:
            self.checkpoints.save_last(self.raw_model, self.model_extra(), self.training_state())
            self.log.flush()

    def save_best(self) -> None:
        if self.rt.is_main:
            self.checkpoints.save_best(self.raw_model, self.model_extra())

    def restore(self) -> None:
        """Continue from the newest intact resumable checkpoint of the run folder."""
        folder, saved_model, state = self.checkpoints.load_last(self.say_always)
        if state.get("format") != TRAINING_STATE_FORMAT:
            raise TscmError(f"{folder}: training state format {state.get('format')!r}; this tscm resumes format "
                            f"{TRAINING_STATE_FORMAT} (start the run again)")
        if state["kind"] != self.config.kind:
            raise TscmError(f"--resume {self.job.run_dir}: a {state['kind']} run cannot be resumed as a {self.config.kind} run")
        if state["teacher_fingerprint"] != self.job.teacher_fingerprint:
            raise TscmError(
                f"--resume {self.job.run_dir}: the teacher {self.config.distill.teacher_checkpoint} has fingerprint "
                f"{self.job.teacher_fingerprint}, but this run was trained from {state['teacher_fingerprint']}; "
                "the teacher folder was replaced: restore it, or start a new run"
            )
        self.raw_model.load_state_dict(saved_model.state_dict())
        self.run_progress = RunProgress.from_state(state)
        self.optimizer.load_state_dict(state["optimizer"])
        match_state_layout(self.optimizer)
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self._resumed_rng = state["rng"]  # applied just before training continues (see run)
        self.caches.load_state_dict(state["caches"])
        self.tuples = TupleArrays.from_tensors(state["tuples"]) if state["tuples"] is not None else None

    # ----- validation ---------------------------------------------------------------------------

    def validate(self) -> dict[str, Any]:
        """Recall@N of the model on the validation split (radius in the split's unit)."""
        val = self.job.val_set
        flat = self.caches.describe(self.raw_model, self.job.spec, self.val_images, self.config.eval.batch_size,
                                    self.progress)
        result = evaluate_descriptors(val, flat[: val.num_db], flat[val.num_db :], radius=self.config.eval.radius(val.unit))
        return result.to_json()

    # ----- the loop -----------------------------------------------------------------------------

    def run(self) -> RunResult:
        resumed = self.job.resume_from is not None
        if resumed:
            self.restore()
        self.log = MetricsLog(
            self.job.run_dir,
            tensorboard=self.config.run.tensorboard and self.rt.is_main,
            resume_step=self.run_progress.global_step if resumed else None,
            resume_epoch=self.run_progress.position["epoch"] if resumed else None,
        ) if self.rt.is_main else NullLog()
        self.caches.ensure_teacher_cache(self.progress)
        if not resumed:
            untrained = self.validate()
            self.run_progress.untrained_recall = untrained["recall"]
            self.log.log_epoch(0, 0, {f"val_R@{n}": v for n, v in untrained["recall"].items()})
            self.say(f"untrained: validation R@1 {untrained['recall']['1']:.2f} % ({untrained['protocol']})")
        if self._resumed_rng is not None:
            # Set last: the set-up above (teacher cache, its data loader) may draw from the global RNG.
            set_rng_state(self._resumed_rng)
        stopped = "epochs"
        try:
            stopped = self._epochs()
        except KeyboardInterrupt:
            self.save_last()
            raise Interrupted(
                f"interrupted at step {self.run_progress.global_step}; the state is saved in {self.checkpoints.last_dir}: "
                f"continue with `tscm {'train-teacher' if self.config.kind == 'teacher' else 'distill'} --resume "
                f"{self.job.run_dir}`"
            ) from None
        finally:
            self.log.close()
        return self._finish(stopped)

    def _epochs(self) -> str:
        from tqdm import tqdm

        config, t = self.config, self.config.train
        while self.run_progress.position["epoch"] < t.epochs:
            epoch = self.run_progress.position["epoch"]
            epoch_start = time.perf_counter()
            chunk_list = self.plan.chunks(self.plan.epoch_queries(epoch))
            while self.run_progress.position["chunk"] < len(chunk_list):
                chunk = self.run_progress.position["chunk"]
                if self.tuples is None:
                    self.caches.refresh(epoch, chunk, self.progress, queries=chunk_list[chunk])
                    self.tuples = self.caches.mine(chunk_list[chunk])
                    self.run_progress.position["batch"] = 0
                batches = self.plan.global_batches(len(self.tuples))
                local = [self.plan.local_rows(rows) for rows in batches]
                first = self.run_progress.position["batch"]
                dataset = TupleBatchDataset(self.tuples, local[first:], self.job.train_set.num_db, self.views)
                # Its own generator: creating a loader must not draw from the global RNG (dropout's),
                # or a run resumed mid-chunk would draw once more than the uninterrupted run.
                loader = DataLoader(dataset, batch_size=None, shuffle=False, num_workers=config.data.num_workers,
                                    generator=torch.Generator().manual_seed(config.train.seed))
                label = f"epoch {epoch + 1}/{t.epochs}" + (f" part {chunk + 1}/{len(chunk_list)}" if len(chunk_list) > 1 else "")
                bar = tqdm(loader, desc=label, unit="step", disable=not self.progress, leave=False)
                for batch in bar:
                    if self._step(epoch, chunk, batch, local, batches, bar):
                        bar.close()
                        return "stop_after_steps"
                bar.close()
                self.run_progress.position = {"epoch": epoch, "chunk": chunk + 1, "batch": 0}
                self.tuples = None
            if self._end_epoch(epoch, epoch_start):
                return "early_stop"
        return "epochs"

    def _step(self, epoch: int, chunk: int, batch: TupleBatch, local: list, batches: list, bar) -> bool:
        """One optimisation step; True when the run must stop here (train.stop_after_steps)."""
        t = self.config.train
        b = self.run_progress.position["batch"]
        self.raw_model.train()
        batchnorm_mode(self.raw_model, t.batchnorm)
        start = time.perf_counter()
        total, parts = self.compute_loss(batch)
        finite = bool(torch.isfinite(total.detach()).item())
        if not self.rt.all_true(finite):
            self._non_finite(epoch, chunk, b, batch, total, parts)
        self.optimisation_step(total, len(local[b]), len(batches[b]))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.step_seconds.append(time.perf_counter() - start)
        self.run_progress.global_step += 1
        self.run_progress.position["batch"] = b + 1
        values = {k: float(v) for k, v in parts.items()}
        values.setdefault("total", float(total.detach()))
        values = self.rt.weighted_mean(values, len(local[b]))  # the global batch's loss
        values["lr"] = self.optimizer.param_groups[0]["lr"]
        self.run_progress.add_step_loss(values["total"])
        self.log.log_step(self.run_progress.global_step, epoch + 1, values)
        bar.set_postfix(loss=f"{values['total']:.4f}")
        if t.stop_after_steps and self.run_progress.global_step >= t.stop_after_steps:
            return True
        if self.run_progress.global_step % t.checkpoint_every_steps == 0:
            self.save_last()
        return False

    def _end_epoch(self, epoch: int, epoch_start: float) -> bool:
        """Schedule, validation, best checkpoint, logs; True when early stopping ends the run."""
        patience, progress = self.config.train.patience, self.run_progress
        with warnings.catch_warnings():
            # A run resumed at an epoch's end steps its restored schedule before this process' first optimiser
            # step; torch takes that for a misordered first epoch and warns, wrongly here.
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
            self.scheduler.step()
        val = self.validate()
        progress.last_val = val
        recall1 = float(val["recall"]["1"])
        progress.position = {"epoch": epoch + 1, "chunk": 0, "batch": 0}
        improved = progress.record_validation(recall1, epoch + 1)
        if improved:
            self.save_best()
        train_loss = progress.take_epoch_loss()
        self.log.log_epoch(epoch + 1, progress.global_step, {
            "train_loss": train_loss,
            **{f"val_R@{n}": v for n, v in val["recall"].items()},
            "lr": self.optimizer.param_groups[0]["lr"],
            "seconds": time.perf_counter() - epoch_start,
            **self.caches.take_stats(),
        })
        self.say(f"epoch {epoch + 1}: train loss {train_loss:.4f}, validation R@1 {recall1:.2f} %"
                 + (" (best)" if improved else f" (best {progress.best_recall:.2f} % at epoch {progress.best_epoch})"))
        self.save_last()
        # As published: stop once more than `patience` epochs in a row brought no gain.
        return bool(patience) and progress.epochs_without_gain > patience

    def _non_finite(self, epoch: int, chunk: int, batch_index: int, batch: TupleBatch, total, parts) -> None:
        self.save_last()
        terms = ", ".join(f"{k}={float(v):.6g}" for k, v in parts.items())
        queries = batch.layout.query_indices.tolist()
        raise NonFiniteLoss(
            f"non-finite loss at step {self.run_progress.global_step + 1} (epoch {epoch + 1}, part {chunk + 1}, "
            f"batch {batch_index + 1}, "
            f"train queries {queries}): total={float(total.detach()):.6g}; terms: {terms or 'none'}. "
            f"The last good state is kept in {self.checkpoints.last_dir}; resume with a lower train.lr"
        )

    def _finish(self, stopped: str) -> RunResult:
        metrics = {
            "stopped": stopped,
            "epochs_completed": self.run_progress.position["epoch"],
            "steps": self.run_progress.global_step,
            "best_epoch": self.run_progress.best_epoch,
            "best_val_recall_at_1": self.run_progress.best_recall_or_none,
            "untrained_val_recall": self.run_progress.untrained_recall,
            "last_val": self.run_progress.last_val,
            "mean_step_ms": 1000 * float(np.mean(self.step_seconds)) if self.step_seconds else None,
        }
        if self.rt.is_main and stopped != "stop_after_steps":
            write_json_atomic(self.job.run_dir / "result.json", metrics)
        return RunResult(self.job.run_dir, self.checkpoints.best_dir, self.checkpoints.last_dir, metrics)

    def say(self, text: str) -> None:
        if self.rt.is_main and self.config.train.progress:
            from tqdm import tqdm

            tqdm.write(text)

    def say_always(self, text: str) -> None:
        """Messages a user must see even without progress output (warnings)."""
        if self.rt.is_main:
            from tqdm import tqdm

            tqdm.write(text)

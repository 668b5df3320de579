"""The training loop shared by teacher training and distillation.

One epoch: the train queries in a seeded order (optionally a subset), cut into chunks of
`mining.refresh_every_queries`; before a chunk the descriptor cache is refreshed when due and
tuples are mined for the chunk's queries; the tuples are cut into global batches of
`train.batch_size`, each process training on its share. After the epoch: LR schedule step,
validation Recall@1 (val split only), early stopping, best checkpoint. A resumable `last`
checkpoint is written every `train.checkpoint_every_steps` steps and at each epoch end; it holds
the model, optimiser, scheduler, gradient scaler, RNG, position (epoch, chunk, batch), the
chunk's tuples, the miner's state and, when it will be reused, the mining cache, so a resumed run
retraces the uninterrupted one exactly.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from tscm.config import TrainConfig
from tscm.data.places import PlaceSet
from tscm.data.tuples import TupleArrays, TupleBatch, TupleBatchDataset, flat_image_paths, scatter_to_layout
from tscm.errors import TscmError
from tscm.fileio import write_json_atomic
from tscm.train.metrics_log import MetricsLog
from tscm.train.runtime import Runtime, rng_state, set_rng_state
from tscm.train.training_state import existing_folder, load_training_state, replace_folder, save_training_state


@dataclass(frozen=True)
class InputSpec:
    """How a model wants its images: (H, W) and normalisation."""

    image_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


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
    resume_from: Path | None = None


class NonFiniteLoss(TscmError):
    """The loss became NaN or infinite; the message names step, batch and loss terms."""


def batchnorm_mode(model: nn.Module, mode: str) -> None:
    """`frozen`: batch norms use their running statistics while training (affine still learnt)."""
    if mode == "frozen":
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


class Trainer:
    """Runs one TrainingJob: mining, steps, validation, checkpoints; `run()` returns a RunResult."""

    def __init__(self, job: TrainingJob) -> None:
        from tscm.data.mining import Miner, MiningSettings

        self.job = job
        self.config = config = job.config
        self.rt = job.runtime
        self.device = self.rt.device
        self.raw_model = job.model.to(self.device)
        self.model: nn.Module = self.raw_model
        if self.rt.distributed:
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(self.raw_model, device_ids=device_ids, find_unused_parameters=True)
        self.teacher = job.teacher.to(self.device).eval() if job.teacher is not None else None
        if self.teacher is not None:
            for parameter in self.teacher.parameters():
                parameter.requires_grad_(False)
        self.loss_fn = job.loss.to(self.device)
        self.needs_teacher = bool(getattr(self.loss_fn, "needs_teacher", False))
        self.train_paths = flat_image_paths(job.train_set)
        self.num_db = job.train_set.num_db
        self.k = config.mining.num_negatives

        mining = config.mining
        settings = MiningSettings(
            pos_radius_m=mining.pos_radius_m,
            neg_radius_m=mining.neg_radius_m,
            num_negatives=mining.num_negatives,
            num_random=mining.num_random,
            margin=mining.margin,
            positive_rule=mining.positive_rule,
            heading_tolerance_deg=mining.heading_tolerance_deg,
        )
        self.miner = Miner(job.train_set, settings, seed=config.train.seed)
        self.mining_by_teacher = config.kind == "student" and mining.descriptors == "teacher"
        self.teacher_from_cache = self.needs_teacher and config.distill.teacher_outputs == "cache"
        if (self.needs_teacher or self.mining_by_teacher) and self.teacher is None:
            raise TscmError(
                f"loss.preset={config.loss.preset}, mining.descriptors={mining.descriptors}: a teacher is needed "
                "(distill --teacher CKPT), or use loss.preset=none with mining.descriptors=student"
            )

        self.optimizer = self._build_optimizer()
        self.scheduler = torch.optim.lr_scheduler.ExponentialLR(self.optimizer, gamma=config.train.lr_gamma)
        use_scaler = self.rt.amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler)

        self.teacher_cache: torch.Tensor | None = None  # teacher descriptors of every train image
        self.mining_cache: np.ndarray | None = None  # flat train descriptors that drive mining
        self.cache_epoch = -1
        self.position = {"epoch": 0, "chunk": 0, "batch": 0}
        self.global_step = 0
        self.tuples: TupleArrays | None = None
        self.best_recall = -math.inf
        self.best_epoch = 0
        self.epochs_without_gain = 0
        self.untrained_recall: dict[str, float] | None = None
        self.last_val: dict[str, Any] | None = None
        self.step_seconds: list[float] = []

    # ----- building blocks -----------------------------------------------------------------

    def _build_optimizer(self) -> torch.optim.Optimizer:
        t = self.config.train
        parameters = [p for p in self.raw_model.parameters() if p.requires_grad]
        if t.optimizer == "adam":
            return torch.optim.Adam(parameters, lr=t.lr, weight_decay=t.weight_decay)
        return torch.optim.SGD(parameters, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)

    def _progress(self) -> bool:
        return self.config.train.progress and self.rt.is_main

    def _extract(self, model: nn.Module, spec: InputSpec, paths: list, batch_size: int) -> np.ndarray:
        """Descriptors of `paths`, computed in shards over the processes and gathered."""
        from tscm.evaluation.recall import extract_descriptors

        share = self.rt.shard(len(paths))
        local = extract_descriptors(
            model,
            paths[share.start : share.stop],
            spec.image_size,
            spec.mean,
            spec.std,
            batch_size=batch_size,
            device=str(self.device),
            num_workers=self.config.data.num_workers,
            progress=self._progress(),
        )
        if len(local) == 0:
            local = np.zeros((0, int(getattr(model, "descriptor_dim", 1))), dtype=np.float32)
        return self.rt.gather_rows(local, len(paths))

    def _ensure_teacher_cache(self) -> None:
        if self.teacher_cache is None and (self.teacher_from_cache or self.mining_by_teacher):
            assert self.teacher is not None and self.job.teacher_spec is not None
            flat = self._extract(self.teacher, self.job.teacher_spec, self.train_paths, self.config.mining.batch_size)
            self.teacher_cache = torch.from_numpy(flat).to(self.device)

    def _cache_reused_later(self) -> bool:
        return not self.mining_by_teacher and self.config.mining.refresh_every_epochs > 1

    def _refresh_mining_cache(self, epoch: int, chunk: int) -> None:
        if self.mining_by_teacher:
            self._ensure_teacher_cache()
            return
        due = (
            self.mining_cache is None
            or chunk > 0
            or epoch - self.cache_epoch >= self.config.mining.refresh_every_epochs
        )
        if due:
            self.mining_cache = self._extract(self.raw_model, self.job.spec, self.train_paths, self.config.mining.batch_size)
            self.cache_epoch = epoch

    def _mine(self, queries: np.ndarray) -> TupleArrays:
        from tscm.data.mining import DescriptorCache

        flat = self.teacher_cache.cpu().numpy() if self.mining_by_teacher else self.mining_cache
        assert flat is not None
        cache = DescriptorCache(flat[: self.num_db], flat[self.num_db :], dtype=self.config.mining.cache_dtype)
        mined = self.miner.mine(cache, queries)
        return TupleArrays.from_mined(mined, self.k)

    def epoch_queries(self, epoch: int) -> np.ndarray:
        """The epoch's train queries in a seeded order (a subset when max_queries_per_epoch is set)."""
        count = self.job.train_set.num_queries
        order = np.random.default_rng([self.config.train.seed, epoch]).permutation(count)
        limit = self.config.train.max_queries_per_epoch
        return order[:limit] if limit else order

    def chunks(self, queries: np.ndarray) -> list[np.ndarray]:
        size = self.config.mining.refresh_every_queries
        if size <= 0 or size >= len(queries):
            return [queries]
        return [queries[i : i + size] for i in range(0, len(queries), size)]

    def global_batches(self, num_tuples: int) -> list[np.ndarray]:
        """Rows of each global batch; under DDP, batches too small to give every process a tuple are dropped."""
        size = self.config.train.batch_size
        batches = [np.arange(i, min(i + size, num_tuples)) for i in range(0, num_tuples, size)]
        return [b for b in batches if len(b) >= self.rt.world_size]

    def local_rows(self, batch_rows: np.ndarray) -> np.ndarray:
        return np.array_split(batch_rows, self.rt.world_size)[self.rt.rank]

    def _load_image_fn(self, spec: InputSpec) -> Callable[[int], torch.Tensor]:
        from tscm.data.transforms import ImageListDataset

        dataset = ImageListDataset(self.train_paths, spec.image_size, spec.mean, spec.std)
        return dataset.__getitem__

    # ----- one step ---------------------------------------------------------------------------

    def compute_loss(self, batch: TupleBatch, teacher_loader: Callable[[int], torch.Tensor] | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        from tscm.losses import TupleDescriptors

        layout = batch.layout
        mask = layout.negative_mask.to(self.device)
        images = batch.images.to(self.device, non_blocking=True)
        with self.rt.autocast():
            descriptors = self.model(images)
        student = TupleDescriptors.from_flat(scatter_to_layout(descriptors.float(), layout), self.k, mask)
        teacher = None
        if self.needs_teacher:
            if self.teacher_from_cache:
                assert self.teacher_cache is not None
                teacher_desc = self.teacher_cache.index_select(0, layout.keys.to(self.device))
            else:
                assert self.teacher is not None
                teacher_images = images
                if teacher_loader is not None:
                    teacher_images = torch.stack([teacher_loader(int(k)) for k in layout.keys]).to(self.device)
                with torch.no_grad(), self.rt.autocast():
                    teacher_desc = self.teacher(teacher_images).float()
            teacher = TupleDescriptors.from_flat(scatter_to_layout(teacher_desc, layout), self.k, mask)
        return self.loss_fn(student, teacher)

    def optimisation_step(self, total: torch.Tensor, local_count: int, global_count: int) -> None:
        # DDP averages gradients over processes; weighting each process's mean by its share of the
        # global batch makes the update equal to the mean over the whole global batch.
        scaled = total * (local_count * self.rt.world_size / global_count)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(scaled).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()

    # ----- checkpoints --------------------------------------------------------------------------

    @property
    def last_dir(self) -> Path:
        return self.job.run_dir / "last"

    @property
    def best_dir(self) -> Path:
        return self.job.run_dir / "best"

    def _model_extra(self) -> dict[str, Any]:
        return {
            "training": self.config.to_dict(),
            "epoch": self.position["epoch"],
            "step": self.global_step,
            "validation": self.last_val,
            "eval_protocol": {"radius_m": self.config.eval.radius_m, "split": self.config.data.val_split},
        }

    def training_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "format": 1,
            "position": dict(self.position),
            "global_step": self.global_step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
            "miner": self.miner.state_dict(),
            "best_recall": self.best_recall if math.isfinite(self.best_recall) else None,
            "best_epoch": self.best_epoch,
            "epochs_without_gain": self.epochs_without_gain,
            "untrained_recall": self.untrained_recall,
            "last_val": self.last_val,
            "tuples": self.tuples.to_tensors() if self.tuples is not None else None,
            "cache_epoch": self.cache_epoch,
            "mining_cache": self.mining_cache if (self._cache_reused_later() and self.mining_cache is not None) else None,
        }
        return state

    def save_last(self) -> None:
        if not self.rt.is_main:
            return
        staging = self.job.run_dir / "last.new"
        if staging.exists():
            import shutil

            shutil.rmtree(staging)
        self.job.save_model(staging, self.raw_model, self._model_extra())
        save_training_state(staging, self.training_state())
        replace_folder(staging, self.last_dir)
        self.log.flush()

    def save_best(self) -> None:
        if not self.rt.is_main:
            return
        staging = self.job.run_dir / "best.new"
        if staging.exists():
            import shutil

            shutil.rmtree(staging)
        self.job.save_model(staging, self.raw_model, self._model_extra())
        replace_folder(staging, self.best_dir)

    def restore(self, folder: Path) -> None:
        from tscm.models.checkpoint import load_checkpoint

        found = existing_folder(folder / "last")
        if found is None:
            raise TscmError(f"--resume {folder}: no last checkpoint (expected {folder}/last)")
        saved_model, _ = load_checkpoint(found)  # checks the weights against their recorded fingerprint
        self.raw_model.load_state_dict(saved_model.state_dict())
        state = load_training_state(found)
        self.position = dict(state["position"])
        self.global_step = int(state["global_step"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self._resumed_rng = state["rng"]  # applied just before training continues (see run)
        self.miner.load_state_dict(state["miner"])
        self.best_recall = state["best_recall"] if state["best_recall"] is not None else -math.inf
        self.best_epoch = int(state["best_epoch"])
        self.epochs_without_gain = int(state["epochs_without_gain"])
        self.untrained_recall = state["untrained_recall"]
        self.last_val = state["last_val"]
        self.tuples = TupleArrays.from_tensors(state["tuples"]) if state["tuples"] is not None else None
        self.cache_epoch = int(state["cache_epoch"])
        if state["mining_cache"] is not None:
            self.mining_cache = np.asarray(state["mining_cache"])

    # ----- validation ---------------------------------------------------------------------------

    def validate(self) -> dict[str, Any]:
        from tscm.evaluation.recall import evaluate_descriptors

        val = self.job.val_set
        paths = flat_image_paths(val)
        flat = self._extract(self.raw_model, self.job.spec, paths, self.config.eval.batch_size)
        result = evaluate_descriptors(val, flat[: val.num_db], flat[val.num_db :], radius_m=self.config.eval.radius_m)
        return result.to_json()

    # ----- the loop -----------------------------------------------------------------------------

    def run(self) -> RunResult:
        config = self.config
        resumed = self.job.resume_from is not None
        if resumed:
            self.restore(self.job.resume_from)
        self.log = MetricsLog(
            self.job.run_dir,
            tensorboard=config.run.tensorboard and self.rt.is_main,
            resume_step=self.global_step if resumed else None,
            resume_epoch=self.position["epoch"] if resumed else None,
        ) if self.rt.is_main else _NullLog()
        self._ensure_teacher_cache()
        if not resumed:
            untrained = self.validate()
            self.untrained_recall = untrained["recall"]
            self.log.log_epoch(0, 0, {f"val_R@{n}": v for n, v in untrained["recall"].items()})
            self._say(f"untrained: validation R@1 {untrained['recall']['1']:.2f} % ({untrained['protocol']})")
        teacher_loader = None
        if self.needs_teacher and not self.teacher_from_cache and self.job.teacher_spec != self.job.spec:
            assert self.job.teacher_spec is not None
            teacher_loader = self._load_image_fn(self.job.teacher_spec)
        load_image = self._load_image_fn(self.job.spec)
        if resumed:
            # Set last: the set-up above (teacher cache, its data loader) may draw from the global RNG.
            set_rng_state(self._resumed_rng)
        stopped = "epochs"
        try:
            stopped = self._epochs(load_image, teacher_loader)
        finally:
            self.log.close()
        return self._finish(stopped)

    def _epochs(self, load_image, teacher_loader) -> str:
        from torch.utils.data import DataLoader
        from tqdm import tqdm

        config, t = self.config, self.config.train
        while self.position["epoch"] < t.epochs:
            epoch = self.position["epoch"]
            epoch_start = time.perf_counter()
            chunk_list = self.chunks(self.epoch_queries(epoch))
            losses: list[float] = []
            while self.position["chunk"] < len(chunk_list):
                chunk = self.position["chunk"]
                if self.tuples is None:
                    self._refresh_mining_cache(epoch, chunk)
                    self.tuples = self._mine(chunk_list[chunk])
                    self.position["batch"] = 0
                batches = self.global_batches(len(self.tuples))
                local = [self.local_rows(rows) for rows in batches]
                dataset = TupleBatchDataset(self.tuples, local[self.position["batch"] :], self.num_db, load_image)
                # Its own generator: creating a loader must not draw from the global RNG (dropout's),
                # or a run resumed mid-chunk would draw once more than the uninterrupted run.
                loader = DataLoader(
                    dataset,
                    batch_size=None,
                    shuffle=False,
                    num_workers=config.data.num_workers,
                    generator=torch.Generator().manual_seed(config.train.seed),
                )
                bar = tqdm(
                    loader,
                    desc=f"epoch {epoch + 1}/{t.epochs}" + (f" part {chunk + 1}/{len(chunk_list)}" if len(chunk_list) > 1 else ""),
                    unit="step",
                    disable=not self._progress(),
                    leave=False,
                )
                for batch in bar:
                    b = self.position["batch"]
                    self.raw_model.train()
                    batchnorm_mode(self.raw_model, "frozen" if config.train.batchnorm == "frozen" else "batch")
                    start = time.perf_counter()
                    total, parts = self.compute_loss(batch, teacher_loader)
                    finite = bool(torch.isfinite(total.detach()).item())
                    if not self.rt.all_true(finite):
                        self._non_finite(epoch, chunk, b, batch, total, parts)
                    self.optimisation_step(total, len(local[b]), len(batches[b]))
                    if self.device.type == "cuda":
                        torch.cuda.synchronize(self.device)
                    self.step_seconds.append(time.perf_counter() - start)
                    self.global_step += 1
                    self.position["batch"] = b + 1
                    values = {k: float(v) for k, v in parts.items()}
                    values.setdefault("total", float(total.detach()))
                    values = self.rt.weighted_mean(values, len(local[b]))  # the global batch's loss
                    values["lr"] = self.optimizer.param_groups[0]["lr"]
                    losses.append(values["total"])
                    self.log.log_step(self.global_step, epoch + 1, values)
                    bar.set_postfix(loss=f"{values['total']:.4f}")
                    if t.stop_after_steps and self.global_step >= t.stop_after_steps:
                        bar.close()
                        return "stop_after_steps"
                    if self.global_step % t.checkpoint_every_steps == 0:
                        self.save_last()
                bar.close()
                self.position = {"epoch": epoch, "chunk": chunk + 1, "batch": 0}
                self.tuples = None
            self.scheduler.step()
            val = self.validate()
            self.last_val = val
            recall1 = float(val["recall"]["1"])
            self.position = {"epoch": epoch + 1, "chunk": 0, "batch": 0}
            improved = recall1 > self.best_recall
            if improved:
                self.best_recall, self.best_epoch, self.epochs_without_gain = recall1, epoch + 1, 0
                self.save_best()
            else:
                self.epochs_without_gain += 1
            self.log.log_epoch(
                epoch + 1,
                self.global_step,
                {
                    "train_loss": float(np.mean(losses)) if losses else float("nan"),
                    **{f"val_R@{n}": v for n, v in val["recall"].items()},
                    "lr": self.optimizer.param_groups[0]["lr"],
                    "seconds": time.perf_counter() - epoch_start,
                },
            )
            self._say(
                f"epoch {epoch + 1}: train loss {np.mean(losses) if losses else float('nan'):.4f}, "
                f"validation R@1 {recall1:.2f} %" + (" (best)" if improved else f" (best {self.best_recall:.2f} % at epoch {self.best_epoch})")
            )
            self.save_last()
            if t.patience and self.epochs_without_gain >= t.patience:
                return "early_stop"
        return "epochs"

    def _non_finite(self, epoch: int, chunk: int, batch_index: int, batch: TupleBatch, total, parts) -> None:
        self.save_last()
        terms = ", ".join(f"{k}={float(v):.6g}" for k, v in parts.items())
        queries = batch.layout.query_indices.tolist()
        raise NonFiniteLoss(
            f"non-finite loss at step {self.global_step + 1} (epoch {epoch + 1}, part {chunk + 1}, batch {batch_index + 1}, "
            f"train queries {queries}): total={float(total.detach()):.6g}; terms: {terms or 'none'}. "
            f"The last good state is kept in {self.last_dir}; resume with a lower train.lr"
        )

    def _finish(self, stopped: str) -> RunResult:
        metrics = {
            "stopped": stopped,
            "epochs_completed": self.position["epoch"],
            "steps": self.global_step,
            "best_epoch": self.best_epoch,
            "best_val_recall_at_1": self.best_recall if math.isfinite(self.best_recall) else None,
            "untrained_val_recall": self.untrained_recall,
            "last_val": self.last_val,
            "mean_step_ms": 1000 * float(np.mean(self.step_seconds)) if self.step_seconds else None,
        }
        if self.rt.is_main and stopped != "stop_after_steps":
            write_json_atomic(self.job.run_dir / "result.json", metrics)
        return RunResult(self.job.run_dir, self.best_dir, self.last_dir, metrics)

    def _say(self, text: str) -> None:
        if self.rt.is_main and self.config.train.progress:
            from tqdm import tqdm

            tqdm.write(text)


class _NullLog:
    """Non-main processes log nothing."""

    def log_step(self, *args, **kwargs) -> None:
        pass

    def log_epoch(self, *args, **kwargs) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

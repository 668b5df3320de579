"""What `tscm demo` and `tscm ablation` share: run options, the recipe for a data set, training runs
built from typed settings, and measuring a model on the test split.
"""

from __future__ import annotations

import shlex
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
import torch

from tscm.config import TrainConfig, load_config
from tscm.config.fields import apply_overrides, apply_text_overrides, check_fields, setting
from tscm.config.option_checks import MAX_SEED, check_device
from tscm.config.quick import QUICK_TRAINING
from tscm.data.fetch import is_named_dataset, resolve_named_dataset
from tscm.data.formats import load_placeset
from tscm.data.images import DecodedImages, ImageListDataset
from tscm.data.places import PlaceSet, radius_text
from tscm.data.synthetic import SYNTHETIC_PREFIX, is_synthetic_spec, resolve_path_or_synthetic
from tscm.data.synthetic.city import PRESETS
from tscm.errors import TscmError
from tscm.evaluation.extract import InputSpec, describe_decoded, describe_placeset, extract_descriptors
from tscm.evaluation.raw_pixels import raw_pixel_descriptors
from tscm.evaluation.recall import EvalResult, evaluate_descriptors
from tscm.experiments.plots import draw_run_pictures
from tscm.experiments.report import (DatasetInfo, ModelResult, SeedMeasurement, build_results, save_descriptors,
                                     write_results)
from tscm.machine import median_ms, time_turns
from tscm.models.checkpoint import load_checkpoint
from tscm.models.pooled_trunk import off_the_shelf_trunk
from tscm.models.presets import get_preset, multiply_adds_per_image
from tscm.threads import all_threads
from tscm.train.runs import distill, train_teacher

TRAIN_DIR = "train"
SETTINGS_FILE = "settings.json"
CURVE_NS = tuple(range(1, 21))


# The distillation loss tscm recommends (chosen on the validation split of the synthetic city and of
# Nordland, README "Distillation"): the teacher's ranking of every image of a step, and its coordinates.
RECOMMENDED_LOSS = "listwise+regression"


@dataclass(frozen=True)
class Recipe:
    """How the main job treats a kind of data: training presets, radii reported, raw-pixel size."""

    teacher_config: str
    student_config: str
    radii: tuple[float, ...]  # the first is the main radius (data-set unit)
    raw_pixel_size: tuple[int, int]  # (height, width) of the raw-pixel reference
    label: str
    recommended_loss: str = RECOMMENDED_LOSS


# Metric data (the synthetic city, Pittsburgh): 25 m (community) and 10 m (published code).
METRIC = Recipe("demo_teacher", "demo_student", (25.0, 10.0), (16, 16), "street-level images, metres")
# Frame-ordered routes (Nordland): ±1 frame (main) and exact (±0); raw pixels as the data's README measured them.
FRAMES = Recipe("nordland_teacher", "nordland_student", (1.0, 0.0), (16, 32), "frame-ordered route")
EXPLICIT = Recipe("demo_teacher", "demo_student", (), (16, 16), "explicit ground truth")


def recipe_for(placeset: PlaceSet) -> Recipe:
    return {"m": METRIC, "frame": FRAMES, "explicit": EXPLICIT}[placeset.unit]


@dataclass
class RunOptions:
    """Knobs shared by `tscm demo` and `tscm ablation`, one per flag (built by tscm.config.fields.build_settings)."""

    AS_FLAGS: ClassVar[bool] = True  # messages name a knob by its flag (--max-queries)

    out: Path
    data: str = "synthetic:demo"
    name: str = ""  # data-set name when a folder holds several
    seeds: tuple[int, ...] = setting((0, 1, 2), least=0, most=MAX_SEED)
    epochs: int | None = setting(None, least=1)
    max_queries: int | None = setting(None, least=1)  # train queries per epoch (None: the preset's)
    quick: bool = False
    threads: int = setting(2, least=0)
    jobs: int = setting(1, least=1)  # training runs at once, each with threads // jobs threads (experiments.training_pool)
    device: str = "cpu"
    cache_dir: str | None = None
    batch_size: int = setting(64, least=1)  # images per batch when describing the test split
    progress: bool = True
    teacher_config: str | None = None  # None: the data's recipe
    student_config: str | None = None
    overrides: list[str] = field(default_factory=list)  # section.field=value for every training run (from --set)

    def check(self) -> None:
        """Every knob, and everything the runs will use, checked before the run folder exists: a mistake found after
        minutes of training (or in a folder a second try may not reuse) helps nobody."""
        check_fields(self)
        check_device(self.device)
        apply_text_overrides(TrainConfig(), self.overrides, "--set")
        for flag, preset, role in (("--teacher-config", self.teacher_config, "teacher"),
                                   ("--student-config", self.student_config, "student")):
            if preset is not None:
                try:
                    load_config(preset, kind=role)
                except TscmError as error:
                    raise TscmError(f"{flag} {preset}: {error}") from None
        check_data(self.data)

    def to_json(self) -> dict[str, Any]:
        values = asdict(self)
        values["out"] = str(self.out)
        values["seeds"] = list(self.seeds)
        return values

    def command_line(self, kind: str, extra: Sequence[str] = ()) -> str:
        """`tscm <kind>` with every knob spelled out, so the run can be repeated exactly."""
        parts = ["tscm", kind, "--data", self.data, "--out", str(self.out), "--threads", str(self.threads),
                 "--jobs", str(self.jobs), "--device", self.device, "--batch-size", str(self.batch_size), "--seeds", *map(str, self.seeds)]
        for flag, value in (("--name", self.name), ("--epochs", self.epochs), ("--max-queries", self.max_queries),
                            ("--cache-dir", self.cache_dir), ("--teacher-config", self.teacher_config),
                            ("--student-config", self.student_config)):
            if value not in (None, ""):
                parts += [flag, str(value)]
        if self.quick:
            parts.append("--quick")
        if not self.progress:
            parts.append("--no-progress")
        for item in self.overrides:
            parts += ["--set", item]
        return shlex.join([*parts, *extra])


def check_data(data: str) -> None:
    """A data set that exists, or a known synthetic preset (generated later, on first use)."""
    if is_synthetic_spec(data):
        preset = data[len(SYNTHETIC_PREFIX):] or "demo"
        if preset not in PRESETS:
            raise TscmError(f"--data {data}: unknown synthetic preset {preset!r}; expected one of {', '.join(PRESETS)}")
    elif (not data or not Path(data).exists()) and not is_named_dataset(data):
        raise TscmError(f"--data {data!r}: no such file or folder (or use synthetic:<preset>, e.g. synthetic:demo, "
                        "or nordland, fetched on first use)")


def default_run_dir(kind: str) -> Path:
    return Path("runs") / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"


def prepare_run_dir(path: Path) -> Path:
    """A new or empty run folder; an existing non-empty one is refused, never overwritten."""
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise TscmError(f"--out {path}: exists and is not an empty folder; choose a new run folder")
    path.mkdir(parents=True, exist_ok=True)
    return path


def say(text: str) -> None:
    from tqdm import tqdm

    tqdm.write(text)


def resolve_data(options: RunOptions) -> Path:
    """The data set's folder: a path, a synthetic city (generated on first use), or a named public data set
    (`nordland`: fetched and checked on first use, cached beside the synthetic cities)."""
    if is_named_dataset(options.data):
        return resolve_named_dataset(options.data, cache_dir=options.cache_dir, progress=options.progress)
    return resolve_path_or_synthetic(options.data, cache_dir=options.cache_dir, progress=options.progress)


@dataclass(frozen=True)
class RunData:
    """What a demo or ablation run measures on: the data set's folder, its test split, the recipe for its kind of
    data, and the training presets (the options', else the recipe's)."""

    root: Path
    test_set: PlaceSet
    recipe: Recipe
    teacher_config: str
    student_config: str


def load_run_data(options: RunOptions) -> RunData:
    root = resolve_data(options)
    test_set = load_placeset(root, "test", name=options.name or None)
    recipe = recipe_for(test_set)
    return RunData(root, test_set, recipe, options.teacher_config or recipe.teacher_config,
                   options.student_config or recipe.student_config)


# ----- training ---------------------------------------------------------------------------------


def training_config(preset: str, kind: str, options: RunOptions, data_root: Path, run_dir: Path, name: str,
                    seed: int, *, loss: str | None = None, mining_descriptors: str | None = None,
                    fixed_steps: bool = False) -> TrainConfig:
    """The settings of one training run: the YAML preset, then the run's data, folder, seed and budget,
    then `--quick`, `--epochs` and `--max-queries`, then the user's `--set` items (all through config's one
    override path)."""
    config = load_config(preset, kind=kind)
    run = {"data.path": str(data_root), "data.name": options.name, "run.output_dir": str(run_dir / TRAIN_DIR),
           "run.name": name, "train.seed": seed, "train.threads": options.threads, "train.device": options.device,
           "train.progress": options.progress, "loss.preset": loss, "mining.descriptors": mining_descriptors,
           "train.patience": 0 if fixed_steps else None}  # fixed steps: every row the same number, no early stop
    apply_overrides(config, {key: value for key, value in run.items() if value is not None})
    if options.quick:
        apply_overrides(config, QUICK_TRAINING)
    budget = {"train.epochs": options.epochs, "train.max_queries_per_epoch": options.max_queries}
    apply_overrides(config, {key: value for key, value in budget.items() if value is not None})
    apply_text_overrides(config, options.overrides, "--set")
    config.check()
    return config


@dataclass
class TrainedModel:
    """A finished training run: the checkpoint to evaluate (best on val), its last weights, and how the run went."""

    checkpoint: Path
    wall_s: float
    metrics: dict[str, Any]
    last_checkpoint: Path | None = None


def train_teacher_run(config: TrainConfig, command: str) -> TrainedModel:
    started = time.perf_counter()
    result = train_teacher(config, command_line=command)
    return TrainedModel(result.best_checkpoint, time.perf_counter() - started, result.metrics, result.last_checkpoint)


def train_student_run(config: TrainConfig, teacher: Path | None, command: str) -> TrainedModel:
    """A student, with or without a teacher."""
    started = time.perf_counter()
    result = distill(config, teacher, command_line=command)
    return TrainedModel(result.best_checkpoint, time.perf_counter() - started, result.metrics, result.last_checkpoint)


def training_summary(trained: TrainedModel, run_dir: Path) -> dict[str, Any]:
    metrics = trained.metrics
    checkpoint = trained.checkpoint
    return {
        "checkpoint": str(checkpoint.relative_to(run_dir)) if checkpoint.is_relative_to(run_dir) else str(checkpoint),
        "steps": metrics.get("steps"),
        "epochs_completed": metrics.get("epochs_completed"),
        "best_epoch": metrics.get("best_epoch"),
        "best_val_recall_at_1": metrics.get("best_val_recall_at_1"),
        "stopped": metrics.get("stopped"),
    }


# ----- measuring ----------------------------------------------------------------------------------


@dataclass
class Measurement:
    """Descriptors of the test split, their evaluation at each reported radius, and what they cost."""

    db: np.ndarray
    queries: np.ndarray
    evaluations: list[EvalResult]  # the recipe's radii, main first
    ms_per_image: float | None  # None: not timed (a later seed, described from memory)
    forward_ms_per_image: float | None
    matching_ms_per_query: float | None
    params: int
    multiply_adds: int | None = None

    @property
    def main(self) -> EvalResult:
        return self.evaluations[0]

    @property
    def descriptor_dim(self) -> int:
        return int(self.db.shape[1])

    def seed_measurement(self, wall_s: float | None = None, extra: dict[str, Any] | None = None) -> SeedMeasurement:
        others = {radius_text(e.radius, e.unit): e.recall for e in self.evaluations[1:]}
        return SeedMeasurement(self.main.recall, self.main.pr, others, wall_s, extra or {})


def evaluate_at(placeset: PlaceSet, radii: Sequence[float], db: np.ndarray, queries: np.ndarray) -> list[EvalResult]:
    """Recall@1..20 and precision-recall at each radius that leaves a query with a true match."""
    if placeset.unit == "explicit":
        return [evaluate_descriptors(placeset, db, queries, None, CURVE_NS)]
    results = []
    for radius in radii:
        if any(len(p) for p in placeset.positives(radius)):
            results.append(evaluate_descriptors(placeset, db, queries, radius, CURVE_NS))
    if not results:
        raise TscmError(f"{placeset.summary()}: no query has a true match within {radii} {placeset.unit}")
    return results


def count_parameters(model) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def matching_ms_per_query(db: np.ndarray, queries: np.ndarray, k: int = max(CURVE_NS), repeats: int = 5) -> float:
    """Exact L2 search (faiss flat) of all queries in one batch, ms per query (median of `repeats` calls
    after one untimed call that allocates, through the one timer `tscm.machine.time_turns`)."""
    import faiss

    index = faiss.IndexFlatL2(db.shape[1])
    index.add(np.ascontiguousarray(db, dtype=np.float32))
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    k = min(k, len(db))
    times = time_turns({"search": lambda: index.search(queries, k)}, cycles=1, calls_per_block=repeats)["search"]
    return median_ms(times, per=len(queries))


def forward_ms_per_image(model, spec, paths: Sequence[Path], device: str, repeats: int = 5) -> float:
    """The model alone (no image decoding) on one batch of test images, ms per image (median of `repeats`
    calls after one untimed call, through the one timer `tscm.machine.time_turns`)."""
    dataset = ImageListDataset(paths, spec.image_size, spec.mean, spec.std)
    batch = torch.stack([dataset[i] for i in range(len(dataset))]).to(device)
    synchronize = (lambda: torch.cuda.synchronize(batch.device)) if batch.device.type == "cuda" else None
    model.eval()
    with torch.inference_mode():
        times = time_turns({"model": lambda: model(batch)}, cycles=1, calls_per_block=repeats,
                           synchronize=synchronize)["model"]
    return median_ms(times, per=len(paths))


def chance_recall_at_1(placeset: PlaceSet, radius: float | None) -> float:
    """Expected Recall@1 (percent) of a random ranking: the mean share of true matches in the database."""
    shares = [len(p) / placeset.num_db for p in placeset.positives(radius) if len(p)]
    return 100.0 * float(np.mean(shares)) if shares else 0.0


# With the test images in memory, the end-to-end time is taken on this many of them (ten batches of 64), from files.
TIMING_IMAGES = 640


def measure_model(model, spec, placeset: PlaceSet, radii: Sequence[float], options: RunOptions,
                  decoded: DecodedImages | None = None, timed: bool = True) -> Measurement:
    """Describe the test split with `model`, evaluate it, and time it: end to end from the image files (decode,
    resize, forward), matching, and the model alone.

    Without `decoded` the whole split is described from its files, and that is the end-to-end time. With
    `decoded` (the split's database then query images, kept in memory) the descriptors come from there (the
    same numbers) and the end-to-end time is taken on the split's first TIMING_IMAGES image files;
    `timed=False` times nothing (a row's later seeds, whose speed is not reported: the first seed's is).
    """
    model.to(options.device)
    ms_per_image = forward_ms = matching_ms = macs = None
    with all_threads(options.threads):
        if decoded is None:
            started = time.perf_counter()
            db, queries = describe_placeset(model, spec, placeset, batch_size=options.batch_size,
                                            device=options.device, progress=options.progress)
            ms_per_image = 1000.0 * (time.perf_counter() - started) / (placeset.num_db + placeset.num_queries)
        else:
            device, num_db = torch.device(options.device), placeset.num_db
            db, queries = (describe_decoded(model, decoded, rows, spec, options.batch_size, device, options.progress)
                           for rows in (np.arange(num_db), num_db + np.arange(placeset.num_queries)))
            if timed:
                sample = (placeset.db_paths + placeset.query_paths)[:TIMING_IMAGES]
                started = time.perf_counter()
                extract_descriptors(model, sample, spec, batch_size=options.batch_size, device=options.device,
                                    progress=False)
                ms_per_image = 1000.0 * (time.perf_counter() - started) / len(sample)
        if timed:
            sample = placeset.query_paths[: min(options.batch_size, placeset.num_queries)]
            forward_ms = forward_ms_per_image(model, spec, sample, options.device) if sample else None
            matching_ms = matching_ms_per_query(db, queries)
    if timed:
        try:
            macs = multiply_adds_per_image(model.cpu())
        except Exception:  # noqa: BLE001 - a model FlopCounterMode cannot trace has no MAC count, not a failed run
            macs = None
    return Measurement(db, queries, evaluate_at(placeset, radii, db, queries), ms_per_image, forward_ms, matching_ms,
                       count_parameters(model), macs)


def measure_checkpoint(checkpoint: Path, placeset: PlaceSet, radii: Sequence[float], options: RunOptions,
                       decoded: DecodedImages | None = None, timed: bool = True) -> Measurement:
    model, meta = load_checkpoint(checkpoint)
    return measure_model(model, InputSpec.of(meta), placeset, radii, options, decoded, timed)


def measure_raw_pixels(placeset: PlaceSet, radii: Sequence[float], options: RunOptions, size: tuple[int, int]) -> Measurement:
    """The reference floor: downsampled pixels as descriptors (tscm.evaluation.raw_pixels)."""
    with all_threads(options.threads):
        started = time.perf_counter()
        db = raw_pixel_descriptors(placeset.db_paths, size)
        queries = raw_pixel_descriptors(placeset.query_paths, size)
        ms_per_image = 1000.0 * (time.perf_counter() - started) / (placeset.num_db + placeset.num_queries)
        matching_ms = matching_ms_per_query(db, queries)
    return Measurement(db, queries, evaluate_at(placeset, radii, db, queries), ms_per_image, None, matching_ms, 0, 0)


def measure_off_the_shelf(student_config: str, placeset: PlaceSet, radii: Sequence[float],
                          options: RunOptions) -> Measurement | None:
    """The free reference: the student preset's ImageNet trunk with GeM, untrained (tscm.models.pooled_trunk).

    None when that preset's trunk has no offline ImageNet weights (the tiny presets train from scratch).
    """
    config = load_config(student_config, kind="student")
    if get_preset(config.model.preset).cnn.library != "efficientnet-lite" or not config.model.pretrained:
        return None
    model = off_the_shelf_trunk(config.model.preset)
    return measure_model(model, InputSpec.of(model.config), placeset, radii, options)


def model_result(name: str, role: str, distillation: str | None, seeds: Sequence[int | None],
                 measured: Sequence[Measurement], *, walls: Sequence[float | None] | None = None,
                 label: str = "", extra: dict[str, Any] | None = None,
                 per_seed_extra: Sequence[dict[str, Any]] | None = None) -> ModelResult:
    """A report row from one measurement per seed (size and speed from the first)."""
    walls = list(walls) if walls is not None else [None] * len(measured)
    per_seed_extra = list(per_seed_extra) if per_seed_extra is not None else [{}] * len(measured)
    first = measured[0]
    return ModelResult(
        name=name, role=role, distillation=distillation, seeds=list(seeds),
        measurements=[m.seed_measurement(w, e) for m, w, e in zip(measured, walls, per_seed_extra)],
        params=first.params, multiply_adds=first.multiply_adds, ms_per_image=first.ms_per_image,
        forward_ms_per_image=first.forward_ms_per_image, matching_ms_per_query=first.matching_ms_per_query,
        descriptor_dim=first.descriptor_dim, label=label, extra=extra or {},
    )


def finish_run(run_dir: Path, data_root: Path, placeset: PlaceSet, radii: Sequence[float], models: list[ModelResult],
               descriptors: dict, *, command: str, comparisons: Sequence[tuple[str, str]] = (),
               seeds: Sequence[int] = (), wall_s: dict[str, float], notes: Sequence[str] = (),
               sections: dict[str, Any] | None = None, draw: bool = True,
               log: Callable[[str], None] = say) -> tuple[dict[str, Any], list[Path], list[str]]:
    """Save descriptors, write results.json and results.md, draw the pictures."""
    for name, (db, queries) in descriptors.items():
        save_descriptors(run_dir, name, db, queries)
    main = radii[0] if radii else None
    dataset = DatasetInfo.from_placeset(data_root, placeset, main, radii[1:])
    results = build_results(dataset, models, comparisons=comparisons, seeds=seeds, wall_s=wall_s, command=command,
                            run_dir=run_dir, notes=notes, sections=sections)
    write_results(run_dir, results)
    if not draw:
        return results, [], []
    report = draw_run_pictures(run_dir, results, placeset, descriptors)
    for failure in report.failed:
        log(f"picture failed: {failure}")
    return results, report.written, report.failed

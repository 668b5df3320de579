"""`tscm demo`: train the tiny teacher, distil the tiny student, train the same student without a
teacher, evaluate all three (and the raw-pixel reference) on the test split, write the run folder.

Also the pieces `tscm ablation` shares: data resolution, training settings, measuring a model.
Run folder: results.json / results.md / pictures (tscm.experiments.report, tscm.experiments.plots), settings.json (the
command and every knob), train/<model>/ (each training run with its config.yaml and checkpoints).
"""

from __future__ import annotations

import shlex
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from tscm.data.places import PlaceSet
from tscm.errors import TscmError
from tscm.fileio import write_json_atomic
from tscm.experiments.report import format_table

DEFAULT_DATA = "synthetic:demo"
SYNTHETIC_PREFIX = "synthetic:"
TEACHER_CONFIG = "demo_teacher"
STUDENT_CONFIG = "demo_student"
PAPER_LOSS = "tscm"  # L_hard + L_soft + L_cm, the paper's total
RADIUS_M = 25.0
PUBLISHED_RADIUS_M = 10.0
CURVE_NS = tuple(range(1, 21))
RAW_PIXEL_SIZE = 16
TRAIN_DIR = "train"
SETTINGS_FILE = "settings.json"

# `--quick`: a mechanics check in seconds (tests, smoke runs), not a measurement of learning.
QUICK_OVERRIDES = (
    "train.epochs=1",
    "train.max_queries_per_epoch=8",
    "train.batch_size=4",
    "train.patience=0",
    "mining.num_negatives=2",
    "mining.num_random=16",
    "mining.batch_size=64",
    "eval.batch_size=64",
    "run.tensorboard=false",
)


@dataclass
class RunOptions:
    """Knobs shared by `tscm demo` and `tscm ablation`."""

    out: Path
    data: str = DEFAULT_DATA
    name: str = ""  # data-set name when a folder holds several
    seed: int = 0
    epochs: int | None = None
    max_queries: int | None = None  # train queries per epoch (None: the preset's, i.e. all)
    quick: bool = False
    threads: int = 1
    device: str = "cpu"
    cache_dir: str | None = None
    batch_size: int = 64  # images per batch when describing the test split
    progress: bool = True
    overrides: list[str] = field(default_factory=list)  # section.field=value for every training run

    def to_json(self) -> dict[str, Any]:
        values = asdict(self)
        values["out"] = str(self.out)
        return values

    def command_line(self, kind: str, extra: Sequence[str] = ()) -> str:
        """`tscm <kind>` with every knob spelled out, so the run can be repeated exactly."""
        parts = ["tscm", kind, "--data", self.data, "--out", str(self.out), "--threads", str(self.threads),
                 "--device", self.device, "--batch-size", str(self.batch_size)]
        for flag, value in (("--name", self.name), ("--epochs", self.epochs), ("--max-queries", self.max_queries),
                            ("--cache-dir", self.cache_dir)):
            if value not in (None, ""):
                parts += [flag, str(value)]
        if self.quick:
            parts.append("--quick")
        if not self.progress:
            parts.append("--no-progress")
        for item in self.overrides:
            parts += ["--set", item]
        return shlex.join([*parts, *extra])


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


# ----- data -------------------------------------------------------------------------------------


def resolve_data(data: str, cache_dir: str | None = None, progress: bool = True) -> Path:
    """The data set's path; `synthetic:<preset>` generates the built-in city on first use and reuses it."""
    if not data.startswith(SYNTHETIC_PREFIX):
        path = Path(data)
        if not path.exists():
            raise TscmError(f"--data {data}: no such file or folder (or use synthetic:<preset>)")
        return path
    from tscm.data.synthetic.city import PRESETS, ensure_synthetic_city

    preset = data[len(SYNTHETIC_PREFIX) :] or "demo"
    if preset not in PRESETS:
        known = ", ".join(PRESETS)
        raise TscmError(f"--data {data}: unknown synthetic preset {preset!r}; expected one of {known}")
    return ensure_synthetic_city(preset, seed=0, cache_dir=cache_dir, progress=progress)


# ----- training ---------------------------------------------------------------------------------


def training_overrides(options: RunOptions, data_root: Path, run_dir: Path, name: str, seed: int) -> list[str]:
    """section.field=value settings of one training run: data, folder, seed, budget, then the user's."""
    items = [
        f"data.path={data_root}",
        f"run.output_dir={run_dir / TRAIN_DIR}",
        f"run.name={name}",
        f"train.seed={seed}",
        f"train.threads={options.threads}",
        f"train.device={options.device}",
        f"train.progress={str(options.progress).lower()}",
    ]
    if options.name:
        items.append(f"data.name={options.name}")
    if options.quick:
        items += QUICK_OVERRIDES
    if options.epochs is not None:
        items.append(f"train.epochs={options.epochs}")
    if options.max_queries is not None:
        items.append(f"train.max_queries_per_epoch={options.max_queries}")
    return items + list(options.overrides)


@dataclass
class TrainedModel:
    """A finished training run: the checkpoint to evaluate, and how the run went."""

    checkpoint: Path
    wall_s: float
    metrics: dict[str, Any]


def train_teacher_run(options: RunOptions, data_root: Path, run_dir: Path, seed: int, command: str) -> TrainedModel:
    from tscm.config import load_config
    from tscm.train.runs import train_teacher

    config = load_config(TEACHER_CONFIG, training_overrides(options, data_root, run_dir, "teacher", seed), kind="teacher")
    started = time.perf_counter()
    result = train_teacher(config, command_line=command)
    return TrainedModel(result.best_checkpoint, time.perf_counter() - started, result.metrics)


def train_student_run(
    options: RunOptions,
    data_root: Path,
    run_dir: Path,
    name: str,
    seed: int,
    loss: str,
    teacher: Path | None,
    command: str,
    use_last: bool = False,
) -> TrainedModel:
    """A student with loss preset `loss`; without a teacher it mines on its own descriptors.

    `use_last` evaluates the final weights (every run the same number of steps) instead of the
    best on the validation split.
    """
    from tscm.config import load_config
    from tscm.train.runs import distill

    items = training_overrides(options, data_root, run_dir, name, seed) + [f"loss.preset={loss}"]
    if teacher is None:
        items.append("mining.descriptors=student")
    config = load_config(STUDENT_CONFIG, items, kind="student")
    started = time.perf_counter()
    result = distill(config, teacher, command_line=command)
    checkpoint = result.last_checkpoint if use_last else result.best_checkpoint
    return TrainedModel(checkpoint, time.perf_counter() - started, result.metrics)


# ----- measuring ----------------------------------------------------------------------------------


@dataclass
class Measurement:
    """Descriptors of the test split and what they cost."""

    db: np.ndarray
    queries: np.ndarray
    recall: dict[int, float]
    recall_published: dict[int, float]
    ms_per_image: float
    forward_ms_per_image: float | None
    matching_ms_per_query: float
    params: int

    @property
    def descriptor_dim(self) -> int:
        return int(self.db.shape[1])


def count_parameters(model) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def matching_ms_per_query(db: np.ndarray, queries: np.ndarray, k: int = max(CURVE_NS), repeats: int = 5) -> float:
    """Exact L2 search (faiss flat) of all queries in one batch, ms per query (best of `repeats`:
    the CPU may be shared, and the fastest run is the closest to the search's own cost)."""
    import faiss

    index = faiss.IndexFlatL2(db.shape[1])
    index.add(np.ascontiguousarray(db, dtype=np.float32))
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    k = min(k, len(db))
    index.search(queries[:1], k)  # first call allocates; not the steady state
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        index.search(queries, k)
        times.append(time.perf_counter() - started)
    return 1000.0 * min(times) / len(queries)


def forward_ms_per_image(model, meta: dict[str, Any], paths: Sequence[Path], device: str, repeats: int = 5) -> float:
    """The model alone (no image decoding) on one batch of test images, ms per image (best of `repeats`)."""
    import torch

    from tscm.data.transforms import ImageListDataset

    dataset = ImageListDataset(paths, meta["image_size"], meta["mean"], meta["std"])
    batch = torch.stack([dataset[i] for i in range(len(dataset))]).to(device)
    model.eval()
    times = []
    with torch.no_grad():
        model(batch)  # warm-up
        for _ in range(repeats):
            started = time.perf_counter()
            model(batch)
            if batch.device.type == "cuda":
                torch.cuda.synchronize(batch.device)
            times.append(time.perf_counter() - started)
    return 1000.0 * min(times) / len(paths)


def chance_recall_at_1(placeset: PlaceSet, radius_m: float = RADIUS_M) -> float:
    """Expected Recall@1 (percent) of a random ranking: the mean share of true matches in the database."""
    shares = [len(p) / placeset.num_db for p in placeset.positives(radius_m) if len(p)]
    return 100.0 * float(np.mean(shares)) if shares else 0.0


def _recalls(placeset: PlaceSet, db: np.ndarray, queries: np.ndarray) -> tuple[dict[int, float], dict[int, float]]:
    from tscm.evaluation.recall import evaluate_descriptors

    at_25 = evaluate_descriptors(placeset, db, queries, radius_m=RADIUS_M, ns=CURVE_NS).recall
    if not any(len(p) for p in placeset.positives(PUBLISHED_RADIUS_M)):
        return at_25, {}  # no query has a database image within 10 m: the published protocol is undefined
    at_10 = evaluate_descriptors(placeset, db, queries, radius_m=PUBLISHED_RADIUS_M, ns=CURVE_NS).recall
    return at_25, at_10


def measure_checkpoint(checkpoint: Path, placeset: PlaceSet, options: RunOptions) -> Measurement:
    """Describe the test split with the checkpoint's model (timed end to end), then Recall@N and matching."""
    from tscm.models.checkpoint import load_checkpoint
    from tscm.evaluation.recall import extract_descriptors

    model, meta = load_checkpoint(checkpoint)
    model.to(options.device)
    settings = dict(image_size=meta["image_size"], mean=meta["mean"], std=meta["std"], batch_size=options.batch_size,
                    device=options.device, progress=options.progress)
    with _threads(options.threads):
        started = time.perf_counter()
        db = extract_descriptors(model, placeset.db_paths, **settings)
        queries = extract_descriptors(model, placeset.query_paths, **settings)
        ms_per_image = 1000.0 * (time.perf_counter() - started) / (placeset.num_db + placeset.num_queries)
        sample = placeset.query_paths[: min(options.batch_size, placeset.num_queries)]
        forward_ms = forward_ms_per_image(model, meta, sample, options.device) if sample else None
        matching_ms = matching_ms_per_query(db, queries)
    recall, recall_published = _recalls(placeset, db, queries)
    return Measurement(db, queries, recall, recall_published, ms_per_image, forward_ms, matching_ms,
                       count_parameters(model))


def measure_raw_pixels(placeset: PlaceSet, options: RunOptions, size: int = RAW_PIXEL_SIZE) -> Measurement:
    """The reference floor: downsampled pixels as descriptors (tscm.evaluation.raw_pixels)."""
    from tscm.evaluation.raw_pixels import raw_pixel_descriptors

    with _threads(options.threads):
        started = time.perf_counter()
        db = raw_pixel_descriptors(placeset.db_paths, size)
        queries = raw_pixel_descriptors(placeset.query_paths, size)
        ms_per_image = 1000.0 * (time.perf_counter() - started) / (placeset.num_db + placeset.num_queries)
        matching_ms = matching_ms_per_query(db, queries)
    recall, recall_published = _recalls(placeset, db, queries)
    return Measurement(db, queries, recall, recall_published, ms_per_image, None, matching_ms, 0)


class _threads:
    """Torch and faiss CPU threads set for a block (timings depend on them), restored after."""

    def __init__(self, count: int) -> None:
        self.count = count

    def __enter__(self) -> None:
        import faiss
        import torch

        self.previous = (torch.get_num_threads(), faiss.omp_get_max_threads())
        if self.count > 0:
            torch.set_num_threads(self.count)
            faiss.omp_set_num_threads(self.count)

    def __exit__(self, *exc) -> None:
        import faiss
        import torch

        torch.set_num_threads(self.previous[0])
        faiss.omp_set_num_threads(self.previous[1])


def model_result(name: str, role: str, distillation: str | None, measured: Measurement, *, seed: int | None,
                 wall_s: float | None, extra: dict[str, Any] | None = None):
    """A report.ModelResult from a measurement; the 10 m recall and forward-only time go in extra fields."""
    from tscm.experiments.report import ModelResult

    fields = {
        "recall_10m": {str(n): v for n, v in measured.recall_published.items()},
        "forward_ms_per_image": measured.forward_ms_per_image,
        "timing_note": "ms_per_image: test-split extraction incl. image decoding; matching: exact L2, one batch",
    }
    fields.update(extra or {})
    return ModelResult(
        name=name, role=role, distillation=distillation, recall=measured.recall, params=measured.params,
        ms_per_image=measured.ms_per_image, matching_ms_per_query=measured.matching_ms_per_query,
        descriptor_dim=measured.descriptor_dim, seed=seed, wall_s=wall_s, extra=fields,
    )


def training_summary(trained: TrainedModel, run_dir: Path) -> dict[str, Any]:
    metrics = trained.metrics
    return {
        "checkpoint": str(trained.checkpoint.relative_to(run_dir)) if trained.checkpoint.is_relative_to(run_dir)
        else str(trained.checkpoint),
        "steps": metrics.get("steps"),
        "epochs_completed": metrics.get("epochs_completed"),
        "best_epoch": metrics.get("best_epoch"),
        "best_val_recall_at_1": metrics.get("best_val_recall_at_1"),
        "stopped": metrics.get("stopped"),
    }


# ----- the demo -----------------------------------------------------------------------------------


@dataclass
class DemoOutcome:
    run_dir: Path
    results: dict[str, Any]
    pictures: list[Path]
    picture_failures: list[str]


def finish_run(run_dir: Path, data_root: Path, placeset: PlaceSet, models: list, descriptors: dict,
               *, command: str, ablation: Sequence = (), seeds: Sequence[int] = (), wall_s: dict[str, float],
               notes: Sequence[str] = (), draw: bool = True) -> tuple[dict[str, Any], list[Path], list[str]]:
    """Save descriptors, write results.json and results.md (notes appended), draw the pictures."""
    from tscm.fileio import write_text_atomic
    from tscm.experiments.plots import draw_run_pictures
    from tscm.experiments.report import DatasetInfo, build_results, format_markdown, save_descriptors, write_results

    for name, (db, queries) in descriptors.items():
        save_descriptors(run_dir, name, db, queries)
    dataset = DatasetInfo.from_placeset(data_root, placeset, RADIUS_M)
    results = build_results(dataset, models, ablation=ablation, seeds=seeds, wall_s=wall_s,
                             command=command, run_dir=run_dir)
    if notes:
        results["notes"] = list(notes)
    _, md_path = write_results(run_dir, results)
    if notes:
        write_text_atomic(md_path, format_markdown(results) + "\n## Notes\n\n" + "".join(f"- {n}\n" for n in notes))
    if not draw:
        return results, [], []
    report = draw_run_pictures(run_dir, results, placeset, descriptors)
    return results, report.written, report.failed


def run_demo(options: RunOptions, log: Callable[[str], None] = say) -> DemoOutcome:
    """Teacher, distilled student (paper loss), student without distillation, raw pixels; one table."""
    from tscm.data.formats import load_placeset

    started = time.perf_counter()
    run_dir = prepare_run_dir(options.out)
    wall: dict[str, float] = {}
    command = options.command_line("demo", ["--seed", str(options.seed)])
    settings = {"command": command, "kind": "demo", "options": options.to_json(),
                "teacher_config": TEACHER_CONFIG, "student_config": STUDENT_CONFIG, "distillation": PAPER_LOSS}
    write_json_atomic(run_dir / SETTINGS_FILE, settings)
    log(f"tscm demo → {run_dir}\n  command: {settings['command']}\n  settings: {options.to_json()}")

    log("[1/6] data set")
    tic = time.perf_counter()
    data_root = resolve_data(options.data, options.cache_dir, options.progress)
    test_set = load_placeset(data_root, "test", name=options.name or None)
    wall["data"] = time.perf_counter() - tic
    log(f"  {data_root}: {test_set.summary()}")
    settings["data_root"] = str(data_root)
    write_json_atomic(run_dir / SETTINGS_FILE, settings)

    log("[2/6] raw-pixel reference")
    raw = measure_raw_pixels(test_set, options)

    log("[3/6] training the teacher")
    teacher = train_teacher_run(options, data_root, run_dir, options.seed, command)
    wall["teacher"] = teacher.wall_s
    log("[4/6] distilling the student (loss: tscm = L_hard + L_soft + L_cm)")
    student = train_student_run(options, data_root, run_dir, "student-tscm", options.seed, PAPER_LOSS, teacher.checkpoint,
                                command)
    wall["student-tscm"] = student.wall_s
    log("[5/6] training the same student without distillation (triplet only, mining on its own descriptors)")
    baseline = train_student_run(options, data_root, run_dir, "student-baseline", options.seed, "none", None,
                                 command)
    wall["student-baseline"] = baseline.wall_s

    log("[6/6] evaluating on the test split")
    measured = {
        "teacher": measure_checkpoint(teacher.checkpoint, test_set, options),
        "student-tscm": measure_checkpoint(student.checkpoint, test_set, options),
        "student-baseline": measure_checkpoint(baseline.checkpoint, test_set, options),
    }
    models = [
        model_result("teacher", "teacher", None, measured["teacher"], seed=options.seed, wall_s=teacher.wall_s,
                     extra={"training": training_summary(teacher, run_dir)}),
        model_result("student-tscm", "student", PAPER_LOSS, measured["student-tscm"], seed=options.seed,
                     wall_s=student.wall_s, extra={"training": training_summary(student, run_dir)}),
        model_result("student-baseline", "student", None, measured["student-baseline"], seed=options.seed,
                     wall_s=baseline.wall_s, extra={"training": training_summary(baseline, run_dir)}),
        model_result("raw-pixels", "reference", None, raw, seed=None, wall_s=None,
                     extra={"raw_pixel_size": RAW_PIXEL_SIZE}),
    ]
    descriptors = {name: (m.db, m.queries) for name, m in measured.items()}
    descriptors["raw-pixels"] = (raw.db, raw.queries)
    wall["total_before_pictures"] = time.perf_counter() - started
    notes = [
        "Checkpoints evaluated: the best epoch on the validation split (the test split is only reported).",
        f"Chance level (random ranking): R@1 {chance_recall_at_1(test_set):.1f} % on this test split.",
        "student-baseline: the same student preset and schedule, loss triplet only (L_hard), hard negatives "
        "mined on its own descriptors; no teacher involved.",
        f"Timings on this machine with {options.threads} thread(s), device {options.device}; other work may "
        "have shared the CPU.",
    ]
    results, pictures, failures = finish_run(run_dir, data_root, test_set, models, descriptors, command=command,
                                             seeds=[options.seed], wall_s=wall, notes=notes)
    print(format_table(results))
    for failure in failures:
        log(f"picture failed: {failure}")
    log(f"wrote {run_dir / 'results.json'}, {run_dir / 'results.md'} and {len(pictures)} picture(s); "
        f"{time.perf_counter() - started:.0f} s in all")
    return DemoOutcome(run_dir, results, pictures, failures)

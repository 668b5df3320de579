"""The built-in synthetic city: a procedural street data set written in the Pittsburgh layout.

Streets of distinctive buildings are photographed twice: a database traversal (every few metres,
several headings) and a query traversal from another lane under other light, weather and
traffic. Splits use different streets, far apart. Everything follows from the seed: each image
draws from its own generator, so the bytes do not depend on worker count or order.
"""

from __future__ import annotations

import io
import json
import math
import multiprocessing
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, fields, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io
from PIL import Image
from tqdm import tqdm

from tscm.data.synthetic.render import Camera, Conditions, Street, hsv_to_rgb, make_street, render
from tscm.errors import TscmError
from tscm.fileio import DISK_ERRNOS, atomic_path, check_output_folder, exchange_paths, read_json, real_path, write_json_atomic

SPLITS = ("train", "val", "test")
FORMAT = "tscm-synthetic-city"
FORMAT_VERSION = 2  # bump whenever the same knobs and seed would render different files
METADATA_FILE = "synth.json"
ORIGIN_EASTING, ORIGIN_NORTHING = 585_000.0, 4_477_000.0  # UTM-like, roughly where Pittsburgh lies
STREET_GAP_M = 300.0  # free ground between the cells holding two streets
DB_LANE_M = -2.5  # the database vehicle drives in the right-hand lane
POS_DIST_THR_M = 25.0
NON_TRIV_POS_DIST_SQ_THR = 100.0
CHUNK = 48  # images per multiprocessing task
AUTO_PARALLEL_IMAGES = 2000  # below this, starting worker processes costs more than it saves

# Tags that keep the random streams for different purposes apart.
_SCENE, _PLAN, _TRAVERSAL, _SHOT = 1, 2, 3, 4


@dataclass(frozen=True)
class SynthConfig:
    """Size and difficulty knobs of a synthetic city."""

    name: str = "synth"
    image_size: int = 64
    streets_train: int = 8
    streets_val: int = 2
    streets_test: int = 3
    street_length_m: float = 400.0
    db_spacing_m: float = 5.0
    db_headings: int = 4  # evenly spaced views per database place; 4 → every 90°
    query_spacing_m: float = 5.0
    query_headings: int = 2  # drawn per query place from the database headings
    query_lateral_min_m: float = 3.0  # the query lane lies this far left of the database lane…
    query_lateral_max_m: float = 6.0  # …up to this far
    difficulty: float = 0.5  # 0: same conditions as the database; 1: strong weather, light and traffic change
    fov_deg: float = 90.0
    supersample: int = 2
    jpeg_quality: int = 90

    def streets(self, split: str) -> int:
        return {"train": self.streets_train, "val": self.streets_val, "test": self.streets_test}[split]

    @property
    def num_streets(self) -> int:
        return self.streets_train + self.streets_val + self.streets_test


PRESETS: dict[str, SynthConfig] = {
    "tiny": SynthConfig(image_size=32, streets_train=1, streets_val=1, streets_test=1, street_length_m=60.0,
                        supersample=1),
    # Train and val as always (8 and 2 streets); 16 test streets (5,120 database images, 2,560 queries), so
    # one run's binomial standard error at Recall@1 is at most 1 point (0.99 at 50 %). The streets_test knob
    # is part of synth.json, so a cached 3-street demo city is regenerated, not reused.
    "demo": SynthConfig(streets_test=16),
    # The demo city with 10 test streets (3,200 database images, 1,600 queries): one run's standard
    # error at Recall@1 is about a point, as the distillation ablation needs.
    "ablation": SynthConfig(streets_test=10),
    "medium": SynthConfig(image_size=96, streets_train=16, streets_val=4, streets_test=4, street_length_m=500.0),
    # Pittsburgh30k: about 10,000 database images and 7,000 queries per split.
    "pitts30k-scale": SynthConfig(streets_train=25, streets_val=25, streets_test=25,
                                  street_length_m=500.0, query_spacing_m=3.6),
}


def resolve_config(preset: str, **overrides: Any) -> SynthConfig:
    """The preset's knobs with `overrides` (None values ignored), checked."""
    if preset not in PRESETS:
        raise TscmError(f"unknown synthetic preset {preset!r}; expected one of {', '.join(PRESETS)}")
    known = {f.name for f in fields(SynthConfig)}
    unknown = set(overrides) - known
    if unknown:
        raise TscmError(f"unknown synthetic city knob(s) {sorted(unknown)}; expected some of {sorted(known)}")
    config = replace(PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None})
    _check(config)
    return config


def _check(config: SynthConfig) -> None:
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise TscmError(f"synthetic city: {what}")

    for name in ("street_length_m", "db_spacing_m", "query_spacing_m", "query_lateral_min_m", "query_lateral_max_m",
                 "difficulty", "fov_deg"):
        value = getattr(config, name)
        need(isinstance(value, (int, float)) and math.isfinite(value), f"{name} must be a finite number, got {value}")
    need(config.image_size >= 8, f"image_size must be at least 8 px, got {config.image_size}")
    for split in SPLITS:
        need(config.streets(split) >= 1, f"streets_{split} must be at least 1, got {config.streets(split)}")
    need(config.street_length_m >= 2 * config.db_spacing_m, "street_length_m must hold at least two database places")
    need(config.db_spacing_m > 0 and config.query_spacing_m > 0, "spacings must be positive metres")
    need(config.db_headings in (1, 2, 3, 4, 6, 12),
         f"db_headings must divide 12 (headings are multiples of 30°), got {config.db_headings}")
    need(1 <= config.query_headings <= config.db_headings,
         f"query_headings must be between 1 and db_headings ({config.db_headings}), got {config.query_headings}")
    need(0 <= config.query_lateral_min_m <= config.query_lateral_max_m <= 7.0,
         "query lateral offsets must satisfy 0 <= min <= max <= 7 m (queries stay on the road)")
    need(0.0 <= config.difficulty <= 2.0, f"difficulty must lie in [0, 2], got {config.difficulty}")
    need(30.0 <= config.fov_deg <= 120.0, f"fov_deg must lie in [30, 120], got {config.fov_deg}")
    need(1 <= config.supersample <= 4, f"supersample must be 1..4, got {config.supersample}")
    need(1 <= config.jpeg_quality <= 100, f"jpeg_quality must be 1..100, got {config.jpeg_quality}")


@dataclass(frozen=True)
class Shot:
    """One image to render: where it is taken, which way it looks, and where it is stored."""

    street: int
    traversal: int  # 0 database, 1 query
    place: int
    heading_rel: int  # nominal degrees clockwise from looking along the street
    s: float
    l: float
    easting: float
    northing: float
    rel_path: str


def _street_frame(config: SynthConfig, seed: int, street: int) -> tuple[np.ndarray, np.ndarray, int]:
    """World position of the street's start, its unit direction (east, north), and its bearing."""
    bearing = 30 * int(np.random.default_rng([seed, _PLAN, street, 0]).integers(0, 12))
    cols = math.ceil(math.sqrt(config.num_streets))
    cell = config.street_length_m + STREET_GAP_M
    centre = np.array([ORIGIN_EASTING + (street % cols) * cell, ORIGIN_NORTHING + (street // cols) * cell])
    direction = np.array([math.sin(math.radians(bearing)), math.cos(math.radians(bearing))])
    return centre - direction * config.street_length_m / 2, direction, bearing


def plan_street(config: SynthConfig, seed: int, street: int) -> tuple[list[Shot], list[Shot]]:
    """The database and query shots of one street."""
    start, direction, bearing = _street_frame(config, seed, street)
    left = np.array([-direction[1], direction[0]])
    rng = np.random.default_rng([seed, _PLAN, street, 1])
    headings = [i * 360 // config.db_headings for i in range(config.db_headings)]

    def shot(traversal: int, place: int, heading: int, s: float, l: float) -> Shot:
        xy = start + s * direction + l * left
        yaw_index = ((bearing + heading) % 360) // 30 + 1
        return Shot(street, traversal, place, heading, s, l, float(xy[0]), float(xy[1]),
                    f"street{street:02d}/{place:06d}_pitch1_yaw{yaw_index}.jpg")

    database = []
    for place in range(int(config.street_length_m // config.db_spacing_m)):
        s = (place + 0.5) * config.db_spacing_m + rng.uniform(-0.5, 0.5)
        l = DB_LANE_M + rng.uniform(-0.3, 0.3)
        database += [shot(0, place, heading, s, l) for heading in headings]
    queries = []
    for place in range(int(config.street_length_m // config.query_spacing_m)):
        s = (place + rng.uniform(0.0, 1.0)) * config.query_spacing_m
        l = DB_LANE_M + rng.uniform(config.query_lateral_min_m, config.query_lateral_max_m)
        chosen = sorted(rng.choice(headings, size=config.query_headings, replace=False).tolist())
        queries += [shot(1, place, int(heading), s, l) for heading in chosen]
    return database, queries


def split_streets(config: SynthConfig) -> dict[str, list[int]]:
    """Street indices of each split: consecutive blocks, so each split is its own district."""
    result, first = {}, 0
    for split in SPLITS:
        result[split] = list(range(first, first + config.streets(split)))
        first += config.streets(split)
    return result


@lru_cache(maxsize=4)
def _street(seed: int, street: int, length_m: float) -> Street:
    return make_street(np.random.default_rng([seed, _SCENE, street]), length_m)


@lru_cache(maxsize=64)
def _traversal_base(config: SynthConfig, seed: int, street: int, traversal: int) -> dict[str, Any]:
    """Light and weather shared by one traversal of one street (a time of day, a season).

    The database traversal sees the street's reference day; the query traversal departs from
    it by an amount that grows with the difficulty (0: the same light and weather).
    """
    day = np.random.default_rng([seed, _TRAVERSAL, street, 0])
    sun_azimuth, sun_elevation = day.uniform(0.0, 360.0), day.uniform(20.0, 60.0)
    sky_hsv = np.array([day.uniform(0.55, 0.62), day.uniform(0.3, 0.6), day.uniform(0.75, 0.95)])
    direct, ambient = day.uniform(0.6, 0.9), day.uniform(0.35, 0.5)
    if traversal == 0:
        rng, d, overcast = day, 0.15 * config.difficulty, False
    else:
        rng, d = np.random.default_rng([seed, _TRAVERSAL, street, 1]), config.difficulty
        sun_azimuth += rng.uniform(-1.0, 1.0) * min(180.0, 360.0 * d)
        sun_elevation = float(np.clip(sun_elevation + rng.normal(0.0, 25.0 * d), 10.0, 70.0))
        sky_hsv += rng.normal(0.0, 1.0, 3) * np.array([0.03, 0.2, 0.1]) * d
        overcast = bool(rng.random() < 0.4 * d)
    if overcast:
        direct, ambient, sky_hsv[1] = 0.2, 0.75, 0.0
    sky = hsv_to_rgb(*(np.clip(sky_hsv, 0.0, 1.0)[:, None]))[0]
    return {
        "sun_azimuth_deg": float(sun_azimuth),
        "sun_elevation_deg": float(sun_elevation),
        "ambient": np.full(3, ambient),
        "direct": np.array([1.0, 0.95, 0.85]) * direct,
        "sky_rgb": sky,
        "haze_rgb": np.clip(sky * 0.5 + 0.42, 0.0, 1.0),
        "visibility_m": float(500.0 * math.exp(-rng.uniform(0.0, 3.0 * d))),
        "gain": np.exp(rng.normal(0.0, 0.2 * d, 3) + rng.normal(0.0, 0.25 * d)),
        "gamma": float(math.exp(rng.normal(0.0, 0.25 * d))),
    }


def _boxes(rng: np.random.Generator, camera: Camera, street: Street, count: int) -> np.ndarray:
    """Moving vehicles and pedestrians near the camera, never around it."""
    half = street.width_m / 2
    boxes = []
    for _ in range(count):
        kind = rng.random()
        s0 = camera.s + rng.uniform(-25.0, 25.0)
        if kind < 0.6:  # car
            length, width, height = rng.uniform(3.8, 5.0), 1.8, rng.uniform(1.4, 1.9)
            centre = rng.choice([-2.5, 2.5]) + rng.uniform(-0.4, 0.4)
        elif kind < 0.75:  # bus or van
            length, width, height = rng.uniform(6.0, 12.0), 2.5, rng.uniform(2.5, 3.3)
            centre = rng.choice([-2.5, 2.5]) + rng.uniform(-0.3, 0.3)
        else:  # pedestrian on a sidewalk
            length, width, height = 0.5, 0.5, rng.uniform(1.5, 1.9)
            centre = rng.choice([-1.0, 1.0]) * (half - rng.uniform(0.5, 2.5))
        rgb = hsv_to_rgb(rng.random(1), rng.uniform(0.0, 0.9, 1), rng.uniform(0.1, 0.9, 1))[0]
        box = np.array([s0, s0 + length, centre - width / 2, centre + width / 2, height, *rgb])
        clear = 1.0
        if box[0] - clear < camera.s < box[1] + clear and box[2] - clear < camera.l < box[3] + clear:
            continue
        boxes.append(box)
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 8)


def _render_shot(config: SynthConfig, seed: int, shot: Shot) -> np.ndarray:
    street = _street(seed, shot.street, config.street_length_m)
    base = _traversal_base(config, seed, shot.street, shot.traversal)
    rng = np.random.default_rng([seed, _SHOT, shot.street, shot.traversal, shot.place, shot.heading_rel])
    d = config.difficulty if shot.traversal == 1 else 0.3 * config.difficulty
    camera = Camera(
        s=shot.s, l=shot.l, height=float(rng.uniform(2.0, 2.6)),
        yaw_deg=shot.heading_rel + float(rng.normal(0.0, 1.0 + 6.0 * d)),
        pitch_deg=6.0 + float(rng.normal(0.0, 1.0 + 3.0 * d)), fov_deg=config.fov_deg,
    )
    exposure = math.exp(rng.normal(0.0, 0.05 + 0.1 * d))
    conditions = Conditions(
        sun_azimuth_deg=base["sun_azimuth_deg"], sun_elevation_deg=base["sun_elevation_deg"],
        ambient=base["ambient"] * exposure, direct=base["direct"] * exposure * float(rng.uniform(1 - 0.5 * d, 1.0)),
        sky_rgb=base["sky_rgb"], haze_rgb=base["haze_rgb"],
        visibility_m=base["visibility_m"] * math.exp(rng.normal(0.0, 0.3 * d)),
        gain=base["gain"] * np.exp(rng.normal(0.0, 0.05 * d, 3)), gamma=base["gamma"],
        blur_px=float(rng.uniform(0.0, 1.2 * d)) * config.image_size / 64,
        noise_std=float(rng.uniform(0.0, 0.04 * d)),
        boxes=_boxes(rng, camera, street, int(rng.poisson(1.0 + 5.0 * d))),
    )
    return render(street, camera, conditions, config.image_size, config.supersample, rng)


def _render_chunk(task: tuple[SynthConfig, int, str, list[Shot]]) -> int:
    config, seed, root, shots = task
    for shot in shots:
        folder = "database" if shot.traversal == 0 else "query"
        path = Path(root) / folder / shot.rel_path
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_render_shot(config, seed, shot)).save(path, format="JPEG", quality=config.jpeg_quality)
    return len(shots)


def _mat_bytes(struct: dict[str, Any], description: str) -> bytes:
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, {"dbStruct": struct}, format="5", oned_as="column")
    data = bytearray(buffer.getvalue())
    # savemat stamps the creation time into the 116-byte header; a fixed text keeps the file reproducible.
    data[:116] = description.encode("ascii")[:116].ljust(116, b" ")
    return bytes(data)


def _write_mat(path: Path, split: str, database: list[Shot], queries: list[Shot], seed: int) -> None:
    def names(shots: list[Shot]) -> np.ndarray:
        array = np.empty((len(shots), 1), dtype=object)
        array[:, 0] = [s.rel_path for s in shots]
        return array

    def utm(shots: list[Shot]) -> np.ndarray:
        return np.array([[s.easting for s in shots], [s.northing for s in shots]], dtype=np.float64)

    struct = {
        "whichSet": split,
        "dbImageFns": names(database),
        "utmDb": utm(database),
        "qImageFns": names(queries),
        "utmQ": utm(queries),
        "numImages": float(len(database)),
        "numQueries": float(len(queries)),
        "posDistThr": POS_DIST_THR_M,
        "posDistSqThr": POS_DIST_THR_M**2,
        "nonTrivPosDistSqThr": NON_TRIV_POS_DIST_SQ_THR,
    }
    with atomic_path(path) as tmp:
        tmp.write_bytes(_mat_bytes(struct, f"MATLAB 5.0 MAT-file, tscm synthetic city, seed {seed}"))


def _metadata(config: SynthConfig, preset: str, seed: int) -> dict[str, Any]:
    return {"format": FORMAT, "version": FORMAT_VERSION, "preset": preset, "seed": seed, "knobs": asdict(config)}


def _render_all(config: SynthConfig, seed: int, root: Path, shots: list[Shot], workers: int | None,
                progress: bool) -> None:
    if workers is None:
        workers = 1 if len(shots) < AUTO_PARALLEL_IMAGES else min(os.cpu_count() or 1, 8)
    tasks = [(config, seed, str(root), shots[i : i + CHUNK]) for i in range(0, len(shots), CHUNK)]
    with tqdm(total=len(shots), unit="img", desc="rendering", disable=not progress) as bar:
        if workers <= 1:
            for task in tasks:
                bar.update(_render_chunk(task))
        else:
            # fork where the OS has it: workers need no importable __main__ (scripts without a main
            # guard work) and use only numpy and Pillow, as DataLoader workers do under torch.
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            with multiprocessing.get_context(method).Pool(workers) as pool:
                for done in pool.imap_unordered(_render_chunk, tasks):
                    bar.update(done)


def _write_city(root: Path, config: SynthConfig, preset: str, seed: int, workers: int | None,
                progress: bool) -> dict:
    started = time.perf_counter()
    counts: dict[str, Any] = {}
    all_shots: list[Shot] = []
    for split, streets in split_streets(config).items():
        database, queries = [], []
        for street in streets:
            street_db, street_q = plan_street(config, seed, street)
            database += street_db
            queries += street_q
        _write_mat(root / f"{config.name}_{split}.mat", split, database, queries, seed)
        counts[split] = {"streets": streets, "database": len(database), "queries": len(queries)}
        all_shots += database + queries
    _render_all(config, seed, root, all_shots, workers, progress)
    metadata = _metadata(config, preset, seed)
    metadata["counts"] = counts
    write_json_atomic(root / METADATA_FILE, metadata)
    seconds = time.perf_counter() - started
    return {"images": len(all_shots), "seconds": seconds, "counts": counts}


def generate_synthetic_city(out_dir: str | os.PathLike, preset: str = "demo", seed: int = 0,
                            config: SynthConfig | None = None, workers: int | None = None, progress: bool = True,
                            overwrite: bool = False) -> dict:
    """Write a synthetic city to `out_dir` (Pittsburgh layout plus synth.json); return counts and seconds.

    `workers` rendering processes (None: one per CPU core, up to 8, for cities of 2,000 images or
    more); the files are identical whatever the number.

    The city is built in a hidden sibling directory and renamed into place at the end, so an
    interrupted run leaves nothing half-written. An existing `out_dir` is replaced only when
    `overwrite` is set and it is empty or a synthetic city itself.
    """
    out_dir = Path(out_dir)
    config = config or resolve_config(preset)
    _check(config)
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise TscmError(f"workers: expected a number of rendering processes ≥ 1, got {workers!r}")
    check_output_folder("OUT", out_dir, ())  # a dangling link or a loop would fail only after the rendering
    # A link to a folder: the city goes where it leads (the swap into place would replace the link itself).
    out_dir = real_path(out_dir)
    if out_dir.parent.is_dir():
        _recover_retired(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise TscmError(f"{out_dir}: exists and is a file; give a folder to create")
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise TscmError(f"{out_dir}: directory exists and is not empty; choose another or pass overwrite")
        if not (out_dir / METADATA_FILE).is_file():
            raise TscmError(f"{out_dir}: refusing to overwrite a directory that holds no {METADATA_FILE}")
        foreign = _foreign_files(out_dir)
        if foreign:
            raise TscmError(f"{out_dir}: refusing to overwrite: it holds files a synthetic city does not write "
                            f"({', '.join(str(p) for p in foreign[:3])}{', ...' if len(foreign) > 3 else ''}); move them first")
    staging = out_dir.parent / f".{out_dir.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        staging.mkdir()
        summary = _write_city(staging, config, preset, seed, workers, progress)
        _swap_into_place(staging, out_dir)
    except OSError as error:  # a full disk or a read-only folder: one line, the old city (if any) intact
        if error.errno not in DISK_ERRNOS:
            raise
        kept = "the previous city is kept" if out_dir.exists() else "nothing was written"
        raise TscmError(f"{out_dir}: the city could not be written: {os.strerror(error.errno)} ({kept})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return summary


def _foreign_files(root: Path) -> list[Path]:
    """Files under `root` that no synthetic city writes (a user's own files must survive an overwrite)."""
    foreign = []
    for path in root.rglob("*"):
        relative = path.relative_to(root)
        if path.is_dir():
            continue
        top = relative.parts[0]
        if len(relative.parts) == 1 and (top == METADATA_FILE or path.suffix == ".mat"):
            continue
        if top in ("database", "query") and path.suffix.lower() in (".jpg", ".jpeg", ".png"):
            continue
        foreign.append(relative)
    return sorted(foreign)


def _swap_into_place(staging: Path, target: Path) -> None:
    """Put the finished city at `target`; a kill at any moment leaves the old city or the new one there."""
    if not target.exists():
        os.replace(staging, target)
        return
    if exchange_paths(staging, target):
        shutil.rmtree(staging, ignore_errors=True)  # it now holds the old city
        return
    # Two renames where the file system cannot swap: `_recover_retired` puts the old city back if a
    # crash falls between them.
    retired = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
    os.replace(target, retired)
    os.replace(staging, target)
    shutil.rmtree(retired, ignore_errors=True)


def _recover_retired(target: Path) -> None:
    """A city retired by an interrupted two-rename swap goes back to `target` (which it left)."""
    if target.exists():
        return
    retired = sorted(target.parent.glob(f".{target.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if retired and (retired[-1] / METADATA_FILE).is_file():
        os.replace(retired[-1], target)


def city_matches(root: Path, preset: str, seed: int, config: SynthConfig) -> bool:
    """Whether `root` holds a complete city generated with exactly these settings."""
    try:
        stored = read_json(root / METADATA_FILE, "city metadata")
    except TscmError:
        return False
    if not isinstance(stored, dict):
        return False
    expected = json.loads(json.dumps(_metadata(config, preset, seed)))
    if any(stored.get(key) != value for key, value in expected.items()):
        return False
    return all((root / f"{config.name}_{split}.mat").is_file() for split in SPLITS)


def default_cache_dir() -> Path:
    """`$TSCM_CACHE` if set, else ~/.cache/tscm."""
    return Path(os.environ.get("TSCM_CACHE") or Path.home() / ".cache" / "tscm")


def ensure_synthetic_city(preset: str = "demo", seed: int = 0, cache_dir: str | os.PathLike | None = None,
                          workers: int | None = None, progress: bool = True) -> Path:
    """Path of the cached city `<cache_dir>/synth-<preset>-seed<seed>`, generating it on first use."""
    config = resolve_config(preset)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / f"synth-{preset}-seed{seed}"
    if root.is_dir():
        _recover_retired(target)
    if city_matches(target, preset, seed, config):
        return target
    if target.exists() and any(target.iterdir()) and not (target / METADATA_FILE).is_file():
        raise TscmError(f"{target}: exists but is not a synthetic city (no {METADATA_FILE}); move it away")
    generate_synthetic_city(target, preset, seed, config, workers=workers, progress=progress, overwrite=True)
    return target

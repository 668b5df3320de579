"""The synthetic city: layout, determinism, geography, caching and the renderer's geometry."""

from __future__ import annotations

import json
import math
import re
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image
from scipy.spatial import cKDTree

from tscm.data.synthetic import city as synthetic
from tscm.data.synthetic.city import (
    PRESETS,
    SPLITS,
    ensure_synthetic_city,
    generate_synthetic_city,
    plan_street,
    resolve_config,
    split_streets,
)
from tscm.data.synthetic.render import Camera, Conditions, Facades, Street, render
from tscm.errors import TscmError

MAT_FIELDS = ["whichSet", "dbImageFns", "utmDb", "qImageFns", "utmQ", "numImages", "numQueries",
              "posDistThr", "posDistSqThr", "nonTrivPosDistSqThr"]
YAW = re.compile(r"^street\d{2,}/\d{6}_pitch1_yaw(\d+)\.jpg$")


@pytest.fixture(scope="module")
def tiny_city(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    out = tmp_path_factory.mktemp("city") / "tiny"
    started = time.perf_counter()
    generate_synthetic_city(out, "tiny", seed=3, progress=False)
    return out, time.perf_counter() - started


@lru_cache(maxsize=4)
def _plans(config: synthetic.SynthConfig, seed: int) -> dict[str, tuple[list, list]]:
    plans = {}
    for split, streets in split_streets(config).items():
        database, queries = [], []
        for street in streets:
            db, q = plan_street(config, seed, street)
            database += db
            queries += q
        plans[split] = (database, queries)
    return plans


def _xy(shots: list) -> np.ndarray:
    return np.array([[s.easting, s.northing] for s in shots])


def test_tiny_city_renders_fast(tiny_city: tuple[Path, float]) -> None:
    out, seconds = tiny_city
    images = sum(1 for _ in out.rglob("*.jpg"))
    assert images == 3 * (12 * 4 + 12 * 2)
    assert seconds < 10.0, f"tiny city took {seconds:.1f} s"  # about 1 s alone; the CPU is shared


def test_mat_layout_field_order_and_types(tiny_city: tuple[Path, float]) -> None:
    out, _ = tiny_city
    config = PRESETS["tiny"]
    for split in SPLITS:
        struct = scipy.io.loadmat(out / f"synth_{split}.mat")["dbStruct"]
        assert list(struct.dtype.names) == MAT_FIELDS
        s = struct[0, 0]
        assert str(s["whichSet"][0]) == split
        db_names = [str(cell[0]) for cell in s["dbImageFns"][:, 0]]
        q_names = [str(cell[0]) for cell in s["qImageFns"][:, 0]]
        num_db, num_q = len(db_names), len(q_names)
        assert s["utmDb"].shape == (2, num_db) and s["utmDb"].dtype == np.float64
        assert s["utmQ"].shape == (2, num_q) and s["utmQ"].dtype == np.float64
        assert float(s["numImages"][0, 0]) == num_db == 12 * 4
        assert float(s["numQueries"][0, 0]) == num_q == 12 * 2
        assert float(s["posDistThr"][0, 0]) == 25.0
        assert float(s["posDistSqThr"][0, 0]) == 625.0
        assert float(s["nonTrivPosDistSqThr"][0, 0]) == 100.0
        for folder, names in (("database", db_names), ("query", q_names)):
            assert len(set(names)) == len(names)
            for name in names:
                match = YAW.match(name)
                assert match and 1 <= int(match.group(1)) <= 12, name
                with Image.open(out / folder / name) as image:
                    assert image.format == "JPEG" and image.size == (config.image_size, config.image_size)


def test_the_project_reader_loads_the_city(tiny_city: tuple[Path, float]) -> None:
    from tscm.data.formats.pittsburgh_mat import DBSTRUCT_FIELDS, read_pittsburgh_mat

    out, _ = tiny_city
    assert list(DBSTRUCT_FIELDS) == MAT_FIELDS
    config = PRESETS["tiny"]
    for split, streets in split_streets(config).items():
        places = read_pittsburgh_mat(out / f"synth_{split}.mat")
        database, queries = [], []
        for street in streets:
            db, q = plan_street(config, 3, street)
            database += db
            queries += q
        assert [p.resolve() for p in places.db_paths] == [(out / "database" / s.rel_path).resolve() for s in database]
        assert [p.resolve() for p in places.query_paths] == [(out / "query" / s.rel_path).resolve() for s in queries]
        assert all(p.is_file() for p in places.db_paths + places.query_paths)
        np.testing.assert_allclose(places.db_xy, _xy(database))
        np.testing.assert_allclose(places.query_xy, _xy(queries))
        assert all(len(p) > 0 for p in places.positives(10.0))
        for shots, headings in ((database, places.db_heading), (queries, places.query_heading)):
            bearings = np.array([synthetic._street_frame(config, 3, s.street)[2] for s in shots])
            expected = (bearings + np.array([s.heading_rel for s in shots])) % 360
            np.testing.assert_array_equal(headings, expected)


def test_filename_heading_matches_the_view(tiny_city: tuple[Path, float]) -> None:
    config = PRESETS["tiny"]
    for street in range(config.num_streets):
        _, _, bearing = synthetic._street_frame(config, 3, street)
        database, queries = plan_street(config, 3, street)
        for shot in database + queries:
            yaw = int(YAW.match(shot.rel_path).group(1))
            assert (yaw - 1) * 30 == (bearing + shot.heading_rel) % 360


def test_synth_json_records_preset_seed_knobs_counts(tiny_city: tuple[Path, float]) -> None:
    out, _ = tiny_city
    meta = json.loads((out / "synth.json").read_text())
    assert meta["preset"] == "tiny" and meta["seed"] == 3
    assert meta["knobs"]["image_size"] == PRESETS["tiny"].image_size
    for split in SPLITS:
        struct = scipy.io.loadmat(out / f"synth_{split}.mat", squeeze_me=True)["dbStruct"]
        assert meta["counts"][split]["database"] == int(struct["numImages"].item())
        assert meta["counts"][split]["queries"] == int(struct["numQueries"].item())
    assert not list(out.parent.glob(".tiny.partial-*"))


def _file_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes_whatever_the_worker_count(tiny_city: tuple[Path, float],
                                                                   tmp_path: Path) -> None:
    out, _ = tiny_city
    generate_synthetic_city(tmp_path / "again", "tiny", seed=3, workers=2, progress=False)
    first, second = _file_bytes(out), _file_bytes(tmp_path / "again")
    assert first.keys() == second.keys()
    assert all(first[name] == second[name] for name in first)


def test_other_seed_gives_another_city(tiny_city: tuple[Path, float], tmp_path: Path) -> None:
    out, _ = tiny_city
    generate_synthetic_city(tmp_path / "other", "tiny", seed=4, progress=False)
    first, second = _file_bytes(out), _file_bytes(tmp_path / "other")
    assert first["synth_train.mat"] != second["synth_train.mat"]
    images = {data for name, data in first.items() if name.endswith(".jpg")}
    repeated = sum(data in images for name, data in second.items() if name.endswith(".jpg"))
    assert repeated == 0


@pytest.mark.parametrize("preset", ["demo", pytest.param("pitts30k-scale", marks=pytest.mark.slow)])
def test_splits_are_geographically_disjoint(preset: str) -> None:
    config = PRESETS[preset]
    plans = _plans(config, seed=0)
    folders = {split: {s.rel_path.split("/")[0] for s in db + q} for split, (db, q) in plans.items()}
    for a in SPLITS:
        for b in SPLITS:
            if a < b:
                assert not folders[a] & folders[b]
                points_a = _xy(plans[a][0] + plans[a][1])
                points_b = _xy(plans[b][0] + plans[b][1])
                nearest, _ = cKDTree(points_b).query(points_a)
                assert nearest.min() > 100.0


@pytest.mark.parametrize("preset", ["demo", "pitts30k-scale"])
def test_every_query_has_a_positive_within_10_m_and_25_m(preset: str) -> None:
    config = PRESETS[preset]
    for split, (database, queries) in _plans(config, seed=0).items():
        db_xy, q_xy = _xy(database), _xy(queries)
        nearest, _ = cKDTree(db_xy).query(q_xy)
        assert nearest.max() <= 10.0
        # the query lane is offset from the database lane by the configured metres
        lateral = np.array([q.l for q in queries]) - synthetic.DB_LANE_M
        assert lateral.min() >= config.query_lateral_min_m - 0.31
        assert lateral.max() <= config.query_lateral_max_m + 0.31
        # and a database image looking the same way lies within 10 m
        db_yaw = np.array([int(YAW.match(d.rel_path).group(1)) for d in database])
        q_yaw = np.array([int(YAW.match(q.rel_path).group(1)) for q in queries])
        for yaw in np.unique(q_yaw):
            same_view, _ = cKDTree(db_xy[db_yaw == yaw]).query(q_xy[q_yaw == yaw])
            assert same_view.max() <= 10.0


def test_presets_hit_their_sizes() -> None:
    scale = _plans(PRESETS["pitts30k-scale"], seed=0)
    for split in SPLITS:
        database, queries = scale[split]
        assert 9_000 <= len(database) <= 11_000 and 6_000 <= len(queries) <= 8_000
    demo = _plans(PRESETS["demo"], seed=0)
    total = sum(len(db) + len(q) for db, q in demo.values())
    assert 8_000 <= total <= 16_000
    # a test split big enough that one run's binomial standard error at Recall@1 is at most a point
    test_queries = len(demo["test"][1])
    assert test_queries >= 2_500


def test_bad_knobs_are_rejected_with_their_name() -> None:
    with pytest.raises(TscmError, match="db_headings"):
        resolve_config("demo", db_headings=5)
    with pytest.raises(TscmError, match="no_such_knob"):
        resolve_config("demo", no_such_knob=1)
    with pytest.raises(TscmError, match="unknown synthetic preset"):
        resolve_config("huge")


def test_existing_directory_is_not_overwritten(tiny_city: tuple[Path, float], tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep")
    with pytest.raises(TscmError, match="not empty"):
        generate_synthetic_city(tmp_path, "tiny", progress=False)
    with pytest.raises(TscmError, match="synth.json"):
        generate_synthetic_city(tmp_path, "tiny", progress=False, overwrite=True)
    assert (tmp_path / "precious.txt").read_text() == "keep"


def test_ensure_synthetic_city_generates_once_then_reuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = synthetic.generate_synthetic_city

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(synthetic, "generate_synthetic_city", counting)
    tiny_one_street = resolve_config("tiny", street_length_m=20.0)
    monkeypatch.setitem(PRESETS, "tiny", tiny_one_street)
    root = ensure_synthetic_city("tiny", seed=1, cache_dir=tmp_path, progress=False)
    assert root == tmp_path / "synth-tiny-seed1" and len(calls) == 1
    assert ensure_synthetic_city("tiny", seed=1, cache_dir=tmp_path, progress=False) == root
    assert len(calls) == 1

    # a city made with other knobs is regenerated in place, atomically
    meta = json.loads((root / "synth.json").read_text())
    meta["knobs"]["difficulty"] = 0.0
    (root / "synth.json").write_text(json.dumps(meta))
    assert ensure_synthetic_city("tiny", seed=1, cache_dir=tmp_path, progress=False) == root
    assert len(calls) == 2
    assert json.loads((root / "synth.json").read_text())["knobs"]["difficulty"] == tiny_one_street.difficulty
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synth-tiny-seed1"]

    monkeypatch.setenv("TSCM_CACHE", str(tmp_path))
    assert ensure_synthetic_city("tiny", seed=1, progress=False) == root and len(calls) == 2


def test_cli_writes_a_city_and_reports_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from tscm.cli import main

    out = tmp_path / "cli"
    args = ["synth", str(out), "--preset", "tiny", "--street-length", "20", "--image-size", "24"]
    assert main(args) == 0
    assert "images" in capsys.readouterr().out
    with Image.open(next((out / "query").rglob("*.jpg"))) as image:
        assert image.size == (24, 24)
    assert main(args) == 2
    assert "not empty" in capsys.readouterr().err


# --- renderer geometry, checked against hand computations ---------------------------------------------


def _plain_street(height: float, width_m: float = 20.0) -> Street:
    """One windowless, sign-free grey building per side, far longer than the view."""
    grey = np.array([[0.5, 0.5, 0.5]] * 2)
    facades = Facades(
        start=np.array([-1000.0, -1000.0]), width=np.array([3000.0, 3000.0]), height=np.array([height, height]),
        wall=grey, trim=grey, glass=grey, floor_h=np.array([3.0, 3.0]), win_pitch=np.array([2.0, 2.0]),
        win_w=np.zeros(2), win_h=np.zeros(2), win_style=np.zeros(2, dtype=np.int64),
        has_sign=np.zeros(2, dtype=bool), sign_rgb=grey, letter_rgb=grey, sign_z=np.array([2.5, 2.5]),
        sign_span=np.array([0.5, 0.5]), letter_pitch=np.array([0.5, 0.5]), door_u=np.array([-50.0, -50.0]),
    )
    return Street(length_m=100.0, width_m=width_m, road_grey=0.3, facades=facades, num_left=1)


def _flat_light(sky: float) -> Conditions:
    return Conditions(
        sun_azimuth_deg=0.0, sun_elevation_deg=45.0, ambient=np.ones(3), direct=np.zeros(3),
        sky_rgb=np.full(3, sky), haze_rgb=np.full(3, sky), visibility_m=1e9, gain=np.ones(3), gamma=1.0,
        blur_px=0.0, noise_std=0.0, boxes=np.zeros((0, 8)),
    )


def test_facade_top_appears_at_the_projected_height() -> None:
    size, height, cam_h = 64, 12.0, 2.0
    street = _plain_street(height)
    camera = Camera(s=0.0, l=0.0, height=cam_h, yaw_deg=270.0, pitch_deg=0.0, fov_deg=90.0)  # facing left wall
    image = render(street, camera, _flat_light(sky=0.95), size, 1, np.random.default_rng(0)).astype(float)
    column = image[:, size // 2, 0]
    wall_rows = np.flatnonzero(np.abs(column - 0.5 * 255) < 3)
    # a pixel row shows the wall where its ray meets the plane 10 m away between z = 0 and the roof
    centres = (np.arange(size) + 0.5) / size * 2 - 1
    z_at_wall = cam_h - centres * 10.0
    expected = np.flatnonzero((z_at_wall >= 0) & (z_at_wall <= height))
    assert wall_rows.tolist() == expected.tolist()
    assert np.all(column[: expected[0]] > 0.9 * 255)  # sky above the roof


def test_occluding_box_covers_the_pixels_its_outline_projects_to() -> None:
    size = 64
    street = _plain_street(30.0)
    light = _flat_light(sky=0.95)
    # a 2 m wide, 2 m tall red box 5 m ahead of a camera looking at the left wall from the centre line
    boxes = np.array([[-1.0, 1.0, 4.0, 6.0, 2.0, 1.0, 0.0, 0.0]])
    light = Conditions(**{**light.__dict__, "boxes": boxes})
    camera = Camera(s=0.0, l=0.0, height=1.0, yaw_deg=270.0, pitch_deg=0.0, fov_deg=90.0)
    image = render(street, camera, light, size, 1, np.random.default_rng(0)).astype(float)
    red = (image[..., 0] > 200) & (image[..., 1] < 50)
    centres = (np.arange(size) + 0.5) / size * 2 - 1
    # near face at l = 4: horizontal extent s in [-1, 1] → image x in [-1/4, 1/4]; z in [0, 2] → y in [-1/4, 1/4]
    cols = np.flatnonzero(np.abs(centres) < 0.25)
    rows = np.flatnonzero(np.abs(centres) < 0.25)
    expected = np.zeros((size, size), dtype=bool)
    expected[np.ix_(rows, cols)] = True
    assert red[expected].all()
    assert not red[~expected].any()


def test_haze_blends_distant_walls_towards_the_haze_colour() -> None:
    street = _plain_street(30.0, width_m=2 * 40.0)
    clear, hazy = _flat_light(sky=0.9), _flat_light(sky=0.9)
    hazy = Conditions(**{**hazy.__dict__, "visibility_m": 40.0})
    camera = Camera(s=0.0, l=0.0, height=2.0, yaw_deg=270.0, pitch_deg=0.0, fov_deg=30.0)
    centre = 16
    plain = render(street, camera, clear, 32, 1, np.random.default_rng(0))[centre, centre, 0] / 255
    blended = render(street, camera, hazy, 32, 1, np.random.default_rng(0))[centre, centre, 0] / 255
    ray = math.hypot(40.0, 40.0 * math.tan(math.radians(15)) / 32)  # the centre pixel's ray is almost straight
    weight = math.exp(-ray / 40.0)
    assert plain == pytest.approx(0.5, abs=2 / 255)
    assert blended == pytest.approx(0.5 * weight + 0.9 * (1 - weight), abs=2 / 255)

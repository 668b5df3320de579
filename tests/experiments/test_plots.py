"""Pictures of a run, and `tscm visualize` redrawing them from saved files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tscm.cli import main
from tscm.data.places import PlaceSet
from tscm.evaluation.recall import recall_at_n
from tscm.experiments.plots import (
    choose_grid_queries,
    draw_run_pictures,
    plot_recall_curves,
    plot_recall_map,
    plot_retrieval_grid,
    retrieve_for_placeset,
)
from tscm.experiments.report import (
    DatasetInfo,
    ModelResult,
    SeedMeasurement,
    build_results,
    save_descriptors,
    write_results,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NUM_DB, NUM_QUERIES, DIM = 16, 8, 6


def tiny_placeset(root) -> PlaceSet:
    """A street of 16 database images 10 m apart and 8 queries, one far from everything."""
    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    db_paths, query_paths = [], []
    for i in range(NUM_DB):
        path = root / f"db_{i:02d}.jpg"
        Image.fromarray(np.full((12, 16, 3), (15 * i, 255 - 15 * i, 90), dtype=np.uint8)).save(path)
        db_paths.append(path)
    for j in range(NUM_QUERIES):
        path = root / f"q_{j:02d}.jpg"
        Image.fromarray(rng.integers(0, 255, size=(12, 16, 3), dtype=np.uint8)).save(path)
        query_paths.append(path)
    db_xy = np.stack([500_000 + np.arange(NUM_DB) * 10.0, np.full(NUM_DB, 4_400_000.0)], axis=1)
    query_xy = db_xy[::2] + np.array([3.0, 2.0])
    query_xy[-1] = (501_000.0, 4_401_000.0)
    return PlaceSet("tiny", "test", db_paths, query_paths, db_xy, query_xy)


def tiny_descriptors(seed: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    db = rng.normal(size=(NUM_DB, DIM)).astype(np.float32)
    queries = db[::2] + rng.normal(0, noise, size=(NUM_QUERIES, DIM)).astype(np.float32)
    return db, queries


def plain_ranking(db: np.ndarray, queries: np.ndarray) -> np.ndarray:
    distances = ((queries[:, None, :].astype(np.float64) - db[None, :, :]) ** 2).sum(-1)
    return np.argsort(distances, axis=1, kind="stable")


def assert_png(path, min_size=(200, 150), max_size=(3000, 3000)) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.load()
        width, height = image.size
    assert min_size[0] <= width <= max_size[0] and min_size[1] <= height <= max_size[1], (width, height)


def test_retrieval_matches_a_plain_ranking_with_ties_to_the_lower_index(tmp_path):
    placeset = tiny_placeset(tmp_path / "data")
    db, queries = tiny_descriptors(0, 0.9)
    db[9] = db[4]  # exact duplicates: the tie must go to database image 4
    db[15] = db[2]
    queries[3] = db[4]
    retrieval = retrieve_for_placeset(placeset, db, queries, 25.0)
    reference = plain_ranking(db, queries)
    np.testing.assert_array_equal(retrieval.ranked, reference[:, :NUM_DB])  # k=20 clipped to 16
    assert list(retrieval.ranked[3, :2]) == [4, 9]

    positives = [set(p.tolist()) for p in placeset.positives(25.0)]
    evaluated = np.array([bool(p) for p in positives])
    np.testing.assert_array_equal(retrieval.evaluated, evaluated)
    for n in (1, 3, 16):
        expected = [any(d in positives[q] for d in reference[q, :n]) for q in range(NUM_QUERIES)]
        np.testing.assert_array_equal(retrieval.correct_within(n), expected)
    # The map's Recall@1 and the evaluator's agree.
    evaluator = recall_at_n(db, queries, retrieval.positives, ns=range(1, 21))
    assert sorted(evaluator.recall) == list(range(1, 21))
    map_recall_1 = 100.0 * retrieval.correct_within(1)[evaluated].mean()
    assert evaluator.recall[1] == pytest.approx(map_recall_1)


def test_grid_queries_are_deterministic_and_mix_successes_and_failures(tmp_path):
    placeset = tiny_placeset(tmp_path / "data")
    db, queries = tiny_descriptors(0, 0.9)
    retrieval = retrieve_for_placeset(placeset, db, queries, 25.0)
    correct = retrieval.correct_within(1)
    chosen = choose_grid_queries(retrieval, count=4)
    assert chosen == choose_grid_queries(retrieval, count=4)
    assert NUM_QUERIES - 1 not in chosen  # the query without a positive is never shown
    outcomes = {bool(correct[q]) for q in chosen}
    if correct[:-1].any() and not correct[:-1].all():
        assert outcomes == {True, False}
    assert len(chosen) == min(4, NUM_QUERIES - 1)


def test_each_picture_is_a_png_of_sensible_size(tmp_path):
    placeset = tiny_placeset(tmp_path / "data")
    db, queries = tiny_descriptors(0, 0.9)
    retrieval = retrieve_for_placeset(placeset, db, queries, 25.0)
    curves = {
        "teacher": recall_at_n(db, queries, retrieval.positives, ns=range(1, 21)).recall,
        "raw-pixels": {1: 10.0, 5: 30.0, 10: 50.0, 20: 80.0},
    }
    out = tmp_path / "run"
    paths = [
        plot_recall_curves(out / "curves.png", curves, {"teacher": "teacher", "raw-pixels": "reference"}, "tiny"),
        plot_retrieval_grid(out / "grid.png", placeset, retrieval, choose_grid_queries(retrieval, 3), "teacher"),
        plot_recall_map(out / "map.png", placeset, retrieval, "teacher"),
    ]
    for path in paths:
        assert_png(path)
    with Image.open(paths[1]) as grid:  # 3 rows × 6 columns of thumbnails: wider than tall
        assert grid.size[0] > grid.size[1]
    assert sorted(p.name for p in out.iterdir()) == ["curves.png", "grid.png", "map.png"]  # no temp files left


def write_manifest(placeset: PlaceSet, csv_path) -> None:
    rows = ["path,east,north,role"]
    for role, paths, xy in (
        ("database", placeset.db_paths, placeset.db_xy),
        ("query", placeset.query_paths, placeset.query_xy),
    ):
        rows += [f"{p},{x:.3f},{y:.3f},{role}" for p, (x, y) in zip(paths, xy)]
    csv_path.write_text("\n".join(rows) + "\n")


def write_tiny_run(tmp_path):
    """A run directory as `tscm demo` leaves it, on a CSV-manifest data set that load_placeset reads."""
    placeset = tiny_placeset(tmp_path / "data")
    manifest = tmp_path / "data" / "tiny.csv"
    write_manifest(placeset, manifest)
    run_dir = tmp_path / "run"
    models = []
    for name, role, loss, seed, noise in (
        ("teacher", "teacher", None, 0, 0.5),
        ("student-cm", "student", "cross_metric", 1, 0.9),
        ("raw-pixels", "reference", None, 2, 1.5),
    ):
        db, queries = tiny_descriptors(seed, noise)
        save_descriptors(run_dir, name, db, queries)
        curve = recall_at_n(db, queries, placeset.positives(25.0), ns=range(1, 21)).recall
        models.append(ModelResult(name, role, loss, [seed], [SeedMeasurement(curve)], params=1000, ms_per_image=1.0))
    dataset = DatasetInfo.from_placeset(manifest, placeset, 25.0)
    assert dataset.num_queries_evaluated == NUM_QUERIES - 1
    results = build_results(dataset, models, command="test", run_dir=run_dir)
    write_results(run_dir, results)
    return placeset, run_dir, results


EXPECTED_PICTURES = {
    "recall_curves.png",
    "precision_recall.png",
    "retrieval_teacher.png",
    "map_teacher.png",
    "retrieval_student-cm.png",
    "map_student-cm.png",
}


def test_visualize_redraws_all_pictures_from_saved_files(tmp_path, capsys):
    _, run_dir, _ = write_tiny_run(tmp_path)
    assert not list(run_dir.glob("*.png"))
    assert main(["visualize", str(run_dir)]) == 0
    pngs = {p.name for p in run_dir.glob("*.png")}
    assert pngs == EXPECTED_PICTURES
    for name in pngs:
        assert_png(run_dir / name)
    assert capsys.readouterr().out.count("wrote") == len(EXPECTED_PICTURES)


def test_visualize_refuses_a_data_set_that_does_not_match_the_run(tmp_path, capsys):
    placeset, run_dir, _ = write_tiny_run(tmp_path)
    smaller = PlaceSet(
        "tiny", "test", placeset.db_paths[:-1], placeset.query_paths, placeset.db_xy[:-1], placeset.query_xy
    )
    other = tmp_path / "other.csv"
    write_manifest(smaller, other)
    assert main(["visualize", str(run_dir), "--data", str(other)]) == 2
    assert "15 database images" in capsys.readouterr().err
    assert not list(run_dir.glob("*.png"))


def test_a_failing_picture_keeps_results_and_the_other_pictures(tmp_path):
    placeset, run_dir, results = write_tiny_run(tmp_path)
    before = (run_dir / "results.json").read_text()
    retrieval = retrieve_for_placeset(placeset, *tiny_descriptors(0, 0.5), 25.0)
    for q in choose_grid_queries(retrieval):  # the teacher's grid needs these query images
        placeset.query_paths[q].write_bytes(b"not a jpeg")
    descriptors = {m["name"]: tiny_descriptors(s, n) for m, s, n in zip(results["models"], (0, 1, 2), (0.5, 0.9, 1.5))}
    report = draw_run_pictures(run_dir, results, placeset, descriptors)
    assert any(f.startswith("retrieval_teacher.png") and "unreadable image" in f for f in report.failed)
    assert {p.name for p in report.written} >= {"recall_curves.png", "map_teacher.png", "map_student-cm.png"}
    assert (run_dir / "results.json").read_text() == before
    assert json.loads(before)["models"][0]["name"] == "teacher"

"""results.json / results.md / printed table and saved descriptors."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from tscm.errors import TscmError
from tscm.experiments.report import (
    DatasetInfo,
    ModelResult,
    SeedMeasurement,
    build_results,
    descriptor_path,
    format_markdown,
    format_table,
    load_descriptors,
    mean_and_stderr,
    read_results,
    save_descriptors,
    write_results,
)


def plain_recall(db: np.ndarray, queries: np.ndarray, positives: list[set[int]], ns) -> dict[int, float]:
    """Reference Recall@N: full sort of Euclidean distances, python loops."""
    hits = {n: 0 for n in ns}
    evaluated = 0
    for q, query in enumerate(queries):
        if not positives[q]:
            continue
        evaluated += 1
        order = sorted(range(len(db)), key=lambda d: float(np.sum((db[d] - query) ** 2)))
        for n in ns:
            if any(d in positives[q] for d in order[:n]):
                hits[n] += 1
    return {n: 100.0 * hits[n] / evaluated for n in ns}


def make_run(tmp_path, rng):
    db_xy = np.stack([np.arange(30) * 10.0, np.zeros(30)], axis=1)
    query_xy = db_xy[::3] + rng.normal(0, 4, size=(10, 2))
    query_xy[0] = (1000.0, 1000.0)  # no database image within 25 m: dropped from recall
    positives = [
        {d for d in range(30) if np.linalg.norm(db_xy[d] - q) <= 25.0} for q in query_xy
    ]
    models = []
    for name, noise in (("teacher", 0.3), ("student-cm", 0.6), ("raw-pixels", 2.0)):
        db = rng.normal(size=(30, 8)).astype(np.float32)
        queries = db[::3] + rng.normal(0, noise, size=(10, 8)).astype(np.float32)
        save_descriptors(tmp_path, name, db, queries)
        models.append((name, db, queries))
    return db_xy, query_xy, positives, models


def test_results_json_and_markdown_hold_the_recall_of_the_saved_descriptors(tmp_path):
    rng = np.random.default_rng(0)
    _, _, positives, models = make_run(tmp_path, rng)
    ns = (1, 5, 10, 20)
    roles = {"teacher": ("teacher", None), "student-cm": ("student", "cross_metric"), "raw-pixels": ("reference", None)}
    results_in = []
    for name, db, queries in models:
        role, loss = roles[name]
        recall = plain_recall(db, queries, positives, ns)
        results_in.append(ModelResult(name, role, loss, [7], [SeedMeasurement(recall)], params=1234567,
                                      ms_per_image=0.4321, matching_ms_per_query=0.05, descriptor_dim=8))
    dataset = DatasetInfo(path="/data/city", name="city", split="test", radius=25.0, unit="m",
                          num_db=30, num_queries=10, num_queries_evaluated=9)
    doc = build_results(dataset, results_in, seeds=[7], wall_s={"total": 12.5}, command="tscm demo", run_dir=tmp_path)
    json_path, md_path = write_results(tmp_path, doc)

    loaded = json.loads(json_path.read_text())
    assert loaded == read_results(tmp_path)
    assert loaded["dataset"]["path"] == "/data/city" and loaded["dataset"]["split"] == "test"
    assert loaded["dataset"]["num_queries_without_positive"] == 1
    assert loaded["command"] == "tscm demo" and loaded["tscm_version"]
    for entry, (name, db_saved, q_saved) in zip(loaded["models"], models):
        assert entry["descriptors"] == f"descriptors/{name}.npz"
        db, queries = load_descriptors(tmp_path, name)
        expected = plain_recall(db, queries, positives, ns)
        assert set(entry["recall"]) == {"1", "5", "10", "20"}
        for n in ns:
            assert entry["recall"][str(n)] == pytest.approx(expected[n])
        assert entry["role"] == roles[name][0] and entry["distillation"] == roles[name][1]

    markdown = md_path.read_text()
    assert markdown == format_markdown(loaded)
    assert "radius 25 m (community standard)" in markdown
    assert "30 database images, 10 queries, 9 evaluated" in markdown
    for entry in loaded["models"]:
        row = next(line for line in markdown.splitlines() if line.startswith(f"| {entry['name']} |"))
        for n in (1, 5, 10):
            assert f"{entry['recall'][str(n)]:.1f}" in row
        assert "1.23 M" in row and "0.432" in row and "0.050" in row and "| 1 |" in row

    table = format_table(loaded)
    assert "9 of 10 queries evaluated" in table
    assert f"{loaded['models'][1]['recall']['1']:.1f}" in table


def one(name="t", role="teacher", recall=None, **kw):
    return ModelResult(name, role, None, [None], [SeedMeasurement(recall or {1: 50.0})], **kw)


def test_radius_and_unit_are_stated_for_every_kind_of_ground_truth(tmp_path):
    cases = [(10.0, "m", "radius 10 m (published TSCM protocol)"), (1.0, "frame", "radius ±1 frame"),
             (0.0, "frame", "radius ±0 frames"), (None, "explicit", "listed matches (explicit ground truth)")]
    for radius, unit, text in cases:
        doc = build_results(DatasetInfo("/d", "city", "test", radius, unit, 5, 4, 4), [one()], command="x")
        assert text in format_table(doc) and text in format_markdown(doc)
        assert (doc["dataset"]["radius"], doc["dataset"]["unit"]) == (radius, unit)
        assert re.search(r"\d m\b", format_table(doc).splitlines()[0]) is None or unit == "m"  # no "25 m" for frames


def test_seed_rows_have_mean_and_standard_error_from_per_seed_values():
    per_seed = [{1: 40.0, 5: 70.0}, {1: 50.0, 5: 75.0}, {1: 45.0, 5: 71.0}]
    prs = [{"average_precision": a, "recall_at_100_precision": b, "f1_max": c} for a, b, c in
           ((30.0, 5.0, 40.0), (36.0, 7.0, 44.0), (33.0, 6.0, 42.0))]
    row = ModelResult("student-cm", "student", "cm", [1, 2, 3],
                      [SeedMeasurement(r, pr, wall_s=w) for r, pr, w in zip(per_seed, prs, (10.0, 12.0, 11.0))]).to_json()
    r1 = [40.0, 50.0, 45.0]
    mean = sum(r1) / 3
    sample_std = math.sqrt(sum((v - mean) ** 2 for v in r1) / 2)
    assert row["recall"]["1"] == pytest.approx(mean)
    assert row["recall_stderr"]["1"] == pytest.approx(sample_std / math.sqrt(3))
    assert row["pr"]["average_precision"] == pytest.approx(33.0)
    assert row["pr_stderr"]["average_precision"] == pytest.approx(math.sqrt(9.0) / math.sqrt(3))
    assert row["wall_s_per_seed"] == [10.0, 12.0, 11.0]
    assert row["recall_per_seed"][1] == {"1": 50.0, "5": 75.0}

    base = ModelResult("student-none", "student", "none", [1, 2, 3], [SeedMeasurement({1: v}) for v in (35.0, 39.0, 37.0)])
    dataset = DatasetInfo("/d", "city", "val", 25.0, "m", 5, 4, 4)
    doc = build_results(dataset, [ModelResult("student-cm", "student", "cm", [1, 2, 3],
                                              [SeedMeasurement(r) for r in per_seed]), base],
                        comparisons=[("student-cm", "student-none")], command="tscm ablation")
    expected_cell = f"{mean:.1f} ± {sample_std / math.sqrt(3):.1f}"
    assert expected_cell in format_markdown(doc) and expected_cell in format_table(doc)
    comparison = doc["comparisons"][0]
    assert comparison["difference"] == pytest.approx(mean - 37.0)
    assert comparison["stderr"] == pytest.approx(math.hypot(sample_std / math.sqrt(3), 2.0 / math.sqrt(3)))
    assert comparison["verdict"] == "a clear gain"  # 8 points against ≈ 3.2 combined
    single = build_results(dataset, [one("a", "student"), one("b", "student", {1: 40.0})], comparisons=[("a", "b")])
    assert single["comparisons"][0]["verdict"] == "one seed: no error estimate"


def test_mean_and_stderr_edge_cases():
    assert mean_and_stderr([3.0]) == (3.0, None)
    assert mean_and_stderr([1.0, 3.0]) == (2.0, pytest.approx(1.0))
    with pytest.raises(TscmError):
        mean_and_stderr([])


def test_bad_inputs_are_clear_errors(tmp_path):
    with pytest.raises(TscmError, match="role"):
        one("m", "pupil").to_json()
    with pytest.raises(TscmError, match="percentage"):
        one("m", "student", {1: 110.0}).to_json()
    with pytest.raises(TscmError, match="one measurement per seed"):
        ModelResult("m", "student", None, [0, 1], [SeedMeasurement({1: 1.0})]).to_json()
    with pytest.raises(TscmError, match="names a file"):
        save_descriptors(tmp_path, "../escape", np.zeros((2, 3)), np.zeros((1, 3)))
    with pytest.raises(TscmError, match="same D"):
        save_descriptors(tmp_path, "m", np.zeros((2, 3)), np.zeros((1, 4)))
    dataset = DatasetInfo("/d", "city", "test", 25.0, "m", 5, 4, 4)
    twice = [one("m", "student")] * 2
    with pytest.raises(TscmError, match="unique"):
        build_results(dataset, twice)
    with pytest.raises(TscmError, match="no results.json"):
        read_results(tmp_path)
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(TscmError, match="JSON"):
        read_results(tmp_path)
    with pytest.raises(TscmError, match="no saved descriptors"):
        load_descriptors(tmp_path, "absent")


def test_descriptors_round_trip_as_float32_without_stray_files(tmp_path):
    db = np.arange(12, dtype=np.float64).reshape(4, 3)
    queries = -np.arange(6, dtype=np.float64).reshape(2, 3)
    path = save_descriptors(tmp_path, "student", db, queries)
    assert path == descriptor_path(tmp_path, "student")
    assert sorted(p.name for p in path.parent.iterdir()) == ["student.npz"]
    loaded_db, loaded_queries = load_descriptors(tmp_path, "student")
    assert loaded_db.dtype == np.float32 and loaded_queries.dtype == np.float32
    np.testing.assert_array_equal(loaded_db, db)
    np.testing.assert_array_equal(loaded_queries, queries)

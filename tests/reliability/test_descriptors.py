"""Bad descriptor files for `evaluate --descriptors` (and a run's saved descriptors for `visualize`):
refused with one line naming the file and what was expected; pickled objects never load."""

from __future__ import annotations

import json

import numpy as np
import pytest

from reliability.support import Payload, assert_refused, previous_output, tscm

NUM_DB, NUM_QUERIES = 4, 3  # the small set
GOOD_DB = np.eye(NUM_DB, 8, dtype=np.float32)
GOOD_QUERIES = np.eye(NUM_QUERIES, 8, dtype=np.float32)

CASES = [
    ("n-by-0", {"db": np.zeros((NUM_DB, 0), np.float32), "queries": np.zeros((NUM_QUERIES, 0), np.float32)}, ["'db'", "zero columns"]),
    ("nan", {"db": np.full((NUM_DB, 8), np.nan, np.float32), "queries": GOOD_QUERIES}, ["'db'", "NaN"]),
    ("inf-queries", {"db": GOOD_DB, "queries": np.full((NUM_QUERIES, 8), np.inf, np.float32)}, ["'queries'", "infinite"]),
    ("too-few-db", {"db": GOOD_DB[:2], "queries": GOOD_QUERIES}, ["'db'", "(4, D)", "(2, 8)"]),
    ("too-many-queries", {"db": GOOD_DB, "queries": np.eye(5, 8, dtype=np.float32)}, ["'queries'", "(3, D)"]),
    ("other-dims", {"db": GOOD_DB, "queries": np.eye(NUM_QUERIES, 6, dtype=np.float32)}, ["'queries'", "8"]),
    ("one-dimensional", {"db": np.zeros(NUM_DB, np.float32), "queries": GOOD_QUERIES}, ["'db'", "(4, D)"]),
    ("strings", {"db": np.array([["a"] * 8] * NUM_DB), "queries": GOOD_QUERIES}, ["'db'", "numeric"]),
    ("missing-queries", {"db": GOOD_DB}, ["queries", "missing"]),
]


@pytest.mark.parametrize("case, arrays, named", CASES, ids=[c[0] for c in CASES])
def test_a_bad_descriptor_file_is_refused(case, arrays, named, small, tmp_path, capsys):
    descriptors = tmp_path / "descriptors.npz"
    np.savez(descriptors, **arrays)
    before = previous_output(tmp_path / "result.json")
    outcome = tscm(capsys, "evaluate", small, "--descriptors", descriptors, "--json", tmp_path / "result.json")
    assert_refused(outcome, "evaluate", "descriptors.npz", *named)
    before.assert_unchanged()


def test_a_descriptor_file_that_is_not_npz_is_refused(small, tmp_path, capsys):
    descriptors = tmp_path / "x.npy"
    np.save(descriptors, GOOD_DB)
    assert_refused(tscm(capsys, "evaluate", small, "--descriptors", descriptors), "evaluate", "x.npy", ".npz")
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"PK\x03\x04 not really a zip")
    assert_refused(tscm(capsys, "evaluate", small, "--descriptors", garbage), "evaluate", "garbage.npz", "readable")
    assert_refused(tscm(capsys, "evaluate", small, "--descriptors", tmp_path / "absent.npz"), "evaluate", "absent.npz", "not found")


def test_pickled_objects_in_a_descriptor_npz_never_load(small, tmp_path, capsys, marker):
    descriptors = tmp_path / "evil.npz"
    payload = np.empty(NUM_DB, dtype=object)
    payload[:] = [Payload(marker)] * NUM_DB
    np.savez(descriptors, db=payload, queries=GOOD_QUERIES)
    assert_refused(tscm(capsys, "evaluate", small, "--descriptors", descriptors), "evaluate", "evil.npz", "pickled")


def write_run(run, small, arrays):
    """A run folder as `tscm demo` leaves it, with one model whose saved descriptors are `arrays`."""
    from tscm.data.formats import load_placeset

    placeset = load_placeset(small)
    results = {"format": "tscm-results", "format_version": 2,
               "dataset": {"path": str(small), "name": placeset.name, "split": "test", "num_db": placeset.num_db,
                           "num_queries": placeset.num_queries, "num_queries_evaluated": 2, "radius": 25.0, "unit": "m"},
               "models": [{"name": "student", "role": "student", "descriptors": True, "recall": {"1": 50.0}}]}
    (run / "descriptors").mkdir(parents=True)
    (run / "results.json").write_text(json.dumps(results), encoding="utf-8")
    np.savez(run / "descriptors" / "student.npz", **arrays)
    return run


def test_visualize_refuses_pickled_saved_descriptors(small, tmp_path, capsys, marker):
    payload = np.empty(NUM_DB, dtype=object)
    payload[:] = [Payload(marker)] * NUM_DB
    run = write_run(tmp_path / "run", small, {"db": payload, "queries": GOOD_QUERIES})
    assert_refused(tscm(capsys, "visualize", run), "visualize", "student.npz")


def test_visualize_refuses_a_results_file_that_is_not_json(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_bytes(b"\x80\x04\x95 a pickle, not JSON")
    assert_refused(tscm(capsys, "visualize", run), "visualize", "results.json", "JSON")


def test_visualize_refuses_descriptors_of_the_wrong_size(small, tmp_path, capsys):
    run = write_run(tmp_path / "run", small, {"db": GOOD_DB[:2], "queries": GOOD_QUERIES})
    outcome = tscm(capsys, "visualize", run)
    assert_refused(outcome, "visualize", "student.npz", "4 database images")


@pytest.mark.parametrize("edit, named", [
    (lambda r: r["models"][0].pop("role"), "models[0].role"),
    (lambda r: r["dataset"].pop("num_queries_evaluated"), "dataset.num_queries_evaluated"),
    (lambda r: r["dataset"].update(radius="25"), "dataset.radius"),
    (lambda r: r["models"][0].update(name="../../etc/passwd"), "models[0].name"),
], ids=["no-role", "no-count", "radius-text", "name-with-path"])
def test_visualize_refuses_an_edited_results_file_naming_the_field(edit, named, small, tmp_path, capsys):
    run = write_run(tmp_path / "run", small, {"db": GOOD_DB, "queries": GOOD_QUERIES})
    results = json.loads((run / "results.json").read_text(encoding="utf-8"))
    edit(results)
    (run / "results.json").write_text(json.dumps(results), encoding="utf-8")
    assert_refused(tscm(capsys, "visualize", run), "visualize", "results.json", named)

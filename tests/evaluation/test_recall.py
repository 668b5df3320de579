"""Recall@N against a hand-computed reference, EvalResult, extraction, and the evaluate command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers.placeset_files import DB_XY, QUERY_XY, write_pittsburgh
from helpers.references import naive_recall

from tscm.cli import main
from tscm.data.formats import load_placeset
from tscm.data.places import PlaceSet
from tscm.data.images import eval_transform, load_rgb
from tscm.errors import TscmError
from tscm.evaluation.recall import EvalResult, evaluate_descriptors, recall_at_n


def test_recall_matches_reference_with_ties_and_large_n():
    rng = np.random.default_rng(0)
    for trial in range(30):
        num_db, num_q, dim = int(rng.integers(1, 30)), int(rng.integers(1, 40)), int(rng.integers(1, 4))
        # small integer coordinates give many exactly tied distances
        db = rng.integers(-2, 3, (num_db, dim)).astype(np.float32)
        queries = rng.integers(-2, 3, (num_q, dim)).astype(np.float32)
        positives = [np.flatnonzero(rng.random(num_db) < 0.2) for _ in range(num_q)]
        if not any(len(p) for p in positives):
            positives[0] = np.array([num_db - 1])
        ns = (1, 5, 10, 20, 50)
        got = recall_at_n(db, queries, positives, ns)
        expected, evaluated = naive_recall(db, queries, positives, ns)
        assert got.num_evaluated == evaluated and got.num_without_positive == num_q - evaluated
        for n in ns:
            assert got.recall[n] == pytest.approx(expected[n]), (trial, n)


def test_recall_hand_cases():
    db = np.array([[1.0, 0.0], [-1.0, 0.0], [5.0, 5.0]], dtype=np.float32)
    queries = np.array([[0.0, 0.0], [5.0, 5.0], [0.0, 0.0]], dtype=np.float32)
    # query 0: db 0 and 1 tie; only db 1 is positive, so the lower index wins R@1.
    # query 1: exact match at db 2. query 2: no positive, dropped.
    positives = [np.array([1]), np.array([2]), np.array([], dtype=np.int64)]
    got = recall_at_n(db, queries, positives, ns=(1, 2, 20))
    assert got.recall == {1: 50.0, 2: 100.0, 20: 100.0}
    assert (got.num_evaluated, got.num_without_positive) == (2, 1)
    with pytest.raises(TscmError, match="no query has a true match"):
        recall_at_n(db, queries, [np.array([], dtype=np.int64)] * 3)
    with pytest.raises(TscmError, match="dimension 3"):
        recall_at_n(db, np.zeros((1, 3)), [np.array([0])])
    with pytest.raises(TscmError, match="NaN"):
        recall_at_n(np.full((2, 2), np.nan), queries, positives)


def small_placeset():
    return PlaceSet("city", "test", [f"/d/{i}.jpg" for i in range(4)], [f"/q/{i}.jpg" for i in range(3)], DB_XY, QUERY_XY)


def test_evaluate_descriptors_checks_shapes_and_counts():
    ps = small_placeset()
    db = np.eye(4, dtype=np.float32)
    queries = db[[0, 3, 1]]  # query 0 -> db 0 (positive), query 1 -> db 3 (positive at 25 m), query 2 far away
    result = evaluate_descriptors(ps, db, queries, radius=25.0, ns=(1, 5))
    assert result.recall == {1: 100.0, 5: 100.0}
    assert (result.num_db, result.num_queries, result.num_queries_evaluated, result.num_queries_without_positive) == (4, 3, 2, 1)
    result10 = evaluate_descriptors(ps, db, db[[2, 0, 1]], radius=10.0, ns=(1, 5))
    assert result10.recall == {1: 0.0, 5: 100.0}
    with pytest.raises(TscmError, match=r"descriptors 'db': expected shape \(4, D\).*got \(3, 4\)"):
        evaluate_descriptors(ps, db[:3], queries)
    with pytest.raises(TscmError, match=r"descriptors 'queries': expected shape \(3, D\)"):
        evaluate_descriptors(ps, db, queries[:2])
    with pytest.raises(TscmError, match="expected 4-d descriptors"):
        evaluate_descriptors(ps, db, queries[:, :2])


def test_eval_result_json_and_table():
    result = EvalResult({1: 50.0, 5: 75.0, 10: 80.0, 20: 90.0}, 10.0, "m", 100, 40, 38, 2, "city/test")
    payload = result.to_json()
    assert payload["recall"] == {"1": 50.0, "5": 75.0, "10": 80.0, "20": 90.0}
    assert (payload["radius"], payload["unit"], payload["num_db"], payload["num_queries"],
            payload["num_queries_evaluated"]) == (10.0, "m", 100, 40, 38)
    table = result.format_table()
    assert "radius 10 m (published TSCM protocol)" in table
    assert "100 images" in table and "40 queries" in table and "38 evaluated" in table and "2 dropped" in table
    result.radius = 25.0
    assert "radius 25 m (community standard)" in result.format_table()


def test_evaluate_command(tmp_path, capsys):
    write_pittsburgh(tmp_path / "city", with_images=False)
    ps = load_placeset(tmp_path / "city")
    descriptors = tmp_path / "desc.npz"
    db = np.eye(4, dtype=np.float32)
    np.savez(descriptors, db=db, queries=db[[0, 3, 1]])
    out = tmp_path / "out" / "result.json"
    assert main(["evaluate", str(tmp_path / "city"), "--descriptors", str(descriptors), "--radius", "10", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "radius 10 m (published TSCM protocol)" in printed
    saved = json.loads(out.read_text())
    expected = evaluate_descriptors(ps, db, db[[0, 3, 1]], radius=10.0)
    assert saved["recall"] == {str(n): v for n, v in expected.recall.items()}
    assert saved["num_queries_evaluated"] == 2 and saved["radius"] == 10.0 and saved["unit"] == "m"
    assert {"average_precision", "recall_at_100_precision", "f1_max"} <= set(saved["pr"])

    np.savez(descriptors, db=db[:3], queries=db[[0, 3, 1]])
    assert main(["evaluate", str(tmp_path / "city"), "--descriptors", str(descriptors)]) == 2
    assert "descriptors 'db': expected shape (4, D)" in capsys.readouterr().err
    np.savez(descriptors, database=db)
    assert main(["evaluate", str(tmp_path / "city"), "--descriptors", str(descriptors)]) == 2
    assert "missing array(s) ['db', 'queries']" in capsys.readouterr().err


def test_evaluate_command_with_checkpoint(tmp_path, capsys):
    from tscm.models.checkpoint import save_checkpoint
    from tscm.models.presets import build_model, get_preset

    torch.manual_seed(0)
    config = get_preset("student-tiny")
    model = build_model(config).eval()
    save_checkpoint(tmp_path / "ckpt", model, config)
    write_pittsburgh(tmp_path / "city")
    ps = load_placeset(tmp_path / "city")
    saved = tmp_path / "desc.npz"
    argv = ["evaluate", str(tmp_path / "city"), "--checkpoint", str(tmp_path / "ckpt"), "--batch-size", "3",
            "--save-descriptors", str(saved), "--json", str(tmp_path / "r.json")]
    assert main(argv) == 0
    assert "radius 25 m (community standard)" in capsys.readouterr().out
    with np.load(saved) as contents:
        db, queries = contents["db"], contents["queries"]
    size, mean, std = config.image_size, config.mean, config.std
    with torch.no_grad():
        expected_db = model(torch.stack([eval_transform(load_rgb(p), size, mean, std) for p in ps.db_paths])).numpy()
    np.testing.assert_allclose(db, expected_db, rtol=1e-4, atol=1e-5)
    assert queries.shape == (3, expected_db.shape[1])
    expected = evaluate_descriptors(ps, db, queries).to_json()
    written = json.loads((tmp_path / "r.json").read_text())
    # evaluate adds one precision-recall block per decision score (issue 20) beside the descriptors' result
    assert set(written.pop("pr_by_score")) == {"distance", "ratio", "normalised"}
    assert written == expected

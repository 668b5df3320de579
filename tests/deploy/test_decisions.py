"""The recognizer's decisions (decision score, threshold, temporal consistency) against a plain
recomputation over every map entry; calibrate's JSON; describe_one against describe."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tscm import cli
from tscm.deploy.retrieval.recognizer import PlaceRecognizer
from tscm.evaluation.consistency import consistent_acceptance
from tscm.evaluation.decision import DecisionRule, decision_scores
from tscm.evaluation.ranking import squared_distances


def route_descriptors(num, dim, seed, look_alikes=True):
    """Unit descriptors along a route: each a small step from the previous; with `look_alikes`, the
    second half of the route looks like the first."""
    rng = np.random.default_rng(seed)
    steps = rng.normal(size=(num, dim)).astype(np.float32)
    walk = np.cumsum(0.3 * steps, axis=0) + rng.normal(size=dim)
    if look_alikes:
        walk[num // 2:] = walk[: num - num // 2] + 0.2 * rng.normal(size=(num - num // 2, dim))
    return (walk / np.linalg.norm(walk, axis=1, keepdims=True)).astype(np.float32)


def plain_decision(index, descriptor, searchable, rule, xy=None):
    """Top-1 row and score from the full distance row over the first `searchable` entries, by decision_scores."""
    row = squared_distances(index.to_search_space(descriptor[None]), index.vectors()[:searchable])
    positions = np.asarray(xy[:searchable]) if rule.unit == "m" else np.arange(searchable, dtype=np.float64)
    result = decision_scores(row, positions, rule.exclusion, (rule.score,))
    return int(result.top1[0]), float(result.scores[rule.score][0])


@pytest.mark.parametrize("score, unit, exclusion", [("distance", "frame", 5.0), ("ratio", "frame", 5.0),
                                                    ("ratio", "frame", 0.0), ("ratio", "m", 30.0),
                                                    ("normalised", "frame", 5.0)])
@pytest.mark.parametrize("backend, params", [("flat", {}), ("pca-flat", {"pca_dim": 16})])
def test_search_decides_as_the_plain_full_row_does(tiny_student, score, unit, exclusion, backend, params):
    recognizer = PlaceRecognizer.from_checkpoint(tiny_student, backend=backend, train_after=300, **params)
    map_descriptors = route_descriptors(400, recognizer.dim, seed=1)
    xy = np.stack([10.0 * np.arange(400), np.zeros(400)], axis=1)
    recognizer.add_descriptors(map_descriptors, np.arange(400), xy=xy)
    assert recognizer.index.backend == backend
    queries = map_descriptors[::7] + 0.05 * np.random.default_rng(2).normal(size=(58, recognizer.dim)).astype(np.float32)
    plain_rule = DecisionRule(score, 0.0, exclusion, unit)
    values = [plain_decision(recognizer.index, q, 380, plain_rule, xy)[1] for q in queries]
    threshold = float(np.median(values))
    recognizer.index.set_threshold({"distance": threshold, "score": score, "exclusion": exclusion, "unit": unit,
                                    "sequence_length": 1})
    rule = DecisionRule(score, threshold, exclusion, unit)
    found = recognizer.search(queries, 3, exclude_positions=20)
    for query, places, value in zip(queries, found, values):
        top1, _ = plain_decision(recognizer.index, query, 380, rule, xy)
        assert places[0].id == top1
        assert places[0].decision_score == pytest.approx(value, rel=1e-4, abs=1e-6)
        assert places[0].accepted == (value <= threshold) and places[0].score_name == score
        assert all(p.id < 380 for p in places)
    assert 0 < sum(p[0].accepted for p in found) < len(found)


def test_observe_with_consistency_decides_as_a_plain_loop(tiny_student, monkeypatch):
    recognizer = PlaceRecognizer.from_checkpoint(tiny_student, backend="flat")
    first = route_descriptors(150, recognizer.dim, seed=3, look_alikes=False)
    rng = np.random.default_rng(4)
    noise = 0.2 / np.sqrt(recognizer.dim)  # a fifth of a unit descriptor's length
    revisit = first[20:100] + noise * rng.normal(size=(80, recognizer.dim)).astype(np.float32)  # the loop closes
    stream = np.concatenate([first, revisit])
    monkeypatch.setattr(recognizer, "describe_one", lambda image, **kw: np.asarray(image, dtype=np.float32)[None])
    recognizer.add_descriptors(first[:1], [0], times=[0.0])  # the first frame: the map exists, a threshold can be set
    rule = DecisionRule("ratio", 0.8, 5.0, "frame")
    recognizer.index.set_threshold({"distance": rule.threshold, "score": "ratio", "exclusion": 5.0, "unit": "frame",
                                    "sequence_length": 1})
    exclude = 10
    observed, timings = [], {}
    for t, frame in enumerate(stream[1:], start=1):
        observed.append(recognizer.observe(frame, time=float(t), exclude_recent=exclude, consistency=3, timings=timings))
    # plain: recompute every frame's decision over the entries older than `exclude` frames
    passed, positions, tops = [], [], []
    vectors = np.concatenate([first[:1], stream[1:]])
    for t in range(1, len(stream)):
        searchable = t - exclude + 1  # entries 0..t-1 with time ≤ t - exclude
        if searchable <= 0:
            passed.append(False), positions.append(-1), tops.append(None)
            continue
        row = squared_distances(stream[t][None], vectors[:searchable])
        result = decision_scores(row, np.arange(searchable, dtype=np.float64), 5.0, ("ratio",))
        passed.append(bool(result.scores["ratio"][0] <= rule.threshold))
        positions.append(int(result.top1[0]))
        tops.append(int(result.top1[0]))
    expected = consistent_acceptance(passed, positions, 3)
    got = [bool(found and found[0].accepted) for found in observed]
    assert [found[0].id if found else None for found in observed] == tops
    assert got == expected.tolist()
    assert sum(got) > 20 and sum(passed) > sum(got)  # the filter held some back, and loop closures were found
    assert set(timings) >= {"search", "decision", "add"}  # decode and describe: describe_one is replaced here


def test_describe_one_gives_what_describe_gives(tiny_student):
    recognizer = PlaceRecognizer.from_checkpoint(tiny_student)
    image = np.random.default_rng(5).integers(0, 256, size=(40, 60, 3), dtype=np.uint8)
    timings = {}
    assert np.array_equal(recognizer.describe_one(image, timings=timings), recognizer.describe([image]).descriptors)
    assert set(timings) == {"decode", "describe"}


def write_route_manifest(folder, frames=70, aliased_test=False):
    """A CSV manifest of a frame-ordered route with val and test splits: each query is its database
    frame's picture with a little noise, so top-1 matches are right and a threshold is reachable.
    `aliased_test`: every other test query from the 20th on shows frame i − 20 instead (a place that looks
    like another): confident wrong matches that val does not have."""
    from PIL import Image

    rng = np.random.default_rng(7)
    lines = ["path,frame,role,split"]
    for split, offset in (("val", 0), ("test", 1000)):
        pictures = []
        for i in range(frames):
            picture = np.kron(rng.integers(0, 256, size=(4, 8, 3)), np.ones((8, 8, 1))).astype(np.uint8)
            pictures.append(picture)
            seen = pictures[i - 20] if aliased_test and split == "test" and i >= 20 and i % 2 else picture
            noisy = np.clip(seen + rng.normal(0, 4, size=picture.shape), 0, 255).astype(np.uint8)
            for role, pixels in (("database", picture), ("query", noisy)):
                name = f"{split}/{role}/{i:03d}.png"
                (folder / name).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(folder / name)
                lines.append(f"{name},{offset + i},{role},{split}")
    (folder / "route.csv").write_text("\n".join(lines) + "\n")
    return folder / "route.csv"


@pytest.mark.slow
def test_index_calibrate_writes_the_index_and_its_json_together_or_neither(tiny_student, tmp_path, capsys,
                                                                          monkeypatch):
    """A full disk while writing the JSON keeps the index as it was: no threshold without its report."""
    from tscm.data.formats import load_placeset
    from tscm.deploy.retrieval import calibration

    manifest = write_route_manifest(tmp_path)
    recognizer = PlaceRecognizer.from_checkpoint(tiny_student, backend="flat")
    recognizer.add(load_placeset(manifest, split="test").db_paths)
    recognizer.save(tmp_path / "map.idx")
    before = (tmp_path / "map.idx").read_bytes()

    def full_disk(path, obj):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(calibration, "write_json_atomic", full_disk)
    args = ["index", "calibrate", "--index", str(tmp_path / "map.idx"), "--data", str(manifest), "--split", "val",
            "--target-precision", "90", "--json", str(tmp_path / "calibration.json")]
    assert cli.main(args) == 2
    assert "No space left" in capsys.readouterr().err
    assert (tmp_path / "map.idx").read_bytes() == before and not (tmp_path / "calibration.json").exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


@pytest.mark.slow
def test_index_calibrate_measures_then_writes_the_index_and_json_once(tiny_student, tmp_path, capsys):
    from tscm.data.formats import load_placeset

    manifest = write_route_manifest(tmp_path)
    recognizer = PlaceRecognizer.from_checkpoint(tiny_student, backend="flat")
    test_set = load_placeset(manifest, split="test")
    recognizer.add(test_set.db_paths)
    recognizer.save(tmp_path / "map.idx")
    before = (tmp_path / "map.idx").read_bytes()
    # a measurement that fails (no such split) writes neither the index nor the JSON
    args = ["index", "calibrate", "--index", str(tmp_path / "map.idx"), "--data", str(manifest), "--split", "val",
            "--target-precision", "90", "--json", str(tmp_path / "calibration.json")]
    assert cli.main([*args, "--measure", "nosuch"]) == 2
    assert (tmp_path / "map.idx").read_bytes() == before and not (tmp_path / "calibration.json").exists()
    assert cli.main([*args, "--measure", "test"]) == 0
    report = json.loads((tmp_path / "calibration.json").read_text())
    assert report["score"] in ("distance", "ratio", "normalised") and report["target_precision"] == 0.9
    assert report["bound"] == "clopper-pearson" and report["confidence"] == 0.95
    assert report["calibration"]["split"] == "val" and report["calibration"]["precision_bound"] >= 0.9
    assert 0 <= report["calibration"]["recall"] <= 1 and report["calibration"]["precision"] >= 0.9
    measured = report["measured"]
    assert set(measured) == {"split", "precision", "recall", "accepted", "false_positives", "unseen_accepted",
                             "precision_upper_bound", "below_target"}
    assert measured["split"] == "test" and measured["below_target"] is False
    assert all(0 <= measured[k] <= 1 for k in measured if k not in ("split", "below_target"))
    stored = PlaceRecognizer.load(tmp_path / "map.idx").index.threshold(1)
    assert stored["distance"] == report["threshold"] and stored["score"] == report["score"]
    # the measured numbers are what the stored rule gives on test, recomputed through the recognizer
    loaded = PlaceRecognizer.load(tmp_path / "map.idx")
    places = [loaded.query(path, 1)[0] for path in test_set.query_paths]
    accepted = [p.accepted for p in places]
    right = [p.accepted and abs(p.id - q) <= 1 for q, p in enumerate(places)]
    assert measured["accepted"] == pytest.approx(sum(accepted) / len(places))
    assert measured["false_positives"] == pytest.approx((sum(accepted) - sum(right)) / len(places))
    out = capsys.readouterr().out
    assert "wrote" in out and "warning" not in out


@pytest.mark.slow
def test_index_calibrate_warns_when_the_measured_split_misses_the_target(tiny_student, tmp_path, capsys):
    """Val has no look-alike places and test does: the val threshold accepts test's confident wrong matches,
    and calibrate says the threshold does not hold there instead of only printing the lower precision."""
    from tscm.data.formats import load_placeset

    manifest = write_route_manifest(tmp_path, aliased_test=True)
    recognizer = PlaceRecognizer.from_checkpoint(tiny_student, backend="flat")
    recognizer.add(load_placeset(manifest, split="test").db_paths)
    recognizer.save(tmp_path / "map.idx")
    args = ["index", "calibrate", "--index", str(tmp_path / "map.idx"), "--data", str(manifest), "--split", "val",
            "--target-precision", "90", "--bound", "none", "--score", "distance", "--no-unseen", "--measure", "test",
            "--json", str(tmp_path / "calibration.json")]
    assert cli.main(args) == 0
    measured = json.loads((tmp_path / "calibration.json").read_text())["measured"]
    assert measured["precision"] < 0.9 and measured["precision_upper_bound"] < 0.9 and measured["below_target"]
    out = capsys.readouterr().out
    assert "warning: the threshold does not hold on" in out and "test" in out and "--sequence" in out


@pytest.mark.parametrize("score", ["ratio", "normalised", "distance"])
def test_query_sequence_decides_as_batch_sequence_scores_do(tiny_student, monkeypatch, score):
    from tscm.evaluation.sequence import sequence_scores

    recognizer = PlaceRecognizer.from_checkpoint(tiny_student, backend="flat")
    db = route_descriptors(120, recognizer.dim, seed=8)
    recognizer.add_descriptors(db, np.arange(120))
    rng = np.random.default_rng(9)
    stream = db[30:90] + 0.15 * rng.normal(size=(60, recognizer.dim)).astype(np.float32)
    monkeypatch.setattr(recognizer, "describe_one", lambda image, **kw: np.asarray(image, dtype=np.float32)[None])
    rows = sequence_scores(squared_distances(stream, db), 5)
    plain = decision_scores(rows, np.arange(120, dtype=np.float64), 5.0, (score,))
    threshold = float(np.quantile(plain.scores[score], 0.6))
    recognizer.index.set_threshold({"distance": threshold, "score": score, "exclusion": 5.0, "unit": "frame",
                                    "sequence_length": 5})
    got = [recognizer.query_sequence(frame, 2, length=5, consistency=2)[0] for frame in stream]
    assert [p.id for p in got] == plain.top1.tolist()
    np.testing.assert_allclose([p.decision_score for p in got], plain.scores[score], rtol=1e-5, atol=1e-6)
    passed = plain.scores[score] <= threshold
    assert [p.accepted for p in got] == consistent_acceptance(passed, plain.top1, 2).tolist()


@pytest.mark.parametrize("backend, params", [("flat", {}), ("pca-flat", {"pca_dim": 8}), ("hnsw", {})])
def test_one_entry_at_a_time_gives_the_index_of_one_bulk_add(backend, params):
    from tscm.deploy.retrieval.index import PlaceIndex

    rng = np.random.default_rng(10)
    descriptors = rng.normal(size=(300, 16)).astype(np.float32)
    xy, times = rng.normal(size=(300, 2)), np.arange(300, dtype=np.float64)
    bulk = PlaceIndex.build(descriptors, np.arange(300), xy=xy, times=times, paths=[f"{i}" for i in range(300)],
                            backend=backend, **params)
    streamed = PlaceIndex.create(backend, 16, **params)
    if streamed.needs_training:
        streamed.train(descriptors)
    queries = rng.normal(size=(5, 16)).astype(np.float32)
    for i in range(300):
        streamed.add(descriptors[i:i + 1], [i], xy=xy[i:i + 1], times=times[i:i + 1], paths=[f"{i}"])
        if i % 37 == 0:  # searches between adds keep their caches, which the next add must extend
            streamed.search(queries, 3), streamed.vectors()
    assert np.array_equal(streamed.ids, bulk.ids) and np.array_equal(streamed.times, bulk.times)
    assert np.array_equal(streamed.coordinates, bulk.coordinates) and streamed.entry(299) == bulk.entry(299)
    np.testing.assert_array_equal(streamed.vectors(), bulk.vectors())
    if backend != "hnsw":  # a graph built one node at a time is another graph
        a, b = streamed.search(queries, 5), bulk.search(queries, 5)
        assert np.array_equal(a.indices, b.indices) and np.array_equal(a.distances, b.distances)
    with pytest.raises(Exception, match="unique"):
        streamed.add(descriptors[:1], [17])
    assert streamed.count == 300

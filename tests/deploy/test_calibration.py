"""Loop-closure decisions: thresholds calibrated on a validation split, stored in the index file, turned
into `accepted` and a confidence by the recognizer; streaming sequences; recent frames excluded."""

from __future__ import annotations

import numpy as np
import pytest

from tscm.data.places import PlaceSet
from tscm.deploy.retrieval.calibration import calibrate, index_scores, measure, pick_score
from tscm.deploy.retrieval.index import PlaceIndex
from tscm.deploy.retrieval.recognizer import PlaceRecognizer
from tscm.errors import TscmError


def route(num: int, seed: int, noise: float, dim: int = 16, split: str = "val") -> tuple[PlaceSet, np.ndarray, np.ndarray]:
    """A frame-ordered route: database frame i and query frame i show the same place (noise on the query);
    the last fifth of the queries are places the database does not hold."""
    rng = np.random.default_rng(seed)
    db = rng.normal(size=(num, dim)).astype(np.float32)
    queries = db + rng.normal(0, noise, size=db.shape).astype(np.float32)
    unseen = num - num // 5
    queries[unseen:] = rng.normal(size=(num - unseen, dim))
    frames = np.arange(num, dtype=np.float64)
    query_frames = frames.copy()
    query_frames[unseen:] += 10 * num  # far along the route: no database frame within ±1
    placeset = PlaceSet("route", split, [f"/db/{i}.png" for i in range(num)], [f"/q/{i}.png" for i in range(num)],
                        frames, query_frames, unit="frame")
    return placeset, db, queries


def plain_precision_recall(distances, top1, positives, threshold):
    tp = fp = 0
    for d, t, pos in zip(distances, top1, positives):
        if d <= threshold:
            if t in set(pos.tolist()):
                tp += 1
            else:
                fp += 1
    with_match = sum(len(p) > 0 for p in positives)
    return (tp / (tp + fp) if tp + fp else 1.0), tp / with_match


@pytest.mark.parametrize("backend, params", [("flat", {}), ("pca-flat", {"pca_dim": 8})])
def test_calibrated_threshold_reaches_its_precision_in_the_index_space(backend, params):
    val, db, queries = route(200, seed=0, noise=0.5)
    index = PlaceIndex.build(db, backend=backend, **params)
    # matched queries only: precision over the split's own queries, as a plain loop computes it
    entry = calibrate(index, db, queries, val, target_precision=0.9, score="distance", bound="none", unseen=False)
    assert entry["precision"] >= 0.9 and entry["space"] == index.space() and entry["sequence_length"] == 1
    assert entry["score"] == "distance" and entry["precision_bound"] == entry["precision"]
    # the stored distance is in the same space as index.search: check it with a plain loop there
    result = index.search(queries, 1)
    precision, recall = plain_precision_recall(result.distances[:, 0], result.indices[:, 0], val.positives(1.0),
                                               entry["distance"])
    assert precision == pytest.approx(entry["precision"]) and recall == pytest.approx(entry["recall"])
    # the largest such threshold: the next larger top-1 distance drops below the target
    larger = np.sort(result.distances[:, 0][result.distances[:, 0] > entry["distance"]])
    if len(larger):
        assert plain_precision_recall(result.distances[:, 0], result.indices[:, 0], val.positives(1.0), larger[0])[0] < 0.9


def test_threshold_transfers_and_travels_through_the_index_file(tmp_path):
    val, val_db, val_queries = route(200, seed=1, noise=0.6)
    test, test_db, test_queries = route(200, seed=2, noise=0.6, split="test")
    index = PlaceIndex.build(test_db, backend="flat")  # the deployment map: the test route's database
    entry = calibrate(index, val_db, val_queries, val, target_precision=0.9, score="distance", bound="none",
                      unseen=False)
    transfer = measure(index, test_db, test_queries, test)
    scores, top1 = index_scores(index, test_db, test_queries, test)
    precision, recall = plain_precision_recall(scores, top1, test.positives(1.0), entry["distance"])
    assert transfer["precision"] == pytest.approx(precision) and transfer["recall"] == pytest.approx(recall)
    index.save(tmp_path / "map.index")
    loaded = PlaceIndex.load(tmp_path / "map.index")
    assert loaded.threshold(1) == entry and loaded.threshold(10) is None
    # a threshold of another space (the map rebuilt with PCA) does not apply there
    rebuilt = PlaceIndex.build(test_db, backend="pca-flat", pca_dim=8)
    rebuilt.thresholds = loaded.thresholds
    assert rebuilt.threshold(1) is None and rebuilt.stale_thresholds() == loaded.thresholds


def test_unreachable_precision_stores_nothing():
    val, db, queries = route(100, seed=3, noise=3.0)  # queries barely resemble their places
    index = PlaceIndex.build(db, backend="flat")
    with pytest.raises(TscmError, match="no threshold reaches precision 100"):
        calibrate(index, db, queries, val, target_precision=1.0, score="distance", bound="none")
    with pytest.raises(TscmError, match=r"no decision score .* needs at least 59 correct accepted matches"):
        calibrate(index, db, queries, val, target_precision=0.95)  # every score, with the confidence bound
    assert index.thresholds == []


def test_by_default_precision_also_counts_each_query_with_its_place_cut_out():
    val, db, queries = route(200, seed=0, noise=0.5)
    index = PlaceIndex.build(db, backend="flat")
    plain = calibrate(index, db, queries, val, target_precision=0.9, score="distance", bound="none", unseen=False)
    entry = calibrate(index, db, queries, val, target_precision=0.9, score="distance", bound="none")
    assert entry["unseen"] is True and plain["unseen"] is False
    assert entry["distance"] <= plain["distance"] and entry["recall"] <= plain["recall"]
    # a plain loop: each query's twin is its nearest database frame more than ±1 + 5 frames from its matches
    result = index.search(queries, len(db))
    tp = fp = 0
    for q, matches in enumerate(val.positives(1.0)):
        top1, d = result.indices[q, 0], result.distances[q, 0]
        if d <= entry["distance"]:
            tp, fp = (tp + 1, fp) if top1 in set(matches.tolist()) else (tp, fp + 1)
        if len(matches):
            kept = [k for k, j in enumerate(result.indices[q]) if all(abs(j - m) > 5 for m in matches)]
            fp += bool(kept) and result.distances[q, kept[0]] <= entry["distance"]
    assert tp / (tp + fp) == pytest.approx(entry["precision"]) and tp / (tp + fp) >= 0.9


def test_recognizer_accepts_and_gives_confidence_from_the_index_file(tiny_student, tmp_path):
    recognizer = PlaceRecognizer.from_checkpoint(tiny_student, backend="flat")
    rng = np.random.default_rng(4)
    db = rng.normal(size=(50, recognizer.dim)).astype(np.float32)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    recognizer.add_descriptors(db, np.arange(50))
    assert recognizer.threshold is None
    assert all(p.accepted is None and p.confidence is None for p in recognizer.search(db[:3], 2)[0])
    threshold = 0.05
    recognizer.index.set_threshold({"distance": threshold, "target_precision": 0.99, "precision": 1.0, "recall": 0.5})
    recognizer.save(tmp_path / "map.index")
    loaded = PlaceRecognizer.load(tmp_path / "map.index")
    near = db[7] + 0.01 * rng.normal(size=recognizer.dim).astype(np.float32)
    far = rng.normal(size=recognizer.dim).astype(np.float32)
    hits = loaded.search(np.stack([near, far]), 3)
    assert hits[0][0].id == 7 and hits[0][0].accepted is True and hits[0][0].confidence > 0.5
    assert hits[1][0].accepted is False and hits[1][0].confidence < 0.5
    for place in hits[0] + hits[1]:
        assert place.accepted == (place.distance <= threshold)
        assert place.confidence == pytest.approx(threshold / (threshold + place.distance))


def test_query_sequence_resolves_a_route_single_frames_cannot(tiny_student, monkeypatch):
    recognizer = PlaceRecognizer.from_checkpoint(tiny_student, backend="flat")
    rng = np.random.default_rng(5)
    patterns = rng.normal(size=(4, recognizer.dim)).astype(np.float32)
    labels = rng.integers(0, 4, size=60)
    db = patterns[labels] + 0.05 * rng.normal(size=(60, recognizer.dim)).astype(np.float32)
    recognizer.add_descriptors(db, np.arange(60))
    # The robot drives database frames 20..39 again: each frame looks like a quarter of the map.
    stream = patterns[labels[20:40]] + 0.3 * rng.normal(size=(20, recognizer.dim)).astype(np.float32)
    # The stream's "images" are its descriptors: describe_one() is replaced, the model is not what is tested.
    monkeypatch.setattr(recognizer, "describe_one", lambda image, **kw: np.asarray(image, dtype=np.float32)[None])
    single = [recognizer.search(frame[None], 1)[0][0].id for frame in stream]
    sequence = [recognizer.query_sequence(frame, 1, length=8)[0].id for frame in stream]
    truth = list(range(20, 40))
    single_hits = sum(a == b for a, b in zip(single, truth))
    sequence_hits = sum(a == b for a, b in zip(sequence[8:], truth[8:]))  # once 8 frames have been seen
    assert sequence_hits == len(truth) - 8 and single_hits <= 5


def test_query_sequence_with_a_length_past_any_stream_keeps_only_the_stream(tiny_student, monkeypatch):
    recognizer = PlaceRecognizer.from_checkpoint(tiny_student, backend="flat")
    rng = np.random.default_rng(7)
    db = rng.normal(size=(40, recognizer.dim)).astype(np.float32)
    recognizer.add_descriptors(db, np.arange(40))
    monkeypatch.setattr(recognizer, "describe_one", lambda image, **kw: np.asarray(image, dtype=np.float32)[None])
    stream = db[10:30] + 0.1 * rng.normal(size=(20, recognizer.dim)).astype(np.float32)
    endless = [recognizer.query_sequence(frame, 3, length=10**15)[0] for frame in stream]  # once: 10^15 rows
    recognizer._sequence = None
    whole = [recognizer.query_sequence(frame, 3, length=20)[0] for frame in stream]  # the stream's own length
    assert [p.id for p in endless] == [p.id for p in whole]
    assert [p.distance for p in endless] == pytest.approx([p.distance for p in whole])


def test_observe_with_sequences_closes_loops_single_frames_cannot(tiny_student, monkeypatch):
    """One traversal: 60 places, then places 20..39 again; every frame looks like a quarter of the route."""
    rng = np.random.default_rng(5)
    dim = PlaceRecognizer.from_checkpoint(tiny_student).dim
    patterns = rng.normal(size=(4, dim))
    labels = rng.integers(0, 4, size=60)
    first = patterns[labels] + 0.05 * rng.normal(size=(60, dim))
    again = patterns[labels[20:40]] + 0.3 * rng.normal(size=(20, dim))
    frames = np.concatenate([first, again])
    frames = (frames / np.linalg.norm(frames, axis=1, keepdims=True)).astype(np.float32)  # unit, as models give

    def revisits(sequence: int) -> list[int | None]:
        recognizer = PlaceRecognizer.from_checkpoint(tiny_student, backend="flat")
        # The stream's "images" are its descriptors: describe_one() is replaced, the model is not what is tested.
        monkeypatch.setattr(recognizer, "describe_one", lambda image, **kw: np.asarray(image)[None])
        found = [recognizer.observe(frame, time=float(t), exclude_recent=10, sequence=sequence)
                 for t, frame in enumerate(frames)]
        return [places[0].id if places else None for places in found[60:]]

    single, sequence = revisits(1), revisits(8)
    truth = list(range(20, 40))
    assert sum(a == b for a, b in zip(sequence[8:], truth[8:])) == len(truth) - 8  # once 8 frames were seen again
    assert sum(a == b for a, b in zip(single, truth)) <= 5
    with pytest.raises(TscmError, match="sequence: expected a number of frames ≥ 1, got 0"):
        PlaceRecognizer.from_checkpoint(tiny_student).observe(frames[0], sequence=0)


def test_observe_never_closes_a_loop_on_the_frames_it_just_saw(tiny_student, monkeypatch):
    recognizer = PlaceRecognizer.from_checkpoint(tiny_student, backend="flat")
    rng = np.random.default_rng(6)
    places = rng.normal(size=(30, recognizer.dim)).astype(np.float32)
    monkeypatch.setattr(recognizer, "describe_one", lambda image, **kw: np.asarray(image, dtype=np.float32)[None])
    candidates = []
    for t in range(30):  # a robot driving on: every frame is near the previous one
        frame = places[t] + (places[t - 1] if t else 0) * 0.9
        candidates.append(recognizer.observe(frame, time=float(t), exclude_recent=5, k=3))
    for t, found in enumerate(candidates):
        assert all(place.time <= t - 5 for place in found), t  # never one of the last 5 frames
        assert (len(found) == 0) == (t < 5)
    revisit = recognizer.observe(places[3] + places[2] * 0.9, time=40.0, exclude_recent=5, k=1)
    assert revisit[0].time == 3.0  # back at frame 3: the loop closes there
    with pytest.raises(TscmError, match="exclude_recent"):
        recognizer.observe(places[0], time=41.0, exclude_recent=-1)


def test_auto_keeps_the_default_score_unless_another_beats_it_by_more_than_noise():
    # 300 queries: two binomial standard errors at 90 % recall ≈ 3.5 points.
    assert pick_score({"distance": 0.05, "ratio": 0.903, "normalised": 0.917}, 300) == "ratio"
    assert pick_score({"distance": 0.05, "ratio": 0.80, "normalised": 0.917}, 300) == "normalised"
    # With many more queries the same 1.4-point lead is beyond noise.
    assert pick_score({"ratio": 0.903, "normalised": 0.917}, 30_000) == "normalised"
    # Without the default among the reachable scores: the highest recall.
    assert pick_score({"distance": 0.2, "normalised": 0.5}, 300) == "normalised"
    assert pick_score({"ratio": 0.9, "normalised": 0.9}, 300) == "ratio"

"""Mining against a plain per-query loop, its rules, skipped queries, state round trip, float16 cache."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from tscm.bench.mining import eligible_negatives, mine_per_query_loop, structured_places
from tscm.config.sections import MiningSettings
from tscm.data.mining import DescriptorCache, Miner
from tscm.data.places import PlaceSet
from tscm.errors import TscmError

NUM_DB, NUM_QUERIES, DIM = 240, 50, 12


def small_city(seed: int = 0, headings: bool = True) -> tuple[PlaceSet, np.ndarray, np.ndarray]:
    """Random places in a 150 m square with descriptors that vary smoothly with position (plus noise)."""
    rng = np.random.default_rng(seed)
    db_xy = rng.uniform(0, 150, (NUM_DB, 2))
    query_xy = rng.uniform(0, 150, (NUM_QUERIES, 2))
    projection = rng.normal(0, 1, (2, DIM))

    def describe(xy: np.ndarray) -> np.ndarray:
        values = np.cos(xy / 25.0 @ projection) + 0.3 * rng.normal(0, 1, (len(xy), DIM))
        return values / np.linalg.norm(values, axis=1, keepdims=True)

    placeset = PlaceSet(
        "city",
        "train",
        [Path(f"d{i}.jpg") for i in range(NUM_DB)],
        [Path(f"q{i}.jpg") for i in range(NUM_QUERIES)],
        db_xy,
        query_xy,
        rng.uniform(0, 360, NUM_DB) if headings else None,
        rng.uniform(0, 360, NUM_QUERIES) if headings else None,
    )
    return placeset, describe(db_xy), describe(query_xy)


def reference_mine(placeset, settings, cache, query_indices, rng, previous):
    """One query at a time, float64, straight from the definitions; updates `previous` in place."""
    db = cache.db.astype(np.float64)
    queries = cache.queries.astype(np.float64)
    tuples = []
    for q in query_indices:
        near_q = set(int(i) for i in range(NUM_DB) if np.hypot(*(placeset.db_xy[i] - placeset.query_xy[q])) <= settings.neg_radius_m)
        far = [i for i in range(NUM_DB) if i not in near_q]
        draws = rng.random(settings.num_random)
        sampled = [far[min(int(u * len(far)), len(far) - 1)] for u in draws]
        within = [i for i in range(NUM_DB) if np.hypot(*(placeset.db_xy[i] - placeset.query_xy[q])) <= settings.pos_radius_m]
        rule = settings.positive_rule
        if rule == "heading" and placeset.query_heading is not None:
            def angle(i):
                diff = abs(placeset.db_heading[i] - placeset.query_heading[q]) % 360
                return min(diff, 360 - diff)
            within = [i for i in within if angle(i) <= settings.heading_tolerance_deg]
        if not within:
            continue
        if rule == "nearest":
            positive = min(within, key=lambda i: np.hypot(*(placeset.db_xy[i] - placeset.query_xy[q])))
        else:
            positive = min(within, key=lambda i: np.linalg.norm(db[i] - queries[q]))
        positive_distance = np.linalg.norm(db[positive] - queries[q])
        pool = sorted(set(sampled) | set(int(i) for i in previous[q] if i >= 0))
        scored = [(np.linalg.norm(db[i] - queries[q]), i) for i in pool]
        violating = [(d, i) for d, i in scored if d < positive_distance + math.sqrt(settings.margin)]
        kept = [i for _, i in sorted(violating, key=lambda pair: pair[0])][: settings.num_negatives]
        if not kept:
            continue
        previous[q] = -1
        previous[q, : len(kept)] = kept
        tuples.append((int(q), int(positive), kept))
    return tuples


def as_plain(tuples):
    return [(t.query, t.positive, t.negatives.tolist()) for t in tuples]


@pytest.mark.parametrize("path", ["dense", "gathered"])
@pytest.mark.parametrize(
    "rule,dtype,margin",
    [("descriptor", "float32", 0.1), ("heading", "float32", 0.01), ("nearest", "float16", 0.1), ("heading", "float16", 0.0)],
)
def test_matches_per_query_reference(rule: str, dtype: str, margin: float, path: str, monkeypatch) -> None:
    """Both ways of computing the distances (one product with the whole database; only the rows mining
    reads, as for a large database) give the reference's tuples."""
    import tscm.data.mining as mining

    monkeypatch.setattr(mining, "DENSE_MINING_RATIO", 10**9 if path == "dense" else 0)
    monkeypatch.setattr(mining, "GATHER_QUERIES", 3)  # several blocks per chunk of 7
    placeset, db, queries = small_city(1)
    settings = MiningSettings(num_negatives=4, num_random=30, margin=margin, positive_rule=rule, query_chunk=7)
    cache = DescriptorCache(db, queries, dtype)
    miner = Miner(placeset, settings, seed=5)
    reference_rng = np.random.default_rng(5)
    reference_previous = np.full((NUM_QUERIES, 4), -1, dtype=np.int64)
    order = np.random.default_rng(0).permutation(NUM_QUERIES)
    for refresh in range(3):  # later refreshes rank the previous hard negatives too
        mined = miner.mine(cache, order)
        expected = reference_mine(placeset, settings, cache, order, reference_rng, reference_previous)
        assert as_plain(mined) == expected, f"refresh {refresh}"
        assert np.array_equal(miner.previous_negatives, reference_previous)
    stats = miner.last_stats
    assert stats.requested == NUM_QUERIES
    assert stats.tuples + stats.no_positive + stats.no_violating_negative == NUM_QUERIES
    assert stats.tuples > 0 and stats.no_positive > 0


def test_mined_tuples_obey_the_rules() -> None:
    placeset, db, queries = small_city(2)
    settings = MiningSettings(num_negatives=5, num_random=60, margin=0.1, positive_rule="heading", heading_tolerance_deg=60)
    cache = DescriptorCache(db, queries)
    miner = Miner(placeset, settings, seed=0)
    mined = miner.mine(cache, np.arange(NUM_QUERIES))
    assert mined
    for t in mined:
        q_xy, q_desc = placeset.query_xy[t.query], queries[t.query]
        assert np.linalg.norm(placeset.db_xy[t.positive] - q_xy) <= 10.0
        heading_gap = abs((placeset.db_heading[t.positive] - placeset.query_heading[t.query] + 180) % 360 - 180)
        assert heading_gap <= 60
        assert 1 <= len(t.negatives) <= 5 and len(set(t.negatives.tolist())) == len(t.negatives)
        assert (np.linalg.norm(placeset.db_xy[t.negatives] - q_xy, axis=1) > 25.0).all()
        d_pos = np.linalg.norm(db[t.positive] - q_desc)
        d_neg = np.linalg.norm(db[t.negatives] - q_desc, axis=1)
        assert (d_neg < d_pos + math.sqrt(0.1) + 1e-6).all()
        assert (np.diff(d_neg) >= -1e-6).all()  # hardest first


def test_margin_rule_and_skipped_queries() -> None:
    placeset, db, queries = small_city(1)  # some queries of this city have no database image within 10 m
    cache = DescriptorCache(db, queries)
    has_positive = np.array([len(p) > 0 for p in placeset.positives(10.0)])
    # A huge margin makes every candidate violate: every query with a positive keeps the full K.
    loose = Miner(placeset, MiningSettings(num_negatives=6, num_random=40, margin=100.0, positive_rule="descriptor"), 0)
    mined = loose.mine(cache, np.arange(NUM_QUERIES))
    assert sorted(t.query for t in mined) == np.flatnonzero(has_positive).tolist()
    assert all(len(t.negatives) == 6 for t in mined)
    assert loose.last_stats.no_positive == int((~has_positive).sum()) > 0
    # Margin 0 and a positive that is the query's own descriptor: nothing is closer, all skipped.
    own = DescriptorCache(db, queries)
    tight_placeset = PlaceSet("city", "train", placeset.db_paths, placeset.query_paths, placeset.db_xy, placeset.db_xy[:NUM_QUERIES])
    own.set_queries(0, db[:NUM_QUERIES])
    tight = Miner(tight_placeset, MiningSettings(num_random=40, margin=0.0, positive_rule="descriptor"), 0)
    assert tight.mine(own, np.arange(NUM_QUERIES)) == []
    assert tight.last_stats.no_violating_negative == NUM_QUERIES
    assert (tight.previous_negatives == -1).all()


def test_state_round_trip_gives_exact_resume() -> None:
    placeset, db, queries = small_city(4)
    cache = DescriptorCache(db, queries)
    settings = MiningSettings(num_negatives=3, num_random=25, positive_rule="descriptor", query_chunk=8)
    original = Miner(placeset, settings, seed=11)
    original.mine(cache, np.arange(NUM_QUERIES))
    # Through JSON and a plain list, as a trainer would store it.
    state = original.state_dict()
    stored = json.loads(json.dumps({"rng_state": state["rng_state"], "previous": state["previous_negatives"].tolist()}))
    resumed = Miner(placeset, settings, seed=999)
    resumed.load_state_dict({"rng_state": stored["rng_state"], "previous_negatives": np.array(stored["previous"])})
    expected = original.mine(cache, np.arange(NUM_QUERIES))
    assert as_plain(resumed.mine(cache, np.arange(NUM_QUERIES))) == as_plain(expected)
    fresh = Miner(placeset, settings, seed=999)
    fresh.mine(cache, np.arange(NUM_QUERIES))
    assert as_plain(fresh.mine(cache, np.arange(NUM_QUERIES))) != as_plain(expected)  # the state mattered
    with pytest.raises(TscmError, match="previous_negatives"):
        resumed.load_state_dict({"rng_state": state["rng_state"], "previous_negatives": np.zeros((2, 3), np.int64)})
    with pytest.raises(TscmError, match="rng_state"):
        resumed.load_state_dict({"rng_state": "{}", "previous_negatives": state["previous_negatives"]})


def test_float16_cache() -> None:
    placeset, db, queries = small_city(5)
    half = DescriptorCache(db, queries, "float16")
    full = DescriptorCache(db, queries, np.float32)
    assert half.db.dtype == np.float16 and half.nbytes * 2 == full.nbytes
    assert np.abs(half.db.astype(np.float64) - db).max() < 1e-3
    settings = MiningSettings(num_negatives=4, num_random=30, positive_rule="nearest")
    mined_half = Miner(placeset, settings, 3).mine(half, np.arange(NUM_QUERIES))
    mined_full = Miner(placeset, settings, 3).mine(full, np.arange(NUM_QUERIES))
    assert [t.query for t in mined_half] == [t.query for t in mined_full]
    with pytest.raises(TscmError, match="not finite"):
        half.set_db(0, np.full((1, DIM), 1e6))
    with pytest.raises(TscmError, match="dtype"):
        DescriptorCache(db, queries, "int8")


def test_heading_rule_without_headings_is_the_published_rule() -> None:
    placeset, db, queries = small_city(6, headings=False)
    cache = DescriptorCache(db, queries)
    heading = Miner(placeset, MiningSettings(num_random=30, positive_rule="heading"), 2)
    descriptor = Miner(placeset, MiningSettings(num_random=30, positive_rule="descriptor"), 2)
    assert heading.effective_positive_rule == "descriptor"
    assert as_plain(heading.mine(cache, np.arange(NUM_QUERIES))) == as_plain(descriptor.mine(cache, np.arange(NUM_QUERIES)))


def test_bad_input_is_an_error() -> None:
    placeset, db, queries = small_city(7)
    miner = Miner(placeset, MiningSettings(num_random=10, positive_rule="heading"), 0)
    with pytest.raises(TscmError, match="only once"):
        miner.mine(DescriptorCache(db, queries), [1, 2, 1])
    with pytest.raises(TscmError, match="descriptor cache holds"):
        miner.mine(DescriptorCache(db[:10], queries), [0])
    with pytest.raises(TscmError, match=r"\[0, 50\)"):
        miner.mine(DescriptorCache(db, queries), [50])
    with pytest.raises(TscmError, match="positive_rule"):
        Miner(placeset, MiningSettings(positive_rule="closest"), 0)
    with pytest.raises(TscmError, match="neg_radius_m"):
        Miner(placeset, MiningSettings(pos_radius_m=30, neg_radius_m=25), 0)


def test_benchmark_loop_does_the_same_work() -> None:
    placeset, cache = structured_places(num_db=600, num_queries=80, dim=32, seed=1)
    queries = np.arange(80)
    looped = Miner(placeset, MiningSettings(num_random=100), 4)
    loop_tuples = mine_per_query_loop(looped, cache, queries, eligible_negatives(looped, queries))
    batched_tuples = Miner(placeset, MiningSettings(num_random=100), 4).mine(cache, queries)
    assert len(loop_tuples) > 0
    assert as_plain(loop_tuples) == as_plain(batched_tuples)

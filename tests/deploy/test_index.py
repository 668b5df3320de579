"""Place index: round trips per back-end, metadata checks, bad input, atomic saves."""

from __future__ import annotations

import json

import numpy as np
import pytest

import tscm.deploy.retrieval.index_file as index_file_module
import tscm.deploy.retrieval.index_search as index_search
from tscm.errors import TscmError
from tscm.deploy.retrieval.index import PlaceIndex, read_index_metadata, recommended_config

DIM = 32


def clustered_descriptors(num_places: int, views: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalised descriptors: `views` noisy copies of each of `num_places` random place centres."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((num_places, DIM))
    place = np.repeat(np.arange(num_places), views)
    descriptors = centres[place] + 0.05 * rng.standard_normal((len(place), DIM))
    descriptors /= np.linalg.norm(descriptors, axis=1, keepdims=True)
    return descriptors.astype(np.float32), place


def exact_neighbours(database: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    squared = ((queries[:, None, :].astype(np.float64) - database[None, :, :]) ** 2).sum(-1)
    return np.argsort(squared, axis=1, kind="stable")[:, :k]


# Small parameters so each back-end builds in milliseconds on 300 vectors.
BACKEND_PARAMS = {
    "flat": {},
    "pca-flat": {"pca_dim": 16},
    "ivfpq": {"pca_dim": 16, "nlist": 4, "pq_m": 4, "pq_bits": 4, "nprobe": 4, "rerank": 10},
    "hnsw": {"hnsw_m": 8, "ef_construction": 40, "ef_search": 64},
}


@pytest.fixture(scope="module")
def data():
    database, place = clustered_descriptors(num_places=100, views=3, seed=0)
    rng = np.random.default_rng(1)
    query_place = rng.choice(100, size=20, replace=False)
    queries = database[query_place * 3] + 0.02 * rng.standard_normal((20, DIM)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return database, place, queries, query_place


@pytest.mark.parametrize("backend", list(BACKEND_PARAMS))
def test_round_trip_per_backend(tmp_path, data, backend):
    database, place, queries, query_place = data
    ids = np.arange(1000, 1000 + len(database))
    xy = np.stack([place * 50.0, np.arange(len(database)) * 0.5], axis=1)
    paths = [f"db/ümlaut_{i:04d}.jpg" for i in range(len(database))]
    index = PlaceIndex.create(backend, DIM, model_fingerprint="abc123", model_meta={"preset": "tiny"},
                              **BACKEND_PARAMS[backend])
    if index.needs_training:
        index.train(database)
    # Two batches: the second continues the row numbering.
    index.add(database[:120], ids[:120], paths=paths[:120], xy=xy[:120])
    index.add(database[120:], ids[120:], paths=paths[120:], xy=xy[120:])
    assert index.count == len(database)

    result = index.search(queries, k=5)
    assert result.indices.shape == (20, 5)
    # Every back-end finds the query's own place first on this well-separated data.
    np.testing.assert_array_equal(place[result.indices[:, 0]], query_place)
    np.testing.assert_array_equal(result.ids, ids[result.indices])
    np.testing.assert_array_equal(result.xy, xy[result.indices])
    assert result.paths[3][0] == paths[result.indices[3, 0]]
    if backend == "flat":
        np.testing.assert_array_equal(result.indices, exact_neighbours(database, queries, 5))
        reference = ((queries[:, None, :] - database[result.indices]) ** 2).sum(-1)
        np.testing.assert_allclose(result.distances, reference, rtol=1e-4, atol=1e-5)

    path = tmp_path / "places.index"
    index.save(path)
    loaded = PlaceIndex.load(path, expected_fingerprint="abc123")
    again = loaded.search(queries, k=5)
    np.testing.assert_array_equal(again.indices, result.indices)
    np.testing.assert_allclose(again.distances, result.distances, rtol=1e-6)
    np.testing.assert_array_equal(again.ids, result.ids)
    np.testing.assert_array_equal(again.xy, result.xy)
    assert again.paths == result.paths
    assert loaded.params == index.params and loaded.model_meta == {"preset": "tiny"}

    meta = read_index_metadata(path)
    assert meta["backend"] == backend and meta["count"] == len(database) and meta["dim"] == DIM
    assert meta["model_fingerprint"] == "abc123"
    assert meta["memory_bytes"] == index.memory_bytes > database[:, : index.search_dim].nbytes // 8


def test_pca_without_whitening_keeps_distances_in_the_spanned_subspace():
    # Descriptors in a 10-d subspace: PCA to 10 dims must preserve every pairwise distance.
    rng = np.random.default_rng(2)
    basis = np.linalg.qr(rng.standard_normal((DIM, 10)))[0]
    database = (rng.standard_normal((200, 10)) @ basis.T).astype(np.float32)
    queries = (rng.standard_normal((5, 10)) @ basis.T).astype(np.float32)
    index = PlaceIndex.build(database, backend="pca-flat", pca_dim=10)
    result = index.search(queries, k=4)
    np.testing.assert_array_equal(result.indices, exact_neighbours(database, queries, 4))
    reference = ((queries[:, None, :] - database[result.indices]) ** 2).sum(-1)
    np.testing.assert_allclose(result.distances, reference, rtol=1e-3, atol=1e-4)


def test_whitened_pca_gives_unit_variance_axes(data):
    database = data[0]
    index = PlaceIndex.build(database, backend="pca-flat", pca_dim=8, whiten=True)
    projection = index._pca
    centred = (database - projection.mean) @ projection.projection
    np.testing.assert_allclose(np.var(centred, axis=0, ddof=1), 1.0, rtol=1e-3)


def test_fp16_storage_halves_memory_and_keeps_neighbours(data):
    database, _, queries, _ = data
    full = PlaceIndex.build(database, backend="flat")
    half = PlaceIndex.build(database, backend="flat", storage="fp16")
    np.testing.assert_array_equal(half.search(queries, 1).indices, full.search(queries, 1).indices)
    faiss_bytes = lambda index: index._arrays()["faiss_index"].nbytes  # noqa: E731
    assert faiss_bytes(half) < 0.6 * faiss_bytes(full)


def test_fingerprint_mismatch_is_an_error(tmp_path, data):
    path = tmp_path / "a.index"
    PlaceIndex.build(data[0], backend="flat", model_fingerprint="teacher-1").save(path)
    with pytest.raises(TscmError, match="teacher-1.*student-2"):
        PlaceIndex.load(path, expected_fingerprint="student-2")
    unsigned = tmp_path / "b.index"
    PlaceIndex.build(data[0], backend="flat").save(unsigned)
    with pytest.raises(TscmError, match="fingerprint"):
        PlaceIndex.load(unsigned, expected_fingerprint="student-2")


def test_corrupt_files_are_errors(tmp_path, data):
    path = tmp_path / "good.index"
    PlaceIndex.build(data[0], backend="hnsw", hnsw_m=8).save(path)
    raw = path.read_bytes()

    flipped = tmp_path / "flipped.index"
    damaged = bytearray(raw)
    damaged[-100] ^= 0xFF  # inside the array data: only the checksum can notice
    flipped.write_bytes(bytes(damaged))
    with pytest.raises(TscmError, match="checksum"):
        PlaceIndex.load(flipped)

    truncated = tmp_path / "truncated.index"
    truncated.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(TscmError, match="corrupt|readable"):
        PlaceIndex.load(truncated)

    garbage = tmp_path / "garbage.index"
    garbage.write_bytes(b"not an index at all")
    with pytest.raises(TscmError, match="not a readable index"):
        PlaceIndex.load(garbage)

    with pytest.raises(TscmError, match="no such index file"):
        PlaceIndex.load(tmp_path / "missing.index")


def test_foreign_safetensors_file_is_rejected(tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "weights.safetensors"
    save_file({"w": np.zeros(3, dtype=np.float32)}, str(path), metadata={"format": "checkpoint"})
    with pytest.raises(TscmError, match="not a tscm place index"):
        PlaceIndex.load(path)


def test_query_before_add_and_other_bad_input(data):
    database = data[0]
    empty = PlaceIndex.create("flat", DIM)
    with pytest.raises(TscmError, match="empty"):
        empty.search(database[:1], k=1)
    untrained = PlaceIndex.create("pca-flat", DIM, pca_dim=8)
    with pytest.raises(TscmError, match="trained first"):
        untrained.add(database, np.arange(len(database)))
    index = PlaceIndex.build(database, backend="flat")
    with pytest.raises(TscmError, match=f"N×{DIM}"):
        index.search(np.zeros((1, DIM + 1), dtype=np.float32), k=1)
    with pytest.raises(TscmError, match="finite"):
        index.search(np.full((1, DIM), np.nan, dtype=np.float32), k=1)
    with pytest.raises(TscmError, match="unique"):
        index.add(database[:2], [0, 1])
    with pytest.raises(TscmError, match="coordinates"):
        index.add(database[:1], [10_000], xy=[[0.0, 0.0]])
    with pytest.raises(TscmError, match="no parameter"):
        PlaceIndex.create("hnsw", DIM, nprobe=3)
    with pytest.raises(TscmError, match="pq_m"):
        PlaceIndex.create("ivfpq", DIM, pq_m=5)
    with pytest.raises(TscmError, match="unknown"):
        PlaceIndex.create("annoy", DIM)


def test_k_beyond_database_marks_missing_hits(data):
    database = data[0][:3]
    index = PlaceIndex.build(database, xy=np.zeros((3, 2)), paths=["a", "b", "c"], backend="flat")
    result = index.search(database[:1], k=5)
    assert (result.indices[0, 3:] == -1).all() and (result.ids[0, 3:] == -1).all()
    assert np.isnan(result.xy[0, 3:]).all() and result.paths[0][3:] == [None, None]


def test_search_params_change_after_build_and_persist(tmp_path, data):
    database = data[0]
    index = PlaceIndex.build(database, **{"backend": "ivfpq", **BACKEND_PARAMS["ivfpq"]})
    index.set_search_params(nprobe=2, rerank=4)
    path = tmp_path / "ivf.index"
    index.save(path)
    assert read_index_metadata(path)["params"]["nprobe"] == 2
    with pytest.raises(TscmError, match="rebuild"):
        index.set_search_params(rerank=0)
    with pytest.raises(TscmError, match="cannot change"):
        index.set_search_params(nlist=8)


def test_failed_save_keeps_previous_file(tmp_path, data, monkeypatch):
    database = data[0]
    path = tmp_path / "places.index"
    PlaceIndex.build(database[:50], backend="flat", model_fingerprint="old").save(path)
    before = path.read_bytes()

    def write_half_then_fail(arrays, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"partial")
        raise OSError("disk full")

    import safetensors.numpy

    monkeypatch.setattr(safetensors.numpy, "save_file", write_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        PlaceIndex.build(database, backend="flat", model_fingerprint="new").save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["places.index"]  # no temp file left behind
    monkeypatch.undo()
    assert PlaceIndex.load(path, expected_fingerprint="old").count == 50


def test_metadata_is_json_with_memory_and_version(tmp_path, data):
    path = tmp_path / "m.index"
    index = PlaceIndex.build(data[0], backend="pca-flat", pca_dim=8, model_meta={"descriptor_dim": DIM})
    index.save(path)
    meta = read_index_metadata(path)
    json.dumps(meta)
    assert meta["format_version"] == index_file_module.FORMAT_VERSION
    assert meta["search_dim"] == 8 and meta["pca_whiten"] is False
    assert set(meta["sha256"]) == {"faiss_index", "ids", "pca_mean", "pca_projection"}


def test_recommended_config_by_size():
    assert recommended_config(500, 2048)[0] == "flat"
    assert recommended_config(10_000, 2048) == ("pca-flat", {"pca_dim": 256})
    assert recommended_config(20_000, 128) == ("flat", {})
    backend, params = recommended_config(250_000, 2048)
    assert backend == "hnsw" and params["pca_dim"] == 256
    backend, params = recommended_config(250_000, 256)
    assert backend == "hnsw" and "pca_dim" not in params
    built = PlaceIndex.build(np.eye(DIM, dtype=np.float32))
    assert built.backend == "flat"


def test_synthetic_matching_data_and_bench_rows():
    from tscm.bench.matching import MatchingConfig, bench_matching, synthetic_matching_data

    data = synthetic_matching_data(400, 20, dim=64, rank=16, views_per_place=4, seed=3)
    assert data.database.shape == (400, 64) and data.queries.shape == (20, 64)
    np.testing.assert_allclose(np.linalg.norm(data.database, axis=1), 1.0, rtol=1e-5)
    assert all(len(positives) == 4 for positives in data.query_positives)
    # Views of one place are closer to each other than to other places on average.
    first = data.database[data.query_positives[0]]
    within = ((first[:, None] - first[None]) ** 2).sum(-1).sum() / 12
    overall = ((data.database[:100, None] - data.database[None, :100]) ** 2).sum(-1).mean()
    assert within < overall

    printed: list[str] = []
    configs = [MatchingConfig("exact", "flat"), MatchingConfig("pca 8", "pca-flat", {"pca_dim": 8})]
    rows = bench_matching([data], lambda num_db: configs, num_single=5, threads=1, print_fn=printed.append)
    assert [row.label for row in rows] == ["exact", "pca 8"] and len(printed) == 3
    top1 = exact_neighbours(data.database, data.queries, 1)[:, 0]
    reference = 100.0 * np.mean([row in positives for row, positives in zip(top1, data.query_positives)])
    assert rows[0].recall_at_1 == pytest.approx(reference) and rows[0].recall_delta == 0.0
    assert rows[1].recall_delta == pytest.approx(rows[1].recall_at_1 - reference)
    assert rows[0].single_queries == 5 and rows[0].memory_mb > 0


# ----- the single-query path against the batched one -----------------------------------------------------

SINGLE_VS_BATCH_PARAMS = {
    **BACKEND_PARAMS,
    "flat fp16": {"storage": "fp16"},
    "pca-flat whitened": {"pca_dim": 16, "whiten": True},
    "hnsw pca": {"pca_dim": 16, "hnsw_m": 8, "ef_construction": 40, "ef_search": 64},
    "ivfpq no rerank": {"pca_dim": 16, "nlist": 4, "pq_m": 4, "pq_bits": 4, "nprobe": 3, "rerank": 0},
}


@pytest.fixture(scope="module")
def tied_data(data):
    """The test database with exact duplicates appended (ties), and queries that are copies of entries."""
    database, _, queries, _ = data
    duplicated = np.concatenate([database, database[:40], database[:40]])  # rows i, 300+i, 340+i are equal
    probes = np.concatenate([queries, database[:12]])
    return duplicated, probes


@pytest.mark.parametrize("name", list(SINGLE_VS_BATCH_PARAMS))
def test_single_query_returns_exactly_what_the_batch_returns(tied_data, name):
    database, queries = tied_data
    backend = name.split()[0]
    index = PlaceIndex.build(database, backend=backend, **SINGLE_VS_BATCH_PARAMS[name])
    for k in (1, 3, 7):
        batched = index.search(queries, k)
        for row, query in enumerate(queries):
            alone = index.search(query, k)  # one dim-vector: the single-query path
            np.testing.assert_array_equal(alone.indices[0], batched.indices[row])
            np.testing.assert_array_equal(alone.distances[0], batched.distances[row])  # bitwise, not close
        # Other batch sizes, below and above the one-thread limit, give the same rows too.
        for size in (2, index_search.SINGLE_THREAD_BELOW, 25):
            part = index.search(queries[:size], k)
            np.testing.assert_array_equal(part.indices, batched.indices[:size])
            np.testing.assert_array_equal(part.distances, batched.distances[:size])


def test_a_lone_query_scanning_leading_dims_first_gets_the_batch_hits(tied_data, monkeypatch):
    """PCA-flat scans a lone query's leading dims first (4 of 16 here, as 64 of 256 at full size) while the
    map grows row by row, as observe() grows it; every answer equals the batch's, bit for bit."""
    monkeypatch.setattr(index_search, "LEADING_DIMS", 4)
    database, queries = tied_data
    index = PlaceIndex.build(database[:200], backend="pca-flat", pca_dim=16)
    for start in range(200, len(database), 20):
        index.add(database[start : start + 20], np.arange(start, min(start + 20, len(database))))
        for k in (1, 3):
            batched = index.search(queries, k)
            for row, query in enumerate(queries):
                alone = index.search(query, k)
                np.testing.assert_array_equal(alone.indices[0], batched.indices[row])
                np.testing.assert_array_equal(alone.distances[0], batched.distances[row])
    assert index._search.scan.leading is not None and len(index._search.scan.leading.vectors) == len(database)


@pytest.mark.parametrize("backend", ["flat", "pca-flat"])
def test_exact_backends_break_ties_by_row_and_match_brute_force(tied_data, backend):
    database, queries = tied_data
    params = {"pca_dim": DIM} if backend == "pca-flat" else {}  # a full-rank PCA: a rotation, same neighbours
    index = PlaceIndex.build(database, backend=backend, **params)
    result = index.search(queries, 5)
    vectors = index.to_search_space(database).astype(np.float64)
    projected = index.to_search_space(queries).astype(np.float64)
    squared = ((projected[:, None, :] - vectors[None]) ** 2).sum(-1)
    expected = np.argsort(squared.astype(np.float32), axis=1, kind="stable")[:, :5]  # ties: lower row first
    np.testing.assert_array_equal(result.indices, expected)
    np.testing.assert_allclose(result.distances, np.take_along_axis(squared, expected, 1), rtol=1e-6, atol=1e-6)
    # A query equal to entry i (< 40) has three exact copies at distance 0: i, 300 + i, 340 + i in that order.
    copies = result.indices[len(queries) - 12 :, :3]
    np.testing.assert_array_equal(copies, np.stack([np.arange(12), 300 + np.arange(12), 340 + np.arange(12)], 1))


@pytest.mark.parametrize("name", list(SINGLE_VS_BATCH_PARAMS))
def test_searching_the_first_entries_drops_the_later_ones_from_a_full_search(tied_data, name, monkeypatch):
    """`entries=n` (loop closure leaving the newest frames out) gives what a search for k + the rows left out
    gives once those rows are dropped: the exhaustive back-ends by scanning the first n rows only (alone or in
    a batch, by the leading dims too), the others by that longer search."""
    monkeypatch.setattr(index_search, "LEADING_DIMS", 4)
    database, queries = tied_data
    index = PlaceIndex.build(database, backend=name.split()[0], **SINGLE_VS_BATCH_PARAMS[name])
    for entries in (1, 5, 200, 341, len(database)):
        for k in (1, 3, 12):
            full = index.search(queries, min(k + len(database) - entries, len(database)))
            first = index.search(queries, k, entries=entries)
            assert first.indices.shape == (len(queries), k)
            for row, query in enumerate(queries):
                keep = np.flatnonzero((full.indices[row] >= 0) & (full.indices[row] < entries))[:k]
                found = len(keep)  # an approximate back-end may find fewer than it was asked for
                assert found == min(k, entries) or name.split()[0] not in ("flat", "pca-flat")
                np.testing.assert_array_equal(first.indices[row, :found], full.indices[row, keep])
                np.testing.assert_array_equal(first.distances[row, :found], full.distances[row, keep])  # bitwise
                assert (first.indices[row, found:] == -1).all() and (first.ids[row, found:] == -1).all()
                alone = index.search(query, k, entries=entries)
                np.testing.assert_array_equal(alone.indices[0], first.indices[row])
                np.testing.assert_array_equal(alone.distances[0], first.distances[row])
    for bad in (0, len(database) + 1, 2.5):
        with pytest.raises(TscmError, match=f"entries must be a number of entries in 1..{len(database)}"):
            index.search(queries, 3, entries=bad)


def test_single_query_search_does_not_copy_a_contiguous_query(data, monkeypatch):
    """The float32 contiguous query reaches the projection as it is (no per-call conversion copy)."""
    database, _, queries, _ = data
    index = PlaceIndex.build(database, backend="pca-flat", pca_dim=8)
    seen = []
    original = index._pca.apply
    monkeypatch.setattr(index._pca, "apply", lambda array: seen.append(array) or original(array))
    query = np.ascontiguousarray(queries[:1])
    index.search(query, 1)
    assert np.shares_memory(seen[0], query)


def test_search_caches_follow_adds(data):
    database, _, queries, _ = data
    index = PlaceIndex.create("pca-flat", DIM, pca_dim=8)
    index.train(database)
    index.add(database[:100], np.arange(100))
    first = index.search(queries, 1)
    index.add(database[100:], np.arange(100, len(database)))  # faiss' storage may move: views are rebuilt
    again = index.search(queries, 1)
    fresh = PlaceIndex.create("pca-flat", DIM, pca_dim=8)
    fresh._pca = index._pca
    fresh.add(database, np.arange(len(database)))
    np.testing.assert_array_equal(again.indices, fresh.search(queries, 1).indices)
    assert (first.indices < 100).all() and index.count == len(database)


def test_the_kept_norms_give_the_distance_row_of_a_fresh_computation(data):
    """distance_row keeps the map's norms between frames (computed for new entries only): bit for bit what
    squared_distances computes from the rows themselves, as the map grows."""
    from tscm.deploy.retrieval.place_decisions import distance_row
    from tscm.evaluation.ranking import squared_distances

    database, _, queries, _ = data
    index = PlaceIndex.build(database[:50], backend="pca-flat", pca_dim=16)
    for start in range(50, 300, 25):
        index.add(database[start : start + 25], np.arange(start, start + 25))
        for query in queries[:3]:
            expected = squared_distances(index.to_search_space(query[None]), index.vectors())[0]
            np.testing.assert_array_equal(distance_row(index, query, index.count), expected)

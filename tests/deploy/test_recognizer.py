"""PlaceRecognizer: streaming add/query against plain numpy search, back-end switching, save/load, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tscm.models.checkpoint import load_checkpoint
from tscm.errors import TscmError
from tscm.deploy.retrieval.index import PlaceIndex
from tscm.deploy.retrieval.recognizer import PlaceRecognizer



def write_images(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """`count` distinct 48×40 JPEGs: smooth colour gradients plus noise, different per image."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        ramp = np.linspace(0, 1, 48)[None, :, None] * rng.uniform(0, 255, (1, 1, 3))
        pixels = np.clip(ramp + rng.normal(0, 40, (40, 48, 3)), 0, 255).astype(np.uint8)
        path = folder / f"img{i:02d}.jpg"
        Image.fromarray(pixels).save(path, quality=95)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    return write_images(tmp_path_factory.mktemp("images"), 7)


def reference_descriptors(checkpoint: Path, paths) -> np.ndarray:
    """Descriptors by a plain loop over the eval transform, independent of the extraction path the recognizer uses."""
    import torch

    from tscm.data.images import ImageListDataset

    model, meta = load_checkpoint(checkpoint)
    dataset = ImageListDataset(paths, meta["image_size"], meta["mean"], meta["std"])
    with torch.no_grad():
        return model(torch.stack([dataset[i] for i in range(len(dataset))])).numpy()


def squared_distances(queries: np.ndarray, database: np.ndarray) -> np.ndarray:
    return ((queries[:, None, :].astype(np.float64) - database[None, :, :]) ** 2).sum(-1)


def unit_rows(count: int, dim: int, seed: int) -> np.ndarray:
    rows = np.random.default_rng(seed).standard_normal((count, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_streaming_add_and_query_match_brute_force(tiny_student, images) -> None:
    recognizer = PlaceRecognizer.from_checkpoint(tiny_student, batch_size=2)
    xy = np.arange(len(images) * 2, dtype=np.float64).reshape(-1, 2) * 10.0
    recognizer.add(images[:3], xy=xy[:3])
    recognizer.add(images[3:6], xy=xy[3:6])  # a second add continues the ids: 3, 4, 5
    assert recognizer.count == 6
    database = reference_descriptors(tiny_student, images[:6])
    query = reference_descriptors(tiny_student, images[6:7])
    distances = squared_distances(query, database)[0]
    order = np.argsort(distances, kind="stable")
    places = recognizer.query(images[6], k=4)
    assert [p.id for p in places] == order[:4].tolist()
    np.testing.assert_allclose([p.distance for p in places], distances[order[:4]], rtol=1e-4, atol=1e-6)
    assert [p.rank for p in places] == [1, 2, 3, 4]
    for place in places:
        assert place.path == str(images[place.id])
        assert place.xy == tuple(xy[place.id])
    # A database image finds itself first, at distance ~0; k above the map size returns the whole map.
    own = recognizer.query(images[2], k=10)
    assert len(own) == 6 and own[0].id == 2 and own[0].distance < 1e-6


def test_pil_images_and_arrays_give_the_same_places_as_paths(tiny_student, images) -> None:
    recognizer = PlaceRecognizer.from_checkpoint(tiny_student)
    recognizer.add(images[:5])
    by_path = recognizer.query(images[6], k=3)
    with Image.open(images[6]) as image:
        pil = image.convert("RGB")
    by_pil = recognizer.query(pil, k=3)
    by_array = recognizer.query(np.asarray(pil), k=3)
    assert [p.id for p in by_pil] == [p.id for p in by_path] == [p.id for p in by_array]
    np.testing.assert_allclose([p.distance for p in by_array], [p.distance for p in by_path], rtol=1e-5)
    # Images added from memory have no path.
    recognizer.add([pil], ids=[100])
    assert recognizer.query(pil, k=1)[0].id == 100 and recognizer.query(pil, k=1)[0].path is None


def test_save_load_round_trip_keeps_results_and_numbering(tiny_student, images, tmp_path) -> None:
    recognizer = PlaceRecognizer.from_checkpoint(tiny_student)
    recognizer.add(images[:5], xy=np.ones((5, 2)) * np.arange(5)[:, None], ids=[10, 11, 12, 13, 14])
    before = recognizer.query(images[6], k=5)
    recognizer.save(tmp_path / "map.idx")
    loaded = PlaceRecognizer.load(tmp_path / "map.idx")  # the checkpoint recorded in the index
    assert loaded.count == 5 and loaded.fingerprint == recognizer.fingerprint
    assert loaded.query(images[6], k=5) == before
    loaded.add([images[5]], xy=[[7.0, 7.0]])
    assert loaded.query(images[5], k=1)[0].id == 15  # numbering continues after the largest stored id
    with pytest.raises(TscmError, match="loaded from a file"):
        loaded.rebuild()


def test_another_models_checkpoint_is_refused(tiny_student, tiny_student_other, images, tmp_path) -> None:
    recognizer = PlaceRecognizer.from_checkpoint(tiny_student)
    recognizer.add(images[:2])
    recognizer.save(tmp_path / "map.idx")
    with pytest.raises(TscmError, match="fingerprint"):
        PlaceRecognizer.load(tmp_path / "map.idx", tiny_student_other)
    with pytest.raises(TscmError, match="fingerprint"):
        PlaceRecognizer.from_checkpoint(tiny_student_other, index=recognizer.index)


def test_bad_input_errors(tiny_student, images, tmp_path) -> None:
    recognizer = PlaceRecognizer.from_checkpoint(tiny_student)
    with pytest.raises(TscmError, match="empty"):
        recognizer.query(images[0])
    with pytest.raises(TscmError, match="empty"):
        recognizer.save(tmp_path / "empty.idx")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    with pytest.raises(TscmError, match="broken.jpg"):
        recognizer.add([images[0], broken])
    assert recognizer.count == 0  # a failed add adds nothing
    added = recognizer.add([images[0], broken, images[1]], on_bad_image="skip")
    assert added.kept == [0, 2] and added.skipped[0][0] == str(broken)
    assert sorted(p.id for p in recognizer.query(images[0], k=5)) == [0, 2]  # the skipped image's id stays unused
    with pytest.raises(TscmError, match="uint8"):
        recognizer.query(np.zeros((8, 8, 3), dtype=np.float32))
    recognizer.save(tmp_path / "map.idx")
    damaged = bytearray((tmp_path / "map.idx").read_bytes())
    damaged[-20] ^= 0xFF
    (tmp_path / "damaged.idx").write_bytes(bytes(damaged))
    with pytest.raises(TscmError, match="corrupt"):
        PlaceRecognizer.load(tmp_path / "damaged.idx")


def descriptor_recognizer(dim: int, **settings) -> PlaceRecognizer:
    """A recognizer fed descriptors directly (no model), for back-end behaviour."""
    meta = {"fingerprint": "sha256:test", "descriptor_dim": dim, "image_size": [8, 8], "mean": [0.0] * 3,
            "std": [1.0] * 3}
    return PlaceRecognizer(None, meta, **settings)


def test_training_backend_waits_for_enough_descriptors_then_matches_a_direct_build() -> None:
    descriptors = unit_rows(40, 32, seed=0)
    queries = unit_rows(5, 32, seed=1)
    recognizer = descriptor_recognizer(32, backend="pca-flat", backend_params={"pca_dim": 8}, train_after=20)
    recognizer.add_descriptors(descriptors[:12], np.arange(12))
    assert recognizer.index.backend == "flat"  # exact search while collecting training data
    exact = squared_distances(queries, descriptors[:12])
    assert [row[0].id for row in recognizer.search(queries, k=1)] == exact.argmin(1).tolist()
    recognizer.add_descriptors(descriptors[12:25], np.arange(12, 25))
    assert recognizer.index.backend == "pca-flat" and recognizer.index.count == 25
    recognizer.add_descriptors(descriptors[25:], np.arange(25, 40))  # straight into the trained index
    assert recognizer.index.backend == "pca-flat" and recognizer.count == 40
    # PCA was fitted on the first 25; later ones are projected with it. The same by hand:
    direct = PlaceIndex.create("pca-flat", 32, pca_dim=8)
    direct.train(descriptors[:25])
    direct.add(descriptors, np.arange(40))
    expected = direct.search(queries, 3)
    got = recognizer.search(queries, k=3)
    assert [[p.id for p in row] for row in got] == expected.ids.tolist()
    np.testing.assert_allclose([[p.distance for p in row] for row in got], expected.distances, rtol=1e-5)
    # rebuild() retrains on all 40.
    recognizer.rebuild()
    retrained = PlaceIndex.build(descriptors, backend="pca-flat", pca_dim=8).search(queries, 3)
    assert [[p.id for p in row] for row in recognizer.search(queries, k=3)] == retrained.ids.tolist()


@pytest.mark.slow
def test_auto_backend_follows_the_recommendation_as_the_map_grows() -> None:
    from tscm.deploy.retrieval.index import recommended_config

    dim = 512  # flat is recommended up to 8 MB: 4096 descriptors of 512-d
    recognizer = descriptor_recognizer(dim)
    recognizer.add_descriptors(unit_rows(4096, dim, seed=2), np.arange(4096))
    assert recognizer.index.backend == recommended_config(4096, dim)[0] == "flat"
    recognizer.add_descriptors(unit_rows(1, dim, seed=3), [4096])
    backend, params = recommended_config(4097, dim)
    assert recognizer.index.backend == backend == "pca-flat"
    assert recognizer.index.params["pca_dim"] == params["pca_dim"] and recognizer.count == 4097


def test_backend_settings_are_checked_up_front() -> None:
    with pytest.raises(TscmError, match="nlist"):
        descriptor_recognizer(16, backend="flat", backend_params={"nlist": 4})
    with pytest.raises(TscmError, match="needs at least 8"):
        descriptor_recognizer(16, backend="pca-flat", backend_params={"pca_dim": 8}, train_after=4)
    with pytest.raises(TscmError, match="auto"):
        descriptor_recognizer(16, backend="auto", backend_params={"pca_dim": 8})

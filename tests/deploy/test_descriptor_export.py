"""tscm export-descriptors: hloc's HDF5 layout and pairs files, .npy arrays, read back the way the tools read them."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tscm import cli
from tscm.deploy.retrieval.descriptor_export import (ExtractionOptions, RetrievalPairs, export_descriptors, read_hloc_h5,
                                                     require_h5py, retrieval_pairs)
from tscm.errors import TscmError
from tscm.models.checkpoint import load_checkpoint


h5py = pytest.importorskip("h5py")


def write_images(folder: Path, count: int, seed: int, prefix: str = "f") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = folder / f"{prefix}{i:03d}.png"
        Image.fromarray(rng.integers(0, 255, (36 + i % 3, 50, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def reference(checkpoint: Path, paths) -> np.ndarray:
    from tscm.data.images import as_rgb, eval_transform

    model, meta = load_checkpoint(checkpoint)
    batch = torch.stack([eval_transform(as_rgb(p), meta["image_size"], meta["mean"], meta["std"]) for p in paths])
    with torch.no_grad():
        return model(batch).numpy()


def hloc_pairs(path: Path) -> list[tuple[str, str]]:
    """Pairs parsed as hloc's parse_retrieval does: strip the trailing newline, split lines, then white space."""
    return [tuple(line.split()) for line in path.read_text().rstrip("\n").split("\n") if line]


def brute_force(queries: np.ndarray, database: np.ndarray, k: int, allowed) -> list[list[int]]:
    distances = ((queries[:, None, :].astype(np.float64) - database[None].astype(np.float64)) ** 2).sum(-1)
    result = []
    for i, row in enumerate(distances):
        candidates = [j for j in np.argsort(row, kind="stable") if allowed(i, j)]
        result.append([int(j) for j in candidates[:k]])
    return result


def test_sequence_export_reads_back_like_hloc(tiny_student, tmp_path) -> None:
    root = tmp_path / "seq"
    paths = write_images(root / "cam0", 6, seed=1) + write_images(root / "cam1", 5, seed=2)  # sorted: cam0, then cam1
    out = tmp_path / "out" / "global-feats.h5"
    pairs = tmp_path / "out" / "pairs.txt"
    done = export_descriptors(tiny_student, root, out, pairs=RetrievalPairs(pairs, k=3),
                              extraction=ExtractionOptions(batch_size=4))
    names = [p.relative_to(root).as_posix() for p in paths]
    expected = reference(tiny_student, paths)

    stored = read_hloc_h5(out)
    assert sorted(stored) == sorted(names)  # hloc's list_h5_names: every dataset's parent group
    with h5py.File(out, "r") as handle:  # hloc's pairs_from_retrieval: hfile[name]["global_descriptor"]
        got = np.stack([handle[name]["global_descriptor"].__array__() for name in names])
        assert handle["cam0/f000.png"]["image_size"][()].tolist() == [50, 36]
        assert handle.attrs["model_fingerprint"] == load_checkpoint(tiny_student)[1]["fingerprint"]
        assert handle.attrs["tscm_format"] == "tscm-global-descriptors" and handle.attrs["descriptor_dim"] == 256
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert got.dtype == np.float32

    array = np.load(tmp_path / "out" / "global-feats.database.npy")
    assert array.dtype == np.float32 and array.shape == (11, 256)
    np.testing.assert_array_equal(array, got)
    assert (tmp_path / "out" / "global-feats.database.txt").read_text().splitlines() == names
    assert done.arrays == [tmp_path / "out" / "global-feats.database.npy"] and done.same_sequence

    # pairs: each image's 3 nearest others, nearest first, never itself
    nearest = brute_force(array, array, 3, lambda i, j: i != j)
    assert hloc_pairs(pairs) == [(names[i], names[j]) for i in range(11) for j in nearest[i]]
    assert done.num_pairs == 33


def test_loop_closure_pairs_leave_out_recent_frames(tiny_student, tmp_path) -> None:
    root = tmp_path / "seq"
    write_images(root, 9, seed=3)
    out = tmp_path / "feats.h5"
    pairs = tmp_path / "loops.txt"
    export_descriptors(tiny_student, root, out, pairs=RetrievalPairs(pairs, k=2, exclude_recent=3))
    names = (tmp_path / "feats.database.txt").read_text().splitlines()
    array = np.load(tmp_path / "feats.database.npy")
    nearest = brute_force(array, array, 2, lambda i, j: j < i - 3)
    expected = [(names[i], names[j]) for i in range(9) for j in nearest[i]]
    assert hloc_pairs(pairs) == expected
    assert all(names.index(db) < names.index(q) - 3 for q, db in expected) and len(expected) == 2 * 4 + 1  # frames 4..8


def test_separate_queries_share_one_root(tiny_student, tmp_path) -> None:
    data = tmp_path / "data"
    db_paths = write_images(data / "db", 5, seed=4)
    q_paths = write_images(data / "query", 3, seed=5, prefix="q")
    out = tmp_path / "feats.h5"
    pairs = tmp_path / "pairs.txt"
    done = export_descriptors(tiny_student, data / "db", out, queries=data / "query", pairs=RetrievalPairs(pairs, k=2))
    assert done.root == data and not done.same_sequence
    stored = read_hloc_h5(out)
    assert sorted(stored) == [f"db/f{i:03d}.png" for i in range(5)] + [f"query/q{i:03d}.png" for i in range(3)]
    queries = np.load(tmp_path / "feats.queries.npy")
    database = np.load(tmp_path / "feats.database.npy")
    np.testing.assert_allclose(queries, reference(tiny_student, q_paths), atol=1e-5)
    np.testing.assert_allclose(database, reference(tiny_student, db_paths), atol=1e-5)
    assert (tmp_path / "feats.queries.txt").read_text().splitlines() == [f"query/q{i:03d}.png" for i in range(3)]
    nearest = brute_force(queries, database, 2, lambda i, j: True)
    assert hloc_pairs(pairs) == [(f"query/q{i:03d}.png", f"db/f{j:03d}.png") for i in range(3) for j in nearest[i]]
    with pytest.raises(TscmError, match="same ordered sequence"):
        export_descriptors(tiny_student, data / "db", out, queries=data / "query",
                           pairs=RetrievalPairs(pairs, exclude_recent=1))


def test_manifest_images_outside_the_root_and_names_with_spaces(tiny_student, tmp_path) -> None:
    outside = write_images(tmp_path / "elsewhere", 2, seed=6)
    folder = tmp_path / "set"
    inside = write_images(folder / "db", 2, seed=7)
    manifest = folder / "places.csv"
    rows = [f"{inside[0].relative_to(folder)},0,0,database", f"{outside[0]},5,0,database", f"{inside[1].relative_to(folder)},0,1,query"]
    manifest.write_text("path,east,north,role\n" + "\n".join(rows) + "\n", encoding="utf-8")
    with pytest.raises(TscmError, match="lies outside the image root .*--root"):
        export_descriptors(tiny_student, manifest, tmp_path / "a.h5")
    done = export_descriptors(tiny_student, manifest, tmp_path / "a.h5", root=tmp_path)
    assert sorted(read_hloc_h5(tmp_path / "a.h5")) == ["elsewhere/f000.png", "set/db/f000.png"]
    assert done.num_db == 2
    spaced = tmp_path / "spaced"
    write_images(spaced, 2, seed=8, prefix="frame ")
    export_descriptors(tiny_student, spaced, tmp_path / "b.h5")  # fine without a pairs file
    with pytest.raises(TscmError, match="white space"):
        export_descriptors(tiny_student, spaced, tmp_path / "b.h5", pairs=RetrievalPairs(tmp_path / "b.txt"))


def test_pairs_are_exact_with_ties_to_the_lower_row() -> None:
    rng = np.random.default_rng(0)
    database = rng.standard_normal((50, 8)).astype(np.float32)
    database[10] = database[3]  # exact ties
    database[20] = database[3]
    queries = np.concatenate([database[3:4], rng.standard_normal((4, 8)).astype(np.float32)])
    found = retrieval_pairs(queries, database, 2)
    assert found[:2] == [(0, 3), (0, 10)]
    for k in (1, 7, 60):
        got = retrieval_pairs(queries, database, k)
        expected = brute_force(queries, database, k, lambda i, j: True)
        assert got == [(i, j) for i in range(len(queries)) for j in expected[i]]
    with pytest.raises(TscmError, match="positive number"):
        retrieval_pairs(queries, database, 0)
    with pytest.raises(TscmError, match="same ordered sequence"):
        retrieval_pairs(queries, database, 2, exclude_recent=2)


def test_missing_h5py_says_how_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(TscmError, match=r"pip install 'tscm\[hloc\]'"):
        require_h5py()


def test_command(tiny_student, tmp_path, capsys) -> None:
    root = tmp_path / "seq"
    write_images(root, 4, seed=9)
    out = tmp_path / "feats.h5"
    assert cli.main(["export-descriptors", "--checkpoint", str(tiny_student), "--images", str(root), "--out", str(out),
                     "--pairs", str(tmp_path / "pairs.txt"), "-k", "2", "--exclude-recent", "0"]) == 0
    printed = capsys.readouterr().out
    assert "4 images, 256-d global_descriptor" in printed and "5 pairs" in printed
    assert len(hloc_pairs(tmp_path / "pairs.txt")) == 5  # frame 1: one older frame, frames 2 and 3: two each
    assert cli.main(["export-descriptors", "--checkpoint", str(tiny_student), "--images", str(tmp_path / "none"),
                     "--out", str(out)]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert cli.main(["export-descriptors", "--checkpoint", str(tiny_student), "--images", str(root), "--out", str(out),
                     "--exclude-recent", "2"]) == 2
    assert "give --pairs" in capsys.readouterr().err


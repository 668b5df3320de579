"""`tscm index build`, `tscm query` and `tscm bench --quick`: round trips, metadata, bad input, consistent numbers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tscm import cli
from tscm.bench.matching import MatchingRow, format_matching_row, synthetic_matching_data
from tscm.models.checkpoint import read_metadata
from tscm.deploy.retrieval.index import PlaceIndex, read_index_metadata


def write_jpeg(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, 40)[:, None, None] * rng.uniform(0, 255, (1, 1, 3))
    Image.fromarray(np.clip(ramp + rng.normal(0, 40, (40, 40, 3)), 0, 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture
def checkpoints(tiny_student, tiny_student_other) -> tuple[Path, Path]:
    """Two untrained student-tiny checkpoints with different weights (tests/conftest.py)."""
    return tiny_student, tiny_student_other


@pytest.fixture(scope="module")
def utm_folder(tmp_path_factory) -> tuple[Path, list[Path], np.ndarray]:
    folder = tmp_path_factory.mktemp("utm")
    xy = np.array([[585000.0 + 7 * i, 4477000.0 + 3 * i] for i in range(5)])
    paths = [write_jpeg(folder / "sub" / f"@{e:.1f}@{n:.1f}@17@T@@@@@@@@@@@.jpg", i) for i, (e, n) in enumerate(xy)]
    return folder, paths, xy


def tscm(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_build_from_utm_folder_then_query_round_trip(checkpoints, utm_folder, tmp_path, capsys) -> None:
    checkpoint, _ = checkpoints
    folder, paths, xy = utm_folder
    code, out, _ = tscm(capsys, "index", "build", "--checkpoint", checkpoint, "--images", folder,
                        "--out", tmp_path / "map.idx", "--batch-size", 2)
    assert code == 0 and "coordinates: yes" in out
    meta = read_index_metadata(tmp_path / "map.idx")
    assert meta["count"] == 5 and meta["backend"] == "flat" and meta["dim"] == 256
    assert meta["model_fingerprint"] == read_metadata(checkpoint)["fingerprint"]
    assert meta["model_meta"]["checkpoint"] == str(checkpoint.resolve())
    assert meta["model_meta"]["image_size"] == [64, 64] and meta["model_meta"]["preset"] == "student-tiny"
    index = PlaceIndex.load(tmp_path / "map.idx")
    code, out, _ = tscm(capsys, "query", "--index", tmp_path / "map.idx", paths[3], paths[0], "-k", 2, "--json")
    assert code == 0
    answer = json.loads(out)
    assert answer["fingerprint"] == meta["model_fingerprint"] and answer["k"] == 2
    for entry, expected_id in zip(answer["queries"], (3, 0)):
        top = entry["places"][0]
        assert entry["image"] == str(paths[expected_id]) and top["id"] == expected_id and top["distance"] < 1e-6
        assert (top["east"], top["north"]) == tuple(xy[expected_id])
        assert top["path"] == str(paths[expected_id].resolve())
        assert len(entry["places"]) == 2
    # The table form names the same places.
    code, out, _ = tscm(capsys, "query", "--index", tmp_path / "map.idx", paths[3], "-k", 1)
    assert code == 0 and "id 3 " in out and f"east {xy[3, 0]:.1f}" in out
    assert index.count == 5
    # The same model exported to ONNX keeps the fingerprint, so it may search this index, with the same answer.
    from tscm.inference.onnx_export import export_onnx

    export_onnx(checkpoint, tmp_path / "student.onnx", exporter="torchscript")
    code, out, _ = tscm(capsys, "query", "--index", tmp_path / "map.idx", paths[3], paths[0], "-k", 2, "--json",
                        "--checkpoint", tmp_path / "student.onnx", "--runtime", "onnx")
    assert code == 0
    onnx_answer = json.loads(out)
    for torch_entry, onnx_entry in zip(answer["queries"], onnx_answer["queries"]):
        assert [p["id"] for p in onnx_entry["places"]] == [p["id"] for p in torch_entry["places"]]
        np.testing.assert_allclose([p["distance"] for p in onnx_entry["places"]],
                                   [p["distance"] for p in torch_entry["places"]], atol=1e-5)


def test_csv_manifest_build_with_bad_image_fail_and_skip(checkpoints, tmp_path, capsys) -> None:
    checkpoint, _ = checkpoints
    rows = ["path,east,north,role"]
    for i in range(4):
        write_jpeg(tmp_path / f"db{i}.jpg", 10 + i)
        rows.append(f"db{i}.jpg,{100 + i},{200 + i},database")
    (tmp_path / "db2.jpg").write_bytes(b"truncated")
    write_jpeg(tmp_path / "q0.jpg", 20)
    rows.append("q0.jpg,100,200,query")
    (tmp_path / "places.csv").write_text("\n".join(rows) + "\n")
    code, _, err = tscm(capsys, "index", "build", "--checkpoint", checkpoint, "--images", tmp_path / "places.csv",
                        "--out", tmp_path / "map.idx")
    assert code == 2 and "db2.jpg" in err and "--on-bad-image skip" in err
    assert not (tmp_path / "map.idx").exists()
    code, out, err = tscm(capsys, "index", "build", "--checkpoint", checkpoint, "--images", tmp_path / "places.csv",
                          "--out", tmp_path / "map.idx", "--on-bad-image", "skip")
    assert code == 0 and "skipped 1 unreadable" in out and "db2.jpg" in err
    index = PlaceIndex.load(tmp_path / "map.idx")
    result = index.search(index_descriptor_of(tmp_path / "map.idx", tmp_path / "db3.jpg", checkpoint), 3)
    assert sorted(result.ids[0].tolist()) == [0, 1, 3]  # ids are manifest row numbers; the bad one is missing
    assert result.ids[0, 0] == 3 and tuple(result.xy[0, 0]) == (103.0, 203.0)


def index_descriptor_of(index_path: Path, image: Path, checkpoint: Path) -> np.ndarray:
    from tscm.deploy.retrieval.recognizer import PlaceRecognizer

    return PlaceRecognizer.load(index_path, checkpoint).describe([image]).descriptors


def test_plain_folder_has_no_coordinates_and_backend_params_apply(checkpoints, tmp_path, capsys) -> None:
    checkpoint, _ = checkpoints
    for i in range(6):
        write_jpeg(tmp_path / "plain" / f"frame{i}.png", 30 + i)
    code, out, _ = tscm(capsys, "index", "build", "--checkpoint", checkpoint, "--images", tmp_path / "plain",
                        "--out", tmp_path / "map.idx", "--backend", "pca-flat", "--param", "pca_dim=4")
    assert code == 0 and "coordinates: no" in out
    meta = read_index_metadata(tmp_path / "map.idx")
    assert meta["backend"] == "pca-flat" and meta["params"]["pca_dim"] == 4 and meta["search_dim"] == 4
    code, out, _ = tscm(capsys, "query", "--index", tmp_path / "map.idx", tmp_path / "plain" / "frame4.png",
                        "-k", 1, "--json")
    place = json.loads(out)["queries"][0]["places"][0]
    assert place["id"] == 4 and place["east"] is None and place["north"] is None


@pytest.mark.slow
def test_cli_bad_input_errors(checkpoints, utm_folder, tmp_path, capsys) -> None:
    checkpoint, other = checkpoints
    (tmp_path / "empty").mkdir()
    code, _, err = tscm(capsys, "index", "build", "--checkpoint", checkpoint, "--images", tmp_path / "empty",
                        "--out", tmp_path / "map.idx")
    assert code == 2 and "no images" in err
    folder, paths, _ = utm_folder
    assert tscm(capsys, "index", "build", "--checkpoint", checkpoint, "--images", folder,
                "--out", tmp_path / "map.idx")[0] == 0
    code, _, err = tscm(capsys, "query", "--index", tmp_path / "map.idx", paths[0], "--checkpoint", other)
    assert code == 2 and "fingerprint" in err
    code, _, err = tscm(capsys, "query", "--index", tmp_path / "map.idx", tmp_path / "missing.jpg")
    assert code == 2 and "missing.jpg" in err
    code, out, _ = tscm(capsys, "query", "--index", tmp_path / "map.idx", tmp_path / "missing.jpg", paths[1],
                        "--on-bad-image", "skip", "-k", 1)
    assert code == 0 and "missing.jpg: skipped" in out and "id 1 " in out
    data = bytearray((tmp_path / "map.idx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "damaged.idx").write_bytes(bytes(data))
    code, _, err = tscm(capsys, "query", "--index", tmp_path / "damaged.idx", paths[0])
    assert code == 2 and "damaged.idx" in err
    (tmp_path / "junk.idx").write_bytes(b"\x00" * 64)
    code, _, err = tscm(capsys, "query", "--index", tmp_path / "junk.idx", paths[0])
    assert code == 2 and "junk.idx" in err


@pytest.mark.slow
def test_bench_quick_numbers_are_consistent(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("TSCM_CACHE", str(tmp_path / "cache"))
    code, out, _ = tscm(capsys, "bench", "--quick", "--queries", 30, "--out", tmp_path / "bench")
    assert code == 0
    report = json.loads((tmp_path / "bench" / "bench.json").read_text())
    markdown = (tmp_path / "bench" / "bench.md").read_text()
    # Extraction: every runtime of every batch size, speed-up relative to eager torch at the same batch size.
    extraction = report["extraction"]
    assert {(r["runtime"], r["batch_size"]) for r in extraction} == {(r, b) for r in ("torch", "torch-int8") for b in (1, 4)}
    for row in extraction:
        reference = next(r for r in extraction if r["runtime"] == "torch" and r["batch_size"] == row["batch_size"])
        assert row["speedup"] == pytest.approx(reference["median_ms"] / row["median_ms"])
        assert row["min_ms"] <= row["median_ms"] and row["min_cosine"] > 0.999
        assert f"| {row['runtime']} | {row['batch_size']} | 64×64 | {row['median_ms']:.2f} |" in markdown
    # Matching: one block per data set, exact search first, deltas against it, rows printed as saved.
    matching = report["matching"]
    assert [r["data"] for r in matching if r["label"] == "exact (flat fp32)"] == ["synthetic 1k×512", "city tiny"]
    for data in {r["data"] for r in matching}:
        block = [r for r in matching if r["data"] == data]
        assert block[0]["label"] == "exact (flat fp32)" and block[0]["recall_delta"] == 0
        for row in block:
            assert row["recall_delta"] == pytest.approx(row["recall_at_1"] - block[0]["recall_at_1"])
    for row in matching:
        assert format_matching_row(MatchingRow(**row)) in out
        assert f"| {row['data']} | {row['label']} |" in markdown
        # Side by side in rounds; bytes per query against the machine's bandwidth.
        assert row["rounds"] == 3 and row["bytes_per_query"] > 0 and row["single_gb_s"] > 0
        assert row["bandwidth_fraction"] == pytest.approx(row["single_gb_s"] / report["machine"]["copy_gb_s_1thread"])
    # The machine comes first: printed, in the JSON and in the Markdown; efficiencies refer to it.
    machine = report["machine"]
    assert out.startswith("machine: ") and "## Machine" in markdown
    assert machine["fp32_gflops"] > 0 and machine["copy_gb_s"] > 0 and isinstance(machine["isa_flags"], list)
    for row in extraction:
        assert row["multiply_adds"] > 0
        assert row["peak_fraction"] == pytest.approx(row["gflops"] / machine["fp32_gflops"])
    # Without a GPU the report says why its rows are missing.
    if not report["gpu"]["available"]:
        assert report["gpu"]["reason"] and f"GPU rows skipped: {report['gpu']['reason']}" in out
        assert "GPU rows skipped" in markdown
    # Exact Recall@1 on the synthetic data, recomputed by brute force.
    synthetic = synthetic_matching_data(1000, 30, dim=512, seed=0)
    nearest = ((synthetic.queries[:, None, :] - synthetic.database[None]) ** 2).sum(-1).argmin(1)
    expected = 100.0 * np.mean([n in p for n, p in zip(nearest, synthetic.query_positives)])
    assert matching[0]["recall_at_1"] == pytest.approx(expected)
    city = report["city"]
    assert city["described_by"].startswith("untrained student-tiny") and city["descriptor_dim"] == 256
    assert all(r["num_db"] == city["num_db"] for r in matching if r["data"] == "city tiny")
    assert "untrained student-tiny" in out and "untrained student-tiny" in markdown

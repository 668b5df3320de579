"""`tscm demo` / `tscm ablation` orchestration on the tiny synthetic city with a step or two of training:
the run folder's files exist and hold the numbers the saved descriptors give (not the learning), and the
multi-seed rows and the gain are the hand formulas of their per-seed values."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from helpers.references import naive_recall
from PIL import Image

from tscm import cli
from tscm.data.formats import load_placeset
from tscm.evaluation.raw_pixels import raw_pixel_descriptors
from tscm.experiments.ablation import ablation_settings, row_sets
from tscm.experiments.common import RECOMMENDED_LOSS
from tscm.experiments.report import load_descriptors
from tscm.models import build_model

TINY_RUN = ["--data", "synthetic:tiny", "--quick", "--no-progress", "--threads", "1"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def demo_run(cache, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "demo"
    assert cli.main(["demo", *TINY_RUN, "--seeds", "0", "1", "--cache-dir", str(cache), "--out", str(out)]) == 0
    return out


def test_raw_pixel_descriptors_match_a_plain_computation(tmp_path):
    rng = np.random.default_rng(0)
    # 4×4 blocks whose texture (±20 in a checkerboard) averages out, so each block's mean is an exact integer.
    block_means = rng.integers(30, 220, size=(2, 3, 3))
    checker = np.where((np.arange(8)[:, None] + np.arange(12)[None, :]) % 2 == 0, 20, -20)[:, :, None]
    pixels = (np.repeat(np.repeat(block_means, 4, axis=0), 4, axis=1) + checker).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    Image.fromarray(np.full((8, 12, 3), 90, dtype=np.uint8)).save(tmp_path / "flat.png")
    out = raw_pixel_descriptors([tmp_path / "a.png", tmp_path / "flat.png"], (2, 3))
    # A box filter from 8×12 to 2×3 averages the 4×4 blocks.
    blocks = pixels.astype(np.float64).reshape(2, 4, 3, 4, 3).mean(axis=(1, 3)) / 255.0
    np.testing.assert_array_equal(blocks * 255.0, block_means)
    expected = blocks.reshape(-1) - blocks.mean()
    expected /= np.linalg.norm(expected)
    assert out.dtype == np.float32 and out.shape == (2, 18)
    np.testing.assert_allclose(out[0], expected, atol=1e-6)
    assert not out[1].any(), "a constant image has no structure left after centring"


@pytest.mark.parametrize("rows", [["all"], ["classic"], ["paper"]])
def test_ablation_rows_merge_presets_with_the_same_terms(rows):
    from tscm.losses import preset_terms

    settings = ablation_settings(rows)
    trained = [row.preset for row in settings]
    assert len(trained) == len(set(trained))
    covered = [alias for row in settings for alias in row.aliases]
    wanted = [p for item in rows for p in row_sets()[item]]
    assert sorted(set(covered)) == sorted(set(wanted))
    for row in settings:
        for alias in row.aliases:
            assert {t: (w, o) for t, w, o in preset_terms(alias)} == row.terms
    if "tscm" in covered and "soft+cm" in covered:
        merged = next(row for row in settings if "tscm" in row.aliases)
        assert merged.aliases == ("soft+cm", "tscm") and merged.preset == "tscm"
        assert "L_hard + L_soft + L_cm" in merged.label


def _recall_at(placeset, db, queries, radius):
    return naive_recall(db, queries, placeset.positives(radius), (1, 5, 10))[0]


@pytest.mark.slow
def test_demo_writes_results_that_match_its_descriptors(demo_run, cache):
    results = json.loads((demo_run / "results.json").read_text())
    names = [m["name"] for m in results["models"]]
    assert names == ["teacher", "student-tscm", f"student-{RECOMMENDED_LOSS}", "student-baseline", "raw-pixels"]
    by_name = {m["name"]: m for m in results["models"]}
    assert [by_name[n]["role"] for n in names] == ["teacher", "student", "student", "student", "reference"]
    assert by_name["student-tscm"]["distillation"] == "tscm"
    assert by_name[f"student-{RECOMMENDED_LOSS}"]["distillation"] == RECOMMENDED_LOSS
    assert by_name["student-baseline"]["distillation"] is None and by_name["teacher"]["distillation"] is None

    test_set = load_placeset(cache / "synth-tiny-seed0", "test")
    dataset = results["dataset"]
    assert dataset["num_queries"] == test_set.num_queries and (dataset["radius"], dataset["unit"]) == (25.0, "m")
    for name in names:
        db, queries = load_descriptors(demo_run, name)  # the first seed's descriptors
        expected = _recall_at(test_set, db, queries, 25.0)
        for n, value in expected.items():
            assert by_name[name]["recall_per_seed"][0][str(n)] == pytest.approx(value, abs=1e-9), (name, n)
        published = _recall_at(test_set, db, queries, 10.0)
        if len(by_name[name]["seeds"]) == 1:
            assert by_name[name]["recall_at"]["10 m"]["1"] == pytest.approx(published[1], abs=1e-9)
        assert by_name[name]["ms_per_image"] > 0 and by_name[name]["matching_ms_per_query"] > 0
        assert by_name[name]["descriptor_dim"] == db.shape[1]
        assert 0 <= by_name[name]["pr"]["average_precision"] <= 100

    raw_db, raw_queries = load_descriptors(demo_run, "raw-pixels")
    np.testing.assert_array_equal(raw_queries, raw_pixel_descriptors(test_set.query_paths, (16, 16)))
    assert by_name["raw-pixels"]["params"] == 0
    for name, preset in (("teacher", "teacher-tiny"), ("student-tscm", "student-tiny")):
        assert by_name[name]["params"] == sum(p.numel() for p in build_model(preset).parameters())
        assert by_name[name]["multiply_adds"] > 0

    table = (demo_run / "results.md").read_text()
    for name in names:
        line = next(row for row in table.splitlines() if row.startswith(f"| {name} "))
        assert f"| {by_name[name]['recall']['1']:.1f}" in line
    for picture in ("recall_curves.png", "precision_recall.png", "retrieval_student-tscm.png", "map_teacher.png"):
        assert (demo_run / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    settings = json.loads((demo_run / "settings.json").read_text())
    assert settings["options"]["quick"] is True and "tscm demo" in settings["command"]
    assert (demo_run / "train" / "student-tscm-seed1" / "config.yaml").is_file()


@pytest.mark.slow
def test_demo_rows_are_the_mean_and_standard_error_of_their_seeds(demo_run):
    results = json.loads((demo_run / "results.json").read_text())
    by_name = {m["name"]: m for m in results["models"]}
    for name in ("student-tscm", f"student-{RECOMMENDED_LOSS}", "student-baseline"):
        row = by_name[name]
        assert row["seeds"] == [0, 1]
        for n in ("1", "5", "10"):
            values = [seed[n] for seed in row["recall_per_seed"]]
            assert row["recall"][n] == pytest.approx(sum(values) / 2)
            assert row["recall_stderr"][n] == pytest.approx(abs(values[0] - values[1]) / 2)  # s / √2 for two values
    gain = next(c for c in results["comparisons"] if c["model"] == "student-tscm" and c["baseline"] == "student-baseline")
    student, baseline = by_name["student-tscm"], by_name["student-baseline"]
    assert gain["difference"] == pytest.approx(student["recall"]["1"] - baseline["recall"]["1"])
    assert gain["stderr"] == pytest.approx(math.hypot(student["recall_stderr"]["1"], baseline["recall_stderr"]["1"]))
    noisy = abs(gain["difference"]) < 2 * gain["stderr"]
    assert ("within noise" in gain["verdict"]) == noisy
    assert gain["per_seed_difference"] == pytest.approx(
        [a["1"] - b["1"] for a, b in zip(student["recall_per_seed"], baseline["recall_per_seed"])])
    assert "student-tscm vs student-baseline: R@1" in (demo_run / "results.md").read_text()
    recommended = f"student-{RECOMMENDED_LOSS}"
    assert {(c["model"], c["baseline"]) for c in results["comparisons"]} == {
        ("student-tscm", "student-baseline"), (recommended, "student-baseline"),
        ("student-tscm", "teacher"), (recommended, "teacher")}
    # Every student arm trained with the same preset settings; only the loss differs.
    configs = {name: (demo_run / "train" / f"{name}-seed0" / "config.yaml").read_text()
               for name in ("student-tscm", recommended, "student-baseline")}
    stripped = {name: [line for line in text.splitlines() if "preset:" not in line and "name:" not in line
                       and "teacher_checkpoint" not in line] for name, text in configs.items()}
    assert stripped["student-tscm"] == stripped[recommended] == stripped["student-baseline"]


@pytest.mark.slow
def test_later_seeds_described_from_memory_equal_the_files_way(demo_run, cache, tmp_path):
    from tscm.data.images import DecodedImages
    from tscm.experiments.common import RunOptions, measure_checkpoint

    results = json.loads((demo_run / "results.json").read_text())
    row = next(m for m in results["models"] if m["name"] == "student-baseline")
    test_set = load_placeset(cache / "synth-tiny-seed0", "test")
    options = RunOptions(out=tmp_path, threads=1, progress=False)
    checkpoint = demo_run / "train" / "student-baseline-seed1" / "best"
    from_files = measure_checkpoint(checkpoint, test_set, (25.0, 10.0), options)
    decoded = DecodedImages(test_set.db_paths + test_set.query_paths)
    from_memory = measure_checkpoint(checkpoint, test_set, (25.0, 10.0), options, decoded, timed=False)
    np.testing.assert_array_equal(from_memory.db, from_files.db)
    np.testing.assert_array_equal(from_memory.queries, from_files.queries)
    assert from_memory.ms_per_image is None and from_memory.matching_ms_per_query is None and from_files.ms_per_image > 0
    timed = measure_checkpoint(checkpoint, test_set, (25.0, 10.0), options, decoded)  # a sample timed from files
    np.testing.assert_array_equal(timed.db, from_files.db)
    assert timed.ms_per_image > 0 and timed.matching_ms_per_query > 0 and timed.multiply_adds == from_files.multiply_adds
    assert row["recall_per_seed"][1]["1"] == pytest.approx(from_files.main.recall[1], abs=1e-9)


@pytest.mark.slow
def test_demo_refuses_a_used_run_folder(demo_run, capsys):
    assert cli.main(["demo", *TINY_RUN, "--out", str(demo_run)]) == 2
    assert "not an empty folder" in capsys.readouterr().err


@pytest.mark.slow
def test_ablation_rows_summarise_their_seeds(demo_run, cache, tmp_path):
    out = tmp_path / "ablation"
    teacher = demo_run / "train" / "teacher" / "best"
    args = ["ablation", *TINY_RUN, "--cache-dir", str(cache), "--out", str(out), "--teacher", str(teacher),
            "--seeds", "0", "1", "--rows", "none", "cm", "--grid"]
    assert cli.main(args) == 0
    results = json.loads((out / "results.json").read_text())
    rows = [m for m in results["models"] if m["role"] == "student"]
    assert [row["distillation"] for row in rows] == ["none", "cm"]
    assert rows[0]["label"] == "none: L_hard (no distillation)" and rows[1]["label"] == "cm: L_hard + L_cm"
    for row in rows:
        assert row["seeds"] == [0, 1]
        values = [r["1"] for r in row["recall_per_seed"]]
        assert row["recall"]["1"] == pytest.approx(np.mean(values))
        assert row["recall_stderr"]["1"] == pytest.approx(np.std(values, ddof=1) / math.sqrt(2))
        assert len(row["wall_s_per_seed"]) == 2
    # Same tuples, same steps: rows differ only in their loss.
    steps = [[seed["training"]["steps"] for seed in row["per_seed"]] for row in rows]
    assert steps[0] == steps[1]
    comparison = results["comparisons"][0]
    assert (comparison["model"], comparison["baseline"]) == ("student-cm", "student-none")
    # The 2×2: own- and teacher-mined tuples, best-on-val and last weights; the main figure is own-mined, best.
    for row in rows:
        assert set(row["grid"]) == {"student/best", "student/last", "teacher/best", "teacher/last"}
        assert row["grid"]["student/best"] == pytest.approx([r["1"] for r in row["recall_per_seed"]])
    assert (out / "train" / "student-cm-teacher-mined-seed1" / "best").is_dir()
    assert "Tuples × checkpoint" in (out / "results.md").read_text()

    test_set = load_placeset(cache / "synth-tiny-seed0", "test")
    for row in rows:
        db, queries = load_descriptors(out, row["name"])
        assert row["recall_per_seed"][0]["1"] == pytest.approx(_recall_at(test_set, db, queries, 25.0)[1], abs=1e-9)
    assert "cm: L_hard + L_cm" in (out / "results.md").read_text()
    assert (out / "recall_curves.png").is_file()


def test_data_argument_takes_a_path_or_a_synthetic_preset(tmp_path):
    from tscm.data.synthetic import resolve_path_or_synthetic
    from tscm.errors import TscmError

    assert resolve_path_or_synthetic(str(tmp_path)) == tmp_path
    with pytest.raises(TscmError, match="no such file or folder"):
        resolve_path_or_synthetic(str(tmp_path / "missing"))
    with pytest.raises(TscmError, match="unknown synthetic preset 'nowhere'"):
        resolve_path_or_synthetic("synthetic:nowhere", cache_dir=str(tmp_path))


def test_chance_level_is_the_mean_share_of_true_matches():
    from tscm.data.places import PlaceSet
    from tscm.experiments.common import chance_recall_at_1

    places = PlaceSet("toy", "test", ["a", "b", "c"], ["q1", "q2", "q3"],
                      db_xy=[[0, 0], [10, 0], [100, 0]], query_xy=[[0, 0], [100, 0], [500, 0]])
    # q1 has 2 of 3 database images within 25 m, q2 has 1 of 3, q3 none (dropped).
    assert chance_recall_at_1(places, 25.0) == pytest.approx(100.0 * (2 / 3 + 1 / 3) / 2)

"""tscm card: a publishable checkpoint folder with a Hugging Face model card."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from tscm import cli
from tscm.deploy.packaging import hub
from tscm.deploy.packaging.model_card import match_result, read_card_results, write_model_card
from tscm.deploy.retrieval.recognizer import PlaceRecognizer
from tscm.errors import TscmError
from tscm.experiments.report import DatasetInfo, ModelResult, SeedMeasurement, build_results
from tscm.models.checkpoint import load_checkpoint

from helpers.model_files import write_checkpoint

PR = {"average_precision": 51.25, "recall_at_100_precision": 12.5, "f1_max": 60.0}


def front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n", 2)[1])


def write_run(run_dir: Path, *, student_extra: dict | None = None, two_seeds: bool = False) -> Path:
    """A results.json like `tscm demo` writes: the student's checkpoint recorded as train/student-tscm."""
    dataset = DatasetInfo(str(run_dir / "city"), "synthetic-city", "test", 25.0, "m", 960, 480, 470, (10.0,))
    seeds = [0, 1] if two_seeds else [0]
    measurements = [SeedMeasurement({1: 36.0 + s, 5: 67.5, 10: 79.8, 20: 88.0}, PR, {"10 m": {1: 20.0, 5: 40.0, 10: 50.0, 20: 60.0}},
                                    extra={"training": {"checkpoint": f"train/student-tscm-seed{s}"}})
                    for s in seeds]
    models = [
        ModelResult("teacher", "teacher", None, [0], [SeedMeasurement({1: 31.0, 5: 61.9, 10: 76.9, 20: 85.0}, PR)],
                    extra={"training": {"checkpoint": "train/teacher"}}),
        ModelResult("student-tscm", "student", "tscm", seeds, measurements, extra=student_extra or {}),
    ]
    document = build_results(dataset, models, command="tscm demo")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "results.json").write_text(json.dumps(document), encoding="utf-8")
    return run_dir / "results.json"


@pytest.fixture()
def run(tmp_path) -> tuple[Path, Path]:
    checkpoint = write_checkpoint(tmp_path / "run" / "train" / "student-tscm-seed0", "student-tiny", seed=0)
    return checkpoint, write_run(tmp_path / "run")


@pytest.mark.slow
def test_card_folder_is_a_checkpoint_with_front_matter(run, tmp_path) -> None:
    checkpoint, results = run
    out = tmp_path / "card"
    card = write_model_card(checkpoint, out, results=results, repo_id="someone/tscm-student")
    for name in ("model.safetensors", "meta.json"):
        assert (out / name).read_bytes() == (checkpoint / name).read_bytes()
    assert card.sha256 == hub.file_sha256(checkpoint / "model.safetensors")
    text = (out / "README.md").read_text(encoding="utf-8")
    meta = front_matter(text)
    assert meta["license"] == "mit" and meta["library_name"] == "tscm"
    assert {"visual-place-recognition", "student", "student-tiny"} <= set(meta["tags"])
    (entry,) = meta["model-index"]
    assert entry["name"] == "tscm-student-tscm"
    (result,) = entry["results"]
    dataset = result["dataset"]
    assert (dataset["name"], dataset["split"]) == ("synthetic-city", "test")
    assert dataset["args"] == {"radius": 25.0, "unit": "m", "protocol": "radius 25 m (community standard)",
                               "num_db": 960, "num_queries": 480, "num_queries_evaluated": 470}
    metrics = {m["type"]: m for m in result["metrics"]}
    assert metrics["recall@1"]["value"] == 36.0 and metrics["recall@20"]["value"] == 88.0
    assert metrics["recall@1"]["args"] == {"radius": 25.0, "unit": "m"}
    assert metrics["average_precision"]["value"] == 51.25
    # the body: results table, input, speed, digest, loading
    assert "| 25 m | 36.0 | 67.5 | 79.8 | 88.0 | 51.2 | 12.5 | 60.0 |" in text
    assert "| 10 m | 20.0 | 40.0 | 50.0 | 60.0 |" in text
    assert "960 database images, 480 queries of which 470" in text
    assert "**64×64**" in text and "mean [0.485, 0.456, 0.406]" in text
    assert [t["batch"] for t in card.timings] == [1, 16] and all(t["ms_per_image"] > 0 for t in card.timings)
    assert "| 1 |" in text and "| 16 |" in text and "torch thread(s)" in text and "logical cores" in text
    assert hub.card_sha256(text) == card.sha256
    assert hub.card_sha256(text, "meta.json") == hub.file_sha256(checkpoint / "meta.json")
    assert "PlaceRecognizer.from_checkpoint" in text and "torch.hub.load" in text and "hf://someone/tscm-student" in text
    assert "tscm export" in text and "matched by checkpoint path" in text


def test_card_folder_loads_like_the_checkpoint(run, tmp_path) -> None:
    checkpoint, _ = run
    out = tmp_path / "card"
    write_model_card(checkpoint, out, timing=False)
    model, meta = load_checkpoint(out)
    assert meta == load_checkpoint(checkpoint)[1]
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (40, 48, 3), dtype=np.uint8) for _ in range(3)]
    original = PlaceRecognizer.from_checkpoint(checkpoint).describe(images).descriptors
    published = PlaceRecognizer.from_checkpoint(out).describe(images).descriptors
    np.testing.assert_array_equal(original, published)
    assert "model-index" not in front_matter((out / "README.md").read_text(encoding="utf-8"))  # no results given


def test_results_matched_by_fingerprint_name_or_refused(tmp_path) -> None:
    checkpoint = write_checkpoint(tmp_path / "elsewhere" / "ckpt", "student-tiny", seed=0)
    fingerprint = load_checkpoint(checkpoint)[1]["fingerprint"]
    meta = {"fingerprint": fingerprint, "role": "student"}
    by_fingerprint = read_card_results(write_run(tmp_path / "a", student_extra={"fingerprint": fingerprint}))
    assert match_result(by_fingerprint, meta, checkpoint).how == "fingerprint"
    document = read_card_results(write_run(tmp_path / "b"))
    with pytest.raises(TscmError, match="no model entry records this checkpoint.*--model, one of: teacher, student-tscm"):
        match_result(document, meta, checkpoint)
    named = match_result(document, meta, checkpoint, "student-tscm")
    assert named.how == "name" and named.recall["1"] == 36.0
    with pytest.raises(TscmError, match="no model named 'nope'"):
        match_result(document, meta, checkpoint, "nope")
    with pytest.raises(TscmError, match="is a teacher, the checkpoint a student"):
        match_result(document, meta, checkpoint, "teacher")
    # several seeds: the recorded path picks this checkpoint's seed
    seeded = write_checkpoint(tmp_path / "c" / "train" / "student-tscm-seed1", "student-tiny", seed=0)
    several = read_card_results(write_run(tmp_path / "c", two_seeds=True))
    matched = match_result(several, meta, seeded)
    assert matched.how == "checkpoint path" and matched.seed_index == 1 and matched.recall["1"] == 37.0
    assert "seed 1" in matched.note


def test_card_command_and_bad_input(run, tmp_path, capsys) -> None:
    checkpoint, results = run
    out = tmp_path / "card"
    assert cli.main(["card", str(checkpoint), "--out", str(out), "--results", str(results.parent), "--no-timing",
                     "--license", "apache-2.0"]) == 0
    printed = capsys.readouterr().out
    assert "matched by checkpoint path" in printed and "R@1 36.0" in printed
    assert front_matter((out / "README.md").read_text(encoding="utf-8"))["license"] == "apache-2.0"
    assert cli.main(["card", "--out", str(out)]) == 2
    assert "either CKPT or --from-hub" in capsys.readouterr().err
    assert cli.main(["card", str(checkpoint), "--out", str(out), "--results", str(tmp_path / "none.json")]) == 2
    assert "no such file" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "something-else", "format_version": 2}), encoding="utf-8")
    assert cli.main(["card", str(checkpoint), "--out", str(out), "--results", str(bad)]) == 2
    assert "field 'format'" in capsys.readouterr().err
    assert cli.main(["card", "--from-hub", "not-an-id", "--out", str(out)]) == 2
    assert "expected user/name" in capsys.readouterr().err


def test_from_hub_offline_says_so(tmp_path, capsys, monkeypatch) -> None:
    import socket

    import torch

    with socket.socket() as probe:  # the hub endpoint moved to a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setattr(hub, "HF_ENDPOINT", f"http://127.0.0.1:{port}")
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        assert cli.main(["card", "--from-hub", "someone/tscm-student", "--out", str(tmp_path / "card")]) == 2
    finally:
        torch.hub.set_dir(previous)
    error = capsys.readouterr().err
    assert "offline" in error and "pass that folder's path" in error and error.count("\n") == 1

"""`tscm demo` on a slice of the real Nordland frames (a manifest in a temporary folder that points at
../shared/data/nordland; nothing is copied): the frame recipe is chosen, every row is reported in
frames, and the ImageNet-trunk reference row is there. One step of training: mechanics, not learning."""

from __future__ import annotations

import csv
import json

import pytest
from helpers.weights import require_weights

from tscm import cli
from tscm.experiments.common import RECOMMENDED_LOSS

SECTIONS = {"train": range(1, 41), "val": range(1901, 1921), "test": range(2301, 2331)}


@pytest.fixture(scope="module")
def nordland_slice(nordland_root, tmp_path_factory):
    manifest = tmp_path_factory.mktemp("nordland") / "slice.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "frame", "role", "split"])
        for split, frames in SECTIONS.items():
            for season, role in (("summer", "database"), ("winter", "query")):
                for k in frames:
                    writer.writerow([(nordland_root / season / f"images-{10 * k:05d}.png").as_posix(), k, role, split])
    return manifest


@pytest.mark.slow
def test_demo_on_a_nordland_slice_reports_in_frames(nordland_slice, tmp_path):
    require_weights("lite0", "lite1")
    out = tmp_path / "demo"
    code = cli.main(["demo", "--data", str(nordland_slice), "--quick", "--no-progress", "--threads", "2",
                     "--seeds", "0", "--out", str(out)])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    settings = json.loads((out / "settings.json").read_text())
    assert settings["unit"] == "frame" and settings["teacher_config"] == "nordland_teacher"
    assert results["dataset"]["unit"] == "frame"
    names = {row["name"] for row in results["models"]}
    assert {"teacher", "student-tscm", f"student-{RECOMMENDED_LOSS}", "student-baseline", "raw-pixels",
            "imagenet-trunk"} <= names
    text = (out / "results.md").read_text()
    assert "frame" in text and " m " not in text.replace("ms", "")
    assert (out / "retrieval_student-tscm.png").is_file()  # the retrieval grid on real frames

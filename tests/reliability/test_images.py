"""Bad images in a data set: check-data lists them (exit 1), commands that describe them stop with one
line naming the file (exit 2), a 16-bit image is scaled (not read as white), a 1×1 image is warned about."""

from __future__ import annotations

import numpy as np
import pytest

from reliability.support import (BAD_IMAGES, assert_no_traceback, assert_problems, assert_refused, damage_image,
                                 image_set, previous_output, tscm, white_and_grey_images, write_manifest)

REASONS = {
    "truncated": "unreadable",
    "empty": "unreadable",
    "text": "unreadable",
    "folder": "a folder, not an image",
    "missing": "missing",
    "float-tiff": "outside [0, 1]",
}


@pytest.mark.parametrize("kind", BAD_IMAGES)
def test_check_data_lists_a_bad_image(kind, tmp_path, capsys):
    manifest, db, _ = image_set(tmp_path)
    damage_image(db[1], kind)
    outcome = tscm(capsys, "check-data", manifest, "--workers", 1)
    assert_problems(outcome, str(db[1]))
    listed = [line for line in outcome.out.splitlines() if str(db[1]) in line]
    assert any(REASONS[kind] in line for line in listed) or (kind == "missing" and "missing images: 1" in outcome.out), outcome.out


@pytest.mark.parametrize("kind", BAD_IMAGES)
def test_evaluate_names_a_bad_image(kind, tmp_path, capsys, checkpoints):
    manifest, db, _ = image_set(tmp_path)
    damage_image(db[1], kind)
    before = previous_output(tmp_path / "result.json")
    outcome = tscm(capsys, "evaluate", manifest, "--checkpoint", checkpoints["student"], "--json", tmp_path / "result.json")
    assert_refused(outcome, "evaluate", str(db[1]), absent=["--on-bad-image"])  # evaluate has no such option
    before.assert_unchanged()


def test_an_unreadable_image_in_a_worker_process_gives_one_clean_line(tmp_path, capsys, checkpoints):
    manifest, db, _ = image_set(tmp_path)
    damage_image(db[2], "truncated")
    outcome = tscm(capsys, "evaluate", manifest, "--checkpoint", checkpoints["student"], "--num-workers", 1)
    message = assert_refused(outcome, "evaluate", str(db[2]), "unreadable")
    assert "Original Traceback" not in outcome.err and "DataLoader worker" not in message


def test_a_one_pixel_image_is_warned_about(tmp_path, capsys):
    manifest, db, _ = image_set(tmp_path)
    damage_image(db[0], "tiny")
    outcome = tscm(capsys, "check-data", manifest, "--workers", 1)
    assert_no_traceback(outcome)
    assert outcome.code == 0, outcome.out
    warning = [line for line in outcome.out.splitlines() if line.strip().startswith("warning:")]
    assert warning and str(db[0]) in warning[0], outcome.out


def test_a_16_bit_image_is_scaled_not_white(tmp_path, capsys, checkpoints):
    from tscm.data.images import load_rgb
    from tscm.evaluation.extract import InputSpec, extract_descriptors
    from tscm.models.checkpoint import load_checkpoint

    white, wide = white_and_grey_images(tmp_path / "img")
    pixels = np.asarray(load_rgb(wide))
    raw = np.linspace(0, 40000, 40 * 40).reshape(40, 40).astype(np.uint16)
    assert pixels.max() < 255 and np.array_equal(pixels[:, :, 0], np.round(raw / 257).astype(np.uint8))
    model, meta = load_checkpoint(checkpoints["student"])
    descriptors = extract_descriptors(model, [white, wide], InputSpec.of(meta))
    assert not np.allclose(descriptors[0], descriptors[1], atol=1e-4)
    # check-data reads it with the same loader and finds nothing wrong
    manifest = write_manifest(tmp_path / "img" / "set.csv", [("wide16.png", 0, 0, "database"), ("white.png", 1, 0, "query")])
    outcome = tscm(capsys, "check-data", manifest, "--workers", 1)
    assert outcome.code == 0 and "result: OK" in outcome.out, outcome.out

"""Index files and the commands around them (`index build`, `index calibrate`, `query`): damaged or
edited files are refused naming the file and field, another model's index is refused, outputs are
checked before any extraction, and skipped images are reported once each."""

from __future__ import annotations

import json
import shutil
import struct

import pytest

from reliability.support import Snapshot, assert_no_traceback, assert_refused, damage_image, previous_output, tscm


def edit_header(path, change):
    """Rewrite the tscm metadata in a safetensors index file's header, leaving the arrays' bytes as they are."""
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    meta = json.loads(header["__metadata__"]["tscm_index"])
    change(meta)
    header["__metadata__"]["tscm_index"] = json.dumps(meta)
    encoded = json.dumps(header).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data[8 + length:])


def query_image(small):
    return small.parent.parent / "query" / "q" / "000000_pitch1_yaw1.jpg"


@pytest.fixture
def index(index_file, tmp_path):
    copy = tmp_path / "map.idx"
    shutil.copy(index_file, copy)
    return copy


def set_meta(name, value):
    def change(meta):
        meta[name] = value
    return change


HEADER_EDITS = [
    ("dim-as-text", set_meta("dim", "256"), ["map.idx", "'dim'", "integer"]),
    ("count-negative", set_meta("count", -1), ["map.idx", "'count'"]),
    ("count-too-big", set_meta("count", 99), ["map.idx", "99"]),
    ("backend-unknown", set_meta("backend", "annoy"), ["map.idx", "annoy"]),
    ("params-list", set_meta("params", [1]), ["map.idx", "'params'"]),
    ("format-other", set_meta("format", "tscm-checkpoint"), ["map.idx", "'format'"]),
    ("thresholds-nan", set_meta("thresholds", [{"distance": "nan"}]), ["map.idx", "thresholds"]),
    ("checksum-edited", lambda meta: meta["sha256"].update(ids="0" * 64), ["map.idx", "'ids'", "checksum"]),
]


@pytest.mark.parametrize("case, change, named", HEADER_EDITS, ids=[e[0] for e in HEADER_EDITS])
def test_query_refuses_an_edited_index_header(case, change, named, index, small, capsys):
    edit_header(index, change)
    assert_refused(tscm(capsys, "query", "--index", index, query_image(small)), "query", *named)


def test_damaged_index_arrays_fail_their_checksum(index, small, capsys):
    data = bytearray(index.read_bytes())
    data[-20] ^= 0xFF  # inside the last array
    index.write_bytes(bytes(data))
    assert_refused(tscm(capsys, "query", "--index", index, query_image(small)), "query", "map.idx", "checksum", "corrupt")
    before = Snapshot(index)
    outcome = tscm(capsys, "index", "calibrate", "--index", index, "--data", small.parent.parent)
    assert_refused(outcome, "index", "map.idx", "corrupt")
    before.assert_unchanged()


@pytest.mark.parametrize("damage", ["truncated", "empty", "text"])
def test_a_truncated_or_foreign_index_file_is_refused(damage, index, small, capsys):
    if damage == "truncated":
        index.write_bytes(index.read_bytes()[:300])
    elif damage == "empty":
        index.write_bytes(b"")
    else:
        index.write_text("an index, honest\n", encoding="utf-8")
    assert_refused(tscm(capsys, "query", "--index", index, query_image(small)), "query", "map.idx")


def test_another_models_index_is_refused(index, small, capsys, checkpoints):
    outcome = tscm(capsys, "query", "--index", index, "--checkpoint", checkpoints["student_other"], query_image(small))
    assert_refused(outcome, "query", "fingerprint", "rebuild the index")


def test_an_index_whose_checkpoint_vanished_asks_for_one(index, small, tmp_path, capsys, checkpoints):
    edit_header(index, lambda meta: meta["model_meta"].update(checkpoint=str(tmp_path / "gone")))
    assert_refused(tscm(capsys, "query", "--index", index, query_image(small)), "query", "gone", "--checkpoint")


def test_query_names_an_unreadable_image(index, small, tmp_path, capsys):
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image", encoding="utf-8")
    assert_refused(tscm(capsys, "query", "--index", index, bad), "query", "bad.jpg", "unreadable")
    assert_refused(tscm(capsys, "query", "--index", index, tmp_path / "absent.jpg"), "query", "absent.jpg")
    assert_refused(tscm(capsys, "query", "--index", tmp_path / "no.idx", query_image(small)), "query", "no.idx")


@pytest.fixture
def no_extraction(monkeypatch):
    def reached(*args, **kwargs):
        raise AssertionError("images were described before the options were checked")

    import tscm.deploy.retrieval.recognizer
    import tscm.evaluation.extract

    monkeypatch.setattr(tscm.evaluation.extract, "describe_images", reached)
    monkeypatch.setattr(tscm.deploy.retrieval.recognizer, "describe_images", reached)


def test_index_build_refuses_a_folder_as_out_before_extracting(small, tmp_path, capsys, checkpoints, no_extraction):
    (tmp_path / "maps").mkdir()
    outcome = tscm(capsys, "index", "build", "--checkpoint", checkpoints["student"], "--images", small,
                   "--out", tmp_path / "maps")
    assert_refused(outcome, "index", "maps", "is a folder")


def test_index_build_checks_backend_parameters_before_extracting(small, tmp_path, capsys, checkpoints, no_extraction):
    outcome = tscm(capsys, "index", "build", "--checkpoint", checkpoints["student"], "--images", small,
                   "--out", tmp_path / "map.idx", "--backend", "ivfpq", "--param", "nlist=-4")
    assert_refused(outcome, "index", "nlist")


def test_skipped_images_are_reported_once_each(small, tmp_path, capsys, checkpoints):
    root = small.parent.parent
    bad = [root / "database" / "000" / "000001_pitch1_yaw4.jpg", root / "database" / "001" / "000003_pitch1_yaw2.jpg"]
    damage_image(bad[0], "truncated")
    damage_image(bad[1], "text")
    before = previous_output(tmp_path / "map.idx")
    outcome = tscm(capsys, "index", "build", "--checkpoint", checkpoints["student"], "--images", small,
                   "--out", tmp_path / "map.idx")
    assert_refused(outcome, "index", str(bad[0]), "--on-bad-image skip")
    before.assert_unchanged()
    outcome = tscm(capsys, "index", "build", "--checkpoint", checkpoints["student"], "--images", small,
                   "--out", tmp_path / "map.idx", "--on-bad-image", "skip", "--batch-size", 1)
    assert_no_traceback(outcome)
    assert outcome.code == 0, outcome.err
    for path in bad:
        assert sum(str(path) in line for line in (outcome.out + outcome.err).splitlines()) == 1, (outcome.out, outcome.err)
    assert "skipped 2 unreadable image(s)" in outcome.out
    assert "2 places" in outcome.out


def test_index_calibrate_refuses_a_split_with_another_number_of_images(index, small, tmp_path, capsys):
    before = Snapshot(index)
    outcome = tscm(capsys, "index", "calibrate", "--index", index, "--data", small.parent.parent, "--split", "test")
    assert_refused(outcome, "index", "--split test")
    before.assert_unchanged()

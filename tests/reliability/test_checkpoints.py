"""Damaged and edited checkpoints, for every command that loads one, and published checkpoints for
`import-official`: refused with one line naming the file and the field; nothing unpickled."""

from __future__ import annotations

import json
import pickle
import shutil

import pytest
import torch

from reliability.support import Payload, Snapshot, assert_no_traceback, assert_refused, previous_output, tscm


def edit_meta(checkpoint, change, keep_digest=True):
    path = checkpoint / "meta.json"
    meta = json.loads(path.read_text(encoding="utf-8"))
    change(meta)
    if not keep_digest:  # as a checkpoint of an older tscm, which recorded no digest
        meta.pop("metadata_digest", None)
        meta.pop("field_digests", None)
    path.write_text(json.dumps(meta), encoding="utf-8")


def set_field(name, value):
    def change(meta):
        meta[name] = value
    return change


def set_config(name, value):
    def change(meta):
        meta["config"][name] = value
    return change


# (case id, edit of meta.json, keep the recorded digest, what the message must name)
EDITS = [
    ("role", set_field("role", "teacher"), True, ["meta.json", "role"]),
    ("preset", set_field("preset", "student-paper"), True, ["meta.json", "preset"]),
    ("descriptor-dim", set_field("descriptor_dim", 512), True, ["meta.json", "descriptor_dim"]),
    ("image-size", set_field("image_size", [128, 128]), True, ["meta.json", "image_size"]),
    ("clusters-text", set_config("clusters", "sixteen"), True, ["meta.json", "config"]),
    ("config-null", set_field("config", None), True, ["meta.json", "config"]),
    ("role-legacy", set_field("role", "teacher"), False, ["meta.json", "'role'"]),
    ("descriptor-dim-legacy", set_field("descriptor_dim", 512), False, ["meta.json", "'descriptor_dim'", "256"]),
    ("clusters-text-legacy", set_config("clusters", "sixteen"), False, ["meta.json", "config"]),
    ("config-null-legacy", set_field("config", None), False, ["meta.json", "'config'", "JSON object"]),
    ("mean-legacy", set_field("mean", [0.5, 0.5]), False, ["meta.json", "'mean'"]),
    ("format-version", set_field("format_version", 7), True, ["meta.json", "format_version", "7"]),
    ("fingerprint-missing", lambda meta: meta.pop("fingerprint"), True, ["meta.json", "fingerprint"]),
]


@pytest.mark.parametrize("command", ["info", "evaluate"])
@pytest.mark.parametrize("case, change, keep_digest, named", EDITS, ids=[e[0] for e in EDITS])
def test_an_edited_meta_json_is_refused_naming_the_field(case, change, keep_digest, named, command, student, small,
                                                         tmp_path, capsys):
    edit_meta(student, change, keep_digest)
    if command == "info":
        outcome = tscm(capsys, "info", student, "--no-macs")
    else:
        outcome = tscm(capsys, "evaluate", small, "--checkpoint", student)
    assert_refused(outcome, command, *named)


@pytest.mark.parametrize("damage, named", [
    ("truncate", ["model.safetensors", "truncated or corrupt"]),
    ("pickle", ["model.safetensors", "truncated or corrupt"]),
    ("remove-weights", ["model.safetensors"]),
    ("remove-meta", ["meta.json", "not a tscm checkpoint"]),
    ("meta-not-json", ["meta.json", "JSON"]),
    ("meta-list", ["meta.json", "JSON object"]),
])
def test_a_damaged_checkpoint_is_refused(damage, named, student, capsys, marker):
    weights, meta = student / "model.safetensors", student / "meta.json"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:5000])
    elif damage == "pickle":
        weights.write_bytes(pickle.dumps(Payload(marker)))
    elif damage == "remove-weights":
        weights.unlink()
    elif damage == "remove-meta":
        meta.unlink()
    elif damage == "meta-not-json":
        meta.write_bytes(pickle.dumps(Payload(marker)))
    elif damage == "meta-list":
        meta.write_text("[1, 2, 3]", encoding="utf-8")
    assert_refused(tscm(capsys, "info", student, "--no-macs"), "info", *named)


def test_weights_from_another_save_are_refused(student, checkpoints, capsys):
    shutil.copy(checkpoints["student_other"] / "model.safetensors", student / "model.safetensors")
    assert_refused(tscm(capsys, "info", student, "--no-macs"), "info", "model.safetensors", "fingerprint", "different saves")


def test_an_edited_checkpoint_is_refused_by_every_command_that_loads_one(student, small, tmp_path, capsys, index_file):
    edit_meta(student, set_field("role", "teacher"))
    out = previous_output(tmp_path / "map.idx")
    assert_refused(tscm(capsys, "index", "build", "--checkpoint", student, "--images", small, "--out", tmp_path / "map.idx"),
                   "index", "role")
    out.assert_unchanged()
    onnx = previous_output(tmp_path / "model.onnx")
    assert_refused(tscm(capsys, "export", student, "--onnx", tmp_path / "model.onnx"), "export", "role")
    onnx.assert_unchanged()
    image = small.parent.parent / "query" / "q" / "000000_pitch1_yaw1.jpg"
    assert_refused(tscm(capsys, "query", "--index", index_file, "--checkpoint", student, image), "query", "role")


def test_distill_refuses_a_student_given_as_teacher(checkpoints, tmp_path, capsys, city):
    outcome = tscm(capsys, "distill", "--teacher", checkpoints["student"], "--set", f"data.path={city}",
                   "--set", f"run.output_dir={tmp_path}")
    assert_refused(outcome, "distill", str(checkpoints["student"]), "student", "teacher")
    assert not any(tmp_path.iterdir())


def test_info_refuses_a_path_that_is_neither_checkpoint_nor_preset(tmp_path, capsys):
    assert_refused(tscm(capsys, "info", tmp_path / "nothing"), "info", "nothing", "preset")


# ----- import-official ---------------------------------------------------------------------------


def test_a_pickle_payload_as_pth_tar_never_runs(tmp_path, capsys, marker):
    published = tmp_path / "evil.pth.tar"
    published.write_bytes(pickle.dumps({"state_dict": {}, "epoch": Payload(marker)}, protocol=2))
    outcome = tscm(capsys, "import-official", published, "--role", "student", "--out", tmp_path / "out")
    assert_refused(outcome, "import-official", "evil.pth.tar", absent=["weights_only=False", "weights_only = False"])
    assert "weights_only=False" not in outcome.err
    assert not (tmp_path / "out").exists()


def test_a_torch_zip_with_a_payload_never_runs(tmp_path, capsys, marker):
    published = tmp_path / "evil.pth.tar"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "scheduler": Payload(marker)}, published)
    outcome = tscm(capsys, "import-official", published, "--role", "teacher", "--out", tmp_path / "out")
    assert_refused(outcome, "import-official", "evil.pth.tar", "weights-only", absent=["weights_only=False"])


@pytest.mark.parametrize("content, named", [
    (b"", ["empty.pth.tar"]),
    (b"PK\x03\x04truncated", ["empty.pth.tar"]),
    ("no-state-dict", ["empty.pth.tar", "'state_dict'"]),
    ("wrong-keys", ["empty.pth.tar", "does not fit the published teacher"]),
], ids=["empty", "truncated-zip", "no-state-dict", "wrong-keys"])
def test_a_broken_published_checkpoint_is_refused(content, named, tmp_path, capsys):
    published = tmp_path / "empty.pth.tar"
    if content == "no-state-dict":
        torch.save({"model": {"w": torch.zeros(2)}}, published)
    elif content == "wrong-keys":
        torch.save({"state_dict": {"backbone.nothing.weight": torch.zeros(2)}}, published)
    else:
        published.write_bytes(content)
    outcome = tscm(capsys, "import-official", published, "--role", "teacher", "--out", tmp_path / "out")
    assert_refused(outcome, "import-official", *named)


def test_import_official_refuses_an_existing_out_without_overwrite(tmp_path, capsys, checkpoints):
    out = tmp_path / "out"
    shutil.copytree(checkpoints["student"], out)
    before = Snapshot(out)
    published = tmp_path / "p.pth.tar"
    torch.save({"state_dict": {}}, published)
    outcome = tscm(capsys, "import-official", published, "--role", "student", "--out", out)
    assert_refused(outcome, "import-official", str(out), "--overwrite")
    before.assert_unchanged()
    file_out = previous_output(tmp_path / "file-out")
    outcome = tscm(capsys, "import-official", published, "--role", "student", "--out", tmp_path / "file-out")
    assert_refused(outcome, "import-official", "file-out")
    file_out.assert_unchanged()


def test_import_official_reads_the_file_before_touching_out(tmp_path, capsys, checkpoints):
    """--overwrite with a broken published file keeps the checkpoint already in --out."""
    out = tmp_path / "out"
    shutil.copytree(checkpoints["student"], out)
    before = Snapshot(out)
    published = tmp_path / "broken.pth.tar"
    published.write_bytes(b"\0" * 100)
    outcome = tscm(capsys, "import-official", published, "--role", "student", "--out", out, "--overwrite")
    assert_refused(outcome, "import-official", "broken.pth.tar")
    assert_no_traceback(outcome)
    before.assert_unchanged()


@pytest.mark.slow
def test_evaluate_runs_an_exported_onnx_model_as_its_help_says(small, tmp_path, capsys, checkpoints):
    onnx = tmp_path / "student.onnx"
    assert tscm(capsys, "export", checkpoints["student"], "--onnx", onnx, "--exporter", "torchscript").code == 0
    from_onnx = tscm(capsys, "evaluate", small, "--checkpoint", onnx, "--json", tmp_path / "onnx.json")
    assert_no_traceback(from_onnx)
    assert from_onnx.code == 0, from_onnx.err
    from_checkpoint = tscm(capsys, "evaluate", small, "--checkpoint", checkpoints["student"], "--json", tmp_path / "ckpt.json")
    recall = [json.loads((tmp_path / name).read_text())["recall"] for name in ("onnx.json", "ckpt.json")]
    assert recall[0] == recall[1]
    assert_refused(tscm(capsys, "evaluate", small, "--checkpoint", onnx, "--device", "cuda:0"), "evaluate", "--device")

"""Native checkpoints: round trip, metadata, fingerprints, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tscm import __version__
from tscm.models.checkpoint import load_checkpoint, model_fingerprint, read_metadata, save_checkpoint
from tscm.cli import main
from tscm.errors import TscmError
from tscm.models import build_model, get_preset


def trained_like(name: str, seed: int) -> torch.nn.Module:
    """A tiny model whose batch-norm statistics moved away from their initial values."""
    torch.manual_seed(seed)
    model = build_model(name)
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, 64, 64))
    return model.eval()


@pytest.mark.parametrize("name", ["teacher-tiny", "student-tiny"])
def test_round_trip_gives_identical_outputs_and_metadata(name: str, tmp_path: Path) -> None:
    model = trained_like(name, seed=0)
    teacher_fp = "sha256:" + "ab" * 32 if name.startswith("student") else None
    extra = {"train": {"lr": 1e-5, "epochs": 3}, "eval_protocol": {"radius_m": 25}}
    save_checkpoint(tmp_path / "ckpt", model, model.config, extra=extra, teacher_fingerprint=teacher_fp)
    loaded, meta = load_checkpoint(tmp_path / "ckpt", expected_preset=name)
    assert not loaded.training
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), model(images), rtol=0, atol=0)
    assert meta["preset"] == name and meta["role"] == model.role
    assert meta["descriptor_dim"] == model.descriptor_dim and meta["image_size"] == [64, 64]
    assert meta["mean"] == list(model.config.mean) and meta["std"] == list(model.config.std)
    assert meta["package_version"] == __version__
    assert meta["fingerprint"] == model_fingerprint(model) == model_fingerprint(loaded)
    assert meta["teacher_fingerprint"] == teacher_fp and meta["extra"] == extra
    assert read_metadata(tmp_path / "ckpt") == meta
    assert loaded.config == model.config
    assert all(isinstance(p, torch.nn.Parameter) and p.requires_grad for p in loaded.parameters())  # resumable


def test_fingerprint_covers_buffers_and_is_reproducible() -> None:
    first, second = build_model("student-tiny"), build_model("student-tiny")
    second.load_state_dict(first.state_dict())
    assert model_fingerprint(first) == model_fingerprint(second)
    second.cnn.body.bn1.running_mean += 1e-3
    assert model_fingerprint(first) != model_fingerprint(second)


def test_other_files_in_the_directory_survive_a_save(tmp_path: Path) -> None:
    model = build_model("student-tiny")
    (tmp_path / "optimizer.safetensors").write_bytes(b"kept")
    save_checkpoint(tmp_path, model, model.config)
    save_checkpoint(tmp_path, model, model.config)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta.json", "model.safetensors", "optimizer.safetensors"]


def test_expected_preset_mismatch_is_an_error(tmp_path: Path) -> None:
    model = build_model("student-tiny")
    save_checkpoint(tmp_path, model, model.config)
    with pytest.raises(TscmError, match="holds preset 'student-tiny', expected 'teacher-tiny'"):
        load_checkpoint(tmp_path, expected_preset="teacher-tiny")


def test_shape_mismatch_is_an_error(tmp_path: Path) -> None:
    model = build_model("student-tiny")
    save_checkpoint(tmp_path, model, model.config)
    meta = json.loads((tmp_path / "meta.json").read_text())
    meta["config"]["clusters"] = 8
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(TscmError, match=r"field\(s\) config differ from what was saved"):
        load_checkpoint(tmp_path)
    # Without the digests (a checkpoint of an earlier release), the weights' shapes still catch it.
    del meta["metadata_digest"], meta["field_digests"]
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(TscmError, match=r"mis-shaped \['vlad.cluster_weights \(64, 16\) \(expected \(64, 8\)\)"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("field, value", [("role", "teacher"), ("preset", "teacher-tiny"), ("descriptor_dim", 128),
                                          ("mean", [0.5, 0.5, 0.5])])
def test_edited_behaviour_fields_are_refused_by_name(tmp_path: Path, field, value) -> None:
    model = build_model("student-tiny")
    save_checkpoint(tmp_path, model, model.config)
    meta = json.loads((tmp_path / "meta.json").read_text())
    meta[field] = value
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(TscmError, match=f"field\\(s\\) {field} differ"):
        load_checkpoint(tmp_path)
    del meta["metadata_digest"], meta["field_digests"]  # no digest: the model config still contradicts it
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(TscmError, match=f"'{field}'"):
        load_checkpoint(tmp_path)


def test_weights_from_another_save_are_detected(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "a", build_model("student-tiny"), get_preset("student-tiny"))
    save_checkpoint(tmp_path / "b", build_model("student-tiny"), get_preset("student-tiny"))
    (tmp_path / "a" / "model.safetensors").write_bytes((tmp_path / "b" / "model.safetensors").read_bytes())
    with pytest.raises(TscmError, match="different saves"):
        load_checkpoint(tmp_path / "a")


def test_truncated_weights_and_missing_metadata_are_errors(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, build_model("student-tiny"), get_preset("student-tiny"))
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(TscmError, match="could not be read"):
        load_checkpoint(tmp_path)
    with pytest.raises(TscmError, match="no meta.json"):
        load_checkpoint(tmp_path / "nowhere")
    (tmp_path / "meta.json").write_text("{not json")
    with pytest.raises(TscmError, match="not valid JSON"):
        read_metadata(tmp_path)


def test_checkpoint_files_are_safetensors_and_json(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, build_model("teacher-tiny"), get_preset("teacher-tiny"))
    header_size = int.from_bytes((tmp_path / "model.safetensors").read_bytes()[:8], "little")
    header = json.loads((tmp_path / "model.safetensors").read_bytes()[8 : 8 + header_size])
    assert header["__metadata__"]["format"] == "tscm-checkpoint"
    assert not list(tmp_path.glob(".*.tmp"))


def test_info_command_on_checkpoint_and_preset(tmp_path: Path, capsys) -> None:
    model = build_model("student-tiny")
    save_checkpoint(tmp_path, model, model.config, teacher_fingerprint="sha256:00")
    assert main(["info", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    total = sum(p.numel() for p in model.parameters())
    assert f"parameters: {total:,}" in out and "uncertainty:" in out
    assert f"descriptor dim: {model.descriptor_dim}" in out and "3×64×64" in out and "multiply-adds per image:" in out
    assert "teacher fingerprint: sha256:00" in out
    assert main(["info", "teacher-tiny", "--no-macs"]) == 0
    assert "encoder:" in capsys.readouterr().out
    assert main(["info", "no-such-thing"]) == 2
    assert "neither a checkpoint directory nor a preset" in capsys.readouterr().err


def test_config_must_be_the_models_own(tmp_path: Path) -> None:
    model = build_model("student-tiny")
    with pytest.raises(TscmError, match="differs from the model's own config"):
        save_checkpoint(tmp_path, model, get_preset("teacher-tiny"))
    assert not (tmp_path / "meta.json").exists()

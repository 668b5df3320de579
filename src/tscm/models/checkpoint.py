"""Native checkpoints: a directory with `model.safetensors` and `meta.json`.

Other files (optimizer state, logs) may live in the same directory; this module only touches its
two files. Each is written atomically, weights first and metadata last, and the metadata holds the
weights' fingerprint, so a checkpoint caught between two saves is detected on load.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from tscm import __version__
from tscm.errors import TscmError, excerpt
from tscm.fileio import atomic_path, check_header, read_json, stat_regular, write_json_atomic
from tscm.models.presets import build_model, model_config_from_dict, model_config_to_dict

WEIGHTS_FILE = "model.safetensors"
META_FILE = "meta.json"
FORMAT_NAME = "tscm-checkpoint"
FORMAT_VERSION = 1


def model_fingerprint(model: nn.Module) -> str:
    """sha256 over every state tensor's name, dtype, shape and bytes (parameters and buffers)."""
    digest = hashlib.sha256()
    state = model.state_dict()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return "sha256:" + digest.hexdigest()


# The metadata that changes what a checkpoint's model computes; its digest is stored beside it, so an
# edited meta.json (say, a student relabelled `role: teacher`) is refused and the field named.
BEHAVIOUR_FIELDS = ("preset", "role", "config", "descriptor_dim", "image_size", "mean", "std", "teacher_fingerprint")


def metadata_digest(meta: dict[str, Any]) -> str:
    """sha256 of the behaviour fields of `meta` (canonical JSON)."""
    canonical = json.dumps({name: meta.get(name) for name in BEHAVIOUR_FIELDS}, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def field_digests(meta: dict[str, Any]) -> dict[str, str]:
    """One short digest per behaviour field, to name the field that was edited."""
    return {name: hashlib.sha256(json.dumps(meta.get(name), sort_keys=True).encode("utf-8")).hexdigest()[:16]
            for name in BEHAVIOUR_FIELDS}


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    config: Any,
    *,
    extra: dict[str, Any] | None = None,
    teacher_fingerprint: str | None = None,
) -> dict[str, Any]:
    """Write `model`'s weights and metadata into directory `path`; returns the metadata written."""
    if getattr(model, "config", config) != config:
        raise TscmError(f"save_checkpoint: the config given for {path} differs from the model's own config")
    directory = Path(path)
    if directory.exists() and not directory.is_dir():
        raise TscmError(f"checkpoint path {directory} exists and is not a directory")
    directory.mkdir(parents=True, exist_ok=True)
    config_dict = model_config_to_dict(config)
    state = {}
    storages: set[int] = set()
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().to("cpu").contiguous()
        # safetensors refuses tensors that share memory; give each its own copy.
        if tensor.untyped_storage().data_ptr() in storages:
            tensor = tensor.clone()
        storages.add(tensor.untyped_storage().data_ptr())
        state[name] = tensor
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "preset": config_dict["name"],
        "role": config_dict["role"],
        "config": config_dict,
        "descriptor_dim": int(model.descriptor_dim),
        "image_size": list(config.image_size),
        "mean": list(config.mean),
        "std": list(config.std),
        "fingerprint": model_fingerprint(model),
        "teacher_fingerprint": teacher_fingerprint,
        "extra": extra or {},
    }
    meta["metadata_digest"] = metadata_digest(meta)
    meta["field_digests"] = field_digests(meta)
    json.dumps(meta)  # fail before writing anything if `extra` is not JSON-serialisable
    with atomic_path(directory / WEIGHTS_FILE) as tmp:
        # looked up at call time, like the index file's: the disk-failure test patches it
        safetensors.torch.save_file(state, str(tmp), metadata={"format": FORMAT_NAME, "fingerprint": meta["fingerprint"]})
    write_json_atomic(directory / META_FILE, meta)
    return meta


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The checkpoint's meta.json, checked for format and required fields."""
    file = Path(path) / META_FILE
    if not file.is_symlink() and not file.exists():  # a FIFO or a loop there is named by read_json
        raise TscmError(f"{path} is not a tscm checkpoint directory (no {META_FILE})")
    meta = read_json(file, "checkpoint metadata")
    required = ("preset", "config", "descriptor_dim", "image_size", "mean", "std", "fingerprint")
    return check_header(meta, FORMAT_NAME, FORMAT_VERSION, str(file), required)


def check_metadata(meta: dict[str, Any], where: str) -> None:
    """The behaviour fields agree with their recorded digest and with the saved model config."""
    if "metadata_digest" in meta and metadata_digest(meta) != meta["metadata_digest"]:
        recorded = meta.get("field_digests") or {}
        edited = [name for name, digest in field_digests(meta).items() if recorded.get(name) != digest]
        raise TscmError(f"{where}: field(s) {', '.join(edited) or 'of meta.json'} differ from what was saved "
                        "(meta.json was edited); restore the file or save the checkpoint again")
    config = meta["config"]
    if not isinstance(config, dict):
        raise TscmError(f"{where}: field 'config' must be a JSON object, got {type(config).__name__}")
    for name, expected in (("preset", config.get("name")), ("role", config.get("role")),
                           ("image_size", list(config.get("image_size") or [])), ("mean", list(config.get("mean") or [])),
                           ("std", list(config.get("std") or []))):
        if name in meta and meta[name] != expected:
            raise TscmError(f"{where}: field {name!r} is {excerpt(meta[name])} but the model config says {excerpt(expected)}")


def load_checkpoint(path: str | Path, expected_preset: str | None = None,
                    expected_role: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """(model in eval mode, metadata) from a checkpoint directory; never unpickles.

    Refuses edited metadata (see BEHAVIOUR_FIELDS), weights from another save, and, when given, a
    preset or role other than expected.
    """
    meta = read_metadata(path)
    check_metadata(meta, f"{Path(path) / META_FILE}")
    if expected_role is not None and meta.get("role") != expected_role:
        raise TscmError(f"{path}: holds a {meta.get('role')} model, expected a {expected_role}")
    if expected_preset is not None and meta["preset"] != expected_preset:
        raise TscmError(f"checkpoint {path} holds preset {excerpt(meta['preset'])}, expected {expected_preset!r}")
    config = model_config_from_dict(meta["config"])
    try:
        with torch.device("meta"):  # no random initialisation: every tensor comes from the file
            model = build_model(config)
    except (TypeError, ValueError, AttributeError) as error:  # a field of the wrong type or size
        raise TscmError(f"{Path(path) / META_FILE}: field 'config' does not describe a buildable model ({error})") from None
    weights = Path(path) / WEIGHTS_FILE
    if not weights.is_symlink() and not weights.exists():
        raise TscmError(f"checkpoint {path} has no {WEIGHTS_FILE}")
    stat_regular(weights, "weights file")  # a FIFO would block the reader forever
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as error:
        raise TscmError(f"{weights} could not be read (truncated or corrupt?): {error}") from error
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mis_shaped = [
        f"{name} {tuple(state[name].shape)} (expected {tuple(expected[name].shape)})"
        for name in expected
        if name in state and state[name].shape != expected[name].shape
    ]
    if missing or unexpected or mis_shaped:
        raise TscmError(
            f"{weights} does not fit preset {excerpt(meta['preset'])}: missing {missing[:10]}, "
            f"unexpected {unexpected[:10]}, mis-shaped {mis_shaped[:10]}"
        )
    if meta["descriptor_dim"] != model.descriptor_dim:
        raise TscmError(f"{Path(path) / META_FILE}: field 'descriptor_dim' is {excerpt(meta['descriptor_dim'])} but the model "
                        f"config gives {model.descriptor_dim}")
    model.load_state_dict(state, strict=True, assign=True)
    fingerprint = model_fingerprint(model)
    if fingerprint != meta["fingerprint"]:
        raise TscmError(
            f"{weights} has fingerprint {fingerprint}, but {META_FILE} records {meta['fingerprint']} "
            "(the files come from different saves)"
        )
    return model.eval(), meta

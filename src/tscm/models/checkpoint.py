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

import torch
from torch import nn

from tscm import __version__
from tscm.errors import TscmError
from tscm.fileio import atomic_path, write_json_atomic

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


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    config: Any,
    *,
    extra: dict[str, Any] | None = None,
    teacher_fingerprint: str | None = None,
) -> dict[str, Any]:
    """Write `model`'s weights and metadata into directory `path`; returns the metadata written."""
    from safetensors.torch import save_file

    from tscm.models.presets import config_to_dict

    if getattr(model, "config", config) != config:
        raise TscmError(f"save_checkpoint: the config given for {path} differs from the model's own config")
    directory = Path(path)
    if directory.exists() and not directory.is_dir():
        raise TscmError(f"checkpoint path {directory} exists and is not a directory")
    directory.mkdir(parents=True, exist_ok=True)
    config_dict = config_to_dict(config)
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
    json.dumps(meta)  # fail before writing anything if `extra` is not JSON-serialisable
    with atomic_path(directory / WEIGHTS_FILE) as tmp:
        save_file(state, str(tmp), metadata={"format": FORMAT_NAME, "fingerprint": meta["fingerprint"]})
    write_json_atomic(directory / META_FILE, meta)
    return meta


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The checkpoint's meta.json, checked for format and required fields."""
    file = Path(path) / META_FILE
    if not file.is_file():
        raise TscmError(f"{path} is not a tscm checkpoint directory (no {META_FILE})")
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise TscmError(f"{file} is not valid JSON: {error}") from error
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise TscmError(f"{file} is not tscm checkpoint metadata (field 'format' must be {FORMAT_NAME!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise TscmError(f"{file}: format_version {meta.get('format_version')!r} is not supported (expected {FORMAT_VERSION})")
    required = ("preset", "config", "descriptor_dim", "image_size", "mean", "std", "fingerprint")
    absent = [name for name in required if name not in meta]
    if absent:
        raise TscmError(f"{file} lacks the fields {absent}")
    return meta


def load_checkpoint(path: str | Path, expected_preset: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """(model in eval mode, metadata) from a checkpoint directory; never unpickles."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from tscm.models.presets import build_model, config_from_dict

    meta = read_metadata(path)
    if expected_preset is not None and meta["preset"] != expected_preset:
        raise TscmError(f"checkpoint {path} holds preset {meta['preset']!r}, expected {expected_preset!r}")
    config = config_from_dict(meta["config"])
    with torch.device("meta"):  # no random initialisation: every tensor comes from the file
        model = build_model(config)
    weights = Path(path) / WEIGHTS_FILE
    if not weights.is_file():
        raise TscmError(f"checkpoint {path} has no {WEIGHTS_FILE}")
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
            f"{weights} does not fit preset {meta['preset']!r}: missing {missing[:10]}, "
            f"unexpected {unexpected[:10]}, mis-shaped {mis_shaped[:10]}"
        )
    model.load_state_dict(state, strict=True, assign=True)
    fingerprint = model_fingerprint(model)
    if fingerprint != meta["fingerprint"]:
        raise TscmError(
            f"{weights} has fingerprint {fingerprint}, but {META_FILE} records {meta['fingerprint']} "
            "(the files come from different saves)"
        )
    return model.eval(), meta

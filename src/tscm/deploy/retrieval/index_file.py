"""The place index file: one safetensors file of arrays with JSON metadata, read with every check.

Arrays: ``faiss_index`` (faiss' ``serialize_index`` bytes, plain binary), ``ids``, optional ``xy``,
optional ``times`` (frame numbers or seconds, for sequences and loop closure), optional
``paths_utf8`` + ``paths_end`` and, for PCA, ``pca_mean`` + ``pca_projection``. The safetensors
header metadata holds key ``tscm_index`` with JSON: format version, backend, params, dim, count,
memory in bytes, model fingerprint and metadata, calibrated thresholds with the search space they
apply to, the unit of ``xy`` (``position_unit``: "m" for east/north metres, "frame" for (frame, 0);
absent in older files: metres), and a SHA-256 of every array so a damaged file is detected. The
JSON is read with depth and size bounds. Writes are atomic.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy
from safetensors import safe_open

from tscm.deploy.retrieval.index_backends import BACKENDS
from tscm.deploy.retrieval.pca import array_sha256
from tscm.errors import TscmError, excerpt
from tscm.fileio import atomic_path, check_header, parse_json, stat_regular

FORMAT_NAME = "tscm-place-index"
FORMAT_VERSION = 1
METADATA_KEY = "tscm_index"


def write_index_file(path: str | Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """Write `arrays` with `meta` (plus format name and version, and every array's SHA-256) atomically."""
    meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **meta,
            "sha256": {name: array_sha256(array) for name, array in arrays.items()}}
    with atomic_path(path) as tmp:
        safetensors.numpy.save_file(arrays, str(tmp), metadata={METADATA_KEY: json.dumps(meta)})


def finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and bool(np.isfinite(value))


def read_index_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON metadata of an index file (backend, params, count, memory, fingerprint...) without its arrays."""
    path = Path(path)
    if not path.is_symlink() and not path.exists():
        raise TscmError(f"{path}: no such index file")
    stat_regular(path, "index file")  # a FIFO, folder or link loop, named as such
    try:
        with safe_open(str(path), framework="np") as handle:
            header = handle.metadata() or {}
    except Exception as error:  # safetensors raises its own error types for damaged headers
        raise TscmError(f"{path}: not a readable index file ({error})") from None
    if METADATA_KEY not in header:
        raise TscmError(f"{path}: safetensors file without {METADATA_KEY!r} metadata; not a tscm place index")
    meta = parse_json(header[METADATA_KEY], f"{path}: index metadata")
    required = ("backend", "params", "dim", "count", "model_fingerprint", "model_meta", "sha256")
    check_header(meta, FORMAT_NAME, FORMAT_VERSION, str(path), required)
    for name in ("dim", "count"):
        value = meta[name]
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= (1 if name == "dim" else 0)):
            raise TscmError(f"{path}: metadata field {name!r} must be a non-negative integer, got {excerpt(value)}")
    if not isinstance(meta["params"], dict):
        raise TscmError(f"{path}: metadata field 'params' must be a JSON object, got {excerpt(meta['params'])}")
    if meta["backend"] not in BACKENDS:
        raise TscmError(f"{path}: unknown index backend {excerpt(meta['backend'])}")
    return meta


def read_index_arrays(path: str | Path, meta: dict[str, Any]) -> dict[str, np.ndarray]:
    try:
        with safe_open(str(path), framework="np") as handle:
            arrays = {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as error:  # truncated or damaged data sections
        raise TscmError(f"{path}: index arrays cannot be read ({error}); the file is corrupt") from None
    expected = meta["sha256"]
    if set(arrays) != set(expected):
        raise TscmError(f"{path}: index holds arrays {sorted(arrays)}, metadata lists {sorted(expected)}")
    for name, array in arrays.items():
        if array_sha256(array) != expected[name]:
            raise TscmError(f"{path}: array {name!r} does not match its checksum; the file is corrupt")
    return arrays

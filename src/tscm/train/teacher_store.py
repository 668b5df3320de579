"""The teacher's descriptors of a train set, kept on disk so that students distilled from one teacher compute
them once (the demo and the ablation train several from the same teacher; each used to describe every train
image again, half a minute of a Nordland run on one thread).

A file is named by a key over everything the numbers depend on: the teacher's weights (their fingerprint), its
input size and normalisation, the train images (path, size, modification time), the batch size, the device,
thread and process counts (they change floating-point sums, so a reused file gives exactly what the run would compute). A file that
is missing, unreadable or of another shape is recomputed, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from tscm.errors import TscmError
from tscm.evaluation.extract import InputSpec
from tscm.fileio import atomic_path

FOLDER = "teacher-descriptors"


def descriptor_key(fingerprint: str, spec: InputSpec, paths: Sequence[str | os.PathLike], batch_size: int,
                   compute: str) -> str:
    """`compute`: where the numbers are computed (device, threads, processes), as the caller names it."""
    digest = hashlib.sha256(json.dumps({"teacher": fingerprint, "image_size": list(spec.image_size),
                                        "mean": list(spec.mean), "std": list(spec.std), "batch_size": batch_size,
                                        "compute": compute}, sort_keys=True).encode())
    for path in paths:
        try:
            stat = os.stat(path)
            digest.update(f"{os.fspath(path)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        except OSError:  # an image that cannot be read fails later, where it is described
            digest.update(f"{os.fspath(path)}\0missing\n".encode())
    return digest.hexdigest()[:32]


def stored_path(folder: Path, key: str) -> Path:
    return folder / FOLDER / f"{key}.safetensors"


def load_descriptors(folder: Path, key: str, rows: int) -> np.ndarray | None:
    """The stored rows×D float32 descriptors for `key`, or None (absent, unreadable, or of another shape)."""
    path = stored_path(folder, key)
    try:
        descriptors = load_file(str(path)).get("descriptors")
    except (OSError, SafetensorError):
        return None
    if descriptors is None or descriptors.ndim != 2 or len(descriptors) != rows or descriptors.dtype != np.float32:
        return None
    return descriptors


def save_descriptors(folder: Path, key: str, descriptors: np.ndarray) -> None:
    """Store them for the next run; a folder that cannot be written only costs that run the recomputation."""
    try:
        with atomic_path(stored_path(folder, key)) as tmp:
            save_file({"descriptors": np.ascontiguousarray(descriptors, dtype=np.float32)}, str(tmp))
    except TscmError:
        pass

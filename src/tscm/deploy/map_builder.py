"""Build a place index (a map) from images of known places: describe them, index them, save one file.

`image_list` reads what to index (a folder, searched recursively, coordinates from @east@north@
names when every image has them; or a data-set file whose database images and positions are
indexed); `build_map` describes the images with a checkpoint or exported model and writes the
index file atomically (an existing file is replaced only once the new one is complete).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from tscm.errors import TscmError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def parse_params(items: list[str]) -> dict:
    """`NAME=VALUE` strings as a dict; values are JSON (numbers, true/false, null) or else plain text."""
    params = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name.strip():
            raise TscmError(f"--param {item!r}: expected NAME=VALUE, e.g. pca_dim=256")
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        params[name.strip()] = value
    return params


def image_list(source: str | Path) -> tuple[list[Path], np.ndarray | None, str]:
    """(paths, positions or None, description) of the images to index from a folder or data-set file."""
    path = Path(source)
    if not path.exists():
        raise TscmError(f"{path}: no such folder or file")
    if path.is_file():
        from tscm.data.formats import is_placeholder_path, load_placeset

        placeset = load_placeset(path)
        if any(is_placeholder_path(p) for p in placeset.db_paths):
            raise TscmError(f"{path}: the data set does not name its images, so they cannot be described")
        return list(placeset.db_paths), placeset.db_xy, f"{len(placeset.db_paths)} database images of {path}"
    from tscm.data.formats.utm_folder import parse_utm_name

    paths = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise TscmError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) found in the folder or below it")
    coordinates = []
    for image in paths:
        try:
            east, north, _ = parse_utm_name(image)
        except TscmError:
            return paths, None, f"{len(paths)} images in {path} (no coordinates: {image.name} has no @east@north@ name)"
        coordinates.append((east, north))
    return paths, np.asarray(coordinates), f"{len(paths)} images in {path} (coordinates from @utm@ names)"


@dataclass
class BuiltMap:
    index: Any  # PlaceIndex
    fingerprint: str
    preset: str | None
    kept: int
    skipped: list[tuple[str, str]]
    extract_s: float
    build_s: float
    has_positions: bool


def build_map(checkpoint: str | Path, images: str | Path, out: str | Path, *, backend: str = "auto",
              params: dict[str, Any] | None = None, runtime: str = "torch", batch_size: int = 16,
              threads: int | None = None, on_bad_image: str = "fail",
              report: Callable[[str], None] | None = None) -> BuiltMap:
    """Describe the images of known places with `checkpoint` and write the index file `out`.

    Ids are positions in the image list (folder order or manifest order), so skipped images leave gaps.
    """
    from tscm.deploy.index import PlaceIndex
    from tscm.deploy.onnx_export import calibration_subset
    from tscm.deploy.recognizer import PlaceRecognizer, index_model_meta
    from tscm.threads import limit_threads

    params = dict(params or {})
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise TscmError(f"--batch-size: expected a positive integer, got {batch_size!r}")
    if threads is not None and threads < 1:
        raise TscmError(f"--threads: expected a number of threads ≥ 1, got {threads}")
    if backend == "auto" and params:
        raise TscmError("--param needs a named --backend (auto chooses its own parameters)")
    if Path(out).is_dir():
        raise TscmError(f"--out {out}: is a folder; give the index file's name, e.g. {Path(out) / 'map.index'}")
    paths, xy, description = image_list(images)
    (report or print)(f"indexing {description}")
    calibration = calibration_subset(paths) if runtime == "onnx-int8" else []
    with limit_threads(torch=threads):
        recognizer = PlaceRecognizer.from_checkpoint(checkpoint, runtime=runtime, threads=threads,
                                                     calibration_paths=calibration, batch_size=batch_size)
        tic = time.perf_counter()
        described = recognizer.describe(paths, on_bad_image=on_bad_image, progress=True,
                                        report=report or (lambda line: print(line, file=sys.stderr)))
        extract_s = time.perf_counter() - tic
    if not described.kept:
        raise TscmError(f"{images}: none of the {len(paths)} images could be read")
    kept = described.kept
    tic = time.perf_counter()
    with limit_threads(blas=1):  # PCA fitting: see tscm.threads
        index = PlaceIndex.build(
            described.descriptors, kept, paths=[str(paths[i]) for i in kept], xy=None if xy is None else xy[kept],
            backend=backend, model_fingerprint=recognizer.fingerprint,
            model_meta=index_model_meta(recognizer.meta, checkpoint), **params)
    index.save(out)
    return BuiltMap(index, recognizer.fingerprint, recognizer.meta.get("preset"), len(kept), described.skipped,
                    extract_s, time.perf_counter() - tic, xy is not None)

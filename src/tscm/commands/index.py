"""`tscm index build`: describe the images of known places with a checkpoint and save them as a place index."""

from __future__ import annotations

import argparse

NAME = "index"
HELP = "build a place index (map) from images of known places: descriptors, ids, coordinates, model fingerprint"
# Mirrors of tscm.deploy.index.BACKENDS and tscm.deploy.onnx_export.RUNTIMES, so that building the CLI imports neither faiss nor torch.
BACKENDS = ("auto", "flat", "pca-flat", "ivfpq", "hnsw")
RUNTIMES = ("torch", "torch-bf16", "torch-int8", "onnx", "onnx-int8")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="index_action", metavar="ACTION", required=True)
    build = actions.add_parser("build", help="extract descriptors of images and write an index file",
                               description="Extract descriptors of images (batched) and write an index file.")
    build.add_argument("--checkpoint", required=True, help="checkpoint directory or exported .onnx model")
    build.add_argument("--images", required=True, metavar="DIR|CSV",
                       help="a folder of images (searched recursively; coordinates from @east@north@ names when "
                            "every image has them), or a data-set file (CSV manifest, Pittsburgh .mat) whose "
                            "database images and coordinates are indexed")
    build.add_argument("--out", required=True, metavar="MAP", help="index file to write (safetensors)")
    build.add_argument("--backend", choices=BACKENDS, default="auto",
                       help="search back-end (default: auto, chosen by database size)")
    build.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                       help="back-end parameter, e.g. pca_dim=256, nlist=256, ef_search=64 (repeatable)")
    build.add_argument("--runtime", choices=RUNTIMES, default="torch",
                       help="how the model runs (default: torch); onnx-int8 calibrates on the indexed images")
    build.add_argument("--batch-size", type=int, default=16, help="images per batch (default: 16)")
    build.add_argument("--threads", type=int, default=None, help="CPU threads for torch / ONNX Runtime")
    build.add_argument("--on-bad-image", choices=("fail", "skip"), default="fail",
                       help="an unreadable image stops the build (default) or is reported and left out")


def parse_params(items: list[str]) -> dict:
    """`NAME=VALUE` strings as a dict; values are JSON (numbers, true/false, null) or else plain text."""
    import json

    from tscm.errors import TscmError

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


def image_list(source: str):
    """(paths, xy or None, description) of the images to index from a folder or data-set file."""
    from pathlib import Path

    import numpy as np

    from tscm.errors import TscmError

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


def run(args: argparse.Namespace) -> int:
    import sys
    import time

    from tscm.commands.bench import numpy_blas_threads
    from tscm.errors import TscmError
    from tscm.deploy.onnx_export import calibration_subset
    from tscm.deploy.index import PlaceIndex
    from tscm.deploy.recognizer import PlaceRecognizer, index_model_meta

    if args.batch_size < 1:
        raise TscmError(f"--batch-size: expected a positive number, got {args.batch_size}")
    params = parse_params(args.param)
    if args.backend == "auto" and params:
        raise TscmError("--param needs a named --backend (auto chooses its own parameters)")
    if args.threads is not None:
        import torch

        if args.threads < 1:
            raise TscmError(f"--threads: expected a positive number, got {args.threads}")
        torch.set_num_threads(args.threads)
    paths, xy, description = image_list(args.images)
    print(f"indexing {description}")
    calibration = calibration_subset(paths) if args.runtime == "onnx-int8" else []
    recognizer = PlaceRecognizer.from_checkpoint(args.checkpoint, runtime=args.runtime, threads=args.threads,
                                                 calibration_paths=calibration, batch_size=args.batch_size)
    tic = time.perf_counter()
    described = recognizer.describe(paths, on_bad_image=args.on_bad_image, progress=True,
                                    report=lambda line: print(line, file=sys.stderr))
    extract_s = time.perf_counter() - tic
    if not described.kept:
        raise TscmError(f"{args.images}: none of the {len(paths)} images could be read")
    kept = described.kept
    # Ids are positions in the image list (folder order or manifest order), so skipped images leave gaps.
    tic = time.perf_counter()
    with numpy_blas_threads(1):  # PCA fitting: see numpy_blas_threads
        index = PlaceIndex.build(
            described.descriptors, kept, paths=[str(paths[i]) for i in kept], xy=None if xy is None else xy[kept],
            backend=args.backend, model_fingerprint=recognizer.fingerprint,
            model_meta=index_model_meta(recognizer.meta, args.checkpoint), **params)
    index.save(args.out)
    build_s = time.perf_counter() - tic
    print(f"wrote {args.out}: {index.count} places, {index.dim}-d descriptors, backend {index.backend} "
          f"{index.params}, {index.memory_bytes / 2**20:.1f} MB, coordinates: {'yes' if xy is not None else 'no'}")
    print(f"model {recognizer.meta.get('preset')} ({args.runtime}), fingerprint {recognizer.fingerprint}")
    print(f"extraction {extract_s:.1f} s ({1e3 * extract_s / len(kept):.1f} ms per image), index build {build_s:.1f} s")
    if described.skipped:
        print(f"skipped {len(described.skipped)} unreadable image(s):")
        for image, reason in described.skipped:
            print(f"  {image}: {reason}")
    return 0

"""Build a place index (a map) from images of known places: describe them, index them, save one file.

`image_list` reads what to index (a folder, searched recursively, coordinates from @east@north@
names when every image has them, files of other types counted and said; or a data-set file whose
database images and positions are indexed, of every split it holds unless one is named, frame
numbers recorded as frames); `build_map` describes the images with a checkpoint or exported model and writes the
index file atomically (an existing file is replaced only once the new one is complete).

Under `torchrun` (WORLD_SIZE > 1) the build is sharded: every process lists the same images
(from a filesystem they share), describes a contiguous share of whole batches (batch boundaries
as in one process, so every image sees the same batch and the descriptors are the same bits for
the same batch size and thread count), the shares are gathered on rank 0 over torch.distributed
(gloo, fixed-size tensors, no pickle) in image order, and rank 0 alone builds the index and writes
the file: the same file one process writes. Errors on any rank stop every rank with its message.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch.distributed as dist

from tscm.data.formats import ALL_SPLITS, is_placeholder_path, load_placeset
from tscm.data.formats.bag_frames import is_bag_path
from tscm.data.formats.utm_folder import parse_utm_name
from tscm.deploy.retrieval.index import PlaceIndex
from tscm.deploy.retrieval.recognizer import PlaceRecognizer, index_model_meta
from tscm.distributed import ProcessGroup
from tscm.errors import TscmError
from tscm.fileio import file_kind
from tscm.inference.onnx_export import calibration_subset
from tscm.models.checkpoint import read_metadata
from tscm.threads import limit_threads
from tscm.train.runtime import start_runtime, stop_runtime

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


def folder_images(folder: Path) -> tuple[list[Path], str]:
    """The images below `folder` (recursive, sorted; IMAGE_SUFFIXES) and a note counting the other files
    left out by type ("" when none), so that a .webp or .gif is never dropped without a word."""
    paths, others = [], Counter()
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            if not path.is_dir():  # a FIFO, socket or device, or a link that leads nowhere: said, never opened
                others[_not_a_file(path)] += 1
            continue
        suffix = path.suffix.lower()
        if suffix in IMAGE_SUFFIXES:
            paths.append(path)
        else:
            others[suffix or "(no suffix)"] += 1
    if not paths:
        found = f"; it holds {sum(others.values())} other file(s): {_counted(others)}" if others else ""
        raise TscmError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) found in the folder or below it{found}")
    note = (f"; left out {sum(others.values())} file(s) of other types ({_counted(others)}): only "
            f"{', '.join(IMAGE_SUFFIXES)} are read") if others else ""
    return paths, note


def _not_a_file(path: Path) -> str:
    """What a folder entry that is neither a regular file nor a folder is, in a few words."""
    try:
        return file_kind(os.stat(path).st_mode).removeprefix("a ")
    except OSError:
        return "link that leads nowhere"


def check_data_source(path: Path) -> None:
    """Refuse a data source that is neither a folder nor a regular file (a FIFO would read as an empty
    folder) or that cannot be resolved, naming what it is."""
    try:
        info = os.stat(path)
    except OSError as error:
        reason = "no such folder or file" if isinstance(error, FileNotFoundError) else (error.strerror or str(error))
        raise TscmError(f"{path}: {reason}") from None
    if not (stat.S_ISDIR(info.st_mode) or stat.S_ISREG(info.st_mode)):
        raise TscmError(f"{path}: is {file_kind(info.st_mode)}; give a folder of images or a data-set file")


def _counted(counts) -> str:
    return ", ".join(f"{count} {suffix}" for suffix, count in sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def data_set_rows(path: Path, role: str = "database", split: str | None = None, bag=None):
    """(PlaceSet, its `role` images) of a data-set file or ROS bag: the rows of `split`, or by default every
    split the file holds (the PlaceSet's split then names them, e.g. "train+test"); `bag` (a
    tscm.data.formats.BagSelection) chooses a bag's topics and frames."""
    placeset = load_placeset(path, split=split or ALL_SPLITS, bag=bag)
    paths = list(placeset.db_paths if role == "database" else placeset.query_paths)
    if not paths:
        raise TscmError(f"{path}: the data set lists no {role} images")
    if any(is_placeholder_path(p) for p in paths):
        raise TscmError(f"{path}: the data set does not name its images, so they cannot be described")
    return placeset, paths


def image_list(source: str | Path, split: str | None = None,
               bag=None) -> tuple[list[Path], np.ndarray | None, str, str]:
    """(paths, positions or None, description, position unit "m" or "frame") of the images to index from a
    folder, a data-set file (its database rows of `split`, by default of every split it holds) or a ROS
    bag (`bag`: a tscm.data.formats.BagSelection choosing its topics and frames)."""
    path = Path(source)
    check_data_source(path)
    if path.is_file() or is_bag_path(path):
        placeset, paths = data_set_rows(path, "database", split, bag)
        return (paths, placeset.db_xy, f"{len(paths)} database images of {path} (split {placeset.split})",
                "frame" if placeset.unit == "frame" else "m")
    if split is not None:
        raise TscmError(f"--split {split}: a folder of images has no splits; give a data-set file (CSV, .mat)")

    paths, note = folder_images(path)
    coordinates = []
    for image in paths:
        try:
            east, north, _ = parse_utm_name(image)
        except TscmError:
            return paths, None, f"{len(paths)} images in {path} (no coordinates: {image.name} has no @east@north@ name){note}", "m"
        coordinates.append((east, north))
    return paths, np.asarray(coordinates), f"{len(paths)} images in {path} (coordinates from @utm@ names){note}", "m"


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
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def build_map(checkpoint: str | Path, images: str | Path, out: str | Path, *, backend: str = "auto",
              params: dict[str, Any] | None = None, runtime: str = "torch", batch_size: int = 16,
              threads: int | None = None, on_bad_image: str = "fail", split: str | None = None,
              report: Callable[[str], None] | None = None, bag=None) -> BuiltMap:
    """Describe the images of known places with `checkpoint` and write the index file `out`.

    Ids are positions in the image list (folder order or manifest order), so skipped images leave gaps.
    `bag` chooses the topics and frames when `images` is a ROS bag.
    `out` is checked against the inputs (images, data-set file, checkpoint) before any image is described.
    Under torchrun the work is sharded over the processes (module doc); only rank 0 writes `out`, and
    the other ranks return a BuiltMap with `index` None.
    """
    params = dict(params or {})
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise TscmError(f"--batch-size: expected a positive integer, got {batch_size!r}")
    if threads is not None and threads < 1:
        raise TscmError(f"--threads: expected a number of threads ≥ 1, got {threads}")
    if backend == "auto" and params:
        raise TscmError("--param needs a named --backend (auto chooses its own parameters)")
    if Path(out).is_dir():
        raise TscmError(f"--out {out}: is a folder; give the index file's name, e.g. {Path(out) / 'map.index'}")
    _check_backend_params(checkpoint, backend, params)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return _build_sharded(checkpoint, images, out, backend=backend, params=params, runtime=runtime,
                              batch_size=batch_size, threads=threads, on_bad_image=on_bad_image, report=report,
                              split=split, bag=bag)
    paths, xy, description, unit = image_list(images, split, bag)
    _check_out(out, images, paths, checkpoint)
    (report or print)(f"indexing {description}")
    recognizer, described, extract_s = _describe(checkpoint, paths, runtime=runtime, threads=threads,
                                                 batch_size=batch_size, on_bad_image=on_bad_image, report=report,
                                                 progress=True)
    if not described.kept:
        raise TscmError(f"{images}: none of the {len(paths)} images could be read")
    return _write_index(checkpoint, recognizer.fingerprint, recognizer.meta, described.descriptors, described.kept,
                        paths, xy, out, backend, params, described.skipped, extract_s, unit=unit)


def _check_out(out, images, paths: list[Path], checkpoint) -> None:
    """--out is checked before any image is described: not a folder, not an input, writable."""
    from tscm.fileio import check_outputs

    inputs = {"an indexed image": paths, "the --checkpoint input": [Path(checkpoint)]}
    if Path(images).is_file():
        inputs["the --images data-set file or bag"] = [Path(images)]
    check_outputs({"--out": out}, inputs)


def _check_backend_params(checkpoint: str | Path, backend: str, params: dict[str, Any]) -> None:
    """Refuse bad --param values before any image is described (the checks PlaceIndex.create makes)."""
    if backend == "auto" or not Path(checkpoint).is_dir():
        return  # auto picks its own parameters; an ONNX file's dimension is known once it is loaded
    PlaceIndex.create(backend, int(read_metadata(checkpoint)["descriptor_dim"]), **params)  # an empty index: cheap


def _describe(checkpoint, paths, *, runtime, threads, batch_size, on_bad_image, report, progress,
              calibration_paths=None):
    """(recognizer, Described, seconds) for `paths` with the model of `checkpoint`."""
    if calibration_paths is None:
        calibration_paths = calibration_subset(paths) if runtime == "onnx-int8" else []
    with limit_threads(torch=threads):
        recognizer = PlaceRecognizer.from_checkpoint(checkpoint, runtime=runtime, threads=threads,
                                                     calibration_paths=calibration_paths, batch_size=batch_size)
        tic = time.perf_counter()
        described = recognizer.describe(paths, on_bad_image=on_bad_image, progress=progress,
                                        report=report or (lambda line: print(line, file=sys.stderr)))
        extract_s = time.perf_counter() - tic
    return recognizer, described, extract_s


def _write_index(checkpoint, fingerprint: str, meta: dict[str, Any], descriptors: np.ndarray, kept: list[int],
                 paths: list[Path], xy: np.ndarray | None, out, backend: str, params: dict[str, Any],
                 skipped: list[tuple[str, str]], extract_s: float, rank: int = 0, world_size: int = 1,
                 unit: str = "m") -> BuiltMap:
    tic = time.perf_counter()
    with limit_threads(blas=1):  # PCA fitting: see tscm.threads
        index = PlaceIndex.build(
            descriptors, kept, paths=[str(paths[i]) for i in kept], xy=None if xy is None else xy[kept],
            backend=backend, model_fingerprint=fingerprint, model_meta=index_model_meta(meta, checkpoint), **params)
    index.position_unit = unit
    index.save(out)
    return BuiltMap(index, fingerprint, meta.get("preset"), len(kept), skipped, extract_s,
                    time.perf_counter() - tic, xy is not None, rank, world_size)


def batch_shard(count: int, batch_size: int, rank: int, world_size: int) -> range:
    """Rank `rank`'s contiguous share of `count` items, in whole batches of `batch_size` (the last may be short)."""
    batches = -(-count // batch_size)
    bounds = np.linspace(0, batches, world_size + 1).round().astype(int)
    return range(min(int(bounds[rank]) * batch_size, count), min(int(bounds[rank + 1]) * batch_size, count))


def _build_sharded(checkpoint, images, out, *, backend, params, runtime, batch_size, threads, on_bad_image,
                   report, split=None, bag=None) -> BuiltMap:
    """build_map under torchrun: each rank describes its share of whole batches, rank 0 merges and writes."""
    owned = not dist.is_initialized()
    runtime_info = start_runtime("cpu", "off")  # descriptors are made on the CPU; gloo carries the shares
    group = ProcessGroup(runtime_info.rank, runtime_info.world_size)
    rank, world = group.rank, group.world_size
    say = report or print
    try:
        error: BaseException | None = None
        try:
            paths, xy, description, unit = image_list(images, split, bag)
            if rank == 0:
                _check_out(out, images, paths, checkpoint)
        except Exception as caught:  # every rank lists the same images, so they fail alike; still, agree
            error = caught
        group.check(error)
        share = batch_shard(len(paths), batch_size, rank, world)
        if rank == 0:
            say(f"indexing {description}, sharded over {world} processes ({len(share)} images on rank 0)")
        calibration = calibration_subset(paths) if runtime == "onnx-int8" else []  # every rank: the same int8 model
        local = mask = recognizer = None
        skipped: list[tuple[str, str]] = []
        extract_s = 0.0
        try:
            recognizer, described, extract_s = _describe(
                checkpoint, [paths[i] for i in share], runtime=runtime, threads=threads, batch_size=batch_size,
                on_bad_image=on_bad_image, report=report, progress=rank == 0, calibration_paths=calibration)
            local = np.zeros((len(share), recognizer.dim), dtype=np.float32)
            mask = np.zeros((len(share), 1), dtype=np.float32)
            if described.kept:
                local[described.kept] = described.descriptors
                mask[described.kept] = 1.0
            skipped = described.skipped
        except Exception as caught:
            error = caught
        group.check(error)
        sizes = [len(batch_shard(len(paths), batch_size, r, world)) for r in range(world)]
        descriptors = group.gather_rows_to_main(local, sizes)
        gathered_mask = group.gather_rows_to_main(mask, sizes)
        skipped_all = [tuple(item) for part in group.gather_bytes(json.dumps(skipped).encode("utf-8"))
                       for item in json.loads(part.decode("utf-8"))]
        fingerprints = {f.decode("utf-8") for f in group.gather_bytes(recognizer.fingerprint.encode("utf-8"))}
        extract_s = group.max(extract_s)
        built = None
        if rank == 0:
            try:
                if len(fingerprints) != 1:
                    raise TscmError(f"the ranks loaded different models ({', '.join(sorted(fingerprints))}); "
                                    f"{checkpoint} must be the same file on every node")
                kept = np.flatnonzero(gathered_mask[:, 0] > 0.5).tolist()
                if not kept:
                    raise TscmError(f"{images}: none of the {len(paths)} images could be read")
                meta = recognizer.meta
                built = _write_index(checkpoint, meta["fingerprint"], meta, descriptors[kept], kept, paths, xy, out,
                                     backend, params, skipped_all, extract_s, rank, world, unit=unit)
            except Exception as caught:
                error = caught
        group.check(error)
        if built is None:
            meta = recognizer.meta
            built = BuiltMap(None, meta["fingerprint"], meta.get("preset"), int(mask.sum()), skipped_all,
                             extract_s, 0.0, xy is not None, rank, world)
        return built
    finally:
        if owned:
            stop_runtime(runtime_info)

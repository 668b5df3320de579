"""Global descriptors in the files other tools read: hloc's HDF5 and pairs files, and plain .npy arrays.

`export_descriptors(checkpoint, images, out)` describes an image set (a folder, searched
recursively in sorted order, or a data-set file's database images) and writes:

- `out` (HDF5, hloc's global-feature layout): one group per image, named by the image's path
  relative to the image root with '/' separators (nested groups, as h5py makes them for such
  names), holding dataset `global_descriptor` (D float32, L2-normalised) and `image_size`
  ((width, height) int64 of the image as read). The root's attributes record the producer
  (`tscm_format` = "tscm-global-descriptors", `tscm_format_version` = 1, `model_fingerprint`,
  `preset`, `role`, `descriptor_dim`, `image_root`); hloc ignores them. With queries, their
  groups go into the same file (hloc's `pairs_from_retrieval` then selects them by list or prefix).
- `<out without suffix>.database.npy` (N×D float32, rows in image order) and `.database.txt` (the
  N names, one per line), plus `.queries.npy` / `.queries.txt` when a separate query set is given:
  the arrays VPR-methods-evaluation keeps as database and queries descriptors.
- with `pairs`: hloc's `pairs-from-retrieval` text file, one `query_name db_name` line per pair
  (space-separated, the query's top-k database images by exact L2 search, nearest first; no header).

The image root (names are relative to it) is `root`, else the images' folder (a data-set file's
folder), else, with a separate query set, the deepest folder holding both sets. Without
`queries` (or with the same folder), pairs are retrieval within the one ordered sequence: an
image is never paired with itself, and `exclude_recent=N` keeps only loop-closure candidates, the
frames older than the N that came just before the query (frame i is paired with frames j < i − N,
as `PlaceRecognizer.observe` searches).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from tscm.deploy.retrieval.map_builder import check_data_source, data_set_rows, folder_images
from tscm.deploy.retrieval.recognizer import PlaceRecognizer
from tscm.errors import TscmError, excerpt
from tscm.fileio import atomic_group, atomic_path, check_outputs, write_text_atomic
from tscm.inference.onnx_export import calibration_subset
from tscm.threads import limit_threads

H5_FORMAT = "tscm-global-descriptors"
H5_FORMAT_VERSION = 1
DESCRIPTOR_KEY = "global_descriptor"
SIZE_KEY = "image_size"
SEARCH_CELLS = 1 << 25  # query rows × database rows per block of the exact search (128 MiB of float32)


def require_h5py():
    try:
        import h5py
    except ImportError:
        raise TscmError("writing hloc's HDF5 files needs h5py, which is not installed: pip install 'tscm[hloc]' "
                        "(or pip install h5py)") from None
    return h5py


@dataclass
class ImageSet:
    """Images to describe, in order, with the folder their names are relative to by default."""

    source: Path
    paths: list[Path]
    root: Path  # the folder, or a data-set file's folder
    what: str


def list_images(source: str | Path, role: str = "database", split: str | None = None) -> ImageSet:
    """The images of a folder (recursive, sorted; other files counted in `what`) or a data-set file's
    `role` images ("database" or "query") of `split`, by default of every split the file holds."""
    path = Path(source)
    check_data_source(path)
    if path.is_dir():
        if split is not None:
            raise TscmError(f"--split {split}: {path} is a folder of images, which has no splits; give a data-set file")
        paths, note = folder_images(path)
        return ImageSet(path, paths, path, f"{len(paths)} images in {path}{note}")
    placeset, paths = data_set_rows(path, role, split)
    return ImageSet(path, [Path(p) for p in paths], path.parent,
                    f"{len(paths)} {role} images of {path} (split {placeset.split})")


def image_names(paths: Sequence[Path], root: Path, *, for_pairs: bool = False) -> list[str]:
    """hloc's names: each path relative to `root`, '/'-separated; an image outside `root` is an error."""
    base = os.path.abspath(root)
    names = []
    for path in paths:
        relative = os.path.relpath(os.path.abspath(path), base)
        if relative == os.curdir or relative.split(os.sep)[0] == os.pardir or os.path.isabs(relative):
            raise TscmError(f"{path}: lies outside the image root {root}; pass --root with a folder holding every image")
        name = relative.replace(os.sep, "/")
        if len(name.splitlines()) != 1 or name != name.splitlines()[0]:
            # the folder, not the path: the path itself would break the one-line message
            raise TscmError(f"{Path(path).parent}: the image name {excerpt(name)} holds a line break, which a names "
                            "file (one name per line) cannot carry; rename the image")
        if for_pairs and any(c.isspace() for c in name):
            raise TscmError(f"{path}: its name {excerpt(name)} holds white space, which a pairs file cannot carry "
                            "(hloc splits each line on white space); rename the image")
        names.append(name)
    if len(set(names)) != len(names):
        repeated = sorted({n for n in names if names.count(n) > 1})[:5]
        raise TscmError(f"image names repeat within one set: {', '.join(repeated)}")
    return names


def retrieval_pairs(queries: np.ndarray, database: np.ndarray, k: int, *, same_sequence: bool = False,
                    query_frames: np.ndarray | None = None, db_frames: np.ndarray | None = None,
                    exclude_recent: int | None = None) -> list[tuple[int, int]]:
    """(query row, database row) pairs: each query's `k` nearest database rows by exact squared L2, nearest first.

    `same_sequence`: queries and database are one ordered sequence with frame numbers
    `query_frames` / `db_frames` (default: row numbers); a frame is never its own pair, and with
    `exclude_recent=N` only frames j < i − N are candidates for frame i. Ties go to the lower row.
    """
    if not (isinstance(k, int) and k >= 1):
        raise TscmError(f"-k: expected a positive number of pairs per query, got {k!r}")
    if exclude_recent is not None and not same_sequence:
        raise TscmError("--exclude-recent applies when the queries and the database are the same ordered "
                        "sequence (leave out --queries, or give the same folder)")
    if exclude_recent is not None and not (isinstance(exclude_recent, int) and exclude_recent >= 0):
        raise TscmError(f"--exclude-recent: expected a number of frames ≥ 0, got {exclude_recent!r}")
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    database = np.ascontiguousarray(database, dtype=np.float32)
    num_db = len(database)
    if num_db == 0 or len(queries) == 0:
        return []
    q_frames = np.arange(len(queries)) if query_frames is None else np.asarray(query_frames)
    d_frames = np.arange(num_db) if db_frames is None else np.asarray(db_frames)
    if exclude_recent is not None:
        # capped just past the frames' span (the same pairs), so a huge N cannot overflow int64
        span = int(max(q_frames.max(), d_frames.max())) - int(min(q_frames.min(), d_frames.min())) + 1
        recent = min(exclude_recent, span)
    db_norms = np.einsum("ij,ij->i", database, database, dtype=np.float64)
    take = min(k, num_db)
    pairs: list[tuple[int, int]] = []
    block = max(1, SEARCH_CELLS // num_db)
    for start in range(0, len(queries), block):
        chunk = queries[start:start + block]
        q_norms = np.einsum("ij,ij->i", chunk, chunk, dtype=np.float64)
        distances = q_norms[:, None] + db_norms[None, :] - 2.0 * (chunk @ database.T).astype(np.float64)
        if same_sequence:
            frames = q_frames[start:start + block, None]
            if exclude_recent is None:
                distances[frames == d_frames[None, :]] = np.inf
            else:
                distances[d_frames[None, :] >= frames - recent] = np.inf
        if take < num_db:
            partition = np.argpartition(distances, take - 1, axis=1)[:, :take]
        for row in range(len(chunk)):
            values = distances[row]
            if take < num_db:
                # every row strictly nearer than the k-th distance, then the lowest rows at that distance
                boundary = values[partition[row]].max()
                chosen = np.flatnonzero(values < boundary)
                if np.isfinite(boundary):
                    chosen = np.concatenate([chosen, np.flatnonzero(values == boundary)[: take - len(chosen)]])
            else:
                chosen = np.flatnonzero(np.isfinite(values))
            kept = chosen[np.lexsort((chosen, values[chosen]))].tolist()
            pairs += [(start + row, column) for column in kept]
    return pairs


def read_hloc_h5(path: str | Path, key: str = DESCRIPTOR_KEY) -> dict[str, np.ndarray]:
    """{name: descriptor} of an hloc-layout HDF5 file, found as hloc does (every dataset's parent group)."""
    h5py = require_h5py()
    names: list[str] = []
    with h5py.File(str(path), "r") as handle:
        handle.visititems(lambda _, obj: names.append(obj.parent.name.strip("/")) if isinstance(obj, h5py.Dataset) else None)
        return {name: handle[name][key][()] for name in dict.fromkeys(names)}


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) of the image as described: upright by its EXIF orientation, as the loader turns it."""
    from PIL import Image

    with Image.open(path) as image:
        width, height = int(image.size[0]), int(image.size[1])
        try:
            turned = image.getexif().get(0x0112, 1) in (5, 6, 7, 8)  # the orientations that swap the sides
        except Exception:  # noqa: BLE001 - damaged EXIF: the loader keeps the pixels as stored too
            turned = False
    return (height, width) if turned else (width, height)


def write_hloc_h5(path: str | Path, names: Sequence[str], descriptors: np.ndarray, sizes: Sequence[tuple[int, int]],
                  attributes: dict[str, Any]) -> None:
    """One group per name holding `global_descriptor` and `image_size`, written atomically."""
    h5py = require_h5py()
    with atomic_path(path) as tmp:
        with h5py.File(str(tmp), "w") as handle:
            for name, value in attributes.items():
                handle.attrs[name] = value
            for name, descriptor, size in zip(names, descriptors, sizes):
                if name in handle:
                    continue  # the same image in both sets: one group
                group = handle.create_group(name)
                group.create_dataset(DESCRIPTOR_KEY, data=np.asarray(descriptor, dtype=np.float32))
                group.create_dataset(SIZE_KEY, data=np.asarray(size, dtype=np.int64))


def write_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, np.ascontiguousarray(array, dtype=np.float32))


def sidecar(out: Path, role: str, suffix: str) -> Path:
    """`<out without its suffix>.<role><suffix>`, e.g. feats.h5 → feats.database.npy."""
    return out.with_suffix("").with_name(out.with_suffix("").name + f".{role}{suffix}")


@dataclass(frozen=True)
class RetrievalPairs:
    """hloc's pairs file: where to write it (None: no pairs file), the `k` nearest database images per query,
    and with `exclude_recent=N` (one ordered sequence) only frames older than the N before each query."""

    path: str | Path | None = None
    k: int = 20
    exclude_recent: int | None = None

    def check(self) -> None:
        if not (isinstance(self.k, int) and self.k >= 1):
            raise TscmError(f"-k: expected a positive number of pairs per query, got {self.k!r}")
        if self.exclude_recent is not None and self.path is None:
            raise TscmError("--exclude-recent shapes the pairs file; give --pairs PAIRS.txt too")
        if self.exclude_recent is not None and not (isinstance(self.exclude_recent, int) and self.exclude_recent >= 0):
            raise TscmError(f"--exclude-recent: expected a number of frames ≥ 0, got {excerpt(self.exclude_recent)}")


@dataclass(frozen=True)
class ExtractionOptions:
    """How the model describes the images: its runtime, images per batch, CPU threads (None: the runtime's
    default), and whether an unreadable image stops the export ("fail") or is left out ("skip")."""

    runtime: str = "torch"
    batch_size: int = 16
    threads: int | None = None
    on_bad_image: str = "fail"

    def check(self) -> None:
        if not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            raise TscmError(f"--batch-size: expected a positive integer, got {self.batch_size!r}")
        if self.threads is not None and self.threads < 1:
            raise TscmError(f"--threads: expected a number of threads ≥ 1, got {self.threads}")


@dataclass
class Exported:
    h5: Path
    root: Path
    num_db: int
    num_queries: int
    dim: int
    fingerprint: str
    arrays: list[Path]
    names: list[Path]
    pairs: Path | None = None
    num_pairs: int = 0
    same_sequence: bool = True
    skipped: list[tuple[str, str]] = field(default_factory=list)
    extract_s: float = 0.0


def _described(recognizer, images: ImageSet, on_bad_image: str, report) -> tuple[np.ndarray, np.ndarray, list]:
    described = recognizer.describe(images.paths, on_bad_image=on_bad_image, progress=True, report=report)
    if not described.kept:
        raise TscmError(f"{images.source}: none of the {len(images.paths)} images could be read")
    return described.descriptors, np.asarray(described.kept, dtype=np.int64), described.skipped


def _image_root(root: str | Path | None, database: ImageSet, query_set: ImageSet | None) -> Path:
    """The folder image names are relative to: `root`, else the images' folder, else the deepest one holding both sets."""
    if root is not None:
        base = Path(root)
        if not base.is_dir():
            raise TscmError(f"--root {root}: no such folder")
        return base
    if query_set is None:
        return database.root
    return Path(os.path.commonpath([os.path.abspath(database.root), os.path.abspath(query_set.root)]))


def export_descriptors(checkpoint: str | Path, images: str | Path, out: str | Path, *, queries: str | Path | None = None,
                       split: str | None = None, root: str | Path | None = None,
                       pairs: RetrievalPairs = RetrievalPairs(), extraction: ExtractionOptions = ExtractionOptions(),
                       report: Callable[[str], None] | None = None) -> Exported:
    """Describe `images` (and `queries`) with `checkpoint` and write the files of the module doc.

    Data-set files give their rows of `split` (default: every split they hold). Every output path is
    checked against the inputs before any image is described, and the files are written together:
    a failure keeps every previous file."""
    require_h5py()
    out = Path(out)
    if out.is_dir():
        raise TscmError(f"--out {out}: is a folder; give the HDF5 file's name, e.g. {out / 'global-feats.h5'}")
    extraction.check()
    pairs.check()
    say = report or (lambda line: print(line, file=sys.stderr))
    database = list_images(images, "database", split)
    same = queries is None or (Path(queries).is_dir() and os.path.abspath(queries) == os.path.abspath(images))
    query_set = None if same else list_images(queries, "query", split if Path(queries).is_file() else None)
    if pairs.exclude_recent is not None and not same:
        raise TscmError("--exclude-recent applies when the queries and the database are the same ordered sequence "
                        "(leave out --queries, or give the same folder)")
    base = _image_root(root, database, query_set)
    for_pairs = pairs.path is not None
    db_names_all = image_names(database.paths, base, for_pairs=for_pairs)
    q_names_all = image_names(query_set.paths, base, for_pairs=for_pairs) if query_set else None
    outputs = {"--out": out, "--out (database arrays)": sidecar(out, "database", ".npy"),
               "--out (database names)": sidecar(out, "database", ".txt"), "--pairs": pairs.path}
    if query_set is not None:
        outputs.update({"--out (query arrays)": sidecar(out, "queries", ".npy"),
                        "--out (query names)": sidecar(out, "queries", ".txt")})
    inputs = {"a database image": database.paths, "a query image": query_set.paths if query_set else [],
              "the --checkpoint input": [Path(checkpoint)],
              "the --images data-set file": [database.source] if database.source.is_file() else [],
              "the --queries data-set file": [query_set.source] if query_set and query_set.source.is_file() else []}
    check_outputs(outputs, inputs)
    say(f"describing {database.what}" + (f" and {query_set.what}" if query_set else "") + f"; names relative to {base}")
    calibration = calibration_subset(database.paths) if extraction.runtime == "onnx-int8" else []
    with limit_threads(torch=extraction.threads):
        recognizer = PlaceRecognizer.from_checkpoint(checkpoint, runtime=extraction.runtime, threads=extraction.threads,
                                                     calibration_paths=calibration, batch_size=extraction.batch_size)
        tic = time.perf_counter()
        db_desc, db_kept, skipped = _described(recognizer, database, extraction.on_bad_image, say)
        if query_set is not None:
            q_desc, q_kept, q_skipped = _described(recognizer, query_set, extraction.on_bad_image, say)
            skipped = skipped + q_skipped
        extract_s = time.perf_counter() - tic
    meta = recognizer.meta
    db_names = [db_names_all[i] for i in db_kept]
    names = list(db_names)
    descriptors = [db_desc]
    sizes = [_image_size(database.paths[i]) for i in db_kept]
    if query_set is not None:
        q_names = [q_names_all[i] for i in q_kept]
        names += q_names
        descriptors.append(q_desc)
        sizes += [_image_size(query_set.paths[i]) for i in q_kept]
    attributes = {"tscm_format": H5_FORMAT, "tscm_format_version": H5_FORMAT_VERSION,
                  "model_fingerprint": meta["fingerprint"], "preset": str(meta.get("preset")),
                  "role": str(meta.get("role")), "descriptor_dim": int(meta["descriptor_dim"]),
                  "image_root": os.path.abspath(base)}
    arrays, name_files = [sidecar(out, "database", ".npy")], [sidecar(out, "database", ".txt")]
    if query_set is not None:
        arrays.append(sidecar(out, "queries", ".npy"))
        name_files.append(sidecar(out, "queries", ".txt"))
    lines = None
    if pairs.path is not None:  # computed before anything is written
        if query_set is None:
            found = retrieval_pairs(db_desc, db_desc, pairs.k, same_sequence=True, query_frames=db_kept, db_frames=db_kept,
                                    exclude_recent=pairs.exclude_recent)
            lines = [f"{db_names[q]} {db_names[d]}" for q, d in found]
        else:
            found = retrieval_pairs(q_desc, db_desc, pairs.k)
            lines = [f"{q_names[q]} {db_names[d]}" for q, d in found]
    with atomic_group():  # every file, or none (each keeps its previous content)
        write_hloc_h5(out, names, np.concatenate(descriptors), sizes, attributes)
        write_npy(arrays[0], db_desc)
        write_text_atomic(name_files[0], "".join(f"{name}\n" for name in db_names))
        if query_set is not None:
            write_npy(arrays[1], q_desc)
            write_text_atomic(name_files[1], "".join(f"{name}\n" for name in q_names))
        if lines is not None:
            write_text_atomic(pairs.path, "".join(f"{line}\n" for line in lines))
    exported = Exported(out, base, len(db_names), len(db_names) if query_set is None else len(q_names),
                        int(db_desc.shape[1]), meta["fingerprint"], arrays, name_files, same_sequence=same,
                        skipped=skipped, extract_s=extract_s)
    if lines is not None:
        exported.pairs, exported.num_pairs = Path(pairs.path), len(lines)
    return exported

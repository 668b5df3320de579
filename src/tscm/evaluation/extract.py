"""The one path from images to descriptors: training caches, evaluation, the index and the recognizer use it.

Images (paths, PIL images or uint8 arrays) are read by `tscm.data.images`, transformed as the
model's metadata says, batched (optionally in worker processes) and run through a model mapping
B×3×H×W to B×D. An unreadable image either stops the run with a message naming it, or is skipped
and reported, never a worker's traceback dump.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from tscm.data.formats import is_placeholder_path
from tscm.data.images import DecodedImages, as_rgb, check_input_spec, eval_transform
from tscm.data.places import PlaceSet
from tscm.errors import TscmError
from tscm.inference.choices import BAD_IMAGE_POLICIES


@dataclass(frozen=True)
class InputSpec:
    """How a model wants its images: (H, W) and the normalisation's mean and std."""

    image_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def of(cls, source: Any) -> InputSpec:
        """From checkpoint metadata (a mapping) or a model config (an object with those attributes)."""
        get = source.get if isinstance(source, Mapping) else lambda name: getattr(source, name)

        size, mean, std = get("image_size"), get("mean"), get("std")
        check_input_spec(size, mean, std)
        return cls(tuple(int(v) for v in size), tuple(float(v) for v in mean), tuple(float(v) for v in std))


@dataclass
class Described:
    """Descriptors of the images that could be read, and what became of the others."""

    descriptors: np.ndarray  # K×D float32
    kept: list[int]  # positions in the input of the K described images
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (image, reason) of unreadable ones


class _ImageItems:
    """Item i: (i, model input tensor or None, why not) — errors travel as text, so worker processes
    never dump a traceback."""

    def __init__(self, images: Sequence[Any], spec: InputSpec) -> None:
        self.images = images
        self.spec = spec

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, position: int):
        try:
            rgb = as_rgb(self.images[position])
        except TscmError as error:
            return position, None, str(error)
        return position, eval_transform(rgb, self.spec.image_size, self.spec.mean, self.spec.std), None


def _collate(items):
    return items


def describe_images(
    model,
    images: Sequence[Any],
    spec: InputSpec,
    *,
    batch_size: int = 32,
    device: str = "cpu",
    num_workers: int = 0,
    on_bad_image: str = "fail",
    progress: bool = False,
    report: Callable[[str], None] | None = None,
    bad_image_hint: str = " (skip unreadable images with --on-bad-image skip)",
) -> Described:
    """Descriptors (float32, in input order) of `images` from `model` (already on `device`).

    The model runs in eval mode without gradients; its train/eval mode is restored afterwards.
    `on_bad_image="skip"` leaves unreadable images out (listed in `skipped`, each reported once
    through `report`); "fail" raises TscmError naming the image, followed by `bad_image_hint` (the
    advice of the commands that have --on-bad-image; "" where there is no such option).
    """
    from tqdm import tqdm

    if on_bad_image not in BAD_IMAGE_POLICIES:
        raise TscmError(f"on_bad_image {on_bad_image!r}: expected one of {', '.join(BAD_IMAGE_POLICIES)}")
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise TscmError(f"batch_size: expected a positive integer, got {batch_size!r}")
    if not (isinstance(num_workers, int) and num_workers >= 0):
        raise TscmError(f"num_workers: expected an integer ≥ 0 (0: load in this process), got {num_workers!r}")
    dim = int(getattr(model, "descriptor_dim", 0))
    chunks: list[np.ndarray] = []
    kept: list[int] = []
    skipped: list[tuple[str, str]] = []
    if len(images) == 0:
        return Described(np.zeros((0, dim), dtype=np.float32), kept, skipped)
    loader = DataLoader(_ImageItems(images, spec), batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=_collate)
    was_training = getattr(model, "training", False)
    model.eval()
    try:
        with torch.inference_mode():
            for batch in tqdm(loader, desc="descriptors", unit="batch", disable=None if progress else True):
                tensors, positions = [], []
                for position, tensor, problem in batch:
                    if tensor is not None:
                        tensors.append(tensor)
                        positions.append(position)
                        continue
                    if on_bad_image == "fail":
                        raise TscmError(f"{problem}{bad_image_hint}")
                    from tscm.data.images import image_label

                    skipped.append((image_label(images[position]), problem))
                    if report is not None:
                        report(f"skipped: {problem}")
                if not tensors:
                    continue
                output = model(torch.stack(tensors).to(device))
                if not isinstance(output, torch.Tensor) or output.ndim != 2 or output.shape[0] != len(tensors):
                    shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
                    raise TscmError(f"model output: expected a {len(tensors)}×D tensor of descriptors, got {shape}")
                chunks.append(output.detach().float().cpu().numpy())
                kept += positions
    finally:
        model.train(was_training)
    if chunks:
        descriptors = np.concatenate(chunks)
    else:
        descriptors = np.zeros((0, dim), dtype=np.float32)
    return Described(np.ascontiguousarray(descriptors, dtype=np.float32), kept, skipped)


def extract_descriptors(model, paths: Sequence[Any], spec: InputSpec, **options: Any) -> np.ndarray:
    """float32 N×D descriptors of every image at `paths`, in order (an unreadable image is an error)."""
    options.setdefault("bad_image_hint", "")  # callers (evaluate, training) have no --on-bad-image to advise
    return describe_images(model, paths, spec, on_bad_image="fail", **options).descriptors


def describe_placeset(model, spec: InputSpec, placeset: PlaceSet, **options: Any) -> tuple[np.ndarray, np.ndarray]:
    """(database, query) descriptors of a data set's images, in the PlaceSet's order."""
    if any(is_placeholder_path(p) for p in placeset.db_paths + placeset.query_paths):
        raise TscmError(f"{placeset.name}/{placeset.split}: the data set does not name its images, so a model "
                        "cannot describe them; give descriptors instead (--descriptors)")
    db = extract_descriptors(model, placeset.db_paths, spec, **options)
    queries = extract_descriptors(model, placeset.query_paths, spec, **options)
    return db, queries


def describe_decoded(model: nn.Module, images: DecodedImages, rows: np.ndarray, spec: InputSpec, batch_size: int,
                     device: torch.device, progress: bool) -> np.ndarray:
    """float32 descriptors of `images` at `rows`, in order: what `extract_descriptors` gives for their paths
    (same inputs, batches and eval-mode forward), with the pixels taken from memory."""
    from tqdm import tqdm

    dim = int(getattr(model, "descriptor_dim", 1))
    chunks = []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            starts = range(0, len(rows), batch_size)
            for start in tqdm(starts, desc="descriptors", unit="batch", disable=None if progress else True):
                batch = images.inputs(rows[start : start + batch_size], spec.image_size, spec.mean, spec.std)
                chunks.append(model(batch.to(device)).detach().float().cpu().numpy())
    finally:
        model.train(was_training)
    if not chunks:
        return np.zeros((0, dim), dtype=np.float32)
    return np.ascontiguousarray(np.concatenate(chunks), dtype=np.float32)

"""The one image loader of tscm and the evaluation transform that turns images into model input.

Every command reads images through `load_rgb` / `as_rgb` (check-data included), so what the
checks accept is what the models see. 8-bit images are used as they are; 16-bit and 32-bit integer
images are scaled from their full range (a 16-bit value v becomes round(v / 257)); float images
are accepted with values in [0, 1]. Anything else is refused with a message naming the file,
never clipped silently (Pillow's plain `convert("RGB")` turns 16-bit images white). Images are
turned upright by their EXIF orientation, as viewers show them; only regular files are opened (a
FIFO or device would block, a symbolic link loop is reported as unreadable). A frame of a ROS bag
has a virtual path, `BAG#TOPIC@RECEIVE_NS` (tscm.data.formats.bag_frames): it is decoded from the bag
in memory and scaled by the same rules.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset

from tscm.errors import TscmError
from tscm.fileio import file_kind

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Smaller than this an image holds no place; it is still described, but check-data warns.
MIN_USEFUL_SIDE = 8
_WIDE_INTEGER_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")


def _to_8bit(image: Image.Image, where: str) -> Image.Image:
    """An 8-bit RGB copy of `image`; wide integer and float modes are scaled, not clipped."""
    if image.mode in ("RGB", "L", "P", "RGBA", "LA", "CMYK", "YCbCr", "1", "PA", "La", "RGBa", "LAB", "HSV"):
        return image.convert("RGB")
    if image.mode in _WIDE_INTEGER_MODES or image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        if image.mode == "F":
            if values.size and (not np.isfinite(values).all() or values.min() < 0 or values.max() > 1):
                raise TscmError(f"{where}: floating-point image with values outside [0, 1] "
                                f"({values.min():g}..{values.max():g}); save it as 8- or 16-bit")
            scaled = values * 255.0
        else:
            if values.size and (values.min() < 0 or values.max() > 65535):
                raise TscmError(f"{where}: {image.mode} image with values outside 0..65535; save it as 8- or 16-bit")
            scaled = values / 257.0  # 65535 → 255: the full 16-bit range onto the full 8-bit range
        grey = np.clip(np.round(scaled), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    raise TscmError(f"{where}: image mode {image.mode!r} is not supported; expected an 8- or 16-bit grey or colour image")


def _check_regular_file(path: str | Path) -> None:
    """Refuse what is not a regular file before opening it: a FIFO or device would block or never end, and
    a symbolic link loop or a path through a file cannot be opened at all."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise TscmError(f"{path}: image not found") from None
    except OSError as error:  # ELOOP, ENOTDIR, ENAMETOOLONG, EACCES
        raise TscmError(f"{path}: unreadable image ({error.strerror or error})") from None
    if stat.S_ISDIR(info.st_mode):
        raise TscmError(f"{path}: is a folder, not an image")
    if not stat.S_ISREG(info.st_mode):
        raise TscmError(f"{path}: unreadable image: it is {file_kind(info.st_mode)}, not a regular file")


# EXIF orientation (tag 274): how a camera that stored the pixels sideways says to show them.
_ORIENTATION_TAG = 0x0112


def _upright(image: Image.Image) -> Image.Image:
    """`image` as it is displayed: rotated or mirrored by its EXIF orientation (a phone photo stored
    sideways is described upright, like the same photo saved upright)."""
    try:
        orientation = image.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001 - damaged EXIF: the pixels as stored
        return image
    if orientation in (None, 1):
        return image
    return ImageOps.exif_transpose(image)


def load_rgb(path: str | Path, draft: tuple[int, int] | None = None) -> Image.Image:
    """The fully decoded 8-bit RGB image at `path`; a missing or corrupt file raises TscmError naming it.

    `draft` lets JPEG decoding work at reduced scale (every byte is still read, so truncation shows).
    """
    if "#" in str(path):  # maybe a bag frame (module doc); imported here, so ordinary paths never load it
        from tscm.data.formats.bag_frames import is_bag_frame_path, read_bag_frame

        if is_bag_frame_path(path):
            return _to_8bit(read_bag_frame(path), str(path))
    _check_regular_file(path)
    try:
        with Image.open(path) as image:
            if draft is not None:
                image.draft("RGB", draft)
            image.load()
            return _to_8bit(_upright(image), str(path))
    except FileNotFoundError:
        raise TscmError(f"{path}: image not found") from None
    except IsADirectoryError:
        raise TscmError(f"{path}: is a folder, not an image") from None
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as error:
        raise TscmError(f"{path}: unreadable image ({error})") from None


def as_rgb(image: Any) -> Image.Image:
    """A PIL RGB image from a path, PIL image or H×W×3 / H×W uint8 array (TscmError naming the problem)."""
    if isinstance(image, (str, Path)):
        return load_rgb(image)
    if isinstance(image, Image.Image):
        return _to_8bit(_upright(image), f"<PIL image {image.mode}>")
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3, 4))):
            raise TscmError(f"image array: expected H×W×3 (or H×W) uint8 pixels, got {image.dtype} {image.shape}")
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[:, :, 0]
        return Image.fromarray(image).convert("RGB")
    raise TscmError(f"image of type {type(image).__name__}: expected a path, a PIL image or a uint8 array")


def image_label(image: Any) -> str:
    """The path of a path-like image, else a short description (for messages and stored paths)."""
    if isinstance(image, (str, Path)):
        return str(image)
    return f"<{type(image).__name__}>"


def eval_transform(
    image: Image.Image,
    image_size: Sequence[int],
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """3×H×W model input: normalise, then resize bilinearly to `image_size` (H, W).

    The published pipeline normalises first and resizes the normalised tensor, without
    antialiasing (the torchvision tensor Resize of its time).
    """
    size = (int(image_size[0]), int(image_size[1]))
    return _transform_pixels(np.array(image, dtype=np.uint8)[None], size, mean, std)[0]  # a writable copy for torch


def check_input_spec(image_size: Sequence[int], mean: Sequence[float], std: Sequence[float]) -> None:
    if len(image_size) != 2 or min(int(s) for s in image_size) <= 0:
        raise TscmError(f"image_size: expected (height, width) in pixels, got {tuple(image_size)}")
    if len(mean) != 3 or len(std) != 3 or min(float(s) for s in std) <= 0:
        raise TscmError(f"normalisation: expected 3 means and 3 positive stds, got mean={mean}, std={std}")


class ImageListDataset(Dataset):
    """The images at `paths`, in order, each as the eval-transformed 3×H×W tensor (errors raise)."""

    def __init__(
        self,
        paths: Sequence[str | Path],
        image_size: Sequence[int],
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        check_input_spec(image_size, mean, std)
        self.paths = [Path(p) for p in paths]
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return eval_transform(load_rgb(self.paths[index]), self.image_size, self.mean, self.std)


# The decoded pixels a training run keeps in memory (train and validation images, each set on its own):
# the demo's 64-px city is about 60 MB; a set larger than this decodes the rest from disk every time.
DECODED_CACHE_BYTES = 1 << 30


class DecodedImages:
    """The 8-bit pixels of the images at `paths`, decoded once and kept in memory (up to `max_bytes`),
    and model inputs made from them in batches.

    `inputs(indices, ...)` equals `torch.stack([eval_transform(load_rgb(paths[i]), ...) for i in indices])`
    bit for bit (same values, same contiguous layout); images beyond the memory budget are decoded
    again on each use. Decoding errors are raised as by `load_rgb`.
    """

    def __init__(self, paths: Sequence[str | Path], max_bytes: int = DECODED_CACHE_BYTES) -> None:
        self.paths = [Path(p) for p in paths]
        self.max_bytes = int(max_bytes)
        self._pixels: list[np.ndarray | None] = [None] * len(self.paths)
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self.paths)

    def pixels(self, index: int) -> np.ndarray:
        """H×W×3 uint8 pixels of image `index` (decoded on first use)."""
        cached = self._pixels[index]
        if cached is not None:
            return cached
        array = np.array(load_rgb(self.paths[index]), dtype=np.uint8)  # a writable copy
        if self.nbytes + array.nbytes <= self.max_bytes:
            self._pixels[index] = array
            self.nbytes += array.nbytes
        return array

    def is_cached(self, index: int) -> bool:
        return self._pixels[index] is not None

    def inputs(
        self,
        indices: Sequence[int],
        image_size: Sequence[int],
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> torch.Tensor:
        """N×3×H×W model inputs of images `indices` (the eval transform, batched)."""
        height, width = int(image_size[0]), int(image_size[1])
        arrays = [self.pixels(int(i)) for i in indices]
        if not arrays:
            return torch.zeros((0, 3, height, width))
        if any(a.shape != arrays[0].shape for a in arrays):  # mixed sizes: one image at a time
            return torch.stack([_transform_pixels(a[None], (height, width), mean, std)[0] for a in arrays])
        return _transform_pixels(np.stack(arrays), (height, width), mean, std)

    def units(self, indices: Sequence[int]) -> list[torch.Tensor]:
        """Images `indices` in [0, 1] units, grouped by size: a list of N_i×3×h_i×w_i tensors whose
        concatenation (in order) is the images in the order given; one tensor when all share a size."""
        arrays = [self.pixels(int(i)) for i in indices]
        groups: list[list[np.ndarray]] = []
        for array in arrays:
            if groups and groups[-1][0].shape == array.shape:
                groups[-1].append(array)
            else:
                groups.append([array])
        return [pixels_to_units(np.stack(group)) for group in groups]

    def input(self, index: int, image_size: Sequence[int], mean: Sequence[float] = IMAGENET_MEAN,
              std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
        """3×H×W model input of image `index` (equal to `eval_transform(load_rgb(path), ...)`)."""
        return self.inputs([index], image_size, mean, std)[0]


def pixels_to_units(pixels: np.ndarray) -> torch.Tensor:
    """N same-sized images (N×h×w×3 uint8) as an N×3×h×w float tensor in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).float().div_(255.0)


def units_to_inputs(units: torch.Tensor, image_size: Sequence[int], mean: Sequence[float],
                    std: Sequence[float]) -> torch.Tensor:
    """Model inputs (contiguous N×3×H×W) of N same-sized images in [0, 1] units: normalise, then resize
    each image bilinearly to `image_size` (the published order)."""
    size = (int(image_size[0]), int(image_size[1]))
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    tensor = (units - mean_t) / std_t
    if tuple(tensor.shape[-2:]) != size:
        # One image at a time, so an image resamples to the same values whatever batch it comes in.
        return torch.stack([
            F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=False)[0]
            for image in tensor
        ])
    return tensor.contiguous()


def _transform_pixels(pixels: np.ndarray, image_size: tuple[int, int], mean: Sequence[float],
                      std: Sequence[float]) -> torch.Tensor:
    """The eval transform of N same-sized images (N×h×w×3 uint8) at once, as a contiguous N×3×H×W tensor
    (`eval_transform` is the N = 1 case)."""
    if tuple(pixels.shape[1:3]) == tuple(image_size):
        # Nothing to resample: the same float32 operations in numpy, bit for bit, without the dozen tensor
        # calls that cost more than the arithmetic on a streaming robot's one small frame.
        units = np.ascontiguousarray(pixels.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255.0)
        units -= np.asarray(mean, dtype=np.float32)[None, :, None, None]
        units /= np.asarray(std, dtype=np.float32)[None, :, None, None]
        return torch.from_numpy(units)
    return units_to_inputs(pixels_to_units(pixels), image_size, mean, std)

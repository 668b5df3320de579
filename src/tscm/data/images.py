"""Image loading and the evaluation transform that turn image files into model input tensors."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from tscm.errors import TscmError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_rgb(path: str | Path) -> Image.Image:
    """The fully decoded RGB image at `path`; a missing or corrupt file raises TscmError naming it."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError:
        raise TscmError(f"{path}: image not found") from None
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as error:
        raise TscmError(f"{path}: unreadable image ({error})") from None


def to_unit_tensor(image: Image.Image) -> torch.Tensor:
    """3×H×W float32 in [0, 1] from an RGB PIL image."""
    data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return data.view(image.height, image.width, 3).permute(2, 0, 1).float().div_(255.0)


def eval_transform(
    image: Image.Image,
    image_size: Sequence[int],
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    normalize_first: bool = True,
) -> torch.Tensor:
    """3×H×W model input: normalise, then resize bilinearly to `image_size` (H, W).

    The published pipeline normalises first and resizes the normalised tensor, without
    antialiasing (the torchvision tensor Resize of its time); `normalize_first=False` swaps the order.
    """
    height, width = int(image_size[0]), int(image_size[1])
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    tensor = to_unit_tensor(image)

    def resize(x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) == (height, width):
            return x
        return F.interpolate(x[None], size=(height, width), mode="bilinear", align_corners=False, antialias=False)[0]

    if normalize_first:
        return resize((tensor - mean_t) / std_t)
    return (resize(tensor) - mean_t) / std_t


class ImageListDataset(Dataset):
    """The images at `paths`, in order, each as the eval-transformed 3×H×W tensor."""

    def __init__(
        self,
        paths: Sequence[str | Path],
        image_size: Sequence[int],
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        if len(image_size) != 2 or min(int(s) for s in image_size) <= 0:
            raise TscmError(f"image_size: expected (height, width) in pixels, got {tuple(image_size)}")
        if len(mean) != 3 or len(std) != 3 or min(float(s) for s in std) <= 0:
            raise TscmError(f"normalisation: expected 3 means and 3 positive stds, got mean={mean}, std={std}")
        self.paths = [Path(p) for p in paths]
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return eval_transform(load_rgb(self.paths[index]), self.image_size, self.mean, self.std)

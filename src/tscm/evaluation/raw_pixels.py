"""The raw-pixel reference: downsampled images as descriptors, the floor any learnt model should beat."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from tscm.data.images import load_rgb
from tscm.errors import TscmError

_FLAT_NORM = 1.0 / 255.0


def raw_pixel_descriptors(paths: Sequence[str | Path], size: int | Sequence[int] = 16) -> np.ndarray:
    """float32 N×(3·H·W): each image box-downsampled to `size` (side or (H, W)), RGB in [0, 1],
    minus its own mean, L2-normalised (a constant image gives a zero row).

    Subtracting the mean removes global brightness, so the reference is not decided by lighting alone.
    """
    height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if height < 1 or width < 1:
        raise TscmError(f"raw-pixel size: expected a positive side in pixels, got {size}")
    out = np.zeros((len(paths), 3 * height * width), dtype=np.float32)
    for row, path in enumerate(paths):
        small = load_rgb(path).resize((width, height), resample=Image.Resampling.BOX)
        pixels = np.asarray(small, dtype=np.float64).reshape(-1) / 255.0
        centred = pixels - pixels.mean()
        norm = float(np.linalg.norm(centred))
        # Below one grey level of structure the direction is rounding noise, not image content.
        if norm > _FLAT_NORM:
            out[row] = centred / norm
    return out

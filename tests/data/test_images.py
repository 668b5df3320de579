"""Eval transform and image loading, against plain numpy computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tscm.data.images import IMAGENET_MEAN, IMAGENET_STD, ImageListDataset, eval_transform, load_rgb
from tscm.errors import TscmError


def bilinear_reference(channel: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Half-pixel-centre bilinear resize (no antialias), written out by hand."""

    def taps(n_in, n_out):
        result = []
        for o in range(n_out):
            src = max((o + 0.5) * n_in / n_out - 0.5, 0.0)
            i0 = min(int(np.floor(src)), n_in - 1)
            i1 = min(i0 + 1, n_in - 1)
            result.append((i0, i1, src - i0))
        return result

    out = np.zeros((out_h, out_w))
    for y, (y0, y1, wy) in enumerate(taps(channel.shape[0], out_h)):
        for x, (x0, x1, wx) in enumerate(taps(channel.shape[1], out_w)):
            top = channel[y0, x0] * (1 - wx) + channel[y0, x1] * wx
            bottom = channel[y1, x0] * (1 - wx) + channel[y1, x1] * wx
            out[y, x] = top * (1 - wy) + bottom * wy
    return out


def test_eval_transform_matches_reference():
    pixels = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    got = eval_transform(image, (8, 4)).numpy()
    assert got.shape == (3, 8, 4) and got.dtype == np.float32
    for c in range(3):
        normalised = (pixels[:, :, c] / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        np.testing.assert_allclose(got[c], bilinear_reference(normalised, 8, 4), atol=1e-5)


def test_eval_transform_same_size_is_plain_normalisation():
    pixels = np.full((4, 6, 3), (255, 0, 128), dtype=np.uint8)
    got = eval_transform(Image.fromarray(pixels), (4, 6), mean=(0.5, 0.5, 0.5), std=(0.5, 0.25, 1.0))
    np.testing.assert_allclose(got[:, 0, 0].numpy(), [1.0, -2.0, 128 / 255 - 0.5], atol=1e-6)


def test_same_size_images_get_the_bits_of_the_tensor_path():
    """Images already at the input size skip the tensor operations: the numbers must not move by a bit."""
    from tscm.data.images import pixels_to_units, units_to_inputs

    pixels = np.random.default_rng(1).integers(0, 256, (3, 5, 7, 3), dtype=np.uint8)
    expected = units_to_inputs(pixels_to_units(pixels), (5, 7), IMAGENET_MEAN, IMAGENET_STD).numpy()
    for i in range(3):
        got = eval_transform(Image.fromarray(pixels[i]), (5, 7)).numpy()
        assert got.dtype == np.float32 and got.flags["C_CONTIGUOUS"]
        np.testing.assert_array_equal(got, expected[i])


def test_image_list_dataset_and_errors(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((3, 3, 3), dtype=np.uint8)).convert("L").save(good)  # grey becomes RGB
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff not really a jpeg")
    dataset = ImageListDataset([good, tmp_path / "missing.jpg", corrupt], (6, 5), IMAGENET_MEAN, IMAGENET_STD)
    assert len(dataset) == 3
    assert dataset[0].shape == torch.Size([3, 6, 5])
    with pytest.raises(TscmError, match="missing.jpg: image not found"):
        dataset[1]
    with pytest.raises(TscmError, match="corrupt.jpg: unreadable image"):
        dataset[2]
    with pytest.raises(TscmError, match="image_size"):
        ImageListDataset([good], (0, 5), IMAGENET_MEAN, IMAGENET_STD)


def test_truncated_jpeg_is_unreadable(tmp_path):
    path = tmp_path / "cut.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:-400])
    with pytest.raises(TscmError, match="cut.jpg: unreadable image"):
        load_rgb(path)

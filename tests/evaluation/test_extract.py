"""The one image-to-descriptor path: order, eval mode, batching, workers, bad images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.placeset_files import write_jpeg

from tscm.data.images import eval_transform, load_rgb
from tscm.errors import TscmError
from tscm.evaluation.extract import InputSpec, describe_images, extract_descriptors


class MeanColourModel(torch.nn.Module):
    """Descriptor = per-channel mean and a scaled copy; records the mode it ran in."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(2.0))
        self.modes: list[bool] = []

    def forward(self, images):
        self.modes.append(self.training)
        means = images.mean(dim=(2, 3))
        return torch.cat([means, means * self.scale], dim=1)


def test_extract_descriptors_matches_direct_model_call(tmp_path):
    paths = [write_jpeg(tmp_path / f"{i}.jpg", seed=i, size=(9 + i, 7)) for i in range(5)]
    model = MeanColourModel().train()
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.3, 0.25)
    got = extract_descriptors(model, paths, InputSpec((6, 8), mean, std), batch_size=2)
    assert got.dtype == np.float32 and got.shape == (5, 6)
    batch = torch.stack([eval_transform(load_rgb(p), (6, 8), mean, std) for p in paths])
    with torch.no_grad():
        expected = MeanColourModel()(batch).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert model.modes == [False, False, False] and model.training  # eval inside, mode restored after

    class WrongShape(torch.nn.Module):
        def forward(self, images):
            return images

    with pytest.raises(TscmError, match="model output"):
        extract_descriptors(WrongShape(), paths[:1], InputSpec((6, 8), mean, std))



@pytest.mark.parametrize("workers", [0, 1])
def test_bad_images_fail_naming_the_file_or_are_skipped_once(tmp_path, workers, capsys):
    good = [write_jpeg(tmp_path / f"{i}.jpg", seed=i) for i in range(3)]
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    images = [good[0], bad, good[1], good[2]]
    spec = InputSpec((6, 8), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    with pytest.raises(TscmError, match="broken.jpg: unreadable image"):
        describe_images(MeanColourModel(), images, spec, batch_size=2, num_workers=workers)
    assert "Traceback" not in capsys.readouterr().err  # a worker's error travels as text, not as a dump
    reports = []
    described = describe_images(MeanColourModel(), images, spec, batch_size=2, num_workers=workers,
                                on_bad_image="skip", report=reports.append)
    assert described.kept == [0, 2, 3] and [path for path, _ in described.skipped] == [str(bad)]
    assert len(reports) == 1 and "broken.jpg" in reports[0]
    np.testing.assert_allclose(described.descriptors, extract_descriptors(MeanColourModel(), good, spec), rtol=1e-6)


def test_arrays_and_pil_images_are_described_like_files(tmp_path):
    from PIL import Image

    path = write_jpeg(tmp_path / "a.jpg", seed=3)
    pixels = np.asarray(load_rgb(path))
    spec = InputSpec((6, 8), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    from_file, from_array, from_pil = (extract_descriptors(MeanColourModel(), [item], spec)
                                       for item in (path, pixels, Image.fromarray(pixels)))
    np.testing.assert_allclose(from_file, from_array)
    np.testing.assert_allclose(from_file, from_pil)

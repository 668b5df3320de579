"""Augmented views: seeded, in range, place-keeping in size; shared by teacher and student; off = the eval transform."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tscm.data.augment import Augmenter
from tscm.data.images import DecodedImages, eval_transform, load_rgb
from tscm.errors import TscmError
from tscm.evaluation.extract import InputSpec
from tscm.train.views import TrainViews


def units(count: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.rand(count, 3, 16, 32, generator=torch.Generator().manual_seed(seed))


def test_views_are_seeded_in_range_and_leave_the_input_alone() -> None:
    images = units()
    before = images.clone()
    augmenter = Augmenter(1.0)
    first = augmenter(images, torch.Generator().manual_seed(3))
    again = augmenter(images, torch.Generator().manual_seed(3))
    other = augmenter(images, torch.Generator().manual_seed(4))
    assert torch.equal(images, before)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert first.shape == images.shape and float(first.min()) >= 0.0 and float(first.max()) <= 1.0
    # Each image draws its own change: the per-image differences are not all alike.
    change = (first - images).abs().mean(dim=(1, 2, 3))
    assert float(change.min()) > 0 and float(change.std()) > 0


def test_strength_zero_and_disabled_parts_are_identity() -> None:
    images = units()
    generator = torch.Generator().manual_seed(0)
    assert torch.equal(Augmenter(0.0)(images, generator), images)
    assert torch.equal(Augmenter(1.0, photometric=False, geometric=False)(images, generator), images)
    # Geometric only: a constant image stays constant (shift and zoom with border padding).
    flat = torch.full((2, 3, 16, 32), 0.4)
    assert torch.allclose(Augmenter(1.0, photometric=False)(flat, generator), flat, atol=1e-6)
    with pytest.raises(TscmError, match="augment.strength"):
        Augmenter(3.0)
    with pytest.raises(TscmError, match="N×3×H×W"):
        Augmenter(1.0)(torch.zeros(3, 16, 32), generator)


def test_stronger_views_change_more() -> None:
    images = units(32)
    mild = (Augmenter(0.3)(images, torch.Generator().manual_seed(1)) - images).abs().mean()
    strong = (Augmenter(1.5)(images, torch.Generator().manual_seed(1)) - images).abs().mean()
    assert float(strong) > float(mild) > 0


def test_teacher_and_student_read_one_view(tmp_path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for index, size in enumerate([(32, 16), (32, 16), (48, 24)]):  # (width, height); one of another size
        path = tmp_path / f"{index}.png"
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
        paths.append(path)
    views = TrainViews(DecodedImages(paths))
    student = InputSpec((16, 32), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    teacher = InputSpec((32, 64), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    plain = views.inputs([2, 0, 1], student)
    expected = torch.stack([eval_transform(load_rgb(paths[k]), student.image_size, student.mean, student.std)
                            for k in (2, 0, 1)])
    assert torch.equal(plain, expected)  # no augmentation: the evaluation transform, bit for bit
    augmented = views.batch([2, 0, 1]).augmented(Augmenter(1.0), torch.Generator().manual_seed(5))
    for spec in (student, teacher):
        assert augmented.inputs(spec).shape == (3, 3, *spec.image_size)
    # The teacher's input is the student's view at another size: undo the normalisation, resize, compare.
    mean, std = torch.tensor(teacher.mean).view(1, 3, 1, 1), torch.tensor(teacher.std).view(1, 3, 1, 1)
    teacher_units = augmented.inputs(teacher) * std + mean
    student_units = augmented.inputs(student) * torch.tensor(student.std).view(1, 3, 1, 1) + torch.tensor(
        student.mean).view(1, 3, 1, 1)
    down = torch.nn.functional.interpolate(teacher_units, size=student.image_size, mode="bilinear",
                                           align_corners=False, antialias=True)
    other = views.batch([2, 0, 1]).augmented(Augmenter(1.0), torch.Generator().manual_seed(6))
    other_units = other.inputs(student) * torch.tensor(student.std).view(1, 3, 1, 1) + torch.tensor(
        student.mean).view(1, 3, 1, 1)
    assert float((down - student_units).abs().mean()) < 0.5 * float((down - other_units).abs().mean())
    assert float((plain - augmented.inputs(student)).abs().mean()) > 0.01

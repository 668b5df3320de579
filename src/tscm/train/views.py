"""The images of a training step: one view of each image, turned into every network's input.

A step's images (the tuples' images, then any teaching images) are taken from the run's decoded
pixels as [0, 1] units, augmented once (`tscm.data.augment`), and only then resized and normalised
for each network: the student and the teacher read the same view, each at its own input size.
Without augmentation the inputs equal the evaluation transform bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from tscm.data.augment import Augmenter
from tscm.data.images import DecodedImages, units_to_inputs
from tscm.evaluation.extract import InputSpec


@dataclass
class ImageViews:
    """N images as [0, 1] units, in groups of one size each (concatenated in order they are the N images)."""

    groups: list[torch.Tensor]

    def __len__(self) -> int:
        return sum(group.shape[0] for group in self.groups)

    def then(self, other: ImageViews) -> ImageViews:
        """These images followed by `other`'s."""
        return ImageViews([*self.groups, *other.groups])

    def augmented(self, augmenter: Augmenter, generator: torch.Generator) -> ImageViews:
        """One random view of every image (the same draws whatever network reads them later)."""
        return ImageViews([augmenter(group, generator) for group in self.groups])

    def inputs(self, spec: InputSpec) -> torch.Tensor:
        """N×3×H×W inputs of `spec` (its size and normalisation)."""
        parts = [units_to_inputs(group, spec.image_size, spec.mean, spec.std) for group in self.groups]
        if not parts:
            height, width = spec.image_size
            return torch.zeros((0, 3, int(height), int(width)))
        return parts[0] if len(parts) == 1 else torch.cat(parts)


class TrainViews:
    """Train images by flat key (database then queries) as `ImageViews`, from decoded pixels in memory."""

    def __init__(self, images: DecodedImages) -> None:
        self.images = images

    def batch(self, keys: Sequence[int]) -> ImageViews:
        return ImageViews(self.images.units([int(k) for k in keys]))

    def inputs(self, keys: Sequence[int], spec: InputSpec) -> torch.Tensor:
        """Unaugmented inputs of `keys` for `spec`: what the evaluation transform gives."""
        return self.batch(keys).inputs(spec)

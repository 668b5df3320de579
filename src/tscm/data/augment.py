"""Training augmentation: one random view per image, drawn on the decoded pixels before any network sees them.

The view is made at the image's own resolution, in [0, 1] units, so a teacher and a student with
different input sizes read the *same* view (each resizes it to its own input). Every transform keeps
the place: photometric changes (brightness, contrast, gamma, sensor noise, blur, fog, snow) imitate
other seasons, light and weather; geometric ones (a small shift and zoom) imitate another stop of the
train or a slightly different lane. Draws come from a caller's `torch.Generator`, so a run is
repeatable and a resumed run draws what the uninterrupted one would have.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from tscm.errors import TscmError


@dataclass(frozen=True)
class AugmentRanges:
    """The largest change of each transform at strength 1 (each image draws its own amount up to it)."""

    brightness: float = 0.2  # added to every pixel, ±
    contrast: float = 0.3  # factor around the image mean, 1 ± this
    gamma: float = 0.3  # exponent exp(±this)
    noise: float = 0.03  # standard deviation of Gaussian sensor noise, up to this
    blur_probability: float = 0.3  # a 3×3 Gaussian blur with this probability
    fog_probability: float = 0.3  # a grey veil, thicker towards the horizon, with this probability
    fog: float = 0.5  # largest veil opacity
    snow_probability: float = 0.2  # bright flakes with this probability
    snow: float = 0.015  # largest share of pixels that become flakes
    shift: float = 0.06  # translation, ± this fraction of the width and of the height
    zoom: float = 0.1  # crop of up to this fraction of each side's length, then scaled back


class Augmenter:
    """Random place-keeping views of N×3×H×W images in [0, 1]; `strength` scales every amplitude (0: off)."""

    def __init__(self, strength: float = 1.0, photometric: bool = True, geometric: bool = True,
                 ranges: AugmentRanges = AugmentRanges()) -> None:
        if not (math.isfinite(strength) and 0.0 <= strength <= 2.0):
            raise TscmError(f"augment.strength must be in [0, 2] (0: off, 1: the default ranges), got {strength}")
        self.strength = float(strength)
        self.photometric = photometric
        self.geometric = geometric
        self.ranges = ranges

    @property
    def active(self) -> bool:
        return self.strength > 0 and (self.photometric or self.geometric)

    def __call__(self, units: Tensor, generator: torch.Generator) -> Tensor:
        """A new view of each image of `units` (N×3×H×W, values in [0, 1]); the input is not changed."""
        if units.ndim != 4 or units.shape[1] != 3:
            raise TscmError(f"augmentation: expected N×3×H×W images, got shape {tuple(units.shape)}")
        if not self.active or units.shape[0] == 0:
            return units
        views = units
        if self.geometric:
            views = self._shift_and_zoom(views, generator)
        if self.photometric:
            views = self._photometric(views, generator)
        return views.clamp_(0.0, 1.0)

    def _uniform(self, count: int, low: float, high: float, generator: torch.Generator) -> Tensor:
        return low + (high - low) * torch.rand(count, generator=generator)

    def _chance(self, count: int, probability: float, generator: torch.Generator) -> Tensor:
        return torch.rand(count, generator=generator) < probability

    def _shift_and_zoom(self, units: Tensor, generator: torch.Generator) -> Tensor:
        count, s, r = units.shape[0], self.strength, self.ranges
        scale = 1.0 - self._uniform(count, 0.0, r.zoom * s, generator)
        # affine_grid works in [-1, 1] coordinates: a shift of f·(size) is 2f.
        shift_x = self._uniform(count, -2 * r.shift * s, 2 * r.shift * s, generator)
        shift_y = self._uniform(count, -2 * r.shift * s, 2 * r.shift * s, generator)
        theta = torch.zeros(count, 2, 3)
        theta[:, 0, 0], theta[:, 1, 1] = scale, scale
        theta[:, 0, 2], theta[:, 1, 2] = shift_x, shift_y
        grid = F.affine_grid(theta.to(units.dtype), list(units.shape), align_corners=False)
        return F.grid_sample(units, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def _photometric(self, units: Tensor, generator: torch.Generator) -> Tensor:
        count, height, width = units.shape[0], units.shape[2], units.shape[3]
        s, r = self.strength, self.ranges
        column = (count, 1, 1, 1)
        brightness = self._uniform(count, -r.brightness * s, r.brightness * s, generator).view(column)
        contrast = (1 + self._uniform(count, -r.contrast * s, r.contrast * s, generator)).view(column)
        gamma = torch.exp(self._uniform(count, -r.gamma * s, r.gamma * s, generator)).view(column)
        mean = units.mean(dim=(1, 2, 3), keepdim=True)
        views = ((units - mean) * contrast + mean + brightness).clamp(0.0, 1.0).pow(gamma)

        blurred = self._chance(count, r.blur_probability, generator).view(column)
        if bool(blurred.any()):
            kernel = torch.tensor([1.0, 2.0, 1.0])
            kernel = (kernel[:, None] * kernel[None, :] / 16.0).to(views.dtype).expand(3, 1, 3, 3)
            smooth = F.conv2d(F.pad(views, (1, 1, 1, 1), mode="replicate"), kernel, groups=3)
            views = torch.where(blurred, smooth, views)

        fogged = self._chance(count, r.fog_probability, generator).view(column)
        opacity = self._uniform(count, 0.0, min(1.0, r.fog * s), generator).view(column)
        level = self._uniform(count, 0.6, 0.95, generator).view(column)
        # Thicker at the top of the picture (far away, towards the horizon) than at the bottom.
        falloff = torch.linspace(1.0, 0.4, height, dtype=views.dtype).view(1, 1, height, 1)
        veil = torch.where(fogged, opacity * falloff, torch.zeros(()))
        views = views * (1 - veil) + level * veil

        snowing = self._chance(count, r.snow_probability, generator).view(column)
        density = self._uniform(count, 0.0, r.snow * s, generator).view(column)
        flakes = (torch.rand(count, 1, height, width, generator=generator) < density) & snowing
        views = torch.where(flakes, torch.ones(()), views)

        sigma = self._uniform(count, 0.0, r.noise * s, generator).view(column)
        noise = torch.randn(units.shape, generator=generator, dtype=views.dtype)
        return views + sigma * noise

"""A reference descriptor without training: an ImageNet CNN trunk and GeM pooling, L2-normalised.

It answers "how far does an off-the-shelf trunk get?" next to the trained teacher and student. It has
the `config` attributes the evaluation path reads (`image_size`, `mean`, `std`), so
`tscm.evaluation.extract.describe_placeset(model, InputSpec.of(model.config), ...)` describes a
PlaceSet with it like with any trained model. It is not a teacher or student preset and is not saved
as a checkpoint.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import nn

from tscm.models.backbones import CnnConfig, CnnTrunk, IMAGENET_MEAN, IMAGENET_STD, LITE_MEAN, LITE_STD
from tscm.models.layers import GeM, l2_normalize, standardize_per_image
from tscm.models.presets import get_preset
from tscm.models.teacher import check_image_size


@dataclass
class PooledTrunkConfig:
    """Input size and normalisation of a PooledTrunk (what InputSpec.of reads), and its trunk."""

    name: str = "pooled-trunk"
    image_size: tuple[int, int] = (32, 64)
    mean: tuple[float, float, float] = LITE_MEAN
    std: tuple[float, float, float] = LITE_STD
    cnn: CnnConfig = field(default_factory=CnnConfig)
    gem_p: float = 3.0
    standardize_input: bool = False


class PooledTrunk(nn.Module):
    """forward(images B×3×H×W) -> B×C L2-normalised GeM descriptors of the trunk's last feature map."""

    role = "reference"

    def __init__(self, cnn: CnnConfig, image_size: tuple[int, int], pretrained: bool = False, *,
                 gem_p: float = 3.0, standardize_input: bool = False, name: str = "pooled-trunk") -> None:
        super().__init__()
        lite = cnn.library == "efficientnet-lite"
        self.config = PooledTrunkConfig(
            name=name, image_size=(int(image_size[0]), int(image_size[1])),
            mean=LITE_MEAN if lite else IMAGENET_MEAN, std=LITE_STD if lite else IMAGENET_STD,
            cnn=dataclasses.replace(cnn), gem_p=gem_p, standardize_input=standardize_input,
        )
        self.cnn = CnnTrunk(cnn, pretrained)
        self.gem = GeM(gem_p)
        self.descriptor_dim = self.cnn.output_size(*self.config.image_size)[0]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        check_image_size(images, self.config.image_size, self.config.name)
        if self.config.standardize_input:
            images = standardize_per_image(images)
        return l2_normalize(self.gem(self.cnn(images)))


def off_the_shelf_trunk(preset: str, pretrained: bool = True, standardize_input: bool = False) -> PooledTrunk:
    """A teacher or student preset's CNN trunk (same architecture, cut and input size) with its ImageNet
    weights and GeM, untrained, in eval mode: the floor that training has to beat."""
    config = get_preset(preset)
    model = PooledTrunk(config.cnn, config.image_size, pretrained, gem_p=config.gem_p,
                        standardize_input=standardize_input, name=f"{config.name}-trunk-imagenet")
    return model.eval()

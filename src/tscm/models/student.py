"""The student: ResNet trunk with GeM, and a patch-embedding NetVLAD branch; plus an uncertainty head."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

import torch
from torch import nn

from tscm.errors import TscmError
from tscm.models.backbones import IMAGENET_MEAN, IMAGENET_STD, CnnConfig, CnnTrunk
from tscm.models.layers import GeM, NetVLADGated, l2_normalize, standardize_per_image
from tscm.models.teacher import check_image_size, pretrained_backbones


@dataclass
class StudentConfig:
    """Student sizes; the NetVLAD sample size follows from `image_size` and `patch_size`.

    `token_major_vlad_samples=True` is the published quirk: the N×E token buffer is read row-major
    as E samples of N values. False uses the N tokens (E values each) as samples.
    `keep_unused_published_params`: keep the NetVLAD head's never-used `bn2`, as published.
    `standardize_input`: standardise each image's channels inside the network before both branches
    (not published; part of the model, so export and deployment apply it too).
    `vlad_init`: initial std of the NetVLAD head's `hidden1_weights`, "published" (1/√D) or
    "legacy" (1/√K, the default, as for TeacherConfig).
    """

    name: str = "student"
    description: str = ""
    image_size: tuple[int, int] = (224, 224)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    cnn: CnnConfig = field(default_factory=CnnConfig)
    patch_size: int = 16
    embed_dim: int = 768
    clusters: int = 64
    vlad_dim: int = 256
    projection_dim: int = 1024
    token_major_vlad_samples: bool = True
    gem_p: float = 3.0
    keep_unused_published_params: bool = False
    standardize_input: bool = False
    vlad_init: str = "legacy"


class Student(nn.Module):
    """forward(images) -> B×D L2-normalised descriptors (D = projection_dim + CNN channels);
    uncertainty(images) -> B×D values in (0, 1) from the published STUN-style variance head;
    forward(images, with_uncertainty=True) -> both from one pass (what a DDP-wrapped trainer calls).

    `pretrained` as for Teacher: only "cnn" applies (the patch embedding always starts random), so
    a "vit" in the collection is accepted and has no effect."""

    role = "student"

    def __init__(self, config: StudentConfig, pretrained: bool | Collection[str] = False) -> None:
        super().__init__()
        self.config = config
        pretrained = pretrained_backbones(pretrained)
        height, width = config.image_size
        if height % config.patch_size or width % config.patch_size:
            raise TscmError(f"image size {height}×{width} is not a multiple of patch_size {config.patch_size}")
        num_tokens = (height // config.patch_size) * (width // config.patch_size)
        self.cnn = CnnTrunk(config.cnn, "cnn" in pretrained)
        cnn_channels, _, _ = self.cnn.output_size(height, width)
        self.gem = GeM(config.gem_p)
        self.patch_embed = nn.Conv2d(3, config.embed_dim, kernel_size=config.patch_size, stride=config.patch_size)
        sample_size = num_tokens if config.token_major_vlad_samples else config.embed_dim
        self.vlad = NetVLADGated(
            sample_size, config.clusters, config.vlad_dim, config.keep_unused_published_params, config.vlad_init
        )
        self.proj = nn.Linear(config.vlad_dim, config.projection_dim)
        self.descriptor_dim = config.projection_dim + cnn_channels
        self.var_head = nn.Sequential(nn.Linear(self.descriptor_dim, self.descriptor_dim), nn.Sigmoid())

    def parts(self) -> dict[str, list[nn.Module]]:
        """Modules by part, for parameter reports."""
        return {
            "trunk": [self.cnn, self.gem],
            "vit": [self.patch_embed],
            "heads": [self.vlad, self.proj],
            "uncertainty": [self.var_head],
        }

    def backbones(self) -> dict[str, nn.Module]:
        return {"cnn": self.cnn}

    def raw_descriptor(self, images: torch.Tensor) -> torch.Tensor:
        """The descriptor before L2 normalisation (input of the uncertainty head)."""
        check_image_size(images, self.config.image_size, self.config.name)
        if self.config.standardize_input:
            images = standardize_per_image(images)
        batch = images.shape[0]
        pooled = self.gem(self.cnn(images))
        tokens = self.patch_embed(images).flatten(2).transpose(1, 2)  # B×N×E, tokens row-major over h,w
        if self.config.token_major_vlad_samples:
            samples = tokens.reshape(batch, self.config.embed_dim, -1)
        else:
            samples = tokens
        return torch.cat([self.proj(self.vlad(samples)), pooled], dim=1)

    def forward(
        self, images: torch.Tensor, with_uncertainty: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if with_uncertainty:
            return self.forward_with_uncertainty(images)
        return l2_normalize(self.raw_descriptor(images))

    def uncertainty(self, images: torch.Tensor) -> torch.Tensor:
        return self.var_head(self.raw_descriptor(images))

    def forward_with_uncertainty(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(descriptor, uncertainty) from one pass through the network."""
        raw = self.raw_descriptor(images)
        return l2_normalize(raw), self.var_head(raw)

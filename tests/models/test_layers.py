"""Layers and backbones against plain loop references on small tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tscm.errors import TscmError
from tscm.models.backbones import CnnConfig, CnnTrunk, VitConfig, VitTokens
from tscm.models.layers import (
    CrossAttention,
    FeedForward,
    GeM,
    InterTransformerEncoder,
    NetVLADGated,
    l2_normalize,
    standardize_per_image,
)


def arr(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def test_l2_normalize_matches_division_by_norm() -> None:
    x = torch.randn(3, 5)
    expected = np.array([[v / math.sqrt(sum(w * w for w in row)) for v in row] for row in arr(x)])
    np.testing.assert_allclose(arr(l2_normalize(x)), expected, rtol=1e-6, atol=1e-7)
    assert torch.equal(l2_normalize(torch.zeros(2, 4)), torch.zeros(2, 4))


def test_standardize_per_image_matches_loop() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 5) * 3 + 1
    x[1, 2] = 0.25  # a flat channel: centred, scale bounded by eps instead of dividing by zero
    out = arr(standardize_per_image(x, eps=1e-3))
    xs = arr(x)
    for b in range(2):
        for c in range(3):
            values = xs[b, c].ravel()
            mean = sum(values) / len(values)
            std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
            expected = (xs[b, c] - mean) / max(std, 1e-3)
            np.testing.assert_allclose(out[b, c], expected, rtol=1e-5, atol=1e-5)
    assert np.all(out[1, 2] == 0.0)


def test_timm_trunk_stem_and_residual_init_knobs() -> None:
    deep = CnnTrunk(CnnConfig(library="timm", channels=(8, 16), blocks=(1, 1), last_stage=2, stem_width=4, stem_type="deep"))
    convs = [m for m in deep.body.conv1.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [4, 4, 8]
    zero = CnnTrunk(CnnConfig(library="timm", channels=(8, 16), blocks=(1, 1), last_stage=2))
    live = CnnTrunk(CnnConfig(library="timm", channels=(8, 16), blocks=(1, 1), last_stage=2, zero_init_last=False))
    assert torch.all(zero.body.layer1[0].bn2.weight == 0) and torch.all(live.body.layer1[0].bn2.weight == 1)
    assert zero.body.conv1.out_channels == 64  # timm's plain stem ignores stem_width
    with pytest.raises(TscmError, match="stem_type"):
        CnnTrunk(CnnConfig(library="timm", channels=(8,), blocks=(1,), last_stage=1, stem_type="tiered"))


def test_gem_matches_loop() -> None:
    torch.manual_seed(0)
    gem = GeM(p=2.5, eps=1e-6)
    x = torch.randn(2, 3, 4, 5)  # negative values are clamped to eps
    out = gem(x)
    xs = arr(x)
    for b in range(2):
        for c in range(3):
            values = [max(v, 1e-6) ** 2.5 for v in xs[b, c].ravel()]
            expected = (sum(values) / len(values)) ** (1 / 2.5)
            assert out[b, c].item() == pytest.approx(expected, rel=1e-5)
    assert gem.p.shape == (1,) and gem.p.requires_grad


def netvlad_loop(module: NetVLADGated, x: np.ndarray) -> np.ndarray:
    cw, cb, cw2 = arr(module.cluster_weights), arr(module.cluster_biases), arr(module.cluster_weights2)[0]
    hidden, gw, gb = arr(module.hidden1_weights), arr(module.context_gating.gating_weights), arr(module.context_gating.gating_biases)
    n_samples, dim = x.shape
    clusters, out_dim = cw.shape[1], hidden.shape[1]
    assignment = np.zeros((n_samples, clusters))
    for n in range(n_samples):
        logits = [sum(x[n, d] * cw[d, k] for d in range(dim)) + cb[k] for k in range(clusters)]
        top = max(logits)
        exps = [math.exp(v - top) for v in logits]
        assignment[n] = [e / sum(exps) for e in exps]
    vlad = np.zeros((dim, clusters))
    for d in range(dim):
        for k in range(clusters):
            vlad[d, k] = sum(assignment[n, k] * (x[n, d] - cw2[d, k]) for n in range(n_samples))
    for k in range(clusters):
        vlad[:, k] /= math.sqrt(sum(vlad[d, k] ** 2 for d in range(dim)))
    flat = [vlad[d, k] for d in range(dim) for k in range(clusters)]  # index d·K + k
    length = math.sqrt(sum(v * v for v in flat))
    flat = [v / length for v in flat]
    y = [sum(flat[i] * hidden[i, o] for i in range(len(flat))) for o in range(out_dim)]
    return np.array([y[o] * sigmoid(sum(y[j] * gw[j, o] for j in range(out_dim)) + gb[o]) for o in range(out_dim)])


@pytest.mark.parametrize("keep_unused_norm", [False, True])
def test_netvlad_gated_matches_loop(keep_unused_norm: bool) -> None:
    torch.manual_seed(1)
    head = NetVLADGated(feature_size=4, cluster_size=3, output_dim=5, keep_unused_norm=keep_unused_norm)
    x = torch.randn(2, 6, 4)
    out = head(x)
    assert out.shape == (2, 5)
    for b in range(2):
        np.testing.assert_allclose(arr(out[b]), netvlad_loop(head, arr(x[b])), rtol=1e-5, atol=1e-6)
    assert (head.bn2 is not None) == keep_unused_norm
    with pytest.raises(ValueError, match="samples of size 4"):
        head(torch.randn(1, 6, 5))


@pytest.mark.parametrize("hidden_init, fan", [("published", "feature_size"), ("legacy", "cluster_size")])
def test_netvlad_hidden_init_std(hidden_init: str, fan: str) -> None:
    torch.manual_seed(6)
    head = NetVLADGated(feature_size=48, cluster_size=12, output_dim=64, hidden_init=hidden_init)
    expected = 1.0 / math.sqrt(getattr(head, fan))  # 48·12·64 ≈ 37k values: the estimate is within ~1 %
    assert head.hidden1_weights.std().item() == pytest.approx(expected, rel=0.05)
    assert abs(head.hidden1_weights.mean().item()) < 0.05 * expected
    with pytest.raises(TscmError, match=r"hidden_init \(vlad_init\).*got 'xavier'"):
        NetVLADGated(4, 3, 5, hidden_init="xavier")


def test_netvlad_legacy_init_is_the_default_and_unchanged() -> None:
    torch.manual_seed(7)
    default = NetVLADGated(8, 4, 6)
    torch.manual_seed(7)
    legacy = NetVLADGated(8, 4, 6, hidden_init="legacy")
    torch.manual_seed(7)
    published = NetVLADGated(8, 4, 6, hidden_init="published")
    assert torch.equal(default.hidden1_weights, legacy.hidden1_weights)
    # Same random draws, scaled by √K/√D: only the hidden1 scale differs.
    torch.testing.assert_close(published.hidden1_weights, legacy.hidden1_weights * math.sqrt(4 / 8))
    assert torch.equal(published.cluster_weights, legacy.cluster_weights)


def linear_loop(x: np.ndarray, layer: torch.nn.Linear) -> np.ndarray:
    w, b = arr(layer.weight), arr(layer.bias)
    return np.array([[sum(row[i] * w[o, i] for i in range(len(row))) + b[o] for o in range(w.shape[0])] for row in x])


def attention_loop(module: CrossAttention, query: np.ndarray, context: np.ndarray) -> np.ndarray:
    q, k, v = linear_loop(query, module.q_linear), linear_loop(context, module.k_linear), linear_loop(context, module.v_linear)
    d_model = q.shape[1]
    head_dim = d_model // module.num_heads
    mixed = np.zeros_like(q)
    for h in range(module.num_heads):
        cols = slice(h * head_dim, (h + 1) * head_dim)
        for i in range(q.shape[0]):
            scores = [float(np.dot(q[i, cols], k[j, cols])) / math.sqrt(head_dim) for j in range(k.shape[0])]
            top = max(scores)
            weights = [math.exp(s - top) for s in scores]
            weights = [w / sum(weights) for w in weights]
            mixed[i, cols] = sum(weights[j] * v[j, cols] for j in range(k.shape[0]))
    return linear_loop(mixed, module.out)


def feed_forward_loop(module: FeedForward, x: np.ndarray) -> np.ndarray:
    return linear_loop(np.maximum(linear_loop(x, module.linear_1), 0.0), module.linear_2)


def test_cross_attention_matches_loop() -> None:
    torch.manual_seed(2)
    attention = CrossAttention(d_model=8, num_heads=2, dropout=0.1).eval()
    query, context = torch.randn(2, 3, 8), torch.randn(2, 5, 8)
    out = attention(query, context)
    assert out.shape == (2, 3, 8)
    for b in range(2):
        np.testing.assert_allclose(arr(out[b]), attention_loop(attention, arr(query[b]), arr(context[b])), rtol=1e-5, atol=1e-6)


def test_attention_dropout_acts_only_in_training() -> None:
    torch.manual_seed(3)
    attention = CrossAttention(d_model=8, num_heads=2, dropout=0.5)
    query, context = torch.randn(1, 4, 8), torch.randn(1, 6, 8)
    attention.train()
    assert not torch.allclose(attention(query, context), attention(query, context))
    attention.eval()
    assert torch.equal(attention(query, context), attention(query, context))


def test_inter_transformer_encoder_matches_loop() -> None:
    torch.manual_seed(4)
    encoder = InterTransformerEncoder(d_model=8, num_heads=4, d_ff=12, dropout=0.1).eval()
    vit_tokens, cnn_tokens = torch.randn(1, 3, 8), torch.randn(1, 4, 8)
    a, b = encoder(vit_tokens, cnn_tokens)
    tv, tr = arr(vit_tokens[0]), arr(cnn_tokens[0])
    ref_a = tv + attention_loop(encoder.attn_vit, tv, tr)
    ref_a = ref_a + feed_forward_loop(encoder.ff_vit, ref_a)
    ref_b = tr + attention_loop(encoder.attn_cnn, tr, tv)
    ref_b = ref_b + feed_forward_loop(encoder.ff_cnn, ref_b)
    np.testing.assert_allclose(arr(a[0]), ref_a, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(arr(b[0]), ref_b, rtol=1e-5, atol=1e-5)
    assert not any("norm" in name for name, _ in encoder.named_parameters())


TINY_TRUNK = CnnConfig(library="timm", arch="resnet-basic", last_stage=3, channels=(8, 16, 24), blocks=(1, 1, 1), stem_width=8)


@pytest.mark.parametrize("config", [TINY_TRUNK, CnnConfig(library="torchvision", arch="resnet18", last_stage=2)])
@pytest.mark.parametrize("size", [(64, 64), (65, 97), (40, 71)])
def test_cnn_trunk_states_its_output_size(config: CnnConfig, size: tuple[int, int]) -> None:
    trunk = CnnTrunk(config).eval()
    with torch.no_grad():
        out = trunk(torch.randn(1, 3, *size))
    assert tuple(out.shape[1:]) == trunk.output_size(*size)


def test_paper_trunk_is_resnet50_children_up_to_layer3() -> None:
    trunk = CnnTrunk(CnnConfig())
    assert list(trunk.body._modules) == ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3"]
    assert trunk.output_size(224, 224) == (1024, 14, 14)


def test_vit_tokens_quirk_has_no_position_embedding_and_chains_children() -> None:
    torch.manual_seed(5)
    config = VitConfig(patch_size=8, embed_dim=16, depth=2, num_heads=2, position_embedding=False)
    vit = VitTokens(config, (32, 48)).eval()
    names = {name for name, _ in vit.named_parameters()}
    assert not any("pos_embed" in n or "cls_token" in n for n in names)
    images = torch.randn(2, 3, 32, 48)
    tokens = vit(images)
    assert tokens.shape == (2, 4 * 6, 16) and vit.output_size(32, 48) == (16, 4, 6)
    model = vit.model
    x = torch.nn.functional.conv2d(images, model.patch_embed.proj.weight, model.patch_embed.proj.bias, stride=8)
    x = x.flatten(2).transpose(1, 2)
    for block in model.blocks:
        x = block(x)
    x = torch.nn.functional.layer_norm(x, (16,), model.norm.weight, model.norm.bias, eps=model.norm.eps)
    torch.testing.assert_close(tokens, x)


def test_vit_tokens_with_position_embedding_drops_class_token() -> None:
    vit = VitTokens(VitConfig(patch_size=8, embed_dim=16, depth=1, num_heads=2, position_embedding=True), (32, 32)).eval()
    assert vit.model.pos_embed.shape == (1, 1 + 16, 16)
    assert vit(torch.randn(1, 3, 32, 32)).shape == (1, 16, 16)
    with pytest.raises(TscmError, match="multiple of the ViT patch size"):
        VitTokens(VitConfig(patch_size=8, embed_dim=16, depth=1, num_heads=2), (30, 32))


def test_bad_trunk_configs_are_clear_errors() -> None:
    with pytest.raises(TscmError, match="is not a torchvision ResNet"):
        CnnTrunk(CnnConfig(arch="vgg16"))
    with pytest.raises(TscmError, match="--backbone-weights FILE"):
        CnnTrunk(TINY_TRUNK, pretrained=True)
    with pytest.raises(TscmError, match="one entry per stage"):
        CnnTrunk(CnnConfig(library="timm", channels=(8, 16), blocks=(1,), last_stage=2))

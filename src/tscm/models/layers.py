"""Building blocks: per-image standardisation, GeM pooling, L2 normalisation, NetVLAD with context gating,
inter-transformer encoder."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tscm.errors import TscmError


def l2_normalize(x: torch.Tensor, dim: int = -1, eps: float = 1e-12) -> torch.Tensor:
    """Scale `x` to unit Euclidean length along `dim` (zero vectors stay zero)."""
    return F.normalize(x, p=2.0, dim=dim, eps=eps)


def standardize_per_image(images: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Each image's channels shifted to zero mean and scaled to unit standard deviation over H×W.

    Removes global brightness and colour casts (light, weather) that differ between database and
    query; invariant to any per-channel affine normalisation applied before it. `eps` bounds the
    scale on flat channels.
    """
    # Written out rather than Tensor.std: its one-pass (Welford) CPU kernel took ~5× longer than these
    # few ops, 8 % of a tiny student's training step. Same statistics (unbiased std, as before).
    flat = images.flatten(-2)
    centred = flat - flat.mean(dim=-1, keepdim=True)
    variance = centred.square().sum(dim=-1, keepdim=True) / max(flat.shape[-1] - 1, 1)
    return (centred / variance.sqrt().clamp_min(eps)).view_as(images)


class GeM(nn.Module):
    """Generalised-mean pooling over the spatial axes: (mean of clamp(x, eps)^p)^(1/p), p learnable."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.full((1,), float(p)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """B×C×H×W -> B×C."""
        return x.clamp(min=self.eps).pow(self.p).mean(dim=(-2, -1)).pow(1.0 / self.p)


class ContextGating(nn.Module):
    """y ⊙ sigmoid(y·W + b), the gating that follows the NetVLAD projection."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gating_weights = nn.Parameter(torch.randn(dim, dim) / math.sqrt(dim))
        self.gating_biases = nn.Parameter(torch.randn(dim) / math.sqrt(dim))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y * torch.sigmoid(y @ self.gating_weights + self.gating_biases)


# How NetVLADGated initialises `hidden1_weights` (mean 0): std 1/√D as published (D = feature size),
# or 1/√K (K = clusters), what tscm did before (kept so the demo presets' numbers do not move).
VLAD_INITS = ("published", "legacy")


class NetVLADGated(nn.Module):
    """NetVLAD aggregation, projection to `output_dim` and context gating (the published "NetVLADLoupe").

    `keep_unused_norm` keeps the published, never-applied `bn2` batch norm so that published
    checkpoints map one-to-one; it does not take part in forward. `hidden_init` (see VLAD_INITS)
    sets the std of `hidden1_weights` at initialisation: "published" 1/√feature_size, "legacy"
    1/√cluster_size.
    """

    def __init__(
        self, feature_size: int, cluster_size: int, output_dim: int, keep_unused_norm: bool = False,
        hidden_init: str = "legacy",
    ) -> None:
        super().__init__()
        if hidden_init not in VLAD_INITS:
            raise TscmError(f"NetVLAD hidden_init (vlad_init): expected one of {', '.join(VLAD_INITS)}, got {hidden_init!r}")
        self.feature_size = feature_size
        self.cluster_size = cluster_size
        self.output_dim = output_dim
        scale = 1.0 / math.sqrt(feature_size)
        self.cluster_weights = nn.Parameter(torch.randn(feature_size, cluster_size) * scale)
        self.cluster_biases = nn.Parameter(torch.randn(cluster_size) * scale)
        self.cluster_weights2 = nn.Parameter(torch.randn(1, feature_size, cluster_size) * scale)
        fan = feature_size if hidden_init == "published" else cluster_size
        self.hidden1_weights = nn.Parameter(torch.randn(feature_size * cluster_size, output_dim) / math.sqrt(fan))
        self.bn2 = nn.BatchNorm1d(output_dim) if keep_unused_norm else None
        self.context_gating = ContextGating(output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """B×N×D samples -> B×O."""
        if x.shape[-1] != self.feature_size:
            raise ValueError(f"NetVLAD expects samples of size {self.feature_size}, got {tuple(x.shape)}")
        assignment = torch.softmax(x @ self.cluster_weights + self.cluster_biases, dim=-1)  # B×N×K
        vlad = torch.einsum("bnd,bnk->bdk", x, assignment)
        vlad = vlad - assignment.sum(dim=1, keepdim=True) * self.cluster_weights2  # B×D×K
        vlad = l2_normalize(vlad, dim=1)
        vlad = l2_normalize(vlad.reshape(x.shape[0], -1), dim=1)  # D-major flattening: index d·K + k
        return self.context_gating(vlad @ self.hidden1_weights)


class CrossAttention(nn.Module):
    """Multi-head attention with separate q/k/v projections; dropout on the attention weights."""

    def __init__(self, d_model: int, num_heads: int, dropout: float = 0.1) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model {d_model} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.q_linear = nn.Linear(d_model, d_model)
        self.k_linear = nn.Linear(d_model, d_model)
        self.v_linear = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """query B×Nq×d attends to context B×Nk×d -> B×Nq×d."""
        batch, n_query, d_model = query.shape
        head_dim = d_model // self.num_heads

        def split_heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(batch, -1, self.num_heads, head_dim).transpose(1, 2)

        q = split_heads(self.q_linear(query))
        k = split_heads(self.k_linear(context))
        v = split_heads(self.v_linear(context))
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(head_dim), dim=-1)
        mixed = self.dropout(weights) @ v
        return self.out(mixed.transpose(1, 2).reshape(batch, n_query, d_model))


class FeedForward(nn.Module):
    """Linear -> ReLU -> dropout -> Linear."""

    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(d_model, d_ff)
        self.dropout = nn.Dropout(dropout)
        self.linear_2 = nn.Linear(d_ff, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.dropout(torch.relu(self.linear_1(x))))


class InterTransformerEncoder(nn.Module):
    """Two cross-attention + feed-forward branches, residual, no layer norms.

    A = T_V + attn_vit(T_V, T_R); A += ff_vit(A).  B = T_R + attn_cnn(T_R, T_V); B += ff_cnn(B).
    """

    def __init__(self, d_model: int, num_heads: int, d_ff: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.attn_vit = CrossAttention(d_model, num_heads, dropout)
        self.attn_cnn = CrossAttention(d_model, num_heads, dropout)
        self.ff_vit = FeedForward(d_model, d_ff, dropout)
        self.ff_cnn = FeedForward(d_model, d_ff, dropout)

    def forward(self, vit_tokens: torch.Tensor, cnn_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = vit_tokens + self.attn_vit(vit_tokens, cnn_tokens)
        a = a + self.ff_vit(a)
        b = cnn_tokens + self.attn_cnn(cnn_tokens, vit_tokens)
        b = b + self.ff_cnn(b)
        return a, b

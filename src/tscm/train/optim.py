"""How a model is set up to train: its optimiser, its memory layout on the CPU, and its batch norms."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tscm.errors import TscmError


def batchnorm_mode(model: nn.Module, mode: str) -> None:
    """`frozen`: batch norms use their running statistics while training (affine still learnt)."""
    if mode == "frozen":
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


def build_optimizer(model: nn.Module, t: Any) -> torch.optim.Optimizer:
    """The run's optimiser (`train.optimizer`, lr, weight decay, momentum) over the trainable parameters.

    Adam uses the fused kernel where it exists (float32 parameters on CPU or CUDA): one pass over all
    parameters instead of a dozen small ops per tensor.
    """
    parameters = [p for p in model.parameters() if p.requires_grad]
    if t.optimizer == "adam":
        fusable = all(p.dtype == torch.float32 and p.device.type in ("cpu", "cuda") for p in parameters)
        return torch.optim.Adam(parameters, lr=t.lr, weight_decay=t.weight_decay, **({"fused": True} if fusable else {}))
    return torch.optim.SGD(parameters, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)


def to_fast_layout(model: nn.Module, device: torch.device) -> nn.Module:
    """The model in channels-last layout on the CPU (oneDNN's convolutions and batch norms; faster for the tiny
    presets on the Intel CPU it was measured on, `tscm bench training` measures yours), unchanged elsewhere. Patch embeddings
    (convolutions whose kernel equals their stride, on the raw image) stay in the default layout, where
    their backward takes less than half the time. Parameters keep their identity."""
    if device.type == "cpu":
        model.to(memory_format=torch.channels_last)
        for module in model.modules():
            if isinstance(module, nn.Conv2d) and module.kernel_size == module.stride and module.kernel_size != (1, 1):
                module.to(memory_format=torch.contiguous_format)
    return model


def match_state_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give every loaded optimizer state tensor its parameter's memory layout.

    A checkpoint stores contiguous tensors; fused Adam walks parameter, gradient and state in memory
    order, so a channels-last parameter with a contiguous state would be updated wrongly.
    """
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            state = optimizer.state.get(parameter, {})
            for name, value in state.items():
                if (isinstance(value, torch.Tensor) and value.shape == parameter.shape
                        and value.stride() != parameter.stride()):
                    state[name] = torch.empty_like(parameter, dtype=value.dtype).copy_(value)


def freeze_trunk_stages(model: nn.Module, count: int) -> None:
    """`train.frozen_trunk_stages`: the stem and first `count` stages of the model's CNN trunk get no gradient."""
    if not count:
        return
    trunk = getattr(model, "cnn", None)
    if trunk is None:
        raise TscmError(f"train.frozen_trunk_stages={count}: this model has no CNN trunk to freeze; use 0")
    trunk.freeze_leading_stages(count)

"""A depthwise convolution whose weight gradient is fast on small feature maps on the CPU.

oneDNN's weight gradient of a depthwise convolution is slow on the few-pixel maps of a small trunk's
deep stages (the 2×4 and 4×8 maps of EfficientNet-Lite on 32×64 images): there it costs more than the rest
of the backward pass together (`tscm bench training` shows the step time). On such maps the gradient is
cheaper as one batched product: for every channel, the input pixels times the output gradients summed over
the batch (C × HW × hw values), then each kernel tap sums the pixel pairs it links. The forward pass and the
input gradient are the library's own, so descriptors are unchanged; the weight gradient differs from the
library's only in the order of its floating-point sums.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# The batched product holds HW × hw values per channel: worth it (and small) below this many, measured
# against oneDNN on 2-core x86 for 2×4 to 16×32 maps; larger maps keep the library's gradient.
MAX_PIXEL_PAIRS = 4096

_tap_matrices: dict[tuple, torch.Tensor] = {}


def _tap_matrix(in_size: tuple[int, int], out_size: tuple[int, int], kernel: int, stride: int, padding: int,
                like: torch.Tensor) -> torch.Tensor:
    """(HW·hw) × k² of 0/1: which kernel tap links input pixel p to output pixel q."""
    key = (in_size, out_size, kernel, stride, padding, like.device, like.dtype)
    if key not in _tap_matrices:
        (height, width), (out_h, out_w) = in_size, out_size
        taps = torch.zeros(height * width, out_h * out_w, kernel * kernel, dtype=like.dtype)
        for oy in range(out_h):
            for ox in range(out_w):
                for ky in range(kernel):
                    for kx in range(kernel):
                        y, x = oy * stride + ky - padding, ox * stride + kx - padding
                        if 0 <= y < height and 0 <= x < width:
                            taps[y * width + x, oy * out_w + ox, ky * kernel + kx] = 1
        _tap_matrices[key] = taps.view(-1, kernel * kernel).to(like.device)
    return _tap_matrices[key]


def small_map_weight_grad(images: torch.Tensor, grad_out: torch.Tensor, kernel: int, stride: int,
                          padding: int) -> torch.Tensor:
    """The C×1×k×k weight gradient of a depthwise convolution (square kernel, symmetric zero padding)."""
    batch, channels, height, width = images.shape
    out_h, out_w = grad_out.shape[-2:]
    pairs = torch.bmm(images.reshape(batch, channels, height * width).permute(1, 2, 0),
                      grad_out.reshape(batch, channels, out_h * out_w).permute(1, 0, 2))  # C × HW × hw
    taps = _tap_matrix((height, width), (out_h, out_w), kernel, stride, padding, images)
    return (pairs.reshape(channels, -1) @ taps).view(channels, 1, kernel, kernel)


class _DepthwiseConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, images, weight, bias, stride, padding):  # noqa: D102 (torch's signature)
        ctx.save_for_backward(images, weight)
        ctx.stride, ctx.padding = stride, padding
        return F.conv2d(images, weight, bias, stride, padding, 1, weight.shape[0])

    @staticmethod
    def backward(ctx, grad_out):  # noqa: D102
        images, weight = ctx.saved_tensors
        grad_images = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_images = torch.nn.grad.conv2d_input(images.shape, weight, grad_out, ctx.stride, ctx.padding,
                                                     groups=weight.shape[0])
        if ctx.needs_input_grad[1]:
            grad_weight = small_map_weight_grad(images, grad_out, weight.shape[-1], ctx.stride, ctx.padding)
        if ctx.needs_input_grad[2]:
            grad_bias = grad_out.sum((0, 2, 3))
        return grad_images, grad_weight, grad_bias, None, None


def uses_small_map_grad(images: torch.Tensor, weight: torch.Tensor, stride: int, padding: int) -> bool:
    """Whether `depthwise_conv2d` takes the batched-product weight gradient for this input."""
    if not (torch.is_grad_enabled() and weight.requires_grad and images.device.type == "cpu"
            and images.dtype == torch.float32 and weight.shape[-1] == weight.shape[-2]):
        return False
    height, width = images.shape[-2:]
    out_h = (height + 2 * padding - weight.shape[-1]) // stride + 1
    out_w = (width + 2 * padding - weight.shape[-1]) // stride + 1
    return height * width * out_h * out_w <= MAX_PIXEL_PAIRS


def depthwise_conv2d(images: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int,
                     padding: int) -> torch.Tensor:
    """F.conv2d(images, weight, bias, stride, padding, groups=channels), with the fast weight gradient where it
    applies."""
    if uses_small_map_grad(images, weight, stride, padding):
        return _DepthwiseConv.apply(images, weight, bias, stride, padding)
    return F.conv2d(images, weight, bias, stride, padding, 1, weight.shape[0])

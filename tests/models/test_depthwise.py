"""The depthwise convolution's batched-product weight gradient, and batch norms folded into convolutions."""

import pytest
import torch
import torch.nn.functional as F

from tscm.models.depthwise import depthwise_conv2d, small_map_weight_grad, uses_small_map_grad
from tscm.models.efficientnet_lite import ConvBnAct


@pytest.mark.parametrize("shape, kernel, stride, padding", [
    ((5, 12, 2, 4), 5, 1, 2),
    ((3, 8, 2, 4), 3, 1, 1),
    ((4, 6, 4, 8), 5, 1, 2),
    ((2, 5, 9, 17), 5, 2, 0),   # stride 2 on an input already padded the TensorFlow way
    ((2, 4, 3, 3), 3, 1, 0),
])
def test_small_map_weight_grad_is_the_library_gradient(shape, kernel, stride, padding):
    torch.manual_seed(0)
    images = torch.randn(shape)
    weight = torch.randn(shape[1], 1, kernel, kernel)
    grad_out = torch.randn_like(F.conv2d(images, weight, stride=stride, padding=padding, groups=shape[1]))
    expected = torch.nn.grad.conv2d_weight(images, weight.shape, grad_out, stride=stride, padding=padding,
                                           groups=shape[1])
    got = small_map_weight_grad(images, grad_out, kernel, stride, padding)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_depthwise_conv2d_matches_conv2d_forward_and_every_gradient():
    torch.manual_seed(1)
    images = torch.randn(6, 16, 2, 4, requires_grad=True)
    weight = torch.randn(16, 1, 5, 5, requires_grad=True)
    bias = torch.randn(16, requires_grad=True)
    assert uses_small_map_grad(images, weight, 1, 2)
    out = depthwise_conv2d(images, weight, bias, 1, 2)
    reference = F.conv2d(images, weight, bias, 1, 2, 1, 16)
    assert torch.equal(out, reference)  # the forward pass is the library's own
    grad_out = torch.randn_like(out)
    got = torch.autograd.grad(out, (images, weight, bias), grad_out)
    expected = torch.autograd.grad(reference, (images, weight, bias), grad_out)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


def test_the_library_path_is_kept_for_large_maps_inference_and_other_dtypes():
    weight = torch.randn(8, 1, 3, 3, requires_grad=True)
    assert not uses_small_map_grad(torch.randn(2, 8, 32, 64), weight, 1, 1)  # too many pixel pairs
    with torch.no_grad():
        assert not uses_small_map_grad(torch.randn(2, 8, 2, 4), weight, 1, 1)
    assert not uses_small_map_grad(torch.randn(2, 8, 2, 4, dtype=torch.float64), weight.double(), 1, 1)


@pytest.mark.parametrize("groups", [1, 8])
def test_a_batch_norm_on_running_statistics_is_folded_without_changing_outputs_or_gradients(groups):
    torch.manual_seed(2)
    block = ConvBnAct(8, 8, 3, stride=2, groups=groups)
    with torch.no_grad():  # statistics and affine values away from their defaults
        block.bn.running_mean.uniform_(-1, 1)
        block.bn.running_var.uniform_(0.5, 2)
        block.bn.weight.uniform_(0.5, 1.5)
        block.bn.bias.uniform_(-0.5, 0.5)
    block.eval()
    images = torch.randn(3, 8, 7, 9)
    folded = block(images)
    unfolded = block.act(block.bn(block.conv(images)))  # the three layers one after another
    torch.testing.assert_close(folded, unfolded, rtol=1e-5, atol=1e-5)

    grads = torch.autograd.grad(block(images).square().sum(), list(block.parameters()))
    reference = torch.autograd.grad(block.act(block.bn(block.conv(images))).square().sum(), list(block.parameters()))
    for g, e in zip(grads, reference):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)

    block.train()  # batch statistics: the layers run one after another and update the running statistics
    before = block.bn.running_mean.clone()
    block(images)
    assert not torch.equal(block.bn.running_mean, before)

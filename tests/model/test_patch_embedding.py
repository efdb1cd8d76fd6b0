"""PatchConv2d: a patch embedding as one matrix product, equal to the convolution it replaces."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pixtok import PixtokConfig, PixtokForConditionalGeneration
from pixtok.model.patch_embedding import PatchConv2d, is_patch_embedding, use_patch_matmul


def _output_and_grads(conv: nn.Conv2d, x: torch.Tensor):
    x = x.detach().requires_grad_(True)
    out = conv(x)
    grads = torch.autograd.grad(
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum(), [x, *conv.parameters()]
    )
    return out, grads


@pytest.mark.parametrize(
    ("channels", "width", "patch", "height", "breadth"),
    [(3, 24, 16, 64, 48), (3, 8, 14, 30, 45), (6, 16, 2, 8, 8), (5, 4, 1, 3, 7)],
)
def test_patch_matmul_equals_the_convolution(channels, width, patch, height, breadth) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(channels, width, patch, stride=patch)
    x = torch.randn(2, channels, height, breadth)
    expected, expected_grads = _output_and_grads(conv, x)
    assert use_patch_matmul(conv) == 1 and type(conv) is PatchConv2d
    out, grads = _output_and_grads(conv, x)
    assert out.shape == expected.shape  # sizes not divisible by the patch drop the remainder, as a conv does
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_output_is_a_channels_last_view_that_callers_reshape_without_copies() -> None:
    conv = PatchConv2d(3, 8, 4, stride=4)
    out = conv(torch.randn(2, 3, 16, 16))
    assert out.shape == (2, 8, 4, 4)
    assert out.permute(0, 2, 3, 1).is_contiguous()  # SAM's layout
    assert out.flatten(2).transpose(1, 2).is_contiguous()  # timm's NLC layout


def test_other_geometries_keep_the_convolution() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),  # padded
        nn.Conv2d(4, 4, 2, stride=1),  # kernel != stride
        nn.Conv2d(4, 4, 2, stride=2, groups=2),  # grouped
        nn.Conv2d(4, 4, 2, stride=2),  # a patch embedding
    )
    assert [is_patch_embedding(m) for m in model] == [False, False, False, True]
    x = torch.randn(1, 3, 9, 9)
    expected = model(x)
    assert use_patch_matmul(model) == 1
    assert [type(m) for m in model] == [nn.Conv2d, nn.Conv2d, nn.Conv2d, PatchConv2d]
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    assert use_patch_matmul(model, enable=False) == 1  # and back, for same-run comparisons
    assert [type(m) for m in model] == [nn.Conv2d] * 4
    # a PatchConv2d built with another geometry runs the convolution
    strided = PatchConv2d(3, 4, 3, stride=2, padding=1)
    torch.testing.assert_close(strided(x), nn.functional.conv2d(x, strided.weight, strided.bias, 2, 1))


def test_the_towers_embed_patches_by_matmul_and_keep_their_parameter_names() -> None:
    model = PixtokForConditionalGeneration(PixtokConfig.from_preset("tiny"))
    towers = model.model.towers
    sam_embed = towers.sam.vision_encoder.patch_embed.projection
    eva_embed = towers.eva.eva.patch_embed.proj
    assert type(sam_embed) is PatchConv2d and type(eva_embed) is PatchConv2d
    names = set(model.state_dict())
    assert "model.towers.sam.vision_encoder.patch_embed.projection.weight" in names
    assert "model.towers.eva.eva.patch_embed.proj.weight" in names

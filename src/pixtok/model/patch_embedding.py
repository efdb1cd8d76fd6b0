"""Patch embeddings (a convolution whose kernel equals its stride) computed as one matrix product.

A ViT's patch embedding is ``nn.Conv2d(C, D, kernel_size=p, stride=p)``: every output position
reads one p x p patch that no other position reads. With C = 3 image channels cuDNN has no tensor-core
kernel for it: on one H100, SAM-B's embedding of a batch of 32 images at 1024² (155 GFLOP) ran
as ``implicit_convolve_sgemm`` in 8.2 ms — 19 TFLOP/s, 4 % of a training step with online towers —
and EVA02-L's at 448² in 1.5 ms (``benchmarks/RESULTS.md``, twenty-first session).

The same sum is a matrix product: cut the image into its patches, ``(B·g_h·g_w, C·p·p)``, and
multiply by the kernel laid out as ``(D, C·p·p)``. :class:`PatchConv2d` is ``nn.Conv2d`` with that
forward when its geometry allows (kernel = stride, no padding, no dilation, one group) and the
convolution's otherwise; parameters, state dict and the output's shape are unchanged. The output is
the product's ``(B, g_h, g_w, D)`` viewed as ``(B, D, g_h, g_w)``, so callers that move channels
last (SAM's embedding) or flatten the grid (timm's) get their layout without a copy.

:func:`use_patch_matmul` switches the patch convolutions of a module built elsewhere (SAM by
transformers, EVA02 by timm) in place, and back with ``enable=False``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def is_patch_embedding(conv: nn.Conv2d) -> bool:
    """Whether ``conv``'s kernel equals its stride, with no padding, no dilation and one group."""
    return (
        tuple(conv.kernel_size) == tuple(conv.stride)
        and isinstance(conv.padding, tuple)
        and not any(conv.padding)
        and all(d == 1 for d in conv.dilation)
        and conv.groups == 1
    )


class PatchConv2d(nn.Conv2d):
    """``nn.Conv2d`` computed as one matrix product when it is a patch embedding (see the module
    docstring); any other geometry runs the convolution."""

    def forward(self, input: Tensor) -> Tensor:
        if not is_patch_embedding(self) or input.dim() != 4:
            return super().forward(input)
        batch, channels, height, width = input.shape
        kh, kw = self.kernel_size
        gh, gw = height // kh, width // kw  # a convolution drops the rows and columns past the last patch
        patches = (
            input[:, :, : gh * kh, : gw * kw]
            .reshape(batch, channels, gh, kh, gw, kw)
            .permute(0, 2, 4, 1, 3, 5)
            .reshape(batch * gh * gw, channels * kh * kw)
        )
        out = F.linear(patches, self.weight.reshape(self.out_channels, -1), self.bias)
        return out.reshape(batch, gh, gw, self.out_channels).permute(0, 3, 1, 2)


def use_patch_matmul(model: nn.Module, enable: bool = True) -> int:
    """Switch every ``nn.Conv2d`` of ``model`` whose kernel equals its stride (no padding, dilation or
    groups) to :class:`PatchConv2d`, in place; ``enable=False`` switches every :class:`PatchConv2d`
    back to ``nn.Conv2d`` (the benchmarks' same-run comparison). Returns how many were switched."""
    count = 0
    for module in model.modules():
        if enable and type(module) is nn.Conv2d and is_patch_embedding(module):
            module.__class__ = PatchConv2d
            count += 1
        elif not enable and type(module) is PatchConv2d:
            module.__class__ = nn.Conv2d
            count += 1
    return count

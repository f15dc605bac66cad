"""Exit heads, registered by kind (``sdedge train --head KIND``, ``--head-arg KEY=VALUE``).

Every head maps a section's feature map to ``embed(x)``: a pooled vector of the *deepest* section's
width (so BYOT's hint loss can compare it with the deepest feature), then ``fc`` to the logits.

============== ========================================================================================
kind           head on a section of ``C`` channels at stride ``s`` (deepest: ``C_K`` at ``s_K``)
============== ========================================================================================
bottleneck     default: 1×1 reduce to ``C/reduction``, ``log2(s_K/s)`` 3×3 stride-2 conv-BN-ReLU, 1×1 to
               ``C_K``, BN-ReLU, global average pool, FC
byot-authors   the BYOT authors' code (Zhang et al. 2019, ``branchBottleNeck``): 1×1 to ``C_K/4``-BN-ReLU,
               one ``k×k`` conv with stride ``k = s_K/s`` -BN-ReLU (the map shrinks to the deepest size in
               one step), 1×1 to ``C_K``-BN-ReLU, global average pool, FC
byot-attention the journal version (Zhang et al., TPAMI 2021, "Self-Distillation: Towards Efficient and
               Compact Neural Networks"): an attention mask (separable conv, stride 2 -BN-ReLU, bilinear
               upsampling back to the input's size, sigmoid) multiplied onto the feature, then
               ``log2(s_K/s)`` separable-conv stride-2 downsamplings (channels doubling, the last to
               ``C_K``), global average pool, FC
linear         global average pool and FC (the deepest exit; a 1×1 conv-BN-ReLU first when ``C != C_K``)
============== ========================================================================================

All are plain Conv/BN/ReLU/Sigmoid/Resize/Mul graphs and export to ONNX. In ``byot-attention`` the
BN that follows the attention's separable conv comes after a ReLU (as in the authors' code), so it
is not folded into a convolution and stays a ``BatchNormalization`` node in the exported section.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .registry import register_head


def _down_steps(in_stride: int, out_stride: int) -> int:
    """How many halvings take a map at ``in_stride`` to ``out_stride`` (0 when they are equal)."""
    ratio = max(1, out_stride // max(1, in_stride))
    return int(round(math.log2(ratio)))


def _pooled(x: torch.Tensor) -> torch.Tensor:
    """Global average pool to ``[B, C]``: the feature every head's FC reads."""
    return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)


class _Head(nn.Module):
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.embed(x))


@register_head("linear")
class LinearHead(_Head):
    """Global average pool and a linear classifier (the backbone's own classifier)."""

    def __init__(self, in_channels: int, in_stride: int, out_channels: int, out_stride: int,
                 num_classes: int) -> None:
        super().__init__()
        self.proj = nn.Identity() if in_channels == out_channels else nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU())
        self.fc = nn.Linear(out_channels, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return _pooled(self.proj(x))


@register_head("bottleneck")
class BottleneckHead(_Head):
    """BYOT bottleneck: 1×1 reduce, k×k stride-2 convs down to the deepest stride, 1×1 expand to the
    deepest width, BN+ReLU, global pool, FC."""

    def __init__(self, in_channels: int, in_stride: int, out_channels: int, out_stride: int,
                 num_classes: int, reduction: int = 2, kernel_size: int = 3) -> None:
        super().__init__()
        mid = max(8, in_channels // reduction)
        n_down = max(1, _down_steps(in_stride, out_stride))
        layers: list[nn.Module] = [nn.Conv2d(in_channels, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU()]
        for _ in range(n_down):
            layers += [nn.Conv2d(mid, mid, kernel_size, stride=2, padding=kernel_size // 2, bias=False),
                       nn.BatchNorm2d(mid), nn.ReLU()]
        layers += [nn.Conv2d(mid, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(out_channels, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return _pooled(self.body(x))


@register_head("byot-authors")
class ByotAuthorsHead(_Head):
    """The BYOT authors' exit head (``branchBottleNeck`` in their CIFAR ResNet code).

    1×1 conv to ``out_channels // reduction`` (4 in their code) -BN-ReLU; one ``k×k`` convolution with
    stride ``k = out_stride / in_stride`` (8, 4, 2 for the first three ResNet-18 sections), so the
    map reaches the deepest section's size in one step, -BN-ReLU; 1×1 conv to ``out_channels``
    -BN-ReLU; global average pool; FC. The convolutions carry no bias (each is followed by BN, which
    cancels a bias; the authors' 1×1 convolutions had one). A map whose side is not a multiple of
    ``k`` loses its last ``side mod k`` rows/columns in the strided conv (no padding, as in their code).
    """

    def __init__(self, in_channels: int, in_stride: int, out_channels: int, out_stride: int,
                 num_classes: int, reduction: int = 4) -> None:
        super().__init__()
        if reduction < 1:
            raise ValueError(f"byot-authors reduction must be >= 1, got {reduction}")
        mid = max(1, out_channels // reduction)
        k = 2 ** _down_steps(in_stride, out_stride)
        self.kernel_size = k
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
            nn.Conv2d(mid, mid, k, stride=k, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
            nn.Conv2d(mid, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU())
        self.fc = nn.Linear(out_channels, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return _pooled(self.body(x))


class SepConv(nn.Sequential):
    """The authors' separable convolution (from DARTS): depthwise 3×3 (stride) + 1×1 -BN-ReLU, depthwise
    3×3 + 1×1 to ``cout`` -BN-ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 2) -> None:
        super().__init__(
            nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.Conv2d(cin, cin, 1, bias=False),
            nn.BatchNorm2d(cin), nn.ReLU(),
            nn.Conv2d(cin, cin, 3, 1, 1, groups=cin, bias=False), nn.Conv2d(cin, cout, 1, bias=False),
            nn.BatchNorm2d(cout), nn.ReLU())


class AttentionMask(nn.Module):
    """``x * sigmoid(up(ReLU(BN(SepConv_s2(x)))))``: the journal version's attention module.

    The upsampling is bilinear (``align_corners=False``, as ``nn.Upsample(scale_factor=2)`` in the
    authors' code) to the input's own size, so odd sizes (7×7 on 28×28 inputs) work too.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.down = nn.Sequential(SepConv(channels, channels, 2), nn.BatchNorm2d(channels), nn.ReLU())

    def mask(self, x: torch.Tensor) -> torch.Tensor:
        a = nn.functional.interpolate(self.down(x), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return torch.sigmoid(a)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask(x)


@register_head("byot-attention")
class ByotAttentionHead(_Head):
    """The exit head of the journal version of self-distillation (Zhang et al., TPAMI 2021).

    :class:`AttentionMask` on the section's feature, then ``log2(out_stride / in_stride)`` stride-2
    :class:`SepConv` (one stride-1 SepConv when the strides are equal) whose channels double from
    ``in_channels`` (capped at ``out_channels``) and whose last one outputs ``out_channels``, global
    average pool (the authors' 4×4 average pool is global on CIFAR), FC.
    """

    def __init__(self, in_channels: int, in_stride: int, out_channels: int, out_stride: int,
                 num_classes: int) -> None:
        super().__init__()
        self.attention = AttentionMask(in_channels)
        n = _down_steps(in_stride, out_stride)
        layers: list[nn.Module] = []
        c = in_channels
        for j in range(max(1, n)):
            cout = out_channels if j == max(1, n) - 1 else min(out_channels, c * 2)
            layers.append(SepConv(c, cout, 2 if n else 1))
            c = cout
        self.scala = nn.Sequential(*layers)
        self.fc = nn.Linear(out_channels, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return _pooled(self.scala(self.attention(x)))

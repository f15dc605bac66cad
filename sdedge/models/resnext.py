"""CIFAR ResNeXt-29 (Xie et al. 2017): ``resnext29_8x64d`` and ``resnext29_16x64d``; three stages = three sections.

A 3×3 stem of ``width`` channels (64 in the paper) and three stages of three grouped-convolution
bottleneck blocks (1×1 reduce, 3×3 with ``cardinality`` groups carrying the stride, 1×1 expand,
plus shortcut, ReLU after the sum) at strides 1, 2, 4. Stage ``i`` outputs ``4·width·2^i`` channels
(256, 512, 1024 in the paper) and its grouped convolution is ``cardinality × d`` wide with
``d = base_width·(width/64)·2^i`` per group (the "64d" in the name is ``base_width``).

``width`` scales every channel count at once; ``base_width`` and ``cardinality`` change the grouped
convolution alone (``width=4, cardinality=2, base_width=16`` is a tiny test network). The blocks are
the CIFAR ResNet bottleneck blocks of :mod:`.resnet` with groups; each section's last ReLU (the one
after the last residual sum) is its pre-activation point.
"""
from __future__ import annotations

from .base import Backbone
from .registry import register_backbone
from .resnet import Bottleneck, cifar_resnet


def cifar_resnext(in_channels: int = 3, cardinality: int = 8, base_width: int = 64, width: int = 64,
                  blocks_per_stage: int = 3) -> Backbone:
    """ResNeXt-(9·blocks_per_stage+2) ``cardinality``×``base_width``d with a ``width``-channel stem."""
    if min(cardinality, base_width, width, blocks_per_stage) < 1:
        raise ValueError("ResNeXt cardinality, base_width, width and blocks_per_stage must be positive, got "
                         f"{cardinality}, {base_width}, {width}, {blocks_per_stage}")
    if width * base_width < 64:
        raise ValueError(f"ResNeXt width × base_width must be at least 64 (one channel per group), got "
                         f"{width} × {base_width}")
    bb = cifar_resnet(Bottleneck, [blocks_per_stage] * 3, in_channels, width,
                      groups=cardinality, base_width=base_width)
    bb.config = {"cardinality": cardinality, "base_width": base_width, "width": width,
                 "blocks_per_stage": blocks_per_stage}
    return bb


@register_backbone("resnext29_8x64d")
def resnext29_8x64d(in_channels: int = 3, width: int = 64, cardinality: int = 8, base_width: int = 64) -> Backbone:
    return cifar_resnext(in_channels, cardinality, base_width, width)


@register_backbone("resnext29_16x64d")
def resnext29_16x64d(in_channels: int = 3, width: int = 64, cardinality: int = 16,
                     base_width: int = 64) -> Backbone:
    return cifar_resnext(in_channels, cardinality, base_width, width)

"""Exit heads, registered by kind: ``bottleneck`` (BYOT, default) and ``linear`` (pool + FC).

Every head maps a section's feature map to ``embed(x)``: a pooled vector of the *deepest* section's
width (so BYOT's hint loss can compare it with the deepest feature), then ``fc`` to the logits.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .registry import register_head


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
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.proj(x), 1), 1)


@register_head("bottleneck")
class BottleneckHead(_Head):
    """BYOT bottleneck: 1×1 reduce, k×k stride-2 convs down to the deepest stride, 1×1 expand to the
    deepest width, BN+ReLU, global pool, FC."""

    def __init__(self, in_channels: int, in_stride: int, out_channels: int, out_stride: int,
                 num_classes: int, reduction: int = 2, kernel_size: int = 3) -> None:
        super().__init__()
        mid = max(8, in_channels // reduction)
        n_down = max(1, int(round(math.log2(max(1, out_stride // max(1, in_stride))))))
        layers: list[nn.Module] = [nn.Conv2d(in_channels, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU()]
        for _ in range(n_down):
            layers += [nn.Conv2d(mid, mid, kernel_size, stride=2, padding=kernel_size // 2, bias=False),
                       nn.BatchNorm2d(mid), nn.ReLU()]
        layers += [nn.Conv2d(mid, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(out_channels, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.body(x), 1), 1)

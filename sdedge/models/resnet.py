"""CIFAR ResNets as in the BYOT code: 3×3 stem, stride 1, no max-pool, four stages = four sections.

``resnet18/34`` use basic blocks, ``resnet50/101/152`` bottleneck blocks (expansion 4). ``width`` is
the stem width (64 in the paper); the stages have width, 2×, 4×, 8× channels at strides 1, 2, 4, 8.
"""
from __future__ import annotations

import torch
from torch import nn

from .base import Backbone
from .registry import register_backbone


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(cin, planes * self.expansion, stride)
        self.relu1 = nn.ReLU()
        self.relu_out = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu_out(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, groups: int = 1, base_width: int = 64) -> None:
        super().__init__()
        mid = int(planes * base_width / 64) * groups
        self.conv1 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.shortcut = _shortcut(cin, planes * self.expansion, stride)
        self.relu1, self.relu2, self.relu_out = nn.ReLU(), nn.ReLU(), nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu_out(out + self.shortcut(x))


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module:
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


def cifar_resnet(block: type, layers: list[int], in_channels: int, width: int = 64, **block_kw) -> Backbone:
    stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
    sections, channels, strides, preacts = [], [], [], []
    cin = width
    for i, (n, stride) in enumerate(zip(layers, (1, 2, 2, 2))):
        planes = width * 2 ** i
        blocks = []
        for j in range(n):
            blocks.append(block(cin, planes, stride if j == 0 else 1, **block_kw))
            cin = planes * block.expansion
        stage = nn.Sequential(stem, *blocks) if i == 0 else nn.Sequential(*blocks)
        sections.append(stage)
        channels.append(cin)
        strides.append(2 ** i)
        preacts.append(blocks[-1].relu_out)
    return Backbone(sections, channels, strides, preacts, {"width": width})


@register_backbone("resnet18")
def resnet18(in_channels: int = 3, width: int = 64) -> Backbone:
    return cifar_resnet(BasicBlock, [2, 2, 2, 2], in_channels, width)


@register_backbone("resnet34")
def resnet34(in_channels: int = 3, width: int = 64) -> Backbone:
    return cifar_resnet(BasicBlock, [3, 4, 6, 3], in_channels, width)


@register_backbone("resnet50")
def resnet50(in_channels: int = 3, width: int = 64) -> Backbone:
    return cifar_resnet(Bottleneck, [3, 4, 6, 3], in_channels, width)


@register_backbone("resnet101")
def resnet101(in_channels: int = 3, width: int = 64) -> Backbone:
    return cifar_resnet(Bottleneck, [3, 4, 23, 3], in_channels, width)


@register_backbone("resnet152")
def resnet152(in_channels: int = 3, width: int = 64) -> Backbone:
    return cifar_resnet(Bottleneck, [3, 8, 36, 3], in_channels, width)

"""A tiny three-section CNN for tests and the quickstart: conv-BN-ReLU stages at strides 1, 2, 4."""
from __future__ import annotations

from torch import nn

from .base import Backbone
from .registry import register_backbone


def _stage(cin: int, cout: int, stride: int) -> tuple[nn.Sequential, nn.ReLU]:
    relu = nn.ReLU()
    seq = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                        nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), relu)
    return seq, relu


@register_backbone("tiny")
def tiny(in_channels: int = 3, width: int = 8) -> Backbone:
    sections, channels, strides, preacts = [], [], [], []
    cin = in_channels
    for i, stride in enumerate((1, 2, 2)):
        cout = width * 2 ** i
        seq, relu = _stage(cin, cout, stride)
        sections.append(seq)
        channels.append(cout)
        strides.append(2 ** i)
        preacts.append(relu)
        cin = cout
    return Backbone(sections, channels, strides, preacts, {"width": width})

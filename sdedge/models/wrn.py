"""Wide residual networks (Zagoruyko & Komodakis 2016), CIFAR layout: three stages = three sections.

``wrn28_10``, ``wrn16_4`` and ``wrn40_4`` are WRN-depth-k: a 3×3 stem of ``width`` channels (16 in
the paper) and three stages of ``(depth - 4) / 6`` pre-activation wide basic blocks
(BN-ReLU-conv3×3-BN-ReLU-[dropout]-conv3×3 plus shortcut) with ``width·k``, ``2·width·k`` and
``4·width·k`` channels at strides 1, 2, 4. ``depth``, ``widen_factor`` (k), ``width`` and
``dropout`` can all be overridden, e.g. ``widen_factor=1, width=4`` for a tiny test network.

Pre-activation taps (feature distillation, Heo et al. 2019): blocks end in a plain residual sum that
no ReLU reads directly (the next block first normalises it), so the sign of the sum says nothing about
what the network switches off. The pre-ReLU feature of sections 1 and 2 is therefore the output of the
*next* BN before its ReLU: the first block of the next section's ``bn1``, as in Heo's WRN code
(``block2.layer[0].bn1(feat1)``). Its tap is that block's ``relu1``, captured by a forward pre-hook
(a copy is taken before the in-place ReLU runs) while the next section runs; it has the section's
output channels and spatial size (the BN precedes the block's strided conv). The last section ends
with the network's final BN-ReLU; that ReLU (not in-place) is its tap, the final BN's output its
pre-ReLU feature. The modules and the state dict are as before; only the tap points moved (before,
sections 1 and 2 tapped the raw residual sum through an identity, which the partial-L2 rule
"skip where student <= teacher <= 0" misread).
"""
from __future__ import annotations

import torch
from torch import nn

from .base import Backbone
from .registry import register_backbone


class WideBasic(nn.Module):
    """Pre-activation wide basic block; the 1×1 shortcut reads the pre-activated input when widths differ."""

    def __init__(self, cin: int, cout: int, stride: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.equal = cin == cout and stride == 1
        self.shortcut = None if self.equal else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.relu1(self.bn1(x))
        y = self.conv2(self.dropout(self.relu2(self.bn2(self.conv1(o)))))
        return y + (x if self.shortcut is None else self.shortcut(o))


def wide_resnet(in_channels: int = 3, depth: int = 28, widen_factor: int = 10, width: int = 16,
                dropout: float = 0.0) -> Backbone:
    """WRN-``depth``-``widen_factor`` with a stem of ``width`` channels (16 in the paper)."""
    if depth < 10 or (depth - 4) % 6:
        raise ValueError(f"WideResNet depth must be 6n+4 with n >= 1 (10, 16, 22, 28, 40, ...), got {depth}")
    if widen_factor < 1 or width < 1:
        raise ValueError(f"WideResNet widen_factor and width must be positive, got {widen_factor} and {width}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"WideResNet dropout must be in [0, 1), got {dropout}")
    n = (depth - 4) // 6
    stem = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
    sections: list[nn.Sequential] = []
    channels, strides = [], []
    cin = width
    for i in range(3):
        cout = width * widen_factor * 2 ** i
        layers: list[nn.Module] = [stem] if i == 0 else []
        for j in range(n):
            layers.append(WideBasic(cin, cout, 2 if (i > 0 and j == 0) else 1, dropout))
            cin = cout
        if i == 2:
            layers += [nn.BatchNorm2d(cout), nn.ReLU()]
        sections.append(nn.Sequential(*layers))
        channels.append(cout)
        strides.append(2 ** i)
    # pre-ReLU taps: the next BN-ReLU after each section (the next section's first bn1/relu1, the final BN/ReLU)
    preacts = [sections[1][0].relu1, sections[2][0].relu1, sections[2][-1]]
    bns = [sections[1][0].bn1, sections[2][0].bn1, sections[2][-2]]
    return Backbone(sections, channels, strides, preacts,
                    {"depth": depth, "widen_factor": widen_factor, "width": width, "dropout": dropout}, bns)


@register_backbone("wrn28_10")
def wrn28_10(in_channels: int = 3, depth: int = 28, widen_factor: int = 10, width: int = 16,
             dropout: float = 0.0) -> Backbone:
    return wide_resnet(in_channels, depth, widen_factor, width, dropout)


@register_backbone("wrn16_4")
def wrn16_4(in_channels: int = 3, depth: int = 16, widen_factor: int = 4, width: int = 16,
            dropout: float = 0.0) -> Backbone:
    return wide_resnet(in_channels, depth, widen_factor, width, dropout)


@register_backbone("wrn40_4")
def wrn40_4(in_channels: int = 3, depth: int = 40, widen_factor: int = 4, width: int = 16,
            dropout: float = 0.0) -> Backbone:
    return wide_resnet(in_channels, depth, widen_factor, width, dropout)

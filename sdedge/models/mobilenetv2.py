"""MobileNetV2 (Sandler et al. 2018), CIFAR variant, cut into four sections at the stride changes.

CIFAR layout (as in the common CIFAR ports): the 3×3 stem has stride 1 and the second bottleneck
stage (24 channels) stride 1 instead of 2, so 32×32 inputs end at 4×4. Inverted residual blocks:
1×1 expand (×t) -BN-ReLU6, 3×3 depthwise -BN-ReLU6, 1×1 linear projection -BN, plus the input when
stride is 1 and widths match. Sections (strides 1, 2, 4, 8):

1. stem, 16- and 24-channel stages      2. 32-channel stage
3. 64- and 96-channel stages            4. 160- and 320-channel stages, 1×1 conv to ``last_channels`` -BN-ReLU6

``width_mult`` scales the stage widths (rounded to multiples of 8, as in the paper's code);
``last_channels`` defaults to ``1280·max(1, width_mult)``. ``width`` is an alias for the stem width
(32 in the paper; ``width=w`` means ``width_mult=w/32``) so ``sdedge train --width`` works here too.

Pre-activation taps (feature distillation, Heo et al. 2019): sections 1-3 end in a linear bottleneck
(projection BN, plus the input on residual blocks) that no ReLU reads, so its sign says nothing about
what the network switches off. Their pre-ReLU feature is, as in Heo's MobileNetV2 code, the output of
the next block's 1×1 expansion BN before its ReLU6 (the next section's first block; its ReLU6 is the
tap, captured by a forward pre-hook while the next section runs, a copy taken before the in-place
ReLU6). It has the section's spatial size (the expansion is 1×1, stride 1; the stride is in the
depthwise conv after it) but ``t = 6`` times the section's channels: ``MultiExitNet.preact_channels``
says so. Section 4's tap is its final ReLU6 (not in-place); its input is the last BN's output. The
partial-L2 rule "skip where student <= teacher <= 0" is exact for ReLU6's lower clip; its upper clip
at 6 is ignored, as in Heo's code. The modules and the state dict are as before; only the tap points
moved (before, sections 1-3 tapped the linear bottleneck through an identity).
"""
from __future__ import annotations

import torch
from torch import nn

from .base import Backbone
from .registry import register_backbone

# (expansion t, output channels c, blocks n, first stride s); the 24-channel stage has s=1 on CIFAR.
_CFG = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
_SECTION_OF_STAGE = [0, 0, 1, 2, 2, 3, 3]


def _divisible(v: float, divisor: int = 8) -> int:
    """Round ``v`` to the nearest multiple of ``divisor``, not going below 90 % of ``v`` (paper's code)."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def _conv_bn_act(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(cout)]
    return layers + [nn.ReLU6(inplace=True)] if act else layers


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers = _conv_bn_act(cin, hidden, 1) if expand != 1 else []
        layers += _conv_bn_act(hidden, hidden, 3, stride, groups=hidden)
        layers += _conv_bn_act(hidden, cout, 1, act=False)
        self.body = nn.Sequential(*layers)
        self.expand = expand
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


@register_backbone("mobilenetv2")
def mobilenetv2(in_channels: int = 3, width_mult: float = 1.0, width: int | None = None,
                last_channels: int | None = None) -> Backbone:
    if width is not None:
        if width_mult != 1.0:
            raise ValueError(f"give MobileNetV2 either width (stem channels) or width_mult, not both "
                             f"(got width={width}, width_mult={width_mult})")
        if width < 1:
            raise ValueError(f"MobileNetV2 width must be positive, got {width}")
        width_mult = width / 32
    if width_mult <= 0:
        raise ValueError(f"MobileNetV2 width_mult must be positive, got {width_mult}")
    last = last_channels if last_channels is not None else _divisible(1280 * max(1.0, width_mult))
    if last < 1:
        raise ValueError(f"MobileNetV2 last_channels must be positive, got {last}")
    stem_c = _divisible(32 * width_mult)
    parts: list[list[nn.Module]] = [[*_conv_bn_act(in_channels, stem_c, 3)], [], [], []]
    cin = stem_c
    for (t, c, n, s), sec in zip(_CFG, _SECTION_OF_STAGE):
        cout = _divisible(c * width_mult)
        for j in range(n):
            parts[sec].append(InvertedResidual(cin, cout, s if j == 0 else 1, t))
            cin = cout
    sections: list[nn.Sequential] = []
    channels = []
    for k, layers in enumerate(parts):
        if k < 3:
            channels.append(layers[-1].body[-1].num_features)
        else:
            layers += [nn.Conv2d(cin, last, 1, bias=False), nn.BatchNorm2d(last), nn.ReLU6()]
            channels.append(last)
        sections.append(nn.Sequential(*layers))
    # pre-ReLU taps: the next section's first block's expansion BN -> ReLU6 (body[1], body[2]); the final BN/ReLU6
    nxt = [sections[k + 1][0] for k in range(3)]
    if any(b.expand == 1 for b in nxt):  # not in _CFG: without an expansion, body[1:3] is the strided depthwise's
        raise AssertionError("a MobileNetV2 section must start with an expanding block")
    preacts = [b.body[2] for b in nxt] + [sections[3][-1]]
    bns = [b.body[1] for b in nxt] + [sections[3][-2]]
    return Backbone(sections, channels, [1, 2, 4, 8], preacts,
                    {"width_mult": width_mult, "last_channels": last}, bns)

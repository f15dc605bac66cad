"""CIFAR VGG with batch norm (``vgg11_bn``, ``vgg16_bn``, ``vgg19_bn``), cut into sections at the pools.

Five blocks of 3×3 conv-BN-ReLU layers with a 2×2 max-pool between blocks (the CIFAR variant: no
pool after the last block and no 4096-wide FC layers; the linear exit head pools globally and is the
classifier). A section starts with the pool that precedes its block, so the five blocks sit at
strides 1, 2, 4, 8, 16.

``num_sections=4`` (default) keeps the first two blocks in one section: a classifier after the
first block (one or two convolutions at full resolution) is too shallow to be worth an exit, and four
sections match the CIFAR ResNets. ``num_sections=5`` gives one section per block. ``width`` is the
first block's width (64 in the paper); the blocks have width, 2×, 4×, 8×, 8× channels.

Every section ends in conv-BN-ReLU; that last ReLU (not in-place) is the section's pre-activation
point. Spatial size only shrinks by floor-halving pools, so 16×16, 28×28 and 32×32 inputs all work
(a 28×28 input reaches 1×1 in the last block).
"""
from __future__ import annotations

from torch import nn

from .base import Backbone
from .registry import register_backbone

# Conv widths per block at width 64 (the "M" pools between blocks are implied).
_CFGS: dict[str, list[list[int]]] = {
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "vgg19": [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
}


def _block(cin: int, widths: list[int], pool: bool) -> tuple[list[nn.Module], int, nn.ReLU]:
    layers: list[nn.Module] = [nn.MaxPool2d(2, 2)] if pool else []
    relu = nn.ReLU()
    for k, c in enumerate(widths):
        layers += [nn.Conv2d(cin, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c),
                   relu if k == len(widths) - 1 else nn.ReLU(inplace=True)]
        cin = c
    return layers, cin, relu


def cifar_vgg(name: str, in_channels: int = 3, width: int = 64, num_sections: int = 4) -> Backbone:
    """Build CIFAR VGG-BN ``name`` (a key of the config table) with ``num_sections`` (4 or 5) sections."""
    if num_sections not in (4, 5):
        raise ValueError(f"VGG num_sections must be 4 or 5, got {num_sections}")
    if width < 1:
        raise ValueError(f"VGG width must be a positive integer, got {width}")
    blocks = [[max(1, c * width // 64) for c in b] for b in _CFGS[name]]
    sections: list[nn.Module] = []
    channels, strides, preacts = [], [], []
    cin = in_channels
    pending: list[nn.Module] = []  # layers of blocks merged into the next section
    for i, widths in enumerate(blocks):
        layers, cin, relu = _block(cin, widths, pool=i > 0)
        pending += layers
        if num_sections == 4 and i == 0:
            continue
        sections.append(nn.Sequential(*pending))
        pending = []
        channels.append(cin)
        strides.append(2 ** i)
        preacts.append(relu)
    return Backbone(sections, channels, strides, preacts,
                    {"arch": f"{name}_bn", "width": width, "num_sections": num_sections})


@register_backbone("vgg11_bn")
def vgg11_bn(in_channels: int = 3, width: int = 64, num_sections: int = 4) -> Backbone:
    return cifar_vgg("vgg11", in_channels, width, num_sections)


@register_backbone("vgg13_bn")
def vgg13_bn(in_channels: int = 3, width: int = 64, num_sections: int = 4) -> Backbone:
    return cifar_vgg("vgg13", in_channels, width, num_sections)


@register_backbone("vgg16_bn")
def vgg16_bn(in_channels: int = 3, width: int = 64, num_sections: int = 4) -> Backbone:
    return cifar_vgg("vgg16", in_channels, width, num_sections)


@register_backbone("vgg19_bn")
def vgg19_bn(in_channels: int = 3, width: int = 64, num_sections: int = 4) -> Backbone:
    return cifar_vgg("vgg19", in_channels, width, num_sections)

"""Rebuild a structurally pruned network from its weights: layer widths read from the state dict.

A pruned checkpoint records the architecture it was pruned from (``ModelConfig`` with
``pruned=True``) and the weights of the smaller network. :func:`fit_to_state_dict` builds the
original network, then shrinks every convolution, batch norm and linear layer to the shapes the
state dict holds, so the result loads strictly and runs exactly as the pruned network did. Nothing
but tensors is read: no pickled module (``torch.load(weights_only=True)`` stays possible), no
dependency on the pruning library at export or inference time.

Depthwise convolutions (``groups == in_channels == out_channels``) stay depthwise; other grouped
convolutions keep their group count and must be pruned per group (checked).
"""
from __future__ import annotations

import torch
from torch import nn

from .base import MultiExitNet


def _resize_conv(m: nn.Conv2d, w: torch.Tensor, has_bias: bool) -> nn.Conv2d:
    out_c, in_per_group = int(w.shape[0]), int(w.shape[1])
    depthwise = m.groups > 1 and m.groups == m.in_channels == m.out_channels
    groups = out_c if depthwise else m.groups
    in_c = in_per_group * groups
    if out_c % groups:
        raise ValueError(f"a grouped convolution ({m.groups} groups) cannot have {out_c} output channels")
    new = nn.Conv2d(in_c, out_c, m.kernel_size, m.stride, m.padding, m.dilation, groups, has_bias, m.padding_mode)
    return new.to(device=m.weight.device, dtype=m.weight.dtype)


def _resize_bn(m: nn.BatchNorm2d, n: int) -> nn.BatchNorm2d:
    new = nn.BatchNorm2d(n, m.eps, m.momentum, m.affine, m.track_running_stats)
    return new.to(device=m.weight.device if m.weight is not None else "cpu")


def _resize_linear(m: nn.Linear, w: torch.Tensor, has_bias: bool) -> nn.Linear:
    return nn.Linear(int(w.shape[1]), int(w.shape[0]), has_bias).to(device=m.weight.device, dtype=m.weight.dtype)


def fit_to_state_dict(net: MultiExitNet, state_dict: dict[str, torch.Tensor], in_channels: int,
                      image_size: tuple[int, int]) -> MultiExitNet:
    """Shrink ``net``'s layers in place to the shapes in ``state_dict``; returns ``net`` (weights not loaded).

    Also updates ``net.section_channels`` from a forward pass of one ``in_channels × image_size`` image,
    so losses and export see the pruned widths.
    """
    replacements: list[tuple[str, nn.Module]] = []
    for name, m in net.named_modules():
        prefix = f"{name}." if name else ""
        w = state_dict.get(prefix + "weight")
        if isinstance(m, nn.Conv2d) and w is not None and tuple(w.shape) != tuple(m.weight.shape):
            replacements.append((name, _resize_conv(m, w, prefix + "bias" in state_dict)))
        elif isinstance(m, nn.BatchNorm2d):
            ref = state_dict.get(prefix + "running_mean", w)
            if ref is not None and int(ref.shape[0]) != m.num_features:
                replacements.append((name, _resize_bn(m, int(ref.shape[0]))))
        elif isinstance(m, nn.Linear) and w is not None and tuple(w.shape) != tuple(m.weight.shape):
            replacements.append((name, _resize_linear(m, w, prefix + "bias" in state_dict)))
    for name, new in replacements:
        parent_name, _, attr = name.rpartition(".")
        parent = net.get_submodule(parent_name) if parent_name else net
        setattr(parent, attr, new)
    refresh_section_channels(net, in_channels, image_size)
    return net


def refresh_section_channels(net: MultiExitNet, in_channels: int, image_size: tuple[int, int]) -> list[int]:
    """Set ``net.section_channels`` to the channel count each section really outputs (one forward pass)."""
    h, w = image_size
    p = next(net.parameters())
    x = torch.zeros(1, in_channels, h, w, device=p.device, dtype=p.dtype)
    channels = []
    was_training = net.training
    net.eval()
    with torch.no_grad():
        for s in net.sections:
            x = s(x)
            channels.append(int(x.shape[1]))
    net.train(was_training)
    net.section_channels = channels
    return channels

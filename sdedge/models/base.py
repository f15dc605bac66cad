"""The multi-exit network every backbone family is assembled into.

A backbone family (one file each) returns a :class:`Backbone`: its sections (split points), each
section's output channels and total stride, and for each section the ReLU whose *input* is the
section's pre-activation output (what feature distillation reads). :class:`MultiExitNet` puts an exit
head after every section but the last and the backbone's own pooled classifier after the last.

Interface (``shared/DESIGN.md`` section 2)::

    out = model(x)                       # MultiExitOutput: logits and pooled features per exit
    f = model.sections[i](f)             # run section by section
    logits_i = model.exits[i](f)
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .registry import get_head


@dataclass
class Backbone:
    sections: list[nn.Module]
    channels: list[int]  # output channels of each section
    strides: list[int]  # total stride of each section's output w.r.t. the input image
    preacts: list[nn.Module | None] = field(default_factory=list)  # ReLU after each section's last sum/BN
    config: dict = field(default_factory=dict)


@dataclass
class MultiExitOutput:
    logits: list[torch.Tensor]  # per exit, shallow to deep: [B, num_classes]
    features: list[torch.Tensor]  # per exit, the pooled vector the exit's FC sees: [B, D_last]
    preacts: list[torch.Tensor] | None = None  # per section, pre-ReLU feature maps (feature KD)


class MultiExitNet(nn.Module):
    def __init__(self, backbone: Backbone, num_classes: int, head: str = "bottleneck",
                 head_kwargs: dict | None = None) -> None:
        super().__init__()
        n = len(backbone.sections)
        if n < 1 or not (len(backbone.channels) == len(backbone.strides) == n):
            raise ValueError("backbone must declare channels and strides for every section")
        self.sections = nn.ModuleList(backbone.sections)
        self.section_channels = list(backbone.channels)
        self.section_strides = list(backbone.strides)
        self.num_classes = num_classes
        last_c, last_s = backbone.channels[-1], backbone.strides[-1]
        head_cls, final_cls = get_head(head), get_head("linear")
        exits = [head_cls(c, s, last_c, last_s, num_classes, **(head_kwargs or {}))
                 for c, s in zip(backbone.channels[:-1], backbone.strides[:-1])]
        exits.append(final_cls(last_c, last_s, last_c, last_s, num_classes))
        self.exits = nn.ModuleList(exits)
        self._preact_modules = list(backbone.preacts) if backbone.preacts else [None] * n

    @property
    def num_exits(self) -> int:
        return len(self.sections)

    @property
    def feature_dim(self) -> int:
        return self.section_channels[-1]

    def forward(self, x: torch.Tensor, return_preacts: bool = False) -> MultiExitOutput:
        captured: list[torch.Tensor | None] = [None] * self.num_exits
        handles = []
        if return_preacts:
            for i, m in enumerate(self._preact_modules):
                if m is None:
                    raise RuntimeError("this backbone does not declare pre-activation points")
                handles.append(m.register_forward_pre_hook(
                    lambda _m, args, i=i: captured.__setitem__(i, args[0].clone())))
        try:
            logits, feats = [], []
            for section, head in zip(self.sections, self.exits):
                x = section(x)
                emb = head.embed(x)
                feats.append(emb)
                logits.append(head.fc(emb))
        finally:
            for h in handles:
                h.remove()
        return MultiExitOutput(logits, feats, captured if return_preacts else None)

    def forward_exits(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.forward(x).logits


class SectionWithExit(nn.Module):
    """Section ``k`` plus its exit head: ``features_{k-1} -> (features_k, logits_k)`` (export unit)."""

    def __init__(self, model: MultiExitNet, index: int) -> None:
        super().__init__()
        self.section = model.sections[index]
        self.exit = model.exits[index]
        self.last = index == model.num_exits - 1

    def forward(self, x: torch.Tensor):
        f = self.section(x)
        logits = self.exit(f)
        return logits if self.last else (f, logits)


class DeepestExit(nn.Module):
    """The whole network to the deepest exit as one module (``full.onnx``)."""

    def __init__(self, model: MultiExitNet) -> None:
        super().__init__()
        self.sections = model.sections
        self.head = model.exits[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for s in self.sections:
            x = s(x)
        return self.head(x)

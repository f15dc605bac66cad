"""The multi-exit network every backbone family is assembled into.

A backbone family (one file each) returns a :class:`Backbone`: its sections (split points), each
section's output channels and total stride, and for each section the ReLU (or ReLU6) whose *input* is
the section's pre-activation feature (what feature distillation reads: Heo et al. 2019's pre-ReLU
feature, the tensor that the next ReLU would switch off where it is negative). :class:`MultiExitNet`
puts an exit head after every section but the last and the backbone's own pooled classifier after the
last.

Which tensor is a section's pre-ReLU feature depends on the family (each family's docstring says):

* post-activation nets (tiny, VGG, ResNet, ResNeXt): the input of the section's own last ReLU; a BN
  output in tiny/VGG, the residual sum ``BN + shortcut`` in ResNet/ResNeXt, as in Heo's ResNet code;
* pre-activation WRN: the section output is a raw residual sum that no ReLU reads directly; its
  pre-ReLU feature is the *next* BN-ReLU's BN output: the first block of the next section's ``bn1``
  (its ReLU is the tap, so the capture happens while the next section runs), and the final BN for the
  last section (Heo's WRN code);
* MobileNetV2: sections end in a linear bottleneck; the tap is the next block's 1×1 expansion BN
  before its ReLU6 (Heo's MobileNetV2 code), so it has the expansion's channels (``t×`` the
  section's) at the section's spatial size.

``Backbone.preact_bns`` names the BatchNorm whose output each tap reads (``None`` where the tap is a
residual sum); :attr:`MultiExitNet.preact_channels` gives the taps' channel counts (what a feature
distillation connector must take), looked up by module name so it follows layers that pruning
replaces.

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
    preacts: list[nn.Module | None] = field(default_factory=list)  # the ReLU reading each section's pre-ReLU feature
    config: dict = field(default_factory=dict)
    preact_bns: list[nn.Module | None] = field(default_factory=list)  # the BN each tap reads; None: a residual sum


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
        names = {id(m): name for name, m in self.named_modules()}
        bns = list(backbone.preact_bns) if backbone.preact_bns else [None] * n
        if len(bns) != n or any(b is not None and id(b) not in names for b in bns):
            raise ValueError("backbone.preact_bns must name one BatchNorm of the network (or None) per section")
        self._preact_bn_names: list[str | None] = [None if b is None else names[id(b)] for b in bns]

    @property
    def num_exits(self) -> int:
        return len(self.sections)

    @property
    def preact_channels(self) -> list[int]:
        """Channels of each section's pre-ReLU tap (``forward(x, return_preacts=True).preacts[i].shape[1]``).

        The section's output channels except where the tap is another width's BN output (MobileNetV2:
        the next block's expansion); read from the BN module by name, so pruned widths are seen.
        """
        return [c if name is None else int(self.get_submodule(name).num_features)
                for name, c in zip(self._preact_bn_names, self.section_channels)]

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
        if return_preacts and any(c is None for c in captured):
            missing = [i + 1 for i, c in enumerate(captured) if c is None]
            raise RuntimeError(f"the pre-activation taps of sections {missing} did not run in forward")
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

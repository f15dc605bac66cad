"""Backbones with sections and exit heads; :func:`build_model` assembles one from a config dict.

The families register themselves by name in :mod:`.registry` when imported; this package imports them
all (the timm pattern: the registry imports no family), so importing anything from ``sdedge.models``
fills the registries. Add a backbone family as one module calling ``@register_backbone`` and one import
line below.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .base import Backbone, DeepestExit, MultiExitNet, MultiExitOutput, SectionWithExit
from .registry import get_backbone, get_head, list_backbones, list_heads, register_backbone, register_head

# The families, each registering itself on import (heads first: models are built with them).
from . import heads, mobilenetv2, resnet, resnext, tiny, vgg, wrn  # noqa: F401


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model; stored in checkpoints as ``meta['model']``."""

    backbone: str
    num_classes: int
    in_channels: int
    image_size: tuple[int, int]
    head: str = "bottleneck"
    backbone_kwargs: dict = field(default_factory=dict)
    head_kwargs: dict = field(default_factory=dict)
    pruned: bool = False  # structurally pruned: layer widths come from the weights (see :mod:`.reshape`)

    def to_json(self) -> dict:
        d = asdict(self)
        d["image_size"] = list(self.image_size)
        if not self.pruned:
            del d["pruned"]  # unpruned checkpoints read the same in older versions
        return d

    @classmethod
    def from_json(cls, d: dict) -> "ModelConfig":
        d = dict(d)
        d["image_size"] = tuple(d["image_size"])
        d["pruned"] = bool(d.get("pruned", False))
        return cls(**d)


def build_model(cfg: ModelConfig, state_dict: dict | None = None) -> MultiExitNet:
    """The multi-exit network ``cfg`` describes (randomly initialised; load a state dict into it).

    A pruned config (``cfg.pruned``) needs the ``state_dict`` whose shapes give its layer widths.
    """
    backbone: Backbone = get_backbone(cfg.backbone)(in_channels=cfg.in_channels, **cfg.backbone_kwargs)
    net = MultiExitNet(backbone, cfg.num_classes, head=cfg.head, head_kwargs=cfg.head_kwargs)
    if cfg.pruned:
        if state_dict is None:
            raise ValueError("a pruned model's layer widths come from its weights: pass the state dict")
        from .reshape import fit_to_state_dict

        fit_to_state_dict(net, state_dict, cfg.in_channels, tuple(cfg.image_size))
    return net


__all__ = ["Backbone", "DeepestExit", "ModelConfig", "MultiExitNet", "MultiExitOutput", "SectionWithExit",
           "build_model", "get_backbone", "get_head", "list_backbones", "list_heads", "register_backbone",
           "register_head"]

"""Registries of backbone families and exit-head kinds, looked up by name (the timm pattern)."""
from __future__ import annotations

from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable)

_BACKBONES: dict[str, Callable] = {}
_HEADS: dict[str, Callable] = {}


def register_backbone(name: str) -> Callable[[F], F]:
    """Register a function ``(in_channels: int, **kwargs) -> Backbone`` under ``name``."""

    def deco(fn: F) -> F:
        if name in _BACKBONES:
            raise ValueError(f"backbone {name!r} is registered twice")
        _BACKBONES[name] = fn
        return fn

    return deco


def register_head(name: str) -> Callable[[F], F]:
    """Register an exit-head class ``(in_channels, in_stride, out_channels, out_stride, num_classes)``."""

    def deco(cls: F) -> F:
        if name in _HEADS:
            raise ValueError(f"head kind {name!r} is registered twice")
        _HEADS[name] = cls
        return cls

    return deco


def _ensure_loaded() -> None:
    # Importing the family modules fills the registries (one family per file).
    from . import heads, mobilenetv2, resnet, resnext, tiny, vgg, wrn  # noqa: F401


def get_backbone(name: str) -> Callable:
    _ensure_loaded()
    try:
        return _BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; choose one of: {', '.join(sorted(_BACKBONES))}") from None


def get_head(name: str) -> Callable:
    _ensure_loaded()
    try:
        return _HEADS[name]
    except KeyError:
        raise ValueError(f"unknown exit head {name!r}; choose one of: {', '.join(sorted(_HEADS))}") from None


def list_backbones() -> list[str]:
    _ensure_loaded()
    return sorted(_BACKBONES)


def list_heads() -> list[str]:
    _ensure_loaded()
    return sorted(_HEADS)

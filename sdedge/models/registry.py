"""Registries of backbone families and exit-head kinds, looked up by name (the timm pattern).

This module imports no family: each family module registers itself with :func:`register_backbone` /
:func:`register_head` when it is imported, and the package ``sdedge.models`` imports every family, so
any ``from sdedge.models import ...`` (or ``import sdedge.models.<anything>``) sees them all. A new
family is one file here plus one line in ``sdedge/models/__init__.py``.
"""
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


def get_backbone(name: str) -> Callable:
    """The backbone function registered under ``name`` (``ValueError`` listing the names otherwise)."""
    try:
        return _BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; choose one of: {', '.join(sorted(_BACKBONES))}") from None


def get_head(name: str) -> Callable:
    """The exit-head class registered under ``name`` (``ValueError`` listing the kinds otherwise)."""
    try:
        return _HEADS[name]
    except KeyError:
        raise ValueError(f"unknown exit head {name!r}; choose one of: {', '.join(sorted(_HEADS))}") from None


def list_backbones() -> list[str]:
    """Names of the registered backbones, sorted."""
    return sorted(_BACKBONES)


def list_heads() -> list[str]:
    """Names of the registered exit-head kinds, sorted."""
    return sorted(_HEADS)

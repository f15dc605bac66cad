"""Registries of backbone families and exit-head kinds, looked up by name (the timm pattern).

This module imports no family: each family module registers itself with :func:`register_backbone` /
:func:`register_head` when it is imported, and the package ``sdedge.models`` imports every family, so
any ``from sdedge.models import ...`` (or ``import sdedge.models.<anything>``) sees them all. A new
family is one file here plus one line in ``sdedge/models/__init__.py``.
"""
from __future__ import annotations

from typing import Callable

from ..common.registry import Registry

BACKBONES: Registry[Callable] = Registry("backbone")
HEADS: Registry[Callable] = Registry("exit head")


def register_backbone(name: str) -> Callable[[Callable], Callable]:
    """Register a function ``(in_channels: int, **kwargs) -> Backbone`` under ``name``."""
    return BACKBONES.register(name)


def register_head(name: str) -> Callable[[Callable], Callable]:
    """Register an exit-head class ``(in_channels, in_stride, out_channels, out_stride, num_classes)``."""
    return HEADS.register(name)


def get_backbone(name: str) -> Callable:
    """The backbone function registered under ``name`` (``ValueError`` listing the names otherwise)."""
    return BACKBONES.get(name)


def get_head(name: str) -> Callable:
    """The exit-head class registered under ``name`` (``ValueError`` listing the kinds otherwise)."""
    return HEADS.get(name)


def list_backbones() -> list[str]:
    """Names of the registered backbones, sorted."""
    return BACKBONES.names()


def list_heads() -> list[str]:
    """Names of the registered exit-head kinds, sorted."""
    return HEADS.names()

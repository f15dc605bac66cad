"""Named registries (the timm pattern): backbones, exit heads, loss terms and methods are looked up here.

A registry maps names to objects; registering a name twice is a bug (``ValueError``), and looking up an
unknown name is a ``ValueError`` that lists the registered ones. The module that defines a registry
imports none of the things registered in it; each registers itself when its own module is imported.
"""
from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Objects of one ``kind`` (used in messages: "unknown backbone 'x'") by name, in registration order."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def add(self, name: str, obj: T) -> T:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._items[name] = obj
        return obj

    def register(self, name: str) -> Callable[[T], T]:
        """A decorator that registers the decorated function or class under ``name``."""
        return lambda obj: self.add(name, obj)

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise ValueError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

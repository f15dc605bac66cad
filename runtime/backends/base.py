"""The one small interface every inference backend implements.

A backend owns one loaded engine/session per section of a bundle and runs them on buffers that stay
on the backend's device: :meth:`Backend.upload` moves the (preprocessed, float32, NCHW) input batch
there once, :meth:`Backend.run_section` returns the section's features as an opaque device handle
(``None`` after the last section) and its exit logits as a host ``float32`` numpy array of shape
``[B, num_classes]``, and :meth:`Backend.take_rows` shrinks a device handle to the rows still going on.
Only logits ever come back to the host.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..errors import BackendError


@dataclass
class BackendOptions:
    """Options common to every backend; backend-specific ones go in ``extra``."""

    precision: str = "fp32"  # fp32 | fp16 (TensorRT) | int8
    intra_op_threads: int | None = None  # None = backend default
    providers: Sequence[str] | None = None  # ONNX Runtime execution providers, in order of preference
    max_batch: int = 64
    extra: dict[str, Any] = field(default_factory=dict)


class Backend(abc.ABC):
    """Runs a bundle's sections one at a time on one device."""

    name: str = "base"

    @property
    @abc.abstractmethod
    def num_sections(self) -> int: ...

    @property
    def device_name(self) -> str:
        """A filesystem-safe name of the device and backend, used for latency profile files."""
        return self.name

    @abc.abstractmethod
    def upload(self, x: np.ndarray) -> Any:
        """Put a float32 NCHW host batch on the device; returns a handle for :meth:`run_section`."""

    @abc.abstractmethod
    def run_section(self, index: int, x: Any) -> tuple[Any | None, np.ndarray]:
        """Run 1-based section ``index`` on handle ``x``; return (features handle or None, host logits)."""

    @abc.abstractmethod
    def take_rows(self, x: Any, rows: np.ndarray) -> Any:
        """Keep only ``rows`` (int indices) of the batch held by handle ``x``."""

    def run_reference(self, x: np.ndarray) -> np.ndarray:
        """Run the bundle's single-graph reference (``full.onnx``) on a host batch; return host logits.

        Optional (benchmarks compare it with the chained sections); raises :class:`BackendError` where
        the backend or the bundle has no reference.
        """
        raise BackendError(f"backend {self.name!r} cannot run the full.onnx reference")

    def close(self) -> None:
        """Release device memory and sessions."""

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

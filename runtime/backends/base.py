"""The one small interface every inference backend implements.

A backend owns one loaded engine/session per section of a bundle and runs them on buffers that stay
on the backend's device: :meth:`Backend.upload` moves the (preprocessed, float32, NCHW) input batch
there once, :meth:`Backend.run_section` returns the section's features as an opaque device handle
(``None`` after the last section) and its exit logits as a host ``float32`` numpy array of shape
``[B, num_classes]`` that the caller owns (a backend never reuses it), and :meth:`Backend.take_rows`
shrinks a device handle to the rows still going on. Only logits ever come back to the host.

:meth:`Backend.run_chain` is the one loop that runs sections back to back without deciding anything
(warm-up, profiling, every exit's logits, parity probes, benchmarks); the session's decision loop
(:mod:`sdedge.runtime.session`) is the only other caller of :meth:`Backend.run_section`. On a bundle whose
exit heads are graphs of their own (format version 2) a backend says :attr:`Backend.split_heads`, and the
decision loop then runs :meth:`Backend.run_trunk` and, only where it needs that exit's logits,
:meth:`Backend.run_head`; :meth:`Backend.run_section` still runs both. A backend may also
load the bundle's ``full.onnx`` (:attr:`Backend.has_full`, :meth:`Backend.run_full`): the session answers a
call with no policy from it.
"""
from __future__ import annotations

import abc
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from ...common.errors import BackendError


@dataclass
class BackendOptions:
    """Options common to every backend; backend-specific ones go in ``extra``."""

    precision: str = "fp32"  # fp32 | fp16 (TensorRT) | int8
    intra_op_threads: int | None = None  # None = backend default
    providers: Sequence[str] | None = None  # ONNX Runtime execution providers, in order of preference
    max_batch: int = 64
    full_graph: bool = False  # also load the bundle's full.onnx where the backend can (Backend.run_full)
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

    @property
    def split_heads(self) -> bool:
        """Whether the exit heads of sections 1..K-1 run apart from their trunks (:meth:`run_trunk`,
        :meth:`run_head`): a format version 2 bundle on a backend that loads its head graphs."""
        return False

    def run_trunk(self, index: int, x: Any) -> Any:
        """Section ``index`` (< K) without its exit head: its features handle (when :attr:`split_heads`)."""
        raise BackendError(f"the {self.name} backend runs every section with its exit head (no split heads)")

    def run_head(self, index: int, features: Any) -> np.ndarray:
        """Exit ``index``'s head on the features handle :meth:`run_trunk` returned: host logits (when
        :attr:`split_heads`)."""
        raise BackendError(f"the {self.name} backend runs every section with its exit head (no split heads)")

    @abc.abstractmethod
    def take_rows(self, x: Any, rows: np.ndarray) -> Any:
        """Keep only ``rows`` (int indices) of the batch held by handle ``x``."""

    @property
    def has_full(self) -> bool:
        """Whether the backend loaded the bundle's ``full.onnx`` (``BackendOptions.full_graph``)."""
        return False

    def run_full(self, x: Any) -> np.ndarray:
        """The deepest exit's host logits from the full graph, on an :meth:`upload` handle (when :attr:`has_full`)."""
        raise BackendError(f"the {self.name} backend has no full graph loaded")

    def run_chain(self, x: np.ndarray, upto: int | None = None,
                  on_section: Callable[[int, float, Any], None] | None = None) -> list[np.ndarray]:
        """Run sections 1..``upto`` (all by default) on the host batch ``x``; return each exit's logits.

        ``on_section(k, ms, features)`` is called after section ``k`` with its wall time in milliseconds
        (``time.perf_counter`` around :meth:`run_section` alone: the upload and the callback are outside)
        and its features handle (``None`` after the last section).
        """
        if self.num_sections < 1:  # close() drops the sections
            raise BackendError(f"run_chain: the {self.name} backend is closed")
        last = self.num_sections if upto is None else upto
        if not 1 <= last <= self.num_sections:
            raise BackendError(f"run_chain: upto must be between 1 and {self.num_sections}, got {upto!r}")
        h = self.upload(x)
        out = []
        clock = time.perf_counter
        for k in range(1, last + 1):
            t = clock()
            h, logits = self.run_section(k, h)
            if on_section is not None:
                on_section(k, (clock() - t) * 1e3, h)
            out.append(logits)
        return out

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

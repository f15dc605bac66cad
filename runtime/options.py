"""``SessionOptions``: how an ``AnytimeSession`` loads a bundle and answers, in one validated record.

ONNX Runtime's pattern (``onnxruntime.SessionOptions``): one options object, checked once when it is
made, that a session takes and that every configuration opening sessions (``ServerConfig``,
``CalibrationConfig``, ``BenchConfig``) embeds as its ``session`` field instead of copying its fields.

::

    from sdedge.runtime import AnytimeSession, SessionOptions
    opts = SessionOptions(backend="onnxruntime", intra_op_threads=1, max_batch=8)
    session = AnytimeSession("bundle/", options=opts)
    session = AnytimeSession("bundle/", options=opts, warmup=0)    # keyword arguments override fields
    session = AnytimeSession("bundle/", backend="onnxruntime")     # or stand alone, on the defaults
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ..common.errors import PolicyError
from .backends import PRECISIONS
from .backends.base import Backend, BackendOptions
from .policies import ANSWERS, check_criterion, check_latency_options

__all__ = ["SessionOptions", "ENGINES"]

ENGINES = ("auto", "native", "python")
MAX_BATCH_LIMIT = 4096  # the most images one call may carry (native/src/session.hpp kMaxBatchLimit): the warm-up
# runs max_batch rows at once, so a larger value only asks for memory no edge device has


@dataclass(frozen=True)
class SessionOptions:
    """Every setting of an ``AnytimeSession`` (the defaults are the session's).

    ``backend``: ``"auto"`` (TensorRT engines where built, else ONNX Runtime), ``"onnxruntime"``,
    ``"tensorrt"``, or a ready :class:`~sdedge.runtime.backends.base.Backend` (the session then does
    not close it on a failed start); ``precision``: ``auto`` (default: the best TensorRT engines
    ``sdedge build-engines`` built for this bundle on this device, int8 > fp16 > fp32, where the backend may
    be TensorRT; else fp32), ``fp32``, ``fp16`` or ``int8``; ``providers``: ONNX
    Runtime execution providers in order of preference (None: CPU); ``intra_op_threads``: ONNX Runtime
    intra-op threads (None: the backend's default, every CPU this process may use);
    ``warmup``: warm-up calls at load (0: none); ``max_batch``: most images per call (a backend with
    fixed buffers may hold fewer: the session's ``max_batch`` is then the smaller); ``answer``:
    ``"last"`` or ``"ensemble"``; ``criterion``: the default confidence criterion (``max_prob``,
    ``entropy`` or ``margin``); ``verify``: check every file's sha256 when the bundle is opened;
    ``latency_quantile``/``latency_window``: the online latency estimate (checked by
    :class:`~sdedge.runtime.policies.LatencyEstimator`); ``backend_options``: backend-specific extras
    (e.g. ``{"allow_spinning": True}``); ``engine``: ``"native"`` (the C++ core, ``libsdedge.so``, through
    its C ABI), ``"python"`` (the pure-Python session), or ``"auto"`` (native when the core is installed
    and the request can run there: ONNX Runtime in fp32 without backend options, else python);
    ``full_graph``: load the bundle's ``full.onnx`` when it has one (ONNX Runtime, fp32), so that a call with
    no policy (no threshold, no budget or deadline, answer "last") runs that one graph to the deepest exit
    instead of the sections, whose intermediate exit heads it would not use (False: never load it, less memory).
    """

    backend: str | Backend = "auto"
    precision: str = "auto"
    providers: tuple[str, ...] | None = None
    intra_op_threads: int | None = None
    warmup: int = 3
    max_batch: int = 64
    answer: str = "last"
    criterion: str = "max_prob"
    verify: bool = True
    latency_quantile: float = 0.99
    latency_window: int = 256
    backend_options: Mapping[str, Any] | None = None
    engine: str = "auto"
    full_graph: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.backend, (str, Backend)):
            raise PolicyError(f"backend must be a backend name or a Backend, got {type(self.backend).__name__}")
        if self.precision not in PRECISIONS:
            raise PolicyError(f"precision must be one of {', '.join(PRECISIONS)} (auto: the best TensorRT engines "
                              f"built for this device, else fp32), got {self.precision!r}")
        if self.providers is not None:
            if isinstance(self.providers, str) or not isinstance(self.providers, Sequence):
                raise PolicyError(f"providers must be a list of execution provider names, got {self.providers!r}")
            object.__setattr__(self, "providers", tuple(self.providers))
        if self.intra_op_threads is not None and not _is_int(self.intra_op_threads, 1):
            raise PolicyError(f"intra_op_threads must be a positive integer or None (the backend's default), "
                              f"got {self.intra_op_threads!r}")
        if not _is_int(self.warmup, 0):
            raise PolicyError(f"warmup must be a non-negative integer, got {self.warmup!r}")
        if not _is_int(self.max_batch, 1) or self.max_batch > MAX_BATCH_LIMIT:
            raise PolicyError(f"max_batch must be an integer in 1..{MAX_BATCH_LIMIT}, got {self.max_batch!r}")
        check_latency_options(self.latency_window, self.latency_quantile)
        if self.answer not in ANSWERS:
            raise PolicyError(f"answer must be one of {', '.join(ANSWERS)}, got {self.answer!r}")
        check_criterion(self.criterion)
        if self.engine not in ENGINES:
            raise PolicyError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if not isinstance(self.full_graph, bool):
            raise PolicyError(f"full_graph must be True or False, got {self.full_graph!r}")
        if self.backend_options is not None:
            if not isinstance(self.backend_options, Mapping):
                raise PolicyError(f"backend_options must be a mapping, got {type(self.backend_options).__name__}")
            object.__setattr__(self, "backend_options", dict(self.backend_options))

    @classmethod
    def field_names(cls) -> frozenset[str]:
        return frozenset(f.name for f in dataclasses.fields(cls))

    def replace(self, **overrides: Any) -> "SessionOptions":
        """A copy with some fields changed (and checked again); an unknown name is a ``TypeError``."""
        unknown = sorted(set(overrides) - self.field_names())
        if unknown:
            raise TypeError(f"unknown session option(s) {', '.join(unknown)}; the options are "
                            f"{', '.join(f.name for f in dataclasses.fields(self))}")
        return dataclasses.replace(self, **overrides) if overrides else self

    @classmethod
    def resolve(cls, options: "SessionOptions | None" = None, **overrides: Any) -> "SessionOptions":
        """``options`` (default: the defaults) with ``overrides`` applied: what a session runs with."""
        if options is None:
            options = cls()
        elif not isinstance(options, cls):
            raise TypeError(f"options must be a SessionOptions, got {type(options).__name__}")
        return options.replace(**overrides)

    @classmethod
    def split_overrides(cls, overrides: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """``overrides`` split into (session options, everything else), for configs embedding a session."""
        names = cls.field_names()
        return ({k: v for k, v in overrides.items() if k in names},
                {k: v for k, v in overrides.items() if k not in names})

    def for_backend(self) -> BackendOptions:
        """The options a backend is created with (the backend interface's own record)."""
        return BackendOptions(precision=self.precision, intra_op_threads=self.intra_op_threads,
                              providers=self.providers, max_batch=self.max_batch, full_graph=self.full_graph,
                              extra=dict(self.backend_options or {}))


def _is_int(v: Any, low: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low

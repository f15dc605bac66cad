"""Backends that run a bundle's sections, and :func:`create_backend` to pick one by name.

``backend="auto"`` picks, in order:

1. ``tensorrt`` when the ``tensorrt`` and CUDA Python packages import, an NVIDIA GPU is visible and
   ``sdedge build-engines`` has built this bundle's engines for the precision on this GPU and TensorRT
   version (auto never builds engines: that takes minutes and is an explicit step);
2. ``onnxruntime`` with the CUDA execution provider when the installed onnxruntime has it and a GPU is
   visible;
3. ``onnxruntime`` on the CPU.

Explicit names never fall back: ``backend="tensorrt"`` without TensorRT is an error naming what to
install, and ``backend="onnxruntime"`` uses the providers asked for (CPU when none).

Precision ``"auto"`` (the default everywhere) is resolved by :func:`resolve_precision` before a backend
is made: the best TensorRT engines ``sdedge build-engines`` built for this bundle on this GPU and
TensorRT version (int8, then fp16, then fp32) where the backend may be TensorRT, else fp32. So the
README's flow (``build-engines`` builds fp16 by default, then ``run``/``serve``) runs those engines
instead of falling back to ONNX Runtime on the CPU without a word.
"""
from __future__ import annotations

from typing import Any, Callable

from ...common.errors import BackendError
from .base import Backend, BackendOptions

BACKENDS = ("auto", "onnxruntime", "tensorrt")
PRECISIONS = ("auto", "fp32", "fp16", "int8")
ENGINE_PREFERENCE = ("int8", "fp16", "fp32")  # what precision "auto" takes first among built engines


def built_engine_precisions(bundle: Any) -> list[str]:
    """The precisions whose complete TensorRT engine cache exists for ``bundle`` on this GPU and TensorRT
    version (and TensorRT and CUDA for Python import), best first; [] without a GPU or TensorRT."""
    from ...common.hostinfo import nvidia_gpus

    if not nvidia_gpus():
        return []
    from .tensorrt import engines_ready

    return [p for p in ENGINE_PREFERENCE if engines_ready(bundle, p)]


def resolve_precision(bundle: Any, backend: Any, precision: str) -> str:
    """The precision a session with ``backend`` and ``precision`` runs (module docstring): an explicit one
    as it is; ``"auto"``: the best built engines where the backend may be TensorRT, else fp32.
    ``backend="tensorrt"`` with ``"auto"`` and no engines built is a :class:`BackendError` saying how to
    build them."""
    if precision not in PRECISIONS:
        raise BackendError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if not isinstance(backend, str):  # a ready Backend object: its own precision
        return str(getattr(getattr(backend, "options", None), "precision", "fp32") or "fp32")
    if backend in ("auto", "tensorrt"):
        built = built_engine_precisions(bundle)
        if built:
            return built[0]
        if backend == "tensorrt":
            from ..engine_cache import import_tensorrt

            import_tensorrt("the tensorrt backend")  # no TensorRT at all: say how to install it first
            raise BackendError(f"backend 'tensorrt' with precision 'auto' needs TensorRT engines for this bundle on "
                               f"this device, and none are built; run `sdedge build-engines {bundle.path}` (fp16 by "
                               f"default) or name a precision")
    return "fp32"


def _onnxruntime(bundle: Any, options: BackendOptions) -> Backend:
    from .onnxruntime import OnnxRuntimeBackend

    return OnnxRuntimeBackend(bundle, options)


def _tensorrt(bundle: Any, options: BackendOptions) -> Backend:
    from .tensorrt import TensorRTBackend

    return TensorRTBackend(bundle, options)


_REGISTRY: dict[str, Callable[[Any, BackendOptions], Backend]] = {"onnxruntime": _onnxruntime, "tensorrt": _tensorrt}


def _auto(bundle: Any, options: BackendOptions) -> Backend:
    from ...common.hostinfo import nvidia_gpus

    if nvidia_gpus():
        from .tensorrt import engines_ready

        if options.precision in ("fp32", "fp16", "int8") and engines_ready(bundle, options.precision):
            return _tensorrt(bundle, options)
        if options.providers is None and options.precision in ("fp32", "int8"):
            from .onnxruntime import available_providers

            if "CUDAExecutionProvider" in available_providers():
                options = BackendOptions(options.precision, options.intra_op_threads,
                                         ["CUDAExecutionProvider", "CPUExecutionProvider"], options.max_batch,
                                         dict(options.extra))
    return _onnxruntime(bundle, options)


def create_backend(bundle: Any, backend: str = "auto", options: BackendOptions | None = None) -> Backend:
    """A backend named ``backend`` (``auto``, ``onnxruntime``, ``tensorrt``) running ``bundle``."""
    options = options or BackendOptions()
    if backend == "auto":
        return _auto(bundle, options)
    try:
        factory = _REGISTRY[backend]
    except (KeyError, TypeError):
        raise BackendError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}") from None
    return factory(bundle, options)


__all__ = ["BACKENDS", "PRECISIONS", "Backend", "BackendOptions", "built_engine_precisions", "create_backend",
           "resolve_precision"]

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
"""
from __future__ import annotations

from typing import Any, Callable

from ...common.errors import BackendError
from .base import Backend, BackendOptions

BACKENDS = ("auto", "onnxruntime", "tensorrt")


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


__all__ = ["BACKENDS", "Backend", "BackendOptions", "create_backend"]

"""Where a bundle's TensorRT engines live, so ``sdedge build-engines`` and the TensorRT backend agree.

A TensorRT engine is only valid for the TensorRT version and GPU it was built with, so engines are cached
inside the bundle under ``engines/<key>/s{k}.engine`` (and ``h{k}.engine`` for the exit heads of a format
version 2 bundle), where the key names all three things that make
an engine reusable::

    engines/trt10.3.0.30-nvidia-jetson-orin-nano-developer-kit-fp16/
        s1.engine … sK.engine
        key.json        {"key", "tensorrt_version", "gpu", "precision", "profile", "sources", ...}

``key.json`` also records the optimisation profile (min/opt/max batch) and the sha256 of every source
ONNX file; the builder rebuilds when any of them differs. Engines are not listed in the manifest and are
not checksummed (``shared/DESIGN.md`` section 4): they are a cache, rebuilt on the target.

This module is torch-free and imports ``tensorrt`` only when the caller does not pass the version.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

from ..common.hostinfo import gpu_name, slug
from ..common.errors import BackendError

ENGINES_DIR = "engines"
KEY_FILE = "key.json"
PRECISIONS = ("fp32", "fp16", "int8")
INSTALL_HINT = ("install TensorRT 10 for Python (`pip install tensorrt` on x86 with an NVIDIA driver; on Jetson it "
                "comes with JetPack as python3-libnvinfer) and cuda-python (`pip install 'sdedge[tensorrt]'`)")


def import_tensorrt(purpose: str) -> Any:
    """The ``tensorrt`` module (>= 10), imported lazily, or a :class:`BackendError` saying that ``purpose``
    (e.g. "the tensorrt backend") needs it and how to install it. Shared by the backend and the builder."""
    try:
        import tensorrt as trt
    except ImportError as e:
        raise BackendError(f"{purpose} needs TensorRT (the tensorrt package), which is not installed ({e}); "
                           f"{INSTALL_HINT}") from None
    try:
        major = int(str(trt.__version__).split(".")[0])
    except (AttributeError, ValueError):
        major = 0
    if major < 10:
        raise BackendError(f"{purpose} needs TensorRT >= 10, found {getattr(trt, '__version__', '?')}; {INSTALL_HINT}")
    return trt


def tensorrt_version() -> str:
    """The installed TensorRT version, or :class:`BackendError` saying how to install it."""
    try:
        import tensorrt as trt
    except ImportError as e:
        raise BackendError(f"TensorRT is not installed ({e}); {INSTALL_HINT}") from None
    version = str(getattr(trt, "__version__", ""))
    if not version:
        raise BackendError(f"the tensorrt module has no __version__ (a broken install?); {INSTALL_HINT}")
    return version


def engine_key(precision: str, trt_version: str | None = None, gpu: str | None = None, device: int = 0) -> str:
    """Filesystem-safe cache key ``trt<version>-<gpu>-<precision>``.

    ``trt_version`` defaults to the installed TensorRT's, ``gpu`` to the name of GPU ``device`` as the
    NVIDIA driver reports it (the board's model on Jetson).
    """
    if precision not in PRECISIONS:
        raise BackendError(f"unknown engine precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    version = trt_version if trt_version is not None else tensorrt_version()
    gpu = gpu if gpu is not None else gpu_name(device)
    return f"trt{slug(version, 24)}-{slug(gpu)}-{precision}"


def engine_cache_dir(bundle_path: str | os.PathLike, precision: str, trt_version: str | None = None,
                     gpu: str | None = None, device: int = 0) -> Path:
    """``<bundle>/engines/<key>``: the folder holding this machine's engines for ``precision``."""
    return Path(bundle_path) / ENGINES_DIR / engine_key(precision, trt_version, gpu, device)


def engine_path(cache_dir: str | os.PathLike, section: int) -> Path:
    """The engine file of 1-based section ``section`` in a cache folder."""
    return Path(cache_dir) / f"s{section}.engine"


def head_engine_path(cache_dir: str | os.PathLike, section: int) -> Path:
    """The engine file of section ``section``'s exit head (bundle format version 2) in a cache folder."""
    return Path(cache_dir) / f"h{section}.engine"


def read_key(cache_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The folder's ``key.json``, or None where it is missing or unreadable (treated as stale)."""
    p = Path(cache_dir) / KEY_FILE
    try:
        data = json.loads(p.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def cached_engines(bundle_path: str | os.PathLike, precision: str, num_sections: int,
                   expect: dict[str, Any] | None = None, heads: Sequence[int] = (), **key_kw: Any) -> list[Path] | None:
    """The engine files when the cache is complete and its ``key.json`` matches ``expect``; else None.

    ``expect`` holds the fields that must equal those in ``key.json`` (e.g. ``profile`` and ``sources``).
    ``heads``: the sections whose exit heads are graphs of their own (format version 2); their engines follow
    the sections' in the list, in that order.
    """
    folder = engine_cache_dir(bundle_path, precision, **key_kw)
    key = read_key(folder)
    if key is None or key.get("key") != folder.name:
        return None
    for k, v in (expect or {}).items():
        if key.get(k) != v:
            return None
    files = [engine_path(folder, k) for k in range(1, num_sections + 1)] + [head_engine_path(folder, k) for k in heads]
    return files if all(f.is_file() and f.stat().st_size > 0 for f in files) else None

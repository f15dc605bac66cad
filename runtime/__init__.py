"""sdedge.runtime: run a bundle on the device, without PyTorch.

Imports here stay light (numpy only); backends and the HTTP server import their engines lazily.
"""
from __future__ import annotations

from typing import Any

from ..common.errors import (BackendError, BundleError, ChecksumError, FormatVersionError, InputError, PolicyError,
                             SdedgeError)
from .bundle import Bundle, open_bundle
from .options import SessionOptions

__all__ = ["AnytimeSession", "InferenceResult", "SessionOptions", "Bundle", "BackendError", "BundleError",
           "ChecksumError", "FormatVersionError", "InputError", "PolicyError", "SdedgeError", "open_bundle"]


def __getattr__(name: str) -> Any:  # lazy: the session pulls in onnxruntime
    if name in ("AnytimeSession", "InferenceResult"):
        from . import session

        return getattr(session, name)
    raise AttributeError(name)

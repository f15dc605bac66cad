"""Exception types shared by every stage of sdedge.

All errors derive from :class:`SdedgeError` so robot code can catch one type; each subclass names a
family of failures and every message says what was expected and what was found.
"""
from __future__ import annotations


class SdedgeError(Exception):
    """Base class of every error sdedge raises on purpose."""


class BundleError(SdedgeError):
    """A bundle folder is missing, malformed, altered or of an unknown format version."""


class ChecksumError(BundleError):
    """A bundle file's sha256 differs from the one in the manifest."""


class FormatVersionError(BundleError):
    """A bundle or checkpoint declares a format version this sdedge cannot read."""


class CheckpointError(SdedgeError):
    """A checkpoint is corrupt, not an sdedge checkpoint, or carries pickled code."""


class InputError(SdedgeError, ValueError):
    """An input tensor has the wrong rank, shape, dtype, or non-finite values."""


class PolicyError(SdedgeError, ValueError):
    """An exit policy argument (budget, threshold, criterion) is out of range."""


class BackendError(SdedgeError):
    """A backend is unavailable (missing package, no GPU) or failed to run a section."""


class DataError(SdedgeError):
    """A dataset folder is missing or its files are not what they claim to be."""


class ExportError(SdedgeError):
    """An export step failed (tracing, ONNX checks, parity past tolerance, quantization, engine build)."""

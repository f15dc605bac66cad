"""The header every sdedge JSON file starts with (``format`` and ``format_version``), checked one way.

The manifest, ``calibration.json`` and latency profiles each name their format and version; a reader
refuses a document of another format (:class:`BundleError`) or of a version it cannot read
(:class:`FormatVersionError`, saying whether to upgrade sdedge or to re-create the file).
"""
from __future__ import annotations

from typing import Any, Collection

from .errors import BundleError, FormatVersionError


def check_format(doc: Any, fmt: str, versions: Collection[int], what: str, where: str, recreate: str) -> int:
    """Check ``doc``'s header and return its version.

    ``what`` names the kind of file in messages (``bundle``, ``calibration``), ``where`` the file, and
    ``recreate`` the fix for a version older than this sdedge reads (``re-export the bundle``).
    """
    if not isinstance(doc, dict):
        raise BundleError(f"malformed {where}: top level must be an object, got {type(doc).__name__}")
    if doc.get("format") != fmt:
        raise BundleError(f"{where} is not an sdedge {what}: 'format' is {doc.get('format')!r}, expected {fmt!r}")
    ver = doc.get("format_version")
    if not isinstance(ver, int) or isinstance(ver, bool):
        raise BundleError(f"malformed {where}: 'format_version' must be an integer, got {ver!r}")
    if ver not in versions:
        readable = ", ".join(str(v) for v in sorted(versions))
        raise FormatVersionError(f"{where} has format_version {ver}, not supported by this sdedge (reads version "
                                 f"{readable}); " + ("upgrade sdedge" if ver > max(versions) else recreate))
    return ver

"""Tampering with one file of a bundle, and checking that ``open_bundle`` refuses it naming that file.

Shared by the synthetic-bundle tests (``test_bundle_format.py``) and the real exports' tests: the same
alteration (one flipped bit, the length unchanged, so only the sha256 can tell) for every kind of file.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from sdedge.common.errors import ChecksumError
from sdedge.runtime.bundle import open_bundle


def flip_bit(path: Path, at: int = 0) -> None:
    """Flip the lowest bit of byte ``at`` (negative: from the end) of ``path`` in place."""
    data = bytearray(path.read_bytes())
    data[at] ^= 1
    path.write_bytes(bytes(data))


def bundle_files(root: Path) -> list[str]:
    """Every file the manifest of the bundle at ``root`` checksums: sections first, then ``files``."""
    m = open_bundle(root).manifest
    return [s.file for s in m.sections] + sorted(m.files)


def assert_tamper_refused(bundle: Path, rel: str, work: Path) -> None:
    """On a copy of ``bundle`` under ``work``, alter ``rel``: ``open_bundle`` must raise a ChecksumError naming it."""
    copy = work / f"tampered-{rel.replace('/', '_')}"
    shutil.copytree(bundle, copy)
    flip_bit(copy / rel, at=len((copy / rel).read_bytes()) // 2)
    with pytest.raises(ChecksumError, match=rf"checksum mismatch for bundle file {re.escape(rel)}:"):
        open_bundle(copy)
    open_bundle(copy, verify=False)  # the manifest itself is fine: only the checksum refuses it

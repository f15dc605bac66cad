"""JSON the way sdedge writes it: strict (no NaN/Inf), UTF-8, newline-terminated, written atomically."""
from __future__ import annotations

import json
import os
from typing import Any

from .atomic import write_bytes_atomic


def dump_json(obj: Any) -> bytes:
    """Canonical JSON bytes (sorted keys, 2-space indent) used for every JSON file in a bundle."""
    return (json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n").encode("utf-8")


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int = 2, sort_keys: bool = False) -> None:
    """Write ``obj`` as strict JSON to ``path`` atomically (readers see the old file or the new one)."""
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, allow_nan=False) + "\n"
    write_bytes_atomic(path, text.encode("utf-8"))

"""Progress messages of long library calls: a caller's function, stderr with a prefix, or nothing."""
from __future__ import annotations

import sys
from typing import Callable



def reporter(progress: bool | Callable[[str], None], prefix: str) -> Callable[[str], None]:
    """What a ``progress=`` argument means: a callable is used as is, ``True`` prints ``prefix message``
    lines to stderr, ``False`` says nothing."""
    if callable(progress):
        return progress
    if progress:
        return lambda message: print(f"{prefix} {message}", file=sys.stderr, flush=True)
    return lambda _message: None

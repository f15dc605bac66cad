"""argparse value types shared by the subcommands (torch-free, like the commands that use them)."""
from __future__ import annotations

import argparse
from typing import Callable


def positive_list(kind: Callable[[str], float] = float, what: str = "numbers") -> Callable[[str], tuple]:
    """A ``type=`` for comma-separated positive values of ``kind`` (``"1,8,16"`` -> ``(1, 8, 16)``)."""
    def parse(text: str) -> tuple:
        try:
            vals = tuple(kind(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}") from None
        if not vals or any(not v > 0 for v in vals):
            raise argparse.ArgumentTypeError(f"expected positive {what}, got {text!r}")
        return vals

    return parse

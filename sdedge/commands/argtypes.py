"""argparse value types shared by the subcommands (torch-free, like the commands that use them)."""
from __future__ import annotations

import argparse
from typing import Any, Callable


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


def _checked(text: str, kind: Callable[[str], Any], ok: Callable[[Any], bool], what: str) -> Any:
    try:
        v = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not ok(v):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
    return v


def positive_int(text: str) -> int:
    """A ``type=`` for an integer >= 1."""
    return _checked(text, int, lambda v: v >= 1, "a positive integer")


def fraction(text: str) -> float:
    """A ``type=`` for a fraction in (0, 1]."""
    return _checked(text, float, lambda v: 0 < v <= 1, "a fraction in (0, 1]")


def fractions(text: str) -> list[float]:
    """A ``type=`` for comma-separated fractions in (0, 1] (``"1,0.5"`` -> ``[1.0, 0.5]``)."""
    vals = [fraction(v) for v in text.split(",") if v.strip()]
    if not vals:
        raise argparse.ArgumentTypeError(f"expected comma-separated fractions such as 1,0.5,0.5, got {text!r}")
    return vals


PRECISION_HELP = ("section precision: auto (default) runs the best TensorRT engines `sdedge build-engines` built for "
                  "this bundle on this device (int8 > fp16 > fp32) and fp32 where none are built or the backend is "
                  "onnxruntime; fp16 is TensorRT only; int8 needs `sdedge export --int8` sections or int8 engines")


def add_precision_argument(parser: Any) -> None:
    """``--precision auto|fp32|fp16|int8`` (default auto), the same on every command that opens sessions."""
    parser.add_argument("--precision", choices=["auto", "fp32", "fp16", "int8"], default="auto", help=PRECISION_HELP)

"""argparse value types shared by the subcommands, and the checks of their output paths (torch-free, like the
commands that use them)."""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Callable


def positive_list(kind: Callable[[str], float] = float, what: str = "numbers") -> Callable[[str], tuple]:
    """A ``type=`` for comma-separated positive finite values of ``kind`` (``"1,8,16"`` -> ``(1, 8, 16)``)."""
    def parse(text: str) -> tuple:
        try:
            vals = tuple(kind(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}") from None
        if not vals or any(not 0 < v < float("inf") for v in vals):
            raise argparse.ArgumentTypeError(f"expected positive finite {what}, got {text!r}")
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


def non_negative_int(text: str) -> int:
    """A ``type=`` for an integer >= 0."""
    return _checked(text, int, lambda v: v >= 0, "a non-negative integer")


MAX_THREADS = 1024  # more CPU threads than any edge device (or server) has: a typo, not a setting


def thread_count(text: str) -> int:
    """A ``type=`` for a number of CPU threads: an integer in 1..1024."""
    return _checked(text, int, lambda v: 1 <= v <= MAX_THREADS, f"a number of threads in 1..{MAX_THREADS}")


def burn_count(text: str) -> int:
    """A ``type=`` for a number of CPU-burning neighbour processes: 0..4 per CPU this process may use."""
    cap = 4 * len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 4 * (os.cpu_count() or 1)
    return _checked(text, int, lambda v: 0 <= v <= cap, f"a number of processes in 0..{cap} (4 per CPU)")


def positive_ms(text: str) -> float:
    """A ``type=`` for a positive, finite number of milliseconds."""
    return _checked(text, float, lambda v: 0 < v < float("inf"), "a positive finite number of milliseconds")


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


def check_report_path(path: str | None, bundle: str, option: str) -> None:
    """Refuse, before any work, a report file (``--json``, ``--plot``) that would land inside ``bundle`` (its
    files are the bundle's own: checksummed, written atomically by the library) or cannot be written: a
    folder, or in a folder that does not exist or is not writable. A :class:`~sdedge.common.errors.InputError`."""
    from ..common.errors import InputError

    if not path:
        return
    target = Path(path).resolve()
    if target == Path(bundle).resolve() or Path(bundle).resolve() in target.parents:
        raise InputError(f"{option} {path} is inside the bundle {bundle}; write reports elsewhere (the bundle's "
                         f"files are its own, checksummed)")
    if target.is_dir():
        raise InputError(f"{option} {path} is a folder; give a file name")
    parent = target.parent
    if not parent.is_dir():
        raise InputError(f"{option} {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise InputError(f"{option} {path}: folder {parent} is not writable")

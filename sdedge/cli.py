"""The ``sdedge`` command line: a thin layer of subcommands over the library (the Polygraphy pattern).

Each subcommand lives in ``sdedge/commands/<name>.py`` with ``add_parser(subparsers)`` and
``run(args) -> int``; those modules import heavy packages (torch, onnxruntime, fastapi) only inside
``run``, so ``sdedge serve -h`` works on a device without PyTorch.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__

COMMANDS = ["quickstart", "train", "eval", "prune", "export", "build_engines", "calibrate", "run", "serve", "bench"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sdedge",
        description="Train self-distilled multi-exit CNNs, export them as per-section bundles, calibrate "
                    "them on the target, and run them as anytime classifiers under a latency budget.",
    )
    parser.add_argument("--version", action="version", version=f"sdedge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f".commands.{name}", __package__)
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith(f"{__package__}.commands."):
                continue  # command not built in this version
            raise
        p = mod.add_parser(sub)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .common.errors import SdedgeError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except SdedgeError as e:
        print(f"sdedge {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a path that cannot be read or written (read-only, a file where a folder goes, ...)
        where = f": {e.filename}" if e.filename else ""
        print(f"sdedge {args.command}: error: {e.strerror or e}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sdedge {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

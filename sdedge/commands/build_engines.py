"""``sdedge build-engines BUNDLE --fp16|--int8``: TensorRT engines per section, built on the target.

Thin layer over :func:`sdedge.export.build_engines`; TensorRT is imported only inside :func:`run`.
"""
from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "build-engines", help="build TensorRT engines for a bundle on this GPU (cached in the bundle)",
        description="Build one TensorRT engine per section from the bundle's ONNX files (the INT8 QDQ files with "
                    "--int8) with an optimisation profile for a batch range, and cache them under "
                    "BUNDLE/engines/<TensorRT version>-<GPU>-<precision>/. Cached engines are reused while the "
                    "TensorRT version, GPU, precision, batch profile and source files are unchanged.")
    p.add_argument("bundle", help="bundle folder (made by `sdedge export`)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--fp16", dest="precision", action="store_const", const="fp16",
                   help="FP16 engines from the FP32 sections (the default)")
    g.add_argument("--int8", dest="precision", action="store_const", const="int8",
                   help="INT8 engines from the QDQ sections (export with --int8 first); explicit quantization")
    g.add_argument("--fp32", dest="precision", action="store_const", const="fp32", help="FP32 engines")
    g.add_argument("--precision", dest="precision", choices=["fp32", "fp16", "int8"],
                   help="the same as --fp32/--fp16/--int8")
    p.set_defaults(precision="fp16")
    p.add_argument("--min-batch", type=int, default=1, metavar="N", help="smallest batch the engines accept (default 1)")
    p.add_argument("--opt-batch", type=int, default=1, metavar="N",
                   help="batch TensorRT tunes kernels for (default 1: single-image latency)")
    p.add_argument("--max-batch", type=int, default=64, metavar="N", help="largest batch the engines accept (default 64)")
    p.add_argument("--workspace-mb", type=int, default=1024, metavar="MB",
                   help="TensorRT builder workspace limit in MB (default 1024; lower it on small Jetsons)")
    p.add_argument("--device", type=int, default=0, metavar="I", help="GPU index (default 0)")
    p.add_argument("--force", action="store_true", help="rebuild even when cached engines are up to date")
    return p


def run(args: argparse.Namespace) -> int:
    from ..export import build_engines

    res = build_engines(args.bundle, precision=args.precision, min_batch=args.min_batch, opt_batch=args.opt_batch,
                        max_batch=args.max_batch, workspace_mb=args.workspace_mb, force=args.force,
                        device=args.device, progress=True)
    state = "built" if res.built else "up to date"
    print(f"{len(res.engines)} {res.precision} engines {state} in {res.cache_dir}")
    return 0

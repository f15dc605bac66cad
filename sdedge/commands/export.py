"""``sdedge export CKPT -o BUNDLE``: a trained checkpoint -> a verified per-section bundle.

Thin layer over :func:`sdedge.export.export_bundle`; torch/onnx load only inside :func:`run`.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any

from .argtypes import thread_count


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "export", help="export a checkpoint to a bundle (per-section ONNX, parity-checked, optional INT8)",
        description="Export a trained multi-exit checkpoint to a bundle folder: one ONNX graph per section "
                    "(previous features in, this section's features and exit logits out), full.onnx, and a "
                    "manifest with checksums, MACs, accuracies and preprocessing. ONNX Runtime is checked against "
                    "PyTorch on real validation images; the bundle is written atomically.")
    p.add_argument("checkpoint", help="checkpoint file written by `sdedge train` (.pt)")
    p.add_argument("-o", "--output", required=True, metavar="BUNDLE", help="bundle folder to create")
    p.add_argument("--force", action="store_true",
                   help="replace an existing bundle (atomic swap; the old one stays intact if the export fails)")
    p.add_argument("--int8", "--quantize", dest="int8", action="store_true",
                   help="also write INT8 QDQ sections (int8/s*.onnx) for ONNX Runtime and TensorRT, and report "
                        "FP32 vs INT8 accuracy per exit on the validation split")
    p.add_argument("--fp16", action="store_true",
                   help="also write float16 section graphs with float32 I/O (fp16/s*.onnx), which TensorRT 11 builds "
                        "fp16 engines from (its networks are strongly typed); TensorRT 10 does not need them")
    p.add_argument("--int8-samples", type=int, default=512, metavar="N",
                   help="training images used to calibrate INT8 activation ranges (default 512)")
    p.add_argument("--int8-method", choices=["minmax", "percentile", "entropy"], default="minmax",
                   help="INT8 calibration method (default minmax)")
    p.add_argument("--int8-target", choices=["onnxruntime", "tensorrt"], default="onnxruntime",
                   help="INT8 graph layout: onnxruntime (default; uint8 activations that ONNX Runtime's CPU kernels "
                        "fuse; build-engines converts it for TensorRT) or tensorrt (symmetric int8 activations, "
                        "the layout TensorRT reads directly; slower on ONNX Runtime's CPU provider)")
    p.add_argument("--int8-eval-samples", type=int, default=None, metavar="N",
                   help="validation images for the FP32-vs-INT8 accuracy report (default: the whole split)")
    p.add_argument("--data", default=None, metavar="DIR",
                   help="dataset folder (default: SDEDGE_DATA or the dataset's default location)")
    p.add_argument("--parity-tolerance", type=float, default=1e-3, metavar="X",
                   help="largest allowed |logit difference| between ONNX Runtime and PyTorch per exit (default 1e-3); "
                        "past it the export fails and nothing is written")
    p.add_argument("--parity-samples", type=int, default=64, metavar="N",
                   help="validation images used for the parity check (default 64)")
    p.add_argument("--no-parity", dest="parity", action="store_false",
                   help="skip the ONNX Runtime vs PyTorch check (the probe of chained sections vs full.onnx still runs)")
    p.add_argument("--opset", type=int, default=18, metavar="N", help="ONNX opset (default 18, the minimum)")
    p.add_argument("--no-full", dest="full", action="store_false",
                   help="do not write full.onnx (the single-graph reference used by benchmarks)")
    p.add_argument("--format-version", type=int, choices=[1, 2], default=1,
                   help="bundle format: 1 (default; each section graph returns its features and its exit's logits) or "
                        "2 (each exit head a graph of its own under heads/, so a runtime runs a head only where its "
                        "policy needs that exit: a deadline-only call runs one head, a call testing every exit pays for separate "
                        "graphs; both engines, --int8/--fp16 and build-engines handle trunks and heads apart)")
    p.add_argument("--name", default=None, help="model name in the manifest (default <backbone>-<dataset>-<method>)")
    p.add_argument("--threads", type=thread_count, default=None, metavar="N",
                   help="ONNX Runtime threads for the checks (default: all cores)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only errors and the final tables")
    return p


def run(args: argparse.Namespace) -> int:
    from ..export import ExportConfig, export_bundle

    cfg = ExportConfig(checkpoint=args.checkpoint, output=args.output, force=args.force, int8=args.int8, fp16=args.fp16,
                       int8_samples=args.int8_samples, int8_method=args.int8_method,
                       int8_target=args.int8_target,
                       int8_eval_samples=args.int8_eval_samples, parity=args.parity,
                       parity_tolerance=args.parity_tolerance, parity_samples=args.parity_samples, data=args.data,
                       opset=args.opset, full=args.full, name=args.name, threads=args.threads,
                       format_version=args.format_version, progress=not args.quiet)
    result = export_bundle(cfg)
    print(result.parity_table())
    if result.int8:
        print(result.int8_table())
    s = result.sizes
    print(f"bundle {result.bundle_path}: {s.get('bundle', 0) / 1e6:.2f} MB (sections {s.get('sections', 0) / 1e6:.2f} MB"
          + (f", heads {s['heads'] / 1e6:.2f} MB" if s.get("heads") else "")
          + (f", int8 {s['int8'] / 1e6:.2f} MB" if s.get("int8") else "") + f"), exported in "
          f"{result.timings.get('total', 0):.1f} s", file=sys.stdout)
    return 0

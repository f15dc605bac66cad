"""``sdedge quickstart``: train, export, calibrate and run a small multi-exit model in one command.

See :mod:`sdedge.quickstart` (the library function robot code or notebooks can call).
"""
from __future__ import annotations

import argparse
from typing import Any

from .argtypes import positive_int, positive_ms, thread_count


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "quickstart", help="the whole pipeline in one command (no dataset, no network needed)",
        description="Train a small multi-exit CNN with BYOT self-distillation on the built-in digits example (about a "
                    "minute on two CPU cores), export it as a per-section bundle, calibrate it on this machine, and "
                    "answer a few test images under a latency budget; prints the exit table and where the files went. "
                    "With --dataset fashion-mnist --data DIR (or cifar10/cifar100) it does the same on a real dataset.")
    p.add_argument("-o", "--output", default="sdedge-quickstart", help="output folder (default ./sdedge-quickstart)")
    p.add_argument("--dataset", default="digits", choices=["digits", "fashion-mnist", "cifar10", "cifar100"],
                   help="digits (built in, default) or a real dataset (needs --data or SDEDGE_DATA)")
    p.add_argument("--data", default=None, metavar="DIR", help="dataset folder for real datasets")
    p.add_argument("--backbone", default=None, help="backbone (default: the dataset's CPU preset, `tiny`)")
    p.add_argument("--width", type=positive_int, default=None, help="backbone width (tiny)")
    p.add_argument("--epochs", type=positive_int, default=None, help="training epochs (default: 30 digits, 3 fashion-mnist, 5 cifar)")
    p.add_argument("--method", default="byot", help="training method (default byot)")
    p.add_argument("--short", action="store_true", help="a seconds-long smoke setting (tests): tiny model, 2 epochs")
    p.add_argument("--threads", type=thread_count, default=None, help="CPU threads (default: all for training, 1 for inference)")
    p.add_argument("--device", default="cpu", help="training device: cpu (default), cuda or auto")
    p.add_argument("--budget-ms", type=positive_ms, default=None,
                   help="per-image budget for the demo answers (default: halfway between exit 1 and the full network, measured)")
    p.add_argument("--images", type=positive_int, default=5, help="test images to answer (default 5)")
    p.add_argument("--no-plot", action="store_true", help="skip anytime.png")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress messages")
    return p


def run(args: argparse.Namespace) -> int:
    from ..quickstart import QuickstartConfig, quickstart

    cfg = QuickstartConfig(output=args.output, dataset=args.dataset, data=args.data, backbone=args.backbone,
                           width=args.width, epochs=args.epochs, method=args.method, short=args.short,
                           threads=args.threads, device=args.device, budget_ms=args.budget_ms, images=args.images,
                           plot=not args.no_plot, progress=not args.quiet)
    res = quickstart(cfg)
    print(res.calibration_summary)
    print(res.summary())
    return 0

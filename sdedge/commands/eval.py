"""``sdedge eval CKPT``: per-exit and ensemble top-1 accuracy of a checkpoint, without training.

Rebuilds the checkpoint's dataset and validation hold-out from its metadata and normalises with the
stored preprocessing. Library call: :func:`sdedge.train.evaluate_checkpoint`.
"""
from __future__ import annotations

import argparse
import json
from typing import Any

from .argtypes import positive_int


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("eval", help="per-exit and ensemble accuracy of a checkpoint on a split",
                       description="Evaluate every exit of a checkpoint (and the mean-of-softmax ensemble) on "
                                   "the validation or test split of the dataset it was trained on.")
    p.add_argument("checkpoint", help="checkpoint file (best.pt or last.pt from `sdedge train`)")
    p.add_argument("--split", choices=["val", "test", "both"], default="test", help="which split (default test)")
    p.add_argument("--data", default=None, metavar="DIR",
                   help="dataset folder (default: $SDEDGE_DATA, then the dataset's usual place)")
    p.add_argument("--download", action="store_true", help="CIFAR only: download the dataset if missing")
    p.add_argument("--batch-size", type=positive_int, default=512, help="evaluation batch size (default 512)")
    p.add_argument("--device", default="auto", help="auto (cuda when present) | cpu | cuda | cuda:N")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def run(args: argparse.Namespace) -> int:
    from ..train import evaluate_checkpoint, format_table

    acc = evaluate_checkpoint(args.checkpoint, split=args.split, data=args.data, batch_size=args.batch_size,
                              device=args.device, download=args.download)
    if args.json:
        print(json.dumps(acc, indent=1))
    else:
        print(format_table(acc, f"{args.checkpoint}: top-1"))
    return 0

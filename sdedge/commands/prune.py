"""``sdedge prune``: structured channel pruning of a trained checkpoint, recovered by distillation.

The library call is :func:`sdedge.compress.prune` with a :class:`sdedge.compress.PruneConfig`; the
recovery takes the trainer's options (``--epochs``, ``--lr``, ``--data``, ...).
"""
from __future__ import annotations

import argparse
import json
from typing import Any

from .argtypes import fraction, fractions, positive_int

EPILOG = """recovery (--recovery):
  distill   (default) fine-tune with the unpruned checkpoint as teacher: every exit distils from the
            teacher's same exit and its deepest exit (KL at T), plus self-distillation and partial-L2
            on the pre-ReLU section features (method `distill`; --alpha, -T, --hint-weight, --feature-weight)
  labels    fine-tune on the labels alone (CE at every exit): the baseline to compare with
  none      stop after pruning (RUN_DIR/pruned.pt)

--data-free synthesises the recovery images from the teacher (DeepInversion: its BatchNorm statistics
and its classes); no dataset file is read. Model selection then uses synthetic images too.

examples:
  sdedge prune runs/fm/best.pt --target-macs 0.5 --epochs 20 --data ~/data/fashion-mnist -o runs/fm-p50
  sdedge prune runs/fm/best.pt --section-macs 1,0.5,0.5,0.5 --importance taylor --steps 4 -o runs/fm-p
  sdedge prune runs/fm/best.pt --target-macs 0.7 --data-free --synth-images 4096 -o runs/fm-p70-df
  sdedge export runs/fm-p50/best.pt -o bundles/fm-p50         # a pruned checkpoint exports unchanged
"""


def add_parser(sub: Any) -> argparse.ArgumentParser:
    from .train import add_trainer_arguments, add_weight_arguments

    p = sub.add_parser(
        "prune", help="prune a trained checkpoint's channels to a MAC target and recover it by distillation",
        description="Structured channel pruning (Torch-Pruning) of the backbone and the exit heads of CKPT, then "
                    "recovery by fine-tuning. Writes RUN_DIR/pruned.pt (right after pruning), RUN_DIR/best.pt "
                    "(after recovery; what `sdedge export` takes), last.pt, results.json and prune.json (MACs, "
                    "parameters and accuracy before and after). Sections and exits stay as they were.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", metavar="CKPT", help="trained checkpoint (the unpruned network, also the teacher)")
    g = p.add_argument_group("pruning")
    target = g.add_mutually_exclusive_group()
    target.add_argument("--target-macs", type=fraction, default=0.5, metavar="F",
                        help="fraction of the deepest exit's MACs to keep (default 0.5)")
    target.add_argument("--section-macs", type=fractions, default=None, metavar="F1,F2,...",
                        help="instead, a fraction per section (e.g. 1,0.5,0.5,0.5 keeps exit 1's section whole)")
    g.add_argument("--importance", choices=["magnitude", "bn", "taylor"], default="magnitude",
                   help="channel importance: L2 weight magnitude (default), BatchNorm scale, or first-order Taylor")
    g.add_argument("--steps", type=positive_int, default=1,
                   help="prune in N equal steps, re-estimating importance each time (default 1: one shot)")
    g.add_argument("--step-epochs", type=int, default=0, metavar="E",
                   help="with --steps N: recover (the --recovery below) for E epochs after each step but the last, "
                        "before importance is re-estimated (default 0: the steps back to back)")
    g.add_argument("--round-to", type=positive_int, default=None, metavar="N",
                   help="keep channel counts multiples of N (e.g. 8 for INT8 and tensor-core kernels)")
    g = p.add_argument_group("recovery")
    g.add_argument("--recovery", choices=["distill", "labels", "none"], default="distill",
                   help="how the pruned network is fine-tuned (default distill; see below)")
    add_weight_arguments(g)
    g.add_argument("--data-free", action="store_true",
                   help="recover on images synthesised from the teacher alone (no dataset file is read)")
    g.add_argument("--synth-images", type=positive_int, default=2048, metavar="N",
                   help="data-free: synthetic training images (default 2048)")
    g.add_argument("--synth-val-images", type=positive_int, default=256, metavar="N",
                   help="data-free: synthetic hold-out for model selection (default 256)")
    g.add_argument("--synth-iterations", type=positive_int, default=200, metavar="N",
                   help="data-free: optimisation steps per synthetic batch (default 200)")
    g.add_argument("--synth-batch-size", type=positive_int, default=128, metavar="N",
                   help="data-free: images optimised together (BN statistics are batch statistics; default 128)")
    add_trainer_arguments(p, epochs=20, lr=0.01, schedule="cosine")
    for a in p._actions:  # the dataset and hold-out come from the checkpoint
        if a.dest in ("dataset", "val_size", "limit", "download"):
            a.help = argparse.SUPPRESS
    return p


def run(args: argparse.Namespace) -> int:
    from ..compress import PruneConfig, SynthConfig, prune
    from .train import config_from_args

    train_cfg = config_from_args(args)
    synth = SynthConfig(images=args.synth_images, batch_size=args.synth_batch_size, iterations=args.synth_iterations,
                        seed=args.seed)
    cfg = PruneConfig(checkpoint=args.checkpoint, output=args.output, target_macs=args.target_macs,
                      section_macs=args.section_macs, importance=args.importance, steps=args.steps,
                      step_epochs=args.step_epochs, round_to=args.round_to, recovery=args.recovery,
                      data_free=args.data_free, synth=synth,
                      synth_val_images=args.synth_val_images, train=train_cfg)
    result = prune(cfg)
    if args.json:
        print(json.dumps({"pruned_checkpoint": result.pruned_checkpoint, "best_checkpoint": result.best_checkpoint,
                          "macs_kept": result.report.macs_kept, "accuracy": result.accuracy}, indent=1))
    elif not args.quiet:
        print(result.table())
    return 0

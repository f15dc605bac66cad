"""``sdedge bench BUNDLE``: per-exit latency, split overhead, decision overhead, deadline compliance.

Torch-free; reuses :mod:`sdedge.calibrate.benchmarking` through :mod:`sdedge.calibrate.bench`.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any

from .argtypes import (add_precision_argument, burn_count, check_report_path, non_negative_int, positive_int, positive_list,
                       thread_count)


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "bench", help="measure a bundle on this device: exit latencies, overheads, deadline compliance",
        description="Measure a bundle on this device, side by side in one run (same preloaded inputs, interleaved, "
                    "warm-up discarded, threads fixed): per-exit latency (p50/p99) beside each exit's MAC share, the "
                    "split overhead of chained sections vs full.onnx, the runtime's decision overhead, and the share "
                    "of calls that meet their deadline at a set of budgets (optionally beside CPU-burning neighbours). "
                    "Printed as a table of ratios and saved as JSON.")
    p.add_argument("bundle", help="bundle folder")
    p.add_argument("--backend", choices=["auto", "onnxruntime", "tensorrt"], default="auto")
    add_precision_argument(p)
    p.add_argument("--threads", type=thread_count, default=1, help="intra-op threads (default 1)")
    p.add_argument("--runs", type=positive_int, default=500, help="timed calls per contender (default 500)")
    p.add_argument("--warmup", type=non_negative_int, default=50, help="untimed warm-up calls (default 50)")
    p.add_argument("--calls", type=positive_int, default=2000, help="infer calls per budget for deadline compliance")
    p.add_argument("--budgets", type=positive_list(float, "numbers of milliseconds"), default=None, metavar="MS,MS,...",
                   help="budgets in ms (default: exit-1 p99 and 50/75/100/125 %% of the full infer p50)")
    p.add_argument("--burn", type=burn_count, default=0, metavar="N",
                   help="also measure compliance beside N CPU-burning neighbour processes (at most 4 per CPU)")
    p.add_argument("--plot", default=None, metavar="OUT.png",
                   help="anytime curves measured live on labelled data (+ .csv/.json beside it)")
    p.add_argument("--data", default=None, metavar="DIR", help="dataset folder for --plot (default: the usual place)")
    p.add_argument("--images", default=None, metavar="X.npy", help="labelled images for --plot instead of the dataset")
    p.add_argument("--labels", default=None, metavar="Y.npy")
    p.add_argument("--curve-samples", type=positive_int, default=500, help="labelled images per live curve point")
    p.add_argument("--json", default="bench.json", metavar="OUT.json", help="where to save the results (default bench.json)")
    p.add_argument("-q", "--quiet", action="store_true")
    return p


def run(args: argparse.Namespace) -> int:
    from ..calibrate.bench import BenchConfig, run_bench
    from ..calibrate.datasets import optional_arrays

    for option, path in (("--json", args.json), ("--plot", args.plot)):
        check_report_path(path, args.bundle, option)
    images, labels = optional_arrays(args.images, args.labels)
    defaults = BenchConfig()
    session = defaults.session.replace(backend=args.backend, precision=args.precision, intra_op_threads=args.threads)
    cfg = BenchConfig(session=session, runs=args.runs, warmup=args.warmup, calls=args.calls, budgets_ms=args.budgets,
                      burn=args.burn, plot=args.plot, data=args.data, curve_samples=args.curve_samples,
                      json_path=args.json or None)
    progress = None if args.quiet else (lambda m: print(f"# {m}", file=sys.stderr, flush=True))
    res = run_bench(args.bundle, cfg, images=images, labels=labels, progress=progress)
    print(res.summary())
    return 0

"""``sdedge calibrate BUNDLE``: temperatures, thresholds and a latency profile, written into the bundle.

Runs on the target device without PyTorch (numpy + the runtime). See :mod:`sdedge.calibrate.api`.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any

from .argtypes import add_precision_argument, check_report_path, positive_list


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "calibrate", help="fit temperatures and per-exit thresholds, measure a latency profile (on the target)",
        description="Calibrate a bundle on the device it will run on: run every exit on labelled data once, fit a "
                    "temperature per exit (NLL), choose per-exit confidence thresholds for an accuracy or latency "
                    "target (fit on one half of the data, reported on the other), measure each section's latency "
                    "(profiles/<device>.json), and write calibration.json and the profile atomically into the bundle.",
        epilog="Data: by default the validation split the model was trained without (read from the bundle's training "
               "metadata: Fashion-MNIST IDX files, CIFAR python pickles, or the built-in digits). "
               "Examples: `sdedge calibrate bundle/ --data ~/fashion-mnist --max-accuracy-drop 0.5 --plot curve.png`; "
               "`sdedge calibrate bundle/ --images x.npy --labels y.npy --target-latency-ms 2`.")
    p.add_argument("bundle", help="bundle folder (made by `sdedge export`)")
    d = p.add_argument_group("data")
    d.add_argument("--data", default=None, metavar="DIR", help="dataset folder (default: $SDEDGE_DATA or the usual place)")
    d.add_argument("--images", default=None, metavar="X.npy",
                   help="calibration images instead: raw uint8 [N,H,W,C] or preprocessed float [N,C,H,W]")
    d.add_argument("--labels", default=None, metavar="Y.npy", help="labels of --images, integers [N]")
    d.add_argument("--split", choices=["val", "test", "train"], default="val",
                   help="which split of the dataset (default val: the hold-out training never saw)")
    d.add_argument("--max-samples", type=int, default=None, help="seeded subsample of the calibration data")
    d.add_argument("--heldout-fraction", type=float, default=0.5,
                   help="share kept aside to report the expected accuracy/latency (default 0.5; 0 = same data, warned)")
    d.add_argument("--seed", type=int, default=0, help="seed of the fit/held-out split and subsample")
    t = p.add_argument_group("target (one of)")
    g = t.add_mutually_exclusive_group()
    g.add_argument("--target-accuracy", type=float, default=None,
                   help="absolute accuracy to keep (fraction, or percent when > 1): the cheapest thresholds that reach it")
    g.add_argument("--max-accuracy-drop", type=float, default=None,
                   help="percentage points below the deepest exit's accuracy (default 1.0)")
    g.add_argument("--target-latency-ms", type=float, default=None,
                   help="expected mean latency per image: the most accurate thresholds within it")
    t.add_argument("--criterion", choices=["max_prob", "entropy", "margin"], default="max_prob",
                   help="confidence criterion the thresholds apply to")
    t.add_argument("--confidence-z", type=float, default=2.0,
                   help="accuracy targets must hold for the accuracy minus Z standard errors on the fitting data "
                        "(default 2; 0 = the point estimate, which tends to miss the target on new data)")
    t.add_argument("--no-temperature", action="store_true", help="do not fit temperatures (T = 1)")
    t.add_argument("--answer", choices=["last", "ensemble"], default="last",
                   help="answer mode the thresholds are chosen for (the session's answer=)")
    r = p.add_argument_group("device and profile")
    r.add_argument("--backend", choices=["auto", "onnxruntime", "tensorrt"], default="auto")
    add_precision_argument(r)
    r.add_argument("--threads", type=positive_list(int, "integers"), default=None,
                   help="intra-op threads; a comma list profiles each (e.g. 1,2), the first runs the calibration")
    r.add_argument("--profile-runs", type=int, default=200, help="timed runs per batch size (0: keep the bundle's profile)")
    r.add_argument("--profile-warmup", type=int, default=20, help="untimed warm-up runs")
    r.add_argument("--overhead-runs", type=int, default=200, help="calls per contender to measure the decision overhead")
    r.add_argument("--batch-sizes", type=positive_list(int, "integers"), default=None,
                   help="batch sizes to profile (default 1,2,4,8,16 up to the session's max batch: a batch of n rows is charged the profiled "
                        "size at or above n, beyond the largest one scaled linearly)")
    r.add_argument("--latency-stat", choices=["mean", "p50", "p90", "p99"], default="mean",
                   help="per-section statistic behind expected latencies (default mean; p50 ignores a noisy machine's "
                        "outliers, p99 plans for them)")
    r.add_argument("--profile-only", action="store_true",
                   help="only measure and write the profile(s); needs no dataset (random pixels when no --data, "
                        "--images or $SDEDGE_DATA is given and none is found in the usual place)")
    o = p.add_argument_group("output")
    o.add_argument("--plot", default=None, metavar="OUT.png", help="anytime-curve PNG (+ .csv and .json tables beside it)")
    o.add_argument("--dry-run", action="store_true", help="report only; write nothing into the bundle")
    o.add_argument("--json", default=None, metavar="OUT.json", help="also save the calibration report here")
    o.add_argument("-q", "--quiet", action="store_true", help="no progress messages")
    return p


def run(args: argparse.Namespace) -> int:
    from ..calibrate.api import CalibrationConfig, calibrate_bundle
    from ..calibrate.datasets import optional_arrays
    from ..runtime.options import SessionOptions

    for option, path in (("--json", args.json), ("--plot", args.plot)):
        check_report_path(path, args.bundle, option)
    images, labels = optional_arrays(args.images, args.labels)
    threads = tuple(args.threads) if args.threads else (None,)
    session = SessionOptions(backend=args.backend, precision=args.precision, intra_op_threads=threads[0],
                             criterion=args.criterion, answer=args.answer)
    cfg = CalibrationConfig(
        session=session, profile_threads=threads[1:], target_accuracy=args.target_accuracy,
        max_accuracy_drop=args.max_accuracy_drop, target_latency_ms=args.target_latency_ms, data=args.data,
        split=args.split, max_samples=args.max_samples, heldout_fraction=args.heldout_fraction, seed=args.seed,
        batch_sizes=tuple(args.batch_sizes) if args.batch_sizes else None, profile_runs=args.profile_runs,
        profile_warmup=args.profile_warmup,
        overhead_runs=args.overhead_runs, confidence_z=args.confidence_z, temperature=not args.no_temperature,
        latency_stat=f"{args.latency_stat}_ms", profile_only=args.profile_only, plot=args.plot,
        write=not args.dry_run)
    progress = None if args.quiet else (lambda m: print(f"# {m}", file=sys.stderr, flush=True))
    res = calibrate_bundle(args.bundle, images=images, labels=labels, config=cfg, progress=progress)
    print(res.summary())
    if args.json:
        from ..common.jsonio import write_json_atomic

        report = res.calibration if res.calibration is not None else {"profiles": res.profiles}
        write_json_atomic(args.json, report)
    if args.dry_run:
        print("dry run: nothing written into the bundle")
    return 0

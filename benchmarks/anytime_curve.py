"""Anytime curve of a multi-exit model on its official test split: confidence vs deadline policy vs fixed exits.

    python benchmarks/anytime_curve.py --checkpoint runs/preset/byot/best.pt --data ../shared/data/fashion-mnist
    python benchmarks/anytime_curve.py --bundle bundle/ --data ../shared/data/fashion-mnist --live 1000
    python benchmarks/anytime_curve.py --quick --data ../shared/data/fashion-mnist      # trains a small model first

Contract
--------
* Calibration (temperatures, thresholds for ``--max-accuracy-drop`` pp, latency profile) uses the
  validation split the model was trained without (``sdedge calibrate`` defaults: half to fit, half to
  report); every figure printed here is on the official **test** split, never used for any choice.
* Latency: the bundle's per-section profile on this machine (ONNX Runtime CPU, ``--threads`` intra-op
  threads, batch 1, ``--profile-runs`` timed runs after warm-up; ``time.perf_counter`` around each
  section, model only) plus the measured decision overhead. The *full latency* is the cost of running
  every section (the deepest exit).
* Policies, at 25/50/75/100 % of the full latency:
  - fixed exit: the deepest exit whose latency fits;
  - deadline policy: a per-call budget of that size, simulated with the runtime's rule from the profile
    (go on only if the next section's prior, the
    profile's p90 as rule 6 of ``runtime/policies.py`` charges, fits); with ``--live N`` also measured live on N test
    images (``AnytimeSession.infer(x, budget_ms=...)`` end to end, batch 1), the budgets then being
    fractions of the full network's *end-to-end* ``infer`` p50 (which includes the runtime's per-call
    time: input checks, the answer), and the confidence policy at 8 shared thresholds likewise;
  - confidence policy: the best shared threshold whose *mean* latency fits (temperature-scaled max
    probability), replayed from every exit's logits; the calibrated per-exit thresholds are one point.
* ECE (15 bins, max probability) per exit before/after temperature scaling, on the test split.

Writes ``OUT/anytime_test.png``, ``.csv``, ``.json`` (series as in :mod:`sdedge.calibrate.curves`),
with ``--live`` also ``OUT/anytime_live.*`` (every series on the same first N test images), and
``OUT/figures.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--bundle", help="an exported bundle (calibrated in place unless --no-calibrate)")
    src.add_argument("--checkpoint", help="a checkpoint: exported to OUT/bundle first")
    src.add_argument("--quick", action="store_true", help="train a small byot model first (tiny width 16, --epochs)")
    ap.add_argument("--data", default=None, help="dataset folder (Fashion-MNIST: the folder with the IDX .gz files)")
    ap.add_argument("--dataset", default="fashion-mnist", help="dataset for --quick")
    ap.add_argument("--epochs", type=int, default=3, help="--quick: training epochs")
    ap.add_argument("--out", default="runs/anytime", help="output folder")
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads for every latency")
    ap.add_argument("--profile-runs", type=int, default=300)
    ap.add_argument("--max-accuracy-drop", type=float, default=1.0)
    ap.add_argument("--criterion", default="max_prob", choices=["max_prob", "entropy", "margin"])
    ap.add_argument("--live", type=int, default=0, metavar="N", help="also measure the policies live on N test images")
    ap.add_argument("--no-calibrate", action="store_true", help="use the bundle's calibration and profile as they are")
    ap.add_argument("--json", help="also write the figures here, with the command, machine and versions")
    args = ap.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    bundle = Path(args.bundle) if args.bundle else None
    if args.quick:
        from sdedge.train import TrainConfig, train

        r = train(TrainConfig(dataset=args.dataset, data=args.data, backbone="tiny", backbone_kwargs={"width": 16},
                              method="byot", epochs=args.epochs, batch_size=128, lr=0.05, schedule="cosine",
                              output=str(out / "run"), device="cpu", progress=False, resume=True))
        args.checkpoint = r.best_checkpoint
    if args.checkpoint:
        from sdedge.export import ExportConfig, export_bundle

        bundle = Path(export_bundle(ExportConfig(checkpoint=str(args.checkpoint), output=str(out / "bundle"),
                                                 force=True, data=args.data, threads=args.threads)).bundle_path)
    assert bundle is not None

    # -- from here on: torch-free, as on the device ---------------------------------------------------------------
    from sdedge.calibrate.api import CalibrationConfig, calibrate_bundle
    from sdedge.calibrate.curves import accuracy_at_fractions, format_fraction_table, live_points, offline_curves
    from sdedge.calibrate.datasets import load_calibration_split
    from sdedge.calibrate.metrics import ece, nll
    from sdedge.calibrate.plot import save_curves
    from sdedge.common.atomic import write_text_atomic
    from sdedge.calibrate.thresholds import ReplayTable, exit_costs_from_profile
    from sdedge.runtime import AnytimeSession, SessionOptions, open_bundle
    from sdedge.runtime.preprocess import Preprocessor

    options = SessionOptions(backend="onnxruntime", intra_op_threads=args.threads)
    if not args.no_calibrate:
        res = calibrate_bundle(bundle, config=CalibrationConfig(
            session=options.replace(criterion=args.criterion), data=args.data,
            max_accuracy_drop=args.max_accuracy_drop, profile_runs=args.profile_runs, overhead_runs=args.profile_runs,
            plot=str(out / "anytime_val.png")), progress=lambda m: print(f"# {m}", file=sys.stderr, flush=True))
        print(res.summary())
    b = open_bundle(bundle)
    cal = b.calibration
    if cal is None:
        sys.exit(f"{bundle} has no calibration.json: run without --no-calibrate")
    with AnytimeSession(b, options, max_batch=256) as s:
        prof = b.profile(s.device_name)
        if prof is None:
            sys.exit(f"{bundle} has no profile for {s.device_name}: run without --no-calibrate or with these --threads")
        test = load_calibration_split(b.manifest, args.data, "test")
        logits = s.infer_all_exits(test.images)
        table = ReplayTable(logits, test.labels, cal["temperatures"], cal["criterion"])
        costs = exit_costs_from_profile(prof, s.num_exits)
        cs = offline_curves(table, costs, {"thresholds": cal["thresholds"], "enabled": cal["enabled"]})
        live_cs = None
        if args.live:  # the same first N test images for every series of this table
            from sdedge.calibrate.benchmarking import budget_range

            n = min(args.live, len(test.labels))
            sub = table.subset(np.arange(n))
            live_cs = offline_curves(sub, costs, {"thresholds": cal["thresholds"], "enabled": cal["enabled"]})
            x = Preprocessor(b.manifest, 1 << 62)(test.images[:n]).batch
            _, live_full = budget_range(s, x[:64], runs=300)  # full network, infer end to end, p50
            live_cs.meta.update({"live_full_latency_ms": live_full, "n": n})
            budgets = [f * live_full for f in (0.25, 0.5, 0.75, 1.0)]
            thr = [p["value"] for p in live_cs.series["confidence"] if p["value"] is not None]
            thr = [thr[int(i)] for i in np.linspace(0, len(thr) - 1, 8)]
            print(f"# live: {len(budgets)} budgets and {len(thr)} thresholds on {n} test images (full network "
                  f"end to end: {live_full:.4f} ms)", file=sys.stderr, flush=True)
            for name, pts in live_points(s, x, test.labels[:n], budgets, thr).items():
                live_cs.add(name, pts)
        device = s.device_name
    cs.meta.update({"bundle": str(bundle), "device": device, "data": test.source, "split": "test"})
    rows = accuracy_at_fractions(cs)
    ece_rows = []
    for k in range(logits.shape[0]):
        t = cal["temperatures"][k]
        ece_rows.append({"exit": k + 1, "temperature": t, "ece_before": ece(logits[k], test.labels),
                         "ece_after": ece(logits[k], test.labels, t), "nll_before": nll(logits[k], test.labels),
                         "nll_after": nll(logits[k], test.labels, t)})
    calibrated = table.evaluate(cal["thresholds"], costs, cal["enabled"])
    files = save_curves(cs, out / "anytime_test.png", f"{b.manifest.model.get('name')} on {device}\n"
                                                      f"(test split, {len(test.labels)} images)")

    print(f"\n{b.manifest.model.get('name')}: test split ({len(test.labels)} images), {device}, "
          f"full latency {costs.cumulative[-1]:.4f} ms (sections + decision overhead, mean)")
    print(format_fraction_table(rows))
    live_rows = None
    if live_cs is not None:
        live_cs.meta.update({"bundle": str(bundle), "device": device, "split": "test (first N)"})
        live_rows = accuracy_at_fractions(live_cs)
        files.update({f"live_{k}": v for k, v in save_curves(live_cs, out / "anytime_live.png", f"{device}: live, "
                                                              f"first {live_cs.meta['n']} test images").items()})
        print(f"\nthe first {live_cs.meta['n']} test images, live policies beside the replayed ones (live budgets are "
              f"fractions of the full network's end-to-end infer p50, {live_cs.meta['live_full_latency_ms']:.4f} ms):")
        print(format_fraction_table(live_rows))
    print(f"calibrated thresholds ({cal['target']['text']}): accuracy {100 * calibrated['accuracy']:.2f} %, mean "
          f"latency {calibrated['mean_latency_ms']:.4f} ms ({100 * calibrated['mean_latency_ms'] / costs.cumulative[-1]:.0f} "
          f"% of full), exits {calibrated['exit_histogram']}")
    print(f"\n{'exit':>4} {'T':>6} {'ECE before':>10} {'ECE after':>9} {'NLL before':>10} {'NLL after':>9} {'acc %':>7}")
    accs = table.exit_accuracies()
    for r in ece_rows:
        print(f"{r['exit']:>4} {r['temperature']:>6.3f} {100 * r['ece_before']:>9.2f}% {100 * r['ece_after']:>8.2f}% "
              f"{r['nll_before']:>10.4f} {r['nll_after']:>9.4f} {100 * accs[r['exit'] - 1]:>7.2f}")
    figures = {"bundle": str(bundle), "device": device, "test_n": int(len(test.labels)),
               "full_latency_ms": costs.cumulative[-1], "accuracy_at_fraction": rows, "live": live_rows, "ece": ece_rows,
               "calibrated": calibrated, "target": cal["target"], "files": files,
               "wall_s": round(time.perf_counter() - t0, 1)}
    write_text_atomic(out / "figures.json", json.dumps(figures, indent=1, default=float))
    if args.json:
        from sdedge.calibrate import benchmarking as B

        record = {"contract": B.contract(args.threads, 0, args.profile_runs, extra=(
            "latencies: the bundle's profile (model only) plus the decision overhead; accuracies on the official "
            "test split; calibration on the validation split")), "figures": figures, "profile": prof}
        write_text_atomic(args.json, json.dumps(record, indent=1, default=float))
    print("\n" + ", ".join(files.values()) + f", {out / 'figures.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

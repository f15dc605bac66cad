"""Runtime figures on ONNX Runtime CPU, batch 1, measured side by side in one run.

    python benchmarks/runtime_bench.py BUNDLE [--threads 1] [--runs 500] [--calls 10000] [--burner 1]
                                              [--dataset fashion-mnist --data-dir DIR] [--json out.json]

Prints, each with its contract (machine, threads, warm-up, what the timer includes):

1. split overhead: chained sections / ``full.onnx`` (goal <= 1.05);
2. per-exit latency / full latency beside the exit's MAC share (goal: within 15 %);
3. thread spinning on vs off for the chain (only meaningful with --threads > 1);
4. decision overhead per section in microseconds (goal <= 20 us);
5. deadline compliance over --calls calls with budgets between exit-1 (p99.9) and full latency (p50), on a quiet
   machine and with --burner CPU-burning neighbour processes (goal >= 99.9 % met);
6. ``answer="last"`` vs ``"ensemble"`` accuracy on labelled data (with --dataset; needs sdedge.data).

The measuring functions live in :mod:`sdedge.calibrate.benchmarking` (``sdedge bench`` reuses them).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from sdedge.runtime import AnytimeSession, open_bundle
from sdedge.calibrate import benchmarking as B
from sdedge.common.atomic import write_text_atomic


def load_inputs(session: AnytimeSession, args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(float inputs for timing, raw test images, labels) — real data when --dataset is given."""
    if args.dataset:
        from sdedge.data import load_splits

        test = load_splits(args.dataset, args.data_dir, limit=None).test
        raw, labels = test.images[: args.eval_limit], test.labels[: args.eval_limit]
        return _preprocess(session, raw[:256]), raw, labels
    rng = np.random.default_rng(0)
    c, h, w = session.input_shape
    return rng.standard_normal((256, c, h, w)).astype(np.float32), None, None


def _preprocess(session: AnytimeSession, raw: np.ndarray) -> np.ndarray:
    pre = session.manifest.preprocess
    x = (raw.astype(np.float32) * pre.scale - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=500, help="timed calls per contender (latency, overhead)")
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--calls", type=int, default=10_000, help="calls per deadline-compliance run")
    p.add_argument("--burner", type=int, default=1, help="CPU-burning neighbour processes in the second run (0: skip)")
    p.add_argument("--quantiles", type=float, nargs="+", default=[0.99, 1.0],
                   help="online latency quantiles to compare in the compliance runs (1.0 = window maximum)")
    p.add_argument("--spin-threads", type=int, default=2, help="threads for the spinning comparison (0: skip)")
    p.add_argument("--dataset", default=None, help="labelled data for answer=last vs ensemble (e.g. fashion-mnist)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--eval-limit", type=int, default=10_000)
    p.add_argument("--json", default=None, help="also write every figure to this JSON file")
    args = p.parse_args(argv)

    bundle = open_bundle(args.bundle)
    session = AnytimeSession(bundle, backend="onnxruntime", intra_op_threads=args.threads, warmup=20)
    inputs, raw, labels = load_inputs(session, args)
    out: dict = {"bundle": str(Path(args.bundle).resolve()), "device": session.device_name}
    print(f"# {session.device_name}  exits={session.num_exits}  input={list(session.input_shape)}  threads={args.threads}")
    print(f"# contract: {json.dumps(B.contract(args.threads, args.warmup, args.runs))}")

    lt = B.latency_table(bundle, inputs, threads=args.threads, runs=args.runs, warmup=args.warmup)
    out["latency"] = lt.to_json()
    mr = lt.chain_mac_ratio
    print(f"\n1. split overhead (chained sections / full.onnx, p50): {lt.split_overhead:.3f}  (goal <= 1.05)"
          f"   full p50 {lt.full['p50_ms']:.4f} ms; the chain also computes the intermediate exit heads: MACs "
          f"chain/full {'n/a' if mr is None else f'{mr:.3f}'}"
          + ("" if mr is None else f", time beyond the extra MACs {lt.split_overhead / mr:.3f}"))
    print("2. exit   p50 ms    p99 ms   latency/full   MAC share   diff (points)   latency/MAC share")
    for e in lt.exits:
        share = e["mac_share"]
        diff = "" if share is None else f"{e['latency_share'] - share:+13.3f}   {e['latency_share'] / share:17.3f}"
        print(f"   {e['exit']:>4}  {e['p50_ms']:8.4f}  {e['p99_ms']:8.4f}   {e['latency_share']:11.3f}   "
              f"{'n/a' if share is None else f'{share:9.3f}'}   {diff}")

    if args.spin_threads:
        sp = B.spinning_comparison(bundle, inputs, args.spin_threads, runs=max(100, args.runs // 2))
        out["spinning"] = sp
        print(f"3. spinning ({args.spin_threads} threads): chain p50 off {sp['spin_off']['p50_ms']:.4f} ms, on "
              f"{sp['spin_on']['p50_ms']:.4f} ms  (on/off {sp['chain_on_over_off']:.2f}); full.onnx off "
              f"{sp['full_spin_off']['p50_ms']:.4f}, on {sp['full_spin_on']['p50_ms']:.4f} ms\n"
              f"   calls paced 1 ms apart (frames): chain p50 off {sp['spin_off_paced']['p50_ms']:.4f} ms, on "
              f"{sp['spin_on_paced']['p50_ms']:.4f} ms; p99 off {sp['spin_off_paced']['p99_ms']:.3f}, on "
              f"{sp['spin_on_paced']['p99_ms']:.3f} ms; CPU time per call off {sp['spin_off_cpu_ms_per_call']:.3f} ms, "
              f"on {sp['spin_on_cpu_ms_per_call']:.3f} ms")

    do = B.decision_overhead(session, inputs, runs=args.runs, warmup=args.warmup)
    out["decision_overhead"] = do
    per = do["per_section_us"]
    print(f"4. decision overhead per section: {'n/a' if per is None else f'{per:.1f}'} us (both policies active; "
          f"goal <= 20 us) + {do['fixed_per_call_us'] or float('nan'):.1f} us fixed per call; plain call (generous budget, no threshold): "
          f"{do['plain_overhead_us_per_section']:.1f} us per section all included")
    for e in do["per_exit"]:
        print(f"     stop at exit {e['exit']}: chain {e['chain_p50_ms']:.4f} ms, infer "
              f"{e['infer_p50_ms'] if e['infer_p50_ms'] is None else round(e['infer_p50_ms'], 4)} ms, overhead "
              f"{e['overhead_us'] if e['overhead_us'] is None else round(e['overhead_us'], 1)} us"
              + (f" ({e['stopped_early']} calls stopped earlier, left out)" if e["stopped_early"] else ""))

    out["deadline"] = []
    for q in args.quantiles:
        sq = AnytimeSession(bundle, backend="onnxruntime", intra_op_threads=args.threads, warmup=20, latency_quantile=q)
        for name, burner in [("quiet", 0)] + ([(f"{args.burner} CPU burner(s)", args.burner)] if args.burner else []):
            dc = B.deadline_compliance(sq, inputs, calls=args.calls, burner=burner)
            out["deadline"].append(dc)
            lo, hi = dc["budget_ms"]
            print(f"5. deadline compliance, q={q}, {name}: {100 * dc['met_share']:.2f} % met over {dc['calls']} calls "
                  f"(misses {dc['misses']}: {dc['floor_misses']} at the exit-1 floor, {dc['policy_misses']} after going "
                  f"on; worst overrun {dc['worst_overrun_ms']:.3f} ms; mean exit {dc['mean_exit']:.2f}, exits "
                  f"{dc['exit_histogram']}; budgets {lo:.3f}..{hi:.3f} ms)")
        sq.close()
    print("   budgets uniform in [exit-1 p99.9, full p50] of infer end to end, measured under the run's load "
          "(goal >= 99.9 %)")

    if labels is not None:
        logits = session.infer_all_exits(raw)
        temps = session.calibration.temperatures if session.calibration else None
        am = B.answer_modes(logits, labels, temps, mac_share=B.mac_shares(bundle.manifest))
        out["answer_modes"] = am
        print(f"6. answer=last vs ensemble on {am['n']} labelled {args.dataset} test images")
        print("   per exit (a deadline stopping there):  " +
              "  ".join(f"exit {e['exit']}: {e['last']:.4f} vs {e['ensemble']:.4f}" for e in am["per_exit"]))
        print("   threshold   last acc  mean exit   ensemble acc  mean exit")
        for r in am["threshold_sweep"]:
            print(f"   {r['threshold']:9.2f}   {r['last_accuracy']:.4f}   {r['last_mean_exit']:8.3f}    "
                  f"{r['ensemble_accuracy']:.4f}       {r['ensemble_mean_exit']:8.3f}")
    if args.json:
        write_text_atomic(args.json, json.dumps(out, indent=2, default=float))
    session.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

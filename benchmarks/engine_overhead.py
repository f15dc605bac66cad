"""The native engine beside the Python one and the bare graphs: what the session costs (issue 12's figures).

    python benchmarks/engine_overhead.py BUNDLE [--threads 1] [--runs 3000] [--warmup 300] [--json out.json]

One run, batch 1, ONNX Runtime CPU with ``--threads`` intra-op threads, every contender on the same
preloaded, preprocessed float inputs, interleaved call by call in a shuffled order
(:func:`sdedge.calibrate.benchmarking._interleaved`):

* ``full``: ``full.onnx``, the whole network in one graph (the reference);
* ``chain``: the section graphs run back to back with no decision (``Backend.run_chain``: the naive chain);
* ``native``/``python`` x ``none`` (no policy), ``deadline`` (a budget of 10 s: every deadline check made,
  never stopping) and ``confidence`` (a threshold of 1.0 at every exit but the last: every confidence
  computed, never stopping): ``AnytimeSession.infer`` on each engine, entry to return.

Printed: p50/p99 of each, and each session contender over ``full`` and over ``chain`` (p50). Then the
native core's own time by its own clock (:func:`core_own_time`), and each engine's decision overhead
(:func:`sdedge.calibrate.benchmarking.decision_overhead`: per section and per call, from ``infer`` forced
to stop at each exit beside the chain to that exit). The two engines load the
same ONNX Runtime library (the wheel's), so the graphs cost the same under both. Goals (issue 12): the
deadline-only policy at the deepest exit <= 1.03 x ``full.onnx``, the confidence policy <= 1.15 x;
decision overhead <= 3 us per section and <= 10 us per call.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from sdedge.calibrate import benchmarking as B
from sdedge.common.atomic import write_text_atomic
from sdedge.runtime import AnytimeSession, open_bundle


def profile_free_copy(bundle: str, dest: Path) -> Path:
    """A copy of ``bundle`` without latency profiles (their files and manifest entries), so the core's cost
    estimates are its online measurements alone (a profile's figures would be a floor under them)."""
    shutil.copytree(bundle, dest)
    shutil.rmtree(dest / "profiles", ignore_errors=True)
    raw = json.loads((dest / "manifest.json").read_text())
    raw["files"] = {rel: v for rel, v in raw["files"].items() if not rel.startswith("profiles/")}
    (dest / "manifest.json").write_text(json.dumps(raw, indent=2))
    return dest


def core_own_time(bundle: str, xs: list[np.ndarray], threads: int, runs: int, warmup: int) -> dict:
    """The native core's own time per call (µs), by its own clock, at each exit; split per section and per call.

    The core times every section's backend run and, per call, the rest of the call (preprocessing, softmax,
    criteria, deadline checks, bookkeeping, the results): its per-call overhead sample, the figure its
    deadline policy charges (``section_cost_ms(0, rows)``). For each exit k a fresh native session (no latency
    profile; the online estimate's quantile set to the median, its window to ``runs``) answers ``runs`` calls
    forced to stop at k with both policies active (a 1e6 ms budget; thresholds 1.0 before k, 0.0 at k), after
    ``warmup`` calls; its median own time is read back. The core's figure is the window's quantile raised to
    the last two samples (so a slowdown is felt at once): read after each of 200 more calls, the smallest
    reading is the median itself (any two consecutive calls at or under it). A least-squares line through the
    K medians gives the own time per section and per call. This counts the decisions and bookkeeping, not
    the backend's wrapper round a run (binding the tensors, reading the shapes, copying the logits), which
    falls inside the timed run.
    """
    with tempfile.TemporaryDirectory() as tmp:
        root = profile_free_copy(bundle, Path(tmp) / "bundle")
        n = open_bundle(root).manifest.num_exits
        per_exit = []
        for k in range(1, n + 1):
            s = AnytimeSession(root, engine="native", intra_op_threads=threads, warmup=5, latency_quantile=0.5,
                               latency_window=runs)
            thr = [1.0] * (k - 1) + ([0.0] if k < n else []) + [1.0] * max(0, n - 1 - k)
            got, readings = [], []
            for i in range(warmup + runs + 200):
                got.append(s.infer(xs[i % len(xs)], budget_ms=1e6, threshold=thr).exit_index)
                if i >= warmup + runs:
                    readings.append(s.section_cost_ms(0, 1))
            per_exit.append({"exit": k, "own_us_p50": min(readings) * 1e3,
                             "stopped_elsewhere": int(sum(e != k for e in got))})
            s.close()
    slope, intercept = np.polyfit([e["exit"] for e in per_exit], [e["own_us_p50"] for e in per_exit], 1)
    return {"per_exit": per_exit, "per_section_us": float(slope), "per_call_us": float(intercept)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=3000, help="timed calls per contender")
    p.add_argument("--warmup", type=int, default=300, help="untimed calls per contender first")
    p.add_argument("--json", help="write every figure here")
    args = p.parse_args(argv)

    sessions = {e: AnytimeSession(args.bundle, engine=e, intra_op_threads=args.threads, warmup=5)
                for e in ("native", "python")}
    k = sessions["python"].num_exits
    be = sessions["python"].backend
    c, h, w = sessions["python"].input_shape
    xs = [np.random.default_rng(i).standard_normal((c, h, w)).astype(np.float32) for i in range(64)]
    never = [1.0] * (k - 1)
    exits: dict[str, list[int]] = {}

    def session_call(name: str, s: AnytimeSession, **kw: object):
        exits[name] = []
        return lambda x: exits[name].append(s.infer(x, **kw).exit_index)

    contenders = {"full": lambda x: be.run_reference(x[None]), "chain": lambda x: be.run_chain(x[None])}
    for e, s in sessions.items():
        contenders[f"{e}_none"] = session_call(f"{e}_none", s)
        contenders[f"{e}_deadline"] = session_call(f"{e}_deadline", s, budget_ms=1e4)
        contenders[f"{e}_confidence"] = session_call(f"{e}_confidence", s, threshold=never)
    t = B._interleaved(contenders, xs, args.runs, args.warmup)
    stats = {n: B.stats_ms(v) for n, v in t.items()}
    contract = B.contract(args.threads, args.warmup, args.runs,
                          extra="float inputs; session contenders: infer entry to return; full/chain: backend calls")
    print(f"# contract: {json.dumps(contract)}")
    print(f"{'contender':22s} {'p50 us':>9s} {'p99 us':>9s} {'/full p50':>10s} {'/chain p50':>11s}  deepest")
    full, chain = stats["full"]["p50_ms"], stats["chain"]["p50_ms"]
    for n, s in stats.items():
        deep = "" if n not in exits else f"{np.mean(np.asarray(exits[n]) == k):.3f}"
        print(f"{n:22s} {s['p50_ms'] * 1e3:9.1f} {s['p99_ms'] * 1e3:9.1f} {s['p50_ms'] / full:10.3f} "
              f"{s['p50_ms'] / chain:11.3f}  {deep}")
    own = core_own_time(args.bundle, xs, args.threads, max(1000, args.runs // 3), max(50, args.warmup // 3))
    print("native core's own time (its clock, median): " + ", ".join(
        f"exit {e['exit']} {e['own_us_p50']:.2f} us" for e in own["per_exit"]) +
        f"; per section {own['per_section_us']:.2f} us, per call {own['per_call_us']:.2f} us "
        f"(goals <= 3 and <= 10)")
    overhead = {}
    for e, s in sessions.items():
        o = B.decision_overhead(s, np.stack(xs), runs=max(200, args.runs // 3), warmup=max(20, args.warmup // 3))
        overhead[e] = {key: o[key] for key in ("per_section_us", "fixed_per_call_us", "plain_overhead_us_per_section")}
        print(f"decision overhead, {e:6s}: per section {o['per_section_us']:.2f} us, per call "
              f"{o['fixed_per_call_us']:.2f} us (plain call: {o['plain_overhead_us_per_section']:.2f} us per section)")
    if args.json:
        write_text_atomic(args.json, json.dumps({"contract": contract, "stats": stats, "overhead": overhead,
                                                 "native_own_time": own,
                                                 "deepest_share": {n: float(np.mean(np.asarray(v) == k))
                                                                   for n, v in exits.items()}}, indent=2) + "\n")
    for s in sessions.values():
        s.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

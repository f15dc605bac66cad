"""Deadline compliance of ``AnytimeSession`` on a real bundle, the new deadline policy beside the old one.

    python benchmarks/deadline_compliance.py BUNDLE [--calls 10000] [--threads 1] [--pace-ms 1]
        [--scenarios steady idle neighbour batches] [--gap-s 65] [--gaps 2] [--phase-calls 1000]
        [--max-rows 16] [--no-profile] [--no-old] [--json out.json]

Scenarios (``--calls`` calls each, 10 000 by default):

* ``steady``: one image per call, calls paced ``--pace-ms`` apart (camera frames);
* ``idle``: the same, the calls split into ``--gaps + 1`` stretches by idle gaps of ``--gap-s`` seconds,
  longer than any aging window (the old policy forgot its figures after 60 s);
* ``neighbour``: the same, with a CPU-burning neighbour process switched on and off every
  ``--phase-calls`` calls (:func:`~sdedge.calibrate.benchmarking.cpu_burner`);
* ``batches``: calls of 1 to ``--max-rows`` images (uniform), budgets for that many rows.

Budgets are uniform between exit 1 and the full network: ``[exit-1 p99.9, full p50]`` of ``infer`` end to
end (:func:`~sdedge.calibrate.benchmarking.budget_range`), measured once on the quiet machine before the
scenarios (for ``batches``, at one row and at ``--max-rows`` rows, linearly between); the same budget
sequence goes to every contender.

Contenders, interleaved call by call in a shuffled order so that drift and the neighbour hit them alike:
``new`` (the session as it is: :mod:`sdedge.runtime.policies`, rules 1-9), ``prior_floor`` (the same rules
with the profile's figure kept as a floor under every cell for good, as before the prior stepped aside after
``PRIOR_SAMPLES`` samples of a cell's own), ``old`` (the same session with
the estimator before issue 12: power-of-two batch buckets, a p99 ring refreshed every 16 samples, figures
forgotten after 60 s without a sample; ``--no-old`` leaves it out) and ``trace`` (a third session running
every section with no budget, its section times kept: the trace). The *oracle* of a call is the deepest
exit whose true time in the trace call of the same round (the runtime's own time included: that call's
latency minus its section times, plus the sections up to that exit) fits the budget; a call's budget
*admits exit 1* when the oracle's exit 1 fits.

Reported per scenario and contender: the share of calls whose budget admits exit 1 that end by their
deadline (goal >= 99.9 %), the mean exit over the oracle's mean exit on those calls (goal >= 0.9), the
exit histogram, the misses at the exit-1 floor and the worst overrun.

Contract: inputs are random float32 images of the bundle's input shape (``--seed``), preprocessed once,
preloaded, the same for every contender; the timer is ``time.perf_counter`` around ``infer`` (entry to
return, end to end: what the caller sees); each session is warmed up by its own warm-up (``--warmup``
calls per row count) plus 200 budgeted calls, all discarded; ONNX Runtime CPU with ``--threads``
intra-op threads per session (1 by default), spinning off; the machine (CPU model, CPUs available, load
average) is printed with the results. The bundle's latency profile for this device is used when it has
one (``--no-profile``: online figures alone). Figures are only meaningful on a quiet machine.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from typing import Any, Callable

import numpy as np

from sdedge.calibrate import benchmarking as B
from sdedge.common.atomic import write_text_atomic
from sdedge.runtime import AnytimeSession, open_bundle
from sdedge.runtime.backends import create_backend
from sdedge.runtime.options import SessionOptions

SCENARIOS = ("steady", "idle", "neighbour", "batches")


class OldEstimator:
    """The online estimator before issue 12, for this comparison only (it is not the product's)."""

    def __init__(self, num_sections: int, window: int = 256, quantile: float = 0.99, min_samples: int = 3,
                 refresh: int = 16, max_age_s: float = 60.0, clock: Callable[[], float] = time.perf_counter) -> None:
        self.window, self.quantile, self.min_samples, self.refresh = window, quantile, min_samples, refresh
        self.max_age_s, self.clock = max_age_s, clock
        self._rings: list[dict[int, dict[str, Any]]] = [dict() for _ in range(num_sections + 1)]

    @staticmethod
    def bucket(n: int) -> int:
        return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()

    def record(self, section: int, batch: int, ms: float) -> None:
        r = self._rings[section].setdefault(self.bucket(batch), {"buf": [], "q": 0.0, "dirty": 0, "last": 0.0})
        r["last"] = self.clock()
        r["buf"] = (r["buf"] + [ms])[-self.window:]
        r["dirty"] += 1
        if ms > r["q"] or r["dirty"] >= self.refresh:
            n = len(r["buf"])
            r["q"] = sorted(r["buf"])[min(n - 1, math.ceil(self.quantile * (n - 1)))]
            r["dirty"] = 0

    def estimate(self, section: int, batch: int) -> float | None:
        rings, b = self._rings[section], self.bucket(batch)
        oldest = self.clock() - self.max_age_s
        r = rings.get(b)
        if r is not None and len(r["buf"]) >= self.min_samples and r["last"] >= oldest:
            return r["q"]
        for k in [k for k, v in rings.items() if v["last"] < oldest]:
            del rings[k]
        ok = [k for k, v in rings.items() if len(v["buf"]) >= self.min_samples]
        if not ok:
            return None
        larger = [k for k in ok if k > b]
        return rings[min(larger)]["q"] if larger else rings[max(ok)]["q"] * (b / max(ok))

    def skipped(self, section: int, batch: int) -> None:  # the old policy had no come-down rule
        pass

    def settle(self) -> None:  # ... nor a robust warm-up: every warm-up sample counts
        pass


def open_sessions(bundle: Any, args: argparse.Namespace) -> dict[str, AnytimeSession]:
    """The contenders and the trace session, each on its own ONNX Runtime backend, warmed up."""
    opts = SessionOptions(backend="onnxruntime", precision="fp32", intra_op_threads=args.threads, max_batch=args.max_rows, warmup=0)
    out: dict[str, AnytimeSession] = {}
    for name in ("new", "prior_floor", "old", "trace"):
        if name == "old" and args.no_old:
            continue
        # the old estimator predates rule 9 (the whole network as full.onnx): its session has no full graph
        be = create_backend(bundle, "onnxruntime", (opts.replace(full_graph=False) if name == "old" else opts).for_backend())
        s = AnytimeSession(bundle, opts, backend=B.TracingBackend(be) if name == "trace" else be)
        if args.no_profile:
            s.profile = s.deadline_policy.profile = None
        if name == "prior_floor":  # the new rules with the profile as a floor for good (before it stepped aside)
            s.deadline_policy.prior_samples = None
        if name == "old":
            s.estimator = s.deadline_policy.estimator = OldEstimator(s.num_exits)  # type: ignore[assignment]
            s.deadline_policy.prior_samples = None  # it counts no samples per cell
        s._warmup(args.warmup)
        out[name] = s
    return out


def run_scenario(name: str, sessions: dict[str, AnytimeSession], inputs: np.ndarray, budgets: np.ndarray,
                 rows: np.ndarray, args: argparse.Namespace) -> dict:
    """``len(budgets)`` rounds; in each, every session answers the same input under the same budget."""
    calls = len(budgets)
    tracer = sessions["trace"].backend
    assert isinstance(tracer, B.TracingBackend)
    contenders = [n for n in sessions if n != "trace"]
    exits = {n: np.zeros(calls, np.int64) for n in contenders}
    met = {n: np.zeros(calls, bool) for n in contenders}
    over = {n: np.zeros(calls) for n in contenders}
    oracle = np.zeros(calls, np.int64)
    rng = random.Random(args.seed)
    order = list(sessions)
    xs = {r: B.batches(inputs, int(r)) for r in sorted(set(rows.tolist()))}
    with B.ScenarioConditions(name, calls, args.gaps, args.gap_s, args.phase_calls) as conditions:
        for i in range(calls):
            conditions.before_call(i)
            x = xs[int(rows[i])][i % len(inputs)]
            rng.shuffle(order)
            for n in order:
                s = sessions[n]
                if n == "trace":
                    tracer.take()
                    r = s.infer(x)[0]
                    secs = tracer.take()
                    oracle[i] = B.oracle_exits([r.latency_ms - sum(secs)], [secs], [budgets[i]])[0]
                else:
                    r = s.infer(x, budget_ms=float(budgets[i]))[0]
                    exits[n][i], met[n][i], over[n][i] = r.exit_index, r.deadline_met, r.latency_ms - budgets[i]
            time.sleep(args.pace_ms * 1e-3)
    stretch = conditions.stretch
    admitted = oracle >= 1
    k = sessions["trace"].num_exits
    out: dict[str, Any] = {"scenario": name, "calls": calls, "rows": [int(rows.min()), int(rows.max())],
                           "budget_ms": [float(budgets.min()), float(budgets.max())],
                           "oracle_exit_histogram": [int((oracle == j).sum()) for j in range(0, k + 1)]}
    for n in contenders:
        out[n] = B.compliance_stats(met[n], exits[n], over[n], k, admitted, np.maximum(oracle, 1))
        if name == "idle" and stretch:  # the calls right after each gap
            after = np.zeros(calls, bool)
            for g in range(1, args.gaps + 1):
                after[g * stretch:g * stretch + 10] = True
            out[n]["after_gap_met_share"] = float(met[n][after & admitted].mean()) if (after & admitted).any() else None
    return out


def print_scenario(res: dict) -> None:
    lo, hi = res["budget_ms"]
    print(f"\n{res['scenario']}: {res['calls']} calls of {res['rows'][0]}-{res['rows'][1]} rows, budgets "
          f"{lo:.3f}..{hi:.3f} ms; oracle exits (0 = exit 1 does not fit) {res['oracle_exit_histogram']}")
    print(f"  {'policy':9}  {'admitted':>8}  {'met (admitted)':>14}  {'misses':>6}  {'floor':>5}  {'mean exit':>9}  "
          f"{'oracle':>6}  {'depth/oracle':>12}  {'worst over ms':>13}  exits")
    for n in ("new", "prior_floor", "old"):
        if n not in res:
            continue
        r = res[n]
        share = r.get("met_share_admitted")
        print(f"  {n:9}  {r.get('admitted_calls', 0):8d}  {'n/a' if share is None else f'{100 * share:.3f} %':>14}  "
              f"{r.get('misses_admitted', 0):6d}  {r['floor_misses']:5d}  {r['mean_exit']:9.3f}  "
              f"{r.get('oracle_mean_exit', float('nan')):6.3f}  {r.get('depth_vs_oracle', float('nan')):12.3f}  "
              f"{r['worst_overrun_ms']:13.3f}  {r['exit_histogram']}"
              + (f"  (first 10 calls after each gap: {100 * r['after_gap_met_share']:.1f} % met)"
                 if r.get("after_gap_met_share") is not None else ""))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle")
    p.add_argument("--calls", type=int, default=10_000, help="calls per scenario (goal figures need >= 10 000)")
    p.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=5, help="warm-up calls per row count at session start")
    p.add_argument("--pace-ms", type=float, default=1.0, help="idle time between rounds of calls")
    p.add_argument("--gap-s", type=float, default=65.0, help="idle gap of the idle scenario (> the old 60 s aging)")
    p.add_argument("--gaps", type=int, default=2, help="idle gaps in the idle scenario")
    p.add_argument("--phase-calls", type=int, default=1000, help="calls between neighbour switches")
    p.add_argument("--max-rows", type=int, default=16, help="largest batch of the batches scenario")
    p.add_argument("--budget-runs", type=int, default=2000, help="calls measuring the budget range")
    p.add_argument("--no-profile", action="store_true", help="ignore the bundle's latency profile")
    p.add_argument("--no-old", action="store_true", help="leave out the old policy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write every figure here")
    args = p.parse_args(argv)

    bundle = open_bundle(args.bundle)
    sessions = open_sessions(bundle, args)
    new = sessions["new"]
    c, h, w = new.input_shape
    inputs = np.random.default_rng(args.seed).standard_normal((256, c, h, w)).astype(np.float32)
    lo1, hi1 = B.budget_range(new, inputs, runs=args.budget_runs)
    lon, hin = B.budget_range(new, inputs, runs=max(100, args.budget_runs // 4), rows=args.max_rows)
    contract = B.contract(args.threads, args.warmup, args.calls, extra=(
        f"contenders {', '.join(n for n in sessions if n != 'trace')} + trace, interleaved per call in shuffled "
        f"order; profile {'off' if args.no_profile or new.profile is None else 'on'}; budgets uniform in "
        f"[exit-1 p99.9, full p50] of infer: {lo1:.3f}..{hi1:.3f} ms at 1 row, {lon:.3f}..{hin:.3f} ms at "
        f"{args.max_rows} rows"))
    print(f"bundle {args.bundle}: {new.num_exits} exits, device {new.device_name}, profile "
          f"{'off' if args.no_profile or new.profile is None else 'on'}")
    print(f"contract: {json.dumps(contract, default=str)}")
    out: dict[str, Any] = {"contract": contract, "scenarios": []}
    rng = np.random.default_rng(args.seed)
    for name in args.scenarios:
        rows, budgets = B.scenario_calls(name, rng, args.calls, (lo1, hi1), (lon, hin), args.max_rows)
        for s in sessions.values():  # 200 budgeted calls to settle each session in (discarded)
            for i in range(200):
                s.infer(inputs[i % len(inputs)], budget_ms=float(budgets[i % len(budgets)]))
        res = run_scenario(name, sessions, inputs, budgets, rows, args)
        out["scenarios"].append(res)
        print_scenario(res)
    print("\ngoal: >= 99.9 % of the calls whose budget admits exit 1 end by their deadline; mean exit >= 0.9 x "
          "the oracle's")
    if args.json:
        write_text_atomic(args.json, json.dumps(out, indent=2, default=float))
    for s in sessions.values():
        s.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

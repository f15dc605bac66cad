"""The deadline rules' trade-off between compliance and depth, replayed on recorded section times.

    python benchmarks/deadline_frontier.py BUNDLE [--calls 10000] [--scenarios steady idle neighbour batches]
        [--quantiles 0.5 0.75 0.9 0.95 0.99 0.999] [--priors p50_ms p90_ms p99_ms]
        [--budgets measured|trace] [--save-trace T.npz | --load-trace T.npz] [--json out.json]

Why: ``deadline_compliance.py`` runs each policy live, on calls of its own, and takes each call's oracle
from another call of the same round (the trace session's); it compares policies as they run, but it cannot
say whether *any* setting of the rules meets both of issue 12's goals (>= 99.9 % of the admitted calls by
their deadline, mean exit >= 0.9 of the oracle's) on a given machine. This script answers that: it records
the true times once and replays the product's rules on them under every setting, so every setting sees the
very same calls and the oracle is exact (the same call's times).

1. *Trace* (per scenario; as in ``deadline_compliance.py``: steady frames ``--pace-ms`` apart; ``--gaps``
   idle gaps of ``--gap-s``; a CPU-burning neighbour switched on/off every ``--phase-calls`` calls;
   batches of 1..``--max-rows`` rows): one session runs every section of every call with no budget on the
   bundle's ONNX Runtime backend (``TracingBackend``); per call it keeps each section's time and the
   runtime's own time (the call's latency minus its sections). Before each scenario a warm-up
   (``--warmup`` calls at 1 row and at ``--max-rows`` rows, as ``AnytimeSession``'s) is traced the same way.
   Budgets: uniform in ``[exit-1 p99.9, full p50]`` of ``infer`` (``benchmarking.budget_range``; for
   batches, linearly between the 1-row and ``--max-rows``-row ranges), the same seed as the live script;
   with ``--budgets trace`` they are drawn again after recording from each scenario's own calls (per row
   count; :func:`budgets_from_trace`), so the range no longer depends on how fast a shared machine happened
   to be at the moment it was measured (two runs here measured ranges a factor 2 apart).
2. *Replay* (per setting): a fresh :class:`~sdedge.runtime.policies.LatencyEstimator` (``quantile``: the
   setting's, window 256) and :class:`~sdedge.runtime.policies.DeadlinePolicy` (the bundle's profile for
   this device, its ``prior`` quantile as rule 6's prior) take the warm-up samples and settle (rule 5);
   then call by call: section 1 always runs; before section ``k`` the policy's own ``should_stop(k, rows,
   now, deadline)`` decides, ``now`` being the recorded times of the sections run so far; every section
   run is recorded, and the call's own time last (the rules reserve it as the overhead, rule 7). A call
   ends at its sections plus its own time and meets its deadline when that is within its budget. The
   first ``--settle-calls`` calls of a scenario (200) are replayed and left out of the figures, as the live
   script's 200 discarded calls. The rules take no clock (policies.py: "deterministic in the sequence of
   samples and decisions"), so the replay is the product's decision code on the machine's real times.
3. *Oracle*: per call, the deepest exit whose own time plus its sections fits the budget, from the same
   call's times; a call is *admitted* when exit 1 fits (so no floor miss is counted: the figures are the
   rules' own).

Not modelled: rule 9 (the whole network as ``full.onnx``: never taken in the live runs at these budgets),
rule 8 (heads apart: the trace runs a version-1 bundle's sections with their heads), and what a call that
stops early changes for the next one (caches, the neighbour's share of the CPU). Reported per scenario and
setting: met share of the admitted calls, depth/oracle, misses, mean exit; then per scenario the deepest
setting that meets the compliance goal and whether any setting meets both goals.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from sdedge.calibrate import benchmarking as B
from sdedge.common.atomic import write_bytes_atomic, write_text_atomic
from sdedge.runtime import AnytimeSession, open_bundle
from sdedge.runtime.backends import create_backend
from sdedge.runtime.options import SessionOptions
from sdedge.runtime.policies import PROFILE_PRIOR_QUANTILE, DeadlinePolicy, LatencyEstimator
from sdedge.runtime.profile import LatencyProfile

SCENARIOS = ("steady", "idle", "neighbour", "batches")
PRIORS = ("p50_ms", "p90_ms", "p99_ms")
MET_GOAL, DEPTH_GOAL = 0.999, 0.9


@dataclass
class Trace:
    """One scenario's recorded calls: per call its rows, budget, own time and section times (ms)."""

    name: str
    rows: np.ndarray  # [N] int
    budget_ms: np.ndarray  # [N]
    own_ms: np.ndarray  # [N]
    section_ms: np.ndarray  # [N, K]
    warmup_rows: np.ndarray  # [W] int: the warm-up calls, fed to the estimator before it settles
    warmup_own_ms: np.ndarray  # [W]
    warmup_section_ms: np.ndarray  # [W, K]


def budgets_from_trace(trace: Trace, seed: int) -> Trace:
    """``trace`` with budgets drawn again from its own calls: per row count r, uniform in ``[p99.9 of exit 1's
    time, p50 of the full time]`` over the calls of r rows (the full time at least 1.5 x the lower end, as
    ``budget_range``). The recorded calls ran with no budget, so new budgets change nothing they measured;
    this keeps the range from depending on how fast the machine was at the moment it was first measured."""
    exit1 = trace.own_ms + trace.section_ms[:, 0]
    full = trace.own_ms + trace.section_ms.sum(axis=1)
    rng = np.random.default_rng(seed)
    budgets = np.zeros(len(trace.rows))
    for r in np.unique(trace.rows):
        sel = trace.rows == r
        lo = float(np.percentile(exit1[sel], 99.9))
        hi = max(float(np.percentile(full[sel], 50)), 1.5 * lo)
        budgets[sel] = rng.uniform(lo, hi, int(sel.sum()))
    return Trace(**{**trace.__dict__, "budget_ms": budgets})


def replay(trace: Trace, quantile: float, prior: str | None, profile: LatencyProfile | None,
           window: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """The exits and end times (ms) the runtime's rules reach on ``trace`` under one setting (docstring, 2).

    ``prior``: the profile quantile taken as rule 6's prior (None or no profile: online figures alone)."""
    k = trace.section_ms.shape[1]
    est = LatencyEstimator(k, window=window, quantile=quantile)
    policy = DeadlinePolicy(est, profile if prior else None, profile_quantile=prior or PROFILE_PRIOR_QUANTILE)
    for rows, own, secs in zip(trace.warmup_rows.tolist(), trace.warmup_own_ms.tolist(), trace.warmup_section_ms.tolist()):
        for s, ms in enumerate(secs, start=1):
            est.record(s, rows, ms)
        est.record(0, rows, own)
    est.settle()
    n = len(trace.rows)
    exits = np.zeros(n, np.int64)
    end_ms = np.zeros(n)
    for i, (rows, budget, own, secs) in enumerate(zip(trace.rows.tolist(), trace.budget_ms.tolist(),
                                                      trace.own_ms.tolist(), trace.section_ms.tolist())):
        deadline = budget * 1e-3
        now = 0.0
        done = 0
        for s in range(1, k + 1):
            if s > 1 and policy.should_stop(s, rows, now * 1e-3, deadline):
                break
            now += secs[s - 1]
            est.record(s, rows, secs[s - 1])
            done = s
        est.record(0, rows, own)
        exits[i], end_ms[i] = done, now + own
    return exits, end_ms


def figures(trace: Trace, exits: np.ndarray, end_ms: np.ndarray, settle_calls: int) -> dict[str, Any]:
    """Met share of the admitted calls, depth over the oracle's, misses and exits, after the settling calls."""
    sl = slice(settle_calls, None)
    oracle = B.oracle_exits(trace.own_ms, trace.section_ms, trace.budget_ms)[sl]
    ex, met = exits[sl], (end_ms <= trace.budget_ms)[sl]
    adm = oracle >= 1
    k = trace.section_ms.shape[1]
    return {"calls": int(ex.size), "admitted": int(adm.sum()),
            "met_share_admitted": float(met[adm].mean()) if adm.any() else None,
            "misses_admitted": int((~met & adm).sum()),
            "mean_exit": float(ex[adm].mean()) if adm.any() else None,
            "oracle_mean_exit": float(oracle[adm].mean()) if adm.any() else None,
            "depth_vs_oracle": float(ex[adm].mean() / oracle[adm].mean()) if adm.any() else None,
            "exit_histogram": [int((ex[adm] == j).sum()) for j in range(1, k + 1)],
            "oracle_histogram": [int((oracle == j).sum()) for j in range(0, k + 1)]}


def frontier(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Of one scenario's settings: the deepest one meeting the compliance goal, and whether any meets both."""
    ok = [r for r in results if (r["met_share_admitted"] or 0) >= MET_GOAL]
    best = max(ok, key=lambda r: r["depth_vs_oracle"] or 0) if ok else None
    both = [r["setting"] for r in ok if (r["depth_vs_oracle"] or 0) >= DEPTH_GOAL]
    return {"deepest_meeting_compliance": None if best is None else best["setting"],
            "its_depth_vs_oracle": None if best is None else best["depth_vs_oracle"],
            "settings_meeting_both_goals": both}


# -- recording ------------------------------------------------------------------------------------------
def trace_session(bundle: Any, threads: int, max_rows: int) -> tuple[AnytimeSession, B.TracingBackend]:
    opts = SessionOptions(backend="onnxruntime", precision="fp32", intra_op_threads=threads, max_batch=max_rows, warmup=0)
    tracer = B.TracingBackend(create_backend(bundle, "onnxruntime", opts.for_backend()))
    return AnytimeSession(bundle, opts, backend=tracer), tracer


def _call(session: AnytimeSession, tracer: B.TracingBackend, x: np.ndarray) -> tuple[float, list[float]]:
    tracer.take()
    r = session.infer(x)[0]
    secs = tracer.take()
    if len(secs) != session.num_exits:
        raise RuntimeError(f"the trace session ran {len(secs)} sections, not all {session.num_exits}")
    return r.latency_ms - sum(secs), secs


def record(name: str, session: AnytimeSession, tracer: B.TracingBackend, inputs: np.ndarray, budgets: np.ndarray,
           rows: np.ndarray, args: argparse.Namespace) -> Trace:
    """Trace one scenario: its warm-up, then every call under the scenario's conditions (docstring, 1)."""
    k = session.num_exits
    w_rows: list[int] = []
    w_own: list[float] = []
    w_secs: list[list[float]] = []
    for r in sorted({1, args.max_rows}):
        x = np.zeros((r, *inputs.shape[1:]), np.float32)
        session.infer(x)  # untimed, as the session's own warm-up
        tracer.take()
        for _ in range(args.warmup):
            own, secs = _call(session, tracer, x)
            w_rows.append(r), w_own.append(own), w_secs.append(secs)
    calls = len(budgets)
    own_ms, sec_ms = np.zeros(calls), np.zeros((calls, k))
    xs = {r: B.batches(inputs, int(r)) for r in sorted(set(rows.tolist()))}
    with B.ScenarioConditions(name, calls - args.settle_calls, args.gaps, args.gap_s, args.phase_calls) as conditions:
        for i in range(calls):
            if i >= args.settle_calls:  # the settling calls run before the scenario's conditions start
                conditions.before_call(i - args.settle_calls)
            own_ms[i], sec_ms[i] = _call(session, tracer, xs[int(rows[i])][i % len(inputs)])
            time.sleep(args.pace_ms * 1e-3)
    return Trace(name, rows.astype(np.int64), budgets.astype(np.float64), own_ms, sec_ms,
                 np.asarray(w_rows, np.int64), np.asarray(w_own), np.asarray(w_secs).reshape(-1, k))


def save_traces(path: str, traces: list[Trace], contract: dict[str, Any]) -> None:
    """The traces and the contract they were recorded under, atomically (a temporary file, then renamed)."""
    arrays = {f"{t.name}.{f}": getattr(t, f) for t in traces for f in Trace.__dataclass_fields__ if f != "name"}
    arrays["contract"] = np.asarray(json.dumps(contract, default=str))
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    write_bytes_atomic(path, buf.getvalue())


def load_traces(path: str) -> tuple[list[Trace], dict[str, Any]]:
    """What :func:`save_traces` wrote: the traces in scenario order and their recording contract."""
    with np.load(path) as z:
        names = sorted({k.split(".", 1)[0] for k in z.files if "." in k},
                       key=lambda n: SCENARIOS.index(n) if n in SCENARIOS else len(SCENARIOS))
        traces = [Trace(n, **{f: z[f"{n}.{f}"] for f in Trace.__dataclass_fields__ if f != "name"}) for n in names]
        return traces, json.loads(str(z["contract"])) if "contract" in z.files else {}


def describe_bundle(session: AnytimeSession, path: str) -> dict[str, Any]:
    m = session.bundle.manifest.raw
    return {"path": path, "format_version": m.get("format_version"), "model": m.get("model", {}).get("backbone"),
            "exits": session.num_exits, "device": session.device_name, "profile_for_device": session.profile is not None}


def record_all(args: argparse.Namespace) -> tuple[list[Trace], dict[str, Any], LatencyProfile | None]:
    bundle = open_bundle(args.bundle)
    session, tracer = trace_session(bundle, args.threads, args.max_rows)
    c, h, w = session.input_shape
    inputs = np.random.default_rng(args.seed).standard_normal((256, c, h, w)).astype(np.float32)
    lo1, hi1 = B.budget_range(session, inputs, runs=args.budget_runs)
    lon, hin = B.budget_range(session, inputs, runs=max(100, args.budget_runs // 4), rows=args.max_rows)
    tracer.take()
    contract = B.contract(args.threads, args.warmup, args.calls, extra=(
        f"one trace session (every section, no budget), replayed per setting; budgets uniform in [exit-1 p99.9, "
        f"full p50] of infer: {lo1:.3f}..{hi1:.3f} ms at 1 row, {lon:.3f}..{hin:.3f} ms at {args.max_rows} rows"))
    contract["bundle"] = describe_bundle(session, args.bundle)
    rng = np.random.default_rng(args.seed)
    traces = []
    n = args.calls + args.settle_calls
    for name in args.scenarios:
        rows, budgets = B.scenario_calls(name, rng, n, (lo1, hi1), (lon, hin), args.max_rows)
        t0 = time.perf_counter()
        traces.append(record(name, session, tracer, inputs, budgets, rows, args))
        print(f"traced {name}: {n} calls in {time.perf_counter() - t0:.0f} s", flush=True)
    profile = session.profile
    session.close()
    return traces, contract, profile


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle")
    p.add_argument("--calls", type=int, default=10_000, help="calls per scenario counted (goal figures need >= 10 000)")
    p.add_argument("--settle-calls", type=int, default=200, help="calls replayed first and left out of the figures")
    p.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    p.add_argument("--quantiles", nargs="+", type=float, default=[0.5, 0.75, 0.9, 0.95, 0.99, 0.999],
                   help="online tail quantiles (SessionOptions.latency_quantile) to replay")
    p.add_argument("--priors", nargs="+", choices=(*PRIORS, "none"), default=[*PRIORS, "none"],
                   help="profile quantile as rule 6's prior ('none': online figures alone)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=3, help="warm-up calls per row count (SessionOptions.warmup)")
    p.add_argument("--pace-ms", type=float, default=1.0)
    p.add_argument("--gap-s", type=float, default=65.0)
    p.add_argument("--gaps", type=int, default=2)
    p.add_argument("--phase-calls", type=int, default=1000)
    p.add_argument("--max-rows", type=int, default=16)
    p.add_argument("--budget-runs", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-trace", help="keep the recorded traces here (.npz)")
    p.add_argument("--load-trace", help="replay these traces instead of recording (the bundle gives the profile)")
    p.add_argument("--budgets", choices=("measured", "trace"), default="measured",
                   help="measured: the range budget_range() measured before the scenarios (as deadline_compliance.py); "
                        "trace: drawn again from each scenario's own recorded calls, per row count")
    p.add_argument("--json", help="write every figure here")
    args = p.parse_args(argv)
    if args.calls < 1 or args.settle_calls < 0:
        p.error("--calls must be >= 1 and --settle-calls >= 0")

    if args.load_trace:
        traces, recorded = load_traces(args.load_trace)
        s = AnytimeSession(open_bundle(args.bundle), SessionOptions(backend="onnxruntime", intra_op_threads=args.threads,
                                                                    warmup=0, max_batch=args.max_rows))
        profile = s.profile
        contract = {"command": " ".join(["python", *sys.argv]), "replayed_from": args.load_trace,
                    "bundle_now": describe_bundle(s, args.bundle), "recorded": recorded}
        s.close()
    else:
        traces, contract, profile = record_all(args)
        if args.save_trace:
            save_traces(args.save_trace, traces, contract)
    if args.budgets == "trace":
        traces = [budgets_from_trace(t, args.seed) for t in traces]
    contract["budgets"] = args.budgets
    default = (SessionOptions().latency_quantile, PROFILE_PRIOR_QUANTILE)
    print(f"profile: {'none for this device' if profile is None else 'yes'}; product default: quantile {default[0]}, "
          f"prior {default[1]}")
    out: dict[str, Any] = {"contract": contract, "goals": {"met_share_admitted": MET_GOAL, "depth_vs_oracle": DEPTH_GOAL},
                           "default_setting": f"q={default[0]} prior={default[1]}", "scenarios": []}
    for t in traces:
        results = []
        for prior in args.priors:
            for q in args.quantiles:
                exits, end_ms = replay(t, q, None if prior == "none" else prior, profile)
                r = {"setting": f"q={q} prior={prior}", "quantile": q, "prior": prior,
                     **figures(t, exits, end_ms, args.settle_calls)}
                results.append(r)
        front = frontier(results)
        out["scenarios"].append({"scenario": t.name, "budget_ms": [float(t.budget_ms.min()), float(t.budget_ms.max())],
                                 "rows": [int(t.rows.min()), int(t.rows.max())], "settings": results, **front})
        print(f"\n{t.name}: {results[0]['calls']} calls ({results[0]['admitted']} admitted), budgets "
              f"{t.budget_ms.min():.3f}..{t.budget_ms.max():.3f} ms, oracle exits {results[0]['oracle_histogram']}")
        print(f"  {'setting':24} {'met (admitted)':>14} {'misses':>6} {'mean exit':>9} {'depth/oracle':>12}  exits")
        for r in results:
            mark = " *" if (r["quantile"], r["prior"]) == default else ""
            print(f"  {r['setting'] + mark:24} {100 * r['met_share_admitted']:13.3f}% {r['misses_admitted']:6d} "
                  f"{r['mean_exit']:9.3f} {r['depth_vs_oracle']:12.3f}  {r['exit_histogram']}")
        print(f"  deepest setting with >= {100 * MET_GOAL:.1f} % met: {front['deepest_meeting_compliance']} "
              f"(depth/oracle {front['its_depth_vs_oracle'] if front['its_depth_vs_oracle'] is None else round(front['its_depth_vs_oracle'], 3)}); "
              f"meeting both goals: {', '.join(front['settings_meeting_both_goals']) or 'none'}")
    print("\n* the product's default setting")
    if args.json:
        write_text_atomic(args.json, json.dumps(out, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())

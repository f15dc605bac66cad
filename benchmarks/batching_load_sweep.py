"""Dynamic batching against batch-1 serving across load: throughput and deadline-met share, as a figure.

    python benchmarks/batching_load_sweep.py BUNDLE --data DIR --json benchmarks/results/batching_load_sweep.json \
        --plot benchmarks/results/batching_load_sweep.png

Contract
--------
* Four ``sdedge serve BUNDLE --threads 1`` servers, every other setting at its default: for each policy, the
  deepest exit (no threshold) and calibrated thresholds (``--threshold calibrated``: the bundle must be
  calibrated), one server with dynamic batching (the default) and one with ``--no-batching`` (batch-1).
* Per policy: the capacity is the batching server's throughput under a light asyncio client with 32 requests
  in flight and no budget (``serve_bench.saturation``); the single-request latency is the median of sequential
  one-image requests to the batch-1 server (``overload_orders.single_request_ms``); every request's budget is
  ``--budget-x`` x that latency.
* Load: for each ``--factors`` entry, open-loop Poisson arrivals at factor x the policy's capacity for
  ``--seconds``; the same arrivals go to the policy's two servers, in chunks of 2.5 s taking turns
  (``serve_bench.overload_runs``: drift hits both alike). Images: the first 2 000 test images, one-image UINT8
  binary requests.
* Reported per server and load (``serve_bench.overload_summary``): answered requests per second (HTTP 200), the
  share of requests whose answer met its deadline by the server's verdict and, read by the client, within the
  budget of its scheduled arrival, 504 (deadline exceeded, not run), accuracy, mean exit and mean batch rows
  (the rows of the run that answered each request) of the answered; and ``met_per_s`` = met share x offered
  rate (the requests per second answered in time). The figure plots, against the offered rate, the requests
  per second answered (paler) and answered by their deadline, and the met share (the server's verdict, and the
  client's reading, paler), batch-1 against batching, one column per policy (``--replot JSON`` redraws it from
  a results file). Single runs on a shared machine move by several percent: compare the two lines of one run,
  and more than one run.
"""
from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serve_bench as SB  # noqa: E402
from overload_orders import single_request_ms  # noqa: E402

POLICIES = {"deepest": [], "calibrated": ["--threshold", "calibrated"]}  # policy -> server flags
MODES = {"batch-1": ["--no-batching"], "batching": []}  # serving mode -> server flags


def sweep(bundle: Path, images: np.ndarray, labels: np.ndarray, policy: str, factors: list[float], seconds: float,
          budget_x: float, seed: int) -> dict[str, Any]:
    """One policy's two servers (batch-1, batching) under each load factor; see the module docstring."""
    servers = {m: SB.start_server(bundle, [*POLICIES[policy], *flags]) for m, flags in MODES.items()}
    try:
        capacity = SB.saturation(servers["batching"].port, images, labels, 32, 4.0)["throughput_rps"]
        single = single_request_ms(servers["batch-1"].port, images)
        budget = round(budget_x * single, 3)
        out: dict[str, Any] = {"capacity_rps": capacity, "single_request_ms": round(single, 3), "budget_ms": budget,
                               "by_factor": {}}
        print(f"\n{policy}: capacity {capacity:.0f} req/s (batching), single request {single:.2f} ms, "
              f"budget {budget} ms", flush=True)
        print(f"{'load':>6}{'offered/s':>11}  {'mode':<10}{'answered/s':>11}{'met/s':>8}{'met':>7}{'client':>8}"
              f"{'504':>7}{'acc':>8}{'exit':>6}{'rows':>6}")
        for factor in factors:
            rate = factor * capacity
            rng = np.random.default_rng(seed)
            n = max(1, int(rate * seconds))
            times = np.cumsum(rng.exponential(1.0 / rate, n)).tolist()
            plan = [(t, int(rng.integers(len(images))), "all", budget) for t in times]
            runs = SB.overload_runs({m: s.port for m, s in servers.items()}, images, labels, plan, 2.5, 64, 480)
            entry: dict[str, Any] = {"offered_rps": round(rate, 1), "requests": n}
            for mode, r in runs.items():
                a = r["all"]
                a["met_per_s"] = round(a["met_share"] * rate, 1)
                entry[mode] = r
                print(f"{factor:>5g}x{rate:>11.0f}  {mode:<10}{r['answered_200_per_s']:>11.1f}{a['met_per_s']:>8.1f}"
                      f"{a['met_share']:>7.3f}{a['client_met_share']:>8.3f}{a['expired_504_share']:>7.3f}"
                      f"{a['accuracy_of_answered'] or 0:>8.4f}{a['mean_exit_of_answered'] or 0:>6.2f}"
                      f"{a['mean_batch_rows_of_answered'] or 0:>6.2f}", flush=True)
            out["by_factor"][f"{factor:g}"] = entry
        return out
    finally:
        for s in servers.values():
            s.stop()


def plot(record: dict[str, Any], path: str) -> None:
    """Met requests per second and met share against the offered rate, one column per policy."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sdedge.common.atomic import write_bytes_atomic

    policies = list(record["by_policy"])
    fig, axes = plt.subplots(2, len(policies), figsize=(5.2 * len(policies), 7), squeeze=False)
    for col, policy in enumerate(policies):
        res = record["by_policy"][policy]
        pts = list(res["by_factor"].values())
        x = [p["offered_rps"] for p in pts]
        for mode, style, color in (("batch-1", "o--", "tab:blue"), ("batching", "s-", "tab:orange")):
            axes[0][col].plot(x, [p[mode]["all"]["met_per_s"] for p in pts], style, color=color,
                              label=f"{mode}: by their deadline")
            axes[0][col].plot(x, [p[mode]["answered_200_per_s"] for p in pts], style, color=color, alpha=0.45,
                              label=f"{mode}: answered (200)")
            axes[1][col].plot(x, [p[mode]["all"]["met_share"] for p in pts], style, color=color,
                              label=f"{mode} (server's verdict)")
            axes[1][col].plot(x, [p[mode]["all"]["client_met_share"] for p in pts], style, color=color, alpha=0.45,
                              label=f"{mode} (client, from scheduled arrival)")
        axes[0][col].plot(x, x, ":", color="grey", label="offered")
        axes[0][col].set_title(f"{policy} (budget {res['budget_ms']:.1f} ms, capacity {res['capacity_rps']:.0f} req/s)")
        axes[0][col].set_ylabel("requests/s")
        axes[1][col].set_ylabel("deadline-met share")
        axes[1][col].set_ylim(0, 1.02)
        for ax in (axes[0][col], axes[1][col]):
            ax.set_xlabel("offered requests/s (open-loop Poisson)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle("sdedge serve: dynamic batching vs batch-1, one inference thread")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, dpi=110, format="png")
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--data", default=None, help="dataset folder for real test images (default: the bundle's)")
    ap.add_argument("--policies", default="deepest,calibrated", help="comma list of: " + ", ".join(POLICIES))
    ap.add_argument("--factors", default="0.25,0.5,0.75,1.0,1.25,1.5",
                    help="offered load as multiples of the batching server's probed capacity")
    ap.add_argument("--seconds", type=float, default=6.0, help="seconds of arrivals per load factor")
    ap.add_argument("--budget-x", type=float, default=8.0, help="budget = this x the single-request latency")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="write every figure here")
    ap.add_argument("--plot", default=None, help="write the figure (PNG) here")
    ap.add_argument("--replot", default=None, metavar="JSON",
                    help="only draw --plot from a results file this script wrote (runs nothing)")
    args = ap.parse_args(argv)
    if args.replot:
        if not args.plot:
            ap.error("--replot needs --plot")
        import json

        with open(args.replot, encoding="utf-8") as f:
            plot(json.load(f), args.plot)
        return 0
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    unknown = [p for p in policies if p not in POLICIES]
    if unknown:
        ap.error(f"unknown policies {unknown}; choose from {list(POLICIES)}")
    factors = [float(f) for f in args.factors.split(",")]
    if not factors or min(factors) <= 0:
        ap.error("--factors must be positive numbers")

    from sdedge.calibrate import benchmarking as B
    from sdedge.common.datasets import find_folder, read_split
    from sdedge.common.jsonio import write_json_atomic
    from sdedge.runtime.bundle import open_bundle

    record = B.provenance("benchmarks/batching_load_sweep.py", argv if argv is not None else sys.argv[1:],
                          ("sdedge", "numpy", "onnxruntime", "uvicorn", "starlette"))
    name = open_bundle(args.bundle).manifest.raw["model"]["data"]["dataset"]
    test = read_split(name, "test", find_folder(name, args.data), None)
    images, labels = test.images[:2000], test.labels[:2000]
    ticks0, t_start = SB.cpu_ticks(), time.time()
    record.update({"bundle": str(args.bundle), "seconds": args.seconds, "budget_x": args.budget_x, "by_policy": {}})
    for policy in policies:
        record["by_policy"][policy] = sweep(args.bundle, images, labels, policy, factors, args.seconds,
                                            args.budget_x, args.seed)
    record["cpu_use_during_run"] = SB.cpu_share(ticks0, SB.cpu_ticks(), time.time() - t_start)
    if args.json:
        write_json_atomic(args.json, record, indent=1)
    if args.plot:
        plot(record, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

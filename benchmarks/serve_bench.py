"""Served vs in-process: what HTTP (KServe v2 via ``sdedge serve``) costs an AnytimeSession.

    python benchmarks/serve_bench.py BUNDLE [--budget-ms 5] [--clients 8] [--seconds 5] [--threads 1]

Contract:
* Two phases, each contender running for ``--seconds`` after ``--warmup-s`` of untimed load, all on
  the same ``--images`` preloaded float32 NCHW images (seeded normal noise; batch 1 per request):
  - **full depth** (no budget, every request runs to the deepest exit, so every contender does the
    same work): the throughput ratio served / in-process is measured here;
  - **budget** ``--budget-ms`` (counted from the call in-process, from the request's arrival when
    served; no threshold, so the exits taken depend on time only): latency, deadline-met share and
    exits under that load.
* Contenders: ``in-process x1`` (one thread calling ``session.infer`` in a loop, full depth only);
  ``in-process xN`` (``--clients`` threads calling one session, which serializes them with its lock);
  ``served binary|json xN``: ``sdedge serve`` in its own process (one session, one inference thread,
  default settings) and ``--clients`` threads, each with its own ``tritonclient.http`` client, sending
  one request after another (closed loop), tensors and outputs in the binary extension or as JSON.
* Both sessions use ``--threads`` ORT intra-op threads (default 1).
* Timers: ``req/s`` counts requests completed in the window; ``p50/p99`` is the client-observed wall
  time of one call (served: request built to response decoded, HTTP and both encodings included);
  ``srv p50/p99`` is the server's own ``latency_ms`` (arrival to answer ready) and ``q p99`` its
  ``queue_ms``; ``met`` is the share of answers whose ``deadline_met`` is true; ``exits`` the share
  of answers per exit.
* ratio = served req/s / in-process xN req/s in the same phase (goal >= 0.8 at full depth). Clients
  and server share the machine's cores (printed with the load average): on a small host the client
  threads' own encoding competes with the server for CPU, which a real deployment would not see.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def closed_loop(fn, clients: int, seconds: float, warmup_s: float) -> tuple[float, list]:
    """Run ``fn(i, client_index)`` from ``clients`` threads; records of the timed window and its rate."""
    stop = threading.Event()
    t_start = [0.0]
    recs: list[list] = [[] for _ in range(clients)]
    errors: list[BaseException] = []

    def worker(ci: int) -> None:
        i = ci
        try:
            while not stop.is_set():
                t = time.perf_counter()
                extra = fn(i, ci)
                t1 = time.perf_counter()
                if t >= t_start[0] > 0 and not stop.is_set():
                    recs[ci].append(((t1 - t) * 1e3,) + extra)
                i += clients
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
            stop.set()

    threads = [threading.Thread(target=worker, args=(c,), daemon=True) for c in range(clients)]
    for th in threads:
        th.start()
    time.sleep(warmup_s)
    t_start[0] = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    elapsed = time.perf_counter() - t_start[0]
    for th in threads:
        th.join(60)
    if errors:
        raise errors[0]
    flat = [r for rs in recs for r in rs]
    return len(flat) / elapsed, flat


def summarize(name: str, rate: float, recs: list, num_exits: int) -> dict:
    lat = np.array([r[0] for r in recs])
    met = [r[1] for r in recs if r[1] is not None]
    exits = np.bincount([r[2] for r in recs], minlength=num_exits + 1)[1:]
    out = {"contender": name, "throughput_rps": rate, "n": len(recs), "p50_ms": float(np.percentile(lat, 50)),
           "p99_ms": float(np.percentile(lat, 99)), "met_share": float(np.mean(met)) if met else None,
           "exit_share": [float(e) / max(1, len(recs)) for e in exits]}
    server = [r[3] for r in recs if len(r) > 3]
    if server:
        out["server_p50_ms"] = float(np.percentile(server, 50))
        out["server_p99_ms"] = float(np.percentile(server, 99))
        out["queue_p99_ms"] = float(np.percentile([r[4] for r in recs], 99))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bundle")
    p.add_argument("--budget-ms", type=float, default=5.0)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--warmup-s", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=1, help="ORT intra-op threads of the session (both sides)")
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--modes", default="binary,json")
    p.add_argument("--server-args", default="", help="extra `sdedge serve` flags, e.g. '--workers 2'")
    p.add_argument("--phases", default="full,budget", help="full (no budget), budget, or both")
    p.add_argument("--no-in-process", action="store_true", help="served contenders only (ratios then omitted)")
    p.add_argument("--out", default=None, help="also write the results as JSON here")
    args = p.parse_args(argv)

    import tritonclient.http as th

    from sdedge.runtime import AnytimeSession

    session = AnytimeSession(args.bundle, backend="onnxruntime", intra_op_threads=args.threads)
    k = session.num_exits
    shape = (1,) + session.input_shape
    xs = np.random.default_rng(0).standard_normal((args.images,) + shape).astype(np.float32)
    print(f"# {platform.node()} {os.cpu_count()} CPUs, load avg {os.getloadavg()[0]:.2f}; {session.device_name}; "
          f"bundle {args.bundle}: {k} exits, input {list(session.input_shape)}; {args.clients} clients; "
          f"{args.seconds} s per contender; ORT threads {args.threads}")
    results: list[dict] = []

    def local_at(budget):
        def local(i: int, ci: int) -> tuple:
            r = session.infer(xs[i % len(xs)], budget_ms=budget)[0]
            return (r.deadline_met, r.exit_index)
        return local

    phase_list = [(n, b) for key, n, b in (("full", "full depth", None),
                                           ("budget", f"budget {args.budget_ms:g} ms", args.budget_ms))
                  if key in args.phases.split(",")]
    inproc: dict[str, float] = {}
    for phase, budget in ([] if args.no_in_process else phase_list):
        for n in ((1, args.clients) if budget is None else (args.clients,)):
            rate, recs = closed_loop(local_at(budget), n, args.seconds, args.warmup_s)
            results.append(dict(summarize(f"in-process x{n}", rate, recs, k), phase=phase))
            inproc[phase] = rate
    session.close()

    from load_fault import ServerProcess  # beside this script: `sdedge serve --port 0`, the port read back

    name = "bench"
    srv = ServerProcess(Path(args.bundle), ["--threads", str(args.threads), "--log-level", "warning",
                                            *shlex.split(args.server_args)], model=name, env=dict(os.environ))
    try:
        srv.wait_ready(120)
        port = srv.port
        for phase, budget in phase_list:
            for mode in args.modes.split(","):
                binary = mode == "binary"
                clients = [th.InferenceServerClient(f"127.0.0.1:{port}", network_timeout=60)
                           for _ in range(args.clients)]
                outs = [th.InferRequestedOutput(n, binary_data=binary) for n in ("label", "exit_index", "probabilities")]
                params = None if budget is None else {"budget_ms": budget}

                def remote(i: int, ci: int, clients=clients, outs=outs, binary=binary, params=params) -> tuple:
                    inp = th.InferInput("image", list(shape), "FP32")
                    inp.set_data_from_numpy(xs[i % len(xs)], binary_data=binary)
                    r = clients[ci].infer(name, [inp], outputs=outs, parameters=params)
                    prm = r.get_response()["parameters"]
                    return (prm.get("deadline_met"), int(r.as_numpy("exit_index")[0]), prm["latency_ms"],
                            prm["queue_ms"])

                rate, recs = closed_loop(remote, args.clients, args.seconds, args.warmup_s)
                s = dict(summarize(f"served {mode} x{args.clients}", rate, recs, k), phase=phase)
                if phase in inproc:
                    s["ratio_vs_in_process"] = rate / inproc[phase]
                results.append(s)
                for c in clients:
                    c.close()
    finally:
        srv.stop()

    last = None
    phases = [r["phase"] for r in results]
    for r in sorted(results, key=lambda r: phases.index(r["phase"])):  # stable: contenders in run order
        if r["phase"] != last:
            last = r["phase"]
            print(f"\n## {last}")
            print(f"{'contender':<18} {'req/s':>7} {'ratio':>6} {'p50 ms':>7} {'p99 ms':>7} {'srv p50':>7} "
                  f"{'srv p99':>7} {'q p99':>6} {'met':>6}  exits (share, 1..{k})")
        ratio = f"{r['ratio_vs_in_process']:.2f}" if "ratio_vs_in_process" in r else "-"
        srv = [f"{r[x]:.2f}" if x in r else "-" for x in ("server_p50_ms", "server_p99_ms", "queue_p99_ms")]
        met = "-" if r["met_share"] is None else f"{r['met_share']:.3f}"
        print(f"{r['contender']:<18} {r['throughput_rps']:>7.0f} {ratio:>6} {r['p50_ms']:>7.2f} {r['p99_ms']:>7.2f} "
              f"{srv[0]:>7} {srv[1]:>7} {srv[2]:>6} {met:>6}  " + " ".join(f"{e:.2f}" for e in r["exit_share"]))
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The server's queue orders under overload, side by side: EDF, FIFO and the adaptive order.

    python benchmarks/overload_orders.py BUNDLE --data DIR --json benchmarks/results/overload_orders.json

Contract
--------
* One ``sdedge serve BUNDLE --threads 1 --queue-order ORDER`` per order (``--orders``, default
  ``edf,fifo,adaptive``), every other server setting at its default (batching, shedding, yielding, reply margin).
* Capacity: the first server's throughput under a light asyncio client with 32 requests in flight and no
  budget (``serve_bench.saturation``); the single-request latency: the median of 250 sequential one-image
  requests on one connection (after 50 untimed).
* Load: for each ``--factors`` entry, open-loop Poisson arrivals at factor x capacity for ``--seconds``, every
  other request *tight* (budget ``--tight-x`` x the single-request latency) or *loose* (``--loose-x``); the same
  arrivals go to every server, in chunks of 2.5 s taking turns (``serve_bench.overload_runs``: drift hits every
  order alike). Images: the first 2 000 test images, one-image UINT8 binary requests.
* Reported per order (``serve_bench.overload_summary``): the share of requests whose answer met its deadline by
  the server's verdict (``met``) and read by the client within the budget of its scheduled arrival
  (``client``), late answers, 504 (deadline exceeded, not run), 503, accuracy of the answered, and the tight and
  loose classes apart. Single runs on a shared machine move by more than some differences between orders: run it
  more than once before reading a small one.
"""
from __future__ import annotations

import argparse
import socket
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serve_bench as SB  # noqa: E402
from server_overhead import _read_response  # noqa: E402


def single_request_ms(port: int, images: np.ndarray, n: int = 300, warmup: int = 50) -> float:
    """The median latency of ``n - warmup`` sequential one-image requests on one keep-alive connection, in ms."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf, lat = bytearray(), []
    try:
        for i in range(n):
            req = SB.raw_request(port, images[i % len(images)], None)
            t = time.perf_counter()
            sock.sendall(req)
            _read_response(sock, buf)
            lat.append(time.perf_counter() - t)
    finally:
        sock.close()
    return float(np.median(lat[warmup:])) * 1e3


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--data", default=None, help="dataset folder for real test images (default: the bundle's)")
    ap.add_argument("--orders", default="edf,fifo,adaptive", help="queue orders to compare (comma-separated)")
    ap.add_argument("--factors", default="1.5,1.0", help="offered load as multiples of the probed capacity")
    ap.add_argument("--seconds", type=float, default=15.0, help="seconds of arrivals per factor")
    ap.add_argument("--tight-x", type=float, default=3.0, help="tight budget = this x the single-request latency")
    ap.add_argument("--loose-x", type=float, default=12.0, help="loose budget = this x the single-request latency")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    from sdedge.calibrate import benchmarking as B
    from sdedge.common.datasets import find_folder, read_split
    from sdedge.common.jsonio import write_json_atomic
    from sdedge.runtime.bundle import open_bundle

    record = B.provenance("benchmarks/overload_orders.py", argv if argv is not None else sys.argv[1:],
                          ("sdedge", "numpy", "onnxruntime", "uvicorn", "starlette"))
    name = open_bundle(args.bundle).manifest.raw["model"]["data"]["dataset"]
    test = read_split(name, "test", find_folder(name, args.data), None)
    images, labels = test.images[:2000], test.labels[:2000]
    orders = [o.strip() for o in args.orders.split(",") if o.strip()]
    ticks0, t_start = SB.cpu_ticks(), time.time()
    servers = {o: SB.start_server(args.bundle, ["--queue-order", o]) for o in orders}
    try:
        first = servers[orders[0]]
        capacity = SB.saturation(first.port, images, labels, 32, 4.0)["throughput_rps"]
        single = single_request_ms(first.port, images)
        tight, loose = round(args.tight_x * single, 3), round(args.loose_x * single, 3)
        record.update({"bundle": str(args.bundle), "orders": orders, "capacity_rps": capacity,
                       "single_request_ms": round(single, 3), "tight_budget_ms": tight, "loose_budget_ms": loose,
                       "seconds": args.seconds, "by_factor": {}})
        print(f"capacity {capacity:.0f} req/s, single request {single:.2f} ms: budgets tight {tight} / loose {loose} ms",
              flush=True)
        for factor in [float(f) for f in args.factors.split(",")]:
            rate = factor * capacity
            rng = np.random.default_rng(args.seed)
            n = int(rate * args.seconds)
            times = np.cumsum(rng.exponential(1.0 / rate, n)).tolist()
            plan = [(t, int(rng.integers(len(images))), "tight" if j % 2 == 0 else "loose",
                     tight if j % 2 == 0 else loose) for j, t in enumerate(times)]
            runs = SB.overload_runs({o: s.port for o, s in servers.items()}, images, labels, plan, 2.5, 64, 480)
            record["by_factor"][f"{factor:g}"] = {"rate_rps": round(rate, 1), "requests": n, **runs}
            print(f"\n{factor:g}x capacity ({rate:.0f} req/s, {n} requests)")
            print(f"{'order':<10}{'met':>7}{'client':>8}{'late':>7}{'504':>7}{'503':>7}{'tight':>7}{'loose':>7}"
                  f"{'acc':>8}{'answered/s':>12}")
            for o, r in runs.items():
                a = r["all"]
                print(f"{o:<10}{a['met_share']:>7.3f}{a['client_met_share']:>8.3f}{a['late_share']:>7.3f}"
                      f"{a['expired_504_share']:>7.3f}{a['queue_full_503_share']:>7.3f}{r['tight']['met_share']:>7.3f}"
                      f"{r['loose']['met_share']:>7.3f}{a['accuracy_of_answered'] or 0:>8.4f}"
                      f"{r['answered_200_per_s']:>12.1f}", flush=True)
    finally:
        for s in servers.values():
            s.stop()
    record["cpu_use_during_run"] = SB.cpu_share(ticks0, SB.cpu_ticks(), time.time() - t_start)
    if args.json:
        write_json_atomic(args.json, record, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

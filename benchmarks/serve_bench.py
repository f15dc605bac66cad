"""``sdedge serve`` side by side: batch-1 vs dynamic batching, served vs in-process, EDF vs FIFO under
overload, gRPC vs HTTP, and KServe's Python ModelServer on ``full.onnx`` (issue 14's figures), in one run.

    python benchmarks/serve_bench.py BUNDLE [--data DIR] [--images 2000] [--clients 1,4,8] [--requests 500]
        [--overload-s 15] [--overload-factor 1.5,1.0] [--tight-x 3] [--loose-x 12]
        [--kserve-python /work/kserve-venv/bin/python] [--json out.json] [--md out.md] [--quick]

Contract:

* **Images**: the first ``--images`` images of the real test split of the bundle's dataset (read with
  :func:`sdedge.common.datasets.read_split` from ``--data``), sent as raw ``UINT8`` pixels ``[1, H, W, C]``
  (one image per request) in the binary tensor extension; labels give the accuracy of every answer.
  Closed-loop client ``c`` of ``n`` sends images ``(c * R + j) mod N`` for ``j < R`` (``R = --requests``),
  so every contender at the same client count answers the same images.
* **Closed loop** (part 1): ``n`` threads (``--clients``), each with its own client (``tritonclient.http``
  or ``tritonclient.grpc``; in-process: a thread calling one shared ``AnytimeSession``, which serialises
  calls with its lock), each sending ``--warmup`` untimed requests and then ``--requests`` timed ones,
  one after another. Throughput = timed requests / (last timed answer - common start, a barrier);
  p50/p99 = client-observed wall time of one call (request built to answer decoded). ``srv p50`` is
  the server's own ``latency_ms`` (arrival to answer ready), ``rows`` the mean ``batch_rows`` of the runs
  that answered (1 = ran alone). Two policies: ``deepest`` (no threshold, no budget: every image runs
  every section) and ``calibrated`` (``threshold: "calibrated"``). Servers: ``sdedge serve --threads 1
  --no-batching`` (batch 1) and ``sdedge serve --threads 1`` (dynamic batching, EDF queue, defaults:
  max queue delay 0), both running through part 1 (the idle one waits); at each (policy, client count)
  in-process, batch-1 and batching run back to back, so drift hits the three alike. In-process:
  ``AnytimeSession(bundle, intra_op_threads=1)``, same engine choice as the server (``auto``), on the
  same ``uint8`` images.
* **gRPC vs HTTP** (part 3): the batching server, deepest exit, the largest client count, one run each
  back to back on the same server.
* **Capacity probe**: the batching server's HTTP capacity, no budget, at the deepest exit and with calibrated
  thresholds, measured with a light client (``--sat-conns`` keep-alive connections from one asyncio loop,
  each sending the next pre-built binary request as soon as the last is answered, ``--sat-s`` seconds after
  an untimed second), and its ratio to the best in-process rate of part 1 for the same policy: the
  ``tritonclient.http`` threads above share one Python process and its GIL, so their closed-loop rate is
  bounded by the client as much as by the server. The deepest-exit probe sets the overload's capacity.
* **Overload** (part 2): open-loop Poisson arrivals (seeded) at ``--overload-factor`` x the probe's
  capacity (a comma list runs each in turn: 1.5 x is issue 14's figure, 1.0 x is context), for
  ``--overload-s`` seconds each, sent by an asyncio sender over a pool of keep-alive HTTP/1.1
  connections (pre-built binary request bytes, so the sender's own CPU cost stays small; a connection
  is opened whenever none is idle, so requests wait in the server, not in the client). Every request
  carries ``budget_ms``: alternately tight (``--tight-x`` x the median single-request latency measured above,
  batching server, 1 client, deepest) and loose (``--loose-x`` x it), no threshold (the deadline alone
  picks the exit). The same arrival times, images and budgets go to twelve batching servers (all up
  together): ``--queue-order edf`` and ``fifo``, each as served by default (shedding, while others wait,
  the requests that can no longer reach their first exit; each run yielding to the requests waiting behind
  it; a reply margin; a 100 us thread switch interval) and with one of these turned off: ``--no-shed-infeasible`` (only
  the expired ones are shed), ``--no-yield-to-queue`` (a run uses its requests' whole budgets),
  ``--no-reply-margin`` (the pool gets each deadline as is),
  ``--switch-interval-us 0`` (Python's 5 ms), or the last three together (``all-off``), ``--chunk-s`` seconds
  of arrivals at a time in turns, the order alternating, each chunk answered in full before the next
  (so drift hits both alike; each chunk starts on an empty queue). Reported per class: share answered
  200 with ``deadline_met`` true (the server's verdict, from its arrival stamp), share also read by the
  client within the budget of its *scheduled* arrival (``client_met``: counts time spent waiting for a
  connection in the client and in the kernel before the server reads the request), 200 late (with
  the overrun, queue share of the budget, exits and batch rows of the late answers), 504 (expired in
  the queue, not run), 503 (queue full) and other failures, accuracy of the answered, mean exit; and
  the sender's lag behind its schedule.
* **KServe peer** (part 4): ``kserve.ModelServer`` (one worker, its REST v2 endpoint) serving
  ``full.onnx`` with ONNX Runtime (1 intra-op thread, 1 inter-op thread) from ``--kserve-python``'s
  environment, preprocessing the same raw pixels with the bundle's ``preprocess``; the same closed
  loop and ``tritonclient.http`` clients. When it cannot run, the reason is recorded instead.
* Clients and servers share this machine's cores (printed: CPUs, load average); the clients' own
  encoding and decoding compete with the server for CPU, which a real deployment would not see. The
  results file records the busiest processes at start and end and the CPU seconds used during the run
  by this benchmark (its process and the servers), by niced work and by the rest (``/proc/stat``).
* ``--quick``: a smoke test (< 60 s; clients 1 and 8, 25 requests each, 2 s of overload), not a figure.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load_fault import ServerProcess  # noqa: E402  (beside this script: `sdedge serve --port 0`, ports read back)

from sdedge.calibrate import benchmarking as B  # noqa: E402
from sdedge.common.atomic import write_text_atomic  # noqa: E402
from sdedge.common.datasets import read_split  # noqa: E402

MODEL = "bench"
POLICIES = {"deepest": None, "calibrated": "calibrated"}


# -- closed loop --------------------------------------------------------------------------------------------------------
def closed_loop(call: Callable[[int, int], tuple], clients: int, per_client: int, warmup: int,
                n_images: int) -> tuple[float, list[tuple]]:
    """``clients`` threads, each calling ``call(client, image_index)`` ``warmup`` times untimed, then
    ``per_client`` times timed; returns (timed requests / wall time of the timed part, records)."""
    barrier = threading.Barrier(clients + 1)
    recs: list[list[tuple]] = [[] for _ in range(clients)]
    ends = [0.0] * clients
    errors: list[BaseException] = []

    def worker(c: int) -> None:
        try:
            for j in range(warmup):
                call(c, (c * per_client + j) % n_images)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
        barrier.wait()
        if errors:
            return
        try:
            for j in range(per_client):
                i = (c * per_client + j) % n_images
                t = time.perf_counter()
                out = call(c, i)
                recs[c].append((time.perf_counter() - t, i) + out)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
        ends[c] = time.perf_counter()

    threads = [threading.Thread(target=worker, args=(c,), daemon=True) for c in range(clients)]
    for th in threads:
        th.start()
    barrier.wait()
    t0 = time.perf_counter()
    for th in threads:
        th.join()
    if errors:
        raise errors[0]
    flat = [r for rs in recs for r in rs]
    return len(flat) / (max(ends) - t0), flat


def summarize(rate: float, recs: list[tuple], labels: np.ndarray, k: int | None) -> dict[str, Any]:
    """recs: (seconds, image, label, exit or None, server latency_ms or None, batch_rows or None)."""
    lat = np.array([r[0] for r in recs]) * 1e3
    out: dict[str, Any] = {"throughput_rps": round(rate, 2), "n": len(recs),
                           "p50_ms": round(float(np.percentile(lat, 50)), 4),
                           "p99_ms": round(float(np.percentile(lat, 99)), 4),
                           "accuracy": round(float(np.mean([r[2] == labels[r[1]] for r in recs])), 5)}
    exits = [r[3] for r in recs if r[3] is not None]
    if exits and k:
        out["mean_exit"] = round(float(np.mean(exits)), 4)
        out["exit_share"] = [round(float(x) / len(exits), 4) for x in np.bincount(exits, minlength=k + 1)[1:]]
    srv = [r[4] for r in recs if r[4] is not None]
    if srv:
        out["server_p50_ms"] = round(float(np.percentile(srv, 50)), 4)
        out["server_p99_ms"] = round(float(np.percentile(srv, 99)), 4)
    rows = [r[5] for r in recs if r[5] is not None]
    if rows:
        out["mean_batch_rows"] = round(float(np.mean(rows)), 3)
    return out


def http_caller(port: int, clients: int, images: np.ndarray, params: dict | None, exits: bool = True):
    import tritonclient.http as th

    cs = [th.InferenceServerClient(f"127.0.0.1:{port}", connection_timeout=60, network_timeout=60)
          for _ in range(clients)]
    names = ("label", "exit_index") if exits else ("label",)
    outs = [th.InferRequestedOutput(n, binary_data=True) for n in names]
    shape = [1, *images.shape[1:]]

    def call(c: int, i: int) -> tuple:
        inp = th.InferInput("image", shape, "UINT8")
        inp.set_data_from_numpy(images[i:i + 1], binary_data=True)
        r = cs[c].infer(MODEL, [inp], outputs=outs, parameters=params)
        p = r.get_response().get("parameters") or {}
        return (int(r.as_numpy("label")[0]), int(r.as_numpy("exit_index")[0]) if exits else None,
                p.get("latency_ms"), p.get("batch_rows"))

    return call, lambda: [c.close() for c in cs]


def grpc_caller(port: int, clients: int, images: np.ndarray, params: dict | None):
    import tritonclient.grpc as tg

    cs = [tg.InferenceServerClient(f"127.0.0.1:{port}") for _ in range(clients)]
    outs = [tg.InferRequestedOutput(n) for n in ("label", "exit_index")]
    shape = [1, *images.shape[1:]]

    def call(c: int, i: int) -> tuple:
        inp = tg.InferInput("image", shape, "UINT8")
        inp.set_data_from_numpy(images[i:i + 1])
        r = cs[c].infer(MODEL, [inp], outputs=outs, parameters=params)
        p = r.get_response().parameters
        return (int(r.as_numpy("label")[0]), int(r.as_numpy("exit_index")[0]), p["latency_ms"].double_param,
                int(p["batch_rows"].int64_param))

    return call, lambda: [c.close() for c in cs]


# -- open loop (overload) -----------------------------------------------------------------------------------------------
def raw_request(port: int, image: np.ndarray, budget_ms: float | None, threshold: Any = None) -> bytes:
    """One KServe v2 binary-tensor HTTP/1.1 request (outputs as JSON, so the answer is plain JSON)."""
    params = {k: v for k, v in (("budget_ms", budget_ms), ("threshold", threshold)) if v is not None}
    head = json.dumps({"inputs": [{"name": "image", "shape": [1, *image.shape], "datatype": "UINT8",
                                   "parameters": {"binary_data_size": image.nbytes}}],
                       "outputs": [{"name": "label", "parameters": {"binary_data": False}},
                                   {"name": "exit_index", "parameters": {"binary_data": False}}],
                       **({"parameters": params} if params else {})},
                      separators=(",", ":")).encode()
    body = head + image.tobytes()
    return (f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/octet-stream\r\nInference-Header-Content-Length: {len(head)}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def _open_loop(port: int, reqs: list[bytes], times: list[float], preopen: int, max_conns: int,
                     keep_alive_s: float = 4.0) -> tuple[list[tuple], dict[str, Any]]:
    """Send ``reqs[k]`` at ``times[k]`` (seconds from the start) on idle keep-alive connections, opening one
    when none is idle; a connection idle for ``keep_alive_s`` or more is replaced before use (the server
    closes idle keep-alive connections after 5 s by default). Returns, per request, (status, seconds from
    the write, body, seconds from the scheduled arrival to the answer read)."""
    loop = asyncio.get_running_loop()
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []
    opened, live, stale = [0], [0], [0]

    async def connect():
        opened[0] += 1
        live[0] += 1
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return r, w

    def close(w: asyncio.StreamWriter) -> None:
        live[0] -= 1
        w.close()

    for _ in range(preopen):
        idle.append((*await connect(), time.monotonic()))
    out: list[tuple] = [None] * len(reqs)  # type: ignore[list-item]
    lags: list[float] = []
    waits = [0]

    async def one(k: int) -> None:
        conn = None
        while conn is None:
            if idle:
                r, w, last = idle.pop()
                if time.monotonic() - last >= keep_alive_s:
                    stale[0] += 1
                    close(w)
                    continue
                conn = r, w
            elif live[0] < max_conns:
                conn = await connect()
            else:  # the request waits in the client (counted, reported)
                waits[0] += 1
                while not idle:
                    await asyncio.sleep(0.0005)
        r, w = conn
        t = time.perf_counter()
        try:
            w.write(reqs[k])
            head = await r.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            body = await r.readexactly(length)
            keep = b"connection: close" not in head.lower()
        except (OSError, asyncio.IncompleteReadError) as e:
            out[k] = ("conn", time.perf_counter() - t, repr(e), loop.time() - (t0 + times[k]))
            close(w)
            return
        out[k] = (status, time.perf_counter() - t, body, loop.time() - (t0 + times[k]))
        if keep:
            idle.append((r, w, time.monotonic()))
        else:
            close(w)

    tasks = []
    t0 = loop.time() + 0.001
    for k, at in enumerate(times):
        delay = t0 + at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        lags.append(max(0.0, loop.time() - (t0 + at)))
        tasks.append(asyncio.ensure_future(one(k)))
    sent_s = loop.time() - t0
    await asyncio.gather(*tasks)
    total_s = loop.time() - t0
    for _, w, _ in idle:
        w.close()
    return out, {"connections_opened": opened[0], "stale_connections_replaced": stale[0],
                 "requests_that_waited_for_a_connection": waits[0], "send_window_s": sent_s,
                 "last_answer_s": total_s, "lags_s": lags}


async def _saturate(port: int, reqs: list[bytes], conns: int, seconds: float) -> tuple[int, float, list[float]]:
    """``conns`` keep-alive connections, each sending the next request as soon as the last is answered."""
    stop = [False]
    done = [0]
    lat: list[float] = []

    async def worker(c: int) -> None:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        k = c
        while not stop[0]:
            t = time.perf_counter()
            w.write(reqs[k % len(reqs)])
            head = await r.readuntil(b"\r\n\r\n")
            if int(head.split(b" ", 2)[1]) != 200:
                raise RuntimeError(f"saturation probe: {head[:200]!r}")
            length = next(int(line[15:]) for line in head.split(b"\r\n")[1:] if line[:15].lower() == b"content-length:")
            await r.readexactly(length)
            if timing[0]:
                done[0] += 1
                lat.append(time.perf_counter() - t)
            k += conns
        w.close()

    timing = [False]
    tasks = [asyncio.ensure_future(worker(c)) for c in range(conns)]
    await asyncio.sleep(min(1.0, seconds / 3))  # warm-up, untimed
    timing[0] = True
    t0 = time.perf_counter()
    await asyncio.sleep(seconds)
    timing[0] = False
    elapsed = time.perf_counter() - t0
    stop[0] = True
    await asyncio.gather(*tasks)
    return done[0], elapsed, lat


def saturation(port: int, images: np.ndarray, labels: np.ndarray, conns: int, seconds: float,
               threshold: Any = None) -> dict[str, Any]:
    """The server's HTTP capacity with a light client: no budget, ``threshold`` (None: the deepest exit),
    ``conns`` requests in flight."""
    reqs = [raw_request(port, images[i], None, threshold) for i in range(len(images))]
    n, elapsed, lat = asyncio.run(_saturate(port, reqs, conns, seconds))
    a = np.array(lat) * 1e3
    return {"throughput_rps": round(n / elapsed, 2), "n": n, "connections": conns, "seconds": round(elapsed, 3),
            "p50_ms": round(float(np.percentile(a, 50)), 3), "p99_ms": round(float(np.percentile(a, 99)), 3),
            "client": "asyncio raw HTTP/1.1 keep-alive, pre-built binary requests (JSON outputs)"}


def overload_runs(ports: dict[str, int], images: np.ndarray, labels: np.ndarray,
                  plan: list[tuple[float, int, str, float]], chunk_s: float, preopen: int,
                  max_conns: int) -> dict[str, dict[str, Any]]:
    """The same open-loop ``plan`` (arrival s, image, class, budget ms) sent to each server of ``ports``,
    in chunks of ``chunk_s`` seconds of arrivals taking turns (the order alternating chunk by chunk, each
    chunk answered in full before the next), so drift on a shared machine hits every server alike."""
    times = [t for t, *_ in plan]
    chunks: list[list[int]] = []
    for j, t in enumerate(times):
        c = int(t // chunk_s)
        while len(chunks) <= c:
            chunks.append([])
        chunks[c].append(j)
    outs: dict[str, list] = {name: [None] * len(plan) for name in ports}
    senders: dict[str, list[dict]] = {name: [] for name in ports}
    reqs = {name: [raw_request(port, images[i], b) for _, i, _, b in plan] for name, port in ports.items()}
    for c, idx in enumerate(chunks):
        if not idx:
            continue
        for name in (list(ports) if c % 2 == 0 else list(reversed(list(ports)))):
            o, snd = asyncio.run(_open_loop(ports[name], [reqs[name][j] for j in idx],
                                            [times[j] - c * chunk_s for j in idx], preopen, max_conns))
            for j, x in zip(idx, o):
                outs[name][j] = x
            senders[name].append(snd)
    result = {}
    for name in ports:
        snd = senders[name]
        lag = np.array([x for s in snd for x in s["lags_s"]]) * 1e3
        sent = sum(s["send_window_s"] for s in snd)
        sender = {"chunks": len(snd), "chunk_s": chunk_s,
                  "connections_opened": sum(s["connections_opened"] for s in snd),
                  "stale_connections_replaced": sum(s["stale_connections_replaced"] for s in snd),
                  "requests_that_waited_for_a_connection": sum(s["requests_that_waited_for_a_connection"] for s in snd),
                  "send_window_s": round(sent, 3), "last_answer_s": round(sum(s["last_answer_s"] for s in snd), 3),
                  "achieved_offered_rps": round(len(plan) / sent, 1) if sent > 0 else None,
                  "sender_lag_p50_ms": round(float(np.percentile(lag, 50)), 3),
                  "sender_lag_p99_ms": round(float(np.percentile(lag, 99)), 3)}
        result[name] = overload_summary(plan, outs[name], labels, sender)
    return result


def overload_summary(plan: list[tuple[float, int, str, float]], out: list[tuple], labels: np.ndarray,
                     sender: dict[str, Any]) -> dict[str, Any]:
    per: dict[str, Any] = {}
    for cls in ("tight", "loose", "all"):
        rows = [(p, o) for p, o in zip(plan, out) if cls == "all" or p[2] == cls]
        n = len(rows)
        if n == 0:  # a plan without this class (one budget for all)
            continue
        ok, late, s504, s503, other, right, exits = 0, 0, 0, 0, 0, 0, []
        late_info: list[tuple[float, ...]] = []  # overrun ms, queue ms, budget ms, exit, batch rows
        rows_ok: list[int] = []  # batch rows of the answers that met their deadline
        rows_all: list[int] = []  # batch rows of every answer
        e2e = 0  # answered with deadline_met and read by the client within the budget of its scheduled arrival
        for (_, i, _, budget), (status, _, body, from_sched) in rows:
            if status == 200:
                d = json.loads(body)
                prm = d["parameters"]
                rows_all.append(prm.get("batch_rows", 0))
                met = prm.get("deadline_met")
                ok += met is True
                late += met is not True
                e2e += met is True and from_sched * 1e3 <= budget
                if met is not True:
                    late_info.append((prm["latency_ms"] - prm["budget_ms"], prm["queue_ms"], prm["budget_ms"],
                                      prm.get("exit_index", 0), prm.get("batch_rows", 0)))
                else:
                    rows_ok.append(prm.get("batch_rows", 0))
                outs = {o["name"]: o["data"][0] for o in d["outputs"]}
                right += outs["label"] == labels[i]
                exits.append(outs["exit_index"])
            elif status == 504:
                s504 += 1
            elif status == 503:
                s503 += 1
            else:
                other += 1
        answered = ok + late
        per[cls] = {"n": n, "met_share": round(ok / n, 4), "client_met_share": round(e2e / n, 4),
                    "late_share": round(late / n, 4),
                    "expired_504_share": round(s504 / n, 4), "queue_full_503_share": round(s503 / n, 4),
                    "other_failure_share": round(other / n, 4),
                    "accuracy_of_answered": round(right / answered, 4) if answered else None,
                    "mean_exit_of_answered": round(float(np.mean(exits)), 3) if exits else None,
                    "mean_batch_rows_of_answered": round(float(np.mean(rows_all)), 3) if rows_all else None}
        if late_info:
            li = np.array(late_info)
            per[cls]["late_answers"] = {
                "overrun_ms_p50": round(float(np.percentile(li[:, 0], 50)), 3),
                "overrun_ms_p99": round(float(np.percentile(li[:, 0], 99)), 3),
                "queue_over_budget_p50": round(float(np.percentile(li[:, 1] / li[:, 2], 50)), 3),
                "exit_share": [round(float(np.mean(li[:, 3] == e)), 3) for e in range(1, int(li[:, 3].max()) + 1)],
                "batch_rows_p50": float(np.percentile(li[:, 4], 50)),
                "batch_rows_p50_of_met": float(np.percentile(rows_ok, 50)) if rows_ok else None}
    answered_200 = sum(1 for o in out if o[0] == 200)
    lat = np.array([o[1] for o in out if o[0] == 200]) * 1e3
    per["answered_200_per_s"] = round(answered_200 / sender["last_answer_s"], 1)
    if lat.size:
        per["client_p50_ms_of_200"] = round(float(np.percentile(lat, 50)), 3)
        per["client_p99_ms_of_200"] = round(float(np.percentile(lat, 99)), 3)
    others = Counter(str(o[0]) if o[0] != "conn" else f"connection error: {o[2][:160]}"
                     for o in out if o[0] not in (200, 503, 504))
    if others:
        per["other_failures"] = dict(others)
        for o in out:  # the first other answer's body, to show what it said
            if o[0] not in (200, 503, 504, "conn"):
                per["first_other_body"] = o[2][:300].decode(errors="replace")
                break
    per["sender"] = sender
    return per


# -- KServe peer --------------------------------------------------------------------------------------------------------
PEER_SOURCE = r'''
import json, sys
import numpy as np
import onnxruntime as ort
import kserve
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer

cfg = json.loads(sys.argv[1])


class FullOnnx(Model):
    """The bundle's full.onnx on ONNX Runtime (1 intra-op, 1 inter-op thread); raw uint8 NHWC pixels in."""

    def __init__(self):
        super().__init__(cfg["name"])
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        self.sess = ort.InferenceSession(cfg["onnx"], so, providers=["CPUExecutionProvider"])
        self.input = self.sess.get_inputs()[0].name
        self.scale = np.float32(cfg["scale"])
        self.mean = np.asarray(cfg["mean"], np.float32).reshape(1, -1, 1, 1)
        self.std = np.asarray(cfg["std"], np.float32).reshape(1, -1, 1, 1)
        self.ready = True

    def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
        x = payload.inputs[0].as_numpy()
        x = (x.astype(np.float32).transpose(0, 3, 1, 2) * self.scale - self.mean) / self.std
        logits = self.sess.run(None, {self.input: np.ascontiguousarray(x)})[0]
        label = logits.argmax(1).astype(np.int64)
        out = InferOutput(name="label", shape=list(label.shape), datatype="INT64")
        out.set_data_from_numpy(label, binary_data=True)
        return InferResponse(model_name=self.name, infer_outputs=[out],
                             response_id=payload.id if payload.id is not None else "")


if __name__ == "__main__":
    import importlib.metadata
    print("kserve", importlib.metadata.version("kserve"), "onnxruntime", ort.__version__, flush=True)
    server = ModelServer(http_port=cfg["port"], grpc_port=cfg["grpc_port"], enable_grpc=False, workers=1,
                         enable_latency_logging=False)
    import logging
    for name in ("uvicorn.access", "kserve.trace"):  # no log line per request (sdedge serve logs none here)
        logging.getLogger(name).setLevel(logging.WARNING)
    server.start([FullOnnx()])
'''


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port  # the peer binds it itself a moment later (a race, acceptable for a benchmark peer)


class PeerProcess:
    def __init__(self, python: str, bundle: Path, manifest: dict, workdir: Path) -> None:
        pre = manifest["input"]["preprocess"]
        self.port = free_port()
        script = workdir / "kserve_peer.py"
        script.write_text(PEER_SOURCE)
        self.log = workdir / "kserve_peer.log"
        cfg = {"name": MODEL, "onnx": str(bundle / manifest["full"]["file"]), "scale": pre["scale"],
               "mean": pre["mean"], "std": pre["std"], "port": self.port, "grpc_port": free_port()}
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        env.pop("PYTHONPATH", None)
        env.pop("VIRTUAL_ENV", None)
        self._logf = open(self.log, "w")
        self.proc = subprocess.Popen([python, str(script), json.dumps(cfg)], stdout=self._logf,
                                     stderr=subprocess.STDOUT, env=env, cwd=workdir)

    def wait_ready(self, timeout: float = 120.0) -> None:
        import urllib.request

        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/v2/models/{MODEL}/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the KServe peer did not become ready (exit status {self.proc.poll()}):\n"
                           + self.log.read_text()[-3000:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._logf.close()


def peer_versions(python: str) -> dict[str, str]:
    code = ("import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in "
            "('kserve', 'onnxruntime', 'numpy', 'uvicorn', 'fastapi')}))")
    return json.loads(subprocess.run([python, "-c", code], capture_output=True, text=True, check=True,
                                     timeout=120).stdout)


# -- main ---------------------------------------------------------------------------------------------------------------
def client_versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for name in ("tritonclient", "grpcio", "uvicorn", "starlette", "h11"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def cpu_ticks() -> dict[str, float]:
    """CPU seconds so far: the machine's busy and niced time (``/proc/stat``), this process and its waited-for
    children (the servers, once stopped)."""
    hz = os.sysconf("SC_CLK_TCK")
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    t = os.times()
    return {"busy_s": (sum(v[:8]) - v[3] - v[4]) / hz, "nice_s": v[1] / hz,
            "ours_s": t.user + t.system + t.children_user + t.children_system}


def cpu_share(a: dict[str, float], b: dict[str, float], wall_s: float) -> dict[str, float]:
    """What used the CPUs between two :func:`cpu_ticks`: this benchmark (clients, servers), niced work, the rest."""
    busy, nice, ours = (b[k] - a[k] for k in ("busy_s", "nice_s", "ours_s"))
    return {"wall_s": round(wall_s, 1), "cpu_busy_s": round(busy, 1), "benchmark_cpu_s": round(ours, 1),
            "niced_other_cpu_s": round(nice, 1), "unniced_other_cpu_s": round(max(0.0, busy - nice - ours), 1),
            "cpus": os.cpu_count() or 0}


def busiest() -> list[str]:
    """``ps``'s five busiest processes (nice, %CPU, command), to show what shared the machine."""
    try:
        out = subprocess.run(["ps", "-eo", "ni,pcpu,args", "--sort=-pcpu"], capture_output=True, text=True,
                             timeout=10).stdout.splitlines()
        return [" ".join(line.split())[:120] for line in out[:6]]
    except (OSError, subprocess.SubprocessError):
        return []


def probe_key(policy: str) -> str:
    """Where the capacity probe under ``policy`` is kept in the results (the deepest exit's under its old name)."""
    return "capacity_probe" if policy == "deepest" else f"capacity_probe_{policy}"


# the overload contenders: the queue order, each with and without shedding the requests that can no longer reach
# their first exit while others wait (the server's default; --no-shed-infeasible: only the expired ones)
# and with each of the server's other overload defaults turned off in turn: runs yielding to the requests waiting
# behind them (--no-yield-to-queue), the reply margin (--no-reply-margin) and the 100 us thread switch interval
# (--switch-interval-us 0: Python's 5 ms); all-off: the three together (shedding stays), the server as it was
# before them but for the bounded batch forming and the HTTP protocol's arrival stamp, which no flag turns off
OVERLOAD_ABLATIONS = {"no-shed": ["--no-shed-infeasible"], "no-yield": ["--no-yield-to-queue"],
                      "no-margin": ["--no-reply-margin"],
                      "switch-5ms": ["--switch-interval-us", "0"],
                      "all-off": ["--no-yield-to-queue", "--no-reply-margin", "--switch-interval-us", "0"]}
OVERLOAD_CONTENDERS = {f"{order}{'-' + name if name else ''}": ["--queue-order", order, *flags]
                       for name, flags in {"": [], **OVERLOAD_ABLATIONS}.items() for order in ("edf", "fifo")}


def start_server(bundle: Path, extra: list[str]) -> ServerProcess:
    srv = ServerProcess(bundle, ["--threads", "1", "--log-level", "warning", *extra], model=MODEL)
    srv.wait_ready(180)
    return srv


def fmt_row(name: str, r: dict[str, Any], ratio: str = "") -> str:
    g = lambda key, f="{:.2f}": f.format(r[key]) if r.get(key) is not None else "-"  # noqa: E731
    return (f"{name:<34} {r['throughput_rps']:>8.1f} {g('p50_ms'):>7} {g('p99_ms'):>7} {g('server_p50_ms'):>7} "
            f"{g('mean_batch_rows'):>5} {r['accuracy']:>7.4f} {g('mean_exit'):>5} {ratio}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("--data", default="/work/shared/data/fashion-mnist", help="the dataset folder (read in place)")
    p.add_argument("--images", type=int, default=2000, help="test images used (the first N of the test split)")
    p.add_argument("--clients", default="1,4,8", help="closed-loop client counts")
    p.add_argument("--requests", type=int, default=500, help="timed requests per closed-loop client")
    p.add_argument("--warmup", type=int, default=20, help="untimed requests per closed-loop client first")
    p.add_argument("--overload-s", type=float, default=15.0, help="seconds of open-loop arrivals per queue order")
    p.add_argument("--overload-factor", default="1.5,1.0",
                   help="arrival rate / measured capacity; a comma list runs each (the first is the figure)")
    p.add_argument("--tight-x", type=float, default=3.0, help="tight budget = this x median single-request latency")
    p.add_argument("--loose-x", type=float, default=12.0, help="loose budget = this x median single-request latency")
    p.add_argument("--sat-conns", type=int, default=32, help="requests in flight in the capacity probe")
    p.add_argument("--sat-s", type=float, default=4.0, help="seconds of the capacity probe")
    p.add_argument("--chunk-s", type=float, default=2.5,
                   help="overload arrivals go to the EDF and FIFO servers in turns, this many seconds at a time")
    p.add_argument("--max-conns", type=int, default=480, help="most open-loop connections (server caps at 512)")
    p.add_argument("--kserve-python", default="/work/kserve-venv/bin/python",
                   help="python of a separate environment with kserve (not this one); '' leaves the peer out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smoke test (< 60 s): few requests, clients 1,8, 2 s overload")
    p.add_argument("--json", help="write every figure here")
    p.add_argument("--md", help="write a short Markdown summary here")
    args = p.parse_args(argv)
    if args.quick:
        args.images, args.clients, args.requests, args.warmup, args.overload_s = 400, "1,8", 25, 5, 2.0
        args.sat_s, args.chunk_s = 1.5, 1.0
    client_counts = [int(c) for c in args.clients.split(",")]
    top = max(client_counts)
    t_start = time.time()
    ticks0 = cpu_ticks()

    from sdedge.runtime import AnytimeSession

    manifest = json.loads((args.bundle / "manifest.json").read_text())
    dataset = manifest["model"]["dataset"]
    test = read_split(dataset, "test", Path(args.data), limit=args.images)
    images, labels = test.images, test.labels
    n_img = len(labels)
    contract = B.contract(1, args.warmup, args.requests, extra="see results.contract_text")
    contract["inputs"] = ("real test images, preloaded uint8 [1, H, W, C]; the same images for every contender at a "
                          "client count; contenders run one after another (not interleaved)")
    contract["timer"] = ("time.perf_counter around one client call (request built to answer decoded; in-process: "
                         "infer() entry to return); throughput over the timed part of the run")
    contract["versions"].update(client_versions())
    contract["busiest_processes_at_start"] = busiest()
    contract["machine_note"] = (
        "clients, the server under test and any other work share the CPUs above: cpu_use gives the CPU seconds "
        "other processes took during the run (niced and not), busiest_processes_at_start what ran at its start")
    print(f"# serve_bench: {contract['machine']}; load avg {contract['load_average_at_start']}; "
          f"{n_img} {dataset} test images; "
          f"clients {client_counts}; {args.requests} timed requests per client", flush=True)
    res: dict[str, Any] = {"contract": contract, "contract_text": __doc__,
                           "args": {k: str(v) for k, v in vars(args).items()},
                           "bundle": {"path": str(args.bundle), "model": manifest["model"]["name"],
                                      "exits_test_accuracy": [e.get("test_accuracy") for e in manifest["exits"]],
                                      "training_epochs": manifest["model"].get("training", {}).get("epoch"),
                                      "training_limit": manifest["model"].get("data", {}).get("limit")},
                           "closed_loop": {}, "grpc_vs_http": {}, "overload": {}, "kserve_peer": {}}
    closed = res["closed_loop"]

    def record(key: str, rate: float, recs: list, k: int | None) -> dict[str, Any]:
        s = summarize(rate, recs, labels, k)
        closed[key] = s
        return s

    # 1 + 3. in-process, batch-1 server, batching server: both servers up together (an idle one costs nothing),
    # the three contenders run back to back at each (policy, clients), so drift hits them alike
    session = AnytimeSession(args.bundle, intra_op_threads=1)
    k = session.num_exits
    res["in_process_engine"] = session.engine
    flags = {"batch1": ["--no-batching"], "batching": []}
    res["server_flags"] = {name: ["--threads", "1", *extra] for name, extra in flags.items()}
    servers: dict[str, ServerProcess] = {}
    try:
        for name, extra in flags.items():
            servers[name] = start_server(args.bundle, extra)
        for pol, thr in POLICIES.items():
            for n in client_counts:
                def call(c: int, i: int, thr=thr) -> tuple:
                    r = session.infer(images[i:i + 1], threshold=thr)[0]
                    return (r.label, r.exit_index, None, None)
                rate, recs = closed_loop(call, n, args.requests, args.warmup, n_img)
                local = record(f"in-process/{pol}/{n}", rate, recs, k)
                print(fmt_row(f"in-process {pol} x{n}", local), flush=True)
                for name, srv in servers.items():
                    call, close = http_caller(srv.port, n, images, None if thr is None else {"threshold": thr})
                    rate, recs = closed_loop(call, n, args.requests, args.warmup, n_img)
                    close()
                    s = record(f"http/{name}/{pol}/{n}", rate, recs, k)
                    s["served_over_in_process"] = round(rate / local["throughput_rps"], 3)
                    print(fmt_row(f"http {name} {pol} x{n}", s, f"/in-process {s['served_over_in_process']:.2f}"),
                          flush=True)
        session.close()
        srv = servers["batching"]
        for proto in ("http", "grpc"):
            mk = http_caller if proto == "http" else grpc_caller
            call, close = mk(srv.grpc_port if proto == "grpc" else srv.port, top, images, None)
            rate, recs = closed_loop(call, top, args.requests, args.warmup, n_img)
            close()
            s = summarize(rate, recs, labels, k)
            res["grpc_vs_http"][proto] = s
            print(fmt_row(f"{proto} batching deepest x{top} (part 3)", s), flush=True)
        res["grpc_vs_http"]["grpc_over_http"] = round(res["grpc_vs_http"]["grpc"]["throughput_rps"]
                                                      / res["grpc_vs_http"]["http"]["throughput_rps"], 3)
        best_in_process = {pol: max(closed[f"in-process/{pol}/{n}"]["throughput_rps"] for n in client_counts)
                           for pol in POLICIES}
        for pol, thr in POLICIES.items():
            cp = saturation(srv.port, images, labels, args.sat_conns, args.sat_s, thr)
            cp["served_over_best_in_process"] = round(cp["throughput_rps"] / best_in_process[pol], 3)
            res[probe_key(pol)] = cp
            print(f"capacity probe (light asyncio client, {args.sat_conns} in flight, {pol}): {cp}", flush=True)
    finally:
        for srv in servers.values():
            srv.stop()
    for pol in POLICIES:
        for n in client_counts:
            on, off = closed[f"http/batching/{pol}/{n}"], closed[f"http/batch1/{pol}/{n}"]
            on["batching_over_batch1"] = round(on["throughput_rps"] / off["throughput_rps"], 3)

    # 2. overload, EDF vs FIFO (the first factor is the figure; further factors give context)
    capacity = res["capacity_probe"]["throughput_rps"]
    single_ms = closed[f"http/batching/deepest/{min(client_counts)}"]["p50_ms"]
    tight, loose = round(args.tight_x * single_ms, 3), round(args.loose_x * single_ms, 3)
    ov = res["overload"]
    ov.update({"capacity_rps": capacity, "capacity_from": "capacity_probe (batching server, deepest, light client)",
               "tritonclient_closed_loop_rps": closed[f"http/batching/deepest/{top}"]["throughput_rps"],
               "median_single_request_ms": single_ms, "tight_budget_ms": tight, "loose_budget_ms": loose,
               "policy": "no threshold; the budget picks the exit", "by_factor": {}})
    servers = {}
    try:
        for order, flags in OVERLOAD_CONTENDERS.items():
            servers[order] = start_server(args.bundle, flags)
        for factor in [float(f) for f in args.overload_factor.split(",")]:
            rate = factor * capacity
            rng = np.random.default_rng(args.seed)
            n_req = int(rate * args.overload_s)
            times = np.cumsum(rng.exponential(1.0 / rate, n_req)).tolist()
            plan = [(t, int(rng.integers(n_img)), "tight" if j % 2 == 0 else "loose", tight if j % 2 == 0 else loose)
                    for j, t in enumerate(times)]
            print(f"\n# overload: Poisson {rate:.0f} req/s ({factor}x {capacity:.0f}) for {args.overload_s} s, "
                  f"budgets tight {tight} ms / loose {loose} ms (x{args.tight_x}/x{args.loose_x} of {single_ms:.2f} "
                  f"ms)", flush=True)
            runs = overload_runs({o: srv.port for o, srv in servers.items()}, images, labels, plan, args.chunk_s,
                                 min(64, args.max_conns), args.max_conns)
            fo = ov["by_factor"][f"{factor:g}"] = {"factor": factor, "rate_rps": round(rate, 1), "requests": n_req}
            for order, r in runs.items():
                fo[order] = r
                a = r["all"]
                print(f"{order:<12} all: met {a['met_share']:.3f} (client {a['client_met_share']:.3f}) late "
                      f"{a['late_share']:.3f} 504 "
                      f"{a['expired_504_share']:.3f} 503 {a['queue_full_503_share']:.3f} other "
                      f"{a['other_failure_share']:.3f} acc(answered) {a['accuracy_of_answered']}; tight met "
                      f"{r['tight']['met_share']:.3f}, loose met {r['loose']['met_share']:.3f}; answered "
                      f"{r['answered_200_per_s']}/s; sender {r['sender']}", flush=True)
            for a, b in (("edf", "fifo"), *((o, f"{o}-{n}") for n in OVERLOAD_ABLATIONS for o in ("edf", "fifo"))):
                fo[f"{a}_met_over_{b}_met"] = (round(fo[a]["all"]["met_share"] / fo[b]["all"]["met_share"], 3)
                                               if fo[b]["all"]["met_share"] else None)
    finally:
        for srv in servers.values():
            srv.stop()

    # 4. KServe peer
    peer = res["kserve_peer"]
    py = args.kserve_python
    if not py:
        peer["status"] = "left out: --kserve-python ''"
    elif not Path(py).exists():
        peer["status"] = f"left out: {py} does not exist (no separate environment with kserve)"
    else:
        try:
            peer["versions"] = peer_versions(py)
        except Exception as e:  # noqa: BLE001 - recorded
            peer["status"] = f"left out: kserve not importable from {py}: {e}"
    if "status" not in peer:
        with tempfile.TemporaryDirectory(prefix="serve_bench_peer_") as tmp:
            proc = PeerProcess(py, args.bundle, manifest, Path(tmp))
            try:
                proc.wait_ready(180)
                for n in client_counts:
                    call, close = http_caller(proc.port, n, images, None, exits=False)
                    rate_p, recs = closed_loop(call, n, args.requests, args.warmup, n_img)
                    close()
                    s = summarize(rate_p, recs, labels, None)
                    served = closed[f"http/batching/deepest/{n}"]
                    s["sdedge_batching_deepest_over_peer"] = round(served["throughput_rps"] / rate_p, 3)
                    s["sdedge_batching_calibrated_over_peer"] = round(
                        closed[f"http/batching/calibrated/{n}"]["throughput_rps"] / rate_p, 3)
                    s["sdedge_batch1_deepest_over_peer"] = round(
                        closed[f"http/batch1/deepest/{n}"]["throughput_rps"] / rate_p, 3)
                    peer[f"http/{n}"] = s
                    print(fmt_row(f"kserve full.onnx x{n}", s, f"sdedge/peer deepest "
                                  f"{s['sdedge_batching_deepest_over_peer']:.2f} calibrated "
                                  f"{s['sdedge_batching_calibrated_over_peer']:.2f}"), flush=True)
                peer["status"] = "ran"
                peer["setup"] = ("kserve.ModelServer(workers=1, REST v2, gRPC off, latency logging, access log and "
                                 "kserve.trace log off, "
                                 "as sdedge serve runs here), a kserve.Model running full.onnx "
                                 "on onnxruntime (1 intra-op, 1 inter-op thread), uint8 NHWC pixels preprocessed with "
                                 "the bundle's scale/mean/std inside predict; output label INT64 (binary)")
            except Exception as e:  # noqa: BLE001 - recorded
                peer["status"] = f"left out: the peer failed: {type(e).__name__}: {str(e)[-1500:]}"
            finally:
                proc.stop()
    print(f"# kserve peer: {peer.get('status')}")

    res["wall_s"] = round(time.time() - t_start, 1)
    res["contract"]["load_average_end"] = B.load_average()
    res["contract"]["busiest_processes_at_end"] = busiest()
    res["contract"]["cpu_use_during_run"] = cpu_share(ticks0, cpu_ticks(), time.time() - t_start)
    print(f"# CPU use during the run: {res['contract']['cpu_use_during_run']}")
    print(f"# done in {res['wall_s']} s; load avg {res['contract']['load_average_end']}")
    if args.json:
        write_text_atomic(args.json, json.dumps(res, indent=1) + "\n")
    if args.md:
        write_text_atomic(args.md, markdown(res, client_counts))
    return 0


def markdown(res: dict[str, Any], client_counts: list[int]) -> str:
    c, top = res["closed_loop"], max(client_counts)
    lines = [f"# serve_bench results ({res['contract']['date_utc']})", "",
             f"Command: `{res['contract']['command']}`  ",
             f"Machine: {res['contract']['machine']}; {res['contract']['machine_note']}.  ",
             f"Versions: {json.dumps(res['contract']['versions'])}; in-process engine: {res['in_process_engine']}.  ",
             f"Bundle: `{res['bundle']['path']}` ({res['bundle']['model']}; test accuracy per exit "
             f"{res['bundle']['exits_test_accuracy']}).  ", f"Wall time: {res['wall_s']} s; CPU use during the run "
             f"(seconds): {json.dumps(res['contract']['cpu_use_during_run'])}.", "",
             "## Closed loop (1-image UINT8 requests, binary tensors, tritonclient.http)", "",
             "| contender | policy | clients | req/s | p50 ms | p99 ms | accuracy | mean exit | mean rows | "
             "/in-process | batching/batch-1 |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for pol in POLICIES:
        for n in client_counts:
            for name in ("in-process", "http/batch1", "http/batching"):
                r = c[f"{name}/{pol}/{n}"]
                lines.append(f"| {name} | {pol} | {n} | {r['throughput_rps']:.1f} | {r['p50_ms']:.2f} | "
                             f"{r['p99_ms']:.2f} | {r['accuracy']:.4f} | {r.get('mean_exit', '-')} | "
                             f"{r.get('mean_batch_rows', '-')} | {r.get('served_over_in_process', '-')} | "
                             f"{r.get('batching_over_batch1', '-')} |")
    g = res["grpc_vs_http"]
    lines += ["", f"## gRPC vs HTTP (batching, deepest, {top} clients)", "",
              f"HTTP {g['http']['throughput_rps']:.1f} req/s (p50 {g['http']['p50_ms']:.2f} ms), gRPC "
              f"{g['grpc']['throughput_rps']:.1f} req/s (p50 {g['grpc']['p50_ms']:.2f} ms): gRPC/HTTP "
              f"{g['grpc_over_http']}.", ""]
    cp = res["capacity_probe"]
    for pol in POLICIES:
        cp = res[probe_key(pol)]
        lines += [f"Capacity probe (batching server, {pol}, HTTP, {cp['connections']} requests in flight from a light "
                  f"asyncio client): {cp['throughput_rps']} req/s, p50 {cp['p50_ms']} ms, p99 {cp['p99_ms']} ms; "
                  f"÷ the best in-process rate: {cp['served_over_best_in_process']}.", ""]
    ov = res["overload"]
    lines += [f"## EDF vs FIFO: open-loop Poisson arrivals at a factor x capacity {ov['capacity_rps']} req/s "
              f"(batching server, deepest, light client); budgets tight {ov['tight_budget_ms']} ms / loose "
              f"{ov['loose_budget_ms']} ms (alternating), batching on, no threshold", "",
              "| load | order | class | met (200, deadline_met) | client met | 200 late | 504 | 503 | other | "
              "accuracy of answered | mean exit |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for f, fo in ov["by_factor"].items():
        for order in OVERLOAD_CONTENDERS:
            for cls in ("all", "tight", "loose"):
                r = fo[order][cls]
                lines.append(f"| {f}x ({fo['rate_rps']} req/s) | {order} | {cls} | {r['met_share']:.4f} | "
                             f"{r['client_met_share']:.4f} | {r['late_share']:.4f} | {r['expired_504_share']:.4f} | "
                             f"{r['queue_full_503_share']:.4f} "
                             f"| {r['other_failure_share']:.4f} | {r['accuracy_of_answered']} | "
                             f"{r['mean_exit_of_answered']} |")
    lines.append("")
    for f, fo in ov["by_factor"].items():
        for order in OVERLOAD_CONTENDERS:
            s = fo[order]["sender"]
            lines.append(f"- {f}x {order}: answered {fo[order]['answered_200_per_s']} req/s; sender achieved "
                         f"{s['achieved_offered_rps']} req/s offered, lag p50/p99 {s['sender_lag_p50_ms']}/"
                         f"{s['sender_lag_p99_ms']} ms, {s['connections_opened']} connections over {s['chunks']} "
                         f"chunks, {s['requests_that_waited_for_a_connection']} requests waited for a connection; "
                         f"other failures: {fo[order].get('other_failures', 'none')}")
            la = fo[order]["all"].get("late_answers")
            if la:
                lines.append(f"  late answers (200, deadline missed): overrun p50 {la['overrun_ms_p50']} ms, p99 "
                             f"{la['overrun_ms_p99']} ms; queue wait p50 {la['queue_over_budget_p50']} of the budget; "
                             f"exit shares {la['exit_share']}; batch rows p50 {la['batch_rows_p50']} (answers that "
                             f"met: {la['batch_rows_p50_of_met']})")
    peer = res["kserve_peer"]
    lines += ["", "## KServe peer (kserve.ModelServer, full.onnx)", "", f"Status: {peer.get('status')}", ""]
    if peer.get("status") == "ran":
        lines += [f"Versions: {json.dumps(peer['versions'])}", "",
                  "| clients | peer req/s | p50 ms | p99 ms | accuracy | sdedge batching deepest / peer | "
                  "sdedge batching calibrated / peer | sdedge batch-1 deepest / peer |",
                  "|---|---|---|---|---|---|---|---|"]
        for n in client_counts:
            r = peer[f"http/{n}"]
            lines.append(f"| {n} | {r['throughput_rps']:.1f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                         f"{r['accuracy']:.4f} | {r['sdedge_batching_deepest_over_peer']} | "
                         f"{r['sdedge_batching_calibrated_over_peer']} | {r['sdedge_batch1_deepest_over_peer']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())

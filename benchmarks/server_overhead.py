"""The server's own CPU per request: ``sdedge serve``'s process CPU time per request minus the inference.

    python benchmarks/server_overhead.py BUNDLE --json benchmarks/results/server_overhead.json

Contract
--------
* One ``sdedge serve BUNDLE --threads 1 --max-batch 1`` process; one client sends ``--requests``
  one-image UINT8 requests back to back on one keep-alive connection (HTTP: KServe v2 binary-tensor
  requests built once as bytes, answers read off the socket, so the client's own cost stays out of the
  server's process; gRPC: ``tritonclient.grpc``), each at the deepest exit (no budget, no threshold).
* Server CPU: user + system time of the server process (all its threads, ``/proc/PID/stat``) over the
  timed requests, after ``--warmup`` untimed ones.
* Inference CPU: the same images through an in-process :class:`~sdedge.runtime.AnytimeSession` (one
  thread, the same bundle), CPU time of this process (``time.process_time``) per image.
* Contenders: ``--config`` strings of ``sdedge serve`` options (default: h11 + asyncio's loop against
  ``auto``, i.e. httptools + uvloop where installed); each round measures the inference and then every
  contender once, in order; medians over ``--rounds`` rounds are reported (a shared machine's noise
  moves single runs by ±30 %).
* Reported: server CPU per request, inference CPU per request, and their difference, the server's own
  cost (HTTP or gRPC parsing, validation, scheduling, encoding), per protocol, and the event-loop
  thread's share of the server CPU.
* Floors (``--floors``, on by default; the ``auto`` parser and loop, the same requests and clients):
  ``asgi``, uvicorn answering every request at once with a fixed body from a bare ASGI app (what uvicorn
  alone costs); ``asgi+handoff``, the same app answering through a worker thread (a ``queue.SimpleQueue``
  and ``call_soon_threadsafe``: the least a server that keeps inference off its event loop pays);
  ``grpc-aio``, a bare ``grpc.aio`` server answering Triton's ``ModelInfer`` with a canned response (gRPC);
  ``sdedge-no-model``, sdedge's own server (HTTP and gRPC) with the pool's ``run`` answered at once with a
  canned answer (its protocol work alone), and ``sdedge-no-model+handoff``, the canned answer through a
  worker thread. In process, the inference is also timed through the same bare thread hand-off
  (``inference via handoff``): with a real model behind it, the hand-off's cost on the machine, cold caches
  and wake-ups included.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load_fault import ServerProcess  # noqa: E402
from serve_bench import MODEL, raw_request  # noqa: E402


def _stat_cpu_s(path: Path) -> float:
    fields = path.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid: int) -> dict[str, float]:
    """User + system CPU seconds of process ``pid``: ``total`` (every thread) and ``main_thread`` (the event loop)."""
    return {"total": _stat_cpu_s(Path(f"/proc/{pid}/stat")), "main_thread": _stat_cpu_s(Path(f"/proc/{pid}/task/{pid}/stat"))}


def _per_request(c0: dict[str, float], c1: dict[str, float], n: int) -> dict[str, float]:
    return {"server_cpu_ms_per_request": 1000 * (c1["total"] - c0["total"]) / n,
            "event_loop_thread_cpu_ms_per_request": 1000 * (c1["main_thread"] - c0["main_thread"]) / n}


def _read_response(sock: socket.socket, buf: bytearray) -> bytes:
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        buf += chunk
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        rest += chunk
    buf[:] = rest[length:]
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"server answered {head.splitlines()[0]!r}: {rest[:length]!r}")
    return rest[:length]


def http_run(port: int, reqs: list[bytes], pid: int, warmup: int) -> dict:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = bytearray()
    for r in reqs[:warmup]:
        sock.sendall(r)
        _read_response(sock, buf)
    c0, t0 = proc_cpu_s(pid), time.perf_counter()
    last = b""
    for r in reqs[warmup:]:
        sock.sendall(r)
        last = _read_response(sock, buf)
    c1, t1 = proc_cpu_s(pid), time.perf_counter()
    sock.close()
    n = len(reqs) - warmup
    return {"requests": n, **_per_request(c0, c1, n), "wall_ms_per_request": 1000 * (t1 - t0) / n,
            "last_answer": json.loads(last)}


def grpc_run(port: int, images: np.ndarray, pid: int, warmup: int) -> dict:
    import tritonclient.grpc as tg

    client = tg.InferenceServerClient(f"127.0.0.1:{port}")
    outs = [tg.InferRequestedOutput(n) for n in ("label", "exit_index")]

    def call(i: int):
        inp = tg.InferInput("image", [1, *images.shape[1:]], "UINT8")
        inp.set_data_from_numpy(images[i:i + 1])
        return client.infer(MODEL, [inp], outputs=outs)

    for i in range(warmup):
        call(i)
    c0, t0 = proc_cpu_s(pid), time.perf_counter()
    for i in range(warmup, len(images)):
        call(i)
    c1, t1 = proc_cpu_s(pid), time.perf_counter()
    client.close()
    n = len(images) - warmup
    return {"requests": n, **_per_request(c0, c1, n), "wall_ms_per_request": 1000 * (t1 - t0) / n}


def inference_cpu_ms(bundle: Path, images: np.ndarray, warmup: int) -> float:
    from sdedge.runtime import AnytimeSession

    with AnytimeSession(bundle, intra_op_threads=1) as sess:
        for i in range(warmup):
            sess.infer(images[i:i + 1])
        c0 = time.process_time()
        for i in range(warmup, len(images)):
            sess.infer(images[i:i + 1])
        return 1000 * (time.process_time() - c0) / (len(images) - warmup)


def measure(bundle: Path, images: np.ndarray, server_args: list[str], warmup: int) -> dict:
    """One server under ``server_args``: HTTP then gRPC, CPU per request of the process and its event loop."""
    srv = ServerProcess(bundle, ["--threads", "1", "--max-batch", "1", "--log-level", "warning", *server_args],
                        model=MODEL)
    try:
        srv.wait_ready(180)
        pid = srv.proc.pid
        http = http_run(srv.port, [raw_request(srv.port, im, None) for im in images], pid, warmup)
        http.pop("last_answer", None)
        grpc = grpc_run(srv.grpc_port, images, pid, warmup)
    finally:
        srv.stop()
    return {"http": http, "grpc": grpc}


FLOORS = {"asgi": ("http",), "asgi+handoff": ("http",), "grpc-aio": ("grpc",),
          "sdedge-no-model": ("http", "grpc"), "sdedge-no-model+handoff": ("http", "grpc")}  # floor -> protocols


class _Handoff:
    """A worker thread that calls ``fn(arg)`` for each request and hands the result back to the asking loop
    (``call_soon_threadsafe``): the bare hand-off, nothing else."""

    def __init__(self, fn: Any) -> None:
        import queue
        import threading

        self.fn = fn
        self.q: Any = queue.SimpleQueue()
        threading.Thread(target=self._work, daemon=True).start()

    def _work(self) -> None:
        while True:
            arg, fut, loop = self.q.get()
            loop.call_soon_threadsafe(fut.set_result, self.fn(arg))

    async def __call__(self, arg: Any) -> Any:
        import asyncio

        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self.q.put((arg, fut, loop))
        return await fut


def serve_floor(kind: str, bundle: Path) -> None:
    """Serve one floor (module docstring) on ports the OS picks, printed as ``http N`` / ``grpc N``; blocks."""
    import asyncio

    from sdedge.runtime.server import ServerConfig, SessionOptions
    from sdedge.runtime.server.runner import bind_socket, serve, uvicorn_config

    config = ServerConfig(port=0, grpc_port=0, model_name=MODEL, log_level="warning",
                          session=SessionOptions(intra_op_threads=1, max_batch=1))  # as measure()'s server
    if kind == "grpc-aio":
        asyncio.run(_bare_grpc(config.host))
        return
    if kind.startswith("asgi"):
        import uvicorn

        body = json.dumps({"model_name": MODEL, "outputs": []}).encode()
        handoff = _Handoff(lambda _: body) if kind.endswith("+handoff") else None

        async def app(scope: dict, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                return
            while (await receive()).get("more_body"):
                pass
            answer = body if handoff is None else await handoff(None)
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-length", str(len(answer)).encode()), (b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": answer})

        sock = bind_socket(config.host, 0)
        print(f"http {sock.getsockname()[1]}", flush=True)
        sys.setswitchinterval(config.switch_interval_us * 1e-6)
        uvicorn.Server(uvicorn_config(app, config)).run(sockets=[sock])
        return
    from sdedge.runtime.server.app import build_state

    state = build_state(bundle, config)
    canned = asyncio.run(state.pool.run(_one_image(bundle)))  # one real answer, then every request gets it
    if kind.endswith("+handoff"):
        handoff = _Handoff(lambda _: canned)

        async def run(x: Any, **_: Any) -> Any:
            return await handoff(None)
    else:
        async def run(x: Any, **_: Any) -> Any:
            return canned
    state.pool.run = run
    serve(state, config, on_listening=lambda host, port: print(f"http {port}", flush=True),
          on_grpc_listening=lambda host, port: print(f"grpc {port}", flush=True))


async def _bare_grpc(host: str) -> None:
    """grpc.aio alone: Triton's ``ModelInfer`` answered at once with a canned response (the labels and exits
    of one image, as raw outputs), on uvloop when installed, as the server's loop."""
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    import grpc
    from tritonclient.grpc import service_pb2 as pb

    resp = pb.ModelInferResponse(model_name=MODEL, model_version="1")
    for name, dt, raw in (("label", "INT64", np.zeros(1, "<i8").tobytes()), ("exit_index", "INT32", np.ones(1, "<i4").tobytes())):
        resp.outputs.add(name=name, datatype=dt, shape=[1])
        resp.raw_output_contents.append(raw)

    async def model_infer(request: Any, context: Any) -> Any:
        return resp

    handler = grpc.method_handlers_generic_handler("inference.GRPCInferenceService", {
        "ModelInfer": grpc.unary_unary_rpc_method_handler(model_infer, request_deserializer=pb.ModelInferRequest.FromString,
                                                          response_serializer=pb.ModelInferResponse.SerializeToString)})
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port(f"{host}:0")
    await server.start()
    print(f"grpc {port}", flush=True)
    await server.wait_for_termination()


def _one_image(bundle: Path) -> np.ndarray:
    from sdedge.runtime.bundle import open_bundle

    c, h, w = open_bundle(bundle).manifest.input.shape[-3:]
    return np.zeros((1, h, w, c), np.uint8)


def floor_run(kind: str, bundle: Path, reqs: list[bytes], images: np.ndarray, warmup: int) -> dict:
    """One floor server (:func:`serve_floor` in a subprocess): CPU per request over each of its protocols
    (``FLOORS[kind]``), as :func:`http_run` and :func:`grpc_run` measure the server."""
    import subprocess

    want = FLOORS[kind]
    proc = subprocess.Popen([sys.executable, __file__, str(bundle), "--serve-floor", kind], stdout=subprocess.PIPE,
                            text=True)
    try:
        ports: dict[str, int] = {}
        for line in proc.stdout:  # type: ignore[union-attr]
            proto, _, port = line.strip().partition(" ")
            if proto in want and port.isdigit():
                ports[proto] = int(port)
                if len(ports) == len(want):
                    break
        if len(ports) < len(want):
            raise RuntimeError(f"floor server {kind!r} exited before it listened (status {proc.wait()})")
        out = {}
        if "http" in ports:
            out["http"] = http_run(ports["http"], reqs, proc.pid, warmup)
            out["http"].pop("last_answer", None)
        if "grpc" in ports:
            out["grpc"] = grpc_run(ports["grpc"], images, proc.pid, warmup)
        return out
    finally:
        proc.terminate()
        proc.wait(30)


def inference_handoff_cpu_ms(bundle: Path, images: np.ndarray, warmup: int) -> float:
    """:func:`inference_cpu_ms` with each call made on a worker thread through :class:`_Handoff` from an
    event loop (uvloop when installed): the process's CPU per image."""
    import asyncio

    from sdedge.runtime import AnytimeSession

    async def go(sess: Any) -> float:
        handoff = _Handoff(sess.infer)
        for i in range(warmup):
            await handoff(images[i:i + 1])
        c0 = time.process_time()
        for i in range(warmup, len(images)):
            await handoff(images[i:i + 1])
        return 1000 * (time.process_time() - c0) / (len(images) - warmup)

    try:
        import uvloop
        loop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    with AnytimeSession(bundle, intra_op_threads=1) as sess:
        try:
            return loop.run_until_complete(go(sess))
        finally:
            loop.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3, help="every configuration once per round, medians reported")
    ap.add_argument("--data", default=None, help="dataset folder for real test images (default: the bundle's)")
    ap.add_argument("--config", action="append", default=None, metavar="ARGS",
                    help="`sdedge serve` options of one contender, one string (repeatable; default: "
                         "'--http h11 --loop asyncio' and '--http auto --loop auto')")
    ap.add_argument("--floors", action=argparse.BooleanOptionalAction, default=True,
                    help="also measure the floors of the module docstring (default: on)")
    ap.add_argument("--serve-floor", choices=FLOORS, default=None, help=argparse.SUPPRESS)  # the floors' own process
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.serve_floor:
        serve_floor(args.serve_floor, args.bundle)
        return 0
    configs = args.config or ["--http h11 --loop asyncio", "--http auto --loop auto"]

    import statistics

    from sdedge.calibrate import benchmarking as B
    from sdedge.common.datasets import find_folder, read_split
    from sdedge.common.jsonio import write_json_atomic
    from sdedge.runtime.bundle import open_bundle
    from sdedge.runtime.server.http_impl import resolve_http, resolve_loop

    name = open_bundle(args.bundle).manifest.raw["model"]["data"]["dataset"]
    test = read_split(name, "test", find_folder(name, args.data), None)
    n = args.requests + args.warmup
    images = np.ascontiguousarray(test.images[np.arange(n) % len(test)])
    record = B.contract(1, args.warmup, args.requests, extra="benchmarks/server_overhead.py docstring")
    record["auto_resolves_to"] = {"http": resolve_http("auto"), "loop": resolve_loop("auto")}
    rounds: list[dict] = []
    for r in range(args.rounds):
        entry = {"inference_cpu_ms_per_request": inference_cpu_ms(args.bundle, images, args.warmup)}
        if args.floors:
            entry["inference_via_handoff_cpu_ms_per_request"] = inference_handoff_cpu_ms(args.bundle, images, args.warmup)
        for c in configs:
            entry[c] = measure(args.bundle, images, c.split(), args.warmup)
        if args.floors:
            reqs = [raw_request(0, im, None) for im in images]
            entry["floors"] = {k: floor_run(k, args.bundle, reqs, images, args.warmup) for k in FLOORS}
        rounds.append(entry)
        print(f"round {r + 1}/{args.rounds}: inference {entry['inference_cpu_ms_per_request']:.3f} ms; " + "; ".join(
            f"{c}: http {entry[c]['http']['server_cpu_ms_per_request']:.3f}, grpc {entry[c]['grpc']['server_cpu_ms_per_request']:.3f}"
            for c in configs) + "".join(f"; {k} {p} {v['server_cpu_ms_per_request']:.3f}"
                                        for k, f in entry.get("floors", {}).items() for p, v in f.items()),
            flush=True)
    med = statistics.median
    infer = med(e["inference_cpu_ms_per_request"] for e in rounds)
    summary = {"inference_cpu_ms_per_request": round(infer, 4)}
    print(f"\nmedians over {args.rounds} rounds, {args.requests} timed requests each; in-process inference "
          f"{infer:.3f} ms CPU per image")
    print(f"{'server options':<32}{'proto':>6}{'server CPU':>12}{'own CPU':>10}{'event loop':>12}{'wall':>8}  (ms/request)")
    for c in configs:
        summary[c] = {}
        for proto in ("http", "grpc"):
            cpu = med(e[c][proto]["server_cpu_ms_per_request"] for e in rounds)
            loop = med(e[c][proto]["event_loop_thread_cpu_ms_per_request"] for e in rounds)
            wall = med(e[c][proto]["wall_ms_per_request"] for e in rounds)
            own = med(e[c][proto]["server_cpu_ms_per_request"] - e["inference_cpu_ms_per_request"] for e in rounds)
            summary[c][proto] = {"server_cpu_ms_per_request": round(cpu, 4), "server_own_cpu_ms_per_request": round(own, 4),
                                 "event_loop_thread_cpu_ms_per_request": round(loop, 4), "wall_ms_per_request": round(wall, 4)}
            print(f"{c:<32}{proto:>6}{cpu:>12.3f}{own:>10.3f}{loop:>12.3f}{wall:>8.3f}")
    if args.floors:
        via = med(e["inference_via_handoff_cpu_ms_per_request"] for e in rounds)
        summary["inference_via_handoff_cpu_ms_per_request"] = round(via, 4)
        summary["floors"] = {}
        print(f"\nin-process inference through a bare thread hand-off: {via:.3f} ms CPU per image ({via - infer:+.3f})")
        print(f"{'floor':<32}{'proto':>6}{'server CPU':>12}{'event loop':>12}{'wall':>8}  (ms/request)")
        for k, protos in FLOORS.items():
            summary["floors"][k] = {}
            for proto in protos:
                cpu = med(e["floors"][k][proto]["server_cpu_ms_per_request"] for e in rounds)
                loop = med(e["floors"][k][proto]["event_loop_thread_cpu_ms_per_request"] for e in rounds)
                wall = med(e["floors"][k][proto]["wall_ms_per_request"] for e in rounds)
                summary["floors"][k][proto] = {"server_cpu_ms_per_request": round(cpu, 4),
                                               "event_loop_thread_cpu_ms_per_request": round(loop, 4),
                                               "wall_ms_per_request": round(wall, 4)}
                print(f"{k:<32}{proto:>6}{cpu:>12.3f}{loop:>12.3f}{wall:>8.3f}")
    record.update({"configs": configs, "rounds": rounds, "summary": summary})
    if args.json:
        write_json_atomic(args.json, record, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

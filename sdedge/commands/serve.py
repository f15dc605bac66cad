"""``sdedge serve BUNDLE``: serve a bundle over HTTP with the KServe v2 / Open Inference Protocol.

A thin layer over :func:`sdedge.runtime.server.serve`; torch-free, and the web packages are imported
only in ``run`` (``sdedge serve -h`` works without them).
"""
from __future__ import annotations

import argparse
from typing import Any

from .argtypes import add_precision_argument, thread_count


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "serve", help="serve a bundle over HTTP and gRPC (KServe v2 / Open Inference Protocol, per-request deadlines)",
        description="Serve a bundle over HTTP and gRPC with the KServe v2 / Open Inference Protocol (the one "
                    "tritonclient, KServe and Triton speak): /v2/health/{live,ready}, /v2/models/NAME[/versions/V]"
                    "{,/ready,/config,/stats,/infer}, JSON and binary tensors, Prometheus /metrics, and the same over "
                    "gRPC (--grpc-port). Requests are served earliest deadline first; one whose deadline passed while "
                    "it waited is answered 504 / DEADLINE_EXCEEDED without running (parameters.late=answer: the first "
                    "exit's answer instead); requests waiting together run as one batch, each row leaving at its own "
                    "exit. Input: FP32 [B,C,H,W] preprocessed or "
                    "UINT8 [B,H,W,C] raw pixels. Request parameters budget_ms, threshold and criterion override the "
                    "defaults below; the deadline counts from the request's arrival, queueing included, and every "
                    "answer says which exit it took and whether its deadline held. Stops gracefully on SIGTERM.",
        epilog="Example: `sdedge serve bundle/ --budget-ms 5`, then `curl localhost:8000/v2/models/NAME`.")
    p.add_argument("bundle", help="bundle folder (made by `sdedge export`, optionally calibrated)")
    g = p.add_argument_group("answers (defaults; each request's parameters may override them)")
    g.add_argument("--budget-ms", type=float, default=None,
                   help="latency budget per request in milliseconds, counted from the request's arrival: the deepest "
                        "exit that fits (default: no deadline)")
    g.add_argument("--threshold", default=None,
                   help="confidence threshold in [0, 1] (first exit at least this sure) or 'calibrated' "
                        "(calibration.json's per-exit thresholds) (default: no confidence stop)")
    g.add_argument("--criterion", choices=["max_prob", "entropy", "margin"], default=None,
                   help="confidence criterion for the threshold (default: max_prob)")
    g.add_argument("--answer", choices=["last", "ensemble"], default="last",
                   help="answer with the last exit run, or the mean of the exits run so far (default last)")
    n = p.add_argument_group("network")
    n.add_argument("--host", default="127.0.0.1",
                   help="address to bind; 0.0.0.0 (or ::) exposes the server to the network, do it on purpose (default 127.0.0.1)")
    n.add_argument("--port", type=int, default=8000,
                   help="TCP port; 0 lets the OS pick a free one, printed on stderr once the server listens "
                        "('sdedge serve: listening on http://HOST:PORT/...') (default 8000)")
    n.add_argument("--grpc-port", type=_grpc_port, default=DEFAULT_GRPC,
                   help="TCP port of the KServe v2 gRPC endpoint (tritonclient.grpc), on the same host; 0 disables it, "
                        "'any' lets the OS pick a free one, printed on stderr ('sdedge serve: gRPC listening on "
                        "HOST:PORT') (default 8001, as Triton; when 8001 is taken and the flag was not given, the "
                        "server starts without gRPC and says so; a port given explicitly must be free)")
    n.add_argument("--model-name", default=None,
                   help="model name in the URLs (default: the manifest's model name)")
    n.add_argument("--model-version", default="1", help="model version in the metadata and /versions/V URLs (default 1)")
    c = p.add_argument_group("capacity and safety")
    c.add_argument("--workers", type=int, default=1,
                   help="sessions, each with its own inference thread, sharing one request queue; more than 1 pays "
                        "off only where one inference cannot use every core (default 1)")
    c.add_argument("--threads", type=thread_count, default=None,
                   help="onnxruntime intra-op threads per session (default: the CPUs split between the sessions)")
    c.add_argument("--backend", choices=["auto", "onnxruntime", "tensorrt"], default="auto",
                   help="inference backend (default auto: TensorRT engines if built, else onnxruntime)")
    add_precision_argument(c)
    c.add_argument("--max-batch", type=int, default=64, help="most images in one request (more: 400; default 64)")
    c.add_argument("--no-batching", dest="batching", action="store_false",
                   help="run every request alone (default: requests waiting together run as one batch of up to "
                        "--max-batch rows, each row with its own threshold and deadline, leaving at its own exit)")
    c.add_argument("--max-queue-delay-us", type=int, default=0,
                   help="microseconds a worker waits for more requests to fill a batch (default 0: batch only what "
                        "already waits, so an idle server adds no latency)")
    c.add_argument("--no-deadline-wait-ms", type=float, default=1000.0,
                   help="the queue serves earliest deadline first; a request without a deadline waits behind those "
                        "with one for at most this long (default 1000)")
    c.add_argument("--queue-order", choices=["edf", "fifo", "adaptive"], default="edf",
                   help="edf: earliest deadline first (default); fifo: arrival order (a baseline for comparisons); "
                        "adaptive: EDF for a share of the requests that shrinks while that group misses deadlines "
                        "(overload), the rest after them in arrival order (EDF under light load, close to FIFO under "
                        "overload; see README, Serving)")
    c.add_argument("--no-shed-infeasible", dest="shed_infeasible", action="store_false",
                   help="run every request whose deadline has not passed yet (default: while other requests wait, "
                        "one that can no longer reach even its first exit by its deadline is answered 504 "
                        "'deadline exceeded' at once instead of run, so it does not make the others late too)")
    c.add_argument("--no-yield-to-queue", dest="yield_to_queue", action="store_false",
                   help="let every request use its whole budget (default: a request answers at a shallower exit "
                        "when going deeper would leave the requests waiting behind it too little time to reach "
                        "their first exits by their deadlines; deadline_met still judges its own deadline)")
    c.add_argument("--no-reply-margin", dest="reply_margin", action="store_false",
                   help="give the inference worker each request's deadline as is (default: less a margin, the recent "
                        "p90 of how long answers take from the worker back to the event loop, at most half the "
                        "budget, so the answer is ready to send by the deadline)")
    c.add_argument("--switch-interval-us", type=int, default=100,
                   help="the interpreter's thread switch interval for this process, in microseconds (default 100; 0: "
                        "Python's own 5 ms): how long an inference thread back from the device may wait for the "
                        "GIL while the event loop parses other requests")
    c.add_argument("--max-body-mb", type=float, default=16.0,
                   help="largest request body in MiB, also after decompression (more: 413, refused on Content-Length "
                        "before reading; default 16)")
    c.add_argument("--max-queue", type=int, default=256,
                   help="most requests waiting for an inference worker (more: 503 with Retry-After; default 256)")
    c.add_argument("--body-timeout", type=float, default=30.0,
                   help="seconds a client has to send its request body (slower: 408; default 30)")
    c.add_argument("--header-timeout", type=float, default=10.0,
                   help="seconds a new connection, or a request head once begun, has to send the whole head "
                        "(slower: closed, with a 408 when part of the head came; default 10)")
    c.add_argument("--limit-concurrency", type=int, default=512,
                   help="most open connections + tasks (more: 503); bounds what slow clients can hold (default 512)")
    c.add_argument("--timeout-keep-alive", type=int, default=5,
                   help="seconds an idle keep-alive connection stays open (default 5)")
    c.add_argument("--graceful-timeout", type=float, default=30.0,
                   help="on SIGTERM, seconds to let requests in flight finish (default 30)")
    c.add_argument("--warmup", type=int, default=3, help="warm-up runs per section before serving (default 3)")
    o = p.add_argument_group("logging")
    o.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"], default="info",
                   help="uvicorn log level (default info)")
    o.add_argument("--access-log", action="store_true", help="log every request")
    o.add_argument("--http", choices=["auto", "h11", "httptools"], default="auto",
                   help="HTTP/1.1 parser: httptools (C, less CPU per request) or h11 (pure Python); "
                        "auto: httptools when installed (default)")
    o.add_argument("--loop", choices=["auto", "asyncio", "uvloop"], default="auto",
                   help="event loop: uvloop (less CPU per request) or asyncio's; auto: uvloop when installed (default)")
    return p


DEFAULT_GRPC = "default"  # --grpc-port not given: 8001 when free (Triton's), else no gRPC with a warning


def default_grpc_port(host: str, port: int = 8001) -> int | None:
    """Triton's gRPC port when it is free on ``host``, else None (a second server on the same machine still
    starts, on HTTP only); the caller says which."""
    from ..common.errors import BackendError
    from ..runtime.server.runner import bind_socket

    try:
        bind_socket(host, port).close()
    except BackendError:
        return None
    return port


def _grpc_port(text: str) -> int | None:
    """``--grpc-port``: 0 disables gRPC (None), ``any`` is a free port the OS picks (0), else 1..65535."""
    if text == DEFAULT_GRPC:  # argparse passes a string default through the type
        return DEFAULT_GRPC  # type: ignore[return-value]
    if text.strip().lower() == "any":
        return 0
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, 0 (no gRPC) or 'any', got {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port in 0..65535 (0: no gRPC) or 'any', got {port}")
    return None if port == 0 else port


def config_from_args(args: argparse.Namespace) -> Any:
    from ..runtime.options import SessionOptions
    from ..runtime.server.config import ServerConfig
    from .run import _threshold

    session = SessionOptions(backend=args.backend, precision=args.precision, intra_op_threads=args.threads,
                             warmup=args.warmup, max_batch=args.max_batch, answer=args.answer)
    return ServerConfig(
        host=args.host, port=args.port, grpc_port=8001 if args.grpc_port == DEFAULT_GRPC else args.grpc_port,
        batching=args.batching,
        max_queue_delay_us=args.max_queue_delay_us, no_deadline_wait_ms=args.no_deadline_wait_ms,
        queue_order=args.queue_order, shed_infeasible=args.shed_infeasible, yield_to_queue=args.yield_to_queue,
        switch_interval_us=args.switch_interval_us, reply_margin=args.reply_margin,
        model_name=args.model_name, model_version=args.model_version,
        budget_ms=args.budget_ms, threshold=_threshold(args.threshold), criterion=args.criterion,
        session=session, workers=args.workers, max_body_mb=args.max_body_mb, max_queue=args.max_queue,
        body_timeout_s=args.body_timeout, header_timeout_s=args.header_timeout, limit_concurrency=args.limit_concurrency,
        timeout_keep_alive=args.timeout_keep_alive, graceful_timeout_s=args.graceful_timeout,
        log_level=args.log_level, access_log=args.access_log, http=args.http, loop=args.loop)


def run(args: argparse.Namespace) -> int:
    import logging
    import sys

    from ..runtime.server import serve
    from ..runtime.server.app import build_state, require_web
    from ..runtime.server.runner import grpc_listening_line, listening_line

    config = config_from_args(args)
    require_web()  # before spending seconds on loading and warming up the bundle
    if args.grpc_port == DEFAULT_GRPC and default_grpc_port(config.host, config.grpc_port) is None:
        import dataclasses

        print(f"sdedge serve: gRPC not started: {config.host}:{config.grpc_port} is in use (another server?); "
              f"serving HTTP only (pass --grpc-port PORT or any for gRPC)", file=sys.stderr)
        config = dataclasses.replace(config, grpc_port=None)
    logging.basicConfig(level=getattr(logging, args.log_level.upper()), format="%(levelname)s: %(name)s: %(message)s")
    if config.host not in ("127.0.0.1", "::1", "localhost"):
        print(f"sdedge serve: binding {config.host}: the model is reachable from the network", file=sys.stderr)
    state = build_state(args.bundle, config)  # load and warm up before binding the port
    s = state.session
    print(f"sdedge serve: model {state.model_name!r} version {state.model_version!r}: {s.num_exits} exits, input "
          f"{list(s.input_shape)}, {len(state.sessions)} session(s) of {s.describe_backend()}, "
          f"{'calibrated' if s.calibration else 'uncalibrated'}, default budget "
          f"{'none' if config.budget_ms is None else f'{config.budget_ms:g} ms'}", file=sys.stderr)

    def listening(host: str, port: int) -> None:
        print(f"{listening_line(host, port)}/v2/models/{state.model_name}  (metrics: /metrics)", file=sys.stderr,
              flush=True)

    def grpc_listening(host: str, port: int) -> None:
        print(f"{grpc_listening_line(host, port)}  (KServe v2 gRPC: tritonclient.grpc)", file=sys.stderr, flush=True)

    serve(state, on_listening=listening, on_grpc_listening=grpc_listening)
    return 0

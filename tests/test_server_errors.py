"""``sdedge serve`` refusing what it must refuse, surviving faults, and stopping gracefully.

Every bad request gets its 4xx with a ``{"error": ...}`` body (raw ``http.client``/sockets, so the
requests can be as broken as a real client's); a server fault is a 500 and the next request is
answered; a full queue is a 503; time queued is taken off the deadline; slow and oversized bodies
are cut off; SIGTERM lets the request in flight finish and the process exit 0.
"""
from __future__ import annotations

import asyncio
import concurrent.futures as cf
import gzip
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")

from sdedge.runtime.server import (BackgroundServer, ServerConfig, ServerConfigError, SessionOptions,  # noqa: E402
                                   build_app)
from sdedge.runtime.server.worker import DeadlineExceeded, InferencePool, Overloaded, ShuttingDown  # noqa: E402

MAX_BODY_MB = 0.05  # 52 428 bytes


@pytest.fixture(scope="module")
def session(tiny_bundle):
    from sdedge.runtime import AnytimeSession

    s = AnytimeSession(tiny_bundle, backend="onnxruntime", intra_op_threads=1, warmup=1, max_batch=4)
    yield s
    s.close()


class Proxy:
    """A session that fails on an input whose first value is 123, and while ``hold()`` is in force blocks
    each call at its start (the worker is busy) until the test calls ``release()``."""

    def __init__(self, session) -> None:
        self._s = session
        self._gate = threading.Event()
        self._gate.set()

    def __getattr__(self, name):
        return getattr(self._s, name)

    def hold(self) -> None:
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    def infer(self, x, **kw):
        if float(np.asarray(x).ravel()[0]) == 123.0:
            raise RuntimeError("simulated backend fault")
        assert self._gate.wait(60), "the test never released the held session"
        return self._s.infer(x, **kw)


class PoolEvents:
    """The pool's test hook (``InferencePool.observer``): counts ``queued``/``started`` events; ``wait(event, n)``
    blocks until there have been ``n`` of them, so a test knows a request is queued or in the worker's hands."""

    def __init__(self, pool: InferencePool) -> None:
        self._cond = threading.Condition()
        self.counts: Counter = Counter()
        pool.observer = self

    def __call__(self, event: str, job) -> None:
        with self._cond:
            self.counts[event] += 1
            self._cond.notify_all()

    def wait(self, event: str, n: int, timeout: float = 60.0) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: self.counts[event] >= n, timeout), (event, n, dict(self.counts))


class SteppedClock:
    """Real time plus whatever the test adds with ``advance``: sections time as usual, a wait is a jump."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.perf_counter() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


def start(target, **kw) -> BackgroundServer:
    cfg = ServerConfig(port=0, log_level="critical", **kw)
    app = build_app(target, cfg)
    srv = BackgroundServer(app, cfg).start()
    srv.state = app.state.sdedge
    return srv


@pytest.fixture(scope="module", params=[("h11", "asyncio"), ("httptools", "uvloop")], ids=["h11", "httptools"])
def server(session, request):
    # every refusal holds for both HTTP parsers (pure-Python h11, C httptools with sdedge's head cap)
    http, loop = request.param
    for module in (http, loop):
        pytest.importorskip(module)
    srv = start(Proxy(session), session=SessionOptions(max_batch=4), max_body_mb=MAX_BODY_MB, body_timeout_s=0.5,
                header_timeout_s=1.0, timeout_keep_alive=1, http=http, loop=loop)
    yield srv
    srv.stop()


def call(srv, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    try:
        conn.request(method, path, body, headers or {})
        r = conn.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data
    finally:
        conn.close()


def error_of(status_body) -> str:
    doc = json.loads(status_body)
    assert set(doc) == {"error"} and isinstance(doc["error"], str) and doc["error"]
    return doc["error"]


def tensor(session, n=1, value=0.5, raw=False):
    c, h, w = session.input_shape
    if raw:
        return {"name": "image", "datatype": "UINT8", "shape": [n, h, w, c], "data": [7] * (n * h * w * c)}
    return {"name": "image", "datatype": "FP32", "shape": [n, c, h, w], "data": [value] * (n * c * h * w)}


def post_json(srv, doc, path=None, headers=None):
    path = path or f"/v2/models/{srv.state.model_name}/infer"
    body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return call(srv, "POST", path, body, {"Content-Type": "application/json", **(headers or {})})


# -- routing --------------------------------------------------------------------------------------------------
def test_unknown_model_version_route_and_method(server, session):
    name = server.state.model_name
    status, _, body = post_json(server, {"inputs": [tensor(session)]}, "/v2/models/nope/infer")
    assert status == 404 and "unknown model 'nope'" in error_of(body) and name in error_of(body)
    status, _, body = post_json(server, {"inputs": [tensor(session)]}, f"/v2/models/{name}/versions/9/infer")
    assert status == 404 and "unknown version '9'" in error_of(body)
    for path in ("/v2/models/nope", "/v2/models/nope/ready", f"/v2/models/{name}/versions/2"):
        status, _, body = call(server, "GET", path)
        assert status == 404, path
        error_of(body)
    status, _, body = call(server, "GET", "/v3/anything")
    assert status == 404 and "no such endpoint" in error_of(body)
    status, _, body = call(server, "GET", f"/v2/models/{name}/infer")
    assert status == 405
    error_of(body)
    assert post_json(server, {"inputs": [tensor(session)]}, f"/v2/models/{name}/versions/1/infer")[0] == 200


# -- malformed requests ----------------------------------------------------------------------------------------
def _cases(session):
    c, h, w = session.input_shape
    good = tensor(session)
    nan_bin = np.full((1, c, h, w), np.nan, np.float32).tobytes()
    head = json.dumps({"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, c, h, w],
                                   "parameters": {"binary_data_size": len(nan_bin)}}]}).encode()
    return {
        "malformed JSON": (b'{"inputs": [', {}, "malformed JSON"),
        "not an object": (b"[1, 2, 3]", {}, "JSON object"),
        "no inputs": ({"outputs": [{"name": "label"}]}, {}, "inputs"),
        "unknown input": ({"inputs": [dict(good, name="pixels")]}, {}, "unknown input 'pixels'"),
        "datatype": ({"inputs": [dict(good, datatype="FP16")]}, {}, "datatype 'FP16'"),
        "shape": ({"inputs": [dict(good, shape=[1, c, h, w + 1])]}, {}, "shape"),
        "data count": ({"inputs": [dict(good, data=good["data"][:-1])]}, {}, "values"),
        "NaN token": (json.dumps({"inputs": [good]}).replace("0.5", "NaN", 1).encode(), {}, "NaN"),
        "NaN binary": (head + nan_bin, {"Inference-Header-Content-Length": str(len(head))}, "NaN"),
        "overflow to Inf": ({"inputs": [dict(good, data=[1e39] * len(good["data"]))]}, {}, "NaN/Inf"),
        "batch over cap": ({"inputs": [tensor(session, n=5)]}, {}, "max batch (4)"),
        "budget": ({"inputs": [good], "parameters": {"budget_ms": 0}}, {}, "budget_ms"),
        "threshold": ({"inputs": [good], "parameters": {"threshold": -0.1}}, {}, "threshold"),
        "criterion": ({"inputs": [good], "parameters": {"criterion": "luck"}}, {}, "criterion"),
        "calibrated w/o calibration": ({"inputs": [good], "parameters": {"threshold": "calibrated"}}, {}, "calibrat"),
        "header longer than body": (head, {"Inference-Header-Content-Length": str(len(head) + 10)}, "body holds"),
        "binary sizes lie": (head + nan_bin[:-4], {"Inference-Header-Content-Length": str(len(head))}, "bytes"),
        "binary too long": (head + nan_bin + b"xx", {"Inference-Header-Content-Length": str(len(head))}, "add up"),
        "unknown output": ({"inputs": [good], "outputs": [{"name": "logits_1"}]}, {}, "unknown output"),
        "empty body": (b"", {}, "empty request body"),
    }


def test_each_malformed_request_gets_400(server, session):
    for case, (doc, headers, needle) in _cases(session).items():
        status, _, body = post_json(server, doc, headers=headers)
        assert status == 400, (case, body)
        assert needle in error_of(body), (case, body)
    assert post_json(server, {"inputs": [tensor(session, raw=True)]})[0] == 200  # and it still serves


def test_content_type_and_encoding(server, session):
    body = json.dumps({"inputs": [tensor(session)]}).encode()
    path = f"/v2/models/{server.state.model_name}/infer"
    for ctype in ("application/x-www-form-urlencoded", "text/plain", "multipart/form-data; boundary=x"):
        status, _, out = call(server, "POST", path, body, {"Content-Type": ctype})
        assert status == 415 and "Content-Type" in error_of(out)
    status, _, out = call(server, "POST", path, body, {"Content-Type": "application/json", "Content-Encoding": "br"})
    assert status == 415 and "Content-Encoding" in error_of(out)
    status, _, out = call(server, "POST", path, b"not gzip", {"Content-Encoding": "gzip"})
    assert status == 400 and "decompressed" in error_of(out)
    assert call(server, "POST", path, body, {"Content-Type": "application/json; charset=utf-8"})[0] == 200
    assert call(server, "POST", path, body)[0] == 200  # no Content-Type (tritonclient sends none)


# -- size and time limits ---------------------------------------------------------------------------------------
def raw_exchange(srv, head: bytes, parts=(), pause: float = 0.0, timeout: float = 10.0) -> bytes:
    with socket.create_connection(("127.0.0.1", srv.port), timeout=timeout) as s:
        try:
            s.sendall(head)
            for p in parts:
                time.sleep(pause)
                s.sendall(p)
        except (BrokenPipeError, ConnectionResetError):  # the server stopped listening: read what it said
            pass
        chunks = []
        while True:
            try:
                b = s.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not b:
                break
            chunks.append(b)
        return b"".join(chunks)


def status_of(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


def test_oversized_body_refused_on_content_length_before_reading(server):
    path = f"/v2/models/{server.state.model_name}/infer"
    head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {10**9}\r\n\r\n").encode()
    t = time.perf_counter()
    out = raw_exchange(server, head)  # no body sent at all: the answer cannot depend on reading it
    assert status_of(out) == 413 and b"larger than the server's limit" in out
    # no body is ever sent: waiting for one would end in a 408 after body_timeout_s, not a 413; the 5 s
    # bound only says the answer came at once (it takes milliseconds; 5 s leaves room for a loaded CI box)
    assert time.perf_counter() - t < 5


def test_oversized_chunked_body_refused_while_reading(server):
    # no Content-Length: the cap is enforced while the body streams in; the server answers 413 and closes
    path = f"/v2/models/{server.state.model_name}/infer"
    head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Transfer-Encoding: chunked\r\n\r\n").encode()
    chunk = b"2000\r\n" + b" " * 0x2000 + b"\r\n"
    out = raw_exchange(server, head + chunk * 8)  # 64 KiB > 51.2 KiB, sent at once (no final chunk)
    assert status_of(out) == 413 and b"larger than the server's limit" in out
    assert b"connection: close" in out.lower()


def test_decompression_bomb_refused(server, session):
    bomb = gzip.compress(b" " * (4 * 1024 * 1024))  # 4 MiB of spaces in ~4 KiB
    assert len(bomb) < 64 * 1024
    status, _, body = call(server, "POST", f"/v2/models/{server.state.model_name}/infer", bomb,
                           {"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert status == 413 and "decompressed" in error_of(body)


def test_gzip_members_and_bytes_after_the_stream(server, session):
    """Every member of a multi-member gzip body is read (as ``gzip.decompress`` reads them); bytes after the end
    of the last member, or of a deflate stream, are a 400, not silently dropped."""
    import zlib

    body = json.dumps({"inputs": [tensor(session)]}).encode()
    path = f"/v2/models/{server.state.model_name}/infer"
    two = gzip.compress(body[:100]) + gzip.compress(body[100:])
    assert gzip.decompress(two) == body
    assert call(server, "POST", path, two, {"Content-Type": "application/json", "Content-Encoding": "gzip"})[0] == 200
    status, _, out = call(server, "POST", path, gzip.compress(body) + b"GARBAGE", {"Content-Encoding": "gzip"})
    assert status == 400 and "could not be decompressed" in error_of(out)
    status, _, out = call(server, "POST", path, zlib.compress(body) + b"tail", {"Content-Encoding": "deflate"})
    assert status == 400 and "4 bytes after the end of its stream" in error_of(out)


def test_big_numbers_are_numbers(server, session):
    """A budget far away is still a budget (deepest exit, deadline met); an FP32 value written as an integer
    beyond 64 bits is still a number."""
    for budget in (1e13, 1e20, 1e305):
        status, _, out = post_json(server, {"inputs": [tensor(session)], "parameters": {"budget_ms": budget}})
        assert status == 200, out
        assert json.loads(out)["parameters"]["deadline_met"] is True
    doc = {"inputs": [tensor(session)]}
    doc["inputs"][0]["data"][0] = 10 ** 20
    status, _, out = post_json(server, json.dumps(doc).encode())
    assert status == 200, out


def test_a_post_that_offers_an_upgrade_keeps_its_body(server, session):
    """A client offering h2c (``curl --http2`` on http://) or a WebSocket upgrade on an inference POST is answered
    over HTTP/1.1 with its body read: the server ignores Upgrade (with httptools, llhttp would otherwise hand the
    body over as upgraded bytes and the request would arrive empty)."""
    body = json.dumps({"inputs": [tensor(session)]}).encode()
    path = f"/v2/models/{server.state.model_name}/infer"
    for upgrade in (b"h2c", b"websocket"):
        head = (b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Upgrade: " + upgrade + b"\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n")
        out = raw_exchange(server, head + body, timeout=30)
        assert status_of(out) == 200, out[:300]
        assert json.loads(out.partition(b"\r\n\r\n")[2])["outputs"]


def test_the_httptools_protocol_builds_without_a_head_timer():
    pytest.importorskip("httptools")
    from sdedge.runtime.server.http_impl import capped_httptools

    assert capped_httptools(16 * 1024)._head_timer is None  # head_timeout_s None: no timer, no 408 refusal built


def test_a_connection_that_sends_no_head_is_closed(server):
    """uvicorn times only idle connections between requests; with httptools sdedge also closes one that sends
    nothing, or only part of a head, ``header_timeout_s`` (1 s here) after it opened / the head began (408 when
    some came). h11 has no such timer: skipped."""
    if server.config.http != "httptools":
        pytest.skip("the head timer is the httptools protocol's (h11 has none)")
    t = time.perf_counter()
    assert raw_exchange(server, b"", timeout=20) == b""  # nothing sent: closed, nothing said
    partial = raw_exchange(server, b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n", timeout=20)
    assert status_of(partial) == 408 and "request head did not arrive within 1 s" in error_of(
        partial.partition(b"\r\n\r\n")[2])
    assert time.perf_counter() - t < 18  # both closed by the server, not by the 20 s socket timeouts
    assert call(server, "GET", "/v2/health/ready")[0] == 200


def test_slow_body_times_out_with_408(server):
    path = f"/v2/models/{server.state.model_name}/infer"
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    out = raw_exchange(server, head.encode() + b'{"inputs"', timeout=10)
    assert status_of(out) == 408 and b"did not arrive within 0.5 s" in out


def test_huge_headers_refused_and_idle_connections_closed(server):
    # a head that trickles in is buffered up to max_header_kb (16 KiB) only (h11 checks incomplete heads;
    # for httptools sdedge counts the head's bytes and answers 431)
    junk = b"a" * 4096
    out = raw_exchange(server, b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Junk: ", [junk] * 16, pause=0.02)
    assert out == b"" or status_of(out) in (400, 431), out[:200]
    if server.config.http == "httptools":
        assert status_of(out) == 431 and "request head" in error_of(out.partition(b"\r\n\r\n")[2])
    # a head just under the cap, then a body and a second request on the same connection, is served
    ok_head = b"X-Pad: " + b"p" * 12000 + b"\r\n"
    two = (b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n" + ok_head + b"\r\n") * 2
    out = raw_exchange(server, two + b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert out.count(b"HTTP/1.1 200") == 3, out[:300]
    # keep-alive idle: closed after timeout_keep_alive = 1 s. The timer starts once the answer is sent, after
    # t is taken, so the close cannot come before ~1 s (0.5 s is a lower bound with margin); 8 s is the
    # answer plus the timer on a loaded machine, far below the 10 s socket timeout that would mean "never"
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        t = time.perf_counter()
        got = b""
        while True:
            b = s.recv(65536)
            if not b:
                break
            got += b
        assert got.startswith(b"HTTP/1.1 200") and 0.5 < time.perf_counter() - t < 8
    assert call(server, "GET", "/v2/health/ready")[0] == 200


# -- faults, overload, deadlines ---------------------------------------------------------------------------------
def test_server_fault_is_500_and_the_server_keeps_serving(server, session):
    status, _, body = post_json(server, {"inputs": [tensor(session, value=123.0)]})
    assert status == 500 and "internal server error (RuntimeError)" in error_of(body)
    assert post_json(server, {"inputs": [tensor(session)]})[0] == 200
    status, _, text = call(server, "GET", "/metrics")
    assert b'sdedge_requests_total{endpoint="infer",status="500"} 1.0' in text


def test_full_queue_answers_503_with_retry_after(session):
    proxy = Proxy(session)
    srv = start(proxy, max_queue=1)
    events = PoolEvents(srv.state.pool)
    try:
        doc = {"inputs": [tensor(session)]}
        proxy.hold()
        with cf.ThreadPoolExecutor(2) as pool:
            first = pool.submit(post_json, srv, doc)
            events.wait("started", 1)  # the first request is in the worker's hands (held there)
            second = pool.submit(post_json, srv, doc)
            events.wait("queued", 2)  # the second fills the one queue slot
            busy = [post_json(srv, doc) for _ in range(2)]  # answered at once, while the other two wait
            proxy.release()
            served = [first.result(), second.result()]
        assert [g[0] for g in served] == [200, 200] and [g[0] for g in busy] == [503, 503]
        assert all(g[1].get("retry-after") == "1" and "queue is full" in error_of(g[2]) for g in busy)
    finally:
        proxy.release()
        srv.stop()


@pytest.fixture
def stepped_session(tiny_bundle):
    """A session of its own on a :class:`SteppedClock` (the server takes its sessions' clock)."""
    from sdedge.runtime import AnytimeSession

    clock = SteppedClock()
    s = AnytimeSession(tiny_bundle, backend="onnxruntime", intra_op_threads=1, warmup=1, max_batch=4, clock=clock)
    yield s, clock
    s.close()


def test_time_queued_is_taken_off_the_budget(stepped_session):
    session, clock = stepped_session
    proxy = Proxy(session)
    srv = start(proxy, max_queue=16)
    assert srv.state.pool.clock is clock  # arrival, queueing and the session's deadline share one clock
    events = PoolEvents(srv.state.pool)
    try:
        k = session.num_exits
        doc = {"inputs": [tensor(session)], "parameters": {"budget_ms": 600, "late": "answer"}}
        alone = json.loads(post_json(srv, doc)[2])
        assert alone["parameters"]["deadline_met"] is True and alone["parameters"]["exit_index"] == k
        proxy.hold()
        with cf.ThreadPoolExecutor(3) as pool:
            ahead = pool.submit(post_json, srv, {"inputs": [tensor(session)]})
            events.wait("started", 2)  # the worker is busy with the request ahead
            queued = pool.submit(post_json, srv, doc)
            refused = pool.submit(post_json, srv, {"inputs": [tensor(session)], "parameters": {"budget_ms": 600}})
            events.wait("queued", 4)  # both budgeted requests have arrived and wait in the queue...
            clock.advance(0.8)  # ...for 800 ms: more than their whole 600 ms budget
            proxy.release()
            assert ahead.result()[0] == 200
            p = json.loads(queued.result()[2])["parameters"]
            status, _, body = refused.result()
        # asked for the floor answer: it ran, and the queueing was taken off its budget
        assert p["queue_ms"] >= 800 and p["exit_index"] == 1 and p["stopped_by"] == "deadline"
        assert p["deadline_met"] is False and p["latency_ms"] >= 800
        # did not: answered 504 at once and never run
        assert status == 504 and "deadline exceeded" in error_of(body)
        assert events.counts["expired"] == 1 and events.counts["started"] == 3
    finally:
        proxy.release()
        srv.stop()


class _Delayed:
    """An app in front of the sdedge app that waits ``delay_s`` before letting an HTTP request in (the event loop
    busy with other work); ``state`` is the app's, so the server finds its clock."""

    def __init__(self, app, delay_s: float) -> None:
        self.app, self.delay_s, self.state = app, delay_s, app.state

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            await asyncio.sleep(self.delay_s)
        await self.app(scope, receive, send)


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_arrival_is_stamped_as_the_request_is_parsed(session, http):
    """With httptools the HTTP protocol stamps a request's arrival as its first bytes are parsed, so time before
    the app gets to it counts against the budget; with h11 the app's own stamp is the arrival."""
    pytest.importorskip(http)
    cfg = ServerConfig(port=0, log_level="critical", http=http, loop="asyncio")
    app = build_app(session, cfg)
    srv = BackgroundServer(_Delayed(app, 1.0), cfg).start()
    srv.state = app.state.sdedge
    try:
        status, _, body = post_json(srv, {"inputs": [tensor(session)], "parameters": {"budget_ms": 60000}})
        assert status == 200
        latency_ms = json.loads(body)["parameters"]["latency_ms"]
        assert (latency_ms >= 1000.0) if http == "httptools" else (latency_ms < 1000.0)
    finally:
        srv.stop()


def test_a_response_head_goes_out_with_its_body():
    """uvicorn writes a response head and its body apart; the transport sends them in one write, a head with
    no body after it at the end of the loop's turn, and anything else as it comes."""
    from sdedge.runtime.server.http_impl import _CoalescingTransport

    class Sink:
        def __init__(self):
            self.writes, self.closed = [], False

        def write(self, data):
            self.writes.append(bytes(data))

        def is_closing(self):
            return self.closed

        def close(self):
            self.closed = True

        def get_extra_info(self, name):
            return ("127.0.0.1", 1) if name == "peername" else None

    class Loop:
        def __init__(self):
            self.soon = []

        def call_soon(self, fn):
            self.soon.append(fn)

    sink, loop = Sink(), Loop()
    t = _CoalescingTransport(sink, loop)
    head = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"
    t.write(head)
    assert sink.writes == []
    t.write(b"{}")
    assert sink.writes == [head + b"{}"]
    loop.soon.pop()()  # the turn ends: nothing was left to send
    assert sink.writes == [head + b"{}"]
    t.write(b"HTTP/1.1 204 No Content\r\n\r\n")  # no body follows
    loop.soon.pop()()
    assert sink.writes[-1] == b"HTTP/1.1 204 No Content\r\n\r\n"
    t.write(b"HTTP/1.1 431 Too Large\r\ncontent-length: 2\r\n\r\n{}")  # a whole response: straight out
    t.write(b"chunk")
    assert sink.writes[-2:] == [b"HTTP/1.1 431 Too Large\r\ncontent-length: 2\r\n\r\n{}", b"chunk"]
    t.write(head)
    t.close()  # a held head goes out before the close
    assert sink.writes[-1] == head and sink.closed and t.get_extra_info("peername") == ("127.0.0.1", 1)


class Recording(Proxy):
    """A proxy that keeps the deadline of every inference it is asked for."""

    def __init__(self, session) -> None:
        super().__init__(session)
        self.deadlines: list = []

    def infer(self, x, **kw):
        self.deadlines.append(kw.get("deadline"))
        return super().infer(x, **kw)


@pytest.mark.parametrize("margin", [True, False])
def test_the_pool_gets_each_deadline_less_the_reply_margin(session, margin):
    """The answers' way back from the worker to the event loop is taken off each deadline the pool gets (the
    recent p90 lag, at most half the budget); ``deadline_met`` judges the request's own deadline."""
    proxy = Recording(session)
    srv = start(proxy, reply_margin=margin)
    try:
        lag = srv.app.state.server.reply_lag
        clock = srv.state.pool.clock
        for _ in range(64):
            lag.record(0.25, clock())
        for budget_ms, taken in ((60000, 0.25), (200, 0.1)):  # 200 ms: at most half the budget
            before = clock()
            status, _, body = post_json(srv, {"inputs": [tensor(session)], "parameters": {"budget_ms": budget_ms}})
            after = clock()
            assert status == 200
            want = budget_ms * 1e-3 - (taken if margin else 0.0)
            assert before + want <= proxy.deadlines[-1] <= after + want
            if budget_ms == 60000:
                assert json.loads(body)["parameters"]["deadline_met"] is True
    finally:
        srv.stop()


# -- the worker pool alone -----------------------------------------------------------------------------------------
class Blocking:
    def __init__(self):
        self.go = threading.Event()
        self.seen = []

    def infer(self, x, threshold=None, criterion=None, deadline=None):
        self.go.wait(10)
        if x == "fail":
            raise ValueError("bad input")
        if x == "abort":
            raise KeyboardInterrupt("stop")
        self.seen.append((x, deadline))
        return [x]


def test_worker_pool_queue_bound_errors_and_drain():
    async def main():
        s = Blocking()
        pool = InferencePool([s], max_queue=2)
        events = PoolEvents(pool)
        far = pool.clock() + 3600.0  # a deadline that holds: the pool answers expired ones without running them
        running = asyncio.ensure_future(pool.run("a", deadline=far))
        await asyncio.to_thread(events.wait, "started", 1)  # "a" is taken by the worker and blocks
        queued = [asyncio.ensure_future(pool.run(v)) for v in ("b", "fail")]
        await asyncio.to_thread(events.wait, "queued", 3)
        with pytest.raises(Overloaded, match="queue is full"):
            await pool.run("c")
        assert pool.qsize() == 2
        s.go.set()
        a = await running
        assert a.results == ["a"] and a.queue_s >= 0 and a.inference_s > 0
        assert (await queued[0]).results == ["b"]
        with pytest.raises(ValueError, match="bad input"):  # the request's own error, the worker lives on
            await queued[1]
        with pytest.raises(RuntimeError, match="aborted by KeyboardInterrupt"):
            await pool.run("abort")
        assert (await pool.run("d")).results == ["d"] and pool.healthy()
        pending = [asyncio.ensure_future(pool.run(v)) for v in ("e", "f")]
        await asyncio.to_thread(events.wait, "queued", 7)  # a, b, fail, abort, d, then e and f ("c" was refused)
        await asyncio.to_thread(pool.close, 10)  # drains what was queued
        assert [(await p).results for p in pending] == [["e"], ["f"]]
        with pytest.raises(ShuttingDown, match="shutting down"):
            await pool.run("g")
        assert not pool.healthy()
        assert s.seen[0] == ("a", far)

    asyncio.run(main())


async def busy_pool(session, **kw):
    """A one-session pool (``kw``: its settings) whose worker is busy with request "a", held until the test sets
    ``session.go``: (pool, its events, the future of "a")."""
    pool = InferencePool([session], **kw)
    events = PoolEvents(pool)
    running = asyncio.ensure_future(pool.run("a"))
    await asyncio.to_thread(events.wait, "started", 1)
    return pool, events, running


class Costed(Blocking):
    """A session whose first exit, by its own figures, takes 100 s (per-call overhead 1 s)."""

    def section_cost_ms(self, section, rows=1):
        return 1e3 if section == 0 else 1e5 * rows


def test_worker_pool_sheds_a_request_that_cannot_reach_its_first_exit_only_while_others_wait():
    async def main(shed):
        s = Costed()
        pool, events, running = await busy_pool(s, shed_infeasible=shed)
        hopeless = asyncio.ensure_future(pool.run("hopeless", deadline=pool.clock() + 50.0))  # 50 s < 101 s
        far = pool.clock() + 3600.0
        behind = asyncio.ensure_future(pool.run("b", deadline=far))  # after "hopeless" in the queue
        await asyncio.to_thread(events.wait, "queued", 3)
        s.go.set()
        assert (await running).results == ["a"] and (await behind).results == ["b"]
        if shed:
            with pytest.raises(DeadlineExceeded, match=r"less than the first exit needs \(about 101000.000 ms\)"):
                await hopeless
            assert events.counts["expired"] == 1 and s.seen == [("a", None), ("b", far)]
        else:
            assert (await hopeless).results == ["hopeless"] and events.counts["expired"] == 0
        # alone in the queue, the same request runs (the session answers at its floor, late)
        assert (await pool.run("alone", deadline=pool.clock() + 50.0)).results == ["alone"]
        await asyncio.to_thread(pool.close, 10)

    asyncio.run(main(True))
    asyncio.run(main(False))


class Answering(Costed):
    """A costed session (first exit: 101 s by its figures) that answers with results missing the deadline it
    was given, after ``latency_ms`` of the input's name (``"x@5"``: 5 ms)."""

    def infer(self, x, threshold=None, criterion=None, deadline=None):
        name = super().infer(x, threshold, criterion, deadline)[0]
        ms = float(name.split("@")[1]) if "@" in name else 1.0
        return [SimpleNamespace(name=name, latency_ms=ms, deadline_met=None if deadline is None else False)]


def test_a_run_yields_to_the_requests_waiting_behind_it():
    """``yield_to_queue``: a run's deadline is capped at the latest moment that still lets the requests waiting
    behind it reach their first exits by theirs (101 s each, by the session's figures); ``deadline_met`` is
    then judged on the request's own deadline."""
    async def main(yield_to_queue):
        s = Answering()
        pool, events, running = await busy_pool(s, yield_to_queue=yield_to_queue)
        t = pool.clock()
        own, behind, later = t + 3600.0, t + 3650.0, t + 3900.0
        head = asyncio.ensure_future(pool.run("head@5", deadline=own))
        after = [asyncio.ensure_future(pool.run(v, deadline=d)) for v, d in (("b", behind), ("c", later))]
        free = asyncio.ensure_future(pool.run("free"))  # no deadline: it keeps the whole network
        await asyncio.to_thread(events.wait, "queued", 5)
        s.go.set()
        await running
        got = await head
        for f in (*after, free):
            await f
        seen = dict(s.seen)
        if yield_to_queue:
            # "b" needs 101 s from its start: "head" must end by 3650 - 101 s ("c": 3900 - 202 s, later)
            assert seen["head@5"] == behind - 101.0
            assert got.results[0].deadline_met is True  # missed the cap (the session says), met its own deadline
        else:
            assert seen["head@5"] == own and got.results[0].deadline_met is False
        assert seen["free"] is None and seen["c"] == later  # the last one waits for no one
        await asyncio.to_thread(pool.close, 10)

    asyncio.run(main(True))
    asyncio.run(main(False))


class Tracked(Costed):
    """Records a cost figure asked of it while it runs an inference: in the native core that call waits for
    the session's lock, and the queue asks with its own lock held (every other request would wait too)."""

    def __init__(self):
        super().__init__()
        self.busy = False
        self.asked_while_busy = 0

    def infer(self, x, threshold=None, criterion=None, deadline=None):
        self.busy = True
        try:
            return super().infer(x, threshold, criterion, deadline)
        finally:
            self.busy = False

    def section_cost_ms(self, section, rows=1):
        self.asked_while_busy += self.busy
        return super().section_cost_ms(section, rows)


def test_each_worker_sheds_by_its_own_sessions_figures():
    async def main():
        first, second = Tracked(), Tracked()
        pool = InferencePool([first, second])
        events = PoolEvents(pool)
        running = [asyncio.ensure_future(pool.run(v)) for v in ("a1", "a2")]
        await asyncio.to_thread(events.wait, "started", 2)  # both sessions are busy
        far = pool.clock() + 3600.0
        hopeless = asyncio.ensure_future(pool.run("hopeless", deadline=pool.clock() + 50.0))  # 50 s < 101 s
        behind = [asyncio.ensure_future(pool.run(v, deadline=far)) for v in ("b", "c")]
        await asyncio.to_thread(events.wait, "queued", 5)
        second.go.set()  # the second worker goes on and sheds "hopeless" while "first" is still inside "a1"/"a2"
        with pytest.raises(DeadlineExceeded, match="less than the first exit needs"):
            await hopeless
        assert [(await f).results for f in behind] == [["b"], ["c"]]
        first.go.set()
        done = [(await f).results for f in running]
        assert done == [["a1"], ["a2"]]
        assert first.asked_while_busy == second.asked_while_busy == 0
        await asyncio.to_thread(pool.close, 10)

    asyncio.run(main())


# -- configuration, CLI, shutdown ---------------------------------------------------------------------------------
def test_bad_settings_are_refused(session):
    for make, needle in ((lambda: ServerConfig(session=SessionOptions(max_batch=0)), "max_batch"),
                         (lambda: ServerConfig(port=70000), "port"), (lambda: ServerConfig(budget_ms=-5), "budget_ms"),
                         (lambda: ServerConfig(model_name="a/b"), "model name"),
                         (lambda: ServerConfig(max_body_mb=0), "max_body_mb"),
                         (lambda: ServerConfig(threshold=3), "threshold"),
                         (lambda: ServerConfig(session=SessionOptions(intra_op_threads=0)), "intra_op_threads"),
                         (lambda: ServerConfig(session=SessionOptions(warmup=-1)), "warmup"),
                         (lambda: ServerConfig(session={"max_batch": 4}), "SessionOptions"),
                         (lambda: ServerConfig(shed_infeasible="no"), "shed_infeasible"),
                         (lambda: ServerConfig(yield_to_queue=1), "yield_to_queue"),
                         (lambda: ServerConfig(switch_interval_us=-1), "switch_interval_us")):
        with pytest.raises((ServerConfigError, ValueError), match=needle):
            make()
    assert ServerConfig().host == "127.0.0.1"
    from sdedge.common.errors import PolicyError

    with pytest.raises(PolicyError, match="calibrat"):
        build_app(session, ServerConfig(threshold="calibrated"))


def test_sessions_are_opened_with_the_embedded_options():
    opts = SessionOptions(backend="onnxruntime", warmup=0, max_batch=8)
    assert ServerConfig(session=opts).session_options() is opts  # one worker: the backend's own thread default
    assert ServerConfig(session=opts.replace(intra_op_threads=3), workers=2).session_options().intra_op_threads == 3
    split = ServerConfig(session=opts, workers=2).session_options()
    assert split.intra_op_threads == max(1, len(os.sched_getaffinity(0)) // 2)
    assert (split.backend, split.warmup, split.max_batch) == ("onnxruntime", 0, 8)


def test_serve_sets_the_thread_switch_interval_of_its_process(session, monkeypatch):
    """``serve`` (the CLI's process) sets ``switch_interval_us``, so an inference thread back from the device
    gets the GIL from a busy event loop within it; 0 leaves Python's own."""
    import uvicorn

    from sdedge.runtime.server.runner import serve

    ran = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: ran.append(sys.getswitchinterval()))
    before = sys.getswitchinterval()
    try:
        serve(session, ServerConfig(port=0, switch_interval_us=250))
        sys.setswitchinterval(before)
        serve(session, ServerConfig(port=0, switch_interval_us=0))
    finally:
        sys.setswitchinterval(before)
    assert ran == [pytest.approx(250e-6), before]


def test_cli_builds_the_session_options():
    from sdedge.cli import build_parser
    from sdedge.commands.serve import config_from_args

    args = build_parser().parse_args(["serve", "bundle/", "--threads", "2", "--warmup", "0", "--max-batch", "4",
                                      "--answer", "ensemble", "--backend", "onnxruntime", "--budget-ms", "5"])
    cfg = config_from_args(args)
    assert cfg.session == SessionOptions(backend="onnxruntime", intra_op_threads=2, warmup=0, max_batch=4,
                                         answer="ensemble")
    assert cfg.budget_ms == 5.0 and cfg.criterion is None and cfg.shed_infeasible is True
    assert config_from_args(build_parser().parse_args(["serve", "b/", "--no-shed-infeasible"])).shed_infeasible is False
    assert cfg.yield_to_queue is True and cfg.switch_interval_us == 100
    assert config_from_args(build_parser().parse_args(["serve", "b/", "--switch-interval-us", "0"])).switch_interval_us == 0
    assert config_from_args(build_parser().parse_args(["serve", "b/", "--no-yield-to-queue"])).yield_to_queue is False


def test_cli_defaults_and_help():
    from sdedge.cli import build_parser

    args = build_parser().parse_args(["serve", "bundle/"])
    assert (args.host, args.port, args.max_batch, args.max_body_mb, args.workers) == ("127.0.0.1", 8000, 64, 16.0, 1)
    out = subprocess.run([sys.executable, "-m", "sdedge.cli", "serve", "-h"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0
    for flag in ("--budget-ms", "--threshold", "--criterion", "--host", "--port", "--max-batch", "--max-body-mb",
                 "--workers", "--threads", "--backend", "--model-name"):
        assert flag in out.stdout


def test_missing_web_packages_are_named_with_the_extra():
    code = ("import sys; sys.modules['uvicorn'] = None; from sdedge.cli import main; "
            "sys.exit(main(['serve', 'no-such-bundle']))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "uvicorn" in out.stderr and "pip install 'sdedge[serve]'" in out.stderr, out.stderr


def test_the_server_socket_is_tcp_so_answers_are_not_held_by_nagle():
    # asyncio sets TCP_NODELAY only on connections of a socket made with proto IPPROTO_TCP; with proto 0 every
    # small answer waited ~40 ms for the client's delayed ACK
    from sdedge.runtime.server.runner import bind_socket

    with bind_socket("127.0.0.1", 0) as s:
        assert s.proto == socket.IPPROTO_TCP and s.getsockname()[1] > 0
        with socket.create_connection(("127.0.0.1", s.getsockname()[1]), timeout=10):
            conn, _ = s.accept()  # listening already: port 0 bound by the server, read back, no race
            conn.close()


def test_port_in_use_is_a_clear_error(server, tiny_bundle):
    out = subprocess.run([sys.executable, "-m", "sdedge.cli", "serve", str(tiny_bundle), "--port", str(server.port),
                          "--grpc-port", "0", "--warmup", "0", "--threads", "1"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and f"cannot listen on 127.0.0.1:{server.port}" in out.stderr, out.stderr[-2000:]
    # the default gRPC port (8001) taken and --grpc-port not given: HTTP only, said on stderr
    from sdedge.cli import build_parser
    from sdedge.commands.serve import DEFAULT_GRPC, config_from_args, default_grpc_port

    args = build_parser().parse_args(["serve", "bundle/"])
    assert args.grpc_port == DEFAULT_GRPC and config_from_args(args).grpc_port == 8001
    assert default_grpc_port("127.0.0.1", server.port) is None  # taken (by the test server's HTTP socket)
    # an explicit gRPC port in use: the same clear error as for HTTP, before anything listens
    out = subprocess.run([sys.executable, "-m", "sdedge.cli", "serve", str(tiny_bundle), "--port", "0",
                          "--grpc-port", str(server.port), "--warmup", "0", "--threads", "1"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "(the gRPC port" in out.stderr and "listening" not in out.stderr, out.stderr[-2000:]


def _inflight(port: int) -> float:
    text = call(type("S", (), {"port": port}), "GET", "/metrics")[2].decode()
    return next(float(line.split()[1]) for line in text.splitlines() if line.startswith("sdedge_inflight_requests "))


def test_sigterm_lets_the_request_in_flight_finish(tiny_bundle, load_fault):
    # the server binds port 0 itself and prints the port; info-level logs say when shutdown waits on us
    srv = load_fault.ServerProcess(tiny_bundle, ["--threads", "1", "--warmup", "0", "--budget-ms", "1000",
                                                 "--log-level", "info"], model="tiny")
    proc = srv.proc
    try:
        srv.wait_ready(120)
        port = srv.port
        meta = json.loads(call(srv, "GET", "/v2/models/tiny")[2])
        c_, h, w = meta["inputs"][0]["shape"][1:]
        body = json.dumps({"id": "last-one", "inputs": [{"name": "image", "datatype": "FP32", "shape": [1, c_, h, w],
                                                         "data": [0.1] * (c_ * h * w)}]}).encode()
        head = (f"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(head + body[:100])  # head sent, body half sent
            end = time.monotonic() + 60
            while _inflight(port) < 1:  # until the app has the request in hand (its own gauge says so)
                assert time.monotonic() < end, "the request never reached the app"
                time.sleep(0.01)
            proc.send_signal(signal.SIGTERM)
            # uvicorn has stopped listening and asked every connection to close; ours is still open
            assert srv.wait_line("Waiting for connections to close", 60), srv.output[-3000:]
            s.sendall(body[100:])
            raw = b""
            while True:
                b = s.recv(65536)
                if not b:
                    break
                raw += b
        assert status_of(raw) == 200, raw[:500]
        doc = json.loads(raw.split(b"\r\n\r\n", 1)[1])
        assert doc["id"] == "last-one" and doc["parameters"]["exits_run"] >= 1
        assert proc.wait(60) == 0, srv.output[-3000:]
        with pytest.raises(ConnectionRefusedError, match="refused"):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    finally:
        if proc.poll() is None:
            proc.kill()
        srv.stop()


def _post_in_thread(srv, session, out: list) -> threading.Thread:
    def go():
        out.append(post_json(srv, {"inputs": [tensor(session)]}))
    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t


def test_shutdown_turns_grpc_unready_while_http_drains(session):
    """Once shutdown begins, both transports say not ready and gRPC takes no new calls at once, while the HTTP
    request in flight is still answered (uvicorn drains HTTP before the app's own shutdown runs)."""
    grpc_client = pytest.importorskip("tritonclient.grpc")
    proxy = Proxy(session)
    srv = start(proxy, grpc_port=0, session=SessionOptions(max_batch=4), graceful_timeout_s=30)
    events = PoolEvents(srv.state.pool)
    g = grpc_client.InferenceServerClient(srv.grpc_address)
    out: list = []
    try:
        assert g.is_server_ready()
        proxy.hold()
        t = _post_in_thread(srv, session, out)
        events.wait("started", 1)  # the HTTP request is in the worker's hands
        srv._server.should_exit = True  # what SIGTERM does
        end = time.monotonic() + 30
        while True:  # not ready (or refusing) within moments, while the HTTP request is still held
            try:
                if not g.is_server_ready():
                    break
            except Exception:  # noqa: BLE001 - UNAVAILABLE: the endpoint no longer takes calls
                break
            assert time.monotonic() < end, "gRPC still said ready 30 s after shutdown began"
            time.sleep(0.05)
        assert t.is_alive() and not out  # the HTTP request is still in flight
        x = np.zeros((1, *session.input_shape), np.float32)
        inp = grpc_client.InferInput(srv.state.io.input_name, list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        with pytest.raises(Exception):  # noqa: B017 - a new gRPC inference is refused, not queued
            g.infer(srv.state.model_name, [inp], client_timeout=10)
    finally:
        proxy.release()
        g.close()
    t.join(60)
    assert out and out[0][0] == 200  # the request in flight was answered
    srv.stop()


def test_a_request_cut_by_the_graceful_timeout_gets_a_json_503(session):
    """A request still running when the graceful shutdown timeout ends is cancelled by uvicorn: it gets the
    server's 503 ``{"error"}`` (not uvicorn's plain-text 500 and a logged traceback)."""
    proxy = Proxy(session)
    srv = start(proxy, session=SessionOptions(max_batch=4), graceful_timeout_s=1)
    events = PoolEvents(srv.state.pool)
    out: list = []
    proxy.hold()
    t = _post_in_thread(srv, session, out)
    events.wait("started", 1)
    stopper = threading.Thread(target=srv.stop, daemon=True)
    stopper.start()
    t.join(60)
    proxy.release()  # the worker may finish now; the lifespan's end waits for it
    stopper.join(60)
    assert out, "no answer"
    status, headers, body = out[0]
    assert status == 503 and headers["content-type"] == "application/json" and "shutting down" in error_of(body)

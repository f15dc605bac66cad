"""Which HTTP/1.1 parser and event loop uvicorn runs, and a head-size cap for the fast parser.

``http="auto"`` picks uvicorn's ``httptools`` protocol (the C llhttp parser) when the ``httptools``
package is installed, else ``h11`` (pure Python); ``loop="auto"`` picks ``uvloop`` when installed, else
asyncio's. Measured with ``benchmarks/server_overhead.py`` (see its results file), the C parser and
loop take a large share off the server's own CPU per request.

h11 caps an incomplete request head itself (``h11_max_incomplete_event_size``); uvicorn's httptools
protocol has no such cap and llhttp would buffer a header line of any length. :func:`capped_httptools`
returns uvicorn's protocol with one: the bytes received while a request head is incomplete are counted,
and beyond ``max_head_bytes`` the client gets a 431 with a JSON ``{"error"}`` and the connection is
closed, so at most ``max_head_bytes`` plus one read are ever buffered for a head. Nor has it a timer for a
connection that sends nothing, or a head that trickles in (uvicorn's keep-alive timer runs only between
requests): the protocol here closes a connection whose request head is not whole ``head_timeout_s`` after
the connection opened or after the head's first bytes came (with a 408 ``{"error"}`` when some came), so slow
clients cannot hold the ``limit_concurrency`` connections for ever. ``Upgrade`` headers are dropped from request
heads (:func:`_without_upgrade`: llhttp would hand the body of a POST that offers h2c over as upgraded
bytes). It also sends each
response's head and body in one write (:class:`_CoalescingTransport`; uvicorn makes two: two syscalls, two
TCP segments).

The same protocol stamps each request's **arrival** (``scope[ARRIVAL_KEY]``, on the server's clock) when
its first bytes are parsed, which is as early as the server can see it: the app's own stamp (outermost
middleware) comes only once the request's task runs, and under load the event loop has many callbacks to
run first (a request's deadline counts from its arrival, so that wait counts too). With h11 the app's
stamp is the arrival.
"""
from __future__ import annotations

import importlib.util
import re
from typing import Any, Callable

HTTP_IMPLS = ("auto", "h11", "httptools")
ARRIVAL_KEY = "sdedge_arrival"  # the ASGI scope key of a request's arrival time
LOOPS = ("auto", "asyncio", "uvloop")


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def resolve_http(choice: str) -> str:
    """``h11`` or ``httptools`` for ``choice`` (``auto``: httptools when installed)."""
    if choice == "auto":
        return "httptools" if _installed("httptools") else "h11"
    if choice == "httptools" and not _installed("httptools"):
        from ...common.errors import BackendError

        raise BackendError("--http httptools needs the httptools package: pip install httptools "
                           "(or pip install 'sdedge[serve]')")
    return choice


def resolve_loop(choice: str) -> str:
    """``asyncio`` or ``uvloop`` for ``choice`` (``auto``: uvloop when installed)."""
    if choice == "auto":
        return "uvloop" if _installed("uvloop") else "asyncio"
    if choice == "uvloop" and not _installed("uvloop"):
        from ...common.errors import BackendError

        raise BackendError("--loop uvloop needs the uvloop package: pip install uvloop (or pip install 'sdedge[serve]')")
    return choice


def _refusal(status: str, message: str) -> bytes:
    """A whole HTTP/1.1 response refusing the request with ``{"error": message}``, closing the connection."""
    from .protocol import error_body

    body = error_body(message)
    return (b"HTTP/1.1 " + status.encode() + b"\r\ncontent-type: application/json\r\ncontent-length: " +
            str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body)


def capped_httptools(max_head_bytes: int, clock: Callable[[], float] | None = None,
                     head_timeout_s: float | None = None) -> type:
    """uvicorn's httptools protocol, refusing a request head longer than ``max_head_bytes`` with a 431,
    closing a connection whose head is not whole ``head_timeout_s`` after it opened or the head began (None:
    no timer), and (``clock`` given) stamping each request's arrival into its scope as its first bytes are
    parsed."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    refusal = _refusal("431 Request Header Fields Too Large", f"request head (request line and headers) over "
                       f"{max_head_bytes // 1024} KiB; send smaller headers")
    too_slow = None if head_timeout_s is None else _refusal(
        "408 Request Timeout", f"the request head did not arrive within {head_timeout_s:g} s")

    class CappedHttpToolsProtocol(HttpToolsProtocol):
        _in_head = True  # between requests, arriving bytes start a head
        _head_bytes = 0
        _head_timer: Any = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self.transport = _CoalescingTransport(transport, self.loop)  # every cycle of this connection writes here
            self._arm_head_timer()  # a connection that never sends a byte is closed too

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_head_timer()
            super().connection_lost(exc)

        def _arm_head_timer(self) -> None:
            if head_timeout_s is not None and self._head_timer is None:
                self._head_timer = self.loop.call_later(head_timeout_s, self._head_too_slow)

        def _disarm_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_too_slow(self) -> None:
            self._head_timer = None
            transport: Any = self.transport
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete:  # a pipelined head behind an answer in the making
                self._arm_head_timer()
                return
            if self._in_head and not transport.is_closing():
                if self._head_bytes:
                    transport.write(too_slow)
                transport.close()

        def data_received(self, data: bytes) -> None:
            transport: Any = self.transport
            if transport.is_closing():
                return
            if self._in_head:
                self._head_bytes += len(data)
                self._arm_head_timer()  # the head began (or a pipelined one): it must be whole in time
                data = _without_upgrade(data)
            super().data_received(data)
            if self._in_head and self._head_bytes > max_head_bytes and not transport.is_closing():
                transport.write(refusal)
                transport.close()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if clock is not None:
                self.scope[ARRIVAL_KEY] = clock()  # type: ignore[index]

        def on_headers_complete(self) -> None:
            self._in_head = False
            self._disarm_head_timer()
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._in_head, self._head_bytes = True, 0

    return CappedHttpToolsProtocol


_UPGRADE_LINE = re.compile(rb"\r\nupgrade:[^\r\n]*", re.IGNORECASE)


def _without_upgrade(data: bytes) -> bytes:
    """``data`` (bytes of a request head, maybe a body after it) without ``Upgrade`` header lines in the head.

    The server speaks HTTP/1.1 only (no h2c, no WebSocket routes), and RFC 9110 lets a server ignore Upgrade;
    llhttp, seeing one with ``Connection: upgrade``, ends the message at its head and hands the body over as
    the upgraded protocol's bytes, so a POST from a client that offers h2c (``curl --http2`` does) would lose
    its body. A header line split across two reads is not seen (heads come in one read in practice)."""
    end = data.find(b"\r\n\r\n")
    head = data if end < 0 else data[:end]
    if _UPGRADE_LINE.search(head) is None:
        return data
    return _UPGRADE_LINE.sub(b"", head) + (b"" if end < 0 else data[end:])


class _CoalescingTransport:
    """A transport that sends a response head together with the body written right after it: uvicorn writes
    them in two ``transport.write`` calls, two send syscalls and two TCP segments per response. A write that
    is a whole response head (``HTTP/1.1 ... \\r\\n\\r\\n``) is held until the next write, or the end of the
    loop's current turn at the latest (a head with no body after it: HEAD, 204), or a close; everything else
    goes straight through."""

    def __init__(self, transport: Any, loop: Any) -> None:
        self._t = transport
        self._loop = loop
        self._head: bytes | None = None

    def write(self, data: bytes) -> None:
        head = self._head
        if head is not None:
            self._head = None
            self._t.write(head + bytes(data))
        elif data[:5] == b"HTTP/" and data[-4:] == b"\r\n\r\n":
            self._head = bytes(data)
            self._loop.call_soon(self.flush)
        else:
            self._t.write(data)

    def flush(self) -> None:
        head, self._head = self._head, None
        if head is not None and not self._t.is_closing():
            self._t.write(head)

    def close(self) -> None:
        self.flush()
        self._t.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._t, name)

"""Run the app with uvicorn: ``serve()`` in the foreground (the CLI), ``BackgroundServer`` in a thread.

uvicorn settings and why (all from :class:`~sdedge.runtime.server.config.ServerConfig`):

* ``host`` 127.0.0.1 unless told otherwise: nothing outside the machine reaches the model by accident.
* ``http`` / ``loop`` (:mod:`.http_impl`): httptools' C parser and uvloop when installed (the
  ``serve`` extra installs both; they cut the server's own CPU per request), else pure-Python h11 and
  asyncio's loop, which need no compiled extras on a board. Either way a request head is capped at
  ``max_header_kb`` (h11's ``h11_max_incomplete_event_size``; for httptools a 431 from
  :func:`~.http_impl.capped_httptools`), so a client cannot make the server buffer endless headers.
* ``timeout_keep_alive``: an idle keep-alive connection is closed after that many seconds.
  uvicorn has no timer for a connection that sends nothing or a request head that trickles in; with
  httptools :func:`~.http_impl.capped_httptools` adds one (``header_timeout_s``: the whole head must come
  within it of the connection opening or of the head's first bytes); ``limit_concurrency`` (connections and
  tasks, 503 beyond) bounds how many connections can be held meanwhile, and the app itself gives a request
  body ``body_timeout_s`` to arrive (408 after). Exposed beyond a trusted network, put the server
  behind a proxy with header timeouts (Envoy/Istio in KServe, nginx), as with any Python ASGI server.
* Graceful shutdown: on SIGTERM/SIGINT uvicorn stops accepting connections, closes idle ones, and
  waits up to ``graceful_timeout_s`` for requests in flight to be answered; then the app's lifespan
  ends, which lets queued inferences finish, stops the worker threads and closes the sessions.
  ``serve`` then returns normally (exit status 0 from the CLI after SIGTERM).
* ``server_header`` off, access log off by default (``access_log`` turns it on).
* The interpreter's thread switch interval (``sys.setswitchinterval``) is set to ``switch_interval_us``
  (100 us) by :func:`serve`, for the process it runs in: the event loop and the inference threads share one
  GIL, and an inference thread coming back from ONNX Runtime or the native core (which release it) waits
  for the loop to give it up, up to Python's default 5 ms whenever the loop is busy parsing other
  requests: the device then sits idle while answers wait (measured under overload:
  ``benchmarks/serve_bench.py``'s ``*-switch-5ms`` contenders). :class:`BackgroundServer` runs inside a host
  process and leaves its interval alone.
* The listening socket is bound here (:func:`bind_socket`), not by uvicorn, so ``port=0`` works: the OS
  picks a free port and ``serve`` hands the bound one to its ``on_listening`` callback (the CLI prints
  :func:`listening_line`, which :func:`listening_port` reads back), ``BackgroundServer.port`` holds it.
  Nothing picks a free port, releases it and binds it again (another process could take it between).
"""
from __future__ import annotations

import re
import signal
import socket
import sys
import threading
import time
from typing import Any, Callable

from ...common.errors import BackendError
from .app import ServerState, build_app
from .config import ServerConfig


def _require_uvicorn():
    try:
        import uvicorn
    except ImportError:
        raise BackendError("sdedge serve needs uvicorn: pip install 'sdedge[serve]'") from None
    return uvicorn


def uvicorn_config(app: Any, config: ServerConfig) -> Any:
    """The ``uvicorn.Config`` for ``app`` under ``config`` (see the module docstring)."""
    from .http_impl import capped_httptools, resolve_http, resolve_loop

    uvicorn = _require_uvicorn()
    http: Any = resolve_http(config.http)
    if http == "httptools":
        state = getattr(getattr(app, "state", None), "sdedge", None)  # an app build_app made: its pool's clock
        http = capped_httptools(config.max_header_kb * 1024, getattr(getattr(state, "pool", None), "clock", None),
                                config.header_timeout_s)
    return uvicorn.Config(
        app, host=config.host, port=config.port, http=http, loop=resolve_loop(config.loop), lifespan="on",
        timeout_keep_alive=config.timeout_keep_alive,
        timeout_graceful_shutdown=max(1, int(round(config.graceful_timeout_s))),
        limit_concurrency=config.limit_concurrency, h11_max_incomplete_event_size=config.max_header_kb * 1024,
        server_header=False, access_log=config.access_log, log_level=config.log_level, proxy_headers=False)


def uvicorn_server(app: Any, config: ServerConfig) -> Any:
    """A ``uvicorn.Server`` for ``app`` (:func:`uvicorn_config`) that tells the app when shutdown begins,
    before uvicorn drains HTTP for up to the graceful timeout: the app's ``state.server.begin_shutdown()``
    (:class:`~.app.InferenceServer`) turns readiness false and stops gRPC taking new calls at once; uvicorn
    itself calls the app's lifespan shutdown only after the drain."""
    uvicorn = _require_uvicorn()

    class _Server(uvicorn.Server):
        async def shutdown(self, sockets: Any = None) -> None:
            begin = getattr(getattr(getattr(app, "state", None), "server", None), "begin_shutdown", None)
            if begin is not None:
                await begin()
            await super().shutdown(sockets=sockets)

    return _Server(uvicorn_config(app, config))


_LISTENING = "sdedge serve: listening on http://"
_LISTENING_RE = re.compile(re.escape(_LISTENING) + r"(\[[^\]]+\]|[^\s/:]+):(\d+)")


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``(host, port)`` and listening; ``port`` 0: a free port the OS picks.

    Connections made before uvicorn serves wait in the backlog. Read the port back with ``getsockname()[1]``.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on connections whose socket says TCP (with 0,
    # Nagle's algorithm and the client's delayed ACK add ~40 ms to every answer)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen()
    except OSError as e:
        sock.close()
        raise BackendError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return sock


def listening_line(host: str, port: int) -> str:
    """What ``sdedge serve`` prints once its socket listens: ``sdedge serve: listening on http://HOST:PORT``."""
    return f"{_LISTENING}{f'[{host}]' if ':' in host else host}:{port}"


_GRPC_LISTENING = "sdedge serve: gRPC listening on "
_GRPC_LISTENING_RE = re.compile(re.escape(_GRPC_LISTENING) + r"(\[[^\]]+\]|[^\s/:]+):(\d+)")


def grpc_listening_line(host: str, port: int) -> str:
    """What ``sdedge serve`` prints once its gRPC endpoint listens: ``sdedge serve: gRPC listening on HOST:PORT``."""
    return f"{_GRPC_LISTENING}{f'[{host}]' if ':' in host else host}:{port}"


def grpc_listening_port(line: str) -> int | None:
    """The port in a :func:`grpc_listening_line` (None when ``line`` is not one)."""
    m = _GRPC_LISTENING_RE.search(line)
    return int(m.group(2)) if m else None


def listening_port(line: str) -> int | None:
    """The port in a :func:`listening_line` (None when ``line`` is not one): how a parent process reads ``--port 0``."""
    m = _LISTENING_RE.search(line)
    return int(m.group(2)) if m else None


def serve(target: Any, config: ServerConfig | None = None,
          on_listening: Callable[[str, int], None] | None = None,
          on_grpc_listening: Callable[[str, int], None] | None = None) -> None:
    """Serve ``target`` (a bundle path, session(s) or a ``ServerState``) until SIGTERM/SIGINT; blocks.

    ``on_listening(host, port)`` is called once the HTTP socket listens, with the bound port (``port=0``:
    the one the OS picked); ``on_grpc_listening(host, port)`` once the gRPC endpoint does
    (``config.grpc_port`` set).
    """
    if config is None:
        config = target.config if isinstance(target, ServerState) else ServerConfig()
    _require_uvicorn()  # a clear error before seconds of loading sessions
    app = build_app(target, config)
    if config.switch_interval_us:
        sys.setswitchinterval(config.switch_interval_us * 1e-6)
    app.state.server.on_grpc_listening = on_grpc_listening
    server = uvicorn_server(app, config)
    if config.grpc_port:  # a fixed gRPC port in use: the same clear error as for HTTP, before anything starts
        try:
            bind_socket(config.host, config.grpc_port).close()
        except BackendError as e:
            raise BackendError(f"{e} (the gRPC port; --grpc-port 0 turns gRPC off)") from None
    sock = bind_socket(config.host, config.port)
    # uvicorn re-raises the signal that stopped it once it has shut down gracefully; with SIGTERM's
    # default action that would kill the process after all. Swallow that one re-raise instead.
    previous = signal.signal(signal.SIGTERM, lambda *_: None) if threading.current_thread() is threading.main_thread() \
        else None
    try:
        if on_listening is not None:
            on_listening(config.host, sock.getsockname()[1])
        server.run(sockets=[sock])
    finally:
        sock.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


class BackgroundServer:
    """An app served by uvicorn in a daemon thread, on a port picked by the OS when ``port`` is 0.

    ::

        with BackgroundServer(build_app("bundle/"), ServerConfig(port=0)) as srv:
            client = tritonclient.http.InferenceServerClient(srv.address)
    """

    def __init__(self, app: Any, config: ServerConfig | None = None) -> None:
        self.app = app
        self.config = config or ServerConfig(port=0)
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self.port: int | None = None

    @property
    def address(self) -> str:
        """``host:port`` (what ``tritonclient.http`` takes as its url)."""
        return f"{self.config.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @property
    def grpc_port(self) -> int | None:
        """The gRPC endpoint's bound port (None: no gRPC, ``ServerConfig.grpc_port`` unset)."""
        server = getattr(getattr(self.app, "state", None), "server", None)
        return getattr(server, "grpc_port", None)

    @property
    def grpc_address(self) -> str | None:
        """``host:port`` of the gRPC endpoint (what ``tritonclient.grpc`` takes as its url), or None."""
        return None if self.grpc_port is None else f"{self.config.host}:{self.grpc_port}"

    def start(self, timeout: float = 30.0) -> "BackgroundServer":
        sock = bind_socket(self.config.host, self.config.port)
        self.port = sock.getsockname()[1]
        self._sock = sock
        self._server = uvicorn_server(self.app, self.config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, name="sdedge-uvicorn",
                                        daemon=True)
        self._thread.start()
        end = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > end:
                self.stop()
                raise BackendError(f"the server did not start on {self.address} within {timeout:g} s")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Graceful stop: requests in flight are answered, then the lifespan shutdown closes the workers."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        if self._sock is not None:
            self._sock.close()

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

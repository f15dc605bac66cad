"""``InferenceServer``: the KServe v2 HTTP app (Starlette, ASGI) around one or more ``AnytimeSession``.

::

    from sdedge.runtime.server import InferenceServer, ServerConfig, build_app
    app = build_app("bundle/", ServerConfig(budget_ms=5))      # any ASGI server runs it; or mount it
    # uvicorn.run(app, host="127.0.0.1", port=8000)  -- or sdedge.runtime.server.serve("bundle/", config)
    server = InferenceServer("bundle/", ServerConfig(budget_ms=5))   # the same: server.app is the app, and
    # each endpoint is a method by name: server.post_infer, server.get_model_config, server.get_ready, ...

The server's state (sessions, worker pool, metrics, model name and I/O) is a :class:`ServerState`
(:func:`build_state` makes one without any web package); :class:`InferenceServer` holds it and answers
each endpoint with one of its methods; ``build_app`` is ``InferenceServer(target, config).app``.

Endpoints (``{name}`` is the model name: ``--model-name``, else the manifest's ``model.name``; each
``/v2/models/{name}/...`` also answers as ``/v2/models/{name}/versions/{version}/...``):

==================================== ======================================================================
``GET  /v2``                         server metadata (name, version, extensions)
``GET  /v2/health/live``             200 while the process serves
``GET  /v2/health/ready``            200 when the sessions are loaded and the server is not stopping, else 503
``GET  /v2/models/{name}``           model metadata: inputs, outputs, datatypes, shapes
``GET  /v2/models/{name}/ready``     200 when the model can answer
``GET  /v2/models/{name}/config``    sdedge details: accepted input forms, classes, exits, preprocess, defaults
``POST /v2/models/{name}/infer``     inference (JSON or binary tensors, see :mod:`.protocol`)
``GET  /metrics``                    Prometheus metrics (see :mod:`.metrics`)
==================================== ======================================================================

Deadlines: the request's arrival time is taken by the outermost app middleware, before routing and
before the body is read, on the sessions' clock (``InferencePool.clock``: the clock the session reads
deadlines on); ``deadline = arrival + budget`` goes to the session, so reading the body,
parsing and waiting for a worker all count against the budget (with httptools the HTTP protocol takes
the stamp earlier still, as the request's first bytes are parsed: :mod:`.http_impl`). ``deadline_met``
says whether the *answer was ready* by the deadline: back on the transport's event loop, ready to encode
(encoding and sending the response come after). The way back from the inference worker to the loop takes
time under load, outside the session's view, so the pool gets ``deadline`` less a **reply margin** (the
p90 of the latest answers' lags, none older than 2 s, at most half the budget: :mod:`.reply_lag`; ``reply_margin=False``: none).

Response ``parameters``: ``latency_ms`` (arrival to answer ready), ``queue_ms`` (waiting for a worker),
``inference_ms`` (inside the session), ``exits_run`` (deepest exit run in the request), and for a
single image ``exit_index`` and ``stopped_by`` (``confidence``, ``deadline`` or ``last``); with a
budget also ``budget_ms`` and ``deadline_met``. The per-image exits are the ``exit_index`` output.

Errors are ``{"error": "<message>"}`` with: 400 malformed request (bad JSON, wrong datatype/shape/input
name, NaN/Inf, bad parameter, a lying binary header, batch above the cap), 404 unknown model, version
or route, 405 wrong method, 408 body not received within ``body_timeout_s``, 413 body above
``max_body_mb`` (refused on ``Content-Length`` before reading, or while reading), 415 unsupported
``Content-Type``/``Content-Encoding``, 503 queue full or shutting down, 500 only for a fault of the
server itself (logged with its traceback; the server keeps serving).
"""
from __future__ import annotations

import asyncio
import importlib.metadata
import json
import logging
import zlib
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable

from ...common.errors import BackendError, InputError, PolicyError
from .config import ServerConfig, ServerConfigError, check_model_name
from .http_impl import ARRIVAL_KEY
from .metrics import ServerMetrics
from .protocol import (InferRequest, ModelIO, ProtocolError, encode_infer_response, error_body, model_config,
                       model_metadata, parse_infer_request, repository_index, server_metadata)
from .reply_lag import ReplyLag
from .stats import ModelStats
from .worker import DeadlineExceeded, InferencePool, Outcome, Overloaded, ShuttingDown

if TYPE_CHECKING:  # the web packages are the serve extra: imported only when an app is built
    from starlette.requests import Request
    from starlette.responses import Response

log = logging.getLogger("sdedge.server")
_ENDPOINT = "sdedge_endpoint"
_BODY_DONE = "sdedge_body_done"
_INLINE_PARSE_BYTES = 1 << 20  # bodies above 1 MiB are parsed off the event loop
_CONTENT_TYPES = ("application/json", "application/octet-stream")

__all__ = ["InferenceServer", "ServerConfig", "ServerState", "build_app", "build_state", "package_version",
           "require_web"]


def require_web() -> None:
    """Fail early, with the extra to install, when the web packages are missing."""
    missing = []
    for mod in ("starlette", "uvicorn", "prometheus_client"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise BackendError(f"sdedge serve needs {', '.join(missing)} (the serve extra: starlette via fastapi, uvicorn, "
                           f"prometheus-client): pip install 'sdedge[serve]'")


def package_version() -> str:
    """The installed sdedge distribution's version (``0+unknown`` for a source tree that is not installed)."""
    try:
        return importlib.metadata.version("sdedge")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


@dataclass
class ServerState:
    """Everything one app serves with (``app.state.sdedge``)."""

    config: ServerConfig
    sessions: list
    pool: InferencePool
    metrics: ServerMetrics
    io: ModelIO
    model_name: str
    model_version: str
    owns_sessions: bool
    stats: ModelStats | None = None
    ready: bool = True
    extra: dict = field(default_factory=dict)

    @property
    def session(self) -> Any:
        return self.sessions[0]

    def close(self, timeout: float | None = 30.0) -> None:
        """Finish queued requests, stop the workers, close the sessions this app opened."""
        self.ready = False
        stopped = self.pool.close(timeout)
        if not stopped:
            log.warning("an inference was still running after %s s; leaving its session open", timeout)
        elif self.owns_sessions:
            for s in self.sessions:
                s.close()


def _open_sessions(target: Any, config: ServerConfig) -> tuple[list, bool]:
    if isinstance(target, (str, Path)) or hasattr(target, "__fspath__"):
        from ..session import AnytimeSession

        options = config.session_options()
        sessions: list = []
        try:
            for _ in range(config.workers):
                sessions.append(AnytimeSession(target, options))
        except BaseException:
            for s in sessions:
                s.close()
            raise
        return sessions, True
    if isinstance(target, (list, tuple)):
        if not target:
            raise ServerConfigError("build_app needs a bundle path, a session or a non-empty list of sessions")
        return list(target), False
    if hasattr(target, "infer") and hasattr(target, "manifest"):
        return [target], False
    raise ServerConfigError(f"build_app needs a bundle path or an AnytimeSession, got {type(target).__name__}")


def build_state(target: Any, config: ServerConfig | None = None) -> ServerState:
    """Open (or adopt) the sessions and make the pool and metrics; no web framework needed."""
    config = config or ServerConfig()
    sessions, owns = _open_sessions(target, config)
    try:
        s0 = sessions[0]
        for s in sessions[1:]:
            if s.manifest.raw != s0.manifest.raw:
                raise ServerConfigError("all sessions of one server must serve the same bundle")
        name = config.model_name or s0.manifest.model.get("name") or Path(str(s0.bundle.path)).name
        check_model_name(name)
        s0.policy(config.threshold, config.criterion)  # a bad default (e.g. "calibrated" w/o calibration) fails now
        io = ModelIO(input_name=s0.manifest.input.name, chw=tuple(s0.input_shape), classes=tuple(s0.classes),
                     max_batch=min([config.session.max_batch] + [int(s.max_batch) for s in sessions]))
        pool = InferencePool(sessions, config.max_queue, batching=config.batching, max_batch=io.max_batch,
                             max_delay_s=config.max_queue_delay_us * 1e-6,
                             no_deadline_wait_s=config.no_deadline_wait_ms * 1e-3, queue_order=config.queue_order,
                             shed_infeasible=config.shed_infeasible, yield_to_queue=config.yield_to_queue)
        metrics = ServerMetrics(s0.num_exits, queue_depth=pool.qsize, model_info=dict(s0.backend_info, model=name))
        stats = ModelStats(name, config.model_version)

        def on_run(rows: int, seconds: float) -> None:
            stats.execution(rows, seconds)
            metrics.batch_rows.observe(rows)

        pool.on_run = on_run
    except BaseException:
        if owns:
            for s in sessions:
                s.close()
        raise
    return ServerState(config, sessions, pool, metrics, io, name, config.model_version, owns, stats)


def build_app(target: Any, config: ServerConfig | None = None) -> Any:
    """A Starlette (ASGI) app serving ``target``: a bundle path (opens ``config.workers`` sessions), an
    ``AnytimeSession``, a list of sessions of the same bundle (one worker thread each), or a
    :class:`ServerState` from :func:`build_state` (its own config then applies)."""
    return InferenceServer(target, config).app


def _response(body: bytes | str, status: int = 200, media_type: str | None = "application/json",
              headers: dict | None = None) -> "Response":
    from starlette.responses import Response

    return Response(body, status_code=status, media_type=media_type, headers=headers)


def _error(status: int, message: str, headers: dict | None = None) -> "Response":
    """The error answer: ``{"error": message}`` with ``status``."""
    return _response(error_body(message), status, headers=headers)


def _error_answer(status: int, message: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
    """The error answer as ``(status, body, headers)`` (:meth:`InferenceServer.answer_infer`'s form)."""
    return status, error_body(message), {"content-type": "application/json", **(headers or {})}


_WANTED_HEADERS = frozenset((b"content-type", b"content-encoding", b"content-length", b"inference-header-content-length"))


def _request_headers(scope: dict) -> dict[str, str]:
    """The request headers the inference path reads, by lower-case name (ASGI gives names in lower case); of
    a repeated header the first, as Starlette's ``Headers.get``."""
    out: dict[str, str] = {}
    for k, v in scope["headers"]:
        if k in _WANTED_HEADERS:
            out.setdefault(k.decode("latin-1"), v.decode("latin-1"))
    return out


async def _send_answer(send: Callable, status: int, body: bytes, headers: dict[str, str]) -> None:
    """Send ``(status, body, headers)`` on the raw ASGI ``send``: the response head (with Content-Length) and
    the body, as Starlette's ``Response`` would."""
    raw = [(b"content-length", str(len(body)).encode())]
    raw += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def _ok(doc: Any, status: int = 200) -> "Response":
    return _response(json.dumps(doc).encode(), status)


def _mark(request: "Request", endpoint: str) -> None:
    """Name the endpoint for the request counter (``sdedge_requests_total{endpoint=...}``)."""
    request.scope[_ENDPOINT] = endpoint


class InferenceServer:
    """The KServe v2 endpoints over one :class:`ServerState`, one method each; :attr:`app` routes to them.

    ``target`` is what :func:`build_app` takes (a bundle path, session(s), or a ready ``ServerState``,
    whose own config then applies). Building one needs the web packages (the ``serve`` extra).
    """

    def __init__(self, target: Any, config: ServerConfig | None = None) -> None:
        require_web()  # before spending seconds on loading and warming up sessions
        wanted = target.config if isinstance(target, ServerState) else config
        if wanted is not None and wanted.grpc_port is not None:
            from .grpc_service import require_grpc

            require_grpc()
        self.state: ServerState = target if isinstance(target, ServerState) else build_state(target, config)
        self.version = package_version()
        self.grpc: Any = None  # the GrpcService while it runs (config.grpc_port set)
        self.grpc_port: int | None = None  # its bound port
        self.on_grpc_listening: Callable[[str, int], None] | None = None  # called with (host, port) once it listens
        self.stopping = False  # shutdown has begun (begin_shutdown): not ready, gRPC takes no new calls
        self._grpc_stop: Any = None  # the task stopping gRPC, from begin_shutdown
        self.reply_lag = ReplyLag()  # answers' way back from the workers: the reply margin (config.reply_margin)
        self.app: Any = self._build_app()

    @property
    def config(self) -> ServerConfig:
        return self.state.config

    @property
    def metrics(self) -> ServerMetrics:
        return self.state.metrics

    @property
    def io(self) -> ModelIO:
        return self.state.io

    # -- the app ---------------------------------------------------------------------------------------------
    def routes(self) -> list:
        """Every endpoint's route, each model route also under ``/versions/{version}``."""
        from starlette.routing import Route

        routes = [
            Route("/v2", self.get_server_metadata, methods=["GET"]),
            Route("/v2/health/live", self.get_live, methods=["GET"]),
            Route("/v2/health/ready", self.get_ready, methods=["GET"]),
            Route("/metrics", self.get_metrics, methods=["GET"]),
            Route("/v2/repository/index", self.post_repository_index, methods=["POST"]),
            Route("/v2/models/stats", self.get_model_stats, methods=["GET"]),
        ]
        for base in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
            routes += [
                Route(base, self.get_model_metadata, methods=["GET"]),
                Route(base + "/ready", self.get_model_ready, methods=["GET"]),
                Route(base + "/config", self.get_model_config, methods=["GET"]),
                Route(base + "/stats", self.get_model_stats, methods=["GET"]),
                Route(base + "/infer", self.post_infer, methods=["POST"]),
            ]
        return routes

    def fast_routes(self) -> dict[str, tuple[Callable, dict]]:
        """The served model's inference paths (with and without its version), for the router bypass."""
        name, version = self.state.model_name, self.state.model_version
        return {f"/v2/models/{name}/infer": (self.answer_infer, {"name": name}),
                f"/v2/models/{name}/versions/{version}/infer": (self.answer_infer, {"name": name, "version": version})}

    def _build_app(self) -> Any:
        from starlette.applications import Starlette
        from starlette.exceptions import HTTPException
        from starlette.middleware import Middleware

        app = Starlette(routes=self.routes(), lifespan=self.lifespan,
                        middleware=[Middleware(_ArrivalAndStatus, metrics=self.metrics, clock=self.state.pool.clock,
                                               fast=self.fast_routes())],
                        exception_handlers={HTTPException: self.on_http_error, Exception: self.on_server_fault})
        app.state.sdedge = self.state
        app.state.server = self
        return app

    @asynccontextmanager
    async def lifespan(self, app: Any) -> AsyncIterator[None]:
        """Start the inference workers and the gRPC endpoint (``config.grpc_port``); on shutdown stop gRPC
        (calls in flight get the graceful timeout), let queued inferences finish and close the sessions."""
        self.state.pool.start()
        cfg = self.config
        if cfg.grpc_port is not None:
            from .grpc_service import GrpcService

            self.grpc = GrpcService(self)
            self.grpc_port = await self.grpc.start(cfg.host, cfg.grpc_port)
            log.info("gRPC (KServe v2) listening on %s:%d", cfg.host, self.grpc_port)
            if self.on_grpc_listening is not None:
                self.on_grpc_listening(cfg.host, self.grpc_port)
        try:
            yield
        finally:
            await self.begin_shutdown()  # when the ASGI server did not say so first
            if self._grpc_stop is not None:
                await self._grpc_stop
            await asyncio.to_thread(self.state.close, cfg.graceful_timeout_s)

    async def begin_shutdown(self) -> None:
        """Shutdown begins (the runner calls this before uvicorn drains HTTP; the lifespan's end otherwise):
        readiness turns false on both transports at once and gRPC takes no new calls (those in flight get the
        graceful timeout), while HTTP requests in flight are being answered. Idempotent."""
        if self.stopping:
            return
        self.stopping = True
        if self.grpc is not None:
            self._grpc_stop = asyncio.ensure_future(self.grpc.stop(self.config.graceful_timeout_s))

    # -- metadata and health -------------------------------------------------------------------------------
    def unknown_model(self, name: str, version: str | None) -> str | None:
        """Why this server does not serve model ``name`` (version ``version``; None or "": any), or None."""
        state = self.state
        if name != state.model_name:
            return f"unknown model {name!r}; this server serves {state.model_name!r}"
        if version and version != state.model_version:
            return f"unknown version {version!r} of model {name!r}; available: {state.model_version!r}"
        return None

    def model_error(self, request: "Request") -> "Response | None":
        """The 404 for a model name or version this server does not serve (None when it does)."""
        why = self.unknown_model(request.path_params["name"], request.path_params.get("version"))
        return None if why is None else _error(404, why)

    async def get_server_metadata(self, request: "Request") -> "Response":
        _mark(request, "server_metadata")
        return _ok(server_metadata(self.version))

    async def get_live(self, request: "Request") -> "Response":
        _mark(request, "health")
        pool = self.state.pool
        live = pool.healthy() or pool.closed  # a dead inference thread: let the orchestrator restart us
        return _ok({"live": live}, 200 if live else 503)

    def is_ready(self) -> bool:
        return self.state.ready and not self.stopping and self.state.pool.healthy()

    async def get_ready(self, request: "Request") -> "Response":
        _mark(request, "health")
        ready = self.is_ready()
        return _ok({"ready": ready}, 200 if ready else 503)

    async def get_model_metadata(self, request: "Request") -> "Response":
        _mark(request, "model_metadata")
        err = self.model_error(request)
        if err:
            return err
        state = self.state
        return _ok(model_metadata(self.io, state.model_name, [state.model_version], self.model_parameters()))

    async def get_model_ready(self, request: "Request") -> "Response":
        _mark(request, "model_ready")
        ready = self.is_ready()
        return self.model_error(request) or _ok({"name": self.state.model_name, "ready": ready}, 200 if ready else 503)

    def model_parameters(self) -> dict[str, str]:
        """What runs the model and how it answers (model metadata ``parameters``, the config's ``parameters``)."""
        return dict(self.state.session.backend_info)

    def config_document(self) -> dict:
        """The model configuration in Triton's model-config shape (``GET .../config``, gRPC ``ModelConfig``)."""
        state, cfg = self.state, self.config
        s = state.session
        m = s.manifest
        details = {
            "classes": list(self.io.classes), "num_exits": s.num_exits, "exits": m.exits,
            "preprocess": m.preprocess.to_json(), "model": {k: m.model.get(k) for k in ("name", "backbone", "method")},
            "defaults": {"budget_ms": cfg.budget_ms, "threshold": cfg.threshold, "criterion": cfg.criterion},
            "workers": len(state.sessions), "calibrated": s.calibration is not None,
            "latency_profile": s.profile is not None, "max_body_bytes": cfg.max_body_bytes, "max_queue": cfg.max_queue,
            "accepted_inputs": self.io.accepted_inputs(),
        }
        params = dict(self.model_parameters(), sdedge=json.dumps(details, separators=(",", ":")))
        return model_config(self.io, state.model_name, state.model_version, params, cfg.batching,
                            cfg.max_queue_delay_us)

    async def get_model_config(self, request: "Request") -> "Response":
        _mark(request, "model_config")
        return self.model_error(request) or _ok(self.config_document())

    async def get_model_stats(self, request: "Request") -> "Response":
        """Triton's statistics extension (``tritonclient``'s ``get_inference_statistics``)."""
        _mark(request, "model_stats")
        if "name" in request.path_params:
            err = self.model_error(request)
            if err:
                return err
        return _ok(self.state.stats.triton_json())

    async def post_repository_index(self, request: "Request") -> "Response":
        """The model repository extension's index: the one model served, READY or UNAVAILABLE."""
        _mark(request, "repository")
        return _ok(repository_index(self.state.model_name, self.state.model_version, self.is_ready()))

    async def get_metrics(self, request: "Request") -> "Response":
        _mark(request, "metrics")
        text, ctype = self.metrics.render()
        return _response(text, media_type=None, headers={"Content-Type": ctype})

    # -- inference -----------------------------------------------------------------------------------------------
    async def post_infer(self, request: "Request") -> "Response":
        """``POST .../infer`` through the router: :meth:`answer_infer`'s answer as a Starlette response."""
        status, body, headers = await self.answer_infer(request.scope, request.receive, request.path_params)
        return _response(body, status, media_type=None, headers=headers)

    async def answer_infer(self, scope: dict, receive: Callable, path_params: dict) -> tuple[int, bytes, dict[str, str]]:
        """One ``POST .../infer`` on the raw ASGI ``scope`` and ``receive``: ``(status, body, headers)``, the
        answer or the error's status and ``{"error"}`` message (see the module docstring); ``headers`` (lower
        case) include the content type. The one inference path of HTTP: the router's :meth:`post_infer` and
        the served model's exact paths (:class:`_ArrivalAndStatus`, no Starlette request or response) both
        answer with it."""
        scope[_ENDPOINT] = "infer"
        t0 = scope.get(ARRIVAL_KEY) or self.state.pool.clock()
        why = self.unknown_model(path_params["name"], path_params.get("version"))
        if why is not None:
            return _error_answer(404, why)
        inflight = self.metrics.inflight
        inflight.inc()
        try:
            return await self.infer(scope, receive, t0)
        except ProtocolError as ex:
            # refused before the whole body was read: close the connection rather than keep reading it
            return _error_answer(ex.status, str(ex), None if scope.get(_BODY_DONE) else {"connection": "close"})
        except (InputError, PolicyError) as ex:  # the session's own checks (e.g. NaN/Inf, "calibrated" w/o calibration)
            return _error_answer(400, str(ex))
        except (Overloaded, ShuttingDown) as ex:
            return _error_answer(503, str(ex), {"retry-after": "1"})
        except DeadlineExceeded as ex:
            return _error_answer(504, str(ex))
        finally:
            inflight.dec()

    async def infer(self, scope: dict, receive: Callable, t0: float) -> tuple[int, bytes, dict[str, str]]:
        """Read and parse the request, run it on the pool under its deadline (``t0`` + budget), encode the answer."""
        io, state = self.io, self.state
        headers = _request_headers(scope)
        body = await self.read_body(headers, receive, scope)
        hl = headers.get("inference-header-content-length")
        if len(body) > _INLINE_PARSE_BYTES:
            req = await asyncio.to_thread(parse_infer_request, body, hl, io)
        else:
            req = parse_infer_request(body, hl, io)
        results, params = await self.run_request(req, t0)
        payload, head_len = encode_infer_response(state.model_name, state.model_version, req.id, results, req.outputs,
                                                  io.classes, params)
        if head_len is None:
            return 200, payload, {"content-type": "application/json"}
        return 200, payload, {"content-type": "application/octet-stream", "inference-header-content-length": str(head_len)}

    async def run_request(self, req: InferRequest, t0: float) -> tuple[list, dict[str, Any]]:
        """Run a parsed request (either transport) under its deadline, ``t0`` (its arrival) + budget: its
        results and response parameters; counts it in the metrics and statistics. Raises
        :class:`DeadlineExceeded` when its deadline passed in the queue (not run), :class:`Overloaded` /
        :class:`ShuttingDown` when it cannot be queued, the session's errors for a bad input."""
        cfg, state = self.config, self.state
        budget = req.budget_ms if req.budget_ms is not None else cfg.budget_ms
        deadline = None if budget is None else t0 + budget * 1e-3
        run_by = deadline  # the deadline the pool gets: less the reply margin (the answer's way back to us)
        if deadline is not None and cfg.reply_margin:
            run_by = deadline - self.reply_lag.margin_s(budget * 1e-3, t0)
        threshold = req.threshold if req.threshold is not None else cfg.threshold
        criterion = req.criterion if req.criterion is not None else cfg.criterion
        try:
            out: Outcome = await state.pool.run(req.array, deadline=run_by, threshold=threshold, criterion=criterion,
                                                t_arrival=t0, late=req.late)
        except Exception as e:  # counted as a failure, answered by the transport
            if isinstance(e, DeadlineExceeded):
                self.metrics.deadline_expired.inc()
            if state.stats is not None:
                state.stats.failure(state.pool.clock() - t0)
            raise
        t_ready = state.pool.clock()  # back on the transport's loop: the answer is ready to encode
        self.reply_lag.record(t_ready - out.t_done, t_ready)
        results = out.results
        latency_s = t_ready - t0
        exits = [r.exit_index for r in results]
        params: dict[str, Any] = {"latency_ms": round(latency_s * 1e3, 4), "queue_ms": round(out.queue_s * 1e3, 4),
                                  "inference_ms": round(out.inference_s * 1e3, 4), "exits_run": max(exits),
                                  "batch_rows": out.batch_rows}
        if len(results) == 1:
            params["exit_index"] = exits[0]
            params["stopped_by"] = results[0].stopped_by
        met = None
        if deadline is not None:
            met = t_ready <= deadline
            params["budget_ms"] = budget
            params["deadline_met"] = bool(met)
        self.metrics.observe_inference(exits, latency_s, out.queue_s, out.inference_s, met)
        if state.stats is not None:
            state.stats.success(len(results), latency_s, out.queue_s, out.inference_s)
        return results, params

    async def read_body(self, headers: dict[str, str], receive: Callable, scope: dict) -> bytes:
        """The request body (``receive``: the ASGI channel), decompressed, within the size cap and the body
        timeout (else a ProtocolError); ``headers``: :func:`_request_headers`. Marks ``scope`` once read."""
        cfg = self.config
        ctype = headers.get("content-type")
        if ctype is not None and ctype.split(";")[0].strip().lower() not in _CONTENT_TYPES:
            raise ProtocolError(f"unsupported Content-Type {ctype!r}; send application/json (or "
                                f"application/octet-stream with the Inference-Header-Content-Length header)", 415)
        enc = headers.get("content-encoding", "identity").strip().lower()
        if enc not in ("identity", "gzip", "deflate"):
            raise ProtocolError(f"unsupported Content-Encoding {enc!r}; expected identity, gzip or deflate", 415)
        cap = cfg.max_body_bytes
        cl = headers.get("content-length")
        if cl is not None:
            try:
                declared = int(cl)
            except ValueError:
                raise ProtocolError(f"Content-Length must be an integer, got {cl!r}") from None
            if declared > cap:
                raise ProtocolError(f"request body of {declared} bytes is larger than the server's limit of {cap} bytes "
                                    f"(--max-body-mb {cfg.max_body_mb:g})", 413)
        chunks: list[bytes] = []
        total = 0

        async def pull() -> None:
            nonlocal total
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":  # a truncated body: a client error, not a server fault
                    raise ProtocolError(f"the client closed the connection before the whole body arrived ({total} "
                                        f"bytes received)")
                chunk = message.get("body", b"")
                total += len(chunk)
                if total > cap:
                    raise ProtocolError(f"request body is larger than the server's limit of {cap} bytes "
                                        f"(--max-body-mb {cfg.max_body_mb:g})", 413)
                if chunk:
                    chunks.append(chunk)
                if not message.get("more_body", False):
                    return

        try:
            if hasattr(asyncio, "timeout"):  # Python >= 3.11: no task per request
                async with asyncio.timeout(cfg.body_timeout_s):
                    await pull()
            else:
                await asyncio.wait_for(pull(), cfg.body_timeout_s)
        except asyncio.TimeoutError:
            raise ProtocolError(f"the request body did not arrive within {cfg.body_timeout_s:g} s "
                                f"({total} bytes received)", 408) from None
        scope[_BODY_DONE] = True
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if enc != "identity":
            body = _decompress(body, enc, cap)
        if not body:
            raise ProtocolError("empty request body; expected a JSON inference request")
        return body

    # -- errors ----------------------------------------------------------------------------------------------------
    async def on_http_error(self, request: "Request", exc: Exception) -> "Response":
        """Starlette's own HTTP errors (404 no such route, 405 wrong method) in the server's error format."""
        status = getattr(exc, "status_code", 500)
        msg = getattr(exc, "detail", "") if status != 404 else f"no such endpoint: {request.method} {request.url.path}"
        return _error(status, str(msg), getattr(exc, "headers", None))

    async def on_server_fault(self, request: "Request", exc: Exception) -> "Response":
        # Starlette re-raises the exception after this answer, so the ASGI server logs its traceback
        return _error(500, f"internal server error ({type(exc).__name__}); see the server log")


class _ArrivalAndStatus:
    """Pure ASGI middleware: stamps the arrival time first thing, counts every answer by endpoint and status.

    ``fast`` maps the exact paths of the served model's ``POST .../infer`` to ``(answer, path_params)``
    (:meth:`InferenceServer.answer_infer`): those requests are answered on the raw ASGI channels, without
    Starlette's router, its two inner middleware layers, or a Starlette request and response (less CPU per
    inference; the answer carries its own errors; a fault still reaches Starlette's outer error middleware,
    as it would through the router).
    """

    def __init__(self, app: Any, metrics: ServerMetrics, clock: Callable[[], float],
                 fast: dict[str, tuple[Callable, dict]] | None = None) -> None:
        self.app = app
        self.metrics = metrics
        self.clock = clock
        self.fast = fast or {}

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if ARRIVAL_KEY not in scope:  # the HTTP protocol stamps it as the request's first bytes are parsed (httptools)
            scope[ARRIVAL_KEY] = self.clock()
        status, started = 500, False

        async def send_and_note(message: dict) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
            await send(message)

        try:
            fast = self.fast.get(scope["path"]) if scope["method"] == "POST" else None
            if fast is None:
                await self.app(scope, receive, send_and_note)
            else:
                answer, params = fast
                status, body, headers = await answer(scope, receive, params)
                started = True
                await _send_answer(send, status, body, headers)
        except asyncio.CancelledError:
            # uvicorn cancels the requests still running when its graceful shutdown timeout ends: answer 503 in
            # the server's own form (uvicorn would log an application error and send a plain-text 500), and end
            if started:
                raise
            status, body, headers = _error_answer(503, "the server is shutting down and could not answer this "
                                                       "request within its graceful shutdown timeout; retry",
                                                  {"connection": "close"})
            try:
                await _send_answer(send, status, body, headers)
            except Exception:  # noqa: BLE001 - the connection may be gone already
                pass
        finally:
            self.metrics.count_request(scope.get(_ENDPOINT, "other"), status)


def _decompress(body: bytes, encoding: str, cap: int) -> bytes:
    """``body`` decompressed (gzip: every member, as ``gzip.decompress`` reads them; deflate: one zlib stream),
    within ``cap`` bytes (else 413); bytes after the last member, a truncated stream or bad data: 400."""
    parts: list[bytes] = []
    size, rest = 0, body
    while True:
        d = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
        try:
            out = d.decompress(rest, cap + 1 - size)
        except zlib.error as e:
            raise ProtocolError(f"the {encoding} request body could not be decompressed ({e})") from None
        size += len(out)
        if size > cap or d.unconsumed_tail:
            raise ProtocolError(f"the decompressed request body is larger than the server's limit of {cap} bytes", 413)
        if not d.eof:
            raise ProtocolError(f"the {encoding} request body is truncated")
        parts.append(out)
        rest = d.unused_data
        if not rest:
            return parts[0] if len(parts) == 1 else b"".join(parts)
        if encoding != "gzip":
            raise ProtocolError(f"the {encoding} request body has {len(rest)} bytes after the end of its stream")

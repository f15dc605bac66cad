"""``ServerConfig``: every knob of ``sdedge serve`` in one dataclass (no web imports here).

The CLI (``sdedge serve -h``) builds one from its flags; robot code and tests build one directly and
pass it to :func:`sdedge.runtime.server.build_app` or :func:`sdedge.runtime.server.serve`::

    ServerConfig(budget_ms=5, workers=2, session=SessionOptions(backend="onnxruntime", max_batch=8))

How each session is opened (backend, precision, threads, warm-up, ``max_batch``, answer mode) is the
embedded :class:`~sdedge.runtime.options.SessionOptions`, checked there; the request-parameter
defaults (budget, threshold, criterion) are checked by the policies' ``check_*`` functions, the same
ones that check each request's parameters and each session call.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from ...common.errors import SdedgeError
from ...common.hostinfo import available_cpus
from ..options import SessionOptions
from ..policies import check_budget_ms, check_criterion, check_threshold
from .http_impl import HTTP_IMPLS, LOOPS
from .scheduler import QUEUE_ORDERS

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class ServerConfigError(SdedgeError, ValueError):
    """A server setting is out of range (bad port, negative cap, a model name unusable in a URL, ...)."""


@dataclass
class ServerConfig:
    """How the server answers and what it refuses.

    Policy defaults (a request's ``parameters`` override them per request):
      ``budget_ms``: latency budget counted from the request's arrival (None: no deadline);
      ``threshold``: confidence threshold in [0, 1] or ``"calibrated"`` (None: no confidence stop);
      ``criterion``: ``max_prob``, ``entropy`` or ``margin`` (None: the session's).
    Sessions: ``session`` says how each is opened (:class:`~sdedge.runtime.options.SessionOptions`);
    its ``max_batch`` is also the most images one request may carry (more: 400).
    Transports: HTTP on ``host:port``; gRPC (KServe v2, Triton's service) on ``host:grpc_port`` when set.
    Scheduling (:mod:`.scheduler`): earliest deadline first (``queue_order="fifo"``: arrival order;
    ``"adaptive"``: EDF for a share of the requests that shrinks under overload, the rest after them in arrival
    order); a request without a deadline yields to those
    with one for at most ``no_deadline_wait_ms``; ``batching`` runs the compatible requests waiting
    together as one batch of up to ``session.max_batch`` rows, each row with its own threshold and
    deadline, waiting up to ``max_queue_delay_us`` for more (0: only what already waits); ``shed_infeasible``:
    while other requests wait, one that can no longer reach even its first exit by its deadline is
    answered "deadline exceeded" (504) instead of run (False: only those whose deadline passed);
    ``yield_to_queue``: a run goes no deeper than lets the requests waiting behind it still reach their first
    exits by their deadlines (its deadlines are capped; ``deadline_met`` is judged on each request's own; False:
    each request uses its whole budget whatever waits); ``reply_margin``: each deadline the pool gets is the
    request's less the recent p90 lag of answers on their way back to the transport (at most half the budget),
    so answers are ready by the deadline itself (:mod:`.reply_lag`; False: the deadline as is).
    Capacity: ``workers`` sessions, each on its own inference thread with ``session.intra_op_threads``
    ORT intra-op threads (None: the CPUs split evenly between the sessions), fed by one queue of at most
    ``max_queue`` requests (more: 503). Safety caps: ``max_body_mb`` MiB per body (after decompression
    too), ``body_timeout_s`` to receive a body (408 after), ``header_timeout_s`` for a request head to arrive
    whole once a connection opens or the head's first bytes come (else the connection is closed, with a 408
    when some of the head came; httptools only: h11 has no such timer), ``max_header_kb`` per request head,
    ``limit_concurrency`` connections+tasks (503 beyond),
    ``timeout_keep_alive`` seconds an idle keep-alive connection is kept. ``switch_interval_us``: the
    interpreter's thread switch interval that :func:`~.runner.serve` sets for its process (0: Python's own,
    5 ms), so an inference thread back from the device gets the GIL from a busy event loop quickly
    (:mod:`.runner`).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    grpc_port: int | None = None  # None: no gRPC endpoint; 0: a free port the OS picks (the CLI's default: 8001)
    model_name: str | None = None  # None: the manifest's model name
    model_version: str = "1"
    budget_ms: float | None = None
    threshold: Any = None
    criterion: str | None = None
    session: SessionOptions = field(default_factory=SessionOptions)
    workers: int = 1
    max_body_mb: float = 16.0
    max_queue: int = 256
    batching: bool = True
    max_queue_delay_us: int = 0
    no_deadline_wait_ms: float = 1000.0
    queue_order: str = "edf"
    shed_infeasible: bool = True
    yield_to_queue: bool = True
    reply_margin: bool = True
    body_timeout_s: float = 30.0
    header_timeout_s: float = 10.0
    max_header_kb: int = 16
    limit_concurrency: int | None = 512
    timeout_keep_alive: int = 5
    graceful_timeout_s: float = 30.0
    log_level: str = "info"
    access_log: bool = False
    switch_interval_us: int = 100
    http: str = "auto"  # HTTP/1.1 parser: auto (httptools when installed) | h11 | httptools (see .http_impl)
    loop: str = "auto"  # event loop: auto (uvloop when installed) | asyncio | uvloop

    def __post_init__(self) -> None:
        if self.budget_ms is not None:
            self.budget_ms = check_budget_ms(self.budget_ms)
        if self.threshold is not None:
            self.threshold = check_threshold(self.threshold, calibrated=True)
        if self.criterion is not None:
            check_criterion(self.criterion)
        if not isinstance(self.session, SessionOptions):
            raise ServerConfigError(f"session must be a SessionOptions, got {type(self.session).__name__}")
        _positive_int(self, "port", allow_zero=True)
        if self.port > 65535:
            raise ServerConfigError(f"port must be in 0..65535, got {self.port}")
        if self.grpc_port is not None:
            _positive_int(self, "grpc_port", allow_zero=True)
            if self.grpc_port > 65535:
                raise ServerConfigError(f"grpc_port must be in 0..65535 (or None: no gRPC), got {self.grpc_port}")
        _positive_int(self, "max_queue_delay_us", allow_zero=True)
        _positive_int(self, "switch_interval_us", allow_zero=True)
        if self.http not in HTTP_IMPLS:
            raise ServerConfigError(f"http must be one of {HTTP_IMPLS}, got {self.http!r}")
        if self.loop not in LOOPS:
            raise ServerConfigError(f"loop must be one of {LOOPS}, got {self.loop!r}")
        if self.queue_order not in QUEUE_ORDERS:
            raise ServerConfigError(f"queue_order must be one of {', '.join(QUEUE_ORDERS)}, got {self.queue_order!r}")
        for name in ("batching", "shed_infeasible", "yield_to_queue", "reply_margin"):
            if not isinstance(getattr(self, name), bool):
                raise ServerConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("workers", "max_queue", "max_header_kb", "timeout_keep_alive"):
            _positive_int(self, name)
        if self.limit_concurrency is not None:
            _positive_int(self, "limit_concurrency")
        for name in ("max_body_mb", "body_timeout_s", "header_timeout_s", "graceful_timeout_s", "no_deadline_wait_ms"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ServerConfigError(f"{name} must be a positive number, got {v!r}")
        if self.model_name is not None:
            check_model_name(self.model_name)
        if not isinstance(self.model_version, str) or not _NAME_RE.match(self.model_version):
            raise ServerConfigError(f"model_version must be 1-128 characters of A-Z a-z 0-9 . _ -, got {self.model_version!r}")

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    def session_options(self) -> SessionOptions:
        """The options each of the ``workers`` sessions is opened with: ``session``, with its intra-op
        threads, when unset, split evenly between the sessions (the CPUs this process may use)."""
        if self.session.intra_op_threads is not None or self.workers == 1:
            # one session and no setting: the backend's default. The ONNX Runtime backend then sets
            # intra_op_num_threads to the logical CPUs this process may use (its affinity mask); it never
            # leaves the count to ONNX Runtime's own default.
            return self.session
        return self.session.replace(intra_op_threads=max(1, available_cpus() // self.workers))


def check_model_name(name: Any) -> str:
    """A model name usable as one URL path segment (``/v2/models/{name}``)."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ServerConfigError(f"model name must be 1-128 characters of A-Z a-z 0-9 . _ - (it is a URL path segment), "
                                f"got {name!r}; pick one with --model-name")
    return name


def _positive_int(cfg: ServerConfig, name: str, allow_zero: bool = False) -> None:
    v = getattr(cfg, name)
    if isinstance(v, bool) or not isinstance(v, int) or v < (0 if allow_zero else 1):
        raise ServerConfigError(f"{name} must be an integer >= {0 if allow_zero else 1}, got {v!r}")

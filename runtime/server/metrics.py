"""Prometheus metrics of one server app, in the app's own ``CollectorRegistry`` (no global state).

Exported at ``GET /metrics`` (text exposition format). Names and what they count:

==================================== ==================================================================
``sdedge_requests_total``            HTTP requests answered, by ``endpoint`` (infer, model_metadata,
                                     model_ready, model_config, model_stats, repository, health,
                                     server_metadata, metrics, other)
                                     and ``status`` code
``sdedge_inference_requests_total``  infer requests answered with 200 (HTTP) or OK (gRPC); the
                                     inference figures below count both protocols
``sdedge_images_total``              images answered (a batch of B counts B)
``sdedge_exits_total``               images answered per ``exit`` taken (1 = shallowest)
``sdedge_request_latency_seconds``   histogram: arrival of the request to its answer being ready
                                     (infer requests answered with 200)
``sdedge_queue_seconds``             histogram: time waiting for an inference worker
``sdedge_inference_seconds``         histogram: time inside ``AnytimeSession.infer``
``sdedge_deadline_requests_total``   infer requests that ran under a deadline (a budget)
``sdedge_deadline_misses_total``     of those, the ones whose deadline did not hold
``sdedge_deadline_expired_total``    infer requests answered "deadline exceeded" (504 / DEADLINE_EXCEEDED):
                                     their deadline passed in the queue and they were not run
``sdedge_batch_rows``                histogram: rows per inference run (dynamic batching puts several
                                     requests in one run)
``sdedge_grpc_requests_total``       gRPC calls answered, by ``method`` and status ``code``
``sdedge_inflight_requests``         infer requests being handled now (reading, queued or running)
``sdedge_queue_depth``               infer requests waiting for a worker now
``sdedge_model_info``                1, labelled with what serves the model: ``model``, ``engine``,
                                     ``backend``, ``precision``, ``device``
==================================== ==================================================================
"""
from __future__ import annotations

from typing import Callable

ENDPOINTS = ("infer", "model_metadata", "model_ready", "model_config", "model_stats", "repository", "health",
             "server_metadata", "metrics", "other")
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# latency buckets (seconds): sub-millisecond to seconds, dense around edge budgets of 1-50 ms
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5,
                   1.0, 2.5, 5.0)


def _require_prometheus():
    try:
        import prometheus_client
    except ImportError:
        from ...common.errors import BackendError

        raise BackendError("the server's /metrics needs prometheus-client: pip install 'sdedge[serve]'") from None
    return prometheus_client


class ServerMetrics:
    """The counters, histograms and gauges of one app; ``render()`` gives the exposition text."""

    def __init__(self, num_exits: int, queue_depth: Callable[[], float] | None = None,
                 model_info: dict[str, str] | None = None) -> None:
        pc = _require_prometheus()
        self._pc = pc
        r = self.registry = pc.CollectorRegistry(auto_describe=True)
        self.requests = pc.Counter("sdedge_requests", "HTTP requests answered, by endpoint and status code",
                                   ["endpoint", "status"], registry=r)
        self.inference_requests = pc.Counter("sdedge_inference_requests", "Infer requests answered with 200",
                                             registry=r)
        self.images = pc.Counter("sdedge_images", "Images answered (a batch of B counts B)", registry=r)
        self.exits = pc.Counter("sdedge_exits", "Images answered per exit taken (1 = shallowest)", ["exit"],
                                registry=r)
        for k in range(1, num_exits + 1):
            self.exits.labels(exit=str(k))  # every exit shows up, at 0, from the start
        self._exit_children = [self.exits.labels(exit=str(k)) for k in range(1, num_exits + 1)]
        self.latency = pc.Histogram("sdedge_request_latency_seconds",
                                    "Arrival of an infer request to its answer being ready", buckets=LATENCY_BUCKETS,
                                    registry=r)
        self.queue = pc.Histogram("sdedge_queue_seconds", "Time an infer request waited for an inference worker",
                                  buckets=LATENCY_BUCKETS, registry=r)
        self.inference = pc.Histogram("sdedge_inference_seconds", "Time inside AnytimeSession.infer",
                                      buckets=LATENCY_BUCKETS, registry=r)
        self.deadline_requests = pc.Counter("sdedge_deadline_requests", "Infer requests that ran under a deadline",
                                            registry=r)
        self.deadline_misses = pc.Counter("sdedge_deadline_misses", "Infer requests whose deadline did not hold",
                                          registry=r)
        self.deadline_expired = pc.Counter("sdedge_deadline_expired",
                                           "Infer requests answered 'deadline exceeded' without running", registry=r)
        self.batch_rows = pc.Histogram("sdedge_batch_rows", "Rows per inference run", buckets=BATCH_BUCKETS,
                                       registry=r)
        self.grpc_requests = pc.Counter("sdedge_grpc_requests", "gRPC calls answered, by method and status code",
                                        ["method", "code"], registry=r)
        self.inflight = pc.Gauge("sdedge_inflight_requests", "Infer requests being handled now", registry=r)
        self.queue_depth = pc.Gauge("sdedge_queue_depth", "Infer requests waiting for an inference worker now",
                                    registry=r)
        if queue_depth is not None:
            self.queue_depth.set_function(queue_depth)
        self.model_info = pc.Info("sdedge_model", "What serves the model: engine, backend, precision, device",
                                  registry=r)
        if model_info:
            self.model_info.info({k: str(v) for k, v in model_info.items()})

    def count_request(self, endpoint: str, status: int) -> None:
        self.requests.labels(endpoint=endpoint if endpoint in ENDPOINTS else "other", status=str(status)).inc()

    def observe_inference(self, exit_indices: list[int], latency_s: float, queue_s: float, inference_s: float,
                          deadline_met: bool | None) -> None:
        self.inference_requests.inc()
        self.images.inc(len(exit_indices))
        for k in exit_indices:
            self._exit_children[k - 1].inc()
        self.latency.observe(latency_s)
        self.queue.observe(queue_s)
        self.inference.observe(inference_s)
        if deadline_met is not None:
            self.deadline_requests.inc()
            if not deadline_met:
                self.deadline_misses.inc()

    def render(self) -> tuple[bytes, str]:
        return self._pc.generate_latest(self.registry), self._pc.CONTENT_TYPE_LATEST

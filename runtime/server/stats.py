"""Per-model inference statistics in the shape of Triton's statistics extension.

``GET /v2/models/{name}/stats`` (and ``/v2/models/stats``) over HTTP and ``ModelStatistics`` over gRPC
answer with one ``ModelStats.triton_json()`` document, so ``tritonclient``'s
``get_inference_statistics`` works unchanged::

    {"model_stats": [{"name", "version", "last_inference" (ms since the epoch), "inference_count"
      (images answered), "execution_count" (runs: a dynamic batch of several requests is one),
      "inference_stats": {"success", "fail", "queue", "compute_input", "compute_infer", "compute_output",
                          "cache_hit", "cache_miss"}: each {"count", "ns"},
      "batch_stats": [{"batch_size", "compute_input", "compute_infer", "compute_output"}]}]}

What the durations mean here: ``success`` arrival to answer ready (200s), ``fail`` the same for the
requests answered with an error after they were queued (deadline exceeded, a fault), ``queue`` waiting for
a worker, ``compute_infer`` inside the session (its own preprocessing included, so ``compute_input`` and
``compute_output`` stay 0: they are not separable from it), per request; ``batch_stats`` per run by its row
count. No response cache, so the cache counters stay 0. Counts and times are updated from the worker and
the event-loop threads under one lock.
"""
from __future__ import annotations

import threading
import time
from collections import defaultdict

_FIELDS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit", "cache_miss")


def _ns(seconds: float) -> int:
    return max(0, int(round(seconds * 1e9)))


class ModelStats:
    """Counters of one served model (see the module docstring)."""

    def __init__(self, name: str, version: str) -> None:
        self.name = name
        self.version = version
        self._lock = threading.Lock()
        self._stats = {f: [0, 0] for f in _FIELDS}
        self._batches: dict[int, list[int]] = defaultdict(lambda: [0, 0])
        self.inference_count = 0
        self.execution_count = 0
        self.last_inference_ms = 0

    def _add(self, field: str, seconds: float) -> None:
        c = self._stats[field]
        c[0] += 1
        c[1] += _ns(seconds)

    def success(self, images: int, latency_s: float, queue_s: float, inference_s: float) -> None:
        """A request answered (200 / OK)."""
        with self._lock:
            self.inference_count += images
            self.last_inference_ms = int(time.time() * 1e3)
            self._add("success", latency_s)
            self._add("queue", queue_s)
            self._add("compute_infer", inference_s)

    def failure(self, latency_s: float) -> None:
        """A queued request answered with an error (deadline exceeded, a fault of the run)."""
        with self._lock:
            self._add("fail", latency_s)

    def execution(self, rows: int, seconds: float) -> None:
        """One run of the session on ``rows`` rows (one request, or a dynamic batch of several)."""
        with self._lock:
            self.execution_count += 1
            b = self._batches[int(rows)]
            b[0] += 1
            b[1] += _ns(seconds)

    def triton_json(self) -> dict:
        """The statistics document (Triton's ``ModelStatisticsResponse`` as JSON)."""
        with self._lock:
            stats = {f: {"count": c, "ns": ns} for f, (c, ns) in self._stats.items()}
            zero = {"count": 0, "ns": 0}
            batches = [{"batch_size": n, "compute_input": dict(zero), "compute_infer": {"count": c, "ns": ns},
                        "compute_output": dict(zero)} for n, (c, ns) in sorted(self._batches.items())]
            return {"model_stats": [{
                "name": self.name, "version": self.version, "last_inference": self.last_inference_ms,
                "inference_count": self.inference_count, "execution_count": self.execution_count,
                "inference_stats": stats, "batch_stats": batches}]}

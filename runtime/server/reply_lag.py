"""The server's reply margin: how long an answer takes from the inference worker back to the transport.

A worker hands each answer to the event loop (``call_soon_threadsafe``); the request's coroutine resumes
only when the loop gets to it, and under load the loop has many other callbacks to run first. That lag
is outside the session's view, so a session that ends exactly at the request's deadline makes the answer
late where it counts: at the client. :class:`ReplyLag` keeps the lags of the latest answers (a ring of
``window``) and gives a high quantile of them (``quantile``, p90 by default, recomputed every
``every`` answers; 0 until ``min_samples`` are in) as the margin the server takes off each request's
deadline before it queues it (``ServerConfig.reply_margin``). The margin never takes more than
``max_share`` of a budget, so a stalled loop cannot turn every request into a floor answer.

Thread-safe: both transports record into one tracker (the gRPC server runs on its own loop).
"""
from __future__ import annotations

import threading
from collections import deque

import numpy as np


class ReplyLag:
    """Recent worker-to-transport lags (seconds) and the margin they suggest (module docstring)."""

    def __init__(self, window: int = 256, quantile: float = 90.0, every: int = 32, min_samples: int = 32,
                 max_share: float = 0.5) -> None:
        self._lags: deque[float] = deque(maxlen=int(window))
        self.quantile = float(quantile)
        self.every = int(every)
        self.min_samples = int(min_samples)
        self.max_share = float(max_share)
        self._margin_s = 0.0
        self._since = 0
        self._lock = threading.Lock()

    def record(self, lag_s: float) -> None:
        """One answer's lag: from the worker's ``t_done`` to its coroutine running again."""
        with self._lock:
            self._lags.append(max(0.0, float(lag_s)))
            self._since += 1
            if self._since >= self.every and len(self._lags) >= self.min_samples:
                self._since = 0
                self._margin_s = float(np.percentile(np.fromiter(self._lags, float), self.quantile))

    def margin_s(self, budget_s: float) -> float:
        """The margin to take off a deadline ``budget_s`` after arrival."""
        return min(self._margin_s, self.max_share * budget_s)

    @property
    def current_s(self) -> float:
        """The margin now (before the per-budget cap)."""
        return self._margin_s

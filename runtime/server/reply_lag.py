"""The server's reply margin: how long an answer takes from the inference worker back to the transport.

A worker hands each answer to the event loop (``call_soon_threadsafe``); the request's coroutine resumes
only when the loop gets to it, and under load the loop has many other callbacks to run first. That lag
is outside the session's view, so a session that ends exactly at the request's deadline makes the answer
late where it counts: at the client. :class:`ReplyLag` keeps the lags of the latest answers (at most
``window`` of them, none older than ``horizon_s``) and gives a high quantile of them (``quantile``, p90 by
default, recomputed every ``every`` answers or once the oldest has aged out; 0 while fewer than
``min_samples`` are in) as the margin the server takes off each request's deadline before it queues it
(``ServerConfig.reply_margin``). The horizon keeps a burst's lags from cutting the budgets of the quiet
requests after it; the margin never takes more than ``max_share`` of a budget, so a stalled loop cannot turn
every request into a floor answer.

Thread-safe: both transports record into one tracker (the gRPC server runs on its own loop). Times are
seconds on the server's clock (the pool's).
"""
from __future__ import annotations

import threading
from collections import deque

import numpy as np


class ReplyLag:
    """Recent worker-to-transport lags (seconds) and the margin they suggest (module docstring)."""

    def __init__(self, window: int = 256, quantile: float = 90.0, every: int = 32, min_samples: int = 32,
                 max_share: float = 0.5, horizon_s: float = 2.0) -> None:
        self._lags: deque[tuple[float, float]] = deque(maxlen=int(window))  # (when, lag)
        self.quantile = float(quantile)
        self.every = int(every)
        self.min_samples = int(min_samples)
        self.max_share = float(max_share)
        self.horizon_s = float(horizon_s)
        self._margin_s = 0.0
        self._since = 0
        self._lock = threading.Lock()

    def record(self, lag_s: float, now: float) -> None:
        """One answer's lag, from the worker's ``t_done`` to its coroutine running again at ``now``."""
        with self._lock:
            self._lags.append((float(now), max(0.0, float(lag_s))))
            self._since += 1
            if self._since >= self.every:
                self._update(now)

    def margin_s(self, budget_s: float, now: float) -> float:
        """The margin to take off a deadline ``budget_s`` after arrival, at ``now``."""
        with self._lock:
            if self._lags and now - self._lags[0][0] > self.horizon_s:  # the oldest has aged out: look again
                self._update(now)
            return min(self._margin_s, self.max_share * budget_s)

    def _update(self, now: float) -> None:
        """Drop what is older than the horizon and recompute the quantile (lock held)."""
        while self._lags and now - self._lags[0][0] > self.horizon_s:
            self._lags.popleft()
        self._since = 0
        if len(self._lags) < self.min_samples:
            self._margin_s = 0.0
        else:
            self._margin_s = float(np.percentile(np.fromiter((lag for _, lag in self._lags), float), self.quantile))

    @property
    def current_s(self) -> float:
        """The margin as last computed (before the per-budget cap)."""
        return self._margin_s

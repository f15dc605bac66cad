"""Inference workers: one thread per ``AnytimeSession``, all fed by one bounded FIFO queue.

How the server handles concurrency, and why:

* The event loop (uvicorn + Starlette) only does I/O and protocol work: it reads and parses requests
  and encodes answers. Inference never runs on it.
* Each session gets **one dedicated inference thread**. A session is not re-entrant (it serializes
  calls with a lock) and ONNX Runtime already spreads one inference over the cores with its intra-op
  threads, so two concurrent calls on one device only slow each other down and spoil the latency
  estimates the deadline policy relies on. ``--workers N`` runs N sessions (N threads), each with
  ``cores / N`` intra-op threads: worth it on many-core hosts where one small model cannot use every
  core, rarely on an edge board.
* Requests wait in **one FIFO queue** of at most ``max_queue`` entries; when it is full the server
  answers 503 at once instead of queueing work that would only miss its deadline. Waiting in the queue
  is *visible*: each answer and ``/metrics`` report ``queue_ms``, and since the deadline counts from the
  request's arrival (``deadline = arrival + budget``), time spent queued is taken off the budget: a
  request that waited long runs fewer sections, and says whether its deadline held.
* Each request is run as its own ``infer`` call (no merging of requests into one batch), so every
  request gets exactly its own deadline, threshold and criterion.
* While one request runs, the event loop is already reading and parsing the next ones (ORT releases
  the GIL), so HTTP work overlaps inference.

``close()`` lets the queued requests finish (graceful shutdown), then stops the threads.

Test hook: ``InferencePool.observer`` (None by default, so the server never calls anything) is called
as ``observer(event, job)`` with ``"queued"`` on the event loop's thread once a request is in the queue,
and ``"started"`` on the worker's thread just before its ``infer``: tests wait on these events instead
of sleeping and hoping a request got there. It must be quick and must not raise.

Time: queueing and inference are timed on ``InferencePool.clock``, by default the first session's
``clock`` (the one it reads deadlines on; ``time.perf_counter`` where a session has none), and the app
stamps arrivals on the same clock, so ``deadline = arrival + budget`` means the same instant to the
session; a test that passes its sessions a clock it advances moves the whole server's time.
"""
from __future__ import annotations

import asyncio
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ...common.errors import SdedgeError

_clock = time.perf_counter  # real time, for close()'s timeouts


class Overloaded(SdedgeError):
    """The inference queue is full (answered 503)."""


class ShuttingDown(SdedgeError):
    """The server is stopping and takes no new inference work (answered 503)."""


@dataclass
class Outcome:
    """What a worker did for one request."""

    results: list  # list[InferenceResult], one per image
    queue_s: float  # enqueue to the start of infer
    inference_s: float  # inside infer
    t_done: float  # InferencePool.clock() when infer returned


@dataclass
class _Job:
    x: Any
    deadline: float | None
    threshold: Any
    criterion: str | None
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    t_enqueued: float


def _settle(fut: asyncio.Future, ok: bool, value: Any) -> None:
    if fut.done():  # the request was cancelled (client gone) while it ran
        return
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)


class InferencePool:
    """Sessions, one thread each, taking jobs from one bounded queue.

    ``clock``: what queueing and inference are timed on (default: the first session's ``clock``, else
    ``time.perf_counter``); ``observer``: the test hook of the module docstring (None: off).
    """

    def __init__(self, sessions: Sequence[Any], max_queue: int = 256, clock: Callable[[], float] | None = None
                 ) -> None:
        if not sessions:
            raise ValueError("InferencePool needs at least one session")
        self.sessions = list(sessions)
        self.clock: Callable[[], float] = clock or getattr(self.sessions[0], "clock", None) or time.perf_counter
        self.max_queue = int(max_queue)
        self._q: queue.Queue = queue.Queue(maxsize=self.max_queue)
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._closed = False
        self.observer: Callable[[str, _Job], None] | None = None  # test hook (module docstring); None: off

    @property
    def size(self) -> int:
        return len(self.sessions)

    def qsize(self) -> int:
        return self._q.qsize()

    @property
    def closed(self) -> bool:
        return self._closed

    def healthy(self) -> bool:
        """Not closed, and every started inference thread is still alive."""
        return not self._closed and all(t.is_alive() for t in self._threads)

    def start(self) -> None:
        """Start the worker threads (idempotent; :meth:`run` starts them on first use too)."""
        with self._lock:
            if self._threads or self._closed:
                return
            for i, s in enumerate(self.sessions):
                t = threading.Thread(target=self._work, args=(s,), name=f"sdedge-infer-{i}", daemon=True)
                t.start()
                self._threads.append(t)

    async def run(self, x: Any, deadline: float | None = None, threshold: Any = None,
                  criterion: str | None = None) -> Outcome:
        """Queue one request and wait for its answer; raises :class:`Overloaded` when the queue is full."""
        if self._closed:
            raise ShuttingDown("the server is shutting down and takes no new requests")
        if not self._threads:
            self.start()
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        job = _Job(x, deadline, threshold, criterion, fut, loop, self.clock())
        try:
            self._q.put_nowait(job)
        except queue.Full:
            raise Overloaded(f"the inference queue is full ({self.max_queue} requests waiting); retry later") from None
        if self.observer is not None:
            self.observer("queued", job)
        return await fut

    def _work(self, session: Any) -> None:
        while True:
            job = self._q.get()
            if job is None:
                return
            if job.future.cancelled():
                continue  # nobody is waiting for it any more
            if self.observer is not None:
                self.observer("started", job)
            t0 = self.clock()
            try:
                res = session.infer(job.x, threshold=job.threshold, criterion=job.criterion, deadline=job.deadline)
                t1 = self.clock()
                out: Any = Outcome(res if isinstance(res, list) else [res], t0 - job.t_enqueued, t1 - t0, t1)
                ok = True
            except Exception as e:  # handed to the request; the worker goes on
                out, ok = e, False
            except BaseException as e:  # noqa: BLE001 - never let one request kill the inference thread
                out, ok = RuntimeError(f"inference aborted by {type(e).__name__}: {e}"), False
            try:
                job.loop.call_soon_threadsafe(_settle, job.future, ok, out)
            except RuntimeError:  # the event loop is gone (hard stop); nothing to answer
                pass

    def close(self, timeout: float | None = 30.0) -> bool:
        """Take no new jobs, let the queued ones finish, stop the threads (waits up to ``timeout`` s).

        Returns whether every thread stopped (False: one is still inside an inference).
        """
        with self._lock:
            if self._closed:
                return not any(t.is_alive() for t in self._threads)
            self._closed = True
            threads = list(self._threads)
        end = None if timeout is None else _clock() + timeout
        for _ in threads:  # one stop marker per thread, behind every queued job
            try:
                self._q.put(None, timeout=None if end is None else max(0.0, end - _clock()))
            except queue.Full:
                break
        for t in threads:
            t.join(None if end is None else max(0.0, end - _clock()))
        return not any(t.is_alive() for t in threads)

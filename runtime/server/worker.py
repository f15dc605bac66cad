"""Inference workers: one thread per ``AnytimeSession``, all fed by one bounded earliest-deadline-first queue.

How the server handles concurrency, and why:

* The event loop (uvicorn + Starlette, and the gRPC server's) only does I/O and protocol work: it reads
  and parses requests and encodes answers. Inference never runs on it.
* Each session gets **one dedicated inference thread**. A session is not re-entrant (it serializes
  calls with a lock) and ONNX Runtime already spreads one inference over the cores with its intra-op
  threads, so two concurrent calls on one device only slow each other down and spoil the latency
  estimates the deadline policy relies on. ``--workers N`` runs N sessions (N threads), each with
  ``cores / N`` intra-op threads: worth it on many-core hosts where one small model cannot use every
  core, rarely on an edge board.
* Requests wait in **one queue** of at most ``max_queue`` entries, served earliest deadline first
  (:mod:`.scheduler`); when it is full the server answers 503 at once instead of queueing work that
  would only miss its deadline. A request whose deadline passed while it waited is answered "deadline
  exceeded" (504) without running, unless it asked for the floor answer (``late``); so, while other
  requests wait, is one that can no longer reach even its first exit in time (``shed_infeasible``). Waiting is
  *visible*: each answer and ``/metrics`` report ``queue_ms``, and since the deadline counts from the
  request's arrival (``deadline = arrival + budget``), time spent queued is taken off the budget. A run
  **yields to the queue** (``yield_to_queue``): its deadlines are capped at the latest end that still lets
  the requests waiting behind it reach their first exits by theirs, so under contention answers come from
  shallower exits instead of late; each request's ``deadline_met`` is still judged on its own deadline.
* **Dynamic batching** (``ServerConfig.batching``, on by default): a worker runs the requests waiting
  together (compatible: same input dtype and shape, same criterion, at most ``max_batch`` rows) as one
  batch with ``session.infer_rows``, **each row with its own threshold and deadline**, leaving at its own
  exit while the others go on, and **each request is answered the moment its rows settle** (not when the
  whole batch ends); a request alone runs as its own ``infer`` call. Sessions without
  ``infer_rows`` run every request alone. When a batch fails (one request's input overflows the network,
  say), each of its requests is run again alone, so only the faulty one gets the error.
* While one batch runs, the event loop is already reading and parsing the next requests (ONNX Runtime
  and the native core release the GIL), so protocol work overlaps inference.

``close()`` lets the queued requests finish (graceful shutdown), then stops the threads.

Test hook: ``InferencePool.observer`` (None by default, so the server never calls anything) is called
as ``observer(event, job)`` with ``"queued"`` on the submitting thread once a request is in the queue,
``"expired"`` on the worker's thread for a request answered "deadline exceeded" without running, and
``"started"`` on the worker's thread just before the request runs (once per request of a batch): tests
wait on these events instead of sleeping and hoping a request got there. It must be quick and must not
raise.

Time: queueing and inference are timed on ``InferencePool.clock``, by default the first session's
``clock`` (the one it reads deadlines on; ``time.perf_counter`` where a session has none), and the app
stamps arrivals on the same clock, so ``deadline = arrival + budget`` means the same instant to the
session; a test that passes its sessions a clock it advances moves the whole server's time.
"""
from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from .scheduler import DeadlineExceeded, EdfQueue, Overloaded, ShuttingDown

__all__ = ["DeadlineExceeded", "InferencePool", "Outcome", "Overloaded", "ShuttingDown"]

_clock = time.perf_counter  # real time, for close()'s timeouts


@dataclass
class Outcome:
    """What a worker did for one request."""

    results: list  # list[InferenceResult], one per image
    queue_s: float  # arrival in the queue to the start of its run
    inference_s: float  # its run: from the start of the run (its batch's) to its answer
    t_done: float  # InferencePool.clock() when its answer was ready
    batch_rows: int = 1  # rows in the run that answered it (its own and those of requests batched with it)
    batch_requests: int = 1  # requests in that run


@dataclass
class _Job:
    x: Any
    deadline: float | None
    threshold: Any
    criterion: str | None
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    t_enqueued: float
    late: bool = False
    rows: int = 1

    def cancelled(self) -> bool:
        return self.future.cancelled()

    def kind(self) -> tuple:
        """What must match for two requests to share one run."""
        x = self.x
        shape = (x.dtype.str, x.shape[1:]) if isinstance(x, np.ndarray) else (type(x).__name__,)
        return shape + (self.criterion, self.threshold == "calibrated")


def _compatible(a: _Job, b: _Job) -> bool:
    return a.kind() == b.kind()


def _first_exit_s(session: Any, rows: int) -> float:
    """The session's predicted time, in seconds, of its first exit on ``rows`` rows (section 1 and the
    runtime's per-call overhead): the least any request needs."""
    return (session.section_cost_ms(1, rows) + session.section_cost_ms(0, rows)) * 1e-3


def _slack_admission(first_exit_s: Callable[[int], float]) -> Callable[[list, _Job, int, float], bool]:
    """Admit a request into a forming batch only while the batch's first section, with the runtime's
    per-call overhead, on all its rows (``first_exit_s(rows)``, seconds: the session's cost figures) still
    ends by the tightest deadline in it: a wide batch must not make its tight rows late at exit 1."""
    def admit(batch: list, job: _Job, rows_after: int, now: float) -> bool:
        deadlines = [j.deadline for j in (*batch, job) if j.deadline is not None]
        if not deadlines:
            return True
        try:
            cost_s = first_exit_s(rows_after)
        except Exception:  # noqa: BLE001 - no figure: batch as without admission, never stop the worker
            return True
        return now + cost_s <= min(deadlines)
    return admit


class _FirstExitCosts:
    """:func:`_first_exit_s` of one session by row count, read from the session once per take of the queue
    (:meth:`clear` before each): the queue asks for it per waiting request it looks at, with its lock held,
    and each read is a call into the session (~13 us on the native engine)."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self._s: dict[int, float] = {}

    def clear(self) -> None:
        self._s.clear()

    def __call__(self, rows: int) -> float:
        s = self._s.get(rows)
        if s is None:
            s = self._s[rows] = _first_exit_s(self.session, rows)
        return s


def _capped(deadline: float | None, cap: float | None) -> float | None:
    """The deadline a request runs under: its own, or ``cap`` when earlier (a request without a deadline
    asked for the whole network and keeps it)."""
    return deadline if deadline is None or cap is None else min(deadline, cap)


def _judge_own_deadline(results: list, job: _Job, cap: float | None, t0: float) -> None:
    """``deadline_met`` on the request's own deadline where it ran under an earlier cap: met under the cap
    is met; a miss of the cap is judged by when the answer settled (``t0`` + its latency)."""
    if cap is None or job.deadline is None or cap >= job.deadline:
        return
    for r in results:
        if getattr(r, "deadline_met", None) is False:
            r.deadline_met = t0 + r.latency_ms * 1e-3 <= job.deadline


def _settle(fut: Any, ok: bool, value: Any) -> None:
    if fut.done():  # the request was cancelled (client gone) while it ran
        return
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)


class InferencePool:
    """Sessions, one thread each, taking jobs from one bounded earliest-deadline-first queue.

    ``clock``: what queueing and inference are timed on (default: the first session's ``clock``, else
    ``time.perf_counter``); ``batching``: run waiting requests together (module docstring), at most
    ``max_batch`` rows (default: the smallest session ``max_batch``), waiting up to ``max_delay_s`` for
    more; ``no_deadline_wait_s``: when a request without a deadline stops yielding to those with one
    (:mod:`.scheduler`); ``queue_order``: ``"edf"`` or ``"fifo"``; ``shed_infeasible``: under contention,
    answer "deadline exceeded" for a request that cannot reach its first exit by its deadline (the session's
    cost figures; :mod:`.scheduler`); ``yield_to_queue``: a run's deadlines are capped so that the requests
    waiting behind it can still reach their first exits by theirs (:meth:`.EdfQueue.start_by`; each
    request's ``deadline_met`` is still judged on its own deadline); ``observer``: the test hook of the
    module docstring (None: off).
    """

    def __init__(self, sessions: Sequence[Any], max_queue: int = 256, clock: Callable[[], float] | None = None,
                 batching: bool = True, max_batch: int | None = None, max_delay_s: float = 0.0,
                 no_deadline_wait_s: float = 1.0, queue_order: str = "edf", shed_infeasible: bool = True,
                 yield_to_queue: bool = True) -> None:
        if not sessions:
            raise ValueError("InferencePool needs at least one session")
        self.sessions = list(sessions)
        self.clock: Callable[[], float] = clock or getattr(self.sessions[0], "clock", None) or time.perf_counter
        self.max_queue = int(max_queue)
        self.batching = bool(batching)
        caps = [int(getattr(s, "max_batch", 1)) for s in self.sessions]
        self.max_batch = int(max_batch) if max_batch is not None else min(caps)
        self.max_delay_s = float(max_delay_s)
        self.shed_infeasible = bool(shed_infeasible)
        self.yield_to_queue = bool(yield_to_queue)
        self._q = EdfQueue(self.max_queue, self.clock, no_deadline_wait_s, queue_order)
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._closed = False
        self.observer: Callable[[str, _Job], None] | None = None  # test hook (module docstring); None: off
        self.on_run: Callable[[int, float], None] | None = None  # (rows, seconds) of each run: the statistics

    @property
    def size(self) -> int:
        return len(self.sessions)

    def qsize(self) -> int:
        return len(self._q)

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
                  criterion: str | None = None, t_arrival: float | None = None, late: bool = False) -> Outcome:
        """Queue one request and wait for its answer; raises :class:`Overloaded` when the queue is full,
        :class:`ShuttingDown` once closing, :class:`DeadlineExceeded` when its deadline passed before it
        could start (unless ``late``). ``t_arrival``: when the request arrived (default: now)."""
        if self._closed:
            raise ShuttingDown("the server is shutting down and takes no new requests")
        if not self._threads:
            self.start()
        loop = asyncio.get_running_loop()
        rows = int(x.shape[0]) if isinstance(x, np.ndarray) and x.ndim >= 3 else 1  # protocol arrays: batch first
        job = _Job(x, deadline, threshold, criterion, loop.create_future(), loop,
                   self.clock() if t_arrival is None else t_arrival, bool(late), rows)
        self._q.put(job)
        if self.observer is not None:
            self.observer("queued", job)
        return await job.future

    def _answer(self, job: _Job, ok: bool, value: Any) -> None:
        if job.deadline is not None and self._q.order == "adaptive":  # the adaptive order learns from each outcome
            self._q.report(job, ok and all(getattr(r, "deadline_met", None) is not False for r in value.results))
        try:
            job.loop.call_soon_threadsafe(_settle, job.future, ok, value)
        except RuntimeError:  # the event loop is gone (hard stop); nothing to answer
            pass

    def _work(self, session: Any) -> None:
        can_batch = self.batching and self.max_batch > 1 and hasattr(session, "infer_rows")
        costed = hasattr(session, "section_cost_ms")
        costs = _FirstExitCosts(session)
        admit = _slack_admission(costs) if can_batch and costed else None
        first_exit = (lambda job: costs(job.rows)) if costed else None
        floor_s = first_exit if self.shed_infeasible else None
        yield_s = first_exit if self.yield_to_queue else None
        while True:
            costs.clear()  # the figures move as the session learns; one read per row count per take
            got = self._q.take(self.max_batch if can_batch else 1, _compatible if can_batch else None,
                               self.max_delay_s, admit=admit, floor_s=floor_s)
            if got is None:
                return
            expired, batch = got
            for job in expired:
                if self.observer is not None:
                    self.observer("expired", job)
                self._answer(job, False, self._shed_error(job, floor_s))
            if batch:
                cap = None if yield_s is None else self._q.start_by(yield_s, self.clock())
                self._run(session, batch, cap)

    def _shed_error(self, job: _Job, floor_s: Callable[[_Job], float] | None) -> DeadlineExceeded:
        """The "deadline exceeded" answer of a request the queue shed (:mod:`.scheduler`), saying why."""
        now = self.clock()
        waited_ms, left_ms = (now - job.t_enqueued) * 1e3, (job.deadline - now) * 1e3
        how = "send parameters.late=\"answer\" to get the first exit's answer anyway, or a larger budget_ms"
        if left_ms <= 0:
            return DeadlineExceeded(f"deadline exceeded: the request's deadline passed after {waited_ms:.3f} ms in the "
                                    f"queue, before an inference worker could start it; it was not run ({how})")
        try:
            need = f"about {floor_s(job) * 1e3:.3f} ms" if floor_s is not None else "more"
        except Exception:  # noqa: BLE001 - the figure is only for the message
            need = "more"
        return DeadlineExceeded(
            f"deadline exceeded: after {waited_ms:.3f} ms in the queue only {left_ms:.3f} ms of the budget were left, "
            f"less than the first exit needs ({need}), while other requests waited for the worker; it was not run "
            f"({how})")

    def _run(self, session: Any, batch: list[_Job], cap: float | None = None) -> None:
        """Run ``batch`` (one request alone, else :meth:`_run_batch`), every deadline capped at ``cap``
        (:meth:`.EdfQueue.start_by`; None: each request's own)."""
        if self.observer is not None:
            for job in batch:
                self.observer("started", job)
        if len(batch) > 1:
            self._run_batch(session, batch, cap)
            return
        job = batch[0]
        t0 = self.clock()
        try:
            res = session.infer(job.x, threshold=job.threshold, criterion=job.criterion,
                                deadline=_capped(job.deadline, cap))
            t1 = self.clock()
            results = res if isinstance(res, list) else [res]
            _judge_own_deadline(results, job, cap, t0)
            if self.on_run is not None:
                self.on_run(len(results), t1 - t0)
            ok, value = True, Outcome(results, t0 - job.t_enqueued, t1 - t0, t1, len(results), 1)
        except Exception as e:  # handed to the request; the worker goes on
            ok, value = False, e
        except BaseException as e:  # noqa: BLE001 - never let one request kill the inference thread
            ok, value = False, RuntimeError(f"inference aborted by {type(e).__name__}: {e}")
        self._answer(job, ok, value)

    def _run_batch(self, session: Any, batch: list[_Job], cap: float | None = None) -> None:
        """Several requests as one ``infer_rows`` call, each row with its request's threshold and deadline
        (capped at ``cap``); each request is answered the moment its last row settles, while the others go on.
        If the call fails, the requests not yet answered run again alone (only a faulty one then gets an error)."""
        owner = [b for b, j in enumerate(batch) for _ in range(j.rows)]  # row -> its request
        start = [0]
        for j in batch[:-1]:
            start.append(start[-1] + j.rows)
        left = [j.rows for j in batch]
        got: list[list] = [[None] * j.rows for j in batch]
        answered: set[int] = set()
        rows_total = len(owner)
        t0 = self.clock()

        def on_settled(idx: list[int], results: list) -> None:
            now = self.clock()
            for i, r in zip(idx, results):
                b = owner[i]
                got[b][i - start[b]] = r
                left[b] -= 1
                if left[b] == 0:
                    answered.add(b)
                    _judge_own_deadline(got[b], batch[b], cap, t0)
                    self._answer(batch[b], True, Outcome(got[b], t0 - batch[b].t_enqueued, now - t0, now, rows_total,
                                                         len(batch)))

        try:
            x = np.concatenate([j.x for j in batch], axis=0)
            session.infer_rows(x, thresholds=[j.threshold for j in batch for _ in range(j.rows)],
                               deadlines=[_capped(j.deadline, cap) for j in batch for _ in range(j.rows)],
                               criterion=batch[0].criterion, on_settled=on_settled)
            if self.on_run is not None:
                self.on_run(rows_total, self.clock() - t0)
        except Exception:  # one request's bad input must not fail the others
            for b, job in enumerate(batch):
                if b not in answered:
                    self._run(session, [job], cap)
        except BaseException as e:  # noqa: BLE001 - never let one request kill the inference thread
            for b, job in enumerate(batch):
                if b not in answered:
                    self._answer(job, False, RuntimeError(f"inference aborted by {type(e).__name__}: {e}"))

    def close(self, timeout: float | None = 30.0) -> bool:
        """Take no new jobs, let the queued ones finish, stop the threads (waits up to ``timeout`` s).

        Returns whether every thread stopped (False: one is still inside an inference).
        """
        with self._lock:
            if self._closed:
                return not any(t.is_alive() for t in self._threads)
            self._closed = True
            threads = list(self._threads)
        self._q.close()
        end = None if timeout is None else _clock() + timeout
        for t in threads:
            t.join(None if end is None else max(0.0, end - _clock()))
        return not any(t.is_alive() for t in threads)

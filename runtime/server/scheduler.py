"""The server's request queue: earliest deadline first, expired requests answered at once, batches formed.

Pure Python (threading only), so its order is unit-tested with a scripted clock and no server.

Order (:meth:`EdfQueue.take`):

* Requests with a deadline are served **earliest deadline first**; among equal deadlines, in arrival
  order (a sequence number breaks ties, so the order is total and FIFO among equals).
* Requests **without a deadline** come after those with one, in arrival order, but never starve: one
  that has waited ``promote_after_s`` (``ServerConfig.no_deadline_wait_ms``, 1 s by default) is served
  as if its deadline were ``arrival + promote_after_s``. One sort key does both:
  ``(deadline or arrival + promote_after_s, 0 with a deadline / 1 without, sequence)``.
* A request whose deadline has **already passed** when a worker would start it is not run: it comes back
  in the ``expired`` list of :meth:`take` (answered "deadline exceeded" at once: HTTP 504, gRPC
  ``DEADLINE_EXCEEDED``), unless it asked for the floor answer (``late=True``: it runs, and the session
  answers at its first exit).
* **Shedding under contention** (``take``'s ``floor_s``, on in the server by default: ``ServerConfig.shed_infeasible``):
  a request whose deadline has not passed yet but is too close for even its first exit (``now +
  floor_s(job) > deadline``, ``floor_s`` the session's own cost figure of exit 1 on its rows) is answered
  "deadline exceeded" the same way **when other requests wait** (its answer would come late, and running it
  would make the feasible ones behind it late too: the "domino effect" that makes plain EDF worse than
  FIFO under overload). Alone in the queue it runs (nothing else wants the worker) and the session answers
  at its first exit, late, as it does in-process. This goes beyond DESIGN section 6's "deadline passed" rule,
  for the same reason that rule exists: the device must not be spent on answers nobody can use.
* **Batches**: the head request is taken, then, while rows remain (``max_rows``), every further request
  in queue order that ``compatible(head, other)`` says can share its run (same input dtype and image
  shape, same criterion); the others keep their places. With ``max_delay_s`` > 0 and room left, the
  worker waits up to that long for more compatible requests (Triton's ``max_queue_delay``); with 0
  (default) it batches only what is already waiting, so an idle server adds no latency. The caller's
  ``admit`` may keep a request out of a batch that would grow too slow for a deadline in it: the server
  keeps a batch's first section (on all its rows) within the slack of its tightest deadline, using the
  session's own cost figures; a request too tight even alone still runs alone (exit 1 is the floor).

Forming a batch is bounded work whatever the queue's length (:meth:`EdfQueue._gather`): a slack refusal
holds for every request behind it, and the look-ahead is capped. **Yielding** (:meth:`EdfQueue.start_by`): after
a take, the worker asks by when its run must end so that the requests waiting behind it can still reach their
first exits one after another; it caps its rows' deadlines there (``ServerConfig.yield_to_queue``), so under
contention a request answers at a shallower exit instead of making the ones behind it miss theirs.

``order="fifo"`` serves in arrival order instead (``sdedge serve --queue-order fifo``: the baseline of
``benchmarks/serve_bench.py``); expired requests are still answered at once.

``order="adaptive"`` (``--queue-order adaptive``) is EDF that stays upright under overload, after Haritsa,
Livny and Carey's Adaptive Earliest Deadline (RTSS 1991): plain EDF serves the requests closest to expiring
first and, when there is more work than time, makes nearly every request late or shed. Here each request with
a deadline joins, as it is queued, the **EDF group** with probability ``hit_share`` (deterministically: the
k-th request joins when ``frac(k * golden ratio) < hit_share``); the group is served EDF, ahead of the
requests without a deadline; the others wait after both, in arrival order (shed when their deadline passes,
like any request). The worker reports each group request's outcome (:meth:`report`); while fewer than 95 % of the
group meet their deadlines the share shrinks (x0.9 per 32 outcomes, down to 5 %), else it grows back (x1.05,
up to all). Under light load the share stays at 1: the order is exactly EDF's. Under overload the group shrinks
to what the device can serve in time, and the rest, served in arrival order, behave as FIFO does.

The queue is bounded (``max_queue`` requests; :class:`Overloaded` beyond). ``close()`` lets queued
requests drain; :meth:`take` returns None once the queue is closed and empty.
"""
from __future__ import annotations

import heapq
import itertools
import threading
import time
from typing import Any, Callable

from ...common.errors import SdedgeError


QUEUE_ORDERS = ("edf", "fifo", "adaptive")
_GOLDEN = 0.6180339887498949  # order="adaptive": request k joins the EDF group when frac(k * golden ratio) < share
ADAPT_WINDOW = 32  # order="adaptive": outcomes of the EDF group per adjustment of its share ...
ADAPT_TARGET = 0.95  # ... the met share it must keep ...
ADAPT_DOWN, ADAPT_UP, ADAPT_FLOOR = 0.9, 1.05, 0.05  # ... how the share moves below / at the target, its least
_SCAN_PER_ROW = 4  # a batch forming looks at most this many queued entries per row it may hold ...
_SCAN_MIN = 64  # ... and at least this many
_LOOKAHEAD = 16  # start_by looks at this many waiting requests (queue order)


class Overloaded(SdedgeError):
    """The inference queue is full (answered 503)."""


class ShuttingDown(SdedgeError):
    """The server is stopping and takes no new inference work (answered 503)."""


class DeadlineExceeded(SdedgeError):
    """The request's deadline passed before a worker could start it (answered 504 / DEADLINE_EXCEEDED)."""


class EdfQueue:
    """A bounded earliest-deadline-first queue of jobs (see the module docstring).

    A job is any object with ``deadline`` (absolute seconds on ``clock``, or None), ``t_enqueued``,
    ``late`` (bool: run even when expired), ``rows`` (int) and ``cancelled()``.
    """

    def __init__(self, max_queue: int, clock: Callable[[], float], promote_after_s: float = 1.0,
                 order: str = "edf") -> None:
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        if order not in QUEUE_ORDERS:
            raise ValueError(f"order must be one of {', '.join(QUEUE_ORDERS)}, got {order!r}")
        self.order = order
        self.max_queue = int(max_queue)
        self.clock = clock
        self.promote_after_s = float(promote_after_s)
        self._heap: list[tuple[float, int, int, Any]] = []
        self.hit_share = 1.0  # order="adaptive": the share of deadline requests served EDF (the rest after them, FIFO)
        self._hit_seen = 0
        self._hit_met = 0
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._closed = False

    def __len__(self) -> int:
        return len(self._heap)

    @property
    def closed(self) -> bool:
        return self._closed

    def key(self, job: Any) -> tuple[float, int]:
        """The job's place: its deadline, or (no deadline) its arrival + ``promote_after_s``, after deadlines
        (``order="fifo"``: its arrival, for comparisons; ``order="adaptive"``: a deadline job outside the EDF
        group, as :meth:`put` placed it, after every other job, by arrival)."""
        if self.order == "fifo":
            return float(job.t_enqueued), 0
        if job.deadline is not None:
            if self.order == "adaptive" and not getattr(job, "sdedge_hit", True):
                return float(job.t_enqueued) + 1e9, 2
            return float(job.deadline), 0
        return float(job.t_enqueued) + self.promote_after_s, 1

    def put(self, job: Any) -> None:
        """Queue ``job``; :class:`Overloaded` when full, :class:`ShuttingDown` after :meth:`close`."""
        with self._cond:
            if self._closed:
                raise ShuttingDown("the server is shutting down and takes no new requests")
            if len(self._heap) >= self.max_queue:
                raise Overloaded(f"the inference queue is full ({self.max_queue} requests waiting); retry later")
            seq = next(self._seq)
            if self.order == "adaptive" and job.deadline is not None:  # joins the EDF group or not (module doc)
                job.sdedge_hit = (seq * _GOLDEN) % 1.0 < self.hit_share
            d, cls = self.key(job)
            heapq.heappush(self._heap, (d, cls, seq, job))
            self._cond.notify()

    def report(self, job: Any, met: bool) -> None:
        """``order="adaptive"``: whether a request of the EDF group met its deadline (answered in time; shed or
        late: not). Every ``ADAPT_WINDOW`` of them the group's share moves: down (x ``ADAPT_DOWN``, at least
        ``ADAPT_FLOOR``) when fewer than ``ADAPT_TARGET`` met, else up (x ``ADAPT_UP``, at most all). Other
        orders and requests outside the group: nothing."""
        if self.order != "adaptive" or not getattr(job, "sdedge_hit", False):
            return
        with self._cond:
            self._hit_seen += 1
            self._hit_met += bool(met)
            if self._hit_seen >= ADAPT_WINDOW:
                ok = self._hit_met / self._hit_seen
                share = self.hit_share * (ADAPT_DOWN if ok < ADAPT_TARGET else ADAPT_UP)
                self.hit_share = min(1.0, max(ADAPT_FLOOR, share))
                self._hit_seen = self._hit_met = 0

    def close(self) -> None:
        """Take no new jobs; :meth:`take` returns the queued ones, then None."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def take(self, max_rows: int = 1, compatible: Callable[[Any, Any], bool] | None = None,
             max_delay_s: float = 0.0, timeout: float | None = None,
             admit: Callable[[list, Any, int, float], bool] | None = None,
             floor_s: Callable[[Any], float] | None = None) -> tuple[list, list] | None:
        """Block for work: ``(expired, batch)`` (either may be empty, not both), or None once closed and
        drained (or ``timeout`` s passed with nothing queued).

        ``batch`` is the head job plus the compatible jobs that fit in ``max_rows`` rows, in queue order;
        ``expired`` the jobs met on the way whose deadline passed (they are removed and not run).
        ``admit(batch, job, rows_after, now)`` (optional) may refuse a compatible job that would make the
        batch too slow for a deadline in it (it keeps its place for the next batch). ``floor_s(job)``
        (optional): the seconds ``job`` needs at least (its first exit, by the taking worker's own session:
        called with the queue locked, it must not wait for another thread's inference); a job that cannot
        have them before its deadline while others wait is shed (module docstring). None: shed only the
        expired.
        """
        with self._cond:
            if not self._cond.wait_for(lambda: self._heap or self._closed, timeout):
                return None
            expired: list = []
            batch: list = []
            now = self.clock()
            while self._heap and not batch:
                job = heapq.heappop(self._heap)[3]
                if job.cancelled():
                    continue
                if self._expired(job, now, floor_s, contended=bool(self._heap)):
                    expired.append(job)
                else:
                    batch.append(job)
            if not batch:
                return (expired, batch) if expired or not self._closed else None
            rows = batch[0].rows
            if compatible is not None and rows < max_rows:
                rows = self._gather(batch, rows, max_rows, compatible, expired, now, admit, floor_s)
                if max_delay_s > 0 and rows < max_rows:
                    end = time.monotonic() + max_delay_s
                    while rows < max_rows and not self._closed:
                        left = end - time.monotonic()
                        if left <= 0:
                            break
                        self._cond.wait(left)
                        rows = self._gather(batch, rows, max_rows, compatible, expired, self.clock(), admit,
                                            floor_s)
            return expired, batch

    def start_by(self, first_exit_s: Callable[[Any], float], now: float, lookahead: int = _LOOKAHEAD) -> float | None:
        """The latest moment the worker may still be busy with the run it has just taken so that the requests
        waiting now (the next ``lookahead`` in queue order) can each still reach their first exit by their
        deadlines, served one after another (``first_exit_s(job)`` seconds each): ``min_i(deadline_i - sum of
        the first-exit times of requests 1..i)``; None when none of them has a deadline (or a figure is
        missing). Requests that already cannot reach their first exit (they will be shed) and ``late`` ones
        (they run anyway) do not count; cancelled ones neither. The worker caps its run's deadlines at this
        (``InferencePool``'s ``yield_to_queue``): under contention a request answers at a shallower exit
        rather than make the ones behind it miss theirs. Serving the waiting requests in batches would only
        be faster, so the bound is safe for them."""
        with self._cond:
            waiting = heapq.nsmallest(lookahead, self._heap)
        best: float | None = None
        busy = 0.0
        for entry in waiting:
            job = entry[3]
            if job.cancelled() or job.late or self._expired(job, now, first_exit_s):
                continue  # runs anyway, or cannot make it whatever runs now (shed at its turn)
            try:
                busy += float(first_exit_s(job))
            except Exception:  # noqa: BLE001 - no cost figure: no bound
                return None
            if job.deadline is not None:
                start = job.deadline - busy
                best = start if best is None else min(best, start)
        return best

    def _expired(self, job: Any, now: float, floor_s: Callable[[Any], float] | None = None,
                 contended: bool = True) -> bool:
        """Whether ``job`` is shed: its deadline passed, or (``contended``: others wait) it cannot reach its
        first exit by it (module docstring); never a ``late`` job or one without a deadline."""
        if job.deadline is None or job.late:
            return False
        if now >= job.deadline:
            return True
        if not contended or floor_s is None:
            return False
        try:
            return now + floor_s(job) > job.deadline
        except Exception:  # noqa: BLE001 - no cost figure: shed only what has expired
            return False

    def _gather(self, batch: list, rows: int, max_rows: int, compatible: Callable[[Any, Any], bool],
                expired: list, now: float, admit: Callable[[list, Any, int, float], bool] | None = None,
                floor_s: Callable[[Any], float] | None = None) -> int:
        """Move compatible jobs that fit into ``batch`` (queue order); returns the rows now in it.

        Bounded work, whatever the queue's length (it runs with the queue locked, between two inferences):
        at most ``_SCAN_PER_ROW * max_rows`` entries are looked at (at least ``_SCAN_MIN``), and once ``admit``
        refuses a job whose own deadline is no tighter than the batch's tightest, no job that would bring the
        batch to that many rows or more is offered to it again (the batch's slack, not the job, said no: an
        ``admit`` whose cost grows with the rows, as the server's does, would refuse it too), and
        the scan stops as soon as no job could fit. Under overload EDF's head is the tightest request and its
        slack admits few rows; without these bounds every take re-offered the whole queue to ``admit``
        (400 waiting: 15 ms of the worker's time, more than the inference)."""
        kept: list = []
        head = batch[0]
        tightest = min((j.deadline for j in batch if j.deadline is not None), default=None)
        too_many = max_rows + 1  # rows_after at or above this: refused by the batch's slack
        scan = max(_SCAN_MIN, _SCAN_PER_ROW * max_rows)
        while self._heap and rows < max_rows and rows + 1 < too_many and scan > 0:
            scan -= 1
            entry = heapq.heappop(self._heap)
            job = entry[3]
            if job.cancelled():
                continue
            after = rows + job.rows
            if self._expired(job, now, floor_s):
                expired.append(job)
            elif after > max_rows or after >= too_many or not compatible(head, job):
                kept.append(entry)
            elif admit is None or admit(batch, job, after, now):
                batch.append(job)
                rows = after
                if job.deadline is not None and (tightest is None or job.deadline < tightest):
                    tightest = job.deadline  # less slack: what was refused stays refused
            else:
                kept.append(entry)
                if job.deadline is None or (tightest is not None and job.deadline >= tightest):
                    too_many = min(too_many, after)
        for entry in kept:
            heapq.heappush(self._heap, entry)
        return rows

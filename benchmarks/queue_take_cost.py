"""What one take of the server's queue costs the inference worker when many requests wait behind a tight one.

    python benchmarks/queue_take_cost.py BUNDLE [--waiting 50,200,400] [--repeats 200] [--json out.json]

Contract: the server's own pieces (``EdfQueue``, the worker's slack admission and shedding floor over
:class:`~sdedge.runtime.server.worker._FirstExitCosts` of a real ``AnytimeSession`` on BUNDLE, 1 intra-op
thread), no server and no inference. Each repeat fills a fresh EDF queue with one request whose deadline
leaves its first exit 1.2x the session's own first-exit figure (room for one row, not two) and ``N`` requests
with deadlines a second later (room for a full batch), all compatible, on a clock that stands still; then
times one ``take(max_rows=16)`` (``time.perf_counter``) and counts the calls made to ``admit``. Before the
bounded gathering (commit 795b9bb) a take offered every waiting request to ``admit``: N calls; now a
refusal by the batch's own slack holds for those behind it. Printed and written: per N, the median and p90
take time in microseconds, the admit calls, the rows taken.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sdedge.calibrate import benchmarking as B
from sdedge.common.atomic import write_text_atomic
from sdedge.runtime import AnytimeSession
from sdedge.runtime.server.scheduler import EdfQueue
from sdedge.runtime.server.worker import _FirstExitCosts, _slack_admission


@dataclass
class Waiting:
    deadline: float
    t_enqueued: float
    late: bool = False
    rows: int = 1

    def cancelled(self) -> bool:
        return False


def take_once(costs: _FirstExitCosts, waiting: int, now: float = 1000.0) -> tuple[float, int, int]:
    """One take over a fresh queue: (seconds, admit calls, rows taken)."""
    costs.clear()
    q = EdfQueue(waiting + 1, lambda: now)
    q.put(Waiting(now + 1.2 * costs(1), now))
    for i in range(waiting):
        q.put(Waiting(now + 1.0 + i * 1e-6, now))
    admit_calls = [0]
    admit = _slack_admission(costs)

    def counted(batch, job, rows_after, t):
        admit_calls[0] += 1
        return admit(batch, job, rows_after, t)

    t0 = time.perf_counter()
    got = q.take(16, lambda a, b: True, timeout=0, admit=counted, floor_s=lambda job: costs(job.rows))
    dt = time.perf_counter() - t0
    assert got is not None
    return dt, admit_calls[0], sum(j.rows for j in got[1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("--waiting", default="50,200,400", help="requests waiting behind the tight one")
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(argv)
    session = AnytimeSession(args.bundle, intra_op_threads=1)
    costs = _FirstExitCosts(session)
    contract = B.contract(1, 0, args.repeats, extra=__doc__.split("Contract: ")[1].strip())
    rows = {}
    for n in (int(v) for v in args.waiting.split(",")):
        runs = [take_once(costs, n) for _ in range(args.repeats)]
        us = np.array([r[0] for r in runs]) * 1e6
        rows[n] = {"take_us_p50": round(float(np.percentile(us, 50)), 1),
                   "take_us_p90": round(float(np.percentile(us, 90)), 1),
                   "admit_calls": runs[-1][1], "rows_taken": runs[-1][2]}
        print(f"{n:>5} waiting: take p50 {rows[n]['take_us_p50']} us, p90 {rows[n]['take_us_p90']} us; "
              f"admit called {rows[n]['admit_calls']}x; {rows[n]['rows_taken']} row(s) taken", flush=True)
    first_exit_ms = costs(1) * 1e3
    print(f"# the session's first-exit figure (1 row): {first_exit_ms:.3f} ms; engine {session.engine}")
    session.close()
    if args.json:
        write_text_atomic(args.json, json.dumps({"contract": contract, "first_exit_ms": round(first_exit_ms, 4),
                                                 "engine": session.engine, "by_waiting": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""deadline_vectors.py: traces of the Python deadline rule, for the C++ port to replay bit for bit.

    python native/tests/deadline_vectors.py [OUT.json]   (default: native/tests/vectors/deadline_trace.json)

Drives ``sdedge.runtime.policies.LatencyEstimator`` / ``DeadlinePolicy`` through seeded pseudo-random
sequences of warm-up samples, ``settle``, simulated calls (record each section's time on the rows still
running, ask ``should_stop`` before the next one, shrink the batch, record the overhead) with outliers,
slowdowns and tight budgets (so that stops are charged and samples trimmed), and writes every operation
with what Python answered: each ``should_stop`` decision and, after each operation, the figure, sample
count and trim interval of the cell it touched, plus probes of unmeasured row counts (rule 3), section costs and overheads.
Then a session trace: an ``AnytimeSession`` on a scripted backend and clock (warm-up, then calls of random
rows, budgets, gaps, thresholds and per-row confident exits) with every section time it consumed, in order,
and each call's exits, stop reasons, deadline_met and latency.
``native/tests/unit_deadline.cpp`` replays the file through the C++ classes and session and requires equal
doubles and equal decisions.
Regenerate it after any change to the rules (the C++ test then fails until the port follows).
"""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import numpy as np

from sdedge.runtime import AnytimeSession
from sdedge.runtime.backends.base import Backend
from sdedge.runtime.bundle import Bundle
from sdedge.runtime.manifest import validate_manifest
from sdedge.runtime.policies import DeadlinePolicy, LatencyEstimator
from sdedge.runtime.profile import LatencyProfile, make_profile

K = 3
ROWS = (1, 2, 3, 5, 8, 13)


def trace(name: str, seed: int, calls: int, window: int, quantile: float, with_profile: bool,
          digits: int = 4, heads: bool = False) -> dict:
    """``digits``: the decimals of the section times (0: many equal samples, so ties are exercised);
    ``heads``: sections 1..K-1 have exit heads timed apart (bundle format version 2, rule 8), run in the
    warm-up and in about half the calls."""
    rng = random.Random(seed)
    prof_dict = None
    if with_profile:  # section 2's profile is pessimistic (stops it causes are not charged), 1 and 3 optimistic
        prof_dict = make_profile("trace-dev", "scripted", "fp32", 1,
                                 {b: [[m * (1 + b) / 2] * 5 for m in (0.5, 4.0, 1.5)] for b in (1, 4, 16)}, 0.02, 5)
        prof_dict["created"] = "2026-01-01T00:00:00+00:00"  # the same file on every regeneration
    est = LatencyEstimator(K, window=window, quantile=quantile)
    pol = DeadlinePolicy(est, LatencyProfile.from_json(prof_dict, K) if prof_dict else None)
    ops: list[list] = []

    def cell(s: int, n: int) -> list:  # figure, samples, and the trim interval (rule 4) of a measured cell
        c = est._cells[s].get(n)
        return [est.estimate(s, n), est.count(s, n), None if c is None else c.interval]

    def record(s: int, n: int, ms: float) -> None:
        est.record(s, n, ms)
        ops.append(["r", s, n, ms] + cell(s, n))

    def record_head(s: int, n: int, ms: float) -> None:
        est.record_head(s, n, ms)
        ops.append(["h", s, n, ms] + cell(s, n))

    def probe() -> None:
        s, n = rng.randrange(0, K + 1), rng.randrange(1, 20)
        cost = pol.section_cost_ms(s, n) if s else None
        ops.append(["x", s, n] + cell(s, n) + [cost, pol.overhead_ms(n)])

    base = (1.0, 2.0, 3.0)
    slow = 1.0
    # warm-up at 1 and 8 rows with one pre-empted run now and then, then the lower median
    for rows in (1, 8):
        for _ in range(3):
            for k in range(1, K + 1):
                record(k, rows, round(base[k - 1] * (1 + rows) / 2 * rng.uniform(0.95, 1.1) * (3 if rng.random() < 0.1 else 1), digits))
                if heads and k < K:
                    record_head(k, rows, round(0.1 * base[k - 1] * rows * rng.uniform(0.9, 1.3), digits))
            record(0, rows, round(rng.uniform(0.01, 0.05), 5))
    est.settle()
    ops.append(["settle"])
    for _ in range(8):
        probe()
    now = 1000.0
    for i in range(calls):
        if i % 400 == 0:  # phases: quiet, a busy neighbour (2-4x slower), quiet again
            slow = rng.choice((1.0, 1.0, 2.0, 4.0))
        now += rng.uniform(0.0, 0.5)
        n = rng.choice(ROWS)
        budget = rng.uniform(0.5, 1.2) * sum(base) * (1 + n) / 2
        deadline = now + budget * 1e-3
        t1 = now
        section_ms = 0.0
        for k in range(1, K + 1):
            ms = round(base[k - 1] * (1 + n) / 2 * slow * rng.uniform(0.9, 1.15) * (5 if rng.random() < 0.02 else 1), digits)
            now += ms * 1e-3
            record(k, n, ms)
            section_ms += ms
            if heads and k < K and rng.random() < 0.5:  # the head ran: a threshold there, or a stop
                hms = round(0.1 * base[k - 1] * n * slow * rng.uniform(0.9, 1.3), digits)
                now += hms * 1e-3
                record_head(k, n, hms)
                section_ms += hms
            if k == K:
                break
            if rng.random() < 0.3 and n > 1:  # some rows stop on confidence
                n -= rng.randrange(1, n)
            stop = pol.should_stop(k + 1, n, now, deadline)
            ops.append(["q", k + 1, n, now, deadline, stop] + cell(k + 1, n))
            if stop:
                break
        now += rng.uniform(0.005, 0.03) * 1e-3
        record(0, rng.choice(ROWS), (now - t1) * 1e3 - section_ms)
        if rng.random() < 0.05:
            probe()
        if rng.random() < 0.01:  # bursts of stops with a slack that fits nothing: trims, backoff
            s, m = rng.randrange(2, K + 1), rng.choice(ROWS)
            for _ in range(rng.randrange(10, 300)):
                dl = now + rng.uniform(0.0, 6.0) * 1e-3
                stop = pol.should_stop(s, m, now, dl)
                ops.append(["q", s, m, now, dl, stop] + cell(s, m))
    return {"name": name, "num_sections": K, "window": window, "quantile": quantile, "profile": prof_dict,
            "ops": ops}


# -- the session: scripted section times on a scripted clock (as tests/test_deadline_policy.py) ---------------
class _Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class _TraceBackend(Backend):
    """Handles are the row ids (the input's first value); each section advances the clock by a pseudo-random
    time, logged in order; row r is sure ([5, 0]) from exit stop_at[r] on (0: never)."""

    name = "scripted"

    def __init__(self, clock: _Clock, rng: random.Random) -> None:
        self.clock, self.rng = clock, rng
        self.times: list[float] = []
        self.slow = 1.0
        self.stop_at: list[int] = []

    @property
    def num_sections(self) -> int:
        return K

    @property
    def device_name(self) -> str:
        return "trace-dev"

    def upload(self, x: np.ndarray) -> np.ndarray:
        return x[:, 0, 0, 0].astype(np.int64)

    def run_section(self, index: int, ids: np.ndarray):
        ms = round((1.0, 2.0, 3.0)[index - 1] * (1 + len(ids)) / 2 * self.slow * self.rng.uniform(0.9, 1.15)
                   * (5 if self.rng.random() < 0.02 else 1), 4)
        self.times.append(ms)
        self.clock.t += ms * 1e-3
        z = np.zeros((len(ids), 2), np.float32)
        z[:, 0] = [5.0 if self.stop_at and 1 <= self.stop_at[i] <= index else 0.0 for i in ids.tolist()]
        return (None if index == K else ids), z

    def take_rows(self, ids: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return ids[rows]


def session_trace(seed: int, calls: int, max_batch: int) -> dict:
    rng = random.Random(seed)
    spec = {"name": "image", "shape": [None, 1, 4, 4]}
    sections = [{"index": i, "file": f"sections/s{i}.onnx", "sha256": "0" * 64,
                 "inputs": [dict(spec, name="image" if i == 1 else f"features_{i - 1}")],
                 "outputs": ([{"name": f"features_{i}", "shape": [None, 1, 4, 4]}] if i < K else [])
                 + [{"name": f"logits_{i}", "shape": [None, 2]}]} for i in range(1, K + 1)]
    raw = {"format": "sdedge-bundle", "format_version": 1, "classes": ["a", "b"], "sections": sections,
           "input": dict(spec, preprocess={"mean": [0.0], "std": [1.0], "scale": 1.0}), "files": {}}
    clock = _Clock()
    be = _TraceBackend(clock, rng)
    s = AnytimeSession(Bundle(Path("/nonexistent"), validate_manifest(raw)), backend=be, warmup=3,
                       max_batch=max_batch, clock=clock)
    why = {"confidence": 1, "deadline": 2, "last": 3}
    out = []
    for i in range(calls):
        if i % 150 == 0:
            be.slow = rng.choice((1.0, 1.0, 2.0, 3.0))
        rows = rng.randint(1, max_batch)
        gap = round(rng.uniform(0.0, 3.0), 3)
        budget = round(rng.uniform(0.4, 1.5) * 6.0 * (1 + rows) / 2 * rng.choice((1.0, be.slow)), 4)
        threshold = 0.9 if rng.random() < 0.5 else None
        be.stop_at = [rng.choice((0, 0, 1, 2, 3)) for _ in range(rows)]
        x = np.zeros((rows, 1, 4, 4), np.float32)
        x[:, 0, 0, 0] = np.arange(rows)
        clock.t += gap * 1e-3
        res = s.infer(x, budget_ms=budget, threshold=threshold)
        out.append([rows, gap, budget, threshold, be.stop_at, [[r.exit_index, int(r.deadline_met), why[r.stopped_by]]
                                                               for r in res], res[0].latency_ms])
    cells = [[k, n, s.estimator.estimate(k, n), s.estimator.count(k, n)] for k in range(K + 1)
             for n in range(1, max_batch + 1)]
    return {"max_batch": max_batch, "warmup": 3, "times": be.times, "calls": out, "cells": cells}


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "vectors" / "deadline_trace.json"
    traces = [trace("window 16, no profile", 1, 600, 16, 0.99, False),
              trace("window 256, profile", 2, 600, 256, 0.99, True),
              trace("window 8, p90", 3, 400, 8, 0.9, False),
              trace("window 16, whole milliseconds (ties)", 5, 400, 16, 0.99, False, digits=0),
              trace("window 16, exit heads of their own, profile", 6, 600, 16, 0.99, True, heads=True)]
    out.parent.mkdir(parents=True, exist_ok=True)
    session = session_trace(4, 1200, 8)
    out.write_text(json.dumps({"format": "sdedge-deadline-trace", "traces": traces, "session": session},
                              separators=(",", ":")) + "\n")
    print(f"{out}: {sum(len(t['ops']) for t in traces)} operations")


if __name__ == "__main__":
    main()

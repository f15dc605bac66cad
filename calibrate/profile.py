"""Measure a latency profile of a bundle's sections on this device (``profiles/<device_name>.json``).

For each batch size: ``warmup`` untimed passes, then ``runs`` timed passes through every section in
order; a section's time is the wall time (``time.perf_counter``) of ``Backend.run_section`` alone
(:meth:`Backend.run_chain`'s ``on_section`` figure), the
same quantity the runtime's deadline policy predicts (model only: the input upload is outside the
timer). Statistics (p50/p90/p99/mean) and the file format are those of
:mod:`sdedge.runtime.profile`. The decision overhead comes from
:func:`sdedge.calibrate.benchmarking.decision_overhead` (the session's own time beside the bare chain,
split by a least-squares line into a fixed cost per call and a cost per section): the profile stores
the per-section part as ``decision_overhead_ms`` and the fixed part as ``fixed_per_call_ms``.

Batch sizes: by default 1, 2, 4, 8 and 16 (:data:`DEFAULT_BATCH_SIZES`), those up to the session's
``max_batch`` and ``max_batch`` itself when it is smaller than 16 (:func:`default_batch_sizes`). The runtime's deadline rule
charges a batch of n rows the profile's figure at the nearest profiled size at or above n, or the
largest one scaled linearly (rule 6 of :mod:`sdedge.runtime.policies`), and its cost is the larger of
that prior and the online figure (until that row count has 32 samples of its own), so a profile of batch 1
alone charges every batch n times one row until then,
whatever batching saves. On this project's 2-core CPU that was close to the truth (the fm16 bundle:
section 1's p90 at 8 rows 4.73 ms against 8 x 0.62 ms,
``benchmarks/results/anytime_curve_profile.json``),
but on an accelerator, where a batch can cost little more than one row, it would stop batched calls and the server's
batch admission many times too early.

The file name is the session's ``device_name`` (backend, device, precision and threads), so a profile
is only ever used by the configuration it was measured with; profile several thread counts or
backends by measuring one session per configuration.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from sdedge.calibrate import benchmarking
from sdedge.common.errors import InputError
from sdedge.runtime.profile import LatencyProfile, make_profile, profile_relpath


DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16)


def default_batch_sizes(max_batch: int) -> tuple[int, ...]:
    """The batch sizes profiled when none are given, for a session of at most ``max_batch`` rows."""
    return tuple(sorted({b for b in DEFAULT_BATCH_SIZES if b <= max_batch} | {min(max_batch, DEFAULT_BATCH_SIZES[-1])}))


@dataclass
class ProfileConfig:
    batch_sizes: tuple[int, ...] | None = None  # None: default_batch_sizes(session.max_batch)
    runs: int = 200  # timed passes per batch size
    warmup: int = 20
    overhead_runs: int = 200  # calls per contender when measuring the decision overhead (0: skip)

    def check(self) -> None:
        if self.batch_sizes is not None and (not self.batch_sizes or any(not isinstance(b, int) or b < 1 for b in self.batch_sizes)):
            raise InputError(f"batch sizes must be positive integers, got {self.batch_sizes!r}")
        if self.runs < 5:
            raise InputError(f"profile runs must be at least 5 (percentiles need samples), got {self.runs}")
        if self.warmup < 0 or self.overhead_runs < 0:
            raise InputError("profile warm-up and overhead runs must be >= 0")


def time_sections(backend: Any, x: np.ndarray, runs: int, warmup: int) -> list[list[float]]:
    """Per-section wall times (ms) of ``runs`` passes through every section on batch ``x``."""
    out: list[list[float]] = [[] for _ in range(backend.num_sections)]
    for _ in range(warmup):
        backend.run_chain(x)
    for _ in range(runs):
        backend.run_chain(x, on_section=lambda k, ms, _features: out[k - 1].append(ms))
    return out


def _batch(inputs: np.ndarray, b: int) -> np.ndarray:
    reps = -(-b // len(inputs))
    return np.ascontiguousarray(np.concatenate([inputs] * reps)[:b], np.float32)


def measure_profile(session: Any, inputs: np.ndarray, config: ProfileConfig | None = None) -> dict:
    """A profile dict for ``session``'s backend and device from preprocessed float inputs ``[N, C, H, W]``."""
    cfg = config or ProfileConfig()
    cfg.check()
    inputs = np.asarray(inputs, np.float32)
    if inputs.ndim != 4 or inputs.shape[1:] != tuple(session.input_shape):
        raise InputError(f"profile inputs must be float [N, {', '.join(map(str, session.input_shape))}], "
                         f"got {list(inputs.shape)}")
    be = session.backend
    sizes = sorted(set(cfg.batch_sizes or default_batch_sizes(session.max_batch)))
    if any(b > session.max_batch for b in sizes):
        raise InputError(f"batch sizes {sizes} exceed the session's max_batch {session.max_batch}")
    per_batch = {b: time_sections(be, _batch(inputs, b), cfg.runs, cfg.warmup) for b in sizes}
    per_section_ms, fixed_ms, ovh = 0.0, 0.0, None
    if cfg.overhead_runs:
        ovh = benchmarking.decision_overhead(session, inputs[: min(len(inputs), 64)], runs=cfg.overhead_runs,
                                             warmup=max(5, cfg.overhead_runs // 10))
        per = ovh.get("per_section_us")
        if per is None:
            per = ovh.get("plain_overhead_us_per_section")
        per_section_ms = max(0.0, float(per or 0.0)) * 1e-3
        fixed_ms = max(0.0, float(ovh.get("fixed_per_call_us") or 0.0)) * 1e-3
    prof = make_profile(session.device_name, session.backend_name, getattr(getattr(be, "options", None), "precision", None) or "fp32",
                        getattr(be, "threads", None), per_batch, per_section_ms, cfg.runs)
    prof["fixed_per_call_ms"] = fixed_ms
    prof["warmup"] = cfg.warmup
    prof["timer"] = "time.perf_counter around Backend.run_section (model only; upload outside)"
    if ovh is not None:
        prof["decision_overhead_detail"] = {k: ovh.get(k) for k in ("per_section_us", "fixed_per_call_us",
                                                                     "plain_overhead_us_per_section")}
    LatencyProfile.from_json(prof, session.num_exits)  # the runtime must be able to read what we write
    return prof


def profile_file(prof: dict) -> str:
    return profile_relpath(prof["device"])


def format_profile(prof: dict) -> str:
    """A plain-text table: per batch size and section, p50/p90/p99/mean in ms."""
    lines = [f"latency profile {prof['device']} ({prof['backend']}, {prof.get('precision')}, threads "
             f"{prof.get('threads')}, {prof['runs']} runs): decision overhead {1e3 * prof['decision_overhead_ms']:.1f} us/section"
             f" + {1e3 * prof.get('fixed_per_call_ms', 0.0):.1f} us/call"]
    for b, entry in prof["batch_sizes"].items():
        for s in entry["sections"]:
            lines.append(f"  batch {b:>3} section {s['index']}: p50 {s['p50_ms']:.4f}  p90 {s['p90_ms']:.4f}  "
                         f"p99 {s['p99_ms']:.4f}  mean {s['mean_ms']:.4f} ms")
    return "\n".join(lines)



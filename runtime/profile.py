"""Per-device latency profiles of a bundle's sections (``profiles/<device_name>.json``).

``sdedge calibrate`` measures them on the target and writes them with
:func:`sdedge.runtime.bundle.update_bundle`; :class:`~sdedge.runtime.session.AnytimeSession` reads the
one named after its backend's ``device_name`` and uses it to predict the next section's cost under a
deadline. The file name is the device name, so a profile measured on another device, backend,
thread count or precision is never used by mistake.

File format (``format`` and ``format_version`` checked on read, :func:`sdedge.common.formats.check_format`)::

    {
      "format": "sdedge-profile", "format_version": 1,
      "device": "onnxruntime-cpu-intel-xeon-processor-t2",   # == Backend.device_name == file stem
      "backend": "onnxruntime", "precision": "fp32", "threads": 2,   # threads: null where meaningless
      "batch_sizes": {                                       # keys: batch sizes as strings
        "1": {"sections": [{"index": 1, "p50_ms": 0.21, "p90_ms": 0.24, "p99_ms": 0.31, "mean_ms": 0.22},
                           ...one entry per section, index 1..K]},
        "8": {...}
      },
      "decision_overhead_ms": 0.016,   # the runtime's own time per section (softmax, criterion, deadline check)
      "fixed_per_call_ms": 0.030,      # optional: its time per call (validation, the answer, the result)
      "runs": 500,                      # timed runs per batch size
      "created": "2026-01-01T00:00:00+00:00"
    }

A section's time is the wall time of ``Backend.run_section`` alone (model only); before running the
next section the session also allows ``decision_overhead_ms + fixed_per_call_ms`` for its own work
(or its online measurement of that work, whichever is larger). ``sdedge calibrate``
(:func:`sdedge.calibrate.profile.measure_profile`) measures and writes profiles. Batch sizes missing
from the profile are answered by the next larger one measured, or by scaling the largest measured one
linearly (a pessimistic estimate for batches beyond what was profiled).
"""
from __future__ import annotations

import bisect
import datetime as _dt
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from ..common.errors import BundleError
from ..common.formats import check_format

PROFILE_FORMAT = "sdedge-profile"
PROFILE_VERSION = 1
QUANTILE_KEYS = ("p50_ms", "p90_ms", "p99_ms", "mean_ms")


def profile_relpath(device_name: str) -> str:
    """Bundle-relative path of the profile for ``device_name``."""
    return f"profiles/{device_name}.json"


def _bad(msg: str) -> BundleError:
    return BundleError(f"malformed latency profile: {msg}")


def _ms(v: Any, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise _bad(f"{where} must be a non-negative finite number of milliseconds, got {v!r}")
    return float(v)


@dataclass(frozen=True)
class LatencyProfile:
    """Validated view of a profile file: per batch size, per section, latency quantiles in ms."""

    device: str
    backend: str | None
    precision: str | None
    threads: int | None
    sections: Mapping[int, tuple[Mapping[str, float], ...]]  # batch size -> per-section quantiles
    decision_overhead_ms: float
    runs: int | None
    raw: dict
    fixed_per_call_ms: float = 0.0

    @classmethod
    def from_json(cls, d: Any, num_sections: int, where: str = "latency profile") -> "LatencyProfile":
        check_format(d, PROFILE_FORMAT, (PROFILE_VERSION,), "latency profile", where,
                     "re-run `sdedge calibrate` on the bundle")
        device = d.get("device")
        if not isinstance(device, str) or not device:
            raise _bad("'device' must be a non-empty string")
        bs = d.get("batch_sizes")
        if not isinstance(bs, dict) or not bs:
            raise _bad("'batch_sizes' must be a non-empty object keyed by batch size")
        table: dict[int, tuple[Mapping[str, float], ...]] = {}
        for key, entry in bs.items():
            try:
                b = int(key)
            except (TypeError, ValueError):
                raise _bad(f"batch size key {key!r} is not an integer") from None
            if b < 1:
                raise _bad(f"batch size key {key!r} must be >= 1")
            secs = entry.get("sections") if isinstance(entry, dict) else None
            if not isinstance(secs, list) or len(secs) != num_sections:
                raise _bad(f"batch_sizes[{key!r}].sections must list {num_sections} sections, "
                           f"got {len(secs) if isinstance(secs, list) else type(secs).__name__}")
            rows = []
            for i, s in enumerate(secs, start=1):
                where = f"batch_sizes[{key!r}].sections[{i - 1}]"
                if not isinstance(s, dict) or s.get("index", i) != i:
                    raise _bad(f"{where} must be an object with index {i}")
                q = {k: _ms(s[k], f"{where}.{k}") for k in QUANTILE_KEYS if k in s}
                if not q:
                    raise _bad(f"{where} has none of {', '.join(QUANTILE_KEYS)}")
                rows.append(q)
            table[b] = tuple(rows)
        overhead = _ms(d.get("decision_overhead_ms", 0.0), "decision_overhead_ms")
        fixed = _ms(d.get("fixed_per_call_ms", 0.0), "fixed_per_call_ms")
        threads = d.get("threads")
        runs = d.get("runs")
        return cls(device, d.get("backend"), d.get("precision"),
                   threads if isinstance(threads, int) and not isinstance(threads, bool) else None,
                   table, overhead, runs if isinstance(runs, int) else None, d, fixed)

    @property
    def batch_sizes(self) -> list[int]:
        return sorted(self.sections)

    def section_ms(self, index: int, batch: int, quantile: str = "p99_ms") -> float:
        """Predicted time of 1-based section ``index`` at batch size ``batch``.

        ``quantile`` is one of ``p50_ms``, ``p90_ms``, ``p99_ms``, ``mean_ms``; when the profile lacks
        it, the highest recorded of p99, p90, p50, mean answers instead.
        """
        sizes = self.batch_sizes
        pos = bisect.bisect_left(sizes, batch)
        if pos < len(sizes):
            b, scale = sizes[pos], 1.0
        else:
            b = sizes[-1]
            scale = batch / b
        q = self.sections[b][index - 1]
        for key in (quantile, "p99_ms", "p90_ms", "p50_ms", "mean_ms"):
            if key in q:
                return q[key] * scale
        raise KeyError(quantile)  # unreachable: from_json requires one key


def section_stats(samples_ms: Sequence[float]) -> dict[str, float]:
    """The per-section entry of a profile from raw timings (ms)."""
    a = np.asarray(samples_ms, dtype=np.float64)
    if a.size == 0:
        raise ValueError("no samples")
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99), "mean_ms": float(a.mean())}


def make_profile(device: str, backend: str, precision: str, threads: int | None,
                 per_batch: Mapping[int, Sequence[Sequence[float]]], decision_overhead_ms: float,
                 runs: int) -> dict:
    """Build a profile dict from raw timings: ``per_batch[b][k-1]`` = samples (ms) of section k."""
    return {
        "format": PROFILE_FORMAT, "format_version": PROFILE_VERSION,
        "device": device, "backend": backend, "precision": precision, "threads": threads,
        "batch_sizes": {str(b): {"sections": [dict(index=i, **section_stats(s)) for i, s in enumerate(secs, start=1)]}
                        for b, secs in sorted(per_batch.items())},
        "decision_overhead_ms": float(decision_overhead_ms),
        "runs": int(runs),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def load_profile(bundle: Any, device_name: str) -> LatencyProfile | None:
    """The bundle's profile for ``device_name`` (validated), or None when it has none."""
    raw = bundle.profile(device_name)
    if raw is None:
        return None
    prof = LatencyProfile.from_json(raw, bundle.manifest.num_exits, profile_relpath(device_name))
    if prof.device != device_name:
        raise _bad(f"{profile_relpath(device_name)} says it is for device {prof.device!r}")
    return prof

"""sdedge.calibrate: temperatures, thresholds, latency profiles and anytime curves (torch-free).

Runs on the target device with numpy and :mod:`sdedge.runtime` only (matplotlib lazily, for plots)::

    from sdedge.calibrate import CalibrationConfig, calibrate_bundle
    result = calibrate_bundle("bundle/", config=CalibrationConfig(max_accuracy_drop=1.0))
    print(result.summary())

Modules: :mod:`.temperature` (per-exit temperature scaling), :mod:`.thresholds` (threshold search by
replaying logits), :mod:`.profile` (per-section latency profiles), :mod:`.curves` / :mod:`.plot`
(anytime curves), :mod:`.bench` (``sdedge bench``), :mod:`.datasets` (torch-free calibration data),
:mod:`.api` (``calibrate_bundle``).
"""
from __future__ import annotations

from typing import Any

__all__ = ["CalibrationConfig", "CalibrationResult", "calibrate_bundle", "BenchConfig", "run_bench"]


def __getattr__(name: str) -> Any:  # lazy, so `import sdedge.calibrate` stays cheap
    if name in ("CalibrationConfig", "CalibrationResult", "calibrate_bundle"):
        from . import api

        return getattr(api, name)
    if name in ("BenchConfig", "run_bench"):
        from . import bench

        return getattr(bench, name)
    raise AttributeError(name)

"""Reader of a bundle's ``calibration.json`` (written by ``sdedge calibrate``).

Format (the fields the runtime reads; the calibrator adds its own report fields beside them)::

    {
      "criterion": "max_prob",            # max_prob | entropy | margin (see sdedge.runtime.policies)
      "temperatures": [1.3, 1.1, 1.0],    # one per exit (K), > 0; logits are divided by it before softmax
      "thresholds": [0.93, 0.88, null],   # one per exit, confidence in [0, 1]; null = never stop there on confidence
      "enabled": [true, true, true],      # one per exit; false = this exit never stops a sample on confidence
      ...                                 # method, target, target_met, split, converged, ... (calibrator's report)
    }

The deepest exit always answers whatever its threshold or flag says. Temperatures are applied to
every answer the session gives (``probabilities`` and ``confidence`` are calibrated), thresholds and
``enabled`` only when the caller asks for ``threshold="calibrated"``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .errors import BundleError

CRITERIA = ("max_prob", "entropy", "margin")


def _bad(msg: str) -> BundleError:
    return BundleError(f"malformed calibration.json: {msg}")


@dataclass(frozen=True)
class Calibration:
    criterion: str
    temperatures: tuple[float, ...]
    thresholds: tuple[float | None, ...]
    enabled: tuple[bool, ...]
    raw: dict

    @classmethod
    def from_json(cls, d: Any, num_exits: int) -> "Calibration":
        if not isinstance(d, dict):
            raise _bad(f"top level must be an object, got {type(d).__name__}")
        crit = d.get("criterion", "max_prob")
        if crit not in CRITERIA:
            raise _bad(f"criterion {crit!r} is not one of {', '.join(CRITERIA)}")
        temps = d.get("temperatures", [1.0] * num_exits)
        thr = d.get("thresholds", [None] * num_exits)
        enabled = d.get("enabled", [True] * num_exits)
        for key, v in (("temperatures", temps), ("thresholds", thr), ("enabled", enabled)):
            if not isinstance(v, list) or len(v) != num_exits:
                raise _bad(f"{key} must be a list of {num_exits} values (one per exit), got {v!r}")
        for i, t in enumerate(temps, start=1):
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
                raise _bad(f"temperatures[{i - 1}] (exit {i}) must be a positive finite number, got {t!r}")
        for i, t in enumerate(thr, start=1):
            if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 <= t <= 1.0):
                raise _bad(f"thresholds[{i - 1}] (exit {i}) must be a number in [0, 1] or null, got {t!r}")
        for i, e in enumerate(enabled, start=1):
            if not isinstance(e, bool):
                raise _bad(f"enabled[{i - 1}] (exit {i}) must be true or false, got {e!r}")
        return cls(crit, tuple(float(t) for t in temps), tuple(None if t is None else float(t) for t in thr),
                   tuple(enabled), d)


def load_calibration(bundle: Any) -> Calibration | None:
    """The bundle's calibration (validated), or None when it has none."""
    raw = bundle.calibration
    if raw is None:
        return None
    return Calibration.from_json(raw, bundle.manifest.num_exits)

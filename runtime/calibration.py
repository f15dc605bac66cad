"""``calibration.json``: its format (owned here), the document the calibrator writes, and its reader.

Format ``sdedge-calibration`` version 1 (the fields the runtime reads; the calibrator adds its own report
fields beside them)::

    {
      "format": "sdedge-calibration",     # FORMAT; anything else is refused
      "format_version": 1,                # FORMAT_VERSION; another version is refused (FormatVersionError)
      "criterion": "max_prob",            # max_prob | entropy | margin (see sdedge.runtime.policies)
      "temperatures": [1.3, 1.1, 1.0],    # one per exit (K), > 0; logits are divided by it before softmax
      "thresholds": [0.93, 0.88, null],   # one per exit, confidence in [0, 1]; null = never stop there on confidence
      "enabled": [true, true, true],      # one per exit; false = this exit never stops a sample on confidence
      ...                                 # method, target, target_met, split, converged, ... (calibrator's report)
    }

The writer (``sdedge calibrate``, :mod:`sdedge.calibrate.api`) builds the document with
:func:`calibration_document` and checks it with :func:`parse_calibration` before writing; the session
reads it with :func:`load_calibration`. Both go through this module, so they agree on one format.

The deepest exit always answers whatever its threshold or flag says. Temperatures are applied to
every answer the session gives (``probabilities`` and ``confidence`` are calibrated), thresholds and
``enabled`` only when the caller asks for ``threshold="calibrated"``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..common.errors import BundleError
from ..common.formats import check_format as check_format_header
from .bundle import CALIBRATION_NAME

FORMAT = "sdedge-calibration"
FORMAT_VERSION = 1
CRITERIA = ("max_prob", "entropy", "margin")
_FLOAT32_TINY, _FLOAT32_MAX = float(np.finfo(np.float32).tiny), float(np.finfo(np.float32).max)  # temperatures
# divide float32 logits: within float32's normal range
RUNTIME_FIELDS = ("format", "format_version", "criterion", "temperatures", "thresholds", "enabled")


def _bad(msg: str, where: str) -> BundleError:
    return BundleError(f"malformed {where}: {msg}")


def calibration_document(criterion: str, temperatures: Sequence[float], thresholds: Sequence[float | None],
                         enabled: Sequence[bool], **report: Any) -> dict[str, Any]:
    """The ``calibration.json`` document: format header, the fields the runtime reads, then ``report``.

    ``report`` holds the writer's own fields (method, target, data, warnings, ...); it may not redefine
    the header or the runtime's fields. The result is not validated here: :func:`parse_calibration`
    does that, exactly as the reader will.
    """
    clash = sorted(set(report) & set(RUNTIME_FIELDS))
    if clash:
        raise ValueError(f"report fields {clash} would overwrite calibration.json's own fields")
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "criterion": criterion,
            "temperatures": list(temperatures), "thresholds": list(thresholds), "enabled": list(enabled), **report}


def check_format(d: Any, where: str = CALIBRATION_NAME) -> None:
    """Refuse a document that is not ``calibration.json`` format version :data:`FORMAT_VERSION`
    (:func:`sdedge.common.formats.check_format`; every message names ``where``, the file)."""
    check_format_header(d, FORMAT, (FORMAT_VERSION,), "calibration", where, "re-run `sdedge calibrate` on the bundle")


@dataclass(frozen=True)
class Calibration:
    """Validated view of ``calibration.json``: the runtime's fields, typed; ``raw`` keeps every field."""

    criterion: str
    temperatures: tuple[float, ...]
    thresholds: tuple[float | None, ...]
    enabled: tuple[bool, ...]
    raw: dict

    @classmethod
    def from_json(cls, d: Any, num_exits: int, where: str = CALIBRATION_NAME) -> "Calibration":
        """Check the runtime's fields of ``d`` for a ``num_exits``-exit bundle (not the format header:
        :func:`parse_calibration` checks both)."""
        if not isinstance(d, dict):
            raise _bad(f"top level must be an object, got {type(d).__name__}", where)
        crit = d.get("criterion", "max_prob")
        if crit not in CRITERIA:
            raise _bad(f"criterion {crit!r} is not one of {', '.join(CRITERIA)}", where)
        temps = d.get("temperatures", [1.0] * num_exits)
        thr = d.get("thresholds", [None] * num_exits)
        enabled = d.get("enabled", [True] * num_exits)
        for key, v in (("temperatures", temps), ("thresholds", thr), ("enabled", enabled)):
            if not isinstance(v, list) or len(v) != num_exits:
                raise _bad(f"{key} must be a list of {num_exits} values (one per exit), got {v!r}", where)
        for i, t in enumerate(temps, start=1):
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not _FLOAT32_TINY <= t <= _FLOAT32_MAX:
                raise _bad(f"temperatures[{i - 1}] (exit {i}) must be a positive finite number within float32's "
                           f"normal range ({_FLOAT32_TINY:.3g}..{_FLOAT32_MAX:.3g}), got {t!r}", where)
        for i, t in enumerate(thr, start=1):
            if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 <= t <= 1.0):
                raise _bad(f"thresholds[{i - 1}] (exit {i}) must be a number in [0, 1] or null, got {t!r}", where)
        for i, e in enumerate(enabled, start=1):
            if not isinstance(e, bool):
                raise _bad(f"enabled[{i - 1}] (exit {i}) must be true or false, got {e!r}", where)
        return cls(crit, tuple(float(t) for t in temps), tuple(None if t is None else float(t) for t in thr),
                   tuple(enabled), d)


def parse_calibration(d: Any, num_exits: int, where: str = CALIBRATION_NAME) -> Calibration:
    """A whole ``calibration.json`` document, format header and fields, checked as the reader checks it."""
    check_format(d, where)
    return Calibration.from_json(d, num_exits, where)


def load_calibration(bundle: Any) -> Calibration | None:
    """The bundle's calibration (validated), or None when it has none."""
    raw = bundle.calibration
    if raw is None:
        return None
    return parse_calibration(raw, bundle.manifest.num_exits, str(bundle.path / CALIBRATION_NAME))

"""Exit policies: when a sample stops (confident enough, or out of time) and how its answer is formed.

Confidence criteria. Each maps a probability vector ``p`` over ``C`` classes to a *confidence* in
``[0, 1]`` where larger always means more sure, so one threshold semantics serves all three:

* ``max_prob``: ``max_i p_i`` (1/C for a uniform ``p``, 1 for a one-hot);
* ``entropy``:  ``1 - H(p) / log C`` with ``H(p) = -sum_i p_i log p_i`` (0 uniform, 1 one-hot);
* ``margin``:   ``p_(1) - p_(2)``, the top-1 minus the top-2 probability (0 tie, 1 one-hot).

``p`` is the temperature-scaled softmax of an exit's logits (``softmax(z / T_k)``, with ``T_k`` from
``calibration.json``, 1 without one). A sample stops at exit ``k`` when ``confidence >= threshold_k``.
With ``answer="ensemble"`` the answer at exit ``k`` is the mean of the (temperature-scaled) softmax of
exits ``1..k`` and the confidence is that of the mean, so the threshold tests the answer returned.

Deadline. Before section ``k+1`` the runtime predicts its cost: the bundle's latency profile for this
device (``profiles/<device_name>.json``, a tail quantile, p99 by default) when present, and online
measurements (a high quantile of a ring buffer of recent run times of that section at that batch-size
bucket). With both, the larger wins: the profile is the prior, the online figure catches a device that
is slower now than when it was profiled (thermal throttling, a busy neighbour); online figures older
than a minute are forgotten so a section once measured slow gets measured again. The runtime's own time
(validation, softmax, policy, building the results) is measured online and added. It stops when
``now + cost + overhead > deadline``. Exit 1 is the floor: it always runs, so there is always an answer,
and ``deadline_met`` tells whether the deadline held. With both policies, whichever stops first wins.
:func:`replay` evaluates the confidence policy on precomputed logits of every exit (array code, for
calibration and evaluation) and decides exactly what :class:`~sdedge.runtime.session.AnytimeSession`
decides live.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from numbers import Real
from typing import Any, Callable, Sequence

import numpy as np

from .calibration import CRITERIA, Calibration
from ..common.errors import PolicyError
from .profile import LatencyProfile

ANSWERS = ("last", "ensemble")

__all__ = ["ANSWERS", "CRITERIA", "ConfidencePolicy", "DeadlinePolicy", "LatencyEstimator", "ReplayResult",
           "batch_bucket", "check_budget_ms", "check_criterion", "check_threshold", "confidence", "max_prob_of_row",
           "replay", "softmax"]


# -- the request parameters (budget, threshold, criterion), checked here for the session, the server's
# -- defaults (ServerConfig) and the server's requests (protocol) alike; ``where`` names the parameter.
def check_criterion(criterion: Any, where: str = "criterion") -> str:
    """A confidence criterion name (one of :data:`CRITERIA`)."""
    if not isinstance(criterion, str) or criterion not in CRITERIA:
        at = "" if where == "criterion" else f" ({where})"
        raise PolicyError(f"unknown confidence criterion {criterion!r}{at}; expected one of {', '.join(CRITERIA)}")
    return criterion


def check_threshold(value: Any, where: str = "threshold", calibrated: bool = False) -> Any:
    """A confidence threshold: a real number in [0, 1] (every criterion's confidence lives there), as a
    float; with ``calibrated`` also the string ``"calibrated"`` (calibration.json's thresholds), as is."""
    if calibrated and isinstance(value, str) and value == "calibrated":
        return value
    alt = ' or "calibrated"' if calibrated else ""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise PolicyError(f"{where} must be a number in [0, 1]{alt}, got {value!r}")
    v = _as_float(value)
    if not (0.0 <= v <= 1.0):  # also refuses NaN
        raise PolicyError(f"{where} must be in [0, 1]{alt} (confidence is 1 - H/log C, max prob or top-1 minus "
                          f"top-2 prob), got {value!r}")
    return v


def check_budget_ms(value: Any, where: str = "budget_ms") -> float:
    """A latency budget: a positive, finite real number of milliseconds, as a float."""
    v = math.nan if isinstance(value, bool) or not isinstance(value, Real) else _as_float(value)
    if not (math.isfinite(v) and v > 0):
        raise PolicyError(f"{where} must be a positive finite number of milliseconds, got {value!r}")
    return v


def _as_float(value: Real) -> float:
    try:
        return float(value)
    except OverflowError:  # an int beyond float range (e.g. 10**400 from JSON)
        return math.inf if value > 0 else -math.inf


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` (float32, numerically stable)."""
    z = logits if temperature == 1.0 else logits / np.float32(temperature)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z, dtype=np.float32)
    e /= e.sum(axis=-1, keepdims=True)
    return e


def confidence(probs: np.ndarray, criterion: str) -> np.ndarray:
    """Confidence in [0, 1] of each row of ``probs`` under ``criterion`` (see the module docstring)."""
    if criterion == "max_prob":
        return probs.max(axis=-1)
    if criterion == "margin":
        top2 = np.partition(probs, probs.shape[-1] - 2, axis=-1)[..., -2:]
        return top2[..., 1] - top2[..., 0]
    if criterion == "entropy":
        c = probs.shape[-1]
        plogp = probs * np.log(np.maximum(probs, np.float32(1e-30)))
        return np.clip(1.0 + plogp.sum(axis=-1) / np.float32(math.log(c)), 0.0, 1.0).astype(np.float32)
    raise PolicyError(f"unknown confidence criterion {criterion!r}; expected one of {', '.join(CRITERIA)}")


def max_prob_of_row(logits_row: np.ndarray, temperature: float = 1.0) -> float:
    """``max_prob`` confidence of one row of logits without forming the probabilities.

    The largest probability is ``1 / sum(exp(z - max z))``; computed in float32 this is bit-identical
    to ``confidence(softmax(logits, T), "max_prob")`` (the hot path of a single image relies on it).
    """
    z = logits_row if temperature == 1.0 else logits_row / np.float32(temperature)
    return float(np.float32(1.0) / np.exp(z - z.max()).sum())


@dataclass(frozen=True)
class ConfidencePolicy:
    """Per-exit temperatures and thresholds under one criterion; ``None`` = no confidence stop there."""

    criterion: str
    thresholds: tuple[float | None, ...]
    temperatures: tuple[float, ...]
    # the thresholds rounded to float32, the precision confidences are compared in (see :meth:`step`)
    _thresholds32: tuple[float | None, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_thresholds32",
                           tuple(None if t is None else float(np.float32(t)) for t in self.thresholds))

    @property
    def num_exits(self) -> int:
        return len(self.temperatures)

    @property
    def active(self) -> bool:
        return any(t is not None for t in self.thresholds[:-1])

    @classmethod
    def build(cls, num_exits: int, threshold: Any = None, criterion: str | None = None,
              calibration: Calibration | None = None, default_criterion: str = "max_prob") -> "ConfidencePolicy":
        """Resolve a caller's ``threshold`` argument.

        ``threshold`` is ``None`` (no confidence stop: run to the deepest exit unless a deadline stops
        earlier), a number in [0, 1] (the same threshold at every exit but the last), a sequence of
        K-1 or K numbers or ``None`` (per exit), or ``"calibrated"`` (the thresholds and ``enabled``
        flags of ``calibration.json``, under its criterion). Temperatures come from the calibration
        whenever there is one.
        """
        temps = calibration.temperatures if calibration else (1.0,) * num_exits
        if isinstance(threshold, str):
            if threshold != "calibrated":
                raise PolicyError(f"threshold must be a number in [0, 1], a per-exit list, None or 'calibrated'; "
                                  f"got {threshold!r}")
            if calibration is None:
                raise PolicyError("threshold='calibrated' needs calibration.json in the bundle; run `sdedge calibrate`")
            if criterion is not None and criterion != calibration.criterion:
                raise PolicyError(f"the calibrated thresholds are for criterion {calibration.criterion!r}, "
                                  f"not {criterion!r}; pass criterion={calibration.criterion!r} or your own threshold")
            thr = tuple(t if on else None for t, on in zip(calibration.thresholds, calibration.enabled))
            return cls(calibration.criterion, thr[:-1] + (None,), temps)
        crit = check_criterion(criterion if criterion is not None else default_criterion)
        if threshold is None:
            thr: tuple[float | None, ...] = (None,) * num_exits
        elif isinstance(threshold, (Sequence, np.ndarray)):
            vals = list(threshold)
            if len(vals) not in (num_exits - 1, num_exits):
                raise PolicyError(f"a per-exit threshold list needs {num_exits - 1} or {num_exits} values "
                                  f"(one per exit), got {len(vals)}")
            thr = tuple(None if v is None else check_threshold(v, f"threshold[{i}] (exit {i + 1})")
                        for i, v in enumerate(vals))
            thr = thr[:num_exits - 1] + (None,)
        else:
            t = check_threshold(threshold)
            thr = (t,) * (num_exits - 1) + (None,)
        return cls(crit, thr, temps)

    def probs(self, exit_index: int, logits: np.ndarray) -> np.ndarray:
        return softmax(logits, self.temperatures[exit_index - 1])

    def stop_mask(self, exit_index: int, conf: np.ndarray) -> np.ndarray | None:
        """Which rows stop on confidence at 1-based ``exit_index`` (None: no threshold there)."""
        t = self.thresholds[exit_index - 1]
        return None if t is None else conf >= t

    def step(self, exit_index: int, logits: np.ndarray, answer_probs: np.ndarray | None = None
             ) -> tuple[np.ndarray | None, np.ndarray, int] | None:
        """The confidence decision at one exit: ``(stop, confidence, n_stop)``, or None (no threshold).

        ``confidence`` is each row's, ``n_stop`` how many rows stop, and ``stop`` the mask of those rows
        when it splits the batch (None when all or none stop). ``answer_probs`` are the answer's
        probabilities where the caller forms them itself (``answer="ensemble"``); otherwise the answer is
        the temperature-scaled softmax of ``logits``, and one row under ``max_prob`` takes the scalar fast
        path that forms no probabilities (:func:`max_prob_of_row`, bit-identical). Either way a row stops
        where :meth:`stop_mask` (the rule :func:`replay` applies) says so: a float32 confidence against the
        threshold rounded to float32.
        """
        t = self._thresholds32[exit_index - 1]
        if t is None:
            return None
        if answer_probs is None and logits.shape[0] == 1 and self.criterion == "max_prob":
            c = max_prob_of_row(logits[0], self.temperatures[exit_index - 1])
            return None, np.array([c], np.float32), int(c >= t)
        if answer_probs is None:
            answer_probs = self.probs(exit_index, logits)
        conf = confidence(answer_probs, self.criterion)
        stop = self.stop_mask(exit_index, conf)
        n_stop = int(np.count_nonzero(stop))
        return (stop if 0 < n_stop < conf.shape[0] else None), conf, n_stop


def batch_bucket(n: int) -> int:
    """Batch sizes are grouped in power-of-two buckets (1, 2, 4, 8, ...) for latency statistics."""
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


class _Ring:
    """Fixed-size ring buffer of recent timings with a cached high quantile."""

    __slots__ = ("buf", "n", "pos", "q", "dirty", "quantile", "refresh", "last")

    def __init__(self, size: int, quantile: float, refresh: int) -> None:
        self.buf = np.zeros(size, dtype=np.float64)
        self.n = self.pos = self.dirty = 0
        self.q = 0.0
        self.quantile = quantile
        self.refresh = refresh
        self.last = 0.0  # clock time of the newest sample

    def add(self, v: float, now: float) -> None:
        self.last = now
        self.buf[self.pos] = v
        self.pos = (self.pos + 1) % self.buf.size
        if self.n < self.buf.size:
            self.n += 1
        self.dirty += 1
        # refresh the quantile periodically, and at once when a sample lands above it (react fast upward)
        if v > self.q or self.dirty >= self.refresh:
            n = self.n
            idx = min(n - 1, math.ceil(self.quantile * (n - 1)))  # the "higher" quantile: an observed value
            self.q = float(np.partition(self.buf[:n], idx)[idx])
            self.dirty = 0


class LatencyEstimator:
    """Online per-section latency estimates: a high quantile of the last ``window`` runs per batch bucket.

    Slot 0 holds the runtime's own per-call time outside the sections (the decision overhead).
    Measurements not refreshed for ``max_age_s`` seconds are forgotten: a section that a slow spell
    made look too expensive would otherwise never run again, so never be measured again. After that
    the estimate falls back to the profile, or to none, and the next call that may run the section
    measures it afresh (at the risk of one late answer per ``max_age_s``).
    """

    def __init__(self, num_sections: int, window: int = 256, quantile: float = 0.99, min_samples: int = 3,
                 refresh: int = 16, max_age_s: float = 60.0, clock: Callable[[], float] = time.perf_counter) -> None:
        if not 0.5 <= quantile <= 1.0:
            raise PolicyError(f"latency quantile must be in [0.5, 1], got {quantile!r}")
        if window < 8:
            raise PolicyError(f"latency window must hold at least 8 samples, got {window!r}")
        self.num_sections = num_sections
        self.window, self.quantile, self.min_samples, self.refresh = window, quantile, min_samples, refresh
        self.max_age_s, self.clock = max_age_s, clock
        self._rings: list[dict[int, _Ring]] = [dict() for _ in range(num_sections + 1)]

    def record(self, section: int, batch: int, ms: float) -> None:
        """Record one run of 1-based ``section`` (0 = overhead) on ``batch`` rows taking ``ms``."""
        rings = self._rings[section]
        b = 1 if batch <= 1 else batch_bucket(batch)
        ring = rings.get(b)
        if ring is None:
            ring = rings[b] = _Ring(self.window, self.quantile, self.refresh)
        ring.add(ms, self.clock())

    def reset(self, section: int | None = None) -> None:
        """Forget the measurements of one section (0 = overhead), or of all when ``section`` is None."""
        for i in range(self.num_sections + 1) if section is None else (section,):
            self._rings[i].clear()

    def count(self, section: int, batch: int) -> int:
        ring = self._rings[section].get(batch_bucket(batch))
        return 0 if ring is None else ring.n

    def estimate(self, section: int, batch: int) -> float | None:
        """High-quantile time (ms) of ``section`` at ``batch``; None when nothing was measured.

        An unmeasured bucket borrows the next larger measured one, or scales the largest smaller one
        linearly by the bucket ratio (pessimistic).
        """
        rings = self._rings[section]
        b = 1 if batch <= 1 else batch_bucket(batch)
        ring = rings.get(b)
        oldest = self.clock() - self.max_age_s
        if ring is not None and ring.n >= self.min_samples and ring.last >= oldest:
            return ring.q
        for k in [k for k, r in rings.items() if r.last < oldest]:
            del rings[k]  # stale: forget it (see the class docstring)
        ok = [k for k, r in rings.items() if r.n >= self.min_samples]
        if not ok:
            return None
        larger = [k for k in ok if k > b]
        if larger:
            return rings[min(larger)].q
        k = max(ok)
        return rings[k].q * (b / k)


class DeadlinePolicy:
    """Decides before each next section whether it still fits before the deadline."""

    def __init__(self, estimator: LatencyEstimator, profile: LatencyProfile | None = None,
                 profile_quantile: str = "p99_ms", margin_ms: float = 0.0) -> None:
        self.estimator = estimator
        self.profile = profile
        self.profile_quantile = profile_quantile
        self.margin_ms = float(margin_ms)

    def section_cost_ms(self, section: int, batch: int) -> float:
        """Predicted time of 1-based ``section`` at ``batch`` rows (0.0 when nothing is known yet)."""
        est = self.estimator.estimate(section, batch)
        if self.profile is not None:
            p = self.profile.section_ms(section, batch, self.profile_quantile)
            est = p if est is None else max(p, est)
        return 0.0 if est is None else est

    def overhead_ms(self, batch: int) -> float:
        est = self.estimator.estimate(0, batch) or 0.0
        if self.profile is not None:
            est = max(est, self.profile.decision_overhead_ms + self.profile.fixed_per_call_ms)
        return est + self.margin_ms

    def should_stop(self, next_section: int, batch: int, now: float, deadline: float) -> bool:
        """True when section ``next_section`` on ``batch`` rows would end after ``deadline`` (perf_counter s)."""
        cost = self.section_cost_ms(next_section, batch) + self.overhead_ms(batch)
        return now + cost * 1e-3 > deadline


@dataclass
class ReplayResult:
    exit_index: np.ndarray  # [B] int, 1-based
    label: np.ndarray  # [B] int
    probabilities: np.ndarray  # [B, C] the answer's probabilities
    confidence: np.ndarray  # [B]
    exit_confidences: np.ndarray  # [K, B] confidence of the answer at every exit


def exit_answers(all_logits: np.ndarray, policy: ConfidencePolicy, answer: str = "last") -> tuple[np.ndarray, np.ndarray]:
    """Answer probabilities [K, B, C] and confidences [K, B] at every exit, as the session forms them."""
    if answer not in ANSWERS:
        raise PolicyError(f"answer must be one of {', '.join(ANSWERS)}, got {answer!r}")
    k = all_logits.shape[0]
    probs = np.stack([policy.probs(i + 1, np.asarray(all_logits[i], np.float32)) for i in range(k)])
    if answer == "ensemble":
        acc = np.zeros_like(probs[0])
        for i in range(k):
            acc = acc + probs[i]
            probs[i] = acc / np.float32(i + 1)
    conf = np.stack([confidence(probs[i], policy.criterion) for i in range(k)])
    return probs, conf


def replay(all_logits: np.ndarray, policy: ConfidencePolicy, answer: str = "last") -> ReplayResult:
    """Where each sample exits under ``policy`` given every exit's logits ``[K, B, C]`` (no deadline)."""
    all_logits = np.asarray(all_logits)
    if all_logits.ndim != 3 or all_logits.shape[0] != policy.num_exits:
        raise PolicyError(f"expected logits of shape [K={policy.num_exits}, B, C], got {list(all_logits.shape)}")
    probs, conf = exit_answers(all_logits, policy, answer)
    k, b = conf.shape
    stop = np.zeros((k, b), dtype=bool)
    for i in range(k - 1):
        m = policy.stop_mask(i + 1, conf[i])
        if m is not None:
            stop[i] = m
    stop[-1] = True
    first = stop.argmax(axis=0)
    cols = np.arange(b)
    p = probs[first, cols]
    return ReplayResult(first + 1, p.argmax(axis=-1), p, conf[first, cols], conf)

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

Deadline. Before section ``k+1`` of a call whose rows still running number ``n``, the runtime predicts
the section's cost and stops when ``now + (cost + overhead) > deadline``; ``now`` is the current time
(not the call's start). Exit 1 is the floor: it always runs, so there is always an answer, and
``deadline_met`` tells whether the deadline held. With both policies, whichever stops first wins. The
figures, per *cell* = (section s, exact row count n), s = 0 being the runtime's own time per call
(validation, softmax, policy, results: the ``overhead``), follow these rules, deterministic in the
sequence of samples and decisions (no clock enters them; the C++ core repeats them exactly):

1. *Samples.* Every run of section s on n rows appends its time to cell (s, n), which keeps its last
   ``W`` samples (``latency_window``, 256). Nothing is ever dropped for age: an idle minute changes no
   figure, and a figure never falls back to "unknown" (a stale figure is re-measured when a call's slack
   covers it, as any other).
2. *A cell's figure* is ``max(tail, recent)``: ``tail`` is the "higher" ``q``-quantile of its samples
   (``latency_quantile``, 0.99: the sample at index ``ceil(q * (m - 1))`` of the m sorted samples) and
   ``recent`` the larger of its last two samples, so one slow run is felt by the very next decision
   (a p99 over 256 samples alone needs three).
3. *Row counts.* A count never measured borrows from the measured counts of that section: the smallest
   larger count's figure (more rows never cost less) or the largest smaller count's figure times
   ``n / m`` (the cost per row never grows with the batch), the smaller of the two when both exist. A
   section with no sample at all has no online figure (only before its first run: the warm-up runs it).
4. *Coming down.* A stop before section s on n rows is charged to cell (s, n) when that cell has samples,
   its figure made the cost not fit, and the profile's figure alone (if any) would have fitted
   (``now + (profile + overhead) <= deadline``); a borrowed figure (rule 3) charges nothing. When a cell's
   charged stops since its last sample or trim reach its ``interval`` (16 at first), its largest sample is
   removed (the oldest of equal ones; never its last sample) and the count restarts: an outlier that
   keeps a section from running is forgiven one sample at a time, and the section runs again once the
   slack covers the lowered figure. The cell's next sample judges the trim: above the figure right after
   the trim, ``interval`` doubles (up to 2048: a slowdown that persists costs ever fewer late calls);
   otherwise it returns to 16.
5. *Warm-up* (at 1 row and at ``max_batch`` rows: one untimed run of every section, then ``warmup``
   calls; the counts in between borrow by rule 3 until live calls measure them) leaves in each cell only the lower median of its
   warm-up samples (the sample at index ``(m - 1) // 2`` of the m sorted): one pre-empted warm-up run does
   not count.
6. *The cost* of section s on n rows is the larger of the profile's figure for this device
   (``profiles/<device_name>.json``, its p90 at the nearest profiled batch size at or above n, or the
   largest one scaled linearly) and the online figure (rules 2-3); either alone when only one exists,
   0 when neither does. The profile is the prior; the online figure catches a device slower now than
   when profiled (thermal throttling, a busy neighbour) and carries the tail. The prior is the p90, not
   the p99: a profile's p99 over a few hundred runs records the scheduler's pre-emptions (on the 2-core
   VM here 4.6-4.8 ms against p50s of 0.46-0.67 ms per section: ``benchmarks/results/fm16_bundle_profile.json``),
   and since nothing lowers a profile figure (rule 4 forgives online samples only), a p99 prior kept every
   call at exit 1 under budgets up to the full network's p50 (``benchmarks/results/deadline_compliance.json``,
   steady frames: depth 0.360 of the oracle's with the p99 prior, 0.712 with the p90 prior). The prior
   steps aside once the cell has ``PRIOR_SAMPLES`` (32) samples of its own: from then on the online figure
   alone is the cost, so a device faster now than when it was profiled (a profile taken on a busy machine)
   is no longer held to the profile's figures; a slower one never was.
7. *The overhead* is the online figure of cell (0, n) or, when larger, the profile's
   ``decision_overhead_ms + fixed_per_call_ms`` (which steps aside as the prior of rule 6 does, once
   cell (0, n) has ``PRIOR_SAMPLES`` samples).
8. *Heads of their own* (bundle format version 2: the exit heads of sections 1..K-1 are graphs apart from
   their trunks, and a call runs a head only where it needs that exit's logits: a confidence threshold
   there, the ensemble answer, or a stop). Trunk and head are timed apart, each into its own cells by
   rules 1-3 and 5 (rule 4 trims trunk cells only); a section's online figure is its trunk's plus its
   head's (a head not measured yet adds nothing), since going on to section s must leave time to stop
   there. The profile's figure stays the section with its head (``sdedge calibrate`` times both).
9. *The whole network at once.* A call with a deadline and nothing else (no confidence stop before the
   deepest exit, for any row; answer "last"; rows with deadlines of their own count by the earliest) on
   a backend that loaded ``full.onnx`` runs that one graph when, at its start, the whole chain fits:
   ``now + (full + overhead) <= deadline``
   with ``full`` the larger of the sum of every section's cost (rule 6, heads included) and the online
   figure of the full graph itself (its own cells, rules 1-3 and 5: a slowdown of the whole graph is felt
   as any section's is). It answers at the deepest exit, where the chain would have, without the
   intermediate heads and the per-section runs; when the whole chain does not fit, the sections run and
   decide as above.

:func:`replay` evaluates the confidence policy on precomputed logits of every exit (array code, for
calibration and evaluation) and decides exactly what :class:`~sdedge.runtime.session.AnytimeSession`
decides live.
"""
from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import dataclass, field
from numbers import Real
from typing import Any, Sequence

import numpy as np

from .calibration import CRITERIA, Calibration
from ..common.errors import PolicyError
from .profile import LatencyProfile

ANSWERS = ("last", "ensemble")

__all__ = ["ANSWERS", "CRITERIA", "ConfidencePolicy", "DeadlinePolicy", "LatencyEstimator", "ReplayResult",
           "check_budget_ms", "check_criterion", "check_threshold", "confidence", "max_prob_of_row",
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
    def thresholds32(self) -> tuple[float | None, ...]:
        """The thresholds rounded to float32, as confidences are compared against them."""
        return self._thresholds32

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


    def step_rows(self, exit_index: int, logits: np.ndarray, thresholds32: np.ndarray,
                  answer_probs: np.ndarray | None = None) -> tuple[np.ndarray | None, np.ndarray, int] | None:
        """As :meth:`step`, each row against its own float32 threshold (``thresholds32[i]``, NaN: none for
        that row): the decision of a batch whose rows came from different requests."""
        if np.isnan(thresholds32).all():
            return None
        if answer_probs is None:
            answer_probs = self.probs(exit_index, logits)
        conf = confidence(answer_probs, self.criterion)
        stop = conf >= thresholds32  # NaN compares False: no stop
        n_stop = int(np.count_nonzero(stop))
        return (stop if 0 < n_stop < conf.shape[0] else None), conf, n_stop


# -- the deadline policy: online latency figures and the decision before each next section ------------------
PROBE_FIRST = 16  # deadline stops of a cell between two trims of its largest sample, at first ...
PROBE_MAX = 2048  # ... doubled after each trim that the next run proved wrong, up to this


class _Cell:
    """The measurements of one section at one exact row count (rules 1-4 of the module docstring)."""

    __slots__ = ("order", "ranked", "window", "quantile", "fig", "skips", "interval", "trimmed_to")

    def __init__(self, window: int, quantile: float) -> None:
        self.order: deque[float] = deque()  # the samples, oldest first
        self.ranked: list[float] = []  # the same samples, sorted
        self.window, self.quantile = window, quantile
        self.fig = 0.0  # the cell's figure (rule 2), kept current
        self.skips = 0  # deadline stops charged to this cell since its last sample or trim (rule 4)
        self.interval = PROBE_FIRST  # stops between trims (rule 4)
        self.trimmed_to: float | None = None  # the figure right after a trim, until the next sample

    def _refigure(self) -> None:
        r, o = self.ranked, self.order
        tail = r[min(len(r) - 1, math.ceil(self.quantile * (len(r) - 1)))]  # "higher" quantile: a sample
        self.fig = max(tail, o[-1], o[-2]) if len(o) >= 2 else max(tail, o[-1])

    def add(self, ms: float) -> None:
        if self.trimmed_to is not None:  # the first run after a trim judges it (rule 4)
            self.interval = min(2 * self.interval, PROBE_MAX) if ms > self.trimmed_to else PROBE_FIRST
            self.trimmed_to = None
        self.skips = 0
        if len(self.order) == self.window:
            old = self.order.popleft()
            del self.ranked[bisect.bisect_left(self.ranked, old)]
        self.order.append(ms)
        bisect.insort(self.ranked, ms)
        self._refigure()

    def skip(self) -> None:
        self.skips += 1
        if self.skips >= self.interval and len(self.ranked) >= 2:
            top = self.ranked.pop()
            self.order.remove(top)  # the oldest of equal largest samples
            self.skips = 0
            self._refigure()
            self.trimmed_to = self.fig

    def settle(self) -> None:
        """Keep only the lower median of the samples (after the warm-up: rule 5)."""
        med = self.ranked[(len(self.ranked) - 1) // 2]
        self.order, self.ranked = deque([med]), [med]
        self.skips, self.interval, self.trimmed_to = 0, PROBE_FIRST, None
        self._refigure()


def check_latency_options(window: Any, quantile: Any) -> None:
    """:class:`PolicyError` unless ``quantile`` is in [0.5, 1] and ``window`` an integer of at least 8 samples
    (native/src/deadline.cpp latency_options_problem)."""
    if isinstance(quantile, bool) or not isinstance(quantile, Real) or not 0.5 <= quantile <= 1.0:
        raise PolicyError(f"latency_quantile must be in [0.5, 1], got {quantile!r}")
    if isinstance(window, bool) or not isinstance(window, int) or window < 8:
        raise PolicyError(f"latency_window must hold at least 8 samples, got {window!r}")


class LatencyEstimator:
    """Online figures of the time of each section (1..K) and of the runtime's own time per call (0), per
    exact number of rows: the rules of the module docstring, deterministic in the sequence of calls to
    :meth:`record`, :meth:`skipped` and :meth:`settle`.

    ``window``: samples kept per (section, rows) cell; ``quantile``: the tail quantile taken over them.
    """

    def __init__(self, num_sections: int, window: int = 256, quantile: float = 0.99) -> None:
        check_latency_options(window, quantile)
        self.num_sections, self.window, self.quantile = num_sections, window, float(quantile)
        self._cells: list[dict[int, _Cell]] = [dict() for _ in range(num_sections + 1)]
        # format version 2: the exit heads of sections 1..K-1 timed apart from their trunks (rule 8)
        self._heads: list[dict[int, _Cell]] = [dict() for _ in range(num_sections + 1)]
        self._full: dict[int, _Cell] = {}  # the full graph, run whole (rule 9)

    def record(self, section: int, batch: int, ms: float) -> None:
        """Record one run of 1-based ``section`` (0 = the runtime's own time) on ``batch`` rows taking ``ms``."""
        self._add(self._cells[section], batch, ms)

    def record_head(self, section: int, batch: int, ms: float) -> None:
        """Record one run of the exit head of ``section`` (a graph of its own: rule 8) on ``batch`` rows."""
        self._add(self._heads[section], batch, ms)

    def record_full(self, batch: int, ms: float) -> None:
        """Record one run of the whole network as one graph (rule 9) on ``batch`` rows."""
        self._add(self._full, batch, ms)

    def estimate_full(self, batch: int) -> float | None:
        """The full graph's own figure on ``batch`` rows (rules 2-3), None before its first run."""
        return self._figure(self._full, batch)

    def _add(self, cells: dict[int, _Cell], batch: int, ms: float) -> None:
        cell = cells.get(batch)
        if cell is None:
            cell = cells[batch] = _Cell(self.window, self.quantile)
        cell.add(float(ms))

    def skipped(self, section: int, batch: int) -> None:
        """A call stopped before ``section`` on ``batch`` rows because this estimator's figure did not fit
        (rule 4: every so many such stops the cell's largest sample is trimmed, so a figure can come down)."""
        cell = self._cells[section].get(batch)
        if cell is not None:
            cell.skip()

    def settle(self) -> None:
        """Replace every cell's samples by their lower median (after the warm-up: rule 5)."""
        for cells in (*self._cells, *self._heads, self._full):
            for cell in cells.values():
                cell.settle()

    def reset(self, section: int | None = None) -> None:
        """Forget the measurements of one section (0 = overhead), or of all when ``section`` is None (only
        on request: the estimator itself never forgets)."""
        for i in range(self.num_sections + 1) if section is None else (section,):
            self._cells[i].clear()
            self._heads[i].clear()
        self._full.clear()

    def count(self, section: int, batch: int) -> int:
        """Samples held for ``section`` at exactly ``batch`` rows."""
        cell = self._cells[section].get(batch)
        return 0 if cell is None else len(cell.order)

    def estimate(self, section: int, batch: int) -> float | None:
        """The figure (ms) of ``section`` on ``batch`` rows (rules 2-3), with its exit head's where that is
        timed apart (rule 8); None only before its first sample."""
        trunk = self._figure(self._cells[section], batch)
        if trunk is None or not self._heads[section]:
            return trunk
        return trunk + (self._figure(self._heads[section], batch) or 0.0)

    @staticmethod
    def _figure(cells: dict[int, _Cell], batch: int) -> float | None:
        cell = cells.get(batch)
        if cell is not None:
            return cell.fig
        above = below = 0
        for m in cells:
            if m > batch and (not above or m < above):
                above = m
            elif m < batch and m > below:
                below = m
        if above and below:
            return min(cells[above].fig, cells[below].fig * batch / below)
        if above:
            return cells[above].fig
        return cells[below].fig * batch / below if below else None


PRIOR_SAMPLES = 32  # rules 6-7: a cell with this many samples of its own no longer takes the profile's figure
PROFILE_PRIOR_QUANTILE = "p90_ms"  # the profile figure taken as the prior of rule 6 (the C++ core: Quantile::P90)


class DeadlinePolicy:
    """Decides before each next section whether it still fits before the deadline (rules 6-7)."""

    def __init__(self, estimator: LatencyEstimator, profile: LatencyProfile | None = None,
                 profile_quantile: str = PROFILE_PRIOR_QUANTILE, margin_ms: float = 0.0,
                 prior_samples: int | None = PRIOR_SAMPLES) -> None:
        self.estimator = estimator
        self.profile = profile
        self.profile_quantile = profile_quantile
        self.margin_ms = float(margin_ms)
        self.prior_samples = prior_samples  # None: the profile stays a floor for good (the rule before)

    def _has_own(self, section: int, batch: int) -> bool:
        """Whether cell (section, batch) has enough samples of its own to set the prior aside (rules 6-7)."""
        need = self.prior_samples
        return need is not None and self.estimator.count(section, batch) >= min(need, self.estimator.window)

    def _prior(self, section: int, batch: int) -> float | None:
        if self.profile is None or self._has_own(section, batch):
            return None
        return self.profile.section_ms(section, batch, self.profile_quantile)

    def section_cost_ms(self, section: int, batch: int) -> float:
        """Predicted time of 1-based ``section`` on ``batch`` rows: the larger of the profile's figure and
        the online one (0.0 only while neither exists: no profile and nothing measured yet)."""
        est, prior = self.estimator.estimate(section, batch), self._prior(section, batch)
        if prior is not None:
            est = prior if est is None else max(prior, est)
        return 0.0 if est is None else est

    def full_cost_ms(self, batch: int) -> float:
        """Predicted time of the whole network on ``batch`` rows (rule 9): the larger of the sum of every
        section's cost and the full graph's own online figure."""
        total = 0.0
        for k in range(1, self.estimator.num_sections + 1):
            total += self.section_cost_ms(k, batch)
        own = self.estimator.estimate_full(batch)
        return total if own is None else max(total, own)

    def full_fits(self, batch: int, now: float, deadline: float) -> bool:
        """Whether the whole network on ``batch`` rows, started at ``now``, ends by ``deadline`` (rule 9)."""
        return now + (self.full_cost_ms(batch) + self.overhead_ms(batch)) * 1e-3 <= deadline

    def overhead_ms(self, batch: int) -> float:
        """The runtime's own time allowed before a next section (online, or the profile's when larger)."""
        est = self.estimator.estimate(0, batch) or 0.0
        if self.profile is not None and not self._has_own(0, batch):
            est = max(est, self.profile.decision_overhead_ms + self.profile.fixed_per_call_ms)
        return est + self.margin_ms

    def should_stop(self, next_section: int, batch: int, now: float, deadline: float) -> bool:
        """True when section ``next_section`` on ``batch`` rows would end after ``deadline``.

        ``now`` is the current time and ``deadline`` the absolute deadline, in seconds on the session's
        clock. A stop that the online figure alone causes (the profile's figure, if any, would fit) is
        charged to that cell (rule 4).
        """
        online, prior = self.estimator.estimate(next_section, batch), self._prior(next_section, batch)
        ovh = self.overhead_ms(batch)
        cost = max(0.0 if online is None else online, 0.0 if prior is None else prior)
        if now + (cost + ovh) * 1e-3 <= deadline:
            return False
        if online is not None and (prior is None or now + (prior + ovh) * 1e-3 <= deadline):
            self.estimator.skipped(next_section, batch)
        return True

    def rows_out_of_time(self, next_section: int, deadlines: np.ndarray, going: np.ndarray, now: float) -> np.ndarray:
        """Which of the ``going`` rows stop before section ``next_section`` for their own ``deadlines``
        (absolute seconds, ``inf``: none): earliest deadline first, each checked by :meth:`should_stop`
        with the rows still going then (a row that stops makes the section cheaper for the rest)."""
        late = np.zeros(deadlines.shape[0], bool)
        idx = np.flatnonzero(going & np.isfinite(deadlines))
        n = int(np.count_nonzero(going))
        for i in idx[np.argsort(deadlines[idx], kind="stable")].tolist():
            if not self.should_stop(next_section, n, now, float(deadlines[i])):
                break  # it fits, and so does every later deadline on as many rows
            late[i] = True
            n -= 1
        return late


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

"""Temperature scaling per exit (Guo et al. 2017): one scalar ``T_k`` per exit minimising the NLL.

The fit is a bounded 1-D minimisation of ``NLL(softmax(z / T))`` over ``log T`` by golden-section
search (numpy only; scipy is not a dependency). The NLL is convex in ``1/T`` and ``log T`` is a
monotone reparametrisation, so the objective is unimodal in ``log T`` and golden-section search finds
its minimum. ``T`` is bounded to ``[0.05, 20]`` by default; a fit whose optimum lies on a bound is
reported as not converged (``at_bound``) with a note, never silently clipped. Each fit reports NLL and
ECE (15 bins) before (``T = 1``) and after, on the data it was fitted on and, when given, on held-out
data.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from sdedge.common.errors import InputError

from .metrics import ECE_BINS, check_logits_labels, ece, nll

DEFAULT_BOUNDS = (0.05, 20.0)
_GOLD = (math.sqrt(5.0) - 1.0) / 2.0  # 0.618...


@dataclass
class TemperatureFit:
    """The fitted temperature of one exit and what it changed."""

    temperature: float
    converged: bool  # the search reached its tolerance at an interior point
    at_bound: bool  # the optimum lies on a bound of [t_min, t_max]: the true optimum may be outside
    iterations: int
    bounds: tuple[float, float]
    nll_before: float  # on the fitting data, T = 1
    nll_after: float
    ece_before: float
    ece_after: float
    heldout_nll_before: float | None = None
    heldout_nll_after: float | None = None
    heldout_ece_before: float | None = None
    heldout_ece_after: float | None = None
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["bounds"] = list(self.bounds)
        return d


def _golden(f: Any, lo: float, hi: float, tol: float, max_iter: int) -> tuple[float, float, int, bool]:
    """Minimise unimodal ``f`` on ``[lo, hi]``; returns (x, f(x), iterations, reached tolerance)."""
    a, b = lo, hi
    c, d = b - _GOLD * (b - a), a + _GOLD * (b - a)
    fc, fd = f(c), f(d)
    it = 0
    while b - a > tol and it < max_iter:
        it += 1
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - _GOLD * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + _GOLD * (b - a)
            fd = f(d)
    # the endpoints may beat the interior probes when the optimum is on a bound
    cands = [(fc, c), (fd, d), (f(lo), lo), (f(hi), hi)]
    fx, x = min(cands)
    return x, fx, it, b - a <= tol


def fit_temperature(logits: np.ndarray, labels: np.ndarray, bounds: tuple[float, float] = DEFAULT_BOUNDS,
                    tol: float = 1e-4, max_iter: int = 200, heldout_logits: np.ndarray | None = None,
                    heldout_labels: np.ndarray | None = None, bins: int = ECE_BINS) -> TemperatureFit:
    """Fit one temperature on ``logits [N, C]`` / ``labels [N]`` (see the module docstring)."""
    t_min, t_max = float(bounds[0]), float(bounds[1])
    if not (0 < t_min < 1.0 < t_max) or not math.isfinite(t_max):
        raise InputError(f"temperature bounds must satisfy 0 < t_min < 1 < t_max < inf, got {bounds!r}")
    z, y = check_logits_labels(logits, labels)
    lo, hi = math.log(t_min), math.log(t_max)
    u, _, it, reached = _golden(lambda v: nll(z, y, math.exp(v)), lo, hi, tol, max_iter)
    at_bound = abs(u - lo) <= 2 * tol or abs(u - hi) <= 2 * tol
    t = float(math.exp(u))
    note = ""
    if at_bound:
        side = "lower" if abs(u - lo) <= 2 * tol else "upper"
        note = (f"the NLL optimum is at the {side} bound T={t:.3g} of [{t_min}, {t_max}]: the exit's logits are "
                f"{'far under' if side == 'lower' else 'far over'}-confident or nearly uninformative; kept the bound")
    fit = TemperatureFit(t, bool(reached and not at_bound), bool(at_bound), it, (t_min, t_max),
                         nll(z, y, 1.0), nll(z, y, t), ece(z, y, 1.0, bins), ece(z, y, t, bins), note=note)
    if heldout_logits is not None and heldout_labels is not None and len(heldout_labels):
        hz, hy = check_logits_labels(heldout_logits, heldout_labels, "held-out logits")
        fit.heldout_nll_before, fit.heldout_nll_after = nll(hz, hy, 1.0), nll(hz, hy, t)
        fit.heldout_ece_before, fit.heldout_ece_after = ece(hz, hy, 1.0, bins), ece(hz, hy, t, bins)
    return fit


def fit_temperatures(all_logits: np.ndarray, labels: np.ndarray, bounds: tuple[float, float] = DEFAULT_BOUNDS,
                     heldout_logits: np.ndarray | None = None, heldout_labels: np.ndarray | None = None,
                     tol: float = 1e-4) -> list[TemperatureFit]:
    """One :class:`TemperatureFit` per exit from every exit's logits ``[K, N, C]``."""
    all_logits = np.asarray(all_logits)
    if all_logits.ndim != 3:
        raise InputError(f"expected every exit's logits as [K, N, C], got shape {list(all_logits.shape)}")
    return [fit_temperature(all_logits[k], labels, bounds, tol,
                            heldout_logits=None if heldout_logits is None else heldout_logits[k],
                            heldout_labels=heldout_labels)
            for k in range(all_logits.shape[0])]

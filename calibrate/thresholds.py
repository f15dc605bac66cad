"""Per-exit confidence thresholds for an accuracy or a latency target, chosen by replaying logits.

Every exit's logits on the calibration set are collected once (``AnytimeSession.infer_all_exits``);
candidate thresholds are then replayed in array code. The replay uses the runtime's own
:func:`sdedge.runtime.policies.exit_answers` (same float32 softmax, temperatures and criterion), and a
sample exits at the first *enabled* exit ``k < K`` whose confidence is ``>= threshold_k``, else at the
deepest exit, which is what :class:`~sdedge.runtime.session.AnytimeSession` decides live with
``threshold="calibrated"`` (a test checks it sample by sample). Every candidate threshold is a
confidence value observed on the data (a float32 number), so the comparison is the same in float32
and float64 and JSON round-trips it exactly.

Cost model. Exiting at ``k`` costs ``cost_k = sum_{j<=k} section_j + overhead(k)`` milliseconds, with the
section times (``mean_ms`` by default) and the decision overhead from the latency profile measured on
this device (:func:`exit_costs_from_profile`); the expected latency of a choice is the mean of
``cost_{exit(i)}`` over the samples. Without a profile, a MAC-based proxy (fraction of the full
network's MACs) ranks choices and the latency numbers are reported as ``null``.

Targets:

* **accuracy** (``target_accuracy`` absolute, or ``max_accuracy_drop`` percentage points below the
  deepest exit's accuracy on the same data): the cheapest (lowest expected latency) thresholds whose
  accuracy meets the target;
* **latency** (``target_latency_ms``): the most accurate thresholds whose expected mean latency is
  within the target.

Search (``method = "shared-sweep+greedy"``): (1) one threshold shared by exits ``1..K-1``, swept over
quantiles of the pooled confidences; (2) from the best shared point, coordinate-wise refinement: for
each exit in turn try every candidate of that exit (its confidence quantiles, and "off") keeping the
others fixed, keep any improvement, and repeat until a pass changes nothing (at most ``max_passes``).
An accuracy target is checked against a lower confidence bound of the accuracy (``confidence_z``
standard errors below the point estimate, 2 by default; on the paired difference with the deepest
exit for ``max_accuracy_drop``), because thresholds tuned on one sample otherwise miss the target on
the next. Measured on the Fashion-MNIST preset model (ResNet-18 width 16, 4 exits; fit on 2 500
validation images, 6 seeds, a 1 pp drop target, scored on the 10 000 test images): the point
estimate (z = 0) dropped 1.23 pp on average (worst 1.65), z = 1 0.88 (worst 1.12), z = 2 0.56
(worst 0.90) at 5 % more mean latency than z = 0; the shared threshold alone at z = 1 dropped 0.77
(worst 0.98) at 10 % more latency than the refined search at z = 2. Candidates are ranked by (target met, objective, tie-break): among points meeting the target the best
objective wins; when none meets it, the nearest achievable point wins (highest accuracy, or lowest
latency) and the result says ``target_met: false`` with a warning naming that point.

An exit that no calibration sample leaves by (never fires) is disabled explicitly (``enabled: false``),
and an exit whose best threshold is "off" gets ``threshold: null`` and ``enabled: false``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from sdedge.common.errors import InputError, PolicyError
from sdedge.runtime.policies import PROFILE_PRIOR_QUANTILE, ConfidencePolicy, check_criterion, exit_answers
from sdedge.runtime.profile import LatencyProfile

METHOD = "shared-sweep+greedy"
OFF = math.inf  # internal "never stop here on confidence"


# -- cost model ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExitCosts:
    """Expected cost (ms, or a unitless proxy) of answering at each exit, cumulative, shallow first."""

    cumulative: tuple[float, ...]  # cost of exiting at exit k (1-based k -> index k-1)
    unit: str  # "ms" or "mac_share" (proxy when no profile)
    source: str  # where the numbers came from
    section_prior_ms: tuple[float, ...] | None = None  # per-section figures the runtime's deadline rule charges
    section_mean_ms: tuple[float, ...] | None = None
    overhead_ms: float = 0.0  # per section
    fixed_ms: float = 0.0  # per call

    @property
    def is_ms(self) -> bool:
        return self.unit == "ms"


def exit_costs_from_profile(profile: dict, num_exits: int, batch: int = 1, stat: str = "mean_ms") -> ExitCosts:
    """Cumulative exit costs from a profile dict (``profiles/<device>.json`` format) at ``batch``.

    ``cost_k = sum_{j<=k} stat(section_j) + k * decision_overhead_ms + fixed_per_call_ms`` (the last
    term when the profile has it; it is written by :mod:`sdedge.calibrate.profile`).
    """
    sizes = sorted(int(b) for b in profile["batch_sizes"])
    b = next((s for s in sizes if s >= batch), sizes[-1])
    secs = profile["batch_sizes"][str(b)]["sections"]
    if len(secs) != num_exits:
        raise InputError(f"the latency profile lists {len(secs)} sections, the bundle has {num_exits}")

    def pick(s: dict, key: str) -> float:
        for k in (key, "p50_ms", "mean_ms", "p90_ms", "p99_ms"):
            if k in s:
                return float(s[k])
        raise InputError(f"profile section {s.get('index')} has no latency figure")

    mean = [pick(s, stat) for s in secs]
    # what the runtime's deadline rule charges: the runtime's own lookup, so the simulation cannot drift from it
    prior_ms = LatencyProfile.from_json(profile, num_exits).section_ms
    prior = [prior_ms(k, batch, PROFILE_PRIOR_QUANTILE) for k in range(1, num_exits + 1)]
    per_section = float(profile.get("decision_overhead_ms") or 0.0)
    fixed = float(profile.get("fixed_per_call_ms") or 0.0)
    cum = np.cumsum(mean) + per_section * np.arange(1, num_exits + 1) + fixed
    return ExitCosts(tuple(float(c) for c in cum), "ms", f"profile {profile.get('device')} batch {b} {stat}",
                     tuple(prior), tuple(mean), per_section, fixed)


def exit_costs_from_macs(mac_shares: Sequence[float | None]) -> ExitCosts:
    """A unitless proxy (share of the full network's MACs) when no latency profile exists."""
    k = len(mac_shares)
    if any(m is None for m in mac_shares):
        return ExitCosts(tuple(float(i) / k for i in range(1, k + 1)), "mac_share", "exit index / K (no MACs, no profile)")
    return ExitCosts(tuple(float(m) for m in mac_shares), "mac_share", "manifest MACs (no profile)")  # type: ignore[arg-type]


# -- replay --------------------------------------------------------------------------------------------------
class ReplayTable:
    """Confidences and correctness of every exit on a labelled set, ready for fast threshold replays."""

    def __init__(self, all_logits: np.ndarray, labels: np.ndarray, temperatures: Sequence[float],
                 criterion: str = "max_prob", answer: str = "last") -> None:
        all_logits = np.asarray(all_logits, np.float32)
        if all_logits.ndim != 3:
            raise InputError(f"expected every exit's logits as [K, N, C], got shape {list(all_logits.shape)}")
        k, n, _ = all_logits.shape
        labels = np.asarray(labels)
        if labels.shape != (n,):
            raise InputError(f"labels must have shape [{n}], got {list(labels.shape)}")
        if len(temperatures) != k:
            raise InputError(f"{len(temperatures)} temperatures for {k} exits")
        self.criterion = check_criterion(criterion)
        self.answer = answer
        self.temperatures = tuple(float(t) for t in temperatures)
        pol = ConfidencePolicy(self.criterion, (None,) * k, self.temperatures)
        probs, conf = exit_answers(all_logits, pol, answer)
        self.conf = conf  # [K, N] float32
        self.pred = probs.argmax(axis=-1)  # [K, N]
        self.correct = self.pred == labels[None, :]
        self.labels = labels
        self.num_exits, self.n = k, n

    def subset(self, idx: np.ndarray) -> "ReplayTable":
        t = object.__new__(ReplayTable)
        t.criterion, t.answer, t.temperatures = self.criterion, self.answer, self.temperatures
        t.conf, t.pred, t.correct, t.labels = self.conf[:, idx], self.pred[:, idx], self.correct[:, idx], self.labels[idx]
        t.num_exits, t.n = self.num_exits, int(t.conf.shape[1])
        return t

    def exits(self, thresholds: Sequence[float | None], enabled: Sequence[bool] | None = None) -> np.ndarray:
        """1-based exit of every sample (``None``/inf threshold or ``enabled=False``: never stops there)."""
        k = self.num_exits
        en = [True] * k if enabled is None else list(enabled)
        stop = np.zeros((k, self.n), bool)
        for i in range(k - 1):
            t = thresholds[i]
            if t is not None and en[i] and t != OFF:
                stop[i] = self.conf[i] >= t
        stop[-1] = True
        return stop.argmax(axis=0) + 1

    def evaluate(self, thresholds: Sequence[float | None], costs: ExitCosts,
                 enabled: Sequence[bool] | None = None) -> dict[str, Any]:
        ex = self.exits(thresholds, enabled)
        return self.evaluate_exits(ex, costs)

    def evaluate_exits(self, ex: np.ndarray, costs: ExitCosts) -> dict[str, Any]:
        cols = np.arange(self.n)
        acc = float(self.correct[ex - 1, cols].mean())
        cost = float(np.asarray(costs.cumulative)[ex - 1].mean())
        hist = np.bincount(ex, minlength=self.num_exits + 1)[1:]
        return {"accuracy": acc, "mean_latency_ms": cost if costs.is_ms else None,
                "mean_cost": cost, "cost_unit": costs.unit, "mean_exit": float(ex.mean()),
                "exit_histogram": [int(h) for h in hist], "n": int(self.n)}

    def exit_accuracies(self) -> list[float]:
        return [float(c.mean()) for c in self.correct]


# -- targets and search --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """What the thresholds must achieve: ``kind`` is ``accuracy`` or ``latency_ms``."""

    kind: str
    value: float | None = None  # absolute accuracy (fraction) or mean latency (ms)
    max_accuracy_drop_pp: float | None = None  # accuracy target relative to the deepest exit

    @classmethod
    def accuracy(cls, target_accuracy: float | None = None, max_accuracy_drop: float | None = None) -> "Target":
        if (target_accuracy is None) == (max_accuracy_drop is None):
            raise PolicyError("give exactly one of target_accuracy and max_accuracy_drop")
        if target_accuracy is not None:
            v = float(target_accuracy)
            if v > 1.0:
                v /= 100.0  # given in percent
            if not 0.0 < v <= 1.0:
                raise PolicyError(f"target accuracy must be a fraction in (0, 1] or a percentage in (1, 100], "
                                  f"got {target_accuracy!r}")
            return cls("accuracy", v, None)
        d = float(max_accuracy_drop)  # type: ignore[arg-type]
        if not 0.0 <= d < 100.0 or not math.isfinite(d):
            raise PolicyError(f"max accuracy drop must be in [0, 100) percentage points, got {max_accuracy_drop!r}")
        return cls("accuracy", None, d)

    @classmethod
    def latency(cls, target_latency_ms: float) -> "Target":
        v = float(target_latency_ms)
        if not math.isfinite(v) or v <= 0:
            raise PolicyError(f"target latency must be a positive number of milliseconds, got {target_latency_ms!r}")
        return cls("latency_ms", v, None)

    def resolve(self, deepest_accuracy: float) -> float:
        """The numeric target: accuracy as a fraction, or latency in ms."""
        if self.kind == "accuracy" and self.value is None:
            return deepest_accuracy - float(self.max_accuracy_drop_pp) / 100.0  # type: ignore[arg-type]
        return float(self.value)  # type: ignore[arg-type]

    def describe(self, resolved: float) -> str:
        if self.kind == "latency_ms":
            return f"mean latency <= {resolved:.4g} ms"
        if self.max_accuracy_drop_pp is not None:
            return f"accuracy >= {100 * resolved:.2f} % (at most {self.max_accuracy_drop_pp:g} pp below the deepest exit)"
        return f"accuracy >= {100 * resolved:.2f} %"

    def to_json(self, resolved: float) -> dict[str, Any]:
        return {"kind": self.kind, "value": resolved, "max_accuracy_drop_pp": self.max_accuracy_drop_pp,
                "text": self.describe(resolved)}


@dataclass
class ThresholdResult:
    """Chosen thresholds and what they do, on the fitting data and on held-out data."""

    method: str
    criterion: str
    target: dict[str, Any]
    target_met: bool  # on the data the thresholds were fitted on
    thresholds: list[float | None]  # per exit; the deepest exit's is None
    enabled: list[bool]
    fit: dict[str, Any]  # accuracy, mean_latency_ms, exit_histogram ... on the fitting data
    heldout: dict[str, Any] | None = None  # the same on held-out data, plus target_met there
    reference: dict[str, Any] = field(default_factory=dict)  # deepest exit: accuracy and latency
    nearest_achievable: dict[str, Any] | None = None  # when the target is unreachable
    candidates_evaluated: int = 0
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _candidates(conf: np.ndarray, n: int) -> np.ndarray:
    """Up to ``n`` observed confidence values (float32) spread over the quantiles, ascending."""
    v = np.unique(np.asarray(conf, np.float32).ravel())
    if v.size > n:
        v = v[np.unique(np.round(np.linspace(0, v.size - 1, n)).astype(np.int64))]
    return v


def _key(kind: str, target: float, acc: float, cost: float, acc_bound: float | None = None) -> tuple:
    """Ranking of a candidate: met targets first, then the objective; ``acc_bound`` is what must meet it."""
    eps = 1e-12
    if kind == "accuracy":
        ok = (acc if acc_bound is None else acc_bound) >= target - eps
        return (1, -cost, acc) if ok else (0, acc, -cost)
    return (1, acc, -cost) if cost <= target + eps else (0, -cost, acc)


def accuracy_bound(correct: np.ndarray, reference: np.ndarray | None, z: float) -> float:
    """A lower confidence bound of the accuracy: mean minus ``z`` standard errors.

    With a ``reference`` (the deepest exit's correctness on the same samples) the bound is on the
    paired difference, ``acc_ref + mean(d) - z * sd(d) / sqrt(n)`` with ``d = correct - reference``:
    only the samples where the two disagree add uncertainty, so a policy that answers like the
    deepest exit has no margin at all. Without one, the binomial ``acc - z * sqrt(acc (1 - acc) / n)``.
    """
    n = correct.size
    acc = float(correct.mean())
    if z <= 0 or n < 2:
        return acc
    if reference is not None:
        d = correct.astype(np.float64) - reference
        return float(reference.mean() + d.mean() - z * d.std(ddof=1) / math.sqrt(n))
    return acc - z * math.sqrt(max(acc * (1 - acc), 0.0) / n)


def select_thresholds(table: ReplayTable, costs: ExitCosts, target: Target, num_candidates: int = 200,
                      max_passes: int = 4, heldout: ReplayTable | None = None,
                      confidence_z: float = 2.0) -> ThresholdResult:
    """Search thresholds on ``table`` for ``target`` (see the module docstring); evaluate on ``heldout``.

    ``confidence_z`` (default 2): an accuracy target must hold for a lower confidence bound of the accuracy
    (:func:`accuracy_bound`, ``z`` standard errors), not just for the point estimate, so that
    thresholds fitted to one sample keep the target on the next (0: the point estimate).
    """
    k = table.num_exits
    if len(costs.cumulative) != k:
        raise InputError(f"{len(costs.cumulative)} exit costs for {k} exits")
    if target.kind == "latency_ms" and not costs.is_ms:
        raise PolicyError("a latency target needs a latency profile of this device (measure one: profile_runs > 0)")
    warnings: list[str] = []
    deepest_acc = table.exit_accuracies()[-1]
    goal = target.resolve(deepest_acc)
    cum = np.asarray(costs.cumulative, np.float64)
    cols = np.arange(table.n)
    evaluated = 0

    reference = table.correct[-1].astype(np.float64) if target.max_accuracy_drop_pp is not None else None
    z = float(confidence_z) if target.kind == "accuracy" else 0.0

    def score(thr: list[float]) -> tuple[tuple, float, float]:
        nonlocal evaluated
        evaluated += 1
        ex = table.exits(thr)
        correct = table.correct[ex - 1, cols]
        acc = float(correct.mean())
        cost = float(cum[ex - 1].mean())
        bound = accuracy_bound(correct, reference, z) if z > 0 else None
        return _key(target.kind, goal, acc, cost, bound), acc, cost

    # (1) one shared threshold, swept
    pooled = _candidates(table.conf[:-1], num_candidates) if k > 1 else np.zeros(0, np.float32)
    shared = [OFF] + [float(v) for v in pooled]
    best_thr = [OFF] * (k - 1) + [None]
    best = score(best_thr)  # type: ignore[arg-type]
    for t in shared:
        thr = [t] * (k - 1) + [None]
        s = score(thr)  # type: ignore[arg-type]
        if s[0] > best[0]:
            best, best_thr = s, thr
    # (2) per-exit coordinate refinement
    per_exit = [[OFF] + [float(v) for v in _candidates(table.conf[i], num_candidates)] for i in range(k - 1)]
    for _ in range(max_passes):
        changed = False
        for i in range(k - 1):
            for c in per_exit[i]:
                if c == best_thr[i]:
                    continue
                thr = list(best_thr)
                thr[i] = c
                s = score(thr)
                if s[0] > best[0]:
                    best, best_thr, changed = s, thr, True
        if not changed:
            break

    ex = table.exits(best_thr)  # type: ignore[arg-type]
    fired = np.bincount(ex, minlength=k + 1)[1:]
    thresholds: list[float | None] = []
    enabled: list[bool] = []
    for i in range(k - 1):
        t = best_thr[i]
        if t == OFF:
            thresholds.append(None)
            enabled.append(False)
        else:
            thresholds.append(float(t))  # type: ignore[arg-type]
            enabled.append(bool(fired[i] > 0))
            if fired[i] == 0:
                warnings.append(f"exit {i + 1} never fires on the calibration data at threshold {t:.4g}: disabled")
    thresholds.append(None)
    enabled.append(True)

    fit = table.evaluate(thresholds, costs, enabled)
    met = bool(best[0][0] == 1)
    ref = {"deepest_exit_accuracy": deepest_acc, "exit_accuracies": table.exit_accuracies(),
           "exit_costs": list(costs.cumulative), "cost_unit": costs.unit, "cost_source": costs.source,
           "deepest_exit_latency_ms": float(cum[-1]) if costs.is_ms else None}
    tj = target.to_json(goal)
    if target.kind == "accuracy":
        tj["confidence_z"] = z
        ex_final = table.exits(thresholds, enabled)
        fit["accuracy_lower_bound"] = accuracy_bound(table.correct[ex_final - 1, cols], reference, z)
    res = ThresholdResult(METHOD, table.criterion, tj, met, thresholds, enabled, fit,
                          reference=ref, candidates_evaluated=evaluated, warnings=warnings)
    if not met:
        what = "accuracy" if target.kind == "accuracy" else "latency"
        near = {"accuracy": fit["accuracy"], "mean_latency_ms": fit["mean_latency_ms"], "mean_cost": fit["mean_cost"]}
        res.nearest_achievable = near
        lat = f"{near['mean_latency_ms']:.4g} ms" if near["mean_latency_ms"] is not None else f"cost {near['mean_cost']:.3g}"
        res.warnings.append(f"{what} target unreachable on the calibration data ({target.describe(goal)}); "
                            f"nearest achievable: accuracy {100 * near['accuracy']:.2f} % at mean latency {lat}")
    if heldout is not None:
        h = heldout.evaluate(thresholds, costs, enabled)
        if target.kind == "accuracy":
            h_goal = target.resolve(heldout.exit_accuracies()[-1])
            h["target_met"] = bool(h["accuracy"] >= h_goal - 1e-12)
            h["target_value"] = h_goal
        else:
            h["target_met"] = bool(h["mean_cost"] <= goal + 1e-12)
            h["target_value"] = goal
        h["deepest_exit_accuracy"] = heldout.exit_accuracies()[-1]
        h["exit_accuracies"] = heldout.exit_accuracies()
        res.heldout = h
        if met and not h["target_met"]:
            res.warnings.append(f"the target is met on the fitting split but not on the held-out split "
                                f"({_fmt_point(h)}); collect more calibration data or tighten the target")
    return res


def _fmt_point(d: dict[str, Any]) -> str:
    lat = "n/a" if d.get("mean_latency_ms") is None else f"{d['mean_latency_ms']:.4g} ms"
    return f"accuracy {100 * d['accuracy']:.2f} %, mean latency {lat}"


def fit_heldout_split(n: int, heldout_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of ``n`` samples into (fit, held-out) index arrays; held-out may be empty."""
    if not 0.0 <= heldout_fraction < 1.0:
        raise InputError(f"held-out fraction must be in [0, 1), got {heldout_fraction!r}")
    perm = np.random.default_rng(seed).permutation(n)
    n_held = int(round(n * heldout_fraction))
    return np.sort(perm[n_held:]), np.sort(perm[:n_held])

"""Anytime curves: accuracy against mean latency for each exit policy, as tables.

Series (the ``series`` names in every CSV/JSON table and plot legend):

* ``fixed_exit``: every sample answers at exit ``k`` (one point per exit);
* ``confidence``: the confidence policy with one threshold shared by exits ``1..K-1``, swept (temperature-
  scaled confidences, replayed from logits); the latency of a point is the *mean* over samples;
* ``calibrated``: the per-exit thresholds chosen by the calibration (one point);
* ``deadline``: the deadline policy with a per-call budget, swept, simulated from the latency profile
  the way the runtime decides with a profile (go on to section ``k+1`` only if the elapsed time (mean
  figures) plus section ``k+1``'s prior (the profile figure rule 6 of
  :mod:`sdedge.runtime.policies` charges: its p90) plus the profile's overhead allowance (per section + per call) fit
  in the budget; exit 1 always answers; online measurements, which the live runtime also uses, are
  not simulated): every
  sample of a budget exits at the same exit, so its accuracy is that exit's;
* ``deadline_live`` / ``confidence_live``: the same policies measured with the live runtime (batch 1,
  ``AnytimeSession.infer`` end to end), when measured.

``accuracy_at_fractions`` answers "how accurate can I be within 25/50/75/100 % of the full network's
latency" per policy (live series against ``meta["live_full_latency_ms"]``, the full network's
end-to-end ``infer`` latency, when the measurement set it): for the confidence policy the best point whose *mean* latency fits, for the
deadline policy the point whose per-call *budget* is that fraction, for fixed exits the deepest exit
whose latency fits. The full latency is the cost of running every section (the deepest exit).
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .thresholds import OFF, ExitCosts, ReplayTable, _candidates

SERIES = ("fixed_exit", "confidence", "calibrated", "deadline", "deadline_live", "confidence_live")
FRACTIONS = (0.25, 0.5, 0.75, 1.0)
CSV_FIELDS = ("series", "parameter", "value", "mean_latency_ms", "accuracy", "mean_exit", "deadline_met_share",
              "p99_latency_ms", "n")


@dataclass
class CurveSet:
    """Every series of one bundle on one device and data set, plus summary figures."""

    series: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    full_latency_ms: float | None = None
    cost_unit: str = "ms"
    meta: dict[str, Any] = field(default_factory=dict)

    def add(self, name: str, points: list[dict[str, Any]]) -> None:
        self.series[name] = points

    def to_json(self) -> dict[str, Any]:
        return {"full_latency_ms": self.full_latency_ms, "cost_unit": self.cost_unit, "meta": self.meta,
                "series": self.series, "accuracy_at_fraction": accuracy_at_fractions(self)}

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for name, pts in self.series.items():
            for p in pts:
                w.writerow({"series": name, **{k: ("" if p.get(k) is None else p.get(k)) for k in CSV_FIELDS[1:]}})
        return buf.getvalue()


def fixed_exit_points(table: ReplayTable, costs: ExitCosts) -> list[dict[str, Any]]:
    acc = table.exit_accuracies()
    return [{"parameter": "exit", "value": k + 1, "mean_latency_ms": costs.cumulative[k], "accuracy": acc[k],
             "mean_exit": float(k + 1), "n": table.n} for k in range(table.num_exits)]


def confidence_points(table: ReplayTable, costs: ExitCosts, num: int = 60) -> list[dict[str, Any]]:
    """Shared-threshold sweep over quantiles of the pooled confidences of exits 1..K-1."""
    k = table.num_exits
    cands = [float(v) for v in _candidates(table.conf[:-1], num)] if k > 1 else []
    pts = []
    for t in [0.0] + cands + [OFF]:
        r = table.evaluate([t] * (k - 1) + [None], costs)
        pts.append({"parameter": "threshold", "value": None if t == OFF else t, "mean_latency_ms": r["mean_cost"],
                    "accuracy": r["accuracy"], "mean_exit": r["mean_exit"], "n": r["n"]})
    pts.sort(key=lambda p: (p["mean_latency_ms"], -p["accuracy"]))
    return pts


def simulate_deadline_exit(costs: ExitCosts, budget_ms: float) -> int:
    """The exit the runtime's deadline rule reaches at batch 1 for a budget, from the profile."""
    mean = costs.section_mean_ms or ()
    prior = costs.section_prior_ms or ()
    if not mean:
        raise ValueError("deadline simulation needs per-section times (a latency profile)")
    elapsed = mean[0] + costs.overhead_ms
    allowance = costs.overhead_ms + costs.fixed_ms  # the runtime's allowance for its own work
    k = 1
    while k < len(mean):
        if elapsed + prior[k] + allowance > budget_ms:
            break
        elapsed += mean[k] + costs.overhead_ms
        k += 1
    return k


def deadline_points(table: ReplayTable, costs: ExitCosts, budgets_ms: Sequence[float]) -> list[dict[str, Any]]:
    acc = table.exit_accuracies()
    pts = []
    for b in budgets_ms:
        k = simulate_deadline_exit(costs, float(b))
        lat = costs.cumulative[k - 1]
        pts.append({"parameter": "budget_ms", "value": float(b), "mean_latency_ms": lat, "accuracy": acc[k - 1],
                    "mean_exit": float(k), "deadline_met_share": 1.0 if lat <= b else 0.0, "n": table.n})
    return pts


def default_budgets(costs: ExitCosts, num: int = 24) -> list[float]:
    """Budgets from half the exit-1 cost to 1.25 x the full cost, geometric."""
    lo, hi = costs.cumulative[0] * 0.5, costs.cumulative[-1] * 1.25
    return [float(v) for v in np.geomspace(max(lo, 1e-4), max(hi, lo * 1.01), num)]


def offline_curves(table: ReplayTable, costs: ExitCosts, calibrated: dict[str, Any] | None = None,
                   budgets_ms: Sequence[float] | None = None, num_thresholds: int = 60) -> CurveSet:
    """Fixed exits, confidence sweep, calibrated point and simulated deadline sweep from logits + profile."""
    cs = CurveSet(full_latency_ms=costs.cumulative[-1] if costs.is_ms else None, cost_unit=costs.unit,
                  meta={"criterion": table.criterion, "temperatures": list(table.temperatures), "n": table.n,
                        "cost_source": costs.source})
    cs.add("fixed_exit", fixed_exit_points(table, costs))
    cs.add("confidence", confidence_points(table, costs, num_thresholds))
    if calibrated is not None:
        r = table.evaluate(calibrated["thresholds"], costs, calibrated["enabled"])
        cs.add("calibrated", [{"parameter": "thresholds", "value": None, "mean_latency_ms": r["mean_cost"],
                               "accuracy": r["accuracy"], "mean_exit": r["mean_exit"], "n": r["n"]}])
    if costs.is_ms and costs.section_mean_ms:
        budgets = list(budgets_ms or default_budgets(costs))
        budgets += [f * costs.cumulative[-1] for f in FRACTIONS]  # exact points for the summary table
        cs.add("deadline", deadline_points(table, costs, sorted(set(budgets))))
    return cs


# -- live measurements ------------------------------------------------------------------------------------------
def live_points(session: Any, inputs: np.ndarray, labels: np.ndarray, budgets_ms: Sequence[float] = (),
                thresholds: Sequence[float] = (), repeats: int = 1, warmup: int = 20) -> dict[str, list[dict[str, Any]]]:
    """Measure the deadline policy (per budget) and the confidence policy (per shared threshold) live.

    Batch 1, ``session.infer`` end to end (the latency the caller sees); the same preloaded float
    inputs for every setting; settings interleaved per input so drift hits all alike.
    """
    xs = [np.ascontiguousarray(inputs[i], np.float32) for i in range(len(inputs))]
    settings = [("deadline_live", "budget_ms", float(b), {"budget_ms": float(b)}) for b in budgets_ms] + \
               [("confidence_live", "threshold", float(t), {"threshold": float(t)}) for t in thresholds]
    for i in range(min(warmup, len(xs))):
        session.infer(xs[i], budget_ms=1e6)  # the sections, as the settings run them
    acc = {s[:3]: {"correct": [], "lat": [], "met": [], "exit": []} for s in settings}
    for _ in range(repeats):
        for i, x in enumerate(xs):
            for s in settings:
                r = session.infer(x, **s[3])
                a = acc[s[:3]]
                a["correct"].append(r.label == int(labels[i]))
                a["lat"].append(r.latency_ms)
                a["met"].append(r.deadline_met)
                a["exit"].append(r.exit_index)
    out: dict[str, list[dict[str, Any]]] = {}
    for (series, param, value), a in acc.items():
        met = [m for m in a["met"] if m is not None]
        lat = np.asarray(a["lat"])
        out.setdefault(series, []).append({
            "parameter": param, "value": value, "mean_latency_ms": float(lat.mean()),
            "p99_latency_ms": float(np.percentile(lat, 99)), "accuracy": float(np.mean(a["correct"])),
            "mean_exit": float(np.mean(a["exit"])), "deadline_met_share": float(np.mean(met)) if met else None,
            "n": int(lat.size)})
    return out


# -- summaries ----------------------------------------------------------------------------------------------------
def _best_within(points: list[dict[str, Any]], limit: float) -> dict[str, Any] | None:
    ok = [p for p in points if p["mean_latency_ms"] is not None and p["mean_latency_ms"] <= limit * (1 + 1e-9)]
    return max(ok, key=lambda p: (p["accuracy"], -p["mean_latency_ms"])) if ok else None


def anytime_auc(points: Sequence[dict[str, Any]], horizon_ms: float) -> float:
    """Normalised area under an anytime curve: the mean, over latency limits from 0 to ``horizon_ms``, of
    the best accuracy among ``points`` whose ``mean_latency_ms`` fits the limit (0 while none fits).

    1.0 means every answer right at no cost; a model with the same accuracies at lower latency scores higher.
    Computed exactly on the step function (points: dicts with ``mean_latency_ms`` and ``accuracy``, as in
    every series of a :class:`CurveSet`).
    """
    horizon = float(horizon_ms)
    if not math.isfinite(horizon) or horizon <= 0:
        raise ValueError(f"horizon_ms must be a positive number, got {horizon_ms!r}")
    steps = sorted((float(p["mean_latency_ms"]), float(p["accuracy"])) for p in points
                   if p.get("mean_latency_ms") is not None and math.isfinite(float(p["mean_latency_ms"])))
    area, best, at = 0.0, 0.0, 0.0
    for lat, acc in steps:
        if lat >= horizon:
            break
        lat = max(lat, 0.0)
        area += best * (lat - at)
        best, at = max(best, acc), lat
    return (area + best * (horizon - at)) / horizon


def accuracy_at_fractions(cs: CurveSet, fractions: Sequence[float] = FRACTIONS) -> list[dict[str, Any]]:
    """Per fraction of the full latency: accuracy of each policy within it (None where nothing fits)."""
    full = cs.full_latency_ms
    if full is None or not math.isfinite(full):
        return []
    live_full = cs.meta.get("live_full_latency_ms") or full  # live series: fractions of the live full latency
    rows = []
    for f in fractions:
        lim = f * full
        row: dict[str, Any] = {"fraction": f, "latency_ms": lim}
        if live_full != full:
            row["live_latency_ms"] = f * live_full
        for name in ("fixed_exit", "confidence", "confidence_live"):
            if name in cs.series:
                p = _best_within(cs.series[name], f * (live_full if name.endswith("_live") else full))
                row[name] = None if p is None else {"accuracy": p["accuracy"], "mean_latency_ms": p["mean_latency_ms"],
                                                    "value": p.get("value")}
        for name in ("deadline", "deadline_live"):
            if name in cs.series:
                b_lim = f * (live_full if name.endswith("_live") else full)
                pts = [p for p in cs.series[name] if p["value"] <= b_lim * (1 + 1e-9)]
                p = max(pts, key=lambda q: q["value"]) if pts else None  # the largest budget within the fraction
                row[name] = None if p is None else {"accuracy": p["accuracy"], "mean_latency_ms": p["mean_latency_ms"],
                                                    "value": p["value"],
                                                    "deadline_met_share": p.get("deadline_met_share")}
        rows.append(row)
    return rows


def format_fraction_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of :func:`accuracy_at_fractions` (accuracy in %)."""
    if not rows:
        return "(no latency profile: no accuracy-at-latency table)"
    names = [n for n in ("fixed_exit", "deadline", "deadline_live", "confidence", "confidence_live") if n in rows[0]]
    labels = []
    for r in rows:
        live = f"; live {r['live_latency_ms']:.3f}" if "live_latency_ms" in r else ""
        labels.append(f"{int(round(100 * r['fraction'])):>3d} % ({r['latency_ms']:.3f}{live} ms)")
    width = max(22, *(len(x) for x in labels))
    head = f"{'share of full latency':>{width}} | " + " | ".join(f"{n:>15}" for n in names)
    lines = [head, "-" * len(head)]
    missed = False
    for label, r in zip(labels, rows):
        cells = []
        for n in names:
            p = r[n]
            if p is None:
                cells.append(f"{'-':>15}")
                continue
            miss = p.get("deadline_met_share") is not None and p["deadline_met_share"] < 0.999
            missed = missed or miss
            cells.append(f"{100 * p['accuracy']:>13.2f}%" + ("*" if miss else " "))
        lines.append(f"{label:>{width}} | " + " | ".join(cells))
    if missed:
        lines.append("* deadline missed on some calls: even exit 1 (the floor, always answered) does not fit that budget")
    return "\n".join(lines)

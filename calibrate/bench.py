"""``sdedge bench``: what a bundle costs on this device, measured side by side and printed as ratios.

Every figure comes from the runtime's own measuring functions (:mod:`sdedge.calibrate.benchmarking`,
also behind ``benchmarks/runtime_bench.py``), whose contract is stated in every JSON section: the same
preloaded inputs for every contender, contenders interleaved in a shuffled order, warm-up discarded,
threads fixed and reported, what the timer includes (model only, or ``infer`` end to end).

1. per-exit latency (p50/p99 of sections 1..k chained, model only) beside the exit's MAC share, and
   the *split overhead*: chained sections to the deepest exit / the single-graph ``full.onnx`` (ONNX
   Runtime; skipped when the bundle has no ``full.onnx``);
2. the decision overhead: ``infer`` beside the bare chain, per section and per call (microseconds);
3. deadline compliance: many ``infer`` calls at each budget of a set (default: exit-1 p99 and 50, 75,
   100, 125 % of the full ``infer`` p50), on a quiet machine and, with ``burn``, beside that many
   CPU-burning neighbour processes;
4. with ``plot`` and labelled data: anytime curves (accuracy vs mean latency) of the confidence policy
   and the deadline policy measured live, beside the fixed exits and the replayed/simulated curves.
"""
from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from sdedge.calibrate import benchmarking as B
from sdedge.runtime.bundle import open_bundle
from sdedge.common.errors import PolicyError
from sdedge.runtime.options import SessionOptions
from sdedge.runtime.preprocess import Preprocessor

from .curves import CurveSet, accuracy_at_fractions, format_fraction_table, live_points, offline_curves
from .datasets import LabelledImages, check_labels_in_range, load_calibration_split
from .thresholds import ReplayTable, exit_costs_from_profile


def _bench_session() -> SessionOptions:
    return SessionOptions(intra_op_threads=1, warmup=5)  # threads fixed (and reported), as the contract says


@dataclass
class BenchConfig:
    """Options of :func:`run_bench` (one flag of ``sdedge bench`` each).

    ``session``: how the measured session is opened (default: 1 intra-op thread, 5 warm-up calls); its
    ``intra_op_threads`` also runs the ``full.onnx`` reference. ``warmup``: the untimed calls before each
    measurement (not the session's own warm-up).
    """

    session: SessionOptions = field(default_factory=_bench_session)
    runs: int = 500  # timed calls per contender (latency table, decision overhead)
    warmup: int = 50
    calls: int = 2000  # infer calls per budget (deadline compliance)
    budgets_ms: tuple[float, ...] | None = None  # None: derived from measured latencies
    burn: int = 0  # CPU-burning neighbour processes for a second compliance run (0: none)
    num_inputs: int = 64  # distinct preloaded inputs the calls rotate through
    plot: str | None = None  # PNG path (needs labelled data); CSV/JSON tables beside it
    data: str | None = None  # dataset folder for labelled inputs (default: the bundle's validation split)
    split: str = "val"
    curve_samples: int = 500  # labelled images measured live per curve point
    json_path: str | None = None  # write the whole result here

    def check(self) -> None:
        if not isinstance(self.session, SessionOptions):
            raise PolicyError(f"session must be a SessionOptions, got {type(self.session).__name__}")
        if self.runs < 10 or self.calls < 10:
            raise PolicyError(f"runs and calls must be >= 10, got runs={self.runs}, calls={self.calls}")
        if self.burn < 0:
            raise PolicyError(f"burn must be >= 0 neighbour processes, got {self.burn}")
        if self.warmup < 0 or self.curve_samples < 1:
            raise PolicyError(f"warmup must be >= 0 and curve_samples >= 1, got warmup={self.warmup}, "
                              f"curve_samples={self.curve_samples}")
        if self.budgets_ms is not None and any(not 0 < b < float("inf") for b in self.budgets_ms):
            raise PolicyError(f"budgets must be positive finite milliseconds, got {list(self.budgets_ms)}")


@dataclass
class BenchResult:
    bundle: str
    device: str
    latency: dict[str, Any] | None
    overhead: dict[str, Any]
    compliance: list[dict[str, Any]]
    curves: CurveSet | None = None
    notes: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    engine: str = "python"  # the AnytimeSession engine measured ("native" or "python")

    def to_json(self) -> dict[str, Any]:
        return {"bundle": self.bundle, "device": self.device, "engine": self.engine, "latency": self.latency, "overhead": self.overhead,
                "compliance": self.compliance, "curves": None if self.curves is None else self.curves.to_json(),
                "notes": self.notes, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}

    def summary(self) -> str:
        return format_bench(self)


def _inputs(session: Any, labelled: LabelledImages | None, n: int) -> np.ndarray:
    if labelled is not None:
        return Preprocessor(session.manifest, 1 << 62)(labelled.images[:n]).batch
    c, h, w = session.input_shape
    return np.random.default_rng(0).standard_normal((n, c, h, w)).astype(np.float32)


def _exit_latencies(session: Any, inputs: np.ndarray, runs: int, warmup: int) -> dict[str, Any]:
    """Per-exit chained latency without a reference graph (backend of the session, model only)."""
    be, k = session.backend, session.num_exits
    xs = [np.ascontiguousarray(inputs[i:i + 1]) for i in range(len(inputs))]
    times: dict[int, list[float]] = {j: [] for j in range(1, k + 1)}
    import time

    for i in range(warmup + runs):
        x = xs[i % len(xs)]
        for j in range(1, k + 1):
            t = time.perf_counter()
            B.chain(be, x, j)
            if i >= warmup:
                times[j].append(time.perf_counter() - t)
    shares = B.mac_shares(session.manifest)
    return {"full": None, "split_overhead": None, "chain_mac_ratio": None,
            "exits": [{"exit": j, **B.stats_ms(times[j]), "latency_share": None, "mac_share": shares[j - 1]}
                      for j in range(1, k + 1)],
            "contract": B.contract(getattr(be, "threads", None), warmup, runs,
                                   extra=f"backend {session.device_name}; no full.onnx: no split overhead")}


def run_bench(bundle: str | os.PathLike, config: BenchConfig | None = None, images: Any = None, labels: Any = None,
              progress: Callable[[str], None] | None = None) -> BenchResult:
    """Measure ``bundle`` on this device (see the module docstring)."""
    from sdedge.runtime.session import AnytimeSession

    cfg = config or BenchConfig()
    cfg.check()
    log = progress or (lambda _m: None)
    b = open_bundle(bundle)
    notes: list[str] = []
    labelled: LabelledImages | None = None
    if images is not None and labels is not None:
        labelled = LabelledImages(np.asarray(images), np.asarray(labels, np.int64), "arrays given by the caller", "given")
    elif cfg.plot:
        labelled = load_calibration_split(b.manifest, cfg.data, cfg.split)
    if labelled is not None:
        check_labels_in_range(labelled, b.manifest.num_classes, "bench labels")
    with AnytimeSession(b, cfg.session) as session:
        inputs = _inputs(session, labelled, cfg.num_inputs)
        latency: dict[str, Any] | None
        on_ort_cpu = session.backend_name == "onnxruntime" and session.device_name.startswith("onnxruntime-cpu")
        if b.has_full and on_ort_cpu:
            log(f"latency table: sections 1..k vs full.onnx, {cfg.runs} runs each")
            latency = B.latency_table(b, inputs, threads=cfg.session.intra_op_threads, runs=cfg.runs,
                                      warmup=cfg.warmup).to_json()
        else:
            why = "the bundle has no full.onnx" if not b.has_full else f"backend {session.device_name} is not ONNX Runtime CPU"
            notes.append(f"split overhead not measured: {why}")
            log(f"per-exit latency, {cfg.runs} runs each")
            latency = _exit_latencies(session, inputs, cfg.runs, cfg.warmup)
        log(f"decision overhead, {cfg.runs} runs per contender")
        overhead = B.decision_overhead(session, inputs, runs=cfg.runs, warmup=cfg.warmup)
        if cfg.budgets_ms:
            budgets = sorted(set(float(v) for v in cfg.budgets_ms))
        else:
            lo, hi = B.budget_range(session, inputs, runs=max(50, cfg.runs // 2))
            budgets = sorted({round(lo, 4)} | {round(f * hi, 4) for f in (0.5, 0.75, 1.0, 1.25)})
        compliance = []
        for burn in ([0, cfg.burn] if cfg.burn else [0]):
            for bud in budgets:
                log(f"deadline compliance: {cfg.calls} calls at {bud:.4g} ms" + (f", {burn} CPU burners" if burn else ""))
                c = B.deadline_compliance(session, inputs, calls=cfg.calls, budgets_ms=(bud, bud), burner=burn)
                c["budget"] = bud
                compliance.append(c)
        curves = None
        files: dict[str, str] = {}
        if cfg.plot:
            assert labelled is not None
            curves = _curves(session, b, labelled, budgets, cfg, log, notes)
            from .plot import save_curves

            files.update(save_curves(curves, cfg.plot, f"{b.manifest.model.get('name', Path(bundle).name)} on "
                                                       f"{session.device_name} (live, batch 1)"))
        res = BenchResult(str(bundle), session.device_name, latency, overhead, compliance, curves, notes, files,
                          engine=session.engine)
    if cfg.json_path:
        from sdedge.common.jsonio import write_json_atomic

        write_json_atomic(cfg.json_path, _clean(res.to_json()))
        res.files["json"] = str(cfg.json_path)
    return res


def _curves(session: Any, b: Any, labelled: LabelledImages, budgets: Sequence[float], cfg: BenchConfig,
            log: Callable[[str], None], notes: list[str]) -> CurveSet:
    n = min(cfg.curve_samples, len(labelled.labels))
    imgs, labs = labelled.images[:n], labelled.labels[:n]
    logits = session.infer_all_exits(imgs)
    temps = session.calibration.temperatures if session.calibration else (1.0,) * session.num_exits
    crit = session.calibration.criterion if session.calibration else "max_prob"
    table = ReplayTable(logits, labs, temps, crit)
    prof = b.profile(session.device_name)
    if prof is None:
        from .profile import ProfileConfig, measure_profile

        notes.append(f"no profile for {session.device_name} in the bundle: measured one for the simulated curves "
                     "(not written; run `sdedge calibrate` to store one)")
        prof = measure_profile(session, _inputs(session, labelled, 32), ProfileConfig((1,), runs=100, warmup=10,
                                                                                      overhead_runs=100))
    costs = exit_costs_from_profile(prof, session.num_exits)
    cs = offline_curves(table, costs)
    full = costs.cumulative[-1]
    live_budgets = sorted(set(list(budgets) + [f * full for f in (0.25, 0.5, 0.75, 1.0)]))
    thr = [p["value"] for p in cs.series["confidence"] if p["value"] is not None]
    thr = [thr[int(i)] for i in np.linspace(0, len(thr) - 1, min(8, len(thr)))] if thr else []
    log(f"live curves: {len(live_budgets)} budgets and {len(thr)} thresholds on {n} labelled images")
    x = Preprocessor(session.manifest, 1 << 62)(imgs).batch
    for name, pts in live_points(session, x, labs, live_budgets, thr).items():
        cs.add(name, pts)
    cs.meta.update({"data": labelled.source, "n": n, "device": session.device_name})
    return cs


def _clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if np.isfinite(v) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def format_bench(res: BenchResult) -> str:
    """The printed report: ratios first, absolute figures beside them."""
    lines = [f"bundle {res.bundle}  device {res.device}  engine {res.engine}"]
    lat = res.latency
    if lat:
        lines.append(f"machine: {lat['contract']['machine']}; threads {lat['contract']['threads']}; "
                     f"{lat['contract']['timed_calls']} timed calls after {lat['contract']['warmup_calls']} warm-up")
        lines.append("")
        head = f"{'exit':>4} {'p50 ms':>9} {'p99 ms':>9} {'latency/full':>12} {'MAC share':>9}"
        lines += [head, "-" * len(head)]
        for e in lat["exits"]:
            ls = "-" if e.get("latency_share") is None else f"{e['latency_share']:.3f}"
            ms = "-" if e.get("mac_share") is None else f"{e['mac_share']:.3f}"
            lines.append(f"{e['exit']:>4} {e['p50_ms']:>9.4f} {e['p99_ms']:>9.4f} {ls:>12} {ms:>9}")
        if lat.get("full"):
            lines.append(f"full.onnx: p50 {lat['full']['p50_ms']:.4f} ms, p99 {lat['full']['p99_ms']:.4f} ms; "
                         f"split overhead (chained sections / full.onnx, p50) = {lat['split_overhead']:.3f}")
    o = res.overhead
    lines.append("")
    per = o.get("per_section_us")
    fixed = o.get("fixed_per_call_us")
    lines.append("decision overhead (infer - bare chain, p50): "
                 + (f"{per:.1f} us per section + {fixed:.1f} us per call" if per is not None else "n/a")
                 + f"; plain call {o['plain_overhead_us_per_section']:.1f} us per section")
    lines.append("")
    head = f"{'budget ms':>10} {'burners':>7} {'met':>8} {'met excl. floor':>15} {'mean exit':>9} {'worst overrun ms':>16}"
    lines += ["deadline compliance (infer end to end, batch 1):", head, "-" * len(head)]
    for c in res.compliance:
        lines.append(f"{c['budget']:>10.4g} {c['burner_processes']:>7} {100 * c['met_share']:>7.2f}% "
                     f"{100 * c['met_share_excluding_floor']:>14.2f}% {c['mean_exit']:>9.2f} {c['worst_overrun_ms']:>16.4f}")
    if res.curves is not None:
        lines += ["", "accuracy within a share of the full latency:",
                  format_fraction_table(accuracy_at_fractions(res.curves))]
    for k, v in res.files.items():
        lines.append(f"{k}: {v}")
    for n in res.notes:
        lines.append(f"note: {n}")
    return "\n".join(lines)

"""Runtime measurements shared by ``benchmarks/runtime_bench.py``, ``sdedge bench`` and calibration's
profiles (torch-free).

Contract of every timing here (stated again in :func:`contract`):

* inputs are preloaded in memory, preprocessed once, and the *same* inputs go to every contender;
* contenders are measured side by side in one run, interleaved call by call in a shuffled order, so
  drift (frequency scaling, a neighbour waking up) hits them alike;
* the timer (``time.perf_counter``) wraps one call: for backends, host input -> device, every section
  run, logits back on the host (model only); for the session, ``infer`` from entry to return
  (validation, policy, results included: end to end for the caller);
* warm-up calls are run and discarded before timing; threads are fixed per backend and reported.

Ratios are of medians (p50) unless named otherwise.
"""
from __future__ import annotations

import contextlib
import os
import platform
import random
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from sdedge.common.hostinfo import available_cpus, cpu_flags, cpu_model
from sdedge.runtime.backends.base import Backend, BackendOptions
from sdedge.runtime.policies import ConfidencePolicy, replay, softmax

_clock = time.perf_counter


def stats_ms(samples_s: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/mean/min in milliseconds of timings in seconds."""
    a = np.asarray(samples_s, dtype=np.float64) * 1e3
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99), "mean_ms": float(a.mean()),
            "min_ms": float(a.min()), "n": int(a.size)}


def versions(names: Sequence[str] = ("sdedge", "numpy", "onnxruntime")) -> dict[str, str | None]:
    """Versions of what a figure depends on (``None`` where a package is not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def machine() -> str:
    """The machine a figure was measured on: CPU model, its SIMD features, CPUs this process may use, OS, Python.

    (Virtual machines that report the same CPU model can differ in SIMD features, which decide e.g.
    whether INT8 kernels beat float ones.)"""
    simd = " ".join(f for f, on in cpu_flags().items() if on) or "unknown"
    return (f"{cpu_model()} (SIMD: {simd}), {available_cpus()} CPUs available to this process, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}")


def load_average() -> list[float] | None:
    """The 1/5/15-minute load averages (``None`` where the OS has none): a busy neighbour explains odd figures."""
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def command_line(script: str | None = None, argv: Sequence[str] | None = None) -> str:
    """The command that reproduces a figure. ``script``/``argv``: a benchmark's path and its ``main(argv)``
    arguments, so a run started from a test or another script records its own command, not the caller's."""
    if script is None:
        return " ".join([os.path.basename(sys.executable)] + sys.argv)
    return " ".join(["python", script, *(sys.argv[1:] if argv is None else argv)])


def provenance(script: str | None = None, argv: Sequence[str] | None = None,
               packages: Sequence[str] = ("sdedge", "numpy", "onnxruntime")) -> dict[str, Any]:
    """The header every results file under ``benchmarks/results/`` starts with: the command that made it, when
    (UTC), on which machine, with which versions, and the load average when it started (``script`` None: the
    command is this process's own, as :func:`contract` records it)."""
    return {"command": command_line(script, argv), "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": machine(), "versions": versions(packages), "load_average_at_start": load_average()}


def contract(threads: int | None, warmup: int, runs: int, batch: int = 1, extra: str = "") -> dict[str, Any]:
    return {
        **provenance(),
        "threads": threads, "warmup_calls": warmup, "timed_calls": runs, "batch": batch,
        "inputs": "preloaded, preprocessed once, the same inputs for every contender, interleaved in shuffled order",
        "timer": "time.perf_counter around one call; backend = upload + sections + logits to host (model only); "
                 "session = infer() entry to return (end to end)",
        "note": extra,
    }


def _interleaved(contenders: dict[str, Any], inputs: np.ndarray, runs: int, warmup: int,
                 seed: int = 0) -> dict[str, list[float]]:
    """Time each ``contenders[name](x)`` on the same inputs, shuffled order per input; seconds per call."""
    names = list(contenders)
    rng = random.Random(seed)
    for i in range(warmup):
        for n in names:
            contenders[n](inputs[i % len(inputs)])
    times: dict[str, list[float]] = {n: [] for n in names}
    for i in range(runs):
        x = inputs[i % len(inputs)]
        rng.shuffle(names)
        for n in names:
            t = _clock()
            contenders[n](x)
            times[n].append(_clock() - t)
    return times


def mac_shares(manifest: Any) -> list[float | None]:
    """Cumulative MACs of sections 1..k (exit heads included) / MACs of the single-graph reference.

    The reference's MACs come from the manifest (``full.macs`` when the exporter recorded it), else
    the sum of all sections (which counts the intermediate heads too: a slightly low share).
    """
    macs = [s.macs for s in manifest.sections]
    if any(m is None for m in macs):
        return [None] * len(macs)
    full = manifest.raw.get("full", {}).get("macs") if isinstance(manifest.raw.get("full"), dict) else None
    total = full or sum(macs)
    return [float(sum(macs[:k]) / total) for k in range(1, len(macs) + 1)]


def chain_mac_ratio(manifest: Any) -> float | None:
    """MACs of the chained sections (every exit head included) over the reference's, when both are known."""
    macs = [s.macs for s in manifest.sections]
    full = manifest.raw.get("full", {}).get("macs") if isinstance(manifest.raw.get("full"), dict) else None
    if not full or any(m is None for m in macs):
        return None
    return float(sum(macs) / full)


@dataclass
class LatencyTable:
    full: dict[str, float]
    exits: list[dict[str, Any]]  # per exit: latency stats of sections 1..k, ratio to full, MAC share
    split_overhead: float  # chained sections to the deepest exit / full.onnx (p50)
    chain_mac_ratio: float | None  # MACs of all sections (intermediate exit heads included) / full.onnx MACs
    contract: dict[str, Any]

    def to_json(self) -> dict:
        return asdict(self)


def latency_table(bundle: Any, inputs: np.ndarray, threads: int | None = 1, runs: int = 500, warmup: int = 50,
                  backend_options: dict | None = None) -> LatencyTable:
    """Per-exit latency / full latency beside each exit's MAC share, and the split overhead (batch 1, ORT)."""
    from sdedge.runtime.backends.onnxruntime import OnnxRuntimeBackend

    be = OnnxRuntimeBackend(bundle, BackendOptions(intra_op_threads=threads, extra=dict(backend_options or {})))
    k = be.num_sections
    xs = [np.ascontiguousarray(inputs[i:i + 1], dtype=np.float32) for i in range(len(inputs))]
    contenders: dict[str, Any] = {"full": be.run_reference}
    for j in range(1, k + 1):
        contenders[f"exit{j}"] = (lambda x, j=j: be.run_chain(x, j))
    t = _interleaved(contenders, xs, runs, warmup)  # type: ignore[arg-type]
    full = stats_ms(t["full"])
    shares = mac_shares(bundle.manifest)
    exits = []
    for j in range(1, k + 1):
        s = stats_ms(t[f"exit{j}"])
        exits.append({"exit": j, **s, "latency_share": s["p50_ms"] / full["p50_ms"], "mac_share": shares[j - 1]})
    table = LatencyTable(full, exits, exits[-1]["p50_ms"] / full["p50_ms"], chain_mac_ratio(bundle.manifest),
                         contract(be.threads, warmup, runs, extra=f"backend {be.device_name}"))
    be.close()
    return table


def spinning_comparison(bundle: Any, inputs: np.ndarray, threads: int, runs: int = 300, warmup: int = 30) -> dict:
    """Chained sections with ONNX Runtime thread spinning off (the default) and on, side by side."""
    from sdedge.runtime.backends.onnxruntime import OnnxRuntimeBackend

    off = OnnxRuntimeBackend(bundle, BackendOptions(intra_op_threads=threads))
    on = OnnxRuntimeBackend(bundle, BackendOptions(intra_op_threads=threads, extra={"allow_spinning": True}))
    xs = [np.ascontiguousarray(inputs[i:i + 1], dtype=np.float32) for i in range(len(inputs))]
    t = _interleaved({"spin_off": off.run_chain, "spin_on": on.run_chain,
                      "full_spin_off": off.run_reference, "full_spin_on": on.run_reference}, xs, runs, warmup)
    out = {n: stats_ms(v) for n, v in t.items()}
    out["chain_on_over_off"] = out["spin_on"]["p50_ms"] / out["spin_off"]["p50_ms"]
    # what spinning costs the rest of the machine: CPU time of this process per chained call
    # and when calls are paced like camera frames (1 ms idle between calls), as on a robot
    for name, be in (("spin_off", off), ("spin_on", on)):
        walls = []
        c0 = time.process_time()
        for i in range(runs):
            w0 = _clock()
            be.run_chain(xs[i % len(xs)])
            walls.append(_clock() - w0)
            time.sleep(0.001)
        out[f"{name}_cpu_ms_per_call"] = (time.process_time() - c0) * 1e3 / runs
        out[f"{name}_paced"] = stats_ms(walls)
    out["contract"] = contract(threads, warmup, runs)
    return out


def decision_overhead(session: Any, inputs: np.ndarray, runs: int = 1000, warmup: int = 100) -> dict:
    """The session's own time (µs) beside the bare backend chain, side by side.

    For every exit k, ``infer`` with both policies active and forced to stop at k (a generous budget,
    and thresholds of 1.0 before k and 0.0 at k, so every decision is computed) is timed against the
    backend running sections 1..k. The overhead at k is the difference of p50s; a least-squares line
    through the K points splits it into a fixed cost per call (validation, the answer, the result) and
    the cost per section (softmax, criterion, deadline check, latency bookkeeping): the decision
    overhead per section. The plain call (a generous budget and no threshold: every section, the deadline
    checks; a call with no policy at all may run ``full.onnx`` instead, whose time says nothing of the
    session's own per-section cost) is reported too. Float inputs, so
    image preprocessing is not counted. Calls that stop before k (a confidence of exactly 1.0) are
    left out of that exit's figure and counted.
    """
    k_all = session.num_exits
    xs = [np.ascontiguousarray(inputs[i], dtype=np.float32) for i in range(len(inputs))]
    be = session.backend
    exits: dict[int, list[int]] = {k: [] for k in range(1, k_all + 1)}
    contenders: dict[str, Any] = {"plain": lambda x: session.infer(x, budget_ms=1e6)}
    for k in range(1, k_all + 1):
        thr = [1.0] * (k - 1) + ([0.0] if k < k_all else []) + [1.0] * max(0, k_all - 1 - k)

        def forced(x: np.ndarray, k: int = k, thr: list = thr) -> None:
            exits[k].append(session.infer(x, budget_ms=1e6, threshold=thr).exit_index)

        contenders[f"infer{k}"] = forced
        contenders[f"chain{k}"] = (lambda x, k=k: be.run_chain(x[None], k))
    t = _interleaved(contenders, xs, runs, warmup)
    out: dict[str, Any] = {"plain": stats_ms(t["plain"]), "per_exit": []}
    ks, ovh = [], []
    for k in range(1, k_all + 1):
        ex = np.asarray(exits[k][warmup:])
        keep = np.asarray(t[f"infer{k}"])[ex == k]
        c = stats_ms(t[f"chain{k}"])
        i = stats_ms(keep) if keep.size else None
        o = None if i is None else (i["p50_ms"] - c["p50_ms"]) * 1e3
        out["per_exit"].append({"exit": k, "chain_p50_ms": c["p50_ms"], "infer_p50_ms": i and i["p50_ms"],
                                "overhead_us": o, "stopped_early": int((ex != k).sum())})
        if o is not None:
            ks.append(k)
            ovh.append(o)
    if len(ks) >= 2:
        slope, intercept = np.polyfit(ks, ovh, 1)
        out["per_section_us"], out["fixed_per_call_us"] = float(slope), float(intercept)
    else:
        out["per_section_us"] = out["fixed_per_call_us"] = None
    full_chain = stats_ms(t[f"chain{k_all}"])["p50_ms"]
    out["plain_overhead_us_per_section"] = (out["plain"]["p50_ms"] - full_chain) * 1e3 / k_all
    out["contract"] = contract(getattr(be, "threads", None), warmup, runs,
                               extra="float inputs (no image preprocessing); overhead = p50(infer) - p50(chain)")
    return out


@contextlib.contextmanager
def cpu_burner(processes: int = 1) -> Iterator[list[subprocess.Popen]]:
    """Neighbour processes that each burn one CPU core in a busy loop while the block runs."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(processes)]
    try:
        time.sleep(0.2)  # let them reach the scheduler
        yield procs
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()


class ScenarioConditions:
    """What a deadline scenario does to the machine between calls (``deadline_compliance.py``,
    ``deadline_frontier.py``): ``idle`` sleeps ``gap_s`` before each of ``gaps`` evenly spaced calls (idle gaps
    longer than any aging window), ``neighbour`` switches a CPU-burning neighbour process on at call 0 and
    on/off every ``phase_calls`` calls, any other scenario does nothing. A context manager: the neighbour
    stops on exit. Call :meth:`before_call` with each call's index, 0 to ``calls - 1``."""

    def __init__(self, scenario: str, calls: int, gaps: int = 2, gap_s: float = 65.0, phase_calls: int = 1000) -> None:
        self.stretch = calls // (gaps + 1) if scenario == "idle" else 0  # calls between idle gaps
        self.gaps, self.gap_s = gaps, gap_s
        self.phase = phase_calls if scenario == "neighbour" else 0
        self._burner: contextlib.ExitStack | None = None

    def before_call(self, i: int) -> None:
        if self.stretch and i and i % self.stretch == 0 and i // self.stretch <= self.gaps:
            time.sleep(self.gap_s)
        if self.phase and i % self.phase == 0:
            if self._burner is None:
                self._burner = contextlib.ExitStack()
                self._burner.enter_context(cpu_burner(1))
            else:
                self.close()

    def close(self) -> None:
        if self._burner is not None:
            self._burner.close()
            self._burner = None

    def __enter__(self) -> "ScenarioConditions":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def oracle_exits(own_ms: np.ndarray, section_ms: np.ndarray, budget_ms: np.ndarray) -> np.ndarray:
    """Per call (rows of ``section_ms`` ``[N, K]``, ``own_ms`` and ``budget_ms`` ``[N]``) the deepest exit
    whose true time, the runtime's own time plus the sections up to it, fits the budget; 0 when exit 1 does
    not: what an oracle knowing the call's times reaches."""
    ends = np.asarray(own_ms, np.float64)[:, None] + np.cumsum(np.asarray(section_ms, np.float64), axis=1)
    return (ends <= np.asarray(budget_ms, np.float64)[:, None]).sum(axis=1)  # ends grow: the fitting ones lead


def scenario_calls(scenario: str, rng: np.random.Generator, calls: int, one_row_ms: tuple[float, float],
                   max_rows_ms: tuple[float, float], max_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows and budgets (ms) of a deadline scenario's calls: one row each, budgets uniform in ``one_row_ms``;
    for ``batches``, 1..``max_rows`` rows (uniform) with budgets uniform in the range linearly between
    ``one_row_ms`` and ``max_rows_ms``."""
    (lo1, hi1), (lon, hin) = one_row_ms, max_rows_ms
    if scenario == "batches":
        rows = rng.integers(1, max_rows + 1, calls)
        f = (rows - 1) / max(1, max_rows - 1)
        return rows, rng.uniform(lo1 + f * (lon - lo1), hi1 + f * (hin - hi1))
    return np.ones(calls, np.int64), rng.uniform(lo1, hi1, calls)


def batches(inputs: np.ndarray, rows: int) -> list[np.ndarray]:
    """``inputs`` (float, preprocessed, ``[N, C, H, W]``) as single images (``rows=0``) or as batches of
    ``rows`` consecutive images, cycling through them; as many items as images (at least one)."""
    if rows <= 0:
        return [np.ascontiguousarray(inputs[i], dtype=np.float32) for i in range(len(inputs))]
    n = len(inputs)
    return [np.ascontiguousarray(inputs[np.arange(i, i + rows) % n], dtype=np.float32) for i in range(n)]


def budget_range(session: Any, inputs: np.ndarray, runs: int = 2000, rows: int = 0) -> tuple[float, float]:
    """Budgets between exit 1 and the full network: (exit-1 p99.9, full p50) of ``infer`` end to end, ms.

    The lower end is the budget exit 1 alone meets 99.9 % of the time: below it no policy can reach
    99.9 % compliance, since exit 1 always runs. ``rows``: batches of that many images (0: one image).
    """
    xs = batches(inputs, rows)
    # "full": the sections to the deepest exit, as a deadline policy runs them (a call with no policy at all may
    # run full.onnx instead, which has no intermediate exit heads)
    t = _interleaved({"exit1": lambda x: session.infer(x, threshold=0.0),
                      "full": lambda x: session.infer(x, budget_ms=1e6)}, xs, runs, runs // 10)
    lo = float(np.percentile(np.asarray(t["exit1"]) * 1e3, 99.9))
    hi = stats_ms(t["full"])["p50_ms"]
    return lo, max(hi, lo * 1.5)


def deadline_compliance(session: Any, inputs: np.ndarray, calls: int = 10_000, budgets_ms: tuple[float, float] | None = None,
                        seed: int = 0, burner: int = 0) -> dict:
    """Share of ``infer`` calls that return within their budget, budgets uniform in ``budgets_ms``.

    ``burner`` neighbour processes burn CPU meanwhile (0 = a quiet machine). Without ``budgets_ms``
    the range is measured (:func:`budget_range`) under the same load, burner included. Inputs rotate
    through ``inputs`` (float, preprocessed); a call's budget counts from its entry.
    """
    xs = batches(inputs, 0)
    met = np.zeros(calls, bool)
    exits = np.zeros(calls, np.int64)
    over = np.zeros(calls)
    with cpu_burner(burner) if burner else contextlib.nullcontext():
        # budgets measured under the same load as the run (unless given): exit 1's own tail moves with it
        lo, hi = budgets_ms or budget_range(session, inputs)
        rng = np.random.default_rng(seed)
        budgets = rng.uniform(lo, hi, calls)
        for i in range(min(200, calls)):  # re-seed the online estimates under the current load
            session.infer(xs[i % len(xs)], budget_ms=float(budgets[i]))
        for i in range(calls):
            r = session.infer(xs[i % len(xs)], budget_ms=float(budgets[i]))
            met[i], exits[i] = r.deadline_met, r.exit_index
            over[i] = r.latency_ms - budgets[i]
    return {"burner_processes": burner, "budget_ms": [lo, hi], "latency_quantile": session.options.latency_quantile,
            **compliance_stats(met, exits, over, session.num_exits),
            "contract": contract(getattr(session.backend, "threads", None), min(200, calls), calls,
                                 extra="budgets uniform in [exit-1 p99.9, full p50] of infer end to end; floor miss = "
                                       "stopped at exit 1 and still late")}


def compliance_stats(met: np.ndarray, exits: np.ndarray, overrun_ms: np.ndarray, num_exits: int,
                     admitted: np.ndarray | None = None, oracle_exits: np.ndarray | None = None) -> dict:
    """Deadline figures of a run of calls: per call whether it ``met`` its deadline, its exit and its
    latency minus its budget (``overrun_ms``).

    A *floor miss* stopped at exit 1 and was still late: no policy could have helped, exit 1 always runs.
    ``admitted`` (optional): the calls whose budget admits exit 1 by another measure (a trace of the true
    times); ``met_share_admitted`` is the share of those that ended by their deadline (the goal's figure).
    ``oracle_exits`` (optional): per call the deepest exit whose true time fits; ``depth_vs_oracle`` is the
    mean exit over the oracle's (over the admitted calls when given).
    """
    met, exits, over = np.asarray(met, bool), np.asarray(exits), np.asarray(overrun_ms, np.float64)
    calls = int(met.size)
    floor = ~met & (exits == 1)
    out: dict[str, Any] = {
        "calls": calls, "met_share": float(met.mean()), "misses": int((~met).sum()), "floor_misses": int(floor.sum()),
        "policy_misses": int((~met & ~floor).sum()),
        "met_share_excluding_floor": float(1 - (~met & ~floor).sum() / max(1, calls - floor.sum())),
        "exit_histogram": [int((exits == j).sum()) for j in range(1, num_exits + 1)], "mean_exit": float(exits.mean()),
        "worst_overrun_ms": float(over.max()),
        "miss_overrun_p50_ms": float(np.median(over[~met])) if (~met).any() else None}
    sel = np.ones(calls, bool) if admitted is None else np.asarray(admitted, bool)
    if admitted is not None:
        out["admitted_calls"] = int(sel.sum())
        out["met_share_admitted"] = float(met[sel].mean()) if sel.any() else None
        out["misses_admitted"] = int((~met & sel).sum())
    if oracle_exits is not None and sel.any():
        oracle = np.asarray(oracle_exits)[sel]
        out["oracle_mean_exit"] = float(oracle.mean())
        out["depth_vs_oracle"] = float(exits[sel].mean() / oracle.mean())
    return out


class TracingBackend(Backend):
    """A backend wrapped to keep the wall time (ms) of every ``run_section`` on ``clock``: the true section
    times of a call, for an oracle. Everything else is the wrapped backend's (same device name, so the
    same latency profile)."""

    def __init__(self, inner: Backend, clock: Callable[[], float] = time.perf_counter) -> None:
        self.inner, self.clock = inner, clock
        self.name = inner.name
        self.times: list[float] = []

    def __getattr__(self, attr: str) -> Any:  # threads, max_batch, ...: the wrapped backend's
        return getattr(self.inner, attr)

    @property
    def num_sections(self) -> int:
        return self.inner.num_sections

    @property
    def device_name(self) -> str:
        return self.inner.device_name

    def upload(self, x: np.ndarray) -> Any:
        return self.inner.upload(x)

    def run_section(self, index: int, x: Any) -> tuple[Any | None, np.ndarray]:
        t = self.clock()
        out = self.inner.run_section(index, x)
        self.times.append((self.clock() - t) * 1e3)
        return out

    def take_rows(self, x: Any, rows: np.ndarray) -> Any:
        return self.inner.take_rows(x, rows)

    def run_reference(self, x: np.ndarray) -> np.ndarray:
        return self.inner.run_reference(x)

    def close(self) -> None:
        self.inner.close()

    def take(self) -> list[float]:
        """The section times since the last call, in order."""
        out, self.times = self.times, []
        return out


def answer_modes(all_logits: np.ndarray, labels: np.ndarray, temperatures: Sequence[float] | None = None,
                 thresholds: Sequence[float] = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99), criterion: str = "max_prob",
                 mac_share: Sequence[float | None] | None = None) -> dict:
    """``answer="last"`` vs ``"ensemble"`` on labelled data, from every exit's logits ``[K, N, C]``.

    Per exit (what a deadline that stops at exit k returns): accuracy of exit k alone and of the mean
    of exits 1..k. Per threshold: accuracy and mean exit (and MAC share) of each mode.
    """
    k = all_logits.shape[0]
    temps = tuple(temperatures) if temperatures is not None else (1.0,) * k
    probs = [softmax(np.asarray(all_logits[j], np.float32), temps[j]) for j in range(k)]
    per_exit = []
    acc = np.zeros_like(probs[0])
    for j in range(k):
        acc = acc + probs[j]
        per_exit.append({"exit": j + 1, "last": float((probs[j].argmax(1) == labels).mean()),
                         "ensemble": float((acc.argmax(1) == labels).mean())})
    sweep = []
    for t in thresholds:
        row: dict[str, Any] = {"threshold": t}
        for mode in ("last", "ensemble"):
            pol = ConfidencePolicy(criterion, (t,) * (k - 1) + (None,), temps)
            r = replay(all_logits, pol, answer=mode)
            row[f"{mode}_accuracy"] = float((r.label == labels).mean())
            row[f"{mode}_mean_exit"] = float(r.exit_index.mean())
            if mac_share and all(m is not None for m in mac_share):
                row[f"{mode}_mac_share"] = float(np.mean([mac_share[e - 1] for e in r.exit_index]))
        sweep.append(row)
    return {"per_exit": per_exit, "threshold_sweep": sweep, "criterion": criterion, "n": int(labels.size)}


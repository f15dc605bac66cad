"""How fast ONNX Runtime stops a section run that is told to stop: why the deadline policy predicts, not cuts.

    python benchmarks/ort_stop_lag.py BUNDLE [--runs 300] [--fractions 0.3,0.6] [--json out.json]

A hard deadline could stop a section still running when the deadline comes (``RunOptions.terminate``, set
from another thread) and answer at the previous exit. That only pays if a run stops much faster than it
would finish. Contract: ONNX Runtime's Python API on the bundle's fp32 section graphs, with the session
settings of the runtime's backend (``intra_op_threads`` 1, no spinning, sequential execution), batch 1,
features from the previous sections as inputs. Per section: ``run`` = the p50 of ``--runs`` plain runs;
``preset`` = a run whose terminate flag is already set when it starts (the failure path alone); for each
fraction f of ``--fractions``, a watchdog thread sets the flag f x ``run`` after the run starts and
``lag`` = from the flag being set to the run's return (p50, p90, max over the runs it stopped), ``total``
= the stopped runs' own time. Printed and written: those figures and ``lag / run`` per section.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np

from sdedge.calibrate import benchmarking as B
from sdedge.common.atomic import write_text_atomic
from sdedge.runtime import open_bundle
from sdedge.runtime.backends.base import BackendOptions
from sdedge.runtime.backends.onnxruntime import OnnxRuntimeBackend
from sdedge.runtime.manifest import features_name, input_name


class Watchdog:
    """One thread that sets ``run_options.terminate`` at a given moment and notes when it did."""

    def __init__(self, run_options) -> None:
        self.ro, self.due, self.fired = run_options, None, None
        self.cv = threading.Condition()
        threading.Thread(target=self._loop, daemon=True).start()

    def arm(self, due: float) -> None:
        with self.cv:
            self.due, self.fired = due, None
            self.cv.notify()

    def disarm(self) -> float | None:
        with self.cv:
            self.due = None
            fired, self.fired = self.fired, None
            self.ro.terminate = False
            return fired

    def _loop(self) -> None:
        with self.cv:
            while True:
                if self.due is None:
                    self.cv.wait()
                    continue
                left = self.due - time.perf_counter()
                if left > 0:
                    self.cv.wait(left)
                    continue
                self.ro.terminate = True
                self.fired, self.due = time.perf_counter(), None


def section_sessions(bundle_dir: Path):
    """The bundle and the ONNX Runtime sessions of its fp32 sections, as the runtime's backend loads them
    (its session options: 1 intra-op thread, no spinning, sequential), and the onnxruntime module."""
    bundle = open_bundle(bundle_dir)
    backend = OnnxRuntimeBackend(bundle, BackendOptions(intra_op_threads=1, full_graph=False))
    return bundle, list(backend._sessions), backend._ort


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("--runs", type=int, default=300)
    p.add_argument("--fractions", default="0.3,0.6", help="when the flag is set, as fractions of the run's p50")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(argv)
    bundle, sessions, ort = section_sessions(args.bundle)
    c, h, w = bundle.manifest.input.shape[1:]
    x = np.random.default_rng(0).standard_normal((1, c, h, w)).astype(np.float32)
    inputs = []
    for k, s in enumerate(sessions, start=1):  # every section's input: the previous section's features
        inputs.append(x)
        if k < len(sessions):
            x = s.run([features_name(k)], {input_name(k): x})[0]
    ro = ort.RunOptions()
    dog = Watchdog(ro)
    fractions = [float(f) for f in args.fractions.split(",")]
    contract = B.contract(1, 20, args.runs, extra=__doc__.split("Contract: ")[1].strip())
    contract.update(inputs="one random normal image, its features through the sections, the same for every run",
                    timer="time.perf_counter around one InferenceSession.run; the watchdog stamps the flag as it sets it")
    rows = []
    for k, (s, xin) in enumerate(zip(sessions, inputs), start=1):
        feed = {input_name(k): xin}
        for _ in range(20):
            s.run(None, feed, ro)
        plain, preset = [], []
        for _ in range(args.runs):
            t = time.perf_counter()
            s.run(None, feed, ro)
            plain.append(time.perf_counter() - t)
            ro.terminate = True
            t = time.perf_counter()
            try:
                s.run(None, feed, ro)
            except Exception:  # noqa: BLE001 - the stop is an error status
                pass
            preset.append(time.perf_counter() - t)
            ro.terminate = False
        run_ms = float(np.median(plain)) * 1e3
        row = {"section": k, "run_p50_ms": round(run_ms, 4), "preset_p50_ms": round(float(np.median(preset)) * 1e3, 4)}
        for f in fractions:
            lags, totals, finished = [], [], 0
            for _ in range(args.runs):
                t = time.perf_counter()
                dog.arm(t + f * run_ms * 1e-3)
                try:
                    s.run(None, feed, ro)
                    stopped = False
                except Exception:  # noqa: BLE001
                    stopped = True
                end = time.perf_counter()
                fired = dog.disarm()
                if stopped and fired is not None:
                    lags.append((end - fired) * 1e3)
                    totals.append((end - t) * 1e3)
                else:
                    finished += 1
            lag = np.array(lags) if lags else np.array([np.nan])
            row[f"at_{f}"] = {"stopped": len(lags), "finished": finished,
                              "lag_p50_ms": round(float(np.median(lag)), 4),
                              "lag_p90_ms": round(float(np.percentile(lag, 90)), 4),
                              "lag_max_ms": round(float(lag.max()), 4),
                              "total_p50_ms": round(float(np.median(totals)) if totals else float("nan"), 4),
                              "lag_over_run": round(float(np.median(lag)) / run_ms, 3)}
        rows.append(row)
        cut = "; ".join(f"flag at {f:.0%}: lag p50 {row[f'at_{f}']['lag_p50_ms']:.3f} ms "
                        f"({row[f'at_{f}']['lag_over_run']:.2f} x run), stopped run {row[f'at_{f}']['total_p50_ms']:.3f} ms"
                        for f in fractions)
        print(f"section {k}: run {run_ms:.3f} ms, preset flag {row['preset_p50_ms']:.3f} ms; {cut}", flush=True)
    if args.json:
        write_text_atomic(args.json, json.dumps({"contract": contract, "onnxruntime": ort.__version__,
                                                 "sections": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

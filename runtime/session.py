"""``AnytimeSession``: run a bundle section by section and stop each input at the right exit.

::

    from sdedge.runtime import AnytimeSession
    session = AnytimeSession("bundle/")                   # onnxruntime on CPU by default
    r = session.infer(image, budget_ms=5)                 # deepest exit that fits the budget
    r = session.infer(image, threshold=0.9)               # first exit with confidence >= 0.9
    r = session.infer(image, threshold="calibrated")      # calibration.json's per-exit thresholds
    r.label, r.class_name, r.confidence, r.exit_index, r.latency_ms, r.deadline_met

Decisions (see :mod:`sdedge.runtime.policies` for the criteria and the deadline rule):

* ``threshold=None`` means *no confidence stop*: without a budget or deadline the input runs to the
  deepest exit. The calibrated thresholds are used only when asked for (``threshold="calibrated"``),
  so that what a call does never changes silently when a bundle gets calibrated. The calibrated
  *temperatures*, though, always apply when ``calibration.json`` exists: ``probabilities`` and
  ``confidence`` are calibrated probabilities, and a user's ``threshold=0.9`` means calibrated 0.9.
* ``budget_ms`` counts from the call; ``deadline`` is an absolute ``time.perf_counter()`` time (a
  server passes arrival + budget so queueing counts). With both, the earlier wins.
* ``latency_ms`` is the time from the call to the return (the same for every sample of a batch, as
  they are all returned together); ``deadline_met`` is whether the return happened by the deadline
  (``None`` without one).
* A batch: every sample stops on its own; only the rows still going on run the next section. The
  deadline applies to the whole call.
* Calls are serialized by a lock: concurrent calls on one device would only slow each other down and
  spoil each other's latency estimates.
* ``answer="last"`` (default) answers with the last exit run; ``"ensemble"`` with the mean of the
  softmax of the exits run so far. Measured on Fashion-MNIST (ResNet-18 width 16, BYOT, 10 000 test
  images, ``benchmarks/runtime_bench.py``), "last" was as good or better at every exit (exit 2:
  0.9135 vs 0.9040) and at every threshold at equal cost, so it is the default.
* ``warmup`` calls (batch 1) seed the online latency estimates; with ``warmup=0`` and no profile the
  first calls under a deadline have no estimate for the next section and run it.
"""
from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import dataclass, field
from numbers import Real
from typing import Any, Sequence

import numpy as np

from .backends import create_backend
from .backends.base import Backend, BackendOptions
from .bundle import Bundle, open_bundle
from .calibration import Calibration, load_calibration
from .errors import InputError, PolicyError
from .manifest import Manifest
from .policies import (ANSWERS, ConfidencePolicy, DeadlinePolicy, LatencyEstimator, check_criterion, confidence,
                       exit_answers, max_prob_of_row)
from .preprocess import Preprocessor
from .profile import LatencyProfile, load_profile

_clock = time.perf_counter


@dataclass
class InferenceResult:
    """The answer for one input."""

    label: int
    class_name: str
    probabilities: np.ndarray  # [C] float32: the answer's (temperature-scaled) probabilities
    confidence: float  # the answer's confidence under the criterion used, in [0, 1]
    exit_index: int  # 1-based exit that answered
    exits_run: int  # sections run for this input (== exit_index)
    latency_ms: float  # call to return
    deadline_met: bool | None  # None when the call had no budget or deadline
    stopped_by: str = "last"  # "confidence", "deadline" or "last" (reached the deepest exit)
    _exit_conf: list[float] | None = field(default=None, repr=False, compare=False)
    _trace: tuple | None = field(default=None, repr=False, compare=False)  # (logits per exit, policy, answer)

    @property
    def exit_confidences(self) -> list[float]:
        """Confidence of the answer at every exit run, shallow first (computed on first access)."""
        if self._exit_conf is None:
            logits, pol, answer = self._trace  # type: ignore[misc]
            _, conf = exit_answers(np.stack(logits), pol, answer)
            self._exit_conf = [float(c) for c in conf[:, 0]]
        return self._exit_conf


class AnytimeSession:
    """A verified bundle loaded on a backend, ready to answer under a threshold and/or a deadline."""

    def __init__(self, bundle: str | os.PathLike | Bundle, backend: str | Backend = "auto", precision: str = "fp32",
                 providers: Sequence[str] | None = None, intra_op_threads: int | None = None, warmup: int = 3,
                 max_batch: int = 64, answer: str = "last", criterion: str = "max_prob", verify: bool = True,
                 latency_quantile: float = 0.99, latency_window: int = 256,
                 backend_options: dict[str, Any] | None = None) -> None:
        if answer not in ANSWERS:
            raise PolicyError(f"answer must be one of {', '.join(ANSWERS)}, got {answer!r}")
        if not isinstance(max_batch, int) or isinstance(max_batch, bool) or max_batch < 1:
            raise PolicyError(f"max_batch must be a positive integer, got {max_batch!r}")
        if not isinstance(warmup, int) or isinstance(warmup, bool) or warmup < 0:
            raise PolicyError(f"warmup must be a non-negative integer, got {warmup!r}")
        self.criterion = check_criterion(criterion)
        self.answer = answer
        self.max_batch = max_batch
        self.bundle = bundle if isinstance(bundle, Bundle) else open_bundle(bundle, verify=verify)
        self.manifest: Manifest = self.bundle.manifest
        self.calibration: Calibration | None = load_calibration(self.bundle)
        if isinstance(backend, Backend):
            self.backend = backend
        else:
            opts = BackendOptions(precision=precision, intra_op_threads=intra_op_threads, providers=providers,
                                  max_batch=max_batch, extra=dict(backend_options or {}))
            self.backend = create_backend(self.bundle, backend, opts)
        try:
            # a backend with fixed buffers (TensorRT) may hold fewer rows than asked for
            self.max_batch = min(max_batch, int(getattr(self.backend, "max_batch", max_batch)))
            self.profile: LatencyProfile | None = load_profile(self.bundle, self.backend.device_name)
            self.estimator = LatencyEstimator(self.num_exits, window=latency_window, quantile=latency_quantile)
            self.deadline_policy = DeadlinePolicy(self.estimator, self.profile)
            self._prep = Preprocessor(self.manifest, self.max_batch)
            self._prep_any = Preprocessor(self.manifest, 1 << 62)  # infer_all_exits chunks any batch
            self._lock = threading.Lock()
            self._policies: dict[tuple[Any, str | None], ConfidencePolicy] = {}
            self._default_policy: ConfidencePolicy | None = None
            self._default_policy = self.policy(None, None)
            self._warmup(warmup)
        except BaseException:
            if not isinstance(backend, Backend):
                self.backend.close()  # do not leak device memory on a failed start
            raise

    # -- description ---------------------------------------------------------------------------------
    @property
    def classes(self) -> tuple[str, ...]:
        return self.manifest.classes

    @property
    def num_exits(self) -> int:
        return self.manifest.num_exits

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one preprocessed input."""
        return self._prep.chw

    @property
    def device_name(self) -> str:
        return self.backend.device_name

    @property
    def backend_name(self) -> str:
        return self.backend.name

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> "AnytimeSession":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"AnytimeSession({str(self.bundle.path)!r}, backend={self.backend_name!r}, device={self.device_name!r}, "
                f"exits={self.num_exits}, profile={'yes' if self.profile else 'no'}, "
                f"calibration={'yes' if self.calibration else 'no'})")

    # -- warm-up ---------------------------------------------------------------------------------------
    def _warmup(self, n: int) -> None:
        """Run every section ``n`` times at batch 1 (first run untimed), seeding the latency estimates."""
        if n <= 0:
            return
        x = np.zeros((1,) + self.input_shape, np.float32)
        for i in range(n + 1):
            h = self.backend.upload(x)
            for k in range(1, self.num_exits + 1):
                t = _clock()
                h, _ = self.backend.run_section(k, h)
                if i:
                    self.estimator.record(k, 1, (_clock() - t) * 1e3)
        for _ in range(n):  # the runtime's own time, measured on real calls
            self.infer(x[0])

    # -- policies -----------------------------------------------------------------------------------------
    def policy(self, threshold: Any = None, criterion: str | None = None) -> ConfidencePolicy:
        """The confidence policy a call with these arguments uses (cached for hashable arguments)."""
        if threshold is None and criterion is None and self._default_policy is not None:
            return self._default_policy
        key = (tuple(threshold) if isinstance(threshold, (list, tuple, np.ndarray)) else threshold, criterion)
        try:
            pol = self._policies.get(key)
        except TypeError:
            pol, key = None, None
        if pol is None:
            pol = ConfidencePolicy.build(self.num_exits, threshold, criterion, self.calibration, self.criterion)
            if key is not None and len(self._policies) < 64:
                self._policies[key] = pol
        return pol

    @staticmethod
    def _deadline(t0: float, budget_ms: Any, deadline: Any) -> float | None:
        d = None
        if budget_ms is not None:
            if isinstance(budget_ms, bool) or not isinstance(budget_ms, Real) or not math.isfinite(budget_ms) \
                    or budget_ms <= 0:
                raise PolicyError(f"budget_ms must be a positive finite number of milliseconds, got {budget_ms!r}")
            d = t0 + float(budget_ms) * 1e-3
        if deadline is not None:
            if isinstance(deadline, bool) or not isinstance(deadline, Real) or not math.isfinite(deadline):
                raise PolicyError(f"deadline must be a finite time.perf_counter() value in seconds, got {deadline!r}")
            d = float(deadline) if d is None else min(d, float(deadline))
        return d

    # -- inference ---------------------------------------------------------------------------------------
    def infer(self, x: Any, budget_ms: float | None = None, threshold: Any = None, criterion: str | None = None,
              deadline: float | None = None) -> InferenceResult | list[InferenceResult]:
        """Answer one image (``InferenceResult``) or a batch (a list, one per image); see the module doc."""
        t0 = _clock()
        stop_at = self._deadline(t0, budget_ms, deadline)
        pol = self.policy(threshold, criterion)
        prep = self._prep(x)
        prep_ms = (_clock() - t0) * 1e3
        with self._lock:  # time spent waiting here counts against the deadline, not as overhead
            if prep.batch.shape[0] == 1:
                r = self._infer_one(prep.batch, pol, stop_at, t0, prep_ms)
                return r if prep.single else [r]
            return self._infer(prep.batch, prep.single, pol, stop_at, t0, prep_ms)

    def _infer_one(self, x1: np.ndarray, pol: ConfidencePolicy, stop_at: float | None, t0: float,
                   prep_ms: float) -> InferenceResult:
        """The batch-of-one path: the same decisions as :meth:`_infer`, on scalars, no row bookkeeping."""
        t1 = _clock()
        backend, est, K, record = self.backend, self.estimator, self.num_exits, self.estimator.record
        ensemble = self.answer == "ensemble"
        fast_max_prob = pol.criterion == "max_prob" and not ensemble
        trace: list[np.ndarray] = []
        acc = probs = None
        conf: float | None = None
        section_ms = 0.0
        why = "last"
        h = backend.upload(x1)
        for k in range(1, K + 1):
            ts = _clock()
            h, logits = backend.run_section(k, h)
            dt = (_clock() - ts) * 1e3
            record(k, 1, dt)
            section_ms += dt
            trace.append(logits)
            probs = None
            if ensemble:
                p = pol.probs(k, logits)
                acc = p if acc is None else acc + p
            if k == K:
                break
            thr = pol.thresholds[k - 1]
            if thr is not None:
                if fast_max_prob:
                    conf = max_prob_of_row(logits[0], pol.temperatures[k - 1])
                else:
                    probs = acc / np.float32(k) if ensemble else pol.probs(k, logits)
                    conf = float(confidence(probs, pol.criterion)[0])
                if conf >= thr:
                    why = "confidence"
                    break
            if stop_at is not None and self.deadline_policy.should_stop(k + 1, 1, _clock(), stop_at):
                why = "deadline"
                break
        if probs is None:
            probs = acc / np.float32(k) if ensemble else pol.probs(k, logits)
            conf = None
        if not np.isfinite(probs).all():
            raise _non_finite(k, x1)
        label = int(probs[0].argmax())
        if conf is None:
            conf = float(probs[0, label]) if pol.criterion == "max_prob" else float(confidence(probs, pol.criterion)[0])
        t_end = _clock()
        record(0, 1, prep_ms + (t_end - t1) * 1e3 - section_ms)
        return InferenceResult(label, self.classes[label], probs[0], conf, k, k, (t_end - t0) * 1e3,
                               None if stop_at is None else t_end <= stop_at, why,
                               _trace=(trace, pol, self.answer))

    def _infer(self, xb: np.ndarray, single: bool, pol: ConfidencePolicy, stop_at: float | None,
               t0: float, prep_ms: float) -> InferenceResult | list[InferenceResult]:
        t1 = _clock()
        backend, est, K = self.backend, self.estimator, self.num_exits
        n_all = xb.shape[0]
        ensemble = self.answer == "ensemble"
        out_probs = np.empty((n_all, len(self.classes)), np.float32)
        out_conf = np.empty(n_all, np.float32)
        out_exit = np.zeros(n_all, np.int64)
        out_why = [""] * n_all
        exit_conf = np.full((K, n_all), np.nan, np.float32)
        acc = np.zeros((n_all, len(self.classes)), np.float32) if ensemble else None
        rows = np.arange(n_all)
        section_ms = 0.0
        h = backend.upload(xb)
        for k in range(1, K + 1):
            n = rows.size
            ts = _clock()
            h, logits = backend.run_section(k, h)
            dt = (_clock() - ts) * 1e3
            est.record(k, n, dt)
            section_ms += dt
            probs = pol.probs(k, logits)
            if ensemble:
                acc[rows] += probs
                probs = acc[rows] / np.float32(k)
            conf = confidence(probs, pol.criterion)
            exit_conf[k - 1, rows] = conf
            if k == K:
                stop, why = np.ones(n, bool), "last"
            else:
                m = pol.stop_mask(k, conf)
                stop, why = (np.zeros(n, bool) if m is None else m), "confidence"
                if stop_at is not None and not stop.all():
                    n_next = n - int(stop.sum())
                    if self.deadline_policy.should_stop(k + 1, n_next, _clock(), stop_at):
                        for i in rows[stop]:
                            out_why[i] = "confidence"
                        stop, why = np.ones(n, bool), "deadline"
            if stop.any():
                done = rows[stop]
                out_probs[done] = probs[stop]
                out_conf[done] = conf[stop]
                out_exit[done] = k
                for i in done:
                    if not out_why[i]:
                        out_why[i] = why
                if stop.all():
                    break
                keep = np.flatnonzero(~stop)
                h = backend.take_rows(h, keep)
                rows = rows[keep]
        bad = ~np.isfinite(out_probs).all(axis=1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise _non_finite(int(out_exit[i]), xb[i:i + 1], f"image {i} of the batch")
        labels = out_probs.argmax(axis=1)
        results = []
        for i in range(n_all):
            ke = int(out_exit[i])
            results.append(InferenceResult(
                label=int(labels[i]), class_name=self.classes[labels[i]], probabilities=out_probs[i],
                confidence=float(out_conf[i]), exit_index=ke, exits_run=ke, latency_ms=0.0, deadline_met=None,
                stopped_by=out_why[i], _exit_conf=[float(c) for c in exit_conf[:ke, i]]))
        t_end = _clock()
        est.record(0, n_all, prep_ms + (t_end - t1) * 1e3 - section_ms)
        latency = (t_end - t0) * 1e3
        met = None if stop_at is None else t_end <= stop_at
        for r in results:
            r.latency_ms, r.deadline_met = latency, met
        return results[0] if single else results

    def infer_all_exits(self, x: Any) -> np.ndarray:
        """Every exit's raw logits ``[K, B, C]`` (no temperature) for one image or a batch of any size.

        Batches larger than ``max_batch`` run in chunks of ``max_batch``; the other input rules are
        those of :meth:`infer`.
        """
        xb = self._prep_any(x).batch
        outs = []
        with self._lock:
            for i in range(0, xb.shape[0], self.max_batch):
                h = self.backend.upload(xb[i:i + self.max_batch])
                per = []
                for k in range(1, self.num_exits + 1):
                    h, logits = self.backend.run_section(k, h)
                    per.append(np.array(logits, np.float32, copy=True))
                outs.append(np.stack(per))
        return np.concatenate(outs, axis=1)


def _non_finite(exit_index: int, x: np.ndarray, what: str = "the input") -> InputError:
    """The error for an input whose values are finite but drive the network to NaN/Inf (e.g. |x| ~ 1e38)."""
    peak = float(np.abs(x).max()) if x.size else 0.0
    return InputError(f"exit {exit_index} produced non-finite probabilities (NaN/Inf) for {what}: its preprocessed "
                      f"values reach |x| = {peak:.3g}, which overflows the network; expected preprocessed values of "
                      f"order 1 (or send raw uint8 pixels)")

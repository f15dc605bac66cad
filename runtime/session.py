"""``AnytimeSession``: run a bundle section by section and stop each input at the right exit.

::

    from sdedge.runtime import AnytimeSession, SessionOptions
    session = AnytimeSession("bundle/")                   # onnxruntime on CPU by default
    session = AnytimeSession("bundle/", SessionOptions(intra_op_threads=1, max_batch=8))   # settings: one record
    session = AnytimeSession("bundle/", intra_op_threads=1, warmup=0)   # or its fields as keywords (overrides)
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
* ``budget_ms`` counts from the call; ``deadline`` is an absolute ``time.perf_counter()`` time (the
  session's ``clock``; a server passes arrival + budget so queueing counts). With both, the earlier wins.
* ``latency_ms`` is the time from the call to the return (the same for every sample of a batch, as
  they are all returned together); ``deadline_met`` is whether the return happened by the deadline
  (``None`` without one).
* A batch: every sample stops on its own; only the rows still going on run the next section. The
  deadline applies to the whole call.
* Calls are serialized by a lock: concurrent calls on one device would only slow each other down and
  spoil each other's latency estimates.
* A call with no policy (no budget or deadline, no threshold before the deepest exit, ``answer="last"``)
  runs the bundle's ``full.onnx`` when the session loaded it (``full_graph=True``, the default; ONNX Runtime,
  fp32): one graph to the deepest exit, without the intermediate exit heads the chain of sections would run
  (the same answer within float tolerance: export checks the two agree). Such a call teaches the deadline
  policy nothing; its ``exit_confidences``, if read, run the sections then on the call's input.
* ``answer="last"`` (default) answers with the last exit run; ``"ensemble"`` with the mean of the
  softmax of the exits run so far. Measured on Fashion-MNIST (ResNet-18 width 16, BYOT, 10 000 test
  images, ``benchmarks/runtime_bench.py``), "last" was as good or better at every exit (exit 2:
  0.9135 vs 0.9040) and at every threshold at equal cost, so it is the default.
* ``warmup`` calls at 1 row and at ``max_batch`` rows seed the online latency estimates with the
  lower median of their times (:mod:`sdedge.runtime.policies`, rule 5); with ``warmup=0`` and no profile the
  first calls under a deadline have no estimate for a section not yet run, and run it.
* ``engine``: ``"native"`` runs the decisions in the C++ core (``libsdedge.so``, the C ABI that C and C++
  users call, through :mod:`sdedge.runtime.native_engine`; the GIL is released while it runs),
  ``"python"`` in this module; ``"auto"`` (default) picks native when the core is installed and the
  session can run there (ONNX Runtime, fp32, the default clock), else python. ``session.engine`` says
  which runs. Both take the same arguments, validate inputs and policies here, and build the same
  ``InferenceResult``; they decide alike (shared test vectors). The native engine keeps its latency
  figures inside the core: ``estimator`` and ``deadline_policy`` exist on the Python engine only, and
  ``backend`` there is a Python ONNX Runtime backend over the same bundle made on first access, for
  reference measurements (``sdedge bench``, profiles); the native engine does not run on it.
"""
from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import dataclass, field
from numbers import Real
from typing import Any, Callable

import numpy as np

from .backends import create_backend, resolve_precision
from .backends.base import Backend
from .bundle import Bundle, open_bundle
from .calibration import Calibration, load_calibration
from ..common.errors import InputError, PolicyError
from .manifest import Manifest
from .options import SessionOptions
from .policies import (ConfidencePolicy, DeadlinePolicy, LatencyEstimator, check_budget_ms, confidence, exit_answers)
from .preprocess import Preprocessor
from .profile import LatencyProfile, load_profile


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
    # (call trace, row, policy, answer) on the Python engine; (None, the row's exit confidences, None,
    # None) on the native engine
    _trace: tuple | None = field(default=None, repr=False, compare=False)

    @property
    def exit_confidences(self) -> list[float]:
        """Confidence of the answer at every exit run, shallow first (computed on first access; after a call
        that ``full.onnx`` answered, by running the sections on the call's input then)."""
        if self._exit_conf is None:
            trace, row, pol, answer = self._trace  # type: ignore[misc]
            if callable(trace):  # the full graph answered: every exit's logits of the batch, computed now
                _, conf = exit_answers(trace()[:, row:row + 1], pol, answer)
                self._exit_conf = [float(c) for c in conf[:self.exit_index, 0]]
                return self._exit_conf
            if trace is None:  # the native core computed them
                self._exit_conf = [float(c) for c in row[:self.exit_index]]
                return self._exit_conf
            if any(lg is None for _, lg in trace[:self.exit_index]):  # an exit head the call did not run
                _, conf = exit_answers(trace.recompute()[:, row:row + 1], pol, answer)
                self._exit_conf = [float(c) for c in conf[:self.exit_index, 0]]
                return self._exit_conf
            # each section's (rows still running, their logits); rows stay sorted as the batch shrinks
            logits = [lg[np.searchsorted(rows, row)] for rows, lg in trace[:self.exit_index]]
            _, conf = exit_answers(np.stack(logits)[:, None, :], pol, answer)
            self._exit_conf = [float(c) for c in conf[:, 0]]
        return self._exit_conf


class AnytimeSession:
    """A verified bundle loaded on a backend, ready to answer under a threshold and/or a deadline."""

    def __init__(self, bundle: str | os.PathLike | Bundle, options: SessionOptions | None = None, *,
                 clock: Callable[[], float] = time.perf_counter, **overrides: Any) -> None:
        """Open (and verify) ``bundle`` and load it on a backend.

        ``options``: a :class:`~sdedge.runtime.options.SessionOptions` (default: its defaults); keyword
        arguments override its fields (``AnytimeSession("b/", backend="onnxruntime", intra_op_threads=1,
        warmup=1)``); an unknown name is a ``TypeError``, a bad value a ``PolicyError``. ``clock``: the
        monotonic clock in seconds that times sections and deadlines (``deadline=`` values are read on it;
        tests pass a scripted one).
        """
        self.clock = clock
        self._native: Any = None
        opts = SessionOptions.resolve(options, **overrides)
        self.bundle = bundle if isinstance(bundle, Bundle) else open_bundle(bundle, verify=opts.verify)
        # precision "auto": the best engines built for this device where the backend may be TensorRT, else fp32
        opts = opts.replace(precision=resolve_precision(self.bundle, opts.backend, opts.precision))
        self.engine = _choose_engine(opts, clock)
        self.options = opts
        self.precision = opts.precision
        self.criterion = opts.criterion
        self.answer = opts.answer
        self.max_batch = opts.max_batch
        self.manifest: Manifest = self.bundle.manifest
        self.calibration: Calibration | None = load_calibration(self.bundle)
        if self.engine == "native":
            self._open_native(opts)
            return
        backend, max_batch = opts.backend, opts.max_batch
        if isinstance(backend, Backend):
            self.backend = backend
        else:
            self.backend = create_backend(self.bundle, backend, opts.for_backend())
        try:
            # a backend with fixed buffers (TensorRT) may hold fewer rows than asked for
            self.max_batch = min(max_batch, int(getattr(self.backend, "max_batch", max_batch)))
            self.profile: LatencyProfile | None = load_profile(self.bundle, self.backend.device_name)
            self.estimator = LatencyEstimator(self.num_exits, window=opts.latency_window,
                                              quantile=opts.latency_quantile)
            self.deadline_policy = DeadlinePolicy(self.estimator, self.profile)
            self._prep = Preprocessor(self.manifest, self.max_batch)
            self._prep_any = Preprocessor(self.manifest, 1 << 62)  # infer_all_exits chunks any batch
            self._lock = _SessionLock()
            self._policies: dict[tuple[Any, str | None], ConfidencePolicy] = {}
            self._default_policy: ConfidencePolicy | None = None
            self._default_policy = self.policy(None, None)
            self._warmup(opts.warmup)
        except BaseException:
            if not isinstance(backend, Backend):
                self.backend.close()  # do not leak device memory on a failed start
            raise

    def _open_native(self, opts: SessionOptions) -> None:
        """The native engine's start: the core opens the bundle, verifies it again itself (it loads the files:
        a file swapped after the Python reader's check is caught by the one that reads it), loads ONNX
        Runtime and runs the warm-up."""
        from .native_engine import NativeSession

        self._native = NativeSession(str(self.bundle.path), opts)
        self.max_batch = self._native.max_batch
        self.profile = load_profile(self.bundle, self.device_name)
        self._prep = Preprocessor(self.manifest, self.max_batch)
        self._prep_any = Preprocessor(self.manifest, 1 << 62)
        self._policies = {}
        self._default_policy = None
        self._default_policy = self.policy(None, None)

    def __getattr__(self, name: str) -> Any:
        # only reached for attributes the instance lacks: the Python engine's internals on a native session
        if name == "backend" and self.__dict__.get("_native") is not None:
            # a Python ONNX Runtime backend over the same bundle, for reference measurements only
            self.backend = create_backend(self.bundle, self.options.backend, self.options.for_backend())
            return self.backend
        if name in ("estimator", "deadline_policy") and self.__dict__.get("_native") is not None:
            raise AttributeError(f"AnytimeSession.{name} is not available on the native engine (the core keeps its "
                                 f"latency figures inside); open the session with engine='python' to read it")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

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
        if self._native is not None:
            return self._native.description["device_name"]
        return self.backend.device_name

    @property
    def backend_name(self) -> str:
        if self._native is not None:
            return self._native.description["backend"]
        return self.backend.name

    @property
    def backend_info(self) -> dict[str, str]:
        """What runs this session: ``engine`` (native or python), ``backend`` (onnxruntime, tensorrt),
        ``precision`` (fp32, fp16, int8; "auto" resolved) and ``device`` (the profile's device name)."""
        return {"engine": self.engine, "backend": self.backend_name, "precision": self.precision,
                "device": self.device_name}

    @property
    def full_graph(self) -> bool:
        """Whether a call with no policy runs the bundle's ``full.onnx`` (loaded: ``full_graph=True``, the bundle
        has one, ONNX Runtime in fp32) rather than the chain of sections."""
        if self._native is not None:
            return bool(self._native.description.get("full_graph", False))
        return self.backend.has_full

    def section_cost_ms(self, section: int, rows: int = 1) -> float:
        """The deadline policy's predicted time of 1-based ``section`` on ``rows`` rows in ms (section 0: the
        runtime's own per-call overhead); 0 while nothing is known. On either engine (the native core keeps its
        own figures): what a scheduler uses to size batches and refuse work that cannot meet its deadline."""
        if self._native is not None:
            return self._native.section_cost_ms(section, rows)
        if not 0 <= section <= self.num_exits or rows < 1:
            raise PolicyError(f"section must be 0..{self.num_exits} and rows >= 1, got section {section}, rows {rows}")
        pol = self.deadline_policy
        return pol.overhead_ms(rows) if section == 0 else pol.section_cost_ms(section, rows)

    def describe_backend(self) -> str:
        """One line for logs: ``onnxruntime fp32 on <device> (native engine)``; a format version 2 bundle adds
        ``, exit heads apart``."""
        heads = ", exit heads apart" if self.manifest.split_heads else ""
        return f"{self.backend_name} {self.precision} on {self.device_name} ({self.engine} engine{heads})"

    def close(self) -> None:
        if self._native is not None:
            self._native.close()
            if "backend" in self.__dict__:
                self.__dict__["backend"].close()
            return
        self.backend.close()

    def __enter__(self) -> "AnytimeSession":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"AnytimeSession({str(self.bundle.path)!r}, engine={self.engine!r}, backend={self.backend_name!r}, "
                f"device={self.device_name!r}, "
                f"exits={self.num_exits}, profile={'yes' if self.profile else 'no'}, "
                f"calibration={'yes' if self.calibration else 'no'})")

    # -- warm-up ---------------------------------------------------------------------------------------
    def _warmup(self, n: int) -> None:
        """Seed the latency estimates at 1 row and at ``max_batch`` rows: one untimed run of every section,
        then ``n`` calls running every section, timed as live calls are; each (section, rows) cell then
        keeps the lower median of its ``n`` samples (policies rule 5: one pre-empted warm-up run does not
        count). Row counts in between borrow pessimistically (rule 3) until live calls measure them, so
        start-up costs ``(n + 1) * (1 + max_batch)`` rows of inference, not a sweep of every size."""
        if n <= 0:
            return
        counts = sorted({1, self.max_batch})
        for rows in counts:
            x = np.zeros((rows,) + self.input_shape, np.float32)
            self.backend.run_chain(x)
            if self.backend.has_full:
                self.backend.run_full(self.backend.upload(x))
            for _ in range(n):  # as infer(x) does, on the sections (the full graph would time none of them)
                t0 = self.clock()
                with self._lock:
                    self._run(x, self._default_policy, None, t0, (self.clock() - t0) * 1e3, full=False,
                              all_heads=True)
        self.estimator.settle()

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
        d = None if budget_ms is None else t0 + check_budget_ms(budget_ms) * 1e-3
        if deadline is not None:
            if isinstance(deadline, bool) or not isinstance(deadline, Real) or not math.isfinite(deadline):
                raise PolicyError(f"deadline must be a finite time.perf_counter() value in seconds, got {deadline!r}")
            d = float(deadline) if d is None else min(d, float(deadline))
        return d

    # -- inference ---------------------------------------------------------------------------------------
    def infer(self, x: Any, budget_ms: float | None = None, threshold: Any = None, criterion: str | None = None,
              deadline: float | None = None) -> InferenceResult | list[InferenceResult]:
        """Answer one image (``InferenceResult``) or a batch (a list, one per image); see the module doc."""
        clock = self.clock
        t0 = clock()
        stop_at = self._deadline(t0, budget_ms, deadline)
        pol = self.policy(threshold, criterion)
        prep = self._prep(x, self._native is not None)  # the core checks and preprocesses what it takes
        results = self._call(prep.batch, pol, stop_at, t0)
        return results[0] if prep.single else results

    def _deepest_only(self, pol: ConfidencePolicy) -> bool:
        """Whether a call needs no exit but the deepest one's answer: no confidence stop before the deepest exit,
        answer "last" (such a call may run ``full.onnx``: always without a deadline, under one by rule 9)."""
        return not pol.active and self.answer == "last"

    def _no_policy(self, pol: ConfidencePolicy, stop_at: float | None) -> bool:
        """Whether a call runs every row to the deepest exit and answers there alone: no deadline either."""
        return stop_at is None and self._deepest_only(pol)

    def _call(self, xb: np.ndarray, pol: ConfidencePolicy, stop_at: float | None, t0: float) -> list[InferenceResult]:
        """One call of a prepared batch under one policy and deadline, on the session's engine."""
        if self._native is not None:
            return self._run_native(xb, pol, stop_at, t0)
        prep_ms = (self.clock() - t0) * 1e3
        with self._lock:  # time spent waiting here counts against the deadline, not as overhead
            return self._run(xb, pol, stop_at, t0, prep_ms)

    def infer_rows(self, x: Any, thresholds: Any = None, deadlines: Any = None, criterion: str | None = None,
                   on_settled: Callable[[list[int], list[InferenceResult]], None] | None = None
                   ) -> list[InferenceResult]:
        """Answer a batch whose rows each carry their own threshold and deadline (a server's dynamic batch).

        ``thresholds``: None, or one entry per row, each anything ``infer``'s ``threshold`` takes (None,
        a number, a per-exit list, ``"calibrated"``); ``deadlines``: None, or one absolute ``clock`` time
        (or None) per row. Every row stops at its own exit: confident enough under its threshold, or out
        of time for its deadline; before each next section the rows whose deadline it would overrun stop,
        earliest deadline first, each check counting only the rows still going on (fewer rows cost less).
        One criterion for the call (the rows' thresholds must all resolve to it: ``"calibrated"`` rows take
        the calibration's). Each row is answered when it settles: its ``latency_ms`` runs from the call to
        that moment and ``deadline_met`` says whether that moment was by its deadline; ``on_settled(indices,
        results)`` (optional, called on the calling thread, must not raise) hears of the rows as they settle,
        so a server can answer a request before the rest of its batch finishes. Returns a list, one result
        per row, in input order.
        """
        clock = self.clock
        t0 = clock()
        prep = self._prep(x, self._native is not None)  # the core checks and preprocesses what it takes
        xb = prep.batch
        n = xb.shape[0]
        thr = [None] * n if thresholds is None else list(thresholds)
        dls = [None] * n if deadlines is None else list(deadlines)
        if len(thr) != n or len(dls) != n:
            raise PolicyError(f"infer_rows needs one threshold and one deadline per row: {n} rows, "
                              f"{len(thr)} thresholds, {len(dls)} deadlines")
        pols = [self.policy(t, criterion) for t in thr]
        pol = pols[0]
        for p in pols[1:]:
            if p.criterion != pol.criterion:
                raise PolicyError(f"the rows of one infer_rows call must share a criterion; got {pol.criterion!r} "
                                  f"and {p.criterion!r} (\"calibrated\" rows use the calibration's)")
        row_dl = np.array([math.inf if d is None else self._deadline(t0, None, d) for d in dls], np.float64)
        if all(d is None for d in dls) and all(self._no_policy(p, None) for p in pols):
            results = self._call(xb, pol, None, t0)  # no row has a policy: one call with none (full.onnx)
            if on_settled is not None:
                on_settled(list(range(n)), results)
            return results
        row_thr = np.array([[math.nan if t is None else t for t in p.thresholds32] for p in pols], np.float32)
        if self._native is not None:
            results = self._run_native(xb, pol, None, t0, row_thr, row_dl, on_settled)
        else:
            prep_ms = (clock() - t0) * 1e3
            with self._lock:
                results = self._run(xb, pol, None, t0, prep_ms, row_thr, row_dl, on_settled)
        return results

    def _run_native(self, xb: np.ndarray, pol: ConfidencePolicy, stop_at: float | None, t0: float,
                    row_thr: np.ndarray | None = None, row_dl: np.ndarray | None = None,
                    on_settled: Callable[[list[int], list[InferenceResult]], None] | None = None
                    ) -> list[InferenceResult]:
        """The decision loop in the core: the resolved policy and the deadline (on the core's clock) go in,
        each row's exit, stop reason, probabilities and exit confidences come back. With ``row_thr`` /
        ``row_dl`` (:meth:`infer_rows`) each row's own threshold and deadline go in instead."""
        nat = self._native
        dl, row_ns = 0, None
        if stop_at is not None or row_dl is not None:  # deadlines on sdedge_now_ns()'s clock (>= 1: 0 means none)
            # a deadline centuries away (a huge but finite budget) is clipped to one 146 years on: int64 holds it
            offset_ns = nat.now_ns() - self.clock() * 1e9
            if stop_at is not None:
                dl = round(min(max(1.0, stop_at * 1e9 + offset_ns), _FAR_NS))
            if row_dl is not None:
                finite = np.isfinite(row_dl)
                row_ns = np.zeros(row_dl.shape[0], np.int64)
                row_ns[finite] = np.clip(np.round(row_dl[finite] * 1e9 + offset_ns), 1, _FAR_NS)
        row_mode = row_thr is not None  # infer_rows passes both row_thr and row_dl, infer neither
        thresholds = (None,) * pol.num_exits if row_mode else pol.thresholds

        later: list[_AllExits] = []

        def rows_of(idx: list[int], res: np.ndarray, probs: np.ndarray, conf: np.ndarray | None
                    ) -> list[InferenceResult]:
            if conf is None and not later:
                later.append(_AllExits(self, xb))
            sel = slice(None) if len(idx) == res.shape[0] else idx  # every row (in order): views, no copies
            stops = nat.STOPS
            out = self._results(probs[sel], res["confidence"][sel], res["exit_index"][sel].tolist(),
                                [stops[s] for s in res["stopped_by"][sel].tolist()],
                                [(None, conf[i], None, None) for i in idx] if conf is not None else
                                [(later[0], i, pol, self.answer) for i in idx])
            if row_mode:  # each row answered as it settled: the core's own latency and deadline per row
                for r, i in zip(out, idx):
                    met = int(res["deadline_met"][i])
                    r.latency_ms, r.deadline_met = float(res["latency_ms"][i]), (None if met < 0 else bool(met))
            return out

        relay = None if on_settled is None else lambda idx, res, probs, conf: on_settled(idx, rows_of(idx, res, probs,
                                                                                                      conf))
        if not row_mode and self._no_policy(pol, stop_at):
            # no policy: the core may answer from full.onnx, and the exit confidences wait until read
            res, probs, _ = nat.infer(xb, nat.request(pol.criterion, thresholds), 0, exit_confidences=False)
            return self._full_results(xb, pol, probs, res["confidence"], t0)
        # asking the core for every exit's confidence would run every exit head of a version-2 bundle, and keep a
        # deadline-only call off the full graph (rule 9); they are computed when first read instead
        lazy = self.manifest.split_heads or (self._deepest_only(pol) and (row_thr is None or np.isnan(row_thr).all()))
        res, probs, conf = nat.infer(xb, nat.request(pol.criterion, thresholds), dl, row_thr, row_ns, relay,
                                     exit_confidences=not lazy)
        results = rows_of(list(range(xb.shape[0])), res, probs, conf)
        if not row_mode:
            self._finish(results, t0, stop_at, self.clock())
        return results

    def _results(self, out_probs: np.ndarray, out_conf: np.ndarray, out_exit: list[int], out_why: list[str],
                 traces: list[tuple]) -> list[InferenceResult]:
        """The results of a call (both engines): one per row, latency and deadline filled by :meth:`_finish`."""
        labels, confs, classes = out_probs.argmax(axis=1).tolist(), out_conf.tolist(), self.classes
        return [InferenceResult(label=labels[i], class_name=classes[labels[i]], probabilities=out_probs[i],
                                confidence=confs[i], exit_index=out_exit[i], exits_run=out_exit[i], latency_ms=0.0,
                                deadline_met=None, stopped_by=out_why[i], _trace=traces[i])
                for i in range(len(labels))]

    @staticmethod
    def _finish(results: list[InferenceResult], t0: float, stop_at: float | None, t_end: float) -> None:
        latency = (t_end - t0) * 1e3
        met = None if stop_at is None else t_end <= stop_at
        for r in results:
            r.latency_ms, r.deadline_met = latency, met

    def _run(self, xb: np.ndarray, pol: ConfidencePolicy, stop_at: float | None, t0: float,
             prep_ms: float, row_thr: np.ndarray | None = None, row_dl: np.ndarray | None = None,
             on_settled: Callable[[list[int], list[InferenceResult]], None] | None = None,
             full: bool = True, all_heads: bool = False) -> list[InferenceResult]:
        """The decision loop: run section after section, stop each row at its exit, shrink the batch.

        After section k (k < K) the rows that are confident enough stop (:meth:`ConfidencePolicy.step`);
        then, if rows remain and the next section on that many rows would end after the deadline, they
        all stop ("deadline"). Only the rows still going on run the next section. A batch of one takes the
        same path; its per-section cost is the policy's scalar fast path and one deadline check.
        With ``row_thr`` ([rows, K] float32, NaN: none) and ``row_dl`` ([rows] absolute seconds, inf: none)
        each row has its own threshold and deadline (:meth:`infer_rows`) instead of the call's, and is
        answered the moment it settles (``on_settled(indices, results)``; its own latency and deadline_met).
        On a backend whose exit heads are graphs of their own (:attr:`Backend.split_heads`, format version 2)
        a section's head runs only where its logits are needed: a confidence threshold at that exit, the
        ensemble answer, rows stopping there, or ``all_heads`` (the warm-up, which times every head).
        """
        clock = self.clock
        t1 = clock()
        backend, record, K = self.backend, self.estimator.record, self.num_exits
        if full and backend.has_full and self._deepest_only(pol) and (row_thr is None or np.isnan(row_thr).all()):
            # only the deepest exit's answer is wanted: full.onnx, under a deadline if the whole network fits the
            # earliest one (rule 9)
            due = stop_at if row_dl is None or not np.isfinite(row_dl).any() else float(row_dl.min())
            if due is None or self.deadline_policy.full_fits(xb.shape[0], clock(), due):
                return self._run_full(xb, pol, t0, due, prep_ms, t1, row_dl, on_settled)
        should_stop = self.deadline_policy.should_stop
        n_all = xb.shape[0]
        acc = np.zeros((n_all, len(self.classes)), np.float32) if self.answer == "ensemble" else None
        trace = _Trace(self, xb)  # per section: (rows it ran, their logits or None where its head did not run)
        split = backend.split_heads
        record_head = self.estimator.record_head if split else None
        thr32 = pol.thresholds32
        groups: list[tuple[np.ndarray, int, np.ndarray, np.ndarray, str]] = []  # (rows, exit, probs, conf, why)

        def settle(k: int, rows: np.ndarray, logits: np.ndarray, answer: np.ndarray | None,
                   sel: np.ndarray | None, why: str, conf: np.ndarray | None = None) -> None:
            """Rows ``rows[sel]`` (all when ``sel`` is None) answer at exit ``k``."""
            if sel is not None:
                rows, logits = rows[sel], logits[sel]
                answer = None if answer is None else answer[sel]
                conf = None if conf is None else conf[sel]
            p = pol.probs(k, logits) if answer is None else answer
            groups.append((rows, k, p, confidence(p, pol.criterion) if conf is None else conf, why))
            if built is not None:
                deliver(groups[-1])

        answer_mode = self.answer
        built: list | None = None if row_thr is None and row_dl is None else [None] * n_all

        def deliver(group: tuple) -> None:
            """Row mode: the group's rows are answered now (their latency and deadline at this moment), and
            ``on_settled`` hears of them before the rest of the batch goes on."""
            done, k, p, c, why = group
            bad = ~np.isfinite(p).all(axis=1)
            if bad.any():
                i = int(done[np.flatnonzero(bad)[0]])
                raise _non_finite(k, xb[i:i + 1], "the input" if n_all == 1 else f"image {i} of the batch")
            t = clock()
            idx = done.tolist()
            res = self._results(p, np.asarray(c), [k] * len(idx), [why] * len(idx),
                                [(trace, i, pol, answer_mode) for i in idx])
            for r, i in zip(res, idx):
                d = math.inf if row_dl is None else float(row_dl[i])
                r.latency_ms, r.deadline_met = (t - t0) * 1e3, (None if math.isinf(d) else t <= d)
                built[i] = r  # type: ignore[index]
            if on_settled is not None:
                on_settled(idx, res)

        rows = np.arange(n_all)
        section_ms = 0.0
        h = backend.upload(xb)

        def head(k: int) -> np.ndarray:
            """Exit ``k``'s logits on the rows still running, its head run now (split heads)."""
            nonlocal section_ms
            ts = clock()
            lg = backend.run_head(k, h)
            dt = (clock() - ts) * 1e3
            record_head(k, rows.size, dt)  # type: ignore[misc]  # bound where heads are split
            section_ms += dt
            trace[-1] = (rows, lg)
            return lg

        for k in range(1, K + 1):
            n = rows.size
            ts = clock()
            if split and k < K:
                h = backend.run_trunk(k, h)
                dt = (clock() - ts) * 1e3
                record(k, n, dt)
                section_ms += dt
                trace.append((rows, None))
                if all_heads or acc is not None or (thr32[k - 1] is not None if row_thr is None
                                                    else not np.isnan(row_thr[rows, k - 1]).all()):
                    logits = head(k)
                else:  # no confidence decision here: the head runs only if rows stop at this exit
                    logits = None
            else:
                h, logits = backend.run_section(k, h)
                dt = (clock() - ts) * 1e3
                record(k, n, dt)
                section_ms += dt
                trace.append((rows, logits))
            answer = None
            if acc is not None:
                acc[rows] += pol.probs(k, logits)
                answer = acc[rows] / np.float32(k)
            if k == K:
                settle(k, rows, logits, answer, None, "last")
                break
            decided = None if logits is None else pol.step(k, logits, answer) if row_thr is None else \
                pol.step_rows(k, logits, row_thr[rows, k - 1], answer)
            n_stop = 0
            if decided is not None:
                stop, conf, n_stop = decided  # stop: the mask where it splits the rows, else None
                if n_stop == n:
                    settle(k, rows, logits, answer, None, "confidence", conf)
                    break
            if row_dl is not None:  # each row its own deadline: stop those the next section would overrun
                going = ~stop if n_stop else np.ones(n, bool)
                late = self.deadline_policy.rows_out_of_time(k + 1, row_dl[rows], going, clock())
                if n_stop:
                    settle(k, rows, logits, answer, stop, "confidence", conf)
                if late.any():
                    if logits is None:
                        logits = head(k)
                    settle(k, rows, logits, answer, late, "deadline")
                    going &= ~late
                if not going.any():
                    break
                if not going.all():
                    keep = np.flatnonzero(going)
                    h = backend.take_rows(h, keep)
                    rows = rows[keep]
                continue
            if stop_at is not None and should_stop(k + 1, n - n_stop, clock(), stop_at):
                if logits is None:
                    logits = head(k)
                if n_stop:
                    settle(k, rows, logits, answer, stop, "confidence", conf)
                    settle(k, rows, logits, answer, ~stop, "deadline")
                else:
                    settle(k, rows, logits, answer, None, "deadline")
                break
            if n_stop:
                settle(k, rows, logits, answer, stop, "confidence", conf)
                keep = np.flatnonzero(~stop)
                h = backend.take_rows(h, keep)
                rows = rows[keep]
        if built is not None:  # row mode: every row was answered as it settled
            record(0, n_all, prep_ms + (clock() - t1) * 1e3 - section_ms)
            return built
        if len(groups) == 1:  # every row answered at one exit: the group is the batch, in order
            _, k, out_probs, out_conf, why = groups[0]
            out_exit, out_why = [k] * n_all, [why] * n_all
        else:
            out_probs = np.empty((n_all, len(self.classes)), np.float32)
            out_conf = np.empty(n_all, np.float32)
            out_exit, out_why = [0] * n_all, [""] * n_all
            for done, k, p, c, why in groups:
                out_probs[done], out_conf[done] = p, c
                for i in done.tolist():
                    out_exit[i], out_why[i] = k, why
        _check_finite(out_probs, out_exit, xb)
        results = self._results(out_probs, np.asarray(out_conf), out_exit, out_why,
                                [(trace, i, pol, answer_mode) for i in range(n_all)])
        t_end = clock()
        record(0, n_all, prep_ms + (t_end - t1) * 1e3 - section_ms)
        self._finish(results, t0, stop_at, t_end)
        return results

    def _run_full(self, xb: np.ndarray, pol: ConfidencePolicy, t0: float, stop_at: float | None = None,
                  prep_ms: float = 0.0, t1: float = 0.0, row_dl: np.ndarray | None = None,
                  on_settled: Callable[[list[int], list[InferenceResult]], None] | None = None
                  ) -> list[InferenceResult]:
        """A call on the full graph, every row answering at the deepest exit: with no policy, or (``stop_at``, the
        earliest deadline) under deadlines the whole network fits (policies rule 9: timed into the full graph's
        own cells). Row mode (``row_dl``): each row's own deadline_met, every row settled at once."""
        K, clock = self.num_exits, self.clock
        ts = clock()
        logits = self.backend.run_full(self.backend.upload(xb))
        if stop_at is not None:
            t = clock()
            self.estimator.record_full(xb.shape[0], (t - ts) * 1e3)
        probs = pol.probs(K, logits)
        _check_finite(probs, [K] * xb.shape[0], xb)
        results = self._full_results(xb, pol, probs, confidence(probs, pol.criterion), t0, stop_at, row_dl)
        if stop_at is not None:
            self.estimator.record(0, xb.shape[0], prep_ms + (clock() - t1) * 1e3 - (t - ts) * 1e3)
        if on_settled is not None:
            on_settled(list(range(xb.shape[0])), results)
        return results

    def _full_results(self, xb: np.ndarray, pol: ConfidencePolicy, probs: np.ndarray, conf: np.ndarray,
                      t0: float, stop_at: float | None = None, row_dl: np.ndarray | None = None
                      ) -> list[InferenceResult]:
        """The results of a call the full graph answered (both engines), whose exit confidences are computed
        when first read; with ``row_dl`` each row's deadline_met is its own deadline's."""
        n = xb.shape[0]
        later = _AllExits(self, xb)
        results = self._results(probs, np.asarray(conf), [self.num_exits] * n, ["last"] * n,
                                [(later, i, pol, self.answer) for i in range(n)])
        t_end = self.clock()
        self._finish(results, t0, stop_at, t_end)
        if row_dl is not None:
            for r, d in zip(results, row_dl.tolist()):
                r.deadline_met = None if math.isinf(d) else t_end <= d
        return results

    def infer_all_exits(self, x: Any) -> np.ndarray:
        """Every exit's raw logits ``[K, B, C]`` (no temperature) for one image or a batch of any size.

        Batches larger than ``max_batch`` run in chunks of ``max_batch``; the other input rules are
        those of :meth:`infer`.
        """
        xb = self._prep_any(x).batch
        if self._native is not None:
            return self._native.infer_all_exits(xb)
        with self._lock:
            outs = [np.stack(self.backend.run_chain(xb[i:i + self.max_batch]))
                    for i in range(0, xb.shape[0], self.max_batch)]
        return np.concatenate(outs, axis=1)


_FAR_NS = float(2 ** 62)  # ns: the latest deadline handed to the core (int64 on its clock; ~146 years)


class _SessionLock:
    """The session's lock (calls are serialized); a call back into the session from inside one of its own
    calls on the same thread (an ``on_settled`` callback) is refused with :class:`PolicyError` instead of
    deadlocking, as the native core refuses it."""

    __slots__ = ("_lock", "_owner")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owner: int | None = None

    def __enter__(self) -> None:
        me = threading.get_ident()
        if self._owner == me:
            raise PolicyError("called back into a session from inside one of its own calls (an on_settled callback "
                              "must not call back into the session that called it; answer rows elsewhere)")
        self._lock.acquire()
        self._owner = me

    def __exit__(self, *exc: Any) -> None:
        self._owner = None
        self._lock.release()


class _Trace(list):
    """One call's ``(rows, logits)`` per section run, for :attr:`InferenceResult.exit_confidences`; where an exit
    head did not run (split heads) its logits are None and :meth:`recompute` runs every exit on a copy of the
    call's input, taken only then."""

    def __init__(self, session: "AnytimeSession", xb: np.ndarray) -> None:
        super().__init__()
        self._session, self._xb, self._all = session, xb, None

    def append(self, item: tuple) -> None:
        if item[1] is None and self._all is None:
            self._all = _AllExits(self._session, self._xb)  # the caller may reuse its buffer after the call
        super().append(item)

    def recompute(self) -> np.ndarray:
        assert self._all is not None
        return self._all()


class _AllExits:
    """Every exit's logits ``[K, B, C]`` of one call's batch, run on first use (a copy of the batch is kept:
    the caller may reuse its buffer)."""

    def __init__(self, session: AnytimeSession, xb: np.ndarray) -> None:
        self._session, self._xb, self._logits = session, np.array(xb, copy=True), None  # float NCHW or raw uint8 NHWC

    def __call__(self) -> np.ndarray:
        if self._logits is None:
            self._logits = self._session.infer_all_exits(self._xb)
            self._xb = None
        return self._logits


def _choose_engine(opts: SessionOptions, clock: Callable[[], float]) -> str:
    """``"native"`` or ``"python"`` for ``opts.engine`` (see the module doc); ``engine="native"`` where the core
    cannot run the session is a ``BackendError`` saying why."""
    if opts.engine == "python":
        return "python"
    from .native_engine import NativeUnavailable, refusal

    why = refusal(opts, clock is time.perf_counter)
    if why is None:
        return "native"
    if opts.engine == "native":
        raise NativeUnavailable(f"engine='native' cannot run this session: {why}")
    return "python"


def _check_finite(probs: np.ndarray, exits: list[int], xb: np.ndarray) -> None:
    """Raise :func:`_non_finite` for the first row of ``probs`` (answered at ``exits[row]``) that is not finite."""
    if not np.isfinite(probs).all():
        i = int(np.flatnonzero(~np.isfinite(probs).all(axis=1))[0])
        raise _non_finite(exits[i], xb[i:i + 1], "the input" if xb.shape[0] == 1 else f"image {i} of the batch")


def _non_finite(exit_index: int, x: np.ndarray, what: str = "the input") -> InputError:
    """The error for an input whose values are finite but drive the network to NaN/Inf (e.g. |x| ~ 1e38)."""
    peak = float(np.abs(x).max()) if x.size else 0.0
    return InputError(f"exit {exit_index} produced non-finite probabilities (NaN/Inf) for {what}: its preprocessed "
                      f"values reach |x| = {peak:.3g}, which overflows the network; expected preprocessed values of "
                      f"order 1 (or send raw uint8 pixels)")

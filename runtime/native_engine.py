"""The native engine: ``AnytimeSession`` over ``libsdedge.so``'s C ABI (DESIGN §5b), through ctypes.

ctypes in ABI mode over the very functions C users call (no compiled Python extension): this module
declares the ABI's structs and prototypes, loads the library that ``sdedge.native.library_path()`` names
(or ``$SDEDGE_NATIVE_LIBRARY``), hands ONNX Runtime's library from the installed ``onnxruntime`` wheel to
the core (else the core's own lookup: ``$SDEDGE_ORT_LIBRARY``, then the loader), and maps the core's
statuses onto the Python error classes with the core's message. ctypes releases the GIL for the length
of every call into the library, so inference runs without it; the core serializes calls on one session.

What stays in Python, once for both engines (``runtime/session.py``): input validation (ranks, shapes,
dtypes, batch sizes: :class:`~sdedge.runtime.preprocess.Preprocessor`; on this engine raw uint8 pixels go to
the core's uint8 entry, which preprocesses them, and float input is checked for NaN/Inf by the core alone,
with the same message), the policy arguments
(:meth:`~sdedge.runtime.policies.ConfidencePolicy.build`: the core then gets resolved per-exit thresholds
and a criterion) and the ``InferenceResult`` objects. The core decides the exits.
"""
from __future__ import annotations

import ctypes
import importlib.util
import json
import logging
import math
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..common.errors import BackendError, BundleError, ChecksumError, InputError, PolicyError, SdedgeError

log = logging.getLogger("sdedge.native")

__all__ = ["NativeSession", "NativeUnavailable", "available", "library", "unavailable_reason", "onnxruntime_library",
           "ABI_VERSION", "STOP_REASONS"]

ABI_VERSION = 4  # the ABI this binding is written for (sdedge.h SDEDGE_ABI_VERSION); older libraries are refused
STOP_REASONS = {1: "confidence", 2: "deadline", 3: "last"}  # SDEDGE_STOP_*

_c_double_p = ctypes.POINTER(ctypes.c_double)
_c_float_p = ctypes.POINTER(ctypes.c_float)


class SessionOptionsC(ctypes.Structure):
    """``sdedge_session_options`` (ABI version 4)."""

    _fields_ = [("struct_size", ctypes.c_uint32), ("backend", ctypes.c_char_p), ("providers", ctypes.c_char_p),
                ("intra_op_threads", ctypes.c_int32), ("max_batch", ctypes.c_int32), ("warmup", ctypes.c_int32),
                ("onnxruntime_library", ctypes.c_char_p), ("answer", ctypes.c_char_p), ("criterion", ctypes.c_char_p),
                ("verify", ctypes.c_int32), ("latency_window", ctypes.c_int32), ("latency_quantile", ctypes.c_double),
                ("full_graph", ctypes.c_int32)]


class InferOptionsC(ctypes.Structure):
    """``sdedge_infer_options`` (ABI version 3)."""

    _fields_ = [("struct_size", ctypes.c_uint32), ("threshold", ctypes.c_double), ("calibrated", ctypes.c_int32),
                ("criterion", ctypes.c_char_p), ("budget_ms", ctypes.c_double), ("deadline_ns", ctypes.c_int64),
                ("thresholds", _c_double_p), ("num_thresholds", ctypes.c_int32),
                ("row_thresholds", ctypes.c_void_p), ("row_deadlines_ns", ctypes.c_void_p),
                ("on_rows", ctypes.c_void_p), ("on_rows_user", ctypes.c_void_p)]


ON_ROWS = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.POINTER(ctypes.c_int64))


class ResultC(ctypes.Structure):
    """``sdedge_result``."""

    _fields_ = [("label", ctypes.c_int32), ("exit_index", ctypes.c_int32), ("confidence", ctypes.c_float),
                ("stopped_by", ctypes.c_int32), ("deadline_met", ctypes.c_int32), ("latency_ms", ctypes.c_double)]


# numpy view of an array of sdedge_result (the same layout, padding included)
RESULT_DTYPE = np.dtype({"names": [f[0] for f in ResultC._fields_],
                         "formats": [np.int32, np.int32, np.float32, np.int32, np.int32, np.float64],
                         "offsets": [getattr(ResultC, f[0]).offset for f in ResultC._fields_],
                         "itemsize": ctypes.sizeof(ResultC)})

# sdedge_status -> the Python error class (SDEDGE_E_ARGUMENT is a caller's bad value: PolicyError, as the
# Python engine raises for bad options; SDEDGE_E_INTERNAL is a bug: BackendError naming it)
_ERRORS: dict[int, type[SdedgeError]] = {1: PolicyError, 2: BundleError, 3: ChecksumError, 4: InputError,
                                         5: BackendError, 6: PolicyError, 7: BackendError}


class NativeUnavailable(BackendError):
    """The native core cannot run here (not built, not loadable, or an older ABI)."""


def _declare(lib: ctypes.CDLL) -> None:
    vp, i64, u64 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_uint64
    st = ctypes.c_int
    protos: dict[str, tuple[Any, list[Any]]] = {
        "sdedge_abi_version": (ctypes.c_uint32, []),
        "sdedge_last_error": (ctypes.c_char_p, []),
        "sdedge_now_ns": (i64, []),
        "sdedge_session_options_init": (None, [ctypes.POINTER(SessionOptionsC)]),
        "sdedge_infer_options_init": (None, [ctypes.POINTER(InferOptionsC)]),
        "sdedge_session_create": (st, [ctypes.c_char_p, ctypes.POINTER(SessionOptionsC), ctypes.POINTER(vp)]),
        "sdedge_session_free": (None, [vp]),
        "sdedge_session_describe": (st, [vp, ctypes.c_char_p, u64, ctypes.POINTER(u64)]),
        "sdedge_session_infer_f32_ex": (st, [vp, vp, i64, ctypes.POINTER(InferOptionsC), vp, vp, vp]),
        "sdedge_session_infer_u8_ex": (st, [vp, vp, i64, ctypes.POINTER(InferOptionsC), vp, vp, vp]),
        "sdedge_session_infer_all_exits": (st, [vp, vp, i64, vp]),
        "sdedge_session_section_cost_ms": (st, [vp, ctypes.c_int32, i64, ctypes.POINTER(ctypes.c_double)]),
    }
    for name, (res, args) in protos.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args


def _library_path() -> Path:
    override = os.environ.get("SDEDGE_NATIVE_LIBRARY")
    if override:
        return Path(override)
    from .. import native  # stdlib-only

    return native.library_path()


@lru_cache(maxsize=None)
def _load(path: str) -> ctypes.CDLL:
    if not Path(path).is_file():
        try:
            from .. import native

            st = native.build_status()
            why = f" (install-time build: {st.get('status')}{': ' + st['reason'] if st.get('reason') else ''})"
        except Exception:  # noqa: BLE001 - only decorates the message
            why = ""
        raise NativeUnavailable(f"the sdedge native core is not installed: {path} does not exist{why}; build it with "
                                f"SDEDGE_BUILD_NATIVE=1 pip install -e . (needs cmake and a C++17 compiler), or use "
                                f"engine='python'")
    try:
        lib = ctypes.CDLL(path)
        _declare(lib)
    except (OSError, AttributeError) as e:
        raise NativeUnavailable(f"the sdedge native core at {path} cannot be loaded ({e}); rebuild it with "
                                f"SDEDGE_BUILD_NATIVE=1 pip install -e ., or use engine='python'") from None
    have = int(lib.sdedge_abi_version())
    if have < ABI_VERSION:
        raise NativeUnavailable(f"the sdedge native core at {path} has ABI version {have}, this binding needs "
                                f"{ABI_VERSION}: rebuild it with SDEDGE_BUILD_NATIVE=1 pip install -e .")
    return lib


def library() -> ctypes.CDLL:
    """The loaded core (``NativeUnavailable`` when it cannot be loaded)."""
    return _load(str(_library_path()))


def unavailable_reason() -> str | None:
    """None when the native core loads, else why not."""
    try:
        library()
        return None
    except NativeUnavailable as e:
        return str(e)


def available() -> bool:
    """True when the native core is installed and loads."""
    return unavailable_reason() is None


@lru_cache(maxsize=None)
def onnxruntime_library() -> str | None:
    """The installed ``onnxruntime`` wheel's ``capi/libonnxruntime.so.*`` (found without importing it), or None."""
    try:
        spec = importlib.util.find_spec("onnxruntime")
    except (ImportError, ValueError):
        return None
    for loc in (spec.submodule_search_locations or []) if spec else []:
        libs = sorted(Path(loc, "capi").glob("libonnxruntime.so*"), key=lambda p: len(p.name), reverse=True)
        if libs:
            return str(libs[0])
    return None


def _raise(lib: ctypes.CDLL, status: int) -> None:
    msg = (lib.sdedge_last_error() or b"").decode("utf-8", "replace")
    raise _ERRORS.get(status, BackendError)(msg if status != 7 else f"native core: {msg}")


def _out_ptr(a: np.ndarray) -> int:
    """The address of a fresh (writable, contiguous, non-empty) output array: cheaper than ``a.ctypes.data``."""
    return ctypes.addressof(ctypes.c_char.from_buffer(a))


class NativeSession:
    """One ``sdedge_session``: what ``AnytimeSession`` calls when ``engine == "native"``."""

    STOPS = STOP_REASONS

    def __init__(self, bundle_dir: str, options: Any) -> None:
        """Open ``bundle_dir`` in the core with a :class:`~sdedge.runtime.options.SessionOptions`'s settings."""
        self._lib = lib = library()
        o = SessionOptionsC()
        lib.sdedge_session_options_init(ctypes.byref(o))
        self._keep = [s.encode() if isinstance(s, str) else s for s in
                      (options.backend, ",".join(options.providers) if options.providers else None,
                       onnxruntime_library(), options.answer, options.criterion)]
        o.backend, o.providers, o.onnxruntime_library, o.answer, o.criterion = self._keep
        o.intra_op_threads = options.intra_op_threads or 0
        o.max_batch, o.warmup = options.max_batch, options.warmup
        o.verify = 1 if options.verify else 0
        o.latency_window, o.latency_quantile = options.latency_window, options.latency_quantile
        o.full_graph = 1 if options.full_graph else 0
        h = ctypes.c_void_p()
        st = lib.sdedge_session_create(os.fsencode(bundle_dir), ctypes.byref(o), ctypes.byref(h))
        if st:
            _raise(lib, st)
        self._h: int | None = h.value
        need = ctypes.c_uint64()
        st = lib.sdedge_session_describe(self._h, None, 0, ctypes.byref(need))
        buf = ctypes.create_string_buffer(int(need.value))
        st = st or lib.sdedge_session_describe(self._h, buf, need.value, None)
        if st:
            self.close()
            _raise(lib, st)
        self.description: dict[str, Any] = json.loads(buf.value.decode("utf-8"))
        self.num_exits = int(self.description["num_exits"])
        self.num_classes = int(self.description["num_classes"])
        self.max_batch = int(self.description["max_batch"])
        self._infer = lib.sdedge_session_infer_f32_ex
        self._infer_u8 = lib.sdedge_session_infer_u8_ex
        self._requests: dict[Any, tuple[InferOptionsC, Any]] = {}

    # -- the clock ------------------------------------------------------------------------------------------
    def now_ns(self) -> int:
        return int(self._lib.sdedge_now_ns())

    # -- calls ----------------------------------------------------------------------------------------------
    def request(self, criterion: str, thresholds: tuple[float | None, ...]) -> tuple[InferOptionsC, Any]:
        """The infer options of a resolved policy (criterion, per-exit thresholds; cached), with what keeps
        the memory they point to alive: hold the pair while the options are in use."""
        key = (criterion, thresholds)
        got = self._requests.get(key)
        if got is None:
            io = InferOptionsC()
            self._lib.sdedge_infer_options_init(ctypes.byref(io))
            crit = criterion.encode()
            io.criterion = crit
            arr = None
            if any(t is not None for t in thresholds):
                arr = (ctypes.c_double * len(thresholds))(*[math.nan if t is None else float(t) for t in thresholds])
                io.thresholds = ctypes.cast(arr, _c_double_p)
                io.num_thresholds = len(thresholds)
            got = (io, (crit, arr))  # keep the bytes and the array alive with the struct
            if len(self._requests) < 64:
                self._requests[key] = got
        return got

    def infer(self, xb: np.ndarray, request: tuple[InferOptionsC, Any], deadline_ns: int,
              row_thresholds: np.ndarray | None = None, row_deadlines_ns: np.ndarray | None = None,
              on_rows: Callable[[list[int], np.ndarray, np.ndarray, np.ndarray], None] | None = None,
              exit_confidences: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Run a validated C-contiguous batch (float32 NCHW, or raw uint8 NHWC that the core preprocesses)
        under ``request`` (from :meth:`request`) and an absolute deadline on ``sdedge_now_ns()``'s clock
        (0: none): (results as ``RESULT_DTYPE`` rows,
        probabilities [B, C], exit confidences [B, K], NaN past each row's exit). ``row_thresholds``
        (float32 [B, K], NaN: none) and ``row_deadlines_ns`` (int64 [B], 0: none) give each row its own
        (ABI 3); the request then carries only the criterion. ``on_rows(indices, results, probabilities,
        exit_confidences)`` is called as rows settle (row mode), with the arrays whose rows at ``indices`` are
        final; an exception in it is logged, never raised through the core. ``exit_confidences=False``: none
        asked for (None comes back), which lets a call with no policy run the bundle's full graph."""
        n = xb.shape[0]
        res = np.empty(n, RESULT_DTYPE)
        probs = np.empty((n, self.num_classes), np.float32)
        conf = np.empty((n, self.num_exits), np.float32) if exit_confidences else None
        run = self._infer_u8 if xb.dtype == np.uint8 else self._infer
        io = request[0]
        if deadline_ns or row_thresholds is not None or row_deadlines_ns is not None:
            io = InferOptionsC.from_buffer_copy(io)  # a private copy: the cached options are shared by concurrent calls
            io.deadline_ns = deadline_ns
            if row_thresholds is not None:
                row_thresholds = np.ascontiguousarray(row_thresholds, np.float32)
                io.row_thresholds = row_thresholds.ctypes.data
            if row_deadlines_ns is not None:
                row_deadlines_ns = np.ascontiguousarray(row_deadlines_ns, np.int64)
                io.row_deadlines_ns = row_deadlines_ns.ctypes.data
        relay = None
        if on_rows is not None:
            def relay_rows(_user: Any, count: int, idx: Any) -> None:
                try:
                    on_rows([int(idx[i]) for i in range(count)], res, probs, conf)
                except Exception:  # noqa: BLE001 - never unwind through C++; the call's result still comes back
                    log.exception("the on_rows callback failed")

            relay = ON_ROWS(relay_rows)  # held in this frame for the whole call
            io.on_rows = ctypes.cast(relay, ctypes.c_void_p).value
        st = run(self._handle(), xb.ctypes.data, n, ctypes.byref(io), _out_ptr(res), _out_ptr(probs),
                 None if conf is None else _out_ptr(conf))
        if st:
            _raise(self._lib, st)
        return res, probs, conf

    def section_cost_ms(self, section: int, rows: int) -> float:
        """The core's predicted time of ``section`` (0: the per-call overhead) on ``rows`` rows, in ms."""
        out = ctypes.c_double()
        st = self._lib.sdedge_session_section_cost_ms(self._handle(), int(section), int(rows), ctypes.byref(out))
        if st:
            _raise(self._lib, st)
        return float(out.value)

    def infer_all_exits(self, xb: np.ndarray) -> np.ndarray:
        """Every exit's raw logits ``[K, B, C]`` for a validated float32 NCHW batch of any size."""
        out = np.empty((self.num_exits, xb.shape[0], self.num_classes), np.float32)
        st = self._lib.sdedge_session_infer_all_exits(self._handle(), xb.ctypes.data, xb.shape[0], out.ctypes.data)
        if st:
            _raise(self._lib, st)
        return out

    def _handle(self) -> int:
        if self._h is None:
            raise BackendError("the session is closed")
        return self._h

    def close(self) -> None:
        h, self._h = self._h, None
        if h is not None:
            self._lib.sdedge_session_free(h)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def refusal(options: Any, default_clock: bool) -> str | None:
    """Why the native engine cannot run a session with these ``SessionOptions`` (None: it can).

    The core runs ONNX Runtime in fp32 on the CPU or on execution providers named explicitly; TensorRT,
    other precisions, backend options, a ready ``Backend`` object and a scripted clock stay with the
    Python engine. ``backend="auto"`` on a machine with an NVIDIA GPU picks TensorRT or CUDA in the
    Python engine, so it stays there too.
    """
    backend = options.backend
    if not isinstance(backend, str):
        return "a ready Backend object runs on the Python engine only"
    if backend not in ("auto", "onnxruntime"):
        return f"backend {backend!r} runs on the Python engine only (the core runs ONNX Runtime)"
    if options.precision != "fp32":
        return f"precision {options.precision!r} runs on the Python engine only (the core runs the fp32 sections)"
    if options.backend_options:
        return "backend_options run on the Python engine only"
    if not default_clock:
        return "a custom clock runs on the Python engine only (the core times on its monotonic clock)"
    if backend == "auto" and options.providers is None:
        from ..common.hostinfo import nvidia_gpus

        if nvidia_gpus():
            return "backend 'auto' on an NVIDIA GPU picks TensorRT or CUDA, which the Python engine does"
    return unavailable_reason()

"""ONNX Runtime backend: one ``InferenceSession`` per section, explicit options, CPU or GPU providers.

Session options (the same for every section, and for ``full.onnx`` so comparisons are fair):

* ``intra_op_num_threads`` = ``BackendOptions.intra_op_threads`` (default: the CPUs this process may
  use), ``inter_op_num_threads`` = 1, sequential execution: a chain of small graphs gains nothing from
  inter-op parallelism;
* thread spinning off (``session.intra_op.allow_spinning`` = ``session.inter_op.allow_spinning`` = 0):
  every session owns a thread pool, and with spinning on, the pools of the section just run keep
  spinning while the next section's pool works, so a chain competes with itself for the cores.
  ``extra={"allow_spinning": True}`` turns it back on (benchmarks compare both);
* graph optimisation level ``extra["graph_optimization"]``: ``all`` (default), ``extended``,
  ``basic`` or ``disabled``.

Providers: ``BackendOptions.providers`` in order of preference, by full name or alias (``cpu``,
``cuda``, ``tensorrt``); default CPU. Unknown or uninstalled providers are refused, naming the ones this
onnxruntime has. With a GPU provider the features stay on the GPU between sections (I/O binding,
features bound to CUDA memory, logits to host memory); shrinking such a batch copies it through the
host once (ONNX Runtime has no device-side gather from Python).

On CPU, the handle between sections is the numpy array ONNX Runtime returned (``session.run``). I/O
binding with outputs written into preallocated buffers is available as ``extra={"io_binding": True}``;
on the CPUs measured it was not faster at batch 1 (see ``benchmarks/runtime_bench.py``), so it is off
by default.
"""
from __future__ import annotations

import dataclasses

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ...common.errors import BackendError, BundleError
from ..manifest import SectionSpec, TensorSpec, features_name, input_name, logits_name
from .base import Backend, BackendOptions
from ...common.hostinfo import available_cpus, cpu_model, gpu_name, slug

PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
}
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
_OPT_LEVELS = {"all": "ORT_ENABLE_ALL", "extended": "ORT_ENABLE_EXTENDED", "basic": "ORT_ENABLE_BASIC",
               "disabled": "ORT_DISABLE_ALL"}


def import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as e:
        raise BackendError(f"the onnxruntime backend needs the onnxruntime package ({e}); install it with "
                           "`pip install 'sdedge[runtime]'` (or onnxruntime-gpu for CUDA)") from None
    return onnxruntime


def available_providers() -> list[str]:
    try:
        return list(import_onnxruntime().get_available_providers())
    except BackendError:
        return []


def tensorrt_ep_options(bundle_path: Any, spec: SectionSpec, max_batch: int, precision: str, gpu: str) -> dict[str, Any]:
    """ONNX Runtime's TensorRT execution provider options for one section: an explicit optimisation profile
    for its input from 1 to ``max_batch`` rows (so a batch that shrinks as rows exit never makes it build a
    new engine), fp16 when asked, and its engine and timing caches under the bundle's ``engines/`` (one
    folder per GPU and precision, beside ``sdedge build-engines``' own)."""
    chw = "x".join(str(int(d)) for d in spec.input.shape[1:])
    name = spec.input.name
    cache = Path(bundle_path) / "engines" / f"ort-trt-{slug(gpu)}-{precision}"
    return {"trt_profile_min_shapes": f"{name}:1x{chw}", "trt_profile_opt_shapes": f"{name}:1x{chw}",
            "trt_profile_max_shapes": f"{name}:{int(max_batch)}x{chw}", "trt_fp16_enable": precision == "fp16",
            "trt_int8_enable": False,  # int8 comes from the QDQ sections themselves
            "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache),
            "trt_timing_cache_enable": True, "trt_timing_cache_path": str(cache)}


def resolve_providers(requested: Sequence[str] | None, available: Sequence[str]) -> list[str]:
    """Full provider names in order, CPU appended as the fallback; refuses ones not installed."""
    if not requested:
        return ["CPUExecutionProvider"]
    out = []
    for p in requested:
        full = PROVIDER_ALIASES.get(str(p).lower(), str(p))
        if full not in available:
            raise BackendError(f"execution provider {p!r} is not available in this onnxruntime; it has: "
                               f"{', '.join(available)} (CUDA/TensorRT need the onnxruntime-gpu package)")
        if full not in out:
            out.append(full)
    if "CPUExecutionProvider" not in out:
        out.append("CPUExecutionProvider")
    return out


_ORT_TYPES = {"float32": "tensor(float)", "float16": "tensor(float16)", "int8": "tensor(int8)", "uint8": "tensor(uint8)"}


def check_section_io(sess: Any, spec: SectionSpec, rel: str) -> None:
    """Refuse a section graph whose real inputs/outputs (names, ranks, fixed dims, dtypes) are not the manifest's.

    Checksums only prove the files are the ones the manifest lists; this proves the manifest describes them,
    so a bundle whose sections were swapped or whose manifest shapes were edited fails at load, naming the
    section, instead of failing (or silently computing on the wrong tensors) at the first call.
    """
    where = f"the full graph ({rel})" if spec.index == 0 else f"section {spec.index} ({rel})"
    check_graph_io(sess, [spec.input], spec.file_outputs if spec.index else [spec.logits], where)


def check_head_io(sess: Any, spec: SectionSpec, rel: str) -> None:
    """:func:`check_section_io` for a section's own exit-head graph (format version 2)."""
    assert spec.head is not None
    check_graph_io(sess, [spec.head.input], [spec.head.logits], f"the exit head of section {spec.index} ({rel})")


def check_graph_io(sess: Any, inputs: list[TensorSpec], outputs: list[TensorSpec], where: str) -> None:
    wanted: list[tuple[str, list[TensorSpec], list[Any]]] = [
        ("input", inputs, sess.get_inputs()), ("output", outputs, sess.get_outputs())]
    for kind, want, got in wanted:
        got_names, want_names = [g.name for g in got], [w.name for w in want]
        if sorted(got_names) != sorted(want_names):
            raise BundleError(f"{where}: the graph's {kind}s are {got_names} but the manifest says {want_names} "
                              f"(sections swapped or the manifest edited?)")
        by_name = {g.name: g for g in got}
        for w in want:
            g = by_name[w.name]
            dims = [d if isinstance(d, int) else None for d in g.shape]
            # dynamic (None/symbolic) in the graph fits any manifest value; a fixed graph dim must equal it
            if len(dims) != len(w.shape) or any(d is not None and d != m for d, m in zip(dims, w.shape)):
                raise BundleError(f"{where}: {kind} {w.name!r} has shape {dims} in the graph but {list(w.shape)} "
                                  f"in the manifest (null = dynamic)")
            want_type = _ORT_TYPES.get(w.dtype)
            if want_type is not None and g.type != want_type:
                raise BundleError(f"{where}: {kind} {w.name!r} has type {g.type} in the graph but dtype "
                                  f"{w.dtype!r} in the manifest")


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, bundle: Any, options: BackendOptions | None = None) -> None:
        ort = import_onnxruntime()
        self._ort = ort
        self.options = opts = options or BackendOptions()
        self.bundle = bundle
        self.providers = resolve_providers(opts.providers, ort.get_available_providers())
        if opts.precision not in ("fp32", "int8") and not (opts.precision == "fp16" and
                                                         self.providers[0] == "TensorrtExecutionProvider"):
            raise BackendError(f"the onnxruntime backend runs precision fp32 or int8, not {opts.precision!r} "
                               "(fp16 is a TensorRT precision: sdedge build-engines, or the TensorRT execution "
                               "provider first in providers)")
        threads = opts.intra_op_threads if opts.intra_op_threads is not None else available_cpus()
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
            raise BackendError(f"intra_op_threads must be a positive integer, got {threads!r}")
        self.threads = threads
        extra = dict(opts.extra)
        self.allow_spinning = bool(extra.pop("allow_spinning", False))
        self.io_binding = bool(extra.pop("io_binding", False))
        level = extra.pop("graph_optimization", "all")
        if level not in _OPT_LEVELS:
            raise BackendError(f"graph_optimization must be one of {', '.join(_OPT_LEVELS)}, got {level!r}")
        if extra:
            raise BackendError(f"unknown onnxruntime backend option(s): {', '.join(sorted(extra))}")
        self.on_gpu = self.providers[0] in GPU_PROVIDERS

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _OPT_LEVELS[level])
        spin = "1" if self.allow_spinning else "0"
        so.add_session_config_entry("session.intra_op.allow_spinning", spin)
        so.add_session_config_entry("session.inter_op.allow_spinning", spin)
        so.log_severity_level = 3
        self._so = so
        self._sessions = []
        self._heads: list[Any] = []  # per section: its exit head's session (format version 2), or None
        graphs = "int8" if opts.precision == "int8" else "fp32"
        for spec in bundle.manifest.sections:
            path = bundle.section_path(spec.index, graphs)
            sess = self._load(path, spec)
            check_section_io(sess, spec, path.relative_to(bundle.path).as_posix())
            self._sessions.append(sess)
            head_path = bundle.head_path(spec.index, graphs)
            head = None
            if head_path is not None:
                head = self._load(head_path, dataclasses.replace(spec, input=spec.head.input))
                check_head_io(head, spec, head_path.relative_to(bundle.path).as_posix())
            self._heads.append(head)
        self._reference = None
        self._io_out: dict[tuple[int, int], tuple[Any, dict[str, np.ndarray]]] = {}
        # full.onnx (image -> the deepest exit's logits, the first section's input): fp32 only, there is no
        # full graph of the other precisions
        self._full_io: tuple[str, str] | None = None  # (input, output) names once full.onnx is loaded for run_full
        if opts.full_graph and bundle.has_full and opts.precision == "fp32":
            # checked as a section is: the first section's input, the last section's logits
            secs = bundle.manifest.sections
            spec = dataclasses.replace(secs[-1], index=0, file="full.onnx", input=secs[0].input, features=None)
            self._reference = self._load(bundle.file("full.onnx"), secs[0])
            check_section_io(self._reference, spec, "full.onnx")
            self._full_io = (spec.input.name, spec.logits.name)

    def _load(self, path: Any, spec: SectionSpec | None = None) -> Any:
        providers: list[Any] = list(self.providers)
        if spec is not None and "TensorrtExecutionProvider" in providers:
            i = providers.index("TensorrtExecutionProvider")
            opts = tensorrt_ep_options(self.bundle.path, spec, self.options.max_batch, self.options.precision,
                                       gpu_name(0))
            Path(opts["trt_engine_cache_path"]).mkdir(parents=True, exist_ok=True)
            providers[i] = ("TensorrtExecutionProvider", opts)
        try:
            return self._ort.InferenceSession(str(path), self._so, providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types
            raise BackendError(f"onnxruntime could not load {path}: {e}") from None

    @property
    def num_sections(self) -> int:
        return len(self._sessions)

    @property
    def device_name(self) -> str:
        if self.on_gpu:
            kind = "tensorrt" if self.providers[0] == "TensorrtExecutionProvider" else "cuda"
            name = f"onnxruntime-{kind}-{slug(gpu_name(0))}"
        else:
            name = f"onnxruntime-cpu-{slug(cpu_model())}-t{self.threads}"
        return name + ("-int8" if self.options.precision == "int8" else "")

    # -- running -----------------------------------------------------------------------------------
    def upload(self, x: np.ndarray) -> Any:
        if self.on_gpu:
            return self._ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0)
        return x

    def _closed(self) -> BackendError:
        return BackendError("the onnxruntime backend is closed")

    @property
    def split_heads(self) -> bool:
        return any(h is not None for h in self._heads)

    def run_trunk(self, index: int, x: Any) -> Any:
        if not self._sessions:
            raise self._closed()
        if self._heads[index - 1] is None:
            raise BackendError(f"section {index} has its exit head inside its graph: run_section runs it")
        sess = self._sessions[index - 1]
        if self.on_gpu:
            return self._run_gpu(sess, index, x, False, logits=False)[0]
        if self.io_binding:
            return self._run_bound(sess, index, x, False)[0]
        try:
            return sess.run([features_name(index)], {input_name(index): x})[0]
        except Exception as e:
            raise BackendError(f"onnxruntime failed running section {index}: {e}") from None

    def run_head(self, index: int, features: Any) -> np.ndarray:
        if not self._sessions:
            raise self._closed()
        head = self._heads[index - 1]
        if head is None:
            raise BackendError(f"section {index} has its exit head inside its graph: run_section runs it")
        try:
            if self.on_gpu:
                io = head.io_binding()
                io.bind_ortvalue_input(features_name(index), features)
                io.bind_output(logits_name(index), "cpu")
                head.run_with_iobinding(io)
                return io.get_outputs()[0].numpy()
            return head.run([logits_name(index)], {features_name(index): features})[0]
        except Exception as e:
            raise BackendError(f"onnxruntime failed running the exit head of section {index}: {e}") from None

    def run_section(self, index: int, x: Any) -> tuple[Any | None, np.ndarray]:
        if not self._sessions:
            raise self._closed()
        if self._heads[index - 1] is not None:
            feats = self.run_trunk(index, x)
            return feats, self.run_head(index, feats)
        sess = self._sessions[index - 1]
        last = index == len(self._sessions)
        if self.on_gpu:
            return self._run_gpu(sess, index, x, last)
        if self.io_binding:
            return self._run_bound(sess, index, x, last)
        try:
            if last:
                return None, sess.run([logits_name(index)], {input_name(index): x})[0]
            feats, logits = sess.run([features_name(index), logits_name(index)], {input_name(index): x})
        except Exception as e:
            raise BackendError(f"onnxruntime failed running section {index}: {e}") from None
        return feats, logits

    def _run_bound(self, sess: Any, index: int, x: np.ndarray, last: bool) -> tuple[Any | None, np.ndarray]:
        """CPU I/O binding into buffers reused across calls of the same batch size."""
        b = x.shape[0]
        cached = self._io_out.get((index, b))
        if cached is None:
            bufs = {}
            io = sess.io_binding()
            for o in sess.get_outputs():
                buf = np.empty([b] + [int(d) for d in o.shape[1:]], np.float32)
                io.bind_output(o.name, "cpu", 0, np.float32, list(buf.shape), buf.ctypes.data)
                bufs[o.name] = buf
            cached = self._io_out[(index, b)] = (io, bufs)
        io, bufs = cached
        io.bind_cpu_input(input_name(index), x)
        try:
            sess.run_with_iobinding(io)
        except Exception as e:
            raise BackendError(f"onnxruntime failed running section {index}: {e}") from None
        out = bufs.get(logits_name(index))  # a version-2 trunk has none
        logits = None if out is None else out.copy()  # the buffer is reused by the next call
        return (None if last else bufs[features_name(index)]), logits  # type: ignore[return-value]

    def _run_gpu(self, sess: Any, index: int, x: Any, last: bool, logits: bool = True
                 ) -> tuple[Any | None, np.ndarray]:
        io = sess.io_binding()
        io.bind_ortvalue_input(input_name(index), x)
        if not last:
            io.bind_output(features_name(index), "cuda", 0)
        if logits:
            io.bind_output(logits_name(index), "cpu")
        try:
            sess.run_with_iobinding(io)
        except Exception as e:
            raise BackendError(f"onnxruntime failed running section {index}: {e}") from None
        outs = io.get_outputs()
        return (None if last else outs[0]), (outs[-1].numpy() if logits else None)  # type: ignore[return-value]

    def take_rows(self, x: Any, rows: np.ndarray) -> Any:
        if self.on_gpu:  # through the host: ONNX Runtime offers no device-side gather from Python
            return self._ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(x.numpy()[rows]), "cuda", 0)
        return np.ascontiguousarray(x[rows])

    @property
    def has_full(self) -> bool:
        return self._full_io is not None and bool(self._sessions)

    def run_full(self, x: Any) -> np.ndarray:
        if not self.has_full:
            raise self._closed() if not self._sessions else BackendError("the onnxruntime backend has no full graph loaded")
        sess, (name_in, name_out) = self._reference, self._full_io
        try:
            if self.on_gpu:
                io = sess.io_binding()
                io.bind_ortvalue_input(name_in, x)
                io.bind_output(name_out, "cpu")
                sess.run_with_iobinding(io)
                return io.get_outputs()[0].numpy()
            return sess.run([name_out], {name_in: x})[0]
        except Exception as e:
            raise BackendError(f"onnxruntime failed running the full graph (full.onnx): {e}") from None

    def run_reference(self, x: np.ndarray) -> np.ndarray:
        if not self._sessions:
            raise self._closed()
        if self._reference is None:
            if not self.bundle.has_full:
                raise BackendError(f"bundle {self.bundle.path} has no full.onnx reference graph")
            self._reference = self._load(self.bundle.file("full.onnx"))
        sess = self._reference
        return sess.run(None, {sess.get_inputs()[0].name: x})[0]

    def close(self) -> None:
        self._sessions = []
        self._heads = []
        self._reference = None
        self._io_out.clear()

"""TensorRT backend (TensorRT 10 Python API): one engine and one execution context per section (and per exit
head of a format version 2 bundle, ``h{k}.engine``: run only where the session needs that exit's logits).

Engines are built on the target by ``sdedge build-engines`` and cached in the bundle under
``engines/<key>/s{k}.engine`` (:mod:`sdedge.runtime.engine_cache` names the folder after TensorRT
version, GPU and precision, and says when the cache is complete); this backend only deserializes them,
so it starts in seconds.

Memory: every buffer is allocated once, for ``max_batch`` rows (the smaller of the option and the
engines' optimisation-profile maximum): the input, each section's features and logits, and a scratch
buffer per section for shrinking a batch. A features handle is a device pointer plus a shape
(:class:`DeviceBatch`); it goes straight into the next section's context with ``set_tensor_address``.
``take_rows`` copies the kept rows device-to-device (one copy per run of consecutive rows); only the
logits come back to the host, into pinned (page-locked) host buffers, with one synchronisation per
section. Everything runs on one CUDA stream with ``execute_async_v3``.

CUDA from Python: ``cuda-python`` (``cuda.bindings.runtime``, or ``cuda.cudart`` in older releases)
first, ``pycuda`` as the fallback. Nothing is imported until the backend is created; a missing
package is a :class:`BackendError` naming what to install.
"""
from __future__ import annotations

import ctypes
import importlib.util
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ...common.errors import BackendError
from ..manifest import features_name, input_name, logits_name
from .base import Backend, BackendOptions
from ..engine_cache import import_tensorrt as _import_tensorrt
from ...common.hostinfo import gpu_name, slug

def import_tensorrt() -> Any:
    return _import_tensorrt("the tensorrt backend")


# -- CUDA memory and streams, through cuda-python or pycuda -------------------------------------------
class CudaPython:
    """Device memory, copies and a stream through cuda-python's runtime API bindings.

    The runtime API makes the device's primary context current on any thread that calls it, so
    :meth:`current` has nothing to do (it exists so the backend treats both CUDA packages alike).
    """

    @contextmanager
    def current(self) -> Iterator[None]:
        yield

    def __init__(self, cudart: Any) -> None:
        self.rt = cudart
        kind = cudart.cudaMemcpyKind
        self._h2d, self._d2h, self._d2d = (kind.cudaMemcpyHostToDevice, kind.cudaMemcpyDeviceToHost,
                                           kind.cudaMemcpyDeviceToDevice)

    def _check(self, res: Any, what: str) -> Any:
        err = res[0] if isinstance(res, tuple) else res
        if err != self.rt.cudaError_t.cudaSuccess:
            raise BackendError(f"CUDA call {what} failed: {err}")
        return res[1] if isinstance(res, tuple) and len(res) > 1 else None

    def malloc(self, nbytes: int) -> int:
        return int(self._check(self.rt.cudaMalloc(max(1, nbytes)), "cudaMalloc"))

    def free(self, ptr: int) -> None:
        self._check(self.rt.cudaFree(ptr), "cudaFree")

    def create_stream(self) -> Any:
        return self._check(self.rt.cudaStreamCreate(), "cudaStreamCreate")

    def destroy_stream(self, stream: Any) -> None:
        self._check(self.rt.cudaStreamDestroy(stream), "cudaStreamDestroy")

    def stream_handle(self, stream: Any) -> int:
        return int(stream)

    def h2d(self, dst: int, src: np.ndarray, stream: Any) -> None:
        self._check(self.rt.cudaMemcpyAsync(dst, src.ctypes.data, src.nbytes, self._h2d, stream), "cudaMemcpyAsync(H2D)")

    def d2h(self, dst: np.ndarray, src: int, stream: Any) -> None:
        self._check(self.rt.cudaMemcpyAsync(dst.ctypes.data, src, dst.nbytes, self._d2h, stream), "cudaMemcpyAsync(D2H)")

    def d2d(self, dst: int, src: int, nbytes: int, stream: Any) -> None:
        self._check(self.rt.cudaMemcpyAsync(dst, src, nbytes, self._d2d, stream), "cudaMemcpyAsync(D2D)")

    def sync(self, stream: Any) -> None:
        self._check(self.rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    def host_empty(self, shape: tuple[int, ...]) -> np.ndarray:
        """A float32 array in pinned (page-locked) host memory: device-to-host copies into it run at full speed
        and truly asynchronously. Freed with :meth:`free_host`."""
        n = int(np.prod(shape))
        ptr = int(self._check(self.rt.cudaMallocHost(max(1, n) * 4), "cudaMallocHost"))
        return np.ctypeslib.as_array((ctypes.c_float * max(1, n)).from_address(ptr))[:n].reshape(shape)

    def free_host(self, arr: np.ndarray) -> None:
        self._check(self.rt.cudaFreeHost(int(arr.ctypes.data)), "cudaFreeHost")


class PyCuda:
    """The same operations through pycuda, on the device's primary context (the one TensorRT uses).

    A CUDA driver context is current per thread, and a server runs inference on its worker thread, not
    the one that made the backend: :meth:`current` pushes the context on the calling thread for the
    duration of a piece of work and pops it after, and the backend wraps everything it does in it.
    """

    def __init__(self, drv: Any) -> None:
        self.drv = drv
        drv.init()
        self.ctx = drv.Device(0).retain_primary_context()
        self._allocs: dict[int, Any] = {}

    @contextmanager
    def current(self) -> Iterator[None]:
        self.ctx.push()
        try:
            yield
        finally:
            self.drv.Context.pop()

    def malloc(self, nbytes: int) -> int:
        a = self.drv.mem_alloc(max(1, nbytes))
        self._allocs[int(a)] = a
        return int(a)

    def free(self, ptr: int) -> None:
        a = self._allocs.pop(ptr, None)
        if a is not None:
            a.free()

    def create_stream(self) -> Any:
        return self.drv.Stream()

    def destroy_stream(self, stream: Any) -> None:
        pass

    def stream_handle(self, stream: Any) -> int:
        return int(stream.handle)

    def h2d(self, dst: int, src: np.ndarray, stream: Any) -> None:
        self.drv.memcpy_htod_async(dst, src, stream)

    def d2h(self, dst: np.ndarray, src: int, stream: Any) -> None:
        self.drv.memcpy_dtoh_async(dst, src, stream)

    def d2d(self, dst: int, src: int, nbytes: int, stream: Any) -> None:
        self.drv.memcpy_dtod_async(dst, src, nbytes, stream)

    def sync(self, stream: Any) -> None:
        stream.synchronize()

    def host_empty(self, shape: tuple[int, ...]) -> np.ndarray:
        return self.drv.pagelocked_empty(shape, np.float32)  # pinned; freed with the array

    def free_host(self, arr: np.ndarray) -> None:
        pass


def import_cuda() -> CudaPython | PyCuda:
    """cuda-python (``cuda.bindings.runtime``, then ``cuda.cudart``), else pycuda."""
    errors = []
    for mod in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            return CudaPython(importlib.import_module(mod))
        except ImportError as e:
            errors.append(f"{mod}: {e}")
    try:
        import pycuda.driver as drv
    except ImportError as e:
        errors.append(f"pycuda: {e}")
        raise BackendError("the tensorrt backend needs CUDA from Python: install cuda-python "
                           f"(`pip install 'sdedge[tensorrt]'`) or pycuda ({'; '.join(errors)})") from None
    return PyCuda(drv)


def row_runs(rows: np.ndarray) -> list[tuple[int, int]]:
    """``(start, length)`` of each run of consecutive indices in ``rows`` (in order)."""
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    starts = np.concatenate(([0], breaks))
    ends = np.concatenate((breaks, [rows.size]))
    return [(int(rows[s]), int(e - s)) for s, e in zip(starts, ends)]


def gather_rows(cuda: Any, dst: int, src: int, row_bytes: int, rows: np.ndarray, stream: Any) -> None:
    """Copy rows ``rows`` of the device array at ``src`` to consecutive rows at ``dst`` (device to device)."""
    j = 0
    for start, length in row_runs(rows):
        cuda.d2d(dst + j * row_bytes, src + start * row_bytes, length * row_bytes, stream)
        j += length


# -- engines ----------------------------------------------------------------------------------------------
def engine_files(bundle: Any, precision: str) -> list[Path]:
    """The cached engine of every section for ``precision`` on this GPU and TensorRT version, then those of the
    exit heads of a format version 2 bundle (sections 1..K-1, in order)."""
    from ..engine_cache import cached_engines, engine_cache_dir

    files = cached_engines(bundle.path, precision, bundle.manifest.num_exits, heads=bundle.manifest.head_sections)
    if files is None:
        folder = engine_cache_dir(bundle.path, precision)
        raise BackendError(f"no complete TensorRT engine cache for {precision} in {folder}; build the engines on "
                           f"this device with `sdedge build-engines {bundle.path} --precision {precision}`")
    return files


def engines_ready(bundle: Any, precision: str) -> bool:
    """True when TensorRT and CUDA Python packages exist and this bundle's engines are built (cheap)."""
    if importlib.util.find_spec("tensorrt") is None:
        return False
    if all(importlib.util.find_spec(m) is None for m in ("cuda", "pycuda")):
        return False
    try:
        engine_files(bundle, precision)
    except (BackendError, ImportError, OSError):
        return False
    except Exception:  # the cache helper may need TensorRT itself; a broken install is "not ready"
        return False
    return True


def check_engine_io(trt: Any, engine: Any, manifest: Any, k: int, path: Path, head: bool = False) -> None:
    """Refuse an engine whose I/O tensors are not what the manifest says section ``k`` (or, ``head``, its exit
    head of format version 2) has: their number, names, directions (input/output), float32 dtypes and
    non-batch dimensions; the error names the section, the tensor and the engine file (as the ONNX Runtime
    backend does for graphs)."""
    last = k == manifest.num_exits
    spec = manifest.sections[k - 1]
    feats = None if last else tuple(int(d) for d in spec.features.shape[1:])  # type: ignore[union-attr]
    want: dict[str, tuple[Any, tuple[int, ...]]] = {}
    if head:
        want[features_name(k)] = (trt.TensorIOMode.INPUT, feats)  # type: ignore[assignment]
    else:
        want[input_name(k)] = (trt.TensorIOMode.INPUT, tuple(int(d) for d in spec.input.shape[1:]))
        if not last:
            want[features_name(k)] = (trt.TensorIOMode.OUTPUT, feats)  # type: ignore[assignment]
    if head or spec.head is None:  # a version-2 trunk returns its features only
        want[logits_name(k)] = (trt.TensorIOMode.OUTPUT, (manifest.num_classes,))
    where = f"the exit head of section {k} ({path})" if head else f"section {k} ({path})"
    n = int(engine.num_io_tensors)
    names = [engine.get_tensor_name(i) for i in range(n)]
    if sorted(names) != sorted(want):
        raise BackendError(f"{where}: the engine's I/O tensors are {sorted(names)} but the manifest says "
                           f"{sorted(want)} (engines of another bundle? rebuild with `sdedge build-engines`)")
    for name, (mode, dims) in want.items():
        if engine.get_tensor_mode(name) != mode:
            raise BackendError(f"{where}: tensor {name} is {engine.get_tensor_mode(name)} in the engine, expected {mode}")
        if engine.get_tensor_dtype(name) != trt.DataType.FLOAT:
            raise BackendError(f"{where}: tensor {name} is {engine.get_tensor_dtype(name)}, expected float32 I/O "
                               "(build engines with `sdedge build-engines`)")
        shape = tuple(int(d) for d in engine.get_tensor_shape(name))
        if shape[1:] != dims:
            raise BackendError(f"{where}: tensor {name} has shape {list(shape)} in the engine but [-1, "
                               f"{', '.join(map(str, dims))}] in the manifest (rebuild with `sdedge build-engines`)")


@dataclass(frozen=True)
class DeviceBatch:
    """A batch on the GPU: device pointer, shape (float32, C-contiguous) and the section that owns it."""

    ptr: int
    shape: tuple[int, ...]
    section: int  # 0 = the input buffer

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.shape[1:], dtype=np.int64)) * 4


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, bundle: Any, options: BackendOptions | None = None) -> None:
        self.options = opts = options or BackendOptions()
        if opts.precision not in ("fp32", "fp16", "int8"):
            raise BackendError(f"the tensorrt backend runs precision fp32, fp16 or int8, not {opts.precision!r}")
        trt = import_tensorrt()
        self._cuda = cuda = import_cuda()
        self.bundle = bundle
        self.precision = opts.precision
        self._buffers: list[int] = []
        self._stream = None
        self._logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(self._logger)
        man = bundle.manifest
        self._engines, self._contexts = [], []
        # format version 2: section k's exit head as an engine of its own (index k-1; None where it is inside)
        self._head_engines: list[Any] = [None] * man.num_exits
        self._head_contexts: list[Any] = [None] * man.num_exits
        with cuda.current():
            files = engine_files(bundle, opts.precision)
            jobs = [(k, path, False) for k, path in enumerate(files[:man.num_exits], start=1)]
            jobs += [(k, path, True) for k, path in zip(man.head_sections, files[man.num_exits:])]
            for k, path, is_head in jobs:
                engine = runtime.deserialize_cuda_engine(path.read_bytes())
                if engine is None:
                    raise BackendError(f"TensorRT {trt.__version__} could not deserialize {path} (built by another "
                                       f"TensorRT version or for another GPU?); rebuild with `sdedge build-engines`")
                check_engine_io(trt, engine, man, k, path, is_head)
                ctx = engine.create_execution_context()
                if ctx is None:
                    raise BackendError(f"TensorRT could not create an execution context for section {k} ({path}): "
                                       f"out of GPU memory?")
                if is_head:
                    self._head_engines[k - 1], self._head_contexts[k - 1] = engine, ctx
                else:
                    self._engines.append(engine)
                    self._contexts.append(ctx)
        # every engine's optimisation profile: run at least its minimum rows, at most its maximum
        ranges = [tuple(int(shape[0]) for shape in e.get_tensor_profile_shape(input_name(k), 0)[::2])
                  for k, e in enumerate(self._engines, start=1)]
        ranges += [tuple(int(shape[0]) for shape in e.get_tensor_profile_shape(features_name(k), 0)[::2])
                   for k, e in enumerate(self._head_engines, start=1) if e is not None]
        self.min_batch = max(lo for lo, _ in ranges)
        profile_max = min(hi for _, hi in ranges)
        if self.min_batch > profile_max:
            raise BackendError(f"the engines' optimisation profiles do not overlap (batch minimum {self.min_batch} > "
                               f"maximum {profile_max}); rebuild them with one profile")
        self.max_batch = min(opts.max_batch, profile_max)
        if self.max_batch < self.min_batch:
            raise BackendError(f"max_batch {opts.max_batch} is below the engines' profile minimum {self.min_batch}; "
                               f"raise max_batch or rebuild the engines with `--min-batch 1`")
        with cuda.current():
            try:
                self._stream = cuda.create_stream()
                self._stream_handle = cuda.stream_handle(self._stream)
                b = self.max_batch
                self._feat_shape = [tuple(int(d) for d in man.input.shape[1:])]
                for s in man.sections[:-1]:
                    self._feat_shape.append(tuple(int(d) for d in s.features.shape[1:]))  # type: ignore[union-attr]
                vol = [int(np.prod(shp)) * 4 * b for shp in self._feat_shape]  # bytes: input, features_1..K-1
                self._out = [self._alloc(n) for n in vol]  # [0] = input, [k] = features_k
                self._scratch = [self._alloc(n) for n in vol]
                c = man.num_classes
                self._logits_dev = [self._alloc(b * c * 4) for _ in range(man.num_exits)]
                # pinned host memory, the logits' copy-back target; appended one by one so close() frees a partial set
                self._logits_host: list[np.ndarray] = []
                for _ in range(man.num_exits):
                    self._logits_host.append(cuda.host_empty((b, c)))
            except Exception:
                self.close()
                raise

    def _alloc(self, nbytes: int) -> int:
        ptr = self._cuda.malloc(nbytes)
        self._buffers.append(ptr)
        return ptr

    @property
    def num_sections(self) -> int:
        return len(self._contexts)

    @property
    def device_name(self) -> str:
        return f"tensorrt-{slug(gpu_name(0))}-{self.precision}"

    def upload(self, x: np.ndarray) -> DeviceBatch:
        if x.dtype != np.float32 or x.ndim != 4:
            raise BackendError(f"upload expects a float32 NCHW batch, got {x.dtype} {list(x.shape)}")
        if x.shape[0] > self.max_batch:
            raise BackendError(f"batch of {x.shape[0]} exceeds the engines' max batch {self.max_batch}")
        x = np.ascontiguousarray(x)
        with self._cuda.current():
            self._cuda.h2d(self._out[0], x, self._stream)
        return DeviceBatch(self._out[0], tuple(x.shape), 0)

    @property
    def split_heads(self) -> bool:
        return any(c is not None for c in self._head_contexts)

    def run_section(self, index: int, x: DeviceBatch) -> tuple[DeviceBatch | None, np.ndarray]:
        """Run section ``index`` on ``x``. Fewer rows than the engines' profile minimum run padded to it
        (the buffers hold ``max_batch`` rows; the padding rows' results are ignored)."""
        if self._head_contexts[index - 1] is not None:  # format version 2: the trunk, then the head
            feats = self.run_trunk(index, x)
            return feats, self.run_head(index, feats)
        last = index == len(self._contexts)
        b = x.shape[0]
        outputs = [(logits_name(index), self._logits_dev[index - 1])]
        if not last:
            outputs.append((features_name(index), self._out[index]))
        with self._cuda.current():
            self._execute(self._contexts[index - 1], index, input_name(index), x, outputs, f"section {index}")
            host = self._logits_back(index, b)
        feats = None if last else DeviceBatch(self._out[index], (b,) + self._feat_shape[index], index)
        return feats, host

    def run_trunk(self, index: int, x: DeviceBatch) -> DeviceBatch:
        if self._head_contexts[index - 1] is None:
            raise BackendError(f"section {index} has its exit head inside its engine: run_section runs it")
        b = x.shape[0]
        with self._cuda.current():  # the features stay on the device: no synchronisation here
            self._execute(self._contexts[index - 1], index, input_name(index), x,
                          [(features_name(index), self._out[index])], f"section {index}")
        return DeviceBatch(self._out[index], (b,) + self._feat_shape[index], index)

    def run_head(self, index: int, features: DeviceBatch) -> np.ndarray:
        ctx = self._head_contexts[index - 1]
        if ctx is None:
            raise BackendError(f"section {index} has its exit head inside its engine: run_section runs it")
        with self._cuda.current():
            self._execute(ctx, index, features_name(index), features,
                          [(logits_name(index), self._logits_dev[index - 1])], f"the exit head of section {index}")
            return self._logits_back(index, features.shape[0])

    def _execute(self, ctx: Any, index: int, in_name: str, x: DeviceBatch, outputs: list[tuple[str, int]],
                 what: str) -> None:
        """Enqueue one engine on ``x`` (padded to the profile's minimum rows), its outputs at ``outputs``."""
        run_shape = (max(x.shape[0], self.min_batch),) + tuple(x.shape[1:])
        if not ctx.set_input_shape(in_name, run_shape):
            raise BackendError(f"TensorRT refused input shape {list(run_shape)} for {in_name} of {what} (outside "
                               f"its optimisation profile {self._profile_text(index, in_name)})")
        for name, ptr in [(in_name, x.ptr), *outputs]:
            if not ctx.set_tensor_address(name, ptr):
                raise BackendError(f"TensorRT refused the address of tensor {name} of {what}")
        if not ctx.execute_async_v3(self._stream_handle):
            raise BackendError(f"TensorRT failed running {what} on {list(run_shape)} (see the TensorRT log above)")

    def _logits_back(self, index: int, b: int) -> np.ndarray:
        """Exit ``index``'s logits of ``b`` rows to the host (the one synchronisation of a section: needed now)."""
        host = self._logits_host[index - 1][:b]
        self._cuda.d2h(host, self._logits_dev[index - 1], self._stream)
        self._cuda.sync(self._stream)
        return host.copy()

    def _profile_text(self, index: int, in_name: str | None = None) -> str:
        engine = self._engines[index - 1] if in_name in (None, input_name(index)) else self._head_engines[index - 1]
        lo, opt, hi = (list(s) for s in engine.get_tensor_profile_shape(in_name or input_name(index), 0))
        return f"min {lo}, opt {opt}, max {hi}"

    def take_rows(self, x: DeviceBatch, rows: np.ndarray) -> DeviceBatch:
        k = x.section
        # ping-pong between a section's output and its scratch buffer, so source and target never overlap
        dst = self._scratch[k] if x.ptr != self._scratch[k] else self._out[k]
        with self._cuda.current():
            gather_rows(self._cuda, dst, x.ptr, x.row_bytes, np.asarray(rows), self._stream)
        return DeviceBatch(dst, (len(rows),) + x.shape[1:], k)

    def close(self) -> None:
        cuda = getattr(self, "_cuda", None)
        if cuda is None:
            return
        with cuda.current():
            self._release(cuda)

    def _release(self, cuda: Any) -> None:
        if self._stream is not None:
            try:
                cuda.sync(self._stream)
            except BackendError:
                pass
        self._contexts, self._engines = [], []
        self._head_contexts = [None] * len(getattr(self, "_head_contexts", []))
        self._head_engines = [None] * len(getattr(self, "_head_engines", []))
        for arr in getattr(self, "_logits_host", []):
            try:
                cuda.free_host(arr)
            except BackendError:
                pass
        self._logits_host = []
        for ptr in self._buffers:
            try:
                cuda.free(ptr)
            except BackendError:
                pass
        self._buffers = []
        if self._stream is not None:
            try:
                cuda.destroy_stream(self._stream)
            except BackendError:
                pass
            self._stream = None

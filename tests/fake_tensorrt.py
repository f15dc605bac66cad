"""A stand-in for TensorRT 10/11 and CUDA from Python that enforces the libraries' documented rules.

TensorRT cannot be installed here, so the TensorRT backend and engine builder run against these fakes,
written from the TensorRT 10 and 11 Python API documentation (``IBuilder``, ``IBuilderConfig``,
``IOptimizationProfile``, ``ICudaEngine``, ``IExecutionContext``) and the cuda-python / pycuda docs. They
compute for real: an "engine" is the section's ONNX file run by ONNX Runtime on the CPU, "device memory"
is host memory behind integer addresses. What they enforce, as the real libraries do:

* builder: an optimisation profile needs ``min <= opt <= max`` of the input's rank for every input;
  ``BuilderFlag.FP16``/``INT8`` exist in 10.x and are gone in 11.x (strongly typed networks); a network
  created with ``STRONGLY_TYPED`` refuses precision flags;
* runtime: an engine deserializes only under the TensorRT major version that built it;
  ``set_input_shape`` returns False for a shape outside the profile, a wrong rank or a non-input name;
  ``set_tensor_address`` returns False for an unknown name or a null address; ``execute_async_v3``
  returns False unless every input shape is set and every I/O tensor has an address that lies in device
  memory with room for the tensor;
* CUDA: every copy checks that its device side is allocated device memory with room for the bytes;
  with pycuda, every call needs a CUDA context current on the calling thread (contexts are per thread),
  and so does ``execute_async_v3``.

``install(monkeypatch, version="10.8.0.43", cuda="cuda-python")`` puts the fakes in ``sys.modules``, makes
the host report one NVIDIA GPU, and returns the fake ``tensorrt`` module (its ``log`` lists errors).
"""
from __future__ import annotations

import base64
import ctypes
import enum
import importlib.machinery
import json
import sys
import threading
import types
from pathlib import Path
from typing import Any

import numpy as np

GPU = "NVIDIA Fake Orin (stand-in)"
_MAGIC = b"SDEDGE-FAKE-TRT\n"


# -- device memory -------------------------------------------------------------------------------------------
class DeviceMemory:
    """Allocations in host memory at stable addresses; checks that device-side addresses are allocated."""

    def __init__(self) -> None:
        self.blocks: dict[int, np.ndarray] = {}

    def alloc(self, nbytes: int) -> int:
        buf = np.zeros(max(1, int(nbytes)), np.uint8)
        ptr = int(buf.ctypes.data)
        self.blocks[ptr] = buf
        return ptr

    def free(self, ptr: int) -> bool:
        return self.blocks.pop(int(ptr), None) is not None

    def room(self, ptr: int) -> int:
        """Bytes from ``ptr`` to the end of its allocation (-1: not device memory)."""
        for base, buf in self.blocks.items():
            if base <= ptr < base + buf.nbytes:
                return base + buf.nbytes - ptr
        return -1

    def check(self, ptr: int, nbytes: int, what: str) -> None:
        if self.room(int(ptr)) < nbytes:
            raise MemoryError(f"{what}: address {ptr:#x} is not device memory with room for {nbytes} bytes")

    def read(self, ptr: int, nbytes: int) -> bytes:
        return ctypes.string_at(ptr, nbytes)

    def write(self, ptr: int, data: bytes) -> None:
        ctypes.memmove(ptr, data, len(data))


# -- cuda-python (cuda.bindings.runtime) -------------------------------------------------------------------------
def make_cudart(mem: DeviceMemory) -> types.ModuleType:
    rt = types.ModuleType("cuda.bindings.runtime")

    class cudaError_t(enum.IntEnum):  # noqa: N801 - the library's names
        cudaSuccess = 0
        cudaErrorInvalidValue = 1
        cudaErrorInvalidDevicePointer = 17

    class cudaMemcpyKind(enum.IntEnum):  # noqa: N801
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2
        cudaMemcpyDeviceToDevice = 3

    streams: set[int] = set()

    def cudaMalloc(n: int):  # noqa: N802
        return cudaError_t.cudaSuccess, mem.alloc(n)

    def cudaFree(ptr: int):  # noqa: N802
        return (cudaError_t.cudaSuccess if mem.free(ptr) else cudaError_t.cudaErrorInvalidDevicePointer,)

    def cudaStreamCreate():  # noqa: N802
        h = 0x5000 + len(streams) + 1
        streams.add(h)
        return cudaError_t.cudaSuccess, h

    def cudaStreamDestroy(s: int):  # noqa: N802
        ok = int(s) in streams
        streams.discard(int(s))
        return (cudaError_t.cudaSuccess if ok else cudaError_t.cudaErrorInvalidValue,)

    def cudaStreamSynchronize(s: int):  # noqa: N802
        return (cudaError_t.cudaSuccess if int(s) in streams else cudaError_t.cudaErrorInvalidValue,)

    def cudaMemcpyAsync(dst: int, src: int, n: int, kind: Any, stream: int):  # noqa: N802
        if int(stream) not in streams:
            return (cudaError_t.cudaErrorInvalidValue,)
        try:
            if kind in (cudaMemcpyKind.cudaMemcpyHostToDevice, cudaMemcpyKind.cudaMemcpyDeviceToDevice):
                mem.check(dst, n, "cudaMemcpyAsync dst")
            if kind in (cudaMemcpyKind.cudaMemcpyDeviceToHost, cudaMemcpyKind.cudaMemcpyDeviceToDevice):
                mem.check(src, n, "cudaMemcpyAsync src")
        except MemoryError:
            return (cudaError_t.cudaErrorInvalidDevicePointer,)
        ctypes.memmove(int(dst), int(src), int(n))
        return (cudaError_t.cudaSuccess,)

    pinned: dict[int, Any] = {}

    def cudaMallocHost(n: int):  # noqa: N802 - page-locked host memory (the host side of async copies)
        buf = (ctypes.c_char * max(1, int(n)))()
        pinned[ctypes.addressof(buf)] = buf
        return cudaError_t.cudaSuccess, ctypes.addressof(buf)

    def cudaFreeHost(ptr: int):  # noqa: N802
        return (cudaError_t.cudaSuccess if pinned.pop(int(ptr), None) is not None
                else cudaError_t.cudaErrorInvalidValue,)

    rt.pinned = pinned
    for f in (cudaMalloc, cudaFree, cudaStreamCreate, cudaStreamDestroy, cudaStreamSynchronize, cudaMemcpyAsync,
              cudaMallocHost, cudaFreeHost):
        setattr(rt, f.__name__, f)
    rt.cudaError_t, rt.cudaMemcpyKind = cudaError_t, cudaMemcpyKind
    return rt


# -- pycuda.driver ---------------------------------------------------------------------------------------------
class _Tls(threading.local):
    def __init__(self) -> None:
        self.stack: list[Any] = []


def make_pycuda(mem: DeviceMemory) -> tuple[types.ModuleType, _Tls]:
    drv = types.ModuleType("pycuda.driver")
    tls = _Tls()

    class LogicError(RuntimeError):
        pass

    def need_context(what: str) -> None:
        if not tls.stack:
            raise LogicError(f"{what} failed: invalid device context (no CUDA context is current on this thread)")

    class Context:
        def push(self) -> None:
            tls.stack.append(self)

        @staticmethod
        def pop() -> None:
            if not tls.stack:
                raise LogicError("cuCtxPopCurrent failed: no context on this thread")
            tls.stack.pop()

    primary = Context()

    class Device:
        def __init__(self, i: int) -> None:
            self.i = i

        def retain_primary_context(self) -> Context:
            return primary

    class DeviceAllocation:
        def __init__(self, ptr: int) -> None:
            self.ptr = ptr

        def __int__(self) -> int:
            return self.ptr

        def free(self) -> None:
            need_context("cuMemFree")
            mem.free(self.ptr)

    class Stream:
        def __init__(self) -> None:
            need_context("cuStreamCreate")
            self.handle = 0x7000 + id(self) % 1000

        def synchronize(self) -> None:
            need_context("cuStreamSynchronize")

    def mem_alloc(n: int) -> DeviceAllocation:
        need_context("cuMemAlloc")
        return DeviceAllocation(mem.alloc(n))

    def memcpy_htod_async(dst: int, src: np.ndarray, stream: Stream) -> None:
        need_context("cuMemcpyHtoDAsync")
        mem.check(int(dst), src.nbytes, "memcpy_htod_async dst")
        ctypes.memmove(int(dst), src.ctypes.data, src.nbytes)

    def memcpy_dtoh_async(dst: np.ndarray, src: int, stream: Stream) -> None:
        need_context("cuMemcpyDtoHAsync")
        mem.check(int(src), dst.nbytes, "memcpy_dtoh_async src")
        ctypes.memmove(dst.ctypes.data, int(src), dst.nbytes)

    def memcpy_dtod_async(dst: int, src: int, n: int, stream: Stream) -> None:
        need_context("cuMemcpyDtoDAsync")
        mem.check(int(dst), n, "memcpy_dtod_async dst")
        mem.check(int(src), n, "memcpy_dtod_async src")
        ctypes.memmove(int(dst), int(src), n)

    def pagelocked_empty(shape: Any, dtype: Any) -> np.ndarray:
        need_context("cuMemHostAlloc")
        return np.empty(shape, dtype)

    drv.init = lambda: None
    drv.pagelocked_empty = pagelocked_empty
    for obj in (LogicError, Context, Device, DeviceAllocation, Stream, mem_alloc, memcpy_htod_async,
                memcpy_dtoh_async, memcpy_dtod_async):
        setattr(drv, obj.__name__, obj)
    return drv, tls


# -- tensorrt ----------------------------------------------------------------------------------------------------
def make_tensorrt(version: str, mem: DeviceMemory, context_required: _Tls | None) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    major = int(version.split(".")[0])
    trt.log = []  # errors the fake "logged" (the real library logs them and returns False/None)

    class DataType(enum.Enum):
        FLOAT = 0
        HALF = 1
        INT8 = 2

    class TensorIOMode(enum.Enum):
        NONE = 0
        INPUT = 1
        OUTPUT = 2

    class MemoryPoolType(enum.Enum):
        WORKSPACE = 0

    flags = {"TF32": 7, "STRICT_TYPES": 5} if major >= 11 else {"FP16": 0, "INT8": 1, "TF32": 7}
    BuilderFlag = enum.Enum("BuilderFlag", flags)  # noqa: N806 - 11.x has no FP16/INT8 (strongly typed)

    class NetworkDefinitionCreationFlag(enum.IntEnum):
        STRONGLY_TYPED = 1

    class Severity(enum.IntEnum):
        ERROR = 1
        WARNING = 2
        INFO = 3
        VERBOSE = 4

    class Logger:
        def __init__(self, severity: Any = None) -> None:
            self.severity = severity

    Logger.Severity = Severity
    Logger.ERROR, Logger.WARNING, Logger.INFO, Logger.VERBOSE = (Severity.ERROR, Severity.WARNING, Severity.INFO,
                                                                 Severity.VERBOSE)

    def error(msg: str) -> bool:
        trt.log.append(msg)
        return False

    # ---- builder
    class Tensor:
        def __init__(self, name: str, shape: tuple) -> None:
            self.name, self.shape = name, shape

    class Network:
        def __init__(self, flags: int) -> None:
            self.strongly_typed = bool(flags & (1 << int(NetworkDefinitionCreationFlag.STRONGLY_TYPED)))
            self.inputs: list[Tensor] = []
            self.onnx: str | None = None
            self.model: bytes | None = None

        @property
        def num_inputs(self) -> int:
            return len(self.inputs)

        def get_input(self, i: int) -> Tensor:
            return self.inputs[i]

    class OnnxParser:
        def __init__(self, network: Network, logger: Logger) -> None:
            self.network, self.errors = network, []

        def parse_from_file(self, path: str) -> bool:
            import onnx

            try:
                model = onnx.load(path)
            except Exception as e:  # noqa: BLE001
                self.errors.append(f"cannot read {path}: {e}")
                return False
            return self._take(model, path)

        def parse(self, model: bytes, path: str | None = None) -> bool:
            """``OnnxParser.parse(model, path)``: the serialized graph; ``path`` only locates external data."""
            import onnx

            if not isinstance(model, (bytes, bytearray, memoryview)):
                raise TypeError(f"parse() takes the serialized model as a buffer, got {type(model).__name__}")
            try:
                proto = onnx.load_from_string(bytes(model))
            except Exception as e:  # noqa: BLE001
                self.errors.append(f"cannot parse the model buffer: {e}")
                return False
            self.network.model = bytes(model)  # the engine runs what was parsed (the converted graph)
            return self._take(proto, path or "<buffer>")

        def _take(self, model, path: str) -> bool:
            import onnx

            zero_points = {i.name: i.data_type for i in model.graph.initializer}
            for n in model.graph.node:  # TensorRT's explicit quantization is symmetric int8 only
                if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2 \
                        and zero_points.get(n.input[2], onnx.TensorProto.INT8) != onnx.TensorProto.INT8:
                    self.errors.append(f"{n.name}: TensorRT supports only INT8 zero points in Q/DQ")
                    return False
            for i in model.graph.input:
                dims = tuple(d.dim_value if d.dim_value > 0 else -1 for d in i.type.tensor_type.shape.dim)
                self.network.inputs.append(Tensor(i.name, dims))
            self.network.onnx = str(Path(path).resolve()) if path != "<buffer>" else path
            return True

        @property
        def num_errors(self) -> int:
            return len(self.errors)

        def get_error(self, i: int) -> str:
            return self.errors[i]

    class Profile:
        def __init__(self) -> None:
            self.shapes: dict[str, tuple] = {}

        def set_shape(self, name: str, lo: tuple, opt: tuple, hi: tuple) -> None:
            if not (len(lo) == len(opt) == len(hi)) or any(not (a <= b <= c) for a, b, c in zip(lo, opt, hi)):
                raise ValueError(f"profile for {name}: need min <= opt <= max of one rank, got {lo}, {opt}, {hi}")
            self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))

    class Config:
        def __init__(self) -> None:
            self.flags: set[Any] = set()
            self.profiles: list[Profile] = []
            self.pool: dict[Any, int] = {}

        def set_memory_pool_limit(self, pool: Any, n: int) -> None:
            self.pool[pool] = n

        def set_flag(self, flag: Any) -> None:
            self.flags.add(flag)

        def add_optimization_profile(self, p: Profile) -> int:
            self.profiles.append(p)
            return len(self.profiles) - 1

    class Builder:
        def __init__(self, logger: Logger) -> None:
            self.logger = logger

        def create_network(self, flags: int = 0) -> Network:
            return Network(flags)

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Network, config: Config) -> bytes | None:
            if network.strongly_typed and any(f.name in ("FP16", "INT8") for f in config.flags):
                return error("a strongly typed network takes its precision from the graph, not builder flags")
            if not config.profiles:
                return error("a network with dynamic shapes needs an optimisation profile")
            prof = config.profiles[0]
            for t in network.inputs:
                if t.name not in prof.shapes:
                    return error(f"optimisation profile has no shapes for input {t.name}")
                if len(prof.shapes[t.name][0]) != len(t.shape):
                    return error(f"profile rank for {t.name} does not match the network")
            precision = ("fp16" if any(f.name == "FP16" for f in config.flags) else "fp32") \
                if not network.strongly_typed else "typed"
            doc = {"major": major, "onnx": network.onnx, "precision": precision,
                   "model_b64": base64.b64encode(network.model).decode() if network.model else None,
                   "profile": {k: [list(s) for s in v] for k, v in prof.shapes.items()}}
            return _MAGIC + json.dumps(doc).encode()

    # ---- runtime
    class Engine:
        def __init__(self, doc: dict) -> None:
            import onnxruntime as ort

            so = ort.SessionOptions()
            so.intra_op_num_threads = 1
            source = base64.b64decode(doc["model_b64"]) if doc.get("model_b64") else doc["onnx"]
            self.sess = ort.InferenceSession(source, so, providers=["CPUExecutionProvider"])
            self.profile = {k: tuple(tuple(s) for s in v) for k, v in doc["profile"].items()}
            self.io: dict[str, tuple[Any, tuple]] = {}
            for t in self.sess.get_inputs():
                self.io[t.name] = (TensorIOMode.INPUT, tuple(-1 if not isinstance(d, int) else d for d in t.shape))
            for t in self.sess.get_outputs():
                self.io[t.name] = (TensorIOMode.OUTPUT, tuple(-1 if not isinstance(d, int) else d for d in t.shape))
            self.names = list(self.io)

        @property
        def num_io_tensors(self) -> int:
            return len(self.names)

        @property
        def num_optimization_profiles(self) -> int:
            return 1

        def get_tensor_name(self, i: int) -> str:
            return self.names[i]

        def get_tensor_mode(self, name: str) -> Any:
            return self.io[name][0] if name in self.io else TensorIOMode.NONE

        def get_tensor_shape(self, name: str) -> tuple:
            return self.io[name][1]

        def get_tensor_dtype(self, name: str) -> Any:
            return DataType.FLOAT

        def get_tensor_profile_shape(self, name: str, profile: int) -> tuple:
            if profile != 0 or name not in self.profile:
                raise RuntimeError(f"no profile shapes for {name} in profile {profile}")
            return self.profile[name]

        def create_execution_context(self) -> "Context":
            return Context(self)

    class Context:
        def __init__(self, engine: Engine) -> None:
            self.engine = engine
            self.shapes: dict[str, tuple] = {}
            self.addresses: dict[str, int] = {}
            self.runs: list[tuple] = []

        def set_input_shape(self, name: str, shape: Any) -> bool:
            e = self.engine
            if e.get_tensor_mode(name) != TensorIOMode.INPUT:
                return error(f"set_input_shape: {name} is not an input tensor")
            shape = tuple(int(d) for d in shape)
            lo, _, hi = e.profile[name]
            if len(shape) != len(lo) or any(not (a <= d <= b) for a, d, b in zip(lo, shape, hi)):
                return error(f"set_input_shape: {name} {shape} is outside the optimisation profile [{lo}, {hi}]")
            self.shapes[name] = shape
            return True

        def set_tensor_address(self, name: str, ptr: int) -> bool:
            if name not in self.engine.io or not ptr:
                return error(f"set_tensor_address: unknown tensor {name} or null address")
            self.addresses[name] = int(ptr)
            return True

        def execute_async_v3(self, stream: int) -> bool:
            if context_required is not None and not context_required.stack:
                return error("execute_async_v3: no CUDA context is current on the calling thread")
            e = self.engine
            feeds = {}
            for name, (mode, _) in e.io.items():
                if name not in self.addresses:
                    return error(f"execute_async_v3: tensor {name} has no address")
                if mode == TensorIOMode.INPUT:
                    if name not in self.shapes:
                        return error(f"execute_async_v3: input {name} has no shape set")
                    shape = self.shapes[name]
                    n = int(np.prod(shape)) * 4
                    if mem.room(self.addresses[name]) < n:
                        return error(f"execute_async_v3: input {name} address lacks room for {n} bytes")
                    feeds[name] = np.frombuffer(mem.read(self.addresses[name], n), np.float32).reshape(shape)
            outs = e.sess.run(None, feeds)
            for (name, (mode, _)), out in zip([(n, v) for n, v in e.io.items() if v[0] == TensorIOMode.OUTPUT], outs):
                data = np.ascontiguousarray(out, np.float32).tobytes()
                if mem.room(self.addresses[name]) < len(data):
                    return error(f"execute_async_v3: output {name} address lacks room for {len(data)} bytes")
                mem.write(self.addresses[name], data)
            self.runs.append(tuple(self.shapes.values()))
            return True

    class Runtime:
        def __init__(self, logger: Logger) -> None:
            self.logger = logger

        def deserialize_cuda_engine(self, data: bytes) -> Engine | None:
            if not data.startswith(_MAGIC):
                error("deserialize_cuda_engine: not a serialized engine")
                return None
            doc = json.loads(data[len(_MAGIC):])
            if doc["major"] != major:
                error(f"deserialize_cuda_engine: engine built by TensorRT {doc['major']}.x, this is {version}")
                return None
            return Engine(doc)

    for obj in (DataType, TensorIOMode, MemoryPoolType, NetworkDefinitionCreationFlag, Logger, OnnxParser, Builder,
                Runtime):
        setattr(trt, obj.__name__, obj)
    trt.BuilderFlag = BuilderFlag
    return trt


def install(monkeypatch: Any, version: str = "10.8.0.43", cuda: str = "cuda-python") -> types.ModuleType:
    """Put the fakes in ``sys.modules`` (``tensorrt`` and ``cuda.bindings.runtime`` or ``pycuda.driver``) and
    make the host report one NVIDIA GPU; returns the fake ``tensorrt`` module."""
    import sdedge.common.hostinfo as hostinfo

    mem = DeviceMemory()
    tls = None
    if cuda == "cuda-python":
        rt = make_cudart(mem)
        pkg, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
        pkg.__path__, bindings.__path__ = [], []
        bindings.runtime, pkg.bindings = rt, bindings
        for name, mod in (("cuda", pkg), ("cuda.bindings", bindings), ("cuda.bindings.runtime", rt)):
            monkeypatch.setitem(sys.modules, name, mod)
        monkeypatch.setitem(sys.modules, "pycuda", None)
    else:
        drv, tls = make_pycuda(mem)
        pkg = types.ModuleType("pycuda")
        pkg.__path__, pkg.driver = [], drv
        monkeypatch.setitem(sys.modules, "pycuda", pkg)
        monkeypatch.setitem(sys.modules, "pycuda.driver", drv)
        for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart"):
            monkeypatch.setitem(sys.modules, name, None)
    trt = make_tensorrt(version, mem, tls)
    trt.memory = mem
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    for mod in [trt] + [m for m in sys.modules.values() if isinstance(m, types.ModuleType) and m.__name__ in (
            "cuda", "cuda.bindings", "cuda.bindings.runtime", "pycuda", "pycuda.driver") and m.__spec__ is None]:
        mod.__spec__ = importlib.machinery.ModuleSpec(mod.__name__, None)  # importlib.util.find_spec finds it
    import sdedge.runtime.backends.tensorrt as trt_backend
    import sdedge.runtime.engine_cache as engine_cache

    monkeypatch.setattr(hostinfo, "nvidia_gpus", lambda: [GPU])
    for mod in (hostinfo, engine_cache, trt_backend):
        monkeypatch.setattr(mod, "gpu_name", lambda device=0: GPU)
    return trt

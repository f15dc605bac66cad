"""TensorRT engines for a bundle, built on the target with the TensorRT 10 or 11 Python API.

One engine per section, from the section's ONNX file (``int8/s{k}.onnx``, the QDQ graph, for
``precision="int8"``: TensorRT's explicit quantization reads the scales from the Q/DQ nodes, so no
calibrator runs here). Every engine gets one optimisation profile for the batch range
``min_batch <= opt_batch <= max_batch``; inputs and outputs stay float32, as the runtime's TensorRT
backend expects. Engines are cached in the bundle under ``engines/<key>/`` (see
:mod:`sdedge.runtime.engine_cache`) and reused while the key (TensorRT version, GPU, precision), the
profile and the sha256 of every source ONNX file stay the same; anything else rebuilds them. The cache
folder is replaced atomically, so a build killed midway leaves the previous engines (or none).

``tensorrt`` is imported only here, inside :func:`build_engines`; where it is missing the error says
how to install it.
"""
from __future__ import annotations

import datetime as _dt
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..runtime.engine_cache import import_tensorrt as _import_tensorrt
from ..common.errors import ExportError
from ..common.progress import reporter
from ..runtime.manifest import features_name, input_name

PRECISIONS = ("fp32", "fp16", "int8")


@dataclass
class EngineBuildResult:
    bundle_path: Path
    precision: str
    cache_dir: Path
    engines: list[Path]
    built: bool  # False when valid cached engines were reused
    key: dict[str, Any]
    seconds: list[float] = field(default_factory=list)  # build time per section (empty when reused)


def import_tensorrt() -> Any:
    """The ``tensorrt`` module (>= 10) or a :class:`BackendError` saying how to install it."""
    return _import_tensorrt("building engines")


def tensorrt_major(trt: Any) -> int:
    """The installed TensorRT's major version (10 or 11 are supported; :func:`import_tensorrt` refuses < 10)."""
    try:
        return int(str(trt.__version__).split(".")[0])
    except (AttributeError, ValueError):
        return 0


def _build_one(trt: Any, onnx_path: Path, precision: str, batches: tuple[int, int, int], workspace_mb: int,
               logger: Any) -> bytes:
    """One engine from one section graph. TensorRT 10: a weakly typed network, precision from builder flags
    (fp16: ``BuilderFlag.FP16``; int8: the QDQ graph with ``FP16`` + ``INT8``). TensorRT 11 removed those
    flags: the network is strongly typed and takes its precision from the graph (fp32 sections for fp32,
    the QDQ sections for int8, the float16 section graphs of ``sdedge export --fp16`` for fp16)."""
    typed = tensorrt_major(trt) >= 11
    builder = trt.Builder(logger)
    flags = (1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)) if typed else 0
    network = builder.create_network(flags)  # TensorRT >= 10: networks are always explicit-batch
    parser = trt.OnnxParser(network, logger)
    if precision == "int8":  # TensorRT runs symmetric int8 Q/DQ only: convert the uint8 ONNX Runtime layout
        from .quantize import tensorrt_qdq_bytes

        parsed = parser.parse(tensorrt_qdq_bytes(onnx_path), str(onnx_path))
    else:
        parsed = parser.parse_from_file(str(onnx_path))
    if not parsed:
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT could not parse {onnx_path}: {errors or 'unknown parser error'}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    if not typed and precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)  # layers without Q/DQ fall back to fp16, not fp32
    if not typed and precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        t = network.get_input(i)
        chw = tuple(int(d) for d in t.shape[1:])
        if any(d < 0 for d in chw):
            raise ExportError(f"{onnx_path}: input {t.name} has dynamic non-batch dimensions {tuple(t.shape)}")
        lo, opt, hi = batches
        profile.set_shape(t.name, (lo, *chw), (opt, *chw), (hi, *chw))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"TensorRT failed to build an engine from {onnx_path} ({precision}); "
                          "run with the TensorRT logger at VERBOSE for details")
    return bytes(serialized)


def build_engines(bundle: str | Path, precision: str = "fp16", min_batch: int = 1, opt_batch: int = 1,
                  max_batch: int = 64, workspace_mb: int = 1024, force: bool = False, device: int = 0,
                  progress: bool | Callable[[str], None] = False) -> EngineBuildResult:
    """Build (or reuse) one TensorRT engine per section of ``bundle`` for ``precision`` on this GPU."""
    from ..common.atomic import staging_dir
    from ..common.hostinfo import gpu_name
    from ..runtime.bundle import open_bundle
    from ..runtime.engine_cache import KEY_FILE, cached_engines, engine_cache_dir, engine_path, head_engine_path

    say = reporter(progress, "[sdedge build-engines]")
    if precision not in PRECISIONS:
        raise ExportError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    if not (1 <= min_batch <= opt_batch <= max_batch):
        raise ExportError(f"batch profile must satisfy 1 <= min <= opt <= max, got min {min_batch}, opt {opt_batch}, "
                          f"max {max_batch}")
    if workspace_mb < 1:
        raise ExportError(f"workspace must be at least 1 MB, got {workspace_mb}")
    b = open_bundle(bundle)  # never build from files that fail their checksums
    man = b.manifest
    trt = import_tensorrt()
    typed_fp16 = precision == "fp16" and tensorrt_major(trt) >= 11
    heads = man.head_sections  # format version 2: an engine per exit head too
    # every graph an engine is built from, named as key.json's sources and the engine files are
    graphs = [(f"s{s.index}", s) for s in man.sections] + [(f"h{k}", man.sections[k - 1].head) for k in heads]
    if typed_fp16 and not all(g.fp16_file for _, g in graphs):  # type: ignore[union-attr]
        raise ExportError(f"TensorRT {trt.__version__} builds strongly typed networks only (BuilderFlag.FP16 is gone): "
                          f"fp16 engines need the float16 section graphs of `sdedge export --fp16`, which {b.path} "
                          f"does not have; re-export with --fp16, or build --fp32 / --int8 engines")
    sources, paths = {}, []
    for name, g in graphs:
        if typed_fp16:
            path, sha = b.graph_path(g, "fp16-graph"), man.files[g.fp16_file]  # type: ignore[arg-type,index,union-attr]
        else:
            path = b.graph_path(g, precision)  # type: ignore[arg-type]  # int8 without int8 files: BundleError
            sha = man.files[g.int8_file] if precision == "int8" else g.sha256  # type: ignore[index,union-attr]
        sources[name] = sha
        paths.append(path)
    gpu = gpu_name(device)
    folder = engine_cache_dir(b.path, precision, trt_version=str(trt.__version__), gpu=gpu)
    profile = {"min": min_batch, "opt": opt_batch, "max": max_batch}
    expect = {"profile": profile, "sources": sources}
    cached = None if force else cached_engines(b.path, precision, man.num_exits, expect, heads,
                                               trt_version=str(trt.__version__), gpu=gpu)
    key = {"key": folder.name, "tensorrt_version": str(trt.__version__), "gpu": gpu, "precision": precision,
           "profile": profile, "sources": sources, "workspace_mb": workspace_mb}
    if cached is not None:
        say(f"engines for {folder.name} are up to date in {folder}; nothing to build (use --force to rebuild)")
        return EngineBuildResult(b.path, precision, folder, cached, False, key)
    say(f"building {len(paths)} {precision} engines with TensorRT {trt.__version__} on {gpu} "
        f"(batch {min_batch}/{opt_batch}/{max_batch}) into {folder}")
    logger = trt.Logger(trt.Logger.WARNING)
    seconds = []
    with staging_dir(folder) as tmp:
        targets = [(engine_path(tmp, k), f"section {k} ({input_name(k)})") for k in range(1, man.num_exits + 1)]
        targets += [(head_engine_path(tmp, k), f"exit head {k} ({features_name(k)})") for k in heads]
        for src, (dst, what) in zip(paths, targets):
            t = time.perf_counter()
            data = _build_one(trt, src, precision, (min_batch, opt_batch, max_batch), workspace_mb, logger)
            dst.write_bytes(data)
            seconds.append(time.perf_counter() - t)
            say(f"  {what}: {len(data) / 1e6:.2f} MB in {seconds[-1]:.1f} s")
        key["built"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        key["build_seconds"] = [round(s, 3) for s in seconds]
        (tmp / KEY_FILE).write_text(json.dumps(key, indent=2, sort_keys=True) + "\n", "utf-8")
    engines = [engine_path(folder, k) for k in range(1, man.num_exits + 1)] + [head_engine_path(folder, k) for k in heads]
    say(f"done: {folder}")
    return EngineBuildResult(b.path, precision, folder, engines, True, key, seconds)

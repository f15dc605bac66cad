"""The TensorRT path end to end against ``fake_tensorrt``: a stand-in for TensorRT 10/11 and CUDA that
enforces the libraries' documented rules (profiles, ``set_input_shape`` returning False, addresses before
``execute_async_v3``, per-thread pycuda contexts, 11.x without precision flags) and computes for real
(each engine is its section's ONNX graph on ONNX Runtime, device memory is host memory).

The tests of issue 13's bugs failed on the code before it (checked by running them on that code): ``auto``
ignored fp16 engines, ``--min-batch 2`` broke start-up ("TensorRT failed running section 1"), a shape
outside the profile was not reported as such, pycuda ran without a context on the server's worker thread,
engine I/O was not checked against the manifest, and TensorRT 11 builds used removed builder flags.
"""
from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

import fake_tensorrt
from sdedge.common.errors import BackendError, ExportError

pytest.importorskip("onnx")


@pytest.fixture()
def bundle(tiny_bundle, tmp_path) -> Path:
    """A private copy of the tiny bundle (engines are written into it)."""
    dst = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, dst)
    return dst


def reference(bundle: Path):
    from sdedge.runtime import AnytimeSession

    return AnytimeSession(bundle, backend="onnxruntime", precision="fp32", warmup=0, engine="python")


def images(s, n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n,) + s.input_shape).astype(np.float32)


def same_answers(a, b, x, **kw) -> None:
    ra, rb = a.infer(x, **kw), b.infer(x, **kw)
    assert [r.exit_index for r in ra] == [r.exit_index for r in rb]
    assert [r.label for r in ra] == [r.label for r in rb]
    np.testing.assert_allclose(np.stack([r.probabilities for r in ra]), np.stack([r.probabilities for r in rb]),
                               rtol=1e-5, atol=1e-6)


def test_auto_runs_the_fp16_engines_build_engines_made(bundle, monkeypatch):
    from sdedge.export import build_engines
    from sdedge.runtime import AnytimeSession

    trt = fake_tensorrt.install(monkeypatch)
    build_engines(bundle)  # fp16 by default, as the README's flow
    with AnytimeSession(bundle, warmup=1, max_batch=4) as s, reference(bundle) as ref:
        assert s.backend_info == {"engine": "python", "backend": "tensorrt", "precision": "fp16",
                                  "device": s.device_name} and s.device_name.endswith("-fp16")
        x = images(s, 4, seed=1)
        same_answers(s, ref, x)
        same_answers(s, ref, x, threshold=0.5)  # shrinking batches: rows gathered on the device
    assert not trt.log


def test_min_batch_above_one_pads_instead_of_failing(bundle, monkeypatch):
    from sdedge.export import build_engines
    from sdedge.runtime import AnytimeSession

    trt = fake_tensorrt.install(monkeypatch)
    build_engines(bundle, "fp32", min_batch=2, opt_batch=2, max_batch=4)
    with AnytimeSession(bundle, warmup=1, max_batch=4) as s, reference(bundle) as ref:
        assert s.backend.min_batch == 2 and s.max_batch == 4
        x = images(s, 3, seed=2)
        same_answers(s, ref, x[:1])  # one row runs padded to the profile's minimum
        same_answers(s, ref, x, threshold=0.6)
        ran = [shape[0][0] for ctx in s.backend._contexts for shape in ctx.runs]
        assert ran and min(ran) >= 2
    assert not trt.log


def test_a_shape_outside_the_profile_is_a_clear_error(bundle, monkeypatch):
    from sdedge.export import build_engines
    from sdedge.runtime.backends.base import BackendOptions
    from sdedge.runtime.backends.tensorrt import DeviceBatch, TensorRTBackend
    from sdedge.runtime.bundle import open_bundle

    fake_tensorrt.install(monkeypatch)
    build_engines(bundle, "fp32", max_batch=2)
    be = TensorRTBackend(open_bundle(bundle), BackendOptions(precision="fp32", max_batch=8))
    try:
        assert be.max_batch == 2  # the profile's maximum bounds the session
        h = be.upload(np.zeros((2,) + tuple(be.bundle.manifest.input.shape[1:]), np.float32))
        too_big = DeviceBatch(h.ptr, (3,) + h.shape[1:], 0)
        with pytest.raises(BackendError, match=r"refused input shape \[3, .*section 1.*max \[2"):
            be.run_section(1, too_big)
    finally:
        be.close()


def test_engine_io_is_checked_against_the_manifest(bundle, monkeypatch):
    from sdedge.export import build_engines
    from sdedge.runtime import AnytimeSession
    from sdedge.runtime.engine_cache import engine_path

    fake_tensorrt.install(monkeypatch)
    res = build_engines(bundle, "fp32")
    s1, s2 = engine_path(res.cache_dir, 1), engine_path(res.cache_dir, 2)
    s1.write_bytes(s2.read_bytes())  # section 2's engine where section 1's should be
    with pytest.raises(BackendError, match=r"section 1 .*s1\.engine.*I/O tensors are .*features_1.*manifest says"):
        AnytimeSession(bundle, backend="tensorrt", precision="fp32", warmup=0)


def test_pycuda_context_is_made_current_on_the_worker_thread(bundle, monkeypatch):
    from sdedge.export import build_engines
    from sdedge.runtime import AnytimeSession

    trt = fake_tensorrt.install(monkeypatch, cuda="pycuda")
    build_engines(bundle, "fp16")
    drv = __import__("sys").modules["pycuda.driver"]
    with AnytimeSession(bundle, warmup=1, max_batch=4) as s, reference(bundle) as ref:
        assert s.backend_name == "tensorrt"
        x = images(s, 3, seed=3)
        out: dict = {}

        def work() -> None:  # as the server's inference thread: not the thread that made the session
            try:
                out["r"] = s.infer(x, threshold=0.5)
            except Exception as e:  # noqa: BLE001
                out["e"] = e

        t = threading.Thread(target=work)
        t.start()
        t.join(120)
        assert "e" not in out, out.get("e")
        assert [r.label for r in out["r"]] == [r.label for r in ref.infer(x, threshold=0.5)]
        with pytest.raises(drv.LogicError, match="no context"):
            drv.Context.pop()  # nothing was left pushed on this thread either
    assert not trt.log


def test_tensorrt_11_builds_strongly_typed_without_precision_flags(bundle, tiny_checkpoint, tmp_path, monkeypatch):
    from sdedge.export import ExportConfig, build_engines, export_bundle
    from sdedge.runtime import AnytimeSession

    trt = fake_tensorrt.install(monkeypatch, version="11.4.0.10")
    assert not hasattr(trt.BuilderFlag, "FP16")
    with pytest.raises(ExportError, match="strongly typed.*float16 section graphs of `sdedge export --fp16`"):
        build_engines(bundle, "fp16")
    res = build_engines(bundle, "fp32")
    assert json.loads(res.engines[0].read_bytes()[len(fake_tensorrt._MAGIC):])["precision"] == "typed"
    with AnytimeSession(bundle, warmup=1, max_batch=2) as s, reference(bundle) as ref:
        assert s.backend_info["precision"] == "fp32" and s.backend_name == "tensorrt"
        same_answers(s, ref, images(s, 2, seed=4))
    # export --fp16 writes float16 section graphs (float32 I/O); TensorRT 11 builds its fp16 engines from them
    b16 = export_bundle(ExportConfig(checkpoint=str(tiny_checkpoint), output=str(tmp_path / "b16"), fp16=True,
                                     threads=1, parity_samples=8)).bundle_path
    res = build_engines(b16, "fp16")
    assert json.loads(res.engines[0].read_bytes()[len(fake_tensorrt._MAGIC):])["onnx"].endswith("fp16/s1.onnx")
    with AnytimeSession(b16, warmup=1, max_batch=2) as s, reference(b16) as ref:
        assert s.backend_info["precision"] == "fp16"
        x = images(s, 2, seed=5)
        np.testing.assert_allclose(s.infer_all_exits(x), ref.infer_all_exits(x), atol=5e-2)  # float16 inside
    assert not trt.log


def test_engines_of_another_major_version_are_refused(bundle, monkeypatch):
    from sdedge.export import build_engines
    from sdedge.runtime.backends.base import BackendOptions
    from sdedge.runtime.backends.tensorrt import TensorRTBackend
    from sdedge.runtime.bundle import open_bundle

    fake_tensorrt.install(monkeypatch, version="10.8.0.43")
    build_engines(bundle, "fp32")
    # the same version string's cache folder, read by a TensorRT 11 runtime: it cannot deserialize them
    trt11 = fake_tensorrt.install(monkeypatch, version="11.4.0.10")
    monkeypatch.setattr(trt11, "__version__", "10.8.0.43")
    with pytest.raises(BackendError, match="could not deserialize"):
        TensorRTBackend(open_bundle(bundle), BackendOptions(precision="fp32"))


def test_device_buffers_batches_and_chunks(bundle, monkeypatch):
    """Mixed exits shrink the batch on the device, the engines' profile caps the session's batch, larger
    batches are refused or chunked, and closing frees every device buffer."""
    from sdedge.common.errors import InputError
    from sdedge.export import build_engines
    from sdedge.runtime import AnytimeSession

    trt = fake_tensorrt.install(monkeypatch)
    build_engines(bundle, "fp16", max_batch=16)
    s = AnytimeSession(bundle, warmup=1, max_batch=32)
    ref = reference(bundle)
    try:
        assert s.max_batch == 16  # the engines' profile caps the session's batch
        x = images(s, 12, seed=13)
        np.testing.assert_allclose(s.infer_all_exits(x), ref.infer_all_exits(x), rtol=1e-5, atol=1e-6)
        conf = np.exp(ref.infer_all_exits(x)[0])
        t = float(np.quantile((conf / conf.sum(1, keepdims=True)).max(1), 0.5))  # half leave at exit 1
        got, want = s.infer(x, threshold=t), ref.infer(x, threshold=t)
        assert len({r.exit_index for r in want}) >= 2
        assert [(r.exit_index, r.label) for r in got] == [(r.exit_index, r.label) for r in want]
        with pytest.raises(BackendError, match="max batch 16"):
            s.backend.upload(np.zeros((17,) + s.input_shape, np.float32))
        with pytest.raises(InputError, match="max_batch=16"):
            s.infer(np.zeros((17,) + s.input_shape, np.float32))
        assert s.infer_all_exits(np.concatenate([x, x])).shape[1] == 24  # chunked to the engines' batch
        held = len(trt.memory.blocks)
        assert held > 0 and len(__import__("sys").modules["cuda.bindings.runtime"].pinned) == s.num_exits
    finally:
        s.close()
        ref.close()
    assert not trt.memory.blocks  # every device buffer released
    assert not __import__("sys").modules["cuda.bindings.runtime"].pinned  # and every pinned host buffer
    assert not trt.log


def test_onnxruntime_tensorrt_provider_gets_explicit_profiles_and_an_engine_cache(bundle):
    """Issue 13 item 7: the TensorRT execution provider of onnxruntime-gpu, given explicit profile shapes from 1
    to max_batch (a shrinking batch never rebuilds an engine), fp16 when asked, and caches in engines/."""
    from sdedge.runtime.backends.onnxruntime import tensorrt_ep_options
    from sdedge.runtime.bundle import open_bundle

    b = open_bundle(bundle)
    spec = b.manifest.sections[1]
    c, h, w = spec.input.shape[1:]
    opts = tensorrt_ep_options(b.path, spec, 16, "fp16", "NVIDIA Jetson Orin Nano")
    assert opts["trt_profile_min_shapes"] == f"features_1:1x{c}x{h}x{w}"
    assert opts["trt_profile_max_shapes"] == f"features_1:16x{c}x{h}x{w}"
    assert opts["trt_fp16_enable"] is True and opts["trt_engine_cache_enable"] is True
    assert Path(opts["trt_engine_cache_path"]) == b.path / "engines" / "ort-trt-nvidia-jetson-orin-nano-fp16"
    assert tensorrt_ep_options(b.path, spec, 4, "fp32", "x")["trt_fp16_enable"] is False


@pytest.mark.parametrize("version", ["10.8.0.43", "11.4.0.10"])
def test_int8_engines_are_built_from_the_symmetric_int8_graph(tiny_checkpoint, tmp_path, monkeypatch, version):
    """The bundle's int8 sections are laid out for ONNX Runtime (uint8 activations); TensorRT reads only
    symmetric int8 Q/DQ, so the build hands its parser the ``tensorrt_qdq`` conversion (the stand-in's
    ``parse`` refuses a non-int8 zero point, as TensorRT's parser does) and the engine computes what the
    ONNX Runtime int8 sections compute."""
    import base64

    import onnx

    from sdedge.export import ExportConfig, build_engines, export_bundle
    from sdedge.runtime import AnytimeSession

    fake_tensorrt.install(monkeypatch, version=version)
    b8 = export_bundle(ExportConfig(checkpoint=str(tiny_checkpoint), output=str(tmp_path / "b8"), int8=True,
                                    int8_samples=64, threads=1, parity_samples=8)).bundle_path
    res = build_engines(b8, "int8")
    for engine in res.engines:
        doc = json.loads(engine.read_bytes()[len(fake_tensorrt._MAGIC):])
        parsed = onnx.load_from_string(base64.b64decode(doc["model_b64"]))
        zero_points = {i.name: i.data_type for i in parsed.graph.initializer}
        qdq = [n for n in parsed.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
        assert qdq and all(zero_points[n.input[2]] == onnx.TensorProto.INT8 for n in qdq if len(n.input) > 2)
    with AnytimeSession(b8, precision="int8", warmup=1, max_batch=4) as s, \
            AnytimeSession(b8, backend="onnxruntime", precision="int8", warmup=0, engine="python") as ref:
        assert s.backend_name == "tensorrt" and s.backend_info["precision"] == "int8"
        x = images(s, 4, seed=6)
        got, want = s.infer_all_exits(x), ref.infer_all_exits(x)
        spread = float(np.sqrt(np.mean((want - want.mean(-1, keepdims=True)) ** 2)))
        assert float(np.sqrt(np.mean((got - want) ** 2))) < 0.1 * spread  # same quantization grid, up to rounding


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_a_version_2_bundle_gets_head_engines_and_runs_them_only_where_needed(tiny_checkpoint, tmp_path, monkeypatch,
                                                                            precision):
    """Bundle format version 2 on TensorRT: build-engines builds an engine per exit head (``h{k}.engine``) beside
    the trunks'; the backend runs a head only where the session needs that exit's logits, and answers as
    ONNX Runtime does on the same bundle."""
    from sdedge.export import ExportConfig, build_engines, export_bundle
    from sdedge.runtime import AnytimeSession

    trt = fake_tensorrt.install(monkeypatch)
    bundle = Path(export_bundle(ExportConfig(checkpoint=str(tiny_checkpoint), output=str(tmp_path / "v2"),
                                             format_version=2, int8=precision == "int8", int8_samples=64,
                                             int8_eval_samples=32)).bundle_path)
    res = build_engines(bundle, precision, max_batch=4)
    k = res.key["sources"]
    assert sorted(k) == ["h1", "h2", "s1", "s2", "s3"] and [p.name for p in res.engines] == \
        ["s1.engine", "s2.engine", "s3.engine", "h1.engine", "h2.engine"]
    assert not build_engines(bundle, precision, max_batch=4).built  # the cache counts the head engines too
    opts = dict(backend="tensorrt", precision=precision, warmup=1, max_batch=4)
    ref_opts = dict(backend="onnxruntime", precision=precision, warmup=0, engine="python")
    with AnytimeSession(bundle, **opts) as s, AnytimeSession(bundle, **ref_opts) as ref:
        assert s.backend.split_heads
        x = images(s, 4, seed=3)
        for kw in ({}, {"threshold": 0.5}, {"threshold": [None, 0.6]}, {"budget_ms": 60_000.0}):
            ra, rb = s.infer(x, **kw), ref.infer(x, **kw)
            assert [r.exit_index for r in ra] == [r.exit_index for r in rb]
            if precision == "fp32":
                assert [r.label for r in ra] == [r.label for r in rb]
        heads = s.backend._head_contexts
        before = [len(c.runs) for c in heads if c is not None]
        s.infer(x, budget_ms=60_000.0)  # no full graph on TensorRT: the trunks and no intermediate head
        assert [len(c.runs) for c in heads if c is not None] == before
        s.infer(x[:1], budget_ms=1e-6)  # a stop at exit 1: its head runs once
        assert [len(c.runs) for c in heads if c is not None] == [before[0] + 1, before[1]]
    (res.cache_dir / "h2.engine").unlink()  # a head's engine missing: the cache is incomplete
    with pytest.raises(BackendError, match="no complete TensorRT engine cache"):
        AnytimeSession(bundle, **opts)
    assert not trt.log

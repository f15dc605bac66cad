"""``SessionOptions``: one validated record of a session's settings, embedded by every config that opens sessions.

The record is checked once, when made; ``AnytimeSession(bundle, options, **overrides)`` takes it with keyword
overrides (the keyword-only form of the README keeps working); ``ServerConfig``, ``CalibrationConfig`` and
``BenchConfig`` embed it as ``session`` instead of copying its fields, so ``max_batch`` lives in one place.
"""
from __future__ import annotations

import dataclasses

import pytest

from sdedge.common.errors import BackendError, PolicyError
from sdedge.runtime import AnytimeSession, SessionOptions
from sdedge.runtime.backends.base import BackendOptions


@pytest.mark.parametrize("kw,needle", [
    ({"max_batch": 0}, "max_batch must be an integer in 1..4096"), ({"max_batch": True}, "max_batch"),
    ({"warmup": -1}, "warmup must be a non-negative integer"), ({"warmup": 1.5}, "warmup"),
    ({"answer": "vote"}, "answer must be one of last, ensemble"), ({"criterion": "luck"}, "unknown confidence criterion"),
    ({"intra_op_threads": 0}, "intra_op_threads"), ({"providers": "cpu"}, "providers"), ({"backend": 3}, "backend"),
    ({"backend_options": [1]}, "backend_options"), ({"precision": None}, "precision"),
])
def test_bad_options_are_refused_when_made(kw, needle) -> None:
    with pytest.raises(PolicyError, match=needle):
        SessionOptions(**kw)


def test_replace_checks_again_and_names_unknown_options() -> None:
    opts = SessionOptions(backend="onnxruntime", providers=["cpu"], backend_options={"allow_spinning": True})
    assert opts.providers == ("cpu",) and opts.backend_options == {"allow_spinning": True}
    assert opts.replace() is opts and opts.replace(warmup=0).warmup == 0 and opts.warmup == 3
    with pytest.raises(PolicyError, match="max_batch"):
        opts.replace(max_batch=-1)
    with pytest.raises(TypeError, match="unknown session option.*threads"):
        opts.replace(threads=2)
    assert SessionOptions.resolve(None, answer="ensemble") == SessionOptions(answer="ensemble")
    with pytest.raises(TypeError, match="SessionOptions"):
        SessionOptions.resolve({"warmup": 0})  # type: ignore[arg-type]
    assert SessionOptions.split_overrides({"criterion": "margin", "seed": 3}) == ({"criterion": "margin"}, {"seed": 3})
    be = SessionOptions(precision="int8", intra_op_threads=2, max_batch=16, backend_options={"x": 1}).for_backend()
    assert be == BackendOptions(precision="int8", intra_op_threads=2, providers=None, max_batch=16, full_graph=True,
                                extra={"x": 1})
    with pytest.raises(PolicyError, match="full_graph"):
        SessionOptions(full_graph=1)  # type: ignore[arg-type]


def test_session_takes_options_and_keyword_overrides(tiny_bundle) -> None:
    opts = SessionOptions(backend="onnxruntime", intra_op_threads=1, warmup=0, max_batch=4, answer="ensemble")
    with AnytimeSession(tiny_bundle, opts, max_batch=2) as s:
        assert s.options == opts.replace(max_batch=2, precision="fp32")  # "auto" resolved: no engines here
        assert s.backend_info == {"engine": s.engine, "backend": "onnxruntime", "precision": "fp32",
                                  "device": s.device_name}
        assert (s.max_batch, s.answer, s.criterion) == (2, "ensemble", "max_prob")
    with AnytimeSession(tiny_bundle, backend="onnxruntime", intra_op_threads=1, warmup=0, criterion="margin") as s:
        assert s.options == SessionOptions(backend="onnxruntime", intra_op_threads=1, warmup=0, criterion="margin",
                                           precision="fp32")
        assert s.policy().criterion == "margin"
    with pytest.raises(PolicyError, match="max_batch must be an integer in 1..4096"):
        AnytimeSession(tiny_bundle, backend="onnxruntime", max_batch=0)
    with pytest.raises(PolicyError, match="precision must be one of auto, fp32, fp16, int8"):
        SessionOptions(precision="fp8")
    with pytest.raises(BackendError, match="needs TensorRT|none are built; run `sdedge build-engines"):
        AnytimeSession(tiny_bundle, backend="tensorrt", warmup=0)  # auto + tensorrt, no engines: never a fallback
    with pytest.raises(TypeError, match="unknown session option"):
        AnytimeSession(tiny_bundle, backend="onnxruntime", max_batches=8)


def test_configs_embed_the_options_instead_of_copying_them() -> None:
    from sdedge.calibrate.api import CalibrationConfig
    from sdedge.calibrate.bench import BenchConfig
    from sdedge.runtime.server.config import ServerConfig

    copied = SessionOptions.field_names()
    # same name, another setting: the server's default request criterion (None: the session's), as budget_ms and
    # threshold are request defaults; the bench's untimed calls before each measurement
    other = {ServerConfig: {"criterion"}, CalibrationConfig: set(), BenchConfig: {"warmup"}}
    for cls in (ServerConfig, CalibrationConfig, BenchConfig):
        names = {f.name for f in dataclasses.fields(cls)} - other[cls]
        assert "session" in names and not (names & copied), (cls.__name__, names & copied)
        assert isinstance(cls().session, SessionOptions)
    assert BenchConfig().session == SessionOptions(intra_op_threads=1, warmup=5)  # sdedge bench's fixed threads
    cal = CalibrationConfig(session=SessionOptions(intra_op_threads=1), profile_threads=(2, None))
    assert cal.thread_settings() == (1, 2, None)
    with pytest.raises(PolicyError, match="intra_op_threads"):
        CalibrationConfig(profile_threads=(0,)).check()


def test_precision_auto_takes_the_best_engines_built(tiny_bundle, monkeypatch) -> None:
    """Issue 13 item 1: ``build-engines`` builds fp16 by default; ``auto`` must then run them, not fall back."""
    import sdedge.common.hostinfo as hostinfo
    import sdedge.runtime.backends.tensorrt as trt_backend
    from sdedge.runtime.backends import resolve_precision
    from sdedge.runtime.bundle import open_bundle

    b = open_bundle(tiny_bundle)
    built: set[str] = set()
    monkeypatch.setattr(hostinfo, "nvidia_gpus", lambda: ["NVIDIA Jetson Orin Nano"])
    monkeypatch.setattr(trt_backend, "engines_ready", lambda bundle, precision: precision in built)
    assert resolve_precision(b, "auto", "auto") == "fp32"  # a GPU but no engines: ONNX Runtime in fp32
    built.add("fp16")
    assert resolve_precision(b, "auto", "auto") == "fp16"
    assert resolve_precision(b, "tensorrt", "auto") == "fp16"
    built.update({"fp32", "int8"})
    assert resolve_precision(b, "auto", "auto") == "int8"  # int8 > fp16 > fp32
    assert resolve_precision(b, "onnxruntime", "auto") == "fp32"  # ONNX Runtime runs the fp32 sections
    assert resolve_precision(b, "auto", "fp32") == "fp32"  # an explicit precision is kept
    monkeypatch.setattr(hostinfo, "nvidia_gpus", lambda: [])
    assert resolve_precision(b, "auto", "auto") == "fp32"  # no GPU: engines are not looked for

"""sdedge build-engines: the missing-TensorRT error, the engine cache contract, and (where TensorRT
exists) a real build.

TensorRT cannot be installed on the CI machines, so the cache logic (key folder, key.json, reuse,
rebuild on a changed profile, what the runtime's TensorRT backend looks for) runs against a small
recording stand-in for the ``tensorrt`` module that implements only the builder calls the exporter
makes. The real build test at the bottom runs wherever ``tensorrt`` imports, and skips elsewhere.
"""
from __future__ import annotations

import hashlib
import json
import sys
import types
from pathlib import Path

import pytest

from export_helpers import make_checkpoint

pytest.importorskip("torch")
pytest.importorskip("onnx")

from sdedge.export import build_engines, export_bundle, ExportConfig  # noqa: E402
from sdedge.runtime.engine_cache import engine_cache_dir, engine_key, read_key  # noqa: E402
from sdedge.common.errors import BackendError, BundleError, ExportError  # noqa: E402


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("trt")
    ckpt = make_checkpoint(root / "tiny.pt", "tiny", {"width": 8})
    return export_bundle(ExportConfig(checkpoint=str(ckpt), output=str(root / "bundle"), threads=1,
                                      parity_samples=16)).bundle_path


def test_missing_tensorrt_is_a_clear_error(bundle: Path, monkeypatch, capsys) -> None:
    from sdedge.cli import main

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` raise ImportError
    with pytest.raises(BackendError, match=r"needs TensorRT.*install TensorRT 10.*JetPack"):
        build_engines(bundle, "fp16")
    with pytest.raises(BackendError, match="TensorRT is not installed"):
        engine_cache_dir(bundle, "fp16")
    assert main(["build-engines", str(bundle), "--fp16"]) == 2
    err = capsys.readouterr().err
    assert "sdedge build-engines: error:" in err and "pip install tensorrt" in err
    assert not (bundle / "engines").exists()


def test_build_engines_command_runs_without_torch_or_onnx(bundle: Path) -> None:
    """On a Jetson image there may be TensorRT but no PyTorch: the command must not need either."""
    import subprocess

    script = ("import sys\n"
              "for m in ('torch', 'onnx', 'onnxruntime', 'tensorrt'):\n"
              "    sys.modules[m] = None\n"
              "from sdedge.cli import main\n"
              f"sys.exit(main(['build-engines', {str(bundle)!r}, '--fp16']))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "needs TensorRT" in proc.stderr and "torch" not in proc.stderr.replace("PyTorch", "")


def test_engine_key_names_version_gpu_and_precision() -> None:
    key = engine_key("fp16", trt_version="10.3.0.30", gpu="NVIDIA Jetson Orin Nano (R) Developer Kit")
    assert key == "trt10.3.0.30-nvidia-jetson-orin-nano-developer-kit-fp16"
    assert engine_key("int8", trt_version="10.3.0.30", gpu="NVIDIA H100 80GB HBM3") == "trt10.3.0.30-nvidia-h100-80gb-hbm3-int8"
    assert "/" not in engine_key("fp32", trt_version="10/../x", gpu="a/b\\c:d")
    with pytest.raises(BackendError, match="unknown engine precision"):
        engine_key("fp8", trt_version="10.0", gpu="x")


class _FakeTensorRT(types.ModuleType):
    """Records the TensorRT 10 builder calls build_engines makes; the 'engine' is a hash of its inputs."""

    def __init__(self, version: str = "10.3.0.30") -> None:
        super().__init__("tensorrt")
        self.__version__ = version
        self.builds: list[dict] = []
        fake = self

        class Logger:
            WARNING = 2

            def __init__(self, level):
                self.level = level

        class Tensor:
            def __init__(self, name, shape):
                self.name, self.shape = name, shape

        class Network:
            def __init__(self):
                self.inputs = []

            @property
            def num_inputs(self):
                return len(self.inputs)

            def get_input(self, i):
                return self.inputs[i]

        class OnnxParser:
            num_errors = 0

            def __init__(self, network, logger):
                self.network = network

            def parse_from_file(self, path):
                return self.parse(Path(path).read_bytes(), path)

            def parse(self, model, path=None):
                import onnx

                m = onnx.load_from_string(bytes(model))
                for i in m.graph.input:
                    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in i.type.tensor_type.shape.dim]
                    self.network.inputs.append(Tensor(i.name, tuple(dims)))
                self.network.source = bytes(model)
                return True

        class Profile:
            def __init__(self):
                self.shapes = {}

            def set_shape(self, name, lo, opt, hi):
                self.shapes[name] = (lo, opt, hi)

        class Config:
            def __init__(self):
                self.flags, self.profiles, self.pool = set(), [], None

            def set_memory_pool_limit(self, pool, size):
                self.pool = size

            def set_flag(self, flag):
                self.flags.add(flag)

            def add_optimization_profile(self, p):
                self.profiles.append(p)

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                return Network()

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                rec = {"shapes": config.profiles[0].shapes, "flags": sorted(config.flags), "workspace": config.pool}
                fake.builds.append(rec)
                return hashlib.sha256(network.source + repr(rec).encode()).digest()

        self.Logger, self.Builder, self.OnnxParser = Logger, Builder, OnnxParser
        self.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
        self.BuilderFlag = types.SimpleNamespace(FP16="fp16", INT8="int8")


def test_engines_are_cached_by_key_and_rebuilt_when_the_profile_changes(bundle: Path, monkeypatch) -> None:
    from sdedge.runtime.backends.tensorrt import engine_files
    from sdedge.runtime import open_bundle

    trt = _FakeTensorRT()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    res = build_engines(bundle, "fp16", min_batch=1, opt_batch=2, max_batch=8, workspace_mb=64)
    assert res.built and len(trt.builds) == 3
    assert res.cache_dir == engine_cache_dir(bundle, "fp16") and res.cache_dir.parent == bundle / "engines"
    assert res.cache_dir.name.startswith("trt10.3.0.30-") and res.cache_dir.name.endswith("-fp16")
    assert trt.builds[0]["shapes"] == {"image": ((1, 1, 16, 16), (2, 1, 16, 16), (8, 1, 16, 16))}
    assert trt.builds[1]["shapes"] == {"features_1": ((1, 8, 16, 16), (2, 8, 16, 16), (8, 8, 16, 16))}
    assert trt.builds[0]["flags"] == ["fp16"] and trt.builds[0]["workspace"] == 64 << 20
    key = read_key(res.cache_dir)
    assert key["precision"] == "fp16" and key["profile"] == {"min": 1, "opt": 2, "max": 8}
    assert key["sources"]["s1"] == open_bundle(bundle).manifest.sections[0].sha256
    # the runtime's TensorRT backend finds exactly these files
    assert engine_files(open_bundle(bundle), "fp16") == res.engines
    open_bundle(bundle)  # engines are a cache beside the checksummed files: the bundle still verifies

    again = build_engines(bundle, "fp16", min_batch=1, opt_batch=2, max_batch=8)
    assert not again.built and len(trt.builds) == 3 and again.engines == res.engines
    bigger = build_engines(bundle, "fp16", min_batch=1, opt_batch=2, max_batch=32)
    assert bigger.built and len(trt.builds) == 6 and read_key(bigger.cache_dir)["profile"]["max"] == 32
    forced = build_engines(bundle, "fp16", min_batch=1, opt_batch=2, max_batch=32, force=True)
    assert forced.built and len(trt.builds) == 9

    monkeypatch.setitem(sys.modules, "tensorrt", _FakeTensorRT("10.4.0.1"))  # TensorRT upgraded: new key
    newer = build_engines(bundle, "fp16", max_batch=8)
    assert newer.built and newer.cache_dir != res.cache_dir and res.cache_dir.is_dir()
    assert not list((bundle / "engines").glob("*.tmp-*"))


def test_int8_engines_need_int8_sections_and_batches_must_be_ordered(bundle: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", _FakeTensorRT())
    with pytest.raises(BundleError, match="--int8"):
        build_engines(bundle, "int8")
    with pytest.raises(ExportError, match="1 <= min <= opt <= max"):
        build_engines(bundle, "fp16", min_batch=4, opt_batch=2, max_batch=8)
    with pytest.raises(ExportError, match="unknown precision"):
        build_engines(bundle, "fp8")


@pytest.mark.tensorrt
def test_real_tensorrt_engines_load_with_the_bundle_tensor_names(bundle: Path, tmp_path: Path) -> None:
    trt = pytest.importorskip("tensorrt")
    import shutil

    b = tmp_path / "b"
    shutil.copytree(bundle, b)
    res = build_engines(b, "fp16", min_batch=1, opt_batch=1, max_batch=4, workspace_mb=256)
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    for k, path in enumerate(res.engines, start=1):
        engine = runtime.deserialize_cuda_engine(path.read_bytes())
        assert engine is not None
        names = {engine.get_tensor_name(i) for i in range(engine.num_io_tensors)}
        assert ("image" if k == 1 else f"features_{k - 1}") in names and f"logits_{k}" in names
        lo, opt, hi = engine.get_tensor_profile_shape("image" if k == 1 else f"features_{k - 1}", 0)
        assert (lo[0], opt[0], hi[0]) == (1, 1, 4)
    assert json.loads((res.cache_dir / "key.json").read_text())["tensorrt_version"] == trt.__version__

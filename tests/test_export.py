"""sdedge export: per-section ONNX graphs against PyTorch, the manifest, refusals and atomic writes.

Every registered backbone family is exported at a tiny width on the built-in digits (16×16) and its
sections are re-run here, independently of the exporter's own parity check, at batch 1 and batch 5.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from export_helpers import families, make_checkpoint

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

from sdedge.export import ExportConfig, export_bundle  # noqa: E402
from sdedge.runtime import open_bundle  # noqa: E402
from sdedge.common.errors import BundleError, ChecksumError, ExportError, FormatVersionError  # noqa: E402

TOL = 1e-3
REPO = Path(__file__).resolve().parents[1]


def _cfg(ckpt: Path, out: Path, **kw) -> ExportConfig:
    kw.setdefault("threads", 1)
    kw.setdefault("parity_samples", 32)
    return ExportConfig(checkpoint=str(ckpt), output=str(out), **kw)


def _sessions(bundle: Path) -> tuple[list, object]:
    b = open_bundle(bundle)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    secs = [ort.InferenceSession(str(b.section_path(s.index)), so, providers=["CPUExecutionProvider"])
            for s in b.manifest.sections]
    full = ort.InferenceSession(str(b.file("full.onnx")), so, providers=["CPUExecutionProvider"])
    return secs, full


def _chain(secs: list, x: np.ndarray) -> list[np.ndarray]:
    out = []
    f = x
    for k, s in enumerate(secs, start=1):
        res = s.run(None, {s.get_inputs()[0].name: f})
        out.append(res[-1])
        if k < len(secs):
            f = res[0]
    return out


def _unfolded_conv_bn(files: list[Path]) -> list[str]:
    """BatchNormalization nodes fed by a Conv whose output nothing else reads (folding should remove them)."""
    bad = []
    for f in files:
        g = onnx.load(str(f)).graph
        producer = {o: n for n in g.node for o in n.output}
        readers: dict[str, int] = {}
        for n in g.node:
            for i in n.input:
                readers[i] = readers.get(i, 0) + 1
        outputs = {o.name for o in g.output}
        for n in g.node:
            src = n.input[0] if n.input else ""
            if (n.op_type == "BatchNormalization" and getattr(producer.get(src), "op_type", "") == "Conv"
                    and readers.get(src) == 1 and src not in outputs):
                bad.append(f"{f.name}:{n.name}")
    return bad


@pytest.fixture(scope="module")
def digits():
    from sdedge.data import load_splits

    return load_splits("digits")


def _images(digits, n: int, model, size: tuple[int, int]) -> np.ndarray:
    from sdedge.export.samples import preprocess

    imgs = digits.val.images[:n]
    if size != digits.image_size:  # families that need a larger input: the same digits, upsampled
        f = size[0] // digits.image_size[0]
        imgs = imgs.repeat(f, axis=1).repeat(f, axis=2)
    return preprocess(np.ascontiguousarray(imgs), digits.preprocess_json())


def _input_size(name: str, digits) -> tuple[int, int]:
    """16×16 digits where the family can take them, else 32×32 (e.g. five stride-2 stages)."""
    from export_helpers import tiny_kwargs
    from sdedge.models import ModelConfig, build_model

    for size in (digits.image_size, (32, 32)):
        m = build_model(ModelConfig(name, 10, 1, size, backbone_kwargs=tiny_kwargs(name))).eval()
        try:
            with torch.no_grad():
                m(torch.zeros(1, 1, *size))
            return size
        except RuntimeError:
            continue
    pytest.fail(f"backbone {name} runs neither at 16x16 nor at 32x32")


@pytest.mark.parametrize("backbone", families())
def test_family_sections_match_pytorch(backbone: str, digits, tmp_path: Path) -> None:
    from sdedge.checkpoint import model_from_checkpoint

    size = _input_size(backbone, digits)
    ckpt = make_checkpoint(tmp_path / "m.pt", backbone, image_size=size, splits=digits)
    model = model_from_checkpoint(ckpt)
    samples = None if size == digits.image_size else _images(digits, 32, model, size)
    res = export_bundle(_cfg(ckpt, tmp_path / "b", samples=samples))
    man = res.manifest
    k = model.num_exits
    assert [r.index for r in res.parity] == list(range(1, k + 1))
    assert all(r.max_abs_diff <= TOL for r in res.parity)
    bundle_files = [res.bundle_path / spec["file"] for spec in man["sections"]]
    assert _unfolded_conv_bn(bundle_files) == [], "every BatchNorm that follows a Conv must be folded into it"
    if backbone in ("tiny", "resnet18", "vgg11_bn", "mobilenetv2", "resnext29_16x64d"):  # post-activation nets
        assert man["export"]["batchnorm_remaining"] == 0

    secs, full = _sessions(res.bundle_path)
    for s, spec in zip(secs, man["sections"]):  # names and the dynamic batch as the contract says
        assert [i.name for i in s.get_inputs()] == [spec["inputs"][0]["name"]]
        assert [o.name for o in s.get_outputs()] == [o["name"] for o in spec["outputs"]]
        assert isinstance(s.get_inputs()[0].shape[0], str)
    for n in (1, 5):
        x = _images(digits, n, model, size)
        with torch.no_grad():
            ref = [lg.numpy() for lg in model(torch.from_numpy(x)).logits]
        got = _chain(secs, x)
        for e, (a, b) in enumerate(zip(ref, got), start=1):
            assert b.shape == (n, 10)
            assert np.abs(a - b).max() <= TOL, f"{backbone} exit {e} batch {n}: {np.abs(a - b).max()}"
        whole = full.run(None, {"image": x})[0]
        assert np.abs(whole - got[-1]).max() <= 1e-5, "chained sections must equal full.onnx"


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", "tiny", {"width": 8})


@pytest.fixture(scope="module")
def tiny_export(tiny_ckpt, tmp_path_factory):
    return export_bundle(_cfg(tiny_ckpt, tmp_path_factory.mktemp("exp") / "bundle"))


def test_manifest_describes_the_bundle(tiny_export, tiny_ckpt) -> None:
    from sdedge.common.digest import sha256_file

    man = tiny_export.manifest
    b = open_bundle(tiny_export.bundle_path)
    assert b.manifest.input.shape == (None, 1, 16, 16) and b.manifest.num_exits == 3
    assert man["input"]["layout"] == "NCHW" and man["input"]["preprocess"]["channel_order"] == "L"
    assert man["model"]["backbone"] == "tiny" and man["model"]["method"] == "dsn"
    assert man["model"]["source_checkpoint"]["sha256"] == sha256_file(tiny_ckpt)
    assert man["model"]["training"]["epoch"] == 0
    assert set(man["versions"]) >= {"torch", "onnx", "onnxruntime", "sdedge"}
    assert [e["index"] for e in man["parity"]["exits"]] == [1, 2, 3]
    assert "validation" in man["parity"]["inputs"]  # real images, not random ones
    assert man["files"]["full.onnx"]["sha256"] == sha256_file(tiny_export.bundle_path / "full.onnx")
    assert man["full"]["macs"] < sum(s["macs"] for s in man["sections"])  # full skips heads 1..K-1
    for s in man["sections"]:
        assert sha256_file(tiny_export.bundle_path / s["file"]) == s["sha256"]
        assert s["macs"] > 0 and s["params"] > 0
    table = tiny_export.parity_table()
    assert "max |Δlogit|" in table and "full.onnx" in table
    for p in tiny_export.bundle_path.rglob("*.onnx"):  # one file per graph, no external data
        m = onnx.load(str(p), load_external_data=False)
        assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in m.graph.initializer)
        onnx.checker.check_model(m, full_check=True)
        assert not any(n.metadata_props for n in m.graph.node)  # no exporter stack traces shipped
    assert not list(tiny_export.bundle_path.parent.glob("bundle.tmp-*"))


def test_macs_match_a_hand_count(tiny_export) -> None:
    # tiny(width 8) on 1x16x16, section 1: conv 1->8 3x3, conv 8->8 3x3 at 16x16; bottleneck head to stride 4:
    # 1x1 8->8 at 16x16, 3x3/2 8->8 -> 8x8, 3x3/2 8->8 -> 4x4, 1x1 8->32 at 4x4; fc 32->10
    hw = 16 * 16
    convs = [hw * 8 * 1 * 9, hw * 8 * 8 * 9, hw * 8 * 8, 8 * 8 * 8 * 8 * 9, 4 * 4 * 8 * 8 * 9, 4 * 4 * 32 * 8]
    macs = sum(convs) + 32 * 10
    assert tiny_export.manifest["sections"][0]["macs"] == macs == 232_768
    # params after BN folding: conv weights + one bias per output channel (the folded BN), fc weight + bias
    weights = [8 * 1 * 9, 8 * 8 * 9, 8 * 8, 8 * 8 * 9, 8 * 8 * 9, 32 * 8]
    biases = [8, 8, 8, 8, 8, 32]
    assert tiny_export.manifest["sections"][0]["params"] == sum(weights) + sum(biases) + 32 * 10 + 10


def test_macs_counts_gemm_matmul_and_grouped_conv(tmp_path: Path) -> None:
    from onnx import TensorProto, helper, numpy_helper

    from sdedge.export.macs import count

    w = numpy_helper.from_array(np.zeros((16, 2, 3, 3), np.float32), "w")  # groups=4, 8 -> 16 channels
    fc = numpy_helper.from_array(np.zeros((10, 16), np.float32), "fc")
    mm = numpy_helper.from_array(np.zeros((10, 5), np.float32), "mm")
    shape = numpy_helper.from_array(np.array([-1, 16], np.int64), "shape")
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], group=4, pads=[1, 1, 1, 1], strides=[2, 2]),
         helper.make_node("GlobalAveragePool", ["c"], ["p"]),
         helper.make_node("Reshape", ["p", "shape"], ["r"]),
         helper.make_node("Gemm", ["r", "fc"], ["y"], transB=1),
         helper.make_node("MatMul", ["y", "mm"], ["z"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8, 10, 10])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 5])], [w, fc, mm, shape])
    cost = count(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]))
    assert cost.by_op == {"Conv": 5 * 5 * 16 * 2 * 9, "Gemm": 16 * 10, "MatMul": 10 * 5}
    assert cost.params == 16 * 2 * 9 + 160 + 50  # the int64 shape constant is not a parameter


def _copy(bundle: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(bundle, dst)
    return dst


def test_tampered_section_is_refused(tiny_export, tmp_path: Path) -> None:
    b = _copy(tiny_export.bundle_path, tmp_path)
    p = b / "sections" / "s2.onnx"
    data = bytearray(p.read_bytes())
    data[-5] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="sections/s2.onnx"):
        open_bundle(b)


def test_missing_file_is_refused(tiny_export, tmp_path: Path) -> None:
    b = _copy(tiny_export.bundle_path, tmp_path)
    (b / "full.onnx").unlink()
    with pytest.raises(BundleError, match="full.onnx.*missing"):
        open_bundle(b)


def test_wrong_format_version_is_refused(tiny_export, tmp_path: Path) -> None:
    b = _copy(tiny_export.bundle_path, tmp_path)
    m = json.loads((b / "manifest.json").read_text())
    m["format_version"] = 3
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(FormatVersionError, match="format_version 3"):
        open_bundle(b)


def test_existing_output_needs_force_and_force_swaps(tiny_ckpt, tiny_export, tmp_path: Path, capsys) -> None:
    from sdedge.cli import main

    out = _copy(tiny_export.bundle_path, tmp_path)
    before = (out / "manifest.json").read_bytes()
    assert main(["export", str(tiny_ckpt), "-o", str(out), "-q"]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--force" in err
    assert (out / "manifest.json").read_bytes() == before
    assert main(["export", str(tiny_ckpt), "-o", str(out), "--force", "--name", "renamed", "--threads", "1",
                 "--parity-samples", "16", "-q"]) == 0
    printed = capsys.readouterr().out
    assert "max |Δlogit|" in printed and "bundle" in printed
    assert open_bundle(out).manifest.model["name"] == "renamed"
    assert not list(tmp_path.glob("copy.tmp-*")) and not list(tmp_path.glob("copy.old-*"))


def test_force_refuses_to_replace_a_folder_that_is_not_a_bundle(tiny_ckpt, tmp_path: Path) -> None:
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(ExportError, match="not an sdedge bundle"):
        export_bundle(_cfg(tiny_ckpt, out, force=True))
    assert (out / "holiday.jpg").exists()


def test_failure_midway_keeps_the_old_bundle(tiny_ckpt, tiny_export, tmp_path: Path, monkeypatch) -> None:
    import sdedge.export.api as api

    out = _copy(tiny_export.bundle_path, tmp_path)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def boom(*a, **k):
        raise RuntimeError("simulated crash after the manifest was written")

    monkeypatch.setattr(api, "_probe", boom)
    with pytest.raises(RuntimeError, match="simulated crash"):
        export_bundle(_cfg(tiny_ckpt, out, force=True))
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert not list(tmp_path.glob("copy.tmp-*"))


def test_parity_failure_names_the_exit_and_writes_nothing(tiny_ckpt, tmp_path: Path, monkeypatch) -> None:
    import sdedge.export.parity as parity

    real = parity.torch_logits

    def off_by_a_bit(model, x, batch=256):
        out = real(model, x, batch)
        out[1] = out[1] + 0.01  # exit 2 drifts past the tolerance
        return out

    monkeypatch.setattr(parity, "torch_logits", off_by_a_bit)
    with pytest.raises(ExportError, match=r"exit 2 differs from PyTorch by 1\.0\d*e-02"):
        export_bundle(_cfg(tiny_ckpt, tmp_path / "b"))
    assert not (tmp_path / "b").exists() and not list(tmp_path.glob("b.tmp-*"))


def test_probe_refuses_sections_that_disagree_with_full(tiny_ckpt, tmp_path: Path, monkeypatch) -> None:
    import sdedge.export.onnx_sections as osec
    from onnx import numpy_helper

    real = osec.export_graphs

    def skewed(*a, **k):
        g = real(*a, **k)
        gemm = next(n for n in g.full.graph.node if n.op_type == "Gemm")
        init = next(i for i in g.full.graph.initializer if i.name == gemm.input[2])
        bias = numpy_helper.to_array(init).copy()
        bias[0] += 5.0
        init.CopyFrom(numpy_helper.from_array(bias, init.name))
        return g

    monkeypatch.setattr(osec, "export_graphs", skewed)
    with pytest.raises(ExportError, match="bundle refused: the chained sections disagree with full.onnx"):
        export_bundle(_cfg(tiny_ckpt, tmp_path / "b", parity=False))
    assert not (tmp_path / "b").exists()


def test_killed_export_leaves_old_bundle_and_is_cleaned_up(tiny_ckpt, tiny_export, tmp_path: Path) -> None:
    out = _copy(tiny_export.bundle_path, tmp_path)
    before = (out / "manifest.json").read_bytes()
    ready = tmp_path / "ready"
    script = f"""
import time, torch
torch.set_num_threads(1)
import sdedge.export.parity as parity
def hang(*a, **k):
    open({str(ready)!r}, "w").close()
    time.sleep(120)
parity.torch_logits = hang
from sdedge.export import ExportConfig, export_bundle
export_bundle(ExportConfig(checkpoint={str(tiny_ckpt)!r}, output={str(out)!r}, force=True, threads=1))
"""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            if proc.poll() is not None:
                pytest.fail(f"export subprocess ended early: {proc.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail("export subprocess never reached the parity step")
            time.sleep(0.1)
        staged = list(tmp_path.glob("copy.tmp-*"))
        assert len(staged) == 1 and (staged[0] / "sections" / "s1.onnx").is_file()  # killed midway
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stderr.close()
    assert (out / "manifest.json").read_bytes() == before
    open_bundle(out)  # the old bundle still verifies
    messages: list[str] = []
    export_bundle(_cfg(tiny_ckpt, out, force=True, progress=messages.append))
    assert any("left by an export that was killed" in m for m in messages)
    assert not list(tmp_path.glob("copy.tmp-*"))


def test_bad_options_are_refused_before_any_work(tiny_ckpt, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="opset 13"):
        export_bundle(_cfg(tiny_ckpt, tmp_path / "b", opset=13))
    with pytest.raises(ExportError, match="tolerance must be positive"):
        export_bundle(_cfg(tiny_ckpt, tmp_path / "b", parity_tolerance=0))
    assert not (tmp_path / "b").exists()


def test_the_manifest_carries_the_checkpoint_data_spec_verbatim(tiny_export, tiny_ckpt) -> None:
    from sdedge.checkpoint import load_checkpoint
    from sdedge.common.datasets import DataSpec
    from sdedge.data import checkpoint_data_spec

    meta = load_checkpoint(tiny_ckpt).meta  # a hand-written record: dataset and geometry, no hold-out fields
    spec = checkpoint_data_spec(meta)
    assert spec == DataSpec("digits", None, 0, None, (16, 16), 1)
    model = tiny_export.manifest["model"]
    assert model["data"] == spec.to_json() and model["dataset"] == "digits"
    assert DataSpec.from_json(open_bundle(tiny_export.bundle_path).manifest.model["data"]) == spec


def test_a_bad_data_spec_is_refused_before_any_work(tiny_ckpt, tmp_path: Path) -> None:
    from sdedge.checkpoint import load_checkpoint, save_checkpoint

    c = load_checkpoint(tiny_ckpt)
    bad = save_checkpoint(tmp_path / "bad.pt", dict(c.meta, data=dict(c.meta["data"], val_size=-5)), c.state_dict)
    with pytest.raises(ExportError, match=r"bad.pt: its data record is not usable: .*val_size must be an integer >= 0"):
        export_bundle(_cfg(bad, tmp_path / "b"))
    assert not (tmp_path / "b").exists()

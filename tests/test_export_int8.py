"""sdedge export --int8: QDQ sections laid out for ONNX Runtime's integer CPU kernels (uint8 activations,
int8 per-channel weights, ReLU folded), which ``tensorrt_qdq`` turns into the symmetric int8 graph TensorRT's
explicit quantization reads. No timing here: ``benchmarks/int8_bench.py`` measures the speed.

Uses a trained model (the conftest ``tiny_checkpoint`` once ``sdedge.train`` exists, a few quick epochs
on the built-in digits until then): agreement between INT8 and FP32 is only meaningful on a model that
has learned something.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from export_helpers import trained_checkpoint

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("torch")

from onnx import numpy_helper  # noqa: E402

from sdedge.export import ExportConfig, export_bundle  # noqa: E402
from sdedge.runtime import open_bundle  # noqa: E402
from sdedge.common.errors import ExportError  # noqa: E402

# Measured on the tiny checkpoint's config, seeds 0-3 with 1 thread and 0-2 with 2 threads: top-1
# agreement 0.925-1.0 per exit (the weak exit 1 of seed 0, this test's own model, is the lowest: its
# margins are small), accuracy change -0.02..+0.02, INT8 logit error 1.7-3.3 % of the FP32 logits' spread.
# A broken quantization (wrong scale, zero point or channel order) lands near chance agreement and an error
# of the order of the logits themselves (100 %), so the bounds sit well below what is measured.
AGREEMENT_FLOOR = 0.8  # INT8 and FP32 pick the same class on at least 80 % of validation images, per exit
MAX_ACCURACY_DROP = 0.05
MAX_RELATIVE_LOGIT_ERROR = 0.10  # RMS(INT8 - FP32 logits) / RMS(FP32 logits about their per-image mean)


@pytest.fixture(scope="module")
def ckpt(request, tmp_path_factory) -> Path:
    return trained_checkpoint(request, tmp_path_factory)


@pytest.fixture(scope="module")
def int8_export(ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "bundle"
    return export_bundle(ExportConfig(checkpoint=str(ckpt), output=str(out), int8=True, int8_samples=256,
                                      threads=1, parity_samples=32))


def test_int8_sections_are_listed_and_checksummed(int8_export) -> None:
    b = open_bundle(int8_export.bundle_path)
    for s in b.manifest.sections:
        assert s.int8_file == f"int8/s{s.index}.onnx"
        assert s.int8_file in b.manifest.files
        assert b.section_path(s.index, "int8").is_file()
    assert int8_export.sizes["int8"] < int8_export.sizes["sections"]  # int8 weights are ~4x smaller
    q = b.manifest.raw["int8"]
    assert q["calibration"]["samples"] == 256 and q["calibration"]["split"] == "train"
    assert q["evaluation"]["split"] == "val" and q["quantization"]["format"] == "QDQ"
    assert q["quantization"]["target"] == "onnxruntime" and q["quantization"]["calibration_method"] == "minmax"


def test_every_file_of_a_real_int8_export_is_checksummed(int8_export, tmp_path: Path) -> None:
    from bundle_tamper import assert_tamper_refused, bundle_files

    rels = bundle_files(Path(int8_export.bundle_path))
    assert {r.split("/")[0] for r in rels} == {"sections", "int8", "full.onnx"}
    for rel in rels:  # one altered bit in any graph (FP32 section, INT8 section, full) refuses the bundle
        assert_tamper_refused(Path(int8_export.bundle_path), rel, tmp_path)


def test_int8_agrees_with_fp32_on_real_images(int8_export) -> None:
    rows = int8_export.int8
    assert rows is not None and len(rows) == open_bundle(int8_export.bundle_path).manifest.num_exits
    print("\n" + int8_export.int8_table())
    for r in rows:
        assert r.top1_agreement >= AGREEMENT_FLOOR, f"exit {r.index}: INT8 agrees with FP32 on {r.top1_agreement:.1%}"
        assert r.int8_accuracy >= r.fp32_accuracy - MAX_ACCURACY_DROP
    assert max(r.fp32_accuracy for r in rows) > 0.5, "the test model should have learned the digits"
    exits = int8_export.manifest["exits"]
    assert [e["int8_val_accuracy"] for e in exits] == [r.int8_accuracy for r in rows]
    assert [e["int8_top1_agreement"] for e in exits] == [r.top1_agreement for r in rows]
    assert "top-1 agree" in int8_export.int8_table()


def test_int8_runs_through_the_runtime_and_matches_its_own_report(int8_export) -> None:
    from sdedge.data import load_splits
    from sdedge.runtime.backends import BackendOptions, create_backend

    b = open_bundle(int8_export.bundle_path)
    splits = load_splits("digits")
    x = splits.val.images
    preds = {}
    for precision in ("fp32", "int8"):
        with create_backend(b, "onnxruntime", BackendOptions(precision=precision, intra_op_threads=1,
                                                             max_batch=len(x))) as be:
            from sdedge.runtime.preprocess import Preprocessor

            chain = be.run_chain(Preprocessor(b.manifest, len(x))(x).batch)
            preds[precision] = [np.array(logits, dtype=np.float64) for logits in chain]
    for k, row in enumerate(int8_export.int8):
        fp32, int8 = preds["fp32"][k], preds["int8"][k]
        agree = float(np.mean(fp32.argmax(1) == int8.argmax(1)))
        assert agree == pytest.approx(row.top1_agreement, abs=1e-9)
        # the logits themselves stay close: a continuous measure over every image and class, steadier
        # than the top-1 agreement of a weak exit, and far from the ~100 % of a broken quantization
        spread = np.sqrt(np.mean((fp32 - fp32.mean(1, keepdims=True)) ** 2))
        err = np.sqrt(np.mean((int8 - fp32) ** 2)) / spread
        assert err <= MAX_RELATIVE_LOGIT_ERROR, f"exit {k + 1}: INT8 logits are off by {err:.1%} of the FP32 spread"


def _fp32_and_int8(b, index: int) -> tuple:
    return onnx.load(str(b.section_path(index))), onnx.load(str(b.section_path(index, "int8")))


def _weight_dq(m) -> dict:
    """Conv/Gemm weight name -> its DequantizeLinear node, for the float ops fed by a quantized weight."""
    by_out = {n.output[0]: n for n in m.graph.node if n.op_type == "DequantizeLinear"}
    return {n.name: by_out[n.input[1]] for n in m.graph.node
            if n.op_type in ("Conv", "Gemm") and len(n.input) > 1 and n.input[1] in by_out}


def test_onnxruntime_runs_every_quantized_conv_as_an_integer_kernel(int8_export) -> None:
    """The default layout exists for this: after ONNX Runtime's optimisations no quantized Conv is left in
    float (the old symmetric layout left the Convs behind a shared QuantizeLinear in float, with weights it
    could not pre-pack), no ReLU or float Add sits between integer kernels, and only the image stem's
    Conv (fewer than 8 input channels) runs in float, as configured."""
    from sdedge.export.quantize import FLOAT_CONV_MAX_IN_CHANNELS, float_convs, optimized_graph

    b = open_bundle(int8_export.bundle_path)
    stems = 0
    for s in b.manifest.sections:
        fp32, int8 = _fp32_and_int8(b, s.index)
        n_conv = sum(n.op_type == "Conv" for n in fp32.graph.node)
        expected_float = float_convs(fp32)
        stems += len(expected_float)
        g = optimized_graph(b.section_path(s.index, "int8"))
        print(f"\nsection {s.index}: {g.ops}")
        assert len(g.float_convs) == len(expected_float), (
            f"section {s.index}: float Convs left after ONNX Runtime's optimisations: {g.float_convs}")
        assert g.ops.get("QLinearConv", 0) + g.ops.get("ConvInteger", 0) == n_conv - len(expected_float)
        assert g.ops.get("QLinearAdd", 0) == sum(n.op_type == "Add" for n in fp32.graph.node)
        assert g.ops.get("QGemm", 0) == sum(n.op_type == "Gemm" for n in fp32.graph.node)
        for op in ("Relu", "Add", "Gemm", "Clip"):
            assert op not in g.ops, f"section {s.index}: a float {op} is left between integer kernels: {g.ops}"
        # the stem stays float: its Conv is not fed by a quantized weight in the file either
        weights = {i.name: i for i in int8.graph.initializer}
        for n in int8.graph.node:
            if n.op_type == "Conv" and n.name in expected_float:
                assert n.input[1] in weights and weights[n.input[1]].data_type == onnx.TensorProto.FLOAT
        assert FLOAT_CONV_MAX_IN_CHANNELS == 8
    assert stems == 1, "the test model has one image stem (1 input channel): the only float Conv"


def test_int8_activations_are_uint8_and_weights_int8_symmetric_per_channel(int8_export) -> None:
    b = open_bundle(int8_export.bundle_path)
    q = b.manifest.raw["int8"]["quantization"]
    assert (q["target"], q["activations"], q["weights"]) == ("onnxruntime", "uint8 asymmetric",
                                                             "int8 symmetric per-channel")
    for s in b.manifest.sections:
        _, m = _fp32_and_int8(b, s.index)
        inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
        weight_dqs = _weight_dq(m)
        assert weight_dqs, f"section {s.index} has no quantized weight"
        for dq in weight_dqs.values():
            w, scale, zp = (inits[i] for i in dq.input[:3])
            assert w.dtype == np.int8 and zp.dtype == np.int8 and not zp.any(), "weights: int8, zero point 0"
            if w.ndim == 4:  # Conv: one scale per output channel
                assert scale.ndim == 1 and scale.size == w.shape[0], "Conv weights are quantized per channel"
        acts = [n for n in m.graph.node if n.op_type == "QuantizeLinear"]
        assert acts and all(inits[n.input[2]].dtype == np.uint8 and inits[n.input[2]].size == 1 for n in acts)
        # biases int32 (folded into the integer kernels by every ONNX Runtime since 1.17), scale = input x weight
        biases = [n for n in m.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
                  and inits[n.input[0]].dtype == np.int32]
        assert biases and all(not inits[n.input[2]].any() for n in biases if len(n.input) > 2)
        assert [i.name for i in m.graph.input] == [inp.name for inp in onnx.load(str(b.section_path(s.index))).graph.input]


def test_exit_logits_leave_int8_sections_in_float(int8_export) -> None:
    """No QuantizeLinear/DequantizeLinear pair in front of a ``logits_k`` output: rounded to 256 levels, the
    logits tie and flip the argmax (2.1 pp at the deepest exit of the full-width model). The head still runs
    as an integer QGemm, with a float output."""
    from sdedge.export.quantize import optimized_graph

    b = open_bundle(int8_export.bundle_path)
    for s in b.manifest.sections:
        path = b.section_path(s.index, "int8")
        m = onnx.load(str(path))
        producer = {o: n for n in m.graph.node for o in n.output}
        logits = [o.name for o in m.graph.output if o.name.startswith("logits_")]
        assert logits, f"section {s.index} has no logits output"
        for name in logits:
            assert producer[name].op_type not in ("QuantizeLinear", "DequantizeLinear"), (s.index, name)
        assert "QGemm" in optimized_graph(path).ops, f"section {s.index}: the exit head is no longer integer"
        x = np.random.default_rng(0).standard_normal((64, *s.input.shape[1:])).astype(np.float32)
        out = _run(path, x)[[o.name for o in m.graph.output].index(logits[-1])]
        assert np.unique(out).size > 256, "the logits are still on a 256-level grid"


def test_float_nodes_and_quantized_logits_on_request(section_inputs, tmp_path: Path) -> None:
    """``float_nodes`` leaves the named nodes in float; ``float_logits=False`` gives back the QDQ pair on the
    logits (the layout before, for comparisons: ``benchmarks/int8_layer_sensitivity.py``)."""
    from sdedge.export.quantize import QuantizeSettings, quantize_section

    b, inputs, _ = section_inputs
    s = b.manifest.sections[-1]
    src = onnx.load(str(b.section_path(s.index)))
    conv = next(n.name for n in src.graph.node if n.op_type == "Conv" and n.name)
    dst = tmp_path / "q.onnx"
    settings = QuantizeSettings(float_nodes=(conv,), float_logits=False)
    quantize_section(b.section_path(s.index), dst, s.input.name, inputs[-1][:64], settings)
    m = onnx.load(str(dst))
    dq_out = {n.output[0] for n in m.graph.node if n.op_type == "DequantizeLinear"}
    node = next(n for n in m.graph.node if n.name == conv)
    assert node.input[1] not in dq_out, "the named Conv kept a quantized weight"
    producer = {o: n for n in m.graph.node for o in n.output}
    assert producer[s.file_outputs[-1].name].op_type == "DequantizeLinear", "float_logits=False: the pair is back"
    assert settings.to_json()["logits"] == "quantized to the activation type" and conv in settings.to_json()["float_ops"]


@pytest.fixture(scope="module")
def section_inputs(int8_export):
    """Each section's real inputs (FP32 chain on the validation images) and the FP32 logits per exit."""
    from sdedge.data import load_splits
    from sdedge.export.parity import chain_logits, ort_session
    from sdedge.runtime.preprocess import Preprocessor

    b = open_bundle(int8_export.bundle_path)
    x = Preprocessor(b.manifest, 4096)(load_splits("digits").val.images).batch
    sessions = [ort_session(b.section_path(s.index), 1) for s in b.manifest.sections]
    logits, inputs = chain_logits(sessions, np.asarray(x, np.float32), collect_inputs=True)
    return b, inputs, logits


def _run(path, x: np.ndarray, optimize: bool = True) -> list:
    """``optimize=False``: a QDQ graph run as the ONNX spec defines it (no integer kernels, so no dependence on
    the CPU's instructions: on x86 without VNNI, MLAS's u8 x s8 kernels saturate int16 pair sums, which
    symmetric int8 activations hit)."""
    from sdedge.export.parity import ort_session

    s = ort_session(path, 1, optimize=optimize)
    return s.run(None, {s.get_inputs()[0].name: x})


def _close_to(reference: np.ndarray, got: np.ndarray, where: str) -> None:
    agree = float(np.mean(reference.argmax(1) == got.argmax(1)))
    spread = np.sqrt(np.mean((reference - reference.mean(1, keepdims=True)) ** 2))
    err = float(np.sqrt(np.mean((got - reference) ** 2)) / spread)
    assert agree >= AGREEMENT_FLOOR, f"{where}: top-1 agreement {agree:.1%}"
    assert err <= MAX_RELATIVE_LOGIT_ERROR, f"{where}: logits off by {err:.1%} of the FP32 spread"


def test_tensorrt_conversion_is_symmetric_int8_and_computes_the_same(section_inputs, tmp_path: Path) -> None:
    """TensorRT's explicit quantization takes int8 with zero point 0 only: tensorrt_qdq rewrites the uint8
    pairs onto the symmetric grid covering the same range and puts a ReLU back before each uint8
    QuantizeLinear with zero point 0 (the clamp the quantizer folded a ReLU into)."""
    from sdedge.export.quantize import tensorrt_qdq, tensorrt_qdq_bytes

    b, inputs, _ = section_inputs
    for s in b.manifest.sections:
        src = b.section_path(s.index, "int8")
        u8 = onnx.load(str(src))
        m = tensorrt_qdq(u8)
        inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
        for n in m.graph.node:
            if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2:
                zp = inits[n.input[2]]
                assert zp.dtype == np.int8 and not zp.any(), "TensorRT needs symmetric int8 (zero point 0)"
            if n.op_type == "DequantizeLinear" and n.input[0] in inits:
                assert inits[n.input[0]].dtype == np.int8, "no int32 bias DequantizeLinear (TensorRT rejects it)"
        assert not any(a.dtype == np.uint8 for a in inits.values())
        producer = {o: n for n in m.graph.node for o in n.output}
        u8_inits = {i.name: numpy_helper.to_array(i) for i in u8.graph.initializer}
        zero_zp = sum(1 for n in u8.graph.node if n.op_type == "QuantizeLinear" and not u8_inits[n.input[2]].any())
        relu_fed = sum(1 for n in m.graph.node if n.op_type == "QuantizeLinear" and n.input[0] in producer
                       and producer[n.input[0]].op_type == "Relu")
        assert relu_fed >= zero_zp > 0
        assert [i.name for i in m.graph.input] == [i.name for i in u8.graph.input]
        assert [o.name for o in m.graph.output] == [o.name for o in u8.graph.output]
        assert onnx.load_from_string(tensorrt_qdq_bytes(src)).graph.node[0].op_type == m.graph.node[0].op_type
        onnx.save(m, str(tmp_path / f"s{s.index}.onnx"))
        x = inputs[s.index - 1]
        # TensorRT executes QDQ graphs with these semantics (it has no u8 x s8 pair saturation to mimic)
        ref, got = _run(src, x, optimize=False)[-1], _run(tmp_path / f"s{s.index}.onnx", x, optimize=False)[-1]
        _close_to(ref, got, f"section {s.index} converted to symmetric int8")
        again = tensorrt_qdq(m)  # already symmetric: nothing to change
        assert again.graph.SerializeToString() == m.graph.SerializeToString()


def _activation_scales(path) -> dict:
    m = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    return {n.input[0]: float(inits[n.input[1]]) for n in m.graph.node if n.op_type == "QuantizeLinear"}


@pytest.mark.parametrize("method", ["percentile", "entropy"])
def test_other_calibration_methods_agree_with_fp32(section_inputs, tmp_path: Path, method: str) -> None:
    """Each method is really used (its ranges differ from MinMax's: ONNX Runtime's own Entropy defaults
    give MinMax's ranges back) and still agrees with FP32. 200 calibration rows: not a multiple of the
    calibration batch (32), which the histogram methods cannot take unless the batches are equal."""
    from sdedge.export.quantize import QuantizeSettings, quantize_section

    b, inputs, logits = section_inputs
    s = b.manifest.sections[-1]
    for m in (method, "minmax"):
        quantize_section(b.section_path(s.index), tmp_path / f"{m}.onnx", s.input.name, inputs[-1][:200],
                         QuantizeSettings(method=m))
    ours, minmax = _activation_scales(tmp_path / f"{method}.onnx"), _activation_scales(tmp_path / "minmax.onnx")
    assert ours.keys() == minmax.keys()
    assert any(abs(ours[k] - minmax[k]) > 1e-6 * minmax[k] for k in ours), f"{method} gave MinMax's ranges"
    _close_to(logits[-1], _run(tmp_path / f"{method}.onnx", inputs[-1])[-1], f"{method} calibration, section {s.index}")


def test_tensorrt_target_and_per_tensor_weights(section_inputs, tmp_path: Path) -> None:
    from sdedge.export.quantize import QuantizeSettings, optimized_graph, quantize_section

    b, inputs, logits = section_inputs
    s = b.manifest.sections[0]
    dst = tmp_path / "trt.onnx"
    settings = QuantizeSettings(target="tensorrt", per_channel=False)
    quantize_section(b.section_path(s.index), dst, s.input.name, inputs[0][:256], settings)
    m = onnx.load(str(dst))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    for n in m.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            assert inits[n.input[2]].dtype == np.int8 and not inits[n.input[2]].any()
    for dq in _weight_dq(m).values():
        assert inits[dq.input[1]].size == 1, "per_channel=False: one scale per weight tensor"
    # the TensorRT layout quantizes every Conv, the stem too, and keeps each ReLU as a float op
    assert all(n.input[1] in {d.output[0] for d in m.graph.node if d.op_type == "DequantizeLinear"}
               for n in m.graph.node if n.op_type == "Conv")
    assert "Relu" in optimized_graph(dst).ops
    assert settings.to_json()["activations"] == "int8 symmetric"
    # computed as TensorRT would (the spec's QDQ semantics), not by MLAS's CPU-dependent integer kernels
    _close_to(logits[0], _run(dst, inputs[0], optimize=False)[-1], "tensorrt layout, section 1")


def test_bad_quantization_settings_are_refused(section_inputs, tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    from sdedge.export.quantize import QuantizeSettings, quantize_section, tensorrt_qdq

    b, inputs, _ = section_inputs
    s = b.manifest.sections[0]
    args = (b.section_path(s.index), tmp_path / "q.onnx", s.input.name, inputs[0][:8])
    with pytest.raises(ExportError, match="unknown INT8 target 'cuda'; expected one of onnxruntime, tensorrt"):
        quantize_section(*args, QuantizeSettings(target="cuda"))
    with pytest.raises(ExportError, match="unknown calibration method 'mse'"):
        quantize_section(*args, QuantizeSettings(method="mse"))
    with pytest.raises(ExportError, match="calibration batch must be a positive integer"):
        quantize_section(*args, QuantizeSettings(batch=0))
    with pytest.raises(ExportError, match="INT8 calibration needs at least one image"):
        quantize_section(*args[:3], inputs[0][:0])
    with pytest.raises(ExportError, match="float_nodes names no node of s1.onnx: no_such_conv"):
        quantize_section(*args, QuantizeSettings(float_nodes=("no_such_conv",)))
    with pytest.raises(ExportError, match="float_nodes must be a sequence of node names"):
        quantize_section(*args, QuantizeSettings(float_nodes="conv1"))
    assert not (tmp_path / "q.onnx").exists()
    # per-channel uint8 activations have no single symmetric pair: refused by name, not mis-converted
    g = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], axis=1, name="q_pc"),
         helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], axis=1)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        [numpy_helper.from_array(np.array([0.1, 0.2], np.float32), "s"),
         numpy_helper.from_array(np.array([3, 4], np.uint8), "z")])
    with pytest.raises(ExportError, match="q_pc: per-channel uint8 quantization has no symmetric int8 equivalent"):
        tensorrt_qdq(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]))


def test_int8_needs_the_training_data(ckpt, tmp_path: Path) -> None:
    import torch

    from sdedge.checkpoint import load_checkpoint, save_checkpoint

    c = load_checkpoint(ckpt)
    meta = dict(c.meta, data=dict(c.meta["data"], dataset="fashion-mnist"))
    other = save_checkpoint(tmp_path / "fm.pt", meta, c.state_dict)
    with pytest.raises(ExportError, match="INT8 export needs the checkpoint's training data"):
        export_bundle(ExportConfig(checkpoint=str(other), output=str(tmp_path / "b"), int8=True,
                                   data=str(tmp_path / "no-such-folder")))
    assert not (tmp_path / "b").exists()
    del torch

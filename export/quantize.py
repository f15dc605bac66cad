"""INT8 sections: ONNX Runtime static quantization to QDQ, laid out for ONNX Runtime's x86/ARM CPU kernels.

Each FP32 section is quantized on its own, calibrated on the inputs it really sees: N training images
run through the FP32 chain, so section k is calibrated on ``features_{k-1}``.

Default settings (``target="onnxruntime"``), chosen so that ONNX Runtime's CPU provider fuses every
quantized Conv, residual Add and exit-head Gemm into an integer kernel (``QLinearConv``,
``QLinearAdd``, ``QGemm``, run in NHWC by its layout transformer) and no float op is left between two
of them (issue 16 item 4; ``docs/int8.md`` has the measurements):

* ``QuantFormat.QDQ`` (QuantizeLinear/DequantizeLinear pairs around float ops): ONNX Runtime fuses the
  pairs into integer kernels at load, and the file stays a standard ONNX graph;
* activations ``QUInt8``, asymmetric (zero point where the calibrated range puts it): the u8 x s8 mix that
  MLAS's VNNI / AVX2 / NEON kernels are written for. A ReLU after a Conv or a residual Add is then folded
  into the output quantization (zero point 0 clamps at 0), so Conv + Add + ReLU become one integer kernel;
  with symmetric int8 activations (zero point 0 means nothing clamps) every ReLU stays a float op behind a
  DequantizeLinear and before a QuantizeLinear, and on x86 ONNX Runtime runs no int8 x int8 convolution
  fast (the old TensorRT-first settings: up to 1.7x the FP32 time, see ``docs/int8.md``);
* weights ``QInt8``, symmetric, per output channel;
* biases int32 (scale = input scale x weight scale), which ONNX Runtime folds into the integer kernel
  (checked on 1.17.3 and 1.32); float biases fuse only from 1.21, which quantizes them at load;
* dense (``group=1``) Convs with fewer than :data:`FLOAT_CONV_MAX_IN_CHANNELS` input channels stay float:
  an image stem (1 or 3 channels) has a reduction of 9-27 values per output, too short for the integer
  GEMM to pay for its packing (measured 2.1-4.9x slower than the float Conv, ``docs/int8.md``);
* calibration MinMax by default (``percentile`` and ``entropy`` are options);
* exit logits (``logits_k`` outputs) leave in float: ``quantize_static`` puts a QuantizeLinear/
  DequantizeLinear pair on every output, which rounds the logits to 256 levels over their calibrated range;
  ties and near-ties then flip the argmax (the full-width model's deepest exit lost 2.1 pp of accuracy and
  agreed with FP32 on 90.5 % of test images; without the pair 99.3 %) and coarsen the softmax confidence
  the thresholds read. :func:`float_logits` removes the pair; ONNX Runtime still runs the head as
  ``QGemm``, with a float output.

``target="tensorrt"`` writes the previous layout instead: symmetric int8 activations and weights (zero
point 0, which TensorRT's explicit quantization requires), float biases (its ONNX parser rejects
DequantizeLinear on INT32), every Conv quantized. A default (onnxruntime) section converts to that form
without recalibrating with :func:`tensorrt_qdq`: each uint8 scale/zero point pair becomes the int8
symmetric pair covering the same range (for MinMax, the very scale symmetric calibration gives), a ReLU
is put back before each uint8 QuantizeLinear whose zero point is 0 (the clamp a ReLU was folded into),
and each int32 bias is dequantized into a float initializer.

Graph inputs and outputs stay float32 with the same names, so an INT8 section drops in where the FP32
one was.
"""
from __future__ import annotations

import collections
import contextlib
import io
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ..common.errors import ExportError

METHODS = ("minmax", "percentile", "entropy")
TARGETS = ("onnxruntime", "tensorrt")
FLOAT_CONV_MAX_IN_CHANNELS = 8  # dense Convs with fewer input channels than this stay float (image stems)
# Entropy (KL) calibration the way TensorRT's legacy calibrator does it: a 2048-bin histogram, thresholds
# searched for an 8-bit grid (ONNX Runtime's histogram is signed, so 256 quantized bins = 128 per side).
# quantize_static's own Entropy keeps ONNX Runtime's defaults of 128 bins and 128 quantized bins, which
# leave one candidate threshold (the whole range): MinMax again, under another name.
ENTROPY_BINS = 2048
ENTROPY_QUANTIZED_BINS = 256
INTEGER_OPS = ("QLinearConv", "ConvInteger", "QLinearAdd", "QGemm", "QLinearMatMul", "MatMulInteger",
               "QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearConcat", "QLinearMul")


@dataclass
class QuantizeSettings:
    per_channel: bool = True
    method: str = "minmax"
    batch: int = 32
    target: str = "onnxruntime"  # onnxruntime: u8 activations, fused kernels | tensorrt: symmetric int8
    float_stem: bool = True  # onnxruntime target: dense Convs with < 8 input channels stay float
    float_logits: bool = True  # no QuantizeLinear/DequantizeLinear pair on the logits_k outputs (see above)
    float_nodes: tuple[str, ...] = ()  # more nodes left in float, by name (unnamed nodes: f"{op_type}_{index}_sdedge")

    def check(self) -> None:
        if self.method not in METHODS:
            raise ExportError(f"unknown calibration method {self.method!r}; expected one of {', '.join(METHODS)}")
        if self.target not in TARGETS:
            raise ExportError(f"unknown INT8 target {self.target!r}; expected one of {', '.join(TARGETS)}")
        if not isinstance(self.batch, int) or self.batch < 1:
            raise ExportError(f"calibration batch must be a positive integer, got {self.batch!r}")
        if isinstance(self.float_nodes, str) or not all(isinstance(n, str) for n in self.float_nodes):
            raise ExportError(f"float_nodes must be a sequence of node names, got {self.float_nodes!r}")

    @property
    def stem_float(self) -> bool:
        return self.target == "onnxruntime" and self.float_stem

    @property
    def _logits(self) -> str:
        return "float" if self.float_logits else "quantized to the activation type"

    def to_json(self) -> dict:
        weights = "int8 symmetric" + (" per-channel" if self.per_channel else " per-tensor")
        if self.target == "tensorrt":
            return {"format": "QDQ", "target": "tensorrt", "activations": "int8 symmetric", "weights": weights,
                    "bias": "float", "float_ops": list(self.float_nodes), "logits": self._logits,
                    "calibration_method": self.method,
                    "tool": "onnxruntime.quantization.quantize_static"}
        return {"format": "QDQ", "target": "onnxruntime", "activations": "uint8 asymmetric", "weights": weights,
                "bias": "int32", "relu": "folded into the uint8 quantization of its input",
                "float_ops": ([f"Conv with group 1 and fewer than {FLOAT_CONV_MAX_IN_CHANNELS} input channels"]
                              if self.stem_float else []) + list(self.float_nodes),
                "logits": self._logits,
                "tensorrt": "sdedge.export.quantize.tensorrt_qdq converts a section to symmetric int8",
                "calibration_method": self.method, "tool": "onnxruntime.quantization.quantize_static"}


def _reader(name: str, data: np.ndarray, batch: int) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        """Feeds one section's calibration inputs in batches."""

        def __init__(self) -> None:
            self._it: Iterator[dict[str, np.ndarray]] = self._batches()

        def _batches(self) -> Iterator[dict[str, np.ndarray]]:
            # every batch the same size: the histogram calibrators (percentile, entropy) stack the batches'
            # outputs into one array, so a short last batch is completed with the first images again
            size = min(batch, len(data))
            for start in range(0, len(data), size):
                rows = data[start:start + size]
                if len(rows) < size:
                    rows = np.concatenate([rows, data[:size - len(rows)]])
                yield {name: np.ascontiguousarray(rows, dtype=np.float32)}

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

        def rewind(self) -> None:
            self._it = self._batches()

    return Reader()


def _name_nodes(model: Any) -> None:
    """Give every node a unique name (``nodes_to_exclude`` works by name)."""
    seen: set[str] = set()
    for i, n in enumerate(model.graph.node):
        if not n.name or n.name in seen:
            n.name = f"{n.op_type}_{i}_sdedge"
        seen.add(n.name)


def float_convs(model: Any) -> list[str]:
    """Names of the dense Convs with fewer than :data:`FLOAT_CONV_MAX_IN_CHANNELS` input channels."""
    from onnx import numpy_helper

    weights = {i.name: i for i in model.graph.initializer}
    out = []
    for n in model.graph.node:
        if n.op_type != "Conv" or len(n.input) < 2 or n.input[1] not in weights:
            continue
        group = next((a.i for a in n.attribute if a.name == "group"), 1)
        dims = list(weights[n.input[1]].dims) or list(numpy_helper.to_array(weights[n.input[1]]).shape)
        if group == 1 and len(dims) >= 2 and dims[1] < FLOAT_CONV_MAX_IN_CHANNELS:
            out.append(n.name)
    return out


def float_logits(model: Any) -> None:
    """Drop the QuantizeLinear -> DequantizeLinear pair in front of each ``logits_k`` output (in place), so the
    logits leave the graph as their producer computed them."""
    producers = {o: n for n in model.graph.node for o in n.output}
    for out in model.graph.output:
        if not out.name.startswith("logits_"):
            continue
        dq = producers.get(out.name)
        q = producers.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear":
            continue
        consumers = [n for n in model.graph.node if q.output[0] in n.input]
        if consumers != [dq]:
            continue  # the quantized logits feed something else too: leave the graph as it is
        source = q.input[0]
        for n in model.graph.node:  # the float tensor takes the output's name wherever it is read or made
            n.input[:] = [out.name if i == source else i for i in n.input]
            n.output[:] = [out.name if o == source else o for o in n.output]
        for vi in [v for v in model.graph.value_info if v.name in (source, q.output[0])]:
            model.graph.value_info.remove(vi)
        model.graph.node.remove(q)
        model.graph.node.remove(dq)


def entropy_ranges(model_path: Path, reader: Any, workdir: Path) -> dict[str, tuple[float, float]]:
    """Per-tensor (rmin, rmax) from KL-divergence calibration on :data:`ENTROPY_BINS` histogram bins."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    calibrator = create_calibrator(
        str(model_path), None, augmented_model_path=str(workdir / "augmented.onnx"),
        calibrate_method=CalibrationMethod.Entropy, providers=["CPUExecutionProvider"],
        extra_options={"num_bins": ENTROPY_BINS, "num_quantized_bins": ENTROPY_QUANTIZED_BINS, "symmetric": False})
    calibrator.collect_data(reader)
    data = calibrator.compute_data()
    out = {}
    for name, td in data.data.items():
        lo, hi = (float(np.asarray(v).reshape(-1)[0]) for v in td.range_value)
        out[name] = (min(lo, 0.0), max(hi, 0.0))
    return out


def quantize_section(src: Path, dst: Path, input_name: str, calib: np.ndarray,
                     settings: QuantizeSettings | None = None) -> None:
    """Write the QDQ INT8 version of section ``src`` to ``dst``, calibrated on ``calib`` (its inputs)."""
    settings = settings or QuantizeSettings()
    settings.check()
    import onnx

    if len(calib) == 0:
        raise ExportError("INT8 calibration needs at least one image")
    with tempfile.TemporaryDirectory(prefix="sdedge-quant-") as tmp:
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # the calibrators print their progress
                model = _quantize(Path(src), input_name, calib, settings, Path(tmp))
        except ExportError:
            raise
        except Exception as e:  # onnxruntime raises plain exceptions from many places
            raise ExportError(f"INT8 quantization of {Path(src).name} failed: {type(e).__name__}: {e}") from None
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:
        raise ExportError(f"onnx.checker rejected the INT8 version of {Path(src).name}: {e}") from None
    fp32_io = _io_names(onnx.load(str(src)))
    if _io_names(model) != fp32_io:
        raise ExportError(f"INT8 {Path(src).name} changed its inputs/outputs: {_io_names(model)} vs {fp32_io}")
    onnx.save(model, str(dst))


def _quantize(src: Path, input_name: str, calib: np.ndarray, settings: QuantizeSettings, tmp: Path) -> Any:
    """The QDQ INT8 model of section ``src`` (``tmp``: a scratch folder for the quantizer's files)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
              "entropy": CalibrationMethod.Entropy}[settings.method]
    if settings.target == "tensorrt":
        types = dict(activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
        extra: dict[str, Any] = {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
                                 "CalibTensorRangeSymmetric": True}
    else:
        types = dict(activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        extra = {"ActivationSymmetric": False, "WeightSymmetric": True, "QuantizeBias": True}
    pre = tmp / "pre.onnx"
    quant_pre_process(str(src), str(pre), skip_optimization=True, skip_symbolic_shape=True)
    pre_model = onnx.load(str(pre))
    _name_nodes(pre_model)
    onnx.save(pre_model, str(pre))
    exclude = (float_convs(pre_model) if settings.stem_float else []) + list(settings.float_nodes)
    unknown = set(settings.float_nodes) - {n.name for n in pre_model.graph.node}
    if unknown:
        raise ExportError(f"float_nodes names no node of {src.name}: {', '.join(sorted(unknown))}")
    if settings.method == "entropy":  # our own histogram (see ENTROPY_BINS); the ranges go in as overrides
        ranges = entropy_ranges(pre, _reader(input_name, calib, settings.batch), tmp)
        produced = {o for n in pre_model.graph.node for o in n.output}
        extra["TensorQuantOverrides"] = {name: [{"rmin": np.float32(lo), "rmax": np.float32(hi)}]
                                         for name, (lo, hi) in ranges.items() if name in produced}
        method = CalibrationMethod.MinMax  # every activation has its override; MinMax only fills the rest
    out = tmp / "int8.onnx"
    quantize_static(str(pre), str(out), _reader(input_name, calib, settings.batch), quant_format=QuantFormat.QDQ,
                    per_channel=settings.per_channel, calibrate_method=method, nodes_to_exclude=exclude or None,
                    use_external_data_format=False, extra_options=extra, **types)
    model = onnx.load(str(out))
    if settings.float_logits:
        float_logits(model)
    return model


def _io_names(model: Any) -> tuple[list[str], list[str]]:
    return [i.name for i in model.graph.input], [o.name for o in model.graph.output]


def tensorrt_qdq(model: Any) -> Any:
    """A copy of QDQ ``model`` with symmetric int8 activations (zero point 0), as TensorRT requires.

    Each uint8 (scale ``s``, zero point ``z``) pair, per tensor, becomes int8 (``s * max(z, 255 - z) / 127``,
    0): the same range, on the symmetric grid TensorRT's explicit quantization runs. Before each uint8
    QuantizeLinear with zero point 0 (where ONNX Runtime's quantizer folded a ReLU away) a ReLU is put
    back, so the graph computes what the uint8 one did; each int32 bias DequantizeLinear becomes the float
    initializer it computes (TensorRT's parser rejects INT32 there). A graph with neither (the
    ``target="tensorrt"`` layout) comes back unchanged. Raises :class:`ExportError` on per-channel uint8
    activations, which the quantizer here never writes.
    """
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    converted: dict[tuple[str, str], tuple[str, str, int]] = {}
    nodes = []
    outputs = {o.name for o in g.output}
    folded = 0
    for idx, n in enumerate(g.node):
        if (n.op_type == "DequantizeLinear" and n.input[0] in inits and n.output[0] not in outputs
                and inits[n.input[0]].data_type == onnx.TensorProto.INT32):  # bias: float, as TensorRT wants
            q = numpy_helper.to_array(inits[n.input[0]]).astype(np.float64)
            scale = numpy_helper.to_array(inits[n.input[1]]).astype(np.float64)
            zp = (numpy_helper.to_array(inits[n.input[2]]).astype(np.float64)
                  if len(n.input) > 2 and n.input[2] else np.zeros_like(scale))
            g.initializer.append(numpy_helper.from_array(((q - zp) * scale).astype(np.float32), n.output[0]))
            folded += 1
            continue
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) >= 3 and n.input[2] in inits:
            zp = numpy_helper.to_array(inits[n.input[2]])
            if zp.dtype == np.uint8:
                if zp.size != 1:
                    raise ExportError(f"{n.name or n.op_type}: per-channel uint8 quantization has no symmetric "
                                      "int8 equivalent here")
                key = (n.input[1], n.input[2])
                if key not in converted:
                    s = numpy_helper.to_array(inits[n.input[1]]).astype(np.float64)
                    z = int(zp.reshape(-1)[0])
                    s8 = (s * max(z, 255 - z) / 127.0).astype(np.float32).reshape(s.shape)
                    names = (f"{n.input[1]}_s8sym", f"{n.input[2]}_s8sym")
                    g.initializer.append(numpy_helper.from_array(s8, names[0]))
                    g.initializer.append(numpy_helper.from_array(np.zeros(zp.shape, np.int8), names[1]))
                    converted[key] = (names[0], names[1], z)
                scale_name, zp_name, z = converted[key]
                src = n.input[0]
                if n.op_type == "QuantizeLinear" and z == 0 and (src not in producer or
                                                                  producer[src].op_type != "Relu"):
                    relu_out = f"{src}_relu_s8sym_{idx}"
                    nodes.append(helper.make_node("Relu", [src], [relu_out], name=f"Relu_s8sym_{idx}"))
                    n.input[0] = relu_out
                n.input[1], n.input[2] = scale_name, zp_name
        nodes.append(n)
    if not converted and not folded:
        return m
    del g.node[:]
    g.node.extend(nodes)
    used = {i for n in g.node for i in n.input}
    keep = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    try:
        onnx.checker.check_model(m, full_check=True)
    except Exception as e:
        raise ExportError(f"onnx.checker rejected the symmetric int8 conversion: {e}") from None
    return m


def tensorrt_qdq_bytes(path: str | os.PathLike) -> bytes:
    """The bytes of :func:`tensorrt_qdq` of the section at ``path`` (for ``trt.OnnxParser.parse``)."""
    import onnx

    return tensorrt_qdq(onnx.load(str(path))).SerializeToString()


@dataclass
class OptimizedGraph:
    """What ONNX Runtime's CPU provider runs for one graph: op counts after its optimisations."""

    ops: dict[str, int]
    float_convs: list[str] = field(default_factory=list)  # Conv nodes left in float (FusedConv, NCHWc Conv too)

    @property
    def integer_ops(self) -> int:
        return sum(v for k, v in self.ops.items() if k in INTEGER_OPS)

    def to_json(self) -> dict:
        return {"ops": dict(sorted(self.ops.items())), "float_convs": self.float_convs,
                "integer_ops": self.integer_ops}


def optimized_graph(path: str | os.PathLike, level: str = "all") -> OptimizedGraph:
    """Load ``path`` in ONNX Runtime (CPU, 1 thread, ``level`` optimisations) and read the graph it runs."""
    import onnx
    import onnxruntime as ort

    levels = {"all": "ORT_ENABLE_ALL", "extended": "ORT_ENABLE_EXTENDED", "basic": "ORT_ENABLE_BASIC"}
    with tempfile.TemporaryDirectory(prefix="sdedge-ortopt-") as tmp:
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, levels[level])
        so.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        m = onnx.load(so.optimized_model_filepath)
    ops = collections.Counter(n.op_type for n in m.graph.node)
    convs = [n.name for n in m.graph.node if n.op_type in ("Conv", "FusedConv")]
    return OptimizedGraph(dict(ops), convs)


@dataclass
class Int8ExitReport:
    index: int
    fp32_accuracy: float
    int8_accuracy: float
    top1_agreement: float  # share of samples where INT8 and FP32 predict the same class
    max_abs_diff: float

    def to_json(self) -> dict:
        return {"index": self.index, "fp32_accuracy": self.fp32_accuracy, "int8_accuracy": self.int8_accuracy,
                "top1_agreement": self.top1_agreement, "max_abs_diff": self.max_abs_diff}


def compare_int8(fp32: Sequence[np.ndarray], int8: Sequence[np.ndarray], labels: np.ndarray) -> list[Int8ExitReport]:
    rows = []
    for i, (a, b) in enumerate(zip(fp32, int8), start=1):
        pa, pb = a.argmax(1), b.argmax(1)
        rows.append(Int8ExitReport(i, float(np.mean(pa == labels)), float(np.mean(pb == labels)),
                                   float(np.mean(pa == pb)), float(np.max(np.abs(a - b)))))
    return rows


def format_int8_table(rows: Sequence[Int8ExitReport], samples: int, split: str) -> str:
    lines = [f"INT8 vs FP32 on {samples} {split} images (ONNX Runtime CPU)",
             f"{'exit':>4}  {'FP32 acc':>8}  {'INT8 acc':>8}  {'Δacc':>7}  {'top-1 agree':>11}"]
    for r in rows:
        lines.append(f"{r.index:>4}  {r.fp32_accuracy:>8.2%}  {r.int8_accuracy:>8.2%}  "
                     f"{(r.int8_accuracy - r.fp32_accuracy) * 100:>+6.2f}pt  {r.top1_agreement:>11.2%}")
    return "\n".join(lines)

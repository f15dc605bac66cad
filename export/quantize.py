"""INT8 sections: ONNX Runtime static quantization to QDQ, for ONNX Runtime CPU and TensorRT alike.

Each FP32 section is quantized on its own, calibrated on the inputs it really sees: N training images
run through the FP32 chain, so section k is calibrated on ``features_{k-1}``. Settings, chosen so that
one file serves both runtimes:

* ``QuantFormat.QDQ`` (QuantizeLinear/DequantizeLinear pairs around float ops): ONNX Runtime fuses them
  into integer kernels; TensorRT reads them as *explicit quantization*;
* activations and weights ``QInt8``, symmetric (zero point 0): TensorRT only runs symmetric INT8;
* weights per output channel (``per_channel=True``);
* biases left in float (``QuantizeBias=False``): TensorRT's ONNX parser rejects DequantizeLinear on
  INT32 biases; TensorRT folds float biases itself, and ONNX Runtime >= 1.21 quantizes them at load;
* calibration MinMax by default (``percentile`` and ``entropy`` are options).

Graph inputs and outputs stay float32 with the same names, so an INT8 section drops in where the FP32
one was.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ..common.errors import ExportError

METHODS = ("minmax", "percentile", "entropy")


@dataclass
class QuantizeSettings:
    per_channel: bool = True
    method: str = "minmax"
    batch: int = 32

    def to_json(self) -> dict:
        return {"format": "QDQ", "activations": "int8 symmetric", "weights": "int8 symmetric" +
                (" per-channel" if self.per_channel else " per-tensor"), "bias": "float",
                "calibration_method": self.method, "tool": "onnxruntime.quantization.quantize_static"}


def _reader(name: str, data: np.ndarray, batch: int) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        """Feeds one section's calibration inputs in batches."""

        def __init__(self) -> None:
            self._it: Iterator[dict[str, np.ndarray]] = self._batches()

        def _batches(self) -> Iterator[dict[str, np.ndarray]]:
            for start in range(0, len(data), batch):
                yield {name: np.ascontiguousarray(data[start:start + batch], dtype=np.float32)}

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

        def rewind(self) -> None:
            self._it = self._batches()

    return Reader()


def quantize_section(src: Path, dst: Path, input_name: str, calib: np.ndarray,
                     settings: QuantizeSettings | None = None) -> None:
    """Write the QDQ INT8 version of section ``src`` to ``dst``, calibrated on ``calib`` (its inputs)."""
    settings = settings or QuantizeSettings()
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if settings.method not in METHODS:
        raise ExportError(f"unknown calibration method {settings.method!r}; expected one of {', '.join(METHODS)}")
    if len(calib) == 0:
        raise ExportError("INT8 calibration needs at least one image")
    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
              "entropy": CalibrationMethod.Entropy}[settings.method]
    with tempfile.TemporaryDirectory(prefix="sdedge-quant-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        try:
            quant_pre_process(str(src), str(pre), skip_optimization=True, skip_symbolic_shape=True)
            quantize_static(
                str(pre), str(dst), _reader(input_name, calib, settings.batch),
                quant_format=QuantFormat.QDQ, per_channel=settings.per_channel,
                activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, calibrate_method=method,
                use_external_data_format=False,
                extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
                               "CalibTensorRangeSymmetric": True})
        except ExportError:
            raise
        except Exception as e:  # onnxruntime raises plain exceptions from many places
            raise ExportError(f"INT8 quantization of {src.name} failed: {type(e).__name__}: {e}") from None
    model = onnx.load(str(dst))
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:
        raise ExportError(f"onnx.checker rejected the INT8 version of {src.name}: {e}") from None
    fp32_io = _io_names(onnx.load(str(src)))
    if _io_names(model) != fp32_io:
        raise ExportError(f"INT8 {src.name} changed its inputs/outputs: {_io_names(model)} vs {fp32_io}")


def _io_names(model: Any) -> tuple[list[str], list[str]]:
    return [i.name for i in model.graph.input], [o.name for o in model.graph.output]


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

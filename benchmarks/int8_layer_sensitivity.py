"""Which layer of a section costs accuracy in INT8: quantize the section again with one node at a time left in
float (``QuantizeSettings.float_nodes``) and with the logits quantized (``float_logits=False``, the layout
before the fix), and compare each with the FP32 section on real test images.

    python benchmarks/int8_layer_sensitivity.py BUNDLE [--section 4] [--data DIR] [--images 2000]
        [--calib-samples 512] [--quantized-logits] [--json benchmarks/results/int8_layer_sensitivity.json]

Contract: calibration as ``sdedge export --int8`` does it (``--calib-samples`` training images picked with
``pick(n, N, seed=1)``, run through the FP32 chain, MinMax); the section's inputs are the FP32 chain's features
of the first ``--images`` test images; per variant: accuracy of the section's last logits, top-1 agreement with
FP32 and the RMS logit error over the RMS spread of the FP32 logits. Candidates: every Conv, Add, Gemm and
MatMul of the section; with ``--quantized-logits`` each of them with the logits quantized too (how the cost
of the logits' QDQ pair was told apart from the layers'). Accuracy only, no timing: any machine gives the same
figures up to its integer kernels.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from int8_bench import chain, exit_rows, load_data, ort_session  # noqa: E402
from sdedge.calibrate import benchmarking as B  # noqa: E402
from sdedge.common.jsonio import write_json_atomic  # noqa: E402

CANDIDATE_OPS = ("Conv", "Add", "Gemm", "MatMul")


def candidates(section: Path) -> list[tuple[str, str]]:
    """(name, op type) of the nodes worth leaving in float, named as the quantizer names them."""
    import onnx

    from sdedge.export.quantize import _name_nodes

    m = onnx.load(str(section))
    _name_nodes(m)
    return [(n.name, n.op_type) for n in m.graph.node if n.op_type in CANDIDATE_OPS]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("--section", type=int, default=None, help="section to probe (default: the deepest)")
    p.add_argument("--data", default=os.environ.get("SDEDGE_DATA"), help="dataset folder (default SDEDGE_DATA)")
    p.add_argument("--images", type=int, default=2000, help="test images (the first N)")
    p.add_argument("--calib-samples", type=int, default=512)
    p.add_argument("--quantized-logits", action="store_true",
                   help="leave each node in float with the logits quantized (float_logits=False)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    from sdedge.export.quantize import QuantizeSettings, quantize_section
    from sdedge.runtime.bundle import open_bundle

    head = B.provenance(packages=("sdedge", "numpy", "onnx", "onnxruntime"))
    started = time.time()
    bundle = open_bundle(args.bundle)
    man = bundle.manifest
    k = args.section or len(man.sections)
    if not 1 <= k <= len(man.sections):
        p.error(f"--section must be 1..{len(man.sections)}")
    data = load_data(man.raw, args.data, args.images, args.calib_samples)
    fp32 = [ort_session(bundle.section_path(s.index), 1) for s in man.sections[:k]]
    ref, inputs = chain(fp32, data["x_test"], collect=True)
    _, calib = chain(fp32, data["calib"], collect=True)
    section = man.sections[k - 1]
    src = bundle.section_path(k)
    variants: dict[str, QuantizeSettings] = {"default": QuantizeSettings(),
                                             "logits quantized": QuantizeSettings(float_logits=False)}
    for name, op in candidates(src):
        variants[f"float {op} {name}"] = QuantizeSettings(float_nodes=(name,), float_logits=not args.quantized_logits)
    rows = []
    with tempfile.TemporaryDirectory(prefix="sdedge-sens-") as tmp:
        for label, settings in variants.items():
            dst = Path(tmp) / "q.onnx"
            quantize_section(src, dst, section.input.name, calib[k - 1], settings)
            s = ort_session(dst, 1)
            out = chain([s], inputs[k - 1])[0][-1]
            row = exit_rows([ref[k - 1]], [out], data["y_test"])[0]
            row.update(variant=label, exit=k)
            rows.append(row)
            print(f"{label:40s} acc {row['int8_accuracy']:.4f} (FP32 {row['fp32_accuracy']:.4f}) "
                  f"agree {row['top1_agreement']:.4f} logit error {row['relative_logit_error']:.3f}", flush=True)
    result: dict[str, Any] = {
        **head, "seconds": round(time.time() - started, 1), "bundle": str(args.bundle), "section": k,
        "images": len(data["y_test"]), "split": "test",
        "calibration": {"samples": len(data["calib"]), "split": "train", "method": "minmax"},
        "per_node_variants_logits": "quantized" if args.quantized_logits else "float", "rows": rows}
    if args.json:
        write_json_atomic(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Expected answers of the Python runtime on a real bundle, for the native core's parity test.

    python native/tests/expected_vectors.py BUNDLE OUT.json [--rows 24] [--seed 0]

Draws ``rows`` random uint8 images for the bundle's input, and records what the pure-Python
``AnytimeSession`` (ONNX Runtime, 1 thread, no warm-up) answers: the preprocessed float input, every
exit's logits (``infer_all_exits``) and the answers under a few confidence policies (fixed thresholds under
each criterion, ``threshold=0`` and, when the bundle is calibrated, ``"calibrated"``). ``native/tests/unit_real_bundle.cpp``
reads the file (``$SDEDGE_TEST_EXPECTED``, or it runs this script itself) and checks the C ABI answers alike.
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bundle")
    p.add_argument("out")
    p.add_argument("--rows", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from sdedge.runtime import AnytimeSession

    s = AnytimeSession(args.bundle, backend="onnxruntime", intra_op_threads=1, warmup=0)
    c, h, w = s.input_shape
    rng = np.random.default_rng(args.seed)
    pixels = rng.integers(0, 256, size=(args.rows, h, w, c), dtype=np.uint8)
    x = s._prep(pixels).batch  # the preprocessed float32 NCHW batch the sections see
    doc = {"rows": args.rows, "chw": [c, h, w], "num_exits": s.num_exits, "num_classes": len(s.classes),
           "pixels": pixels.reshape(-1).tolist(), "input": [float(v) for v in x.reshape(-1)],
           "all_exits": [float(v) for v in s.infer_all_exits(x).reshape(-1)], "cases": []}
    policies = [("threshold", 0.6, None), ("threshold", 0.95, None), ("threshold", 0.0, None),
                ("threshold", 0.5, "entropy"), ("threshold", 0.5, "margin")]
    if s.calibration is not None:
        policies.append(("calibrated", None, None))
    for kind, value, criterion in policies:
        res = s.infer(pixels, threshold="calibrated" if kind == "calibrated" else value, criterion=criterion)
        doc["cases"].append({
            "kind": kind, "threshold": value, "criterion": criterion,
            "exit_index": [r.exit_index for r in res], "label": [r.label for r in res],
            "stopped_by": [r.stopped_by for r in res], "confidence": [float(r.confidence) for r in res],
            "probabilities": [float(v) for r in res for v in r.probabilities]})
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(doc, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())

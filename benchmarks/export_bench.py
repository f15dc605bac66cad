"""Export figures: time per model, bundle size FP32 vs INT8, per-exit test accuracy FP32 vs INT8.

    python benchmarks/export_bench.py CKPT [CKPT ...] [--data DIR] [--int8-samples 512]
                                      [--threads N] [--test-limit N] [--keep DIR] [--json out.json]

For every checkpoint: ``export_bundle(..., int8=True)`` into a temporary folder (or ``--keep``), then
every exit's top-1 accuracy on the checkpoint dataset's **official test split** (Fashion-MNIST: the
10 000 t10k images), FP32 sections and INT8 (QDQ) sections run on ONNX Runtime CPU, chained as the
runtime chains them, plus their top-1 agreement.

Contract: export time is wall-clock of ``export_bundle`` (trace, ONNX cut, parity on 64 validation
images, INT8 calibration on N training images, the FP32-vs-INT8 validation report, verification),
split by step. Sizes are bytes on disk of the section files (FP32 ``sections/``, INT8 ``int8/``) and of
the whole bundle. Accuracy uses the same preprocessed test images for both precisions; ONNX Runtime
CPU with ``--threads`` intra-op threads. The machine (CPU model, cores) is printed with the results.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def test_accuracy(bundle: Path, meta: dict, data: str | None, threads: int | None, limit: int | None) -> dict:
    from sdedge.data import load_splits
    from sdedge.export.parity import chain_logits, ort_session
    from sdedge.export.samples import preprocess
    from sdedge.runtime import open_bundle

    d = meta["data"]
    splits = load_splits(d["dataset"], data)
    images, labels = splits.test.images[:limit], splits.test.labels[:limit]
    x = preprocess(images, d["preprocess"])
    b = open_bundle(bundle)
    out: dict = {"split": "test", "samples": int(len(x))}
    preds = {}
    for precision in ("fp32", "int8"):
        sessions = [ort_session(b.section_path(s.index, precision), threads) for s in b.manifest.sections]
        t = time.perf_counter()
        logits, _ = chain_logits(sessions, x, batch=256)
        out[f"{precision}_seconds"] = time.perf_counter() - t
        preds[precision] = [lg.argmax(1) for lg in logits]
        out[precision] = [float(np.mean(p == labels)) for p in preds[precision]]
    out["agreement"] = [float(np.mean(a == q)) for a, q in zip(preds["fp32"], preds["int8"])]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", help="trained sdedge checkpoints")
    p.add_argument("--data", default=None, help="dataset folder (default: SDEDGE_DATA / the dataset's default)")
    p.add_argument("--int8-samples", type=int, default=512, help="calibration images (default 512)")
    p.add_argument("--int8-method", default="minmax", choices=["minmax", "percentile", "entropy"])
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: all)")
    p.add_argument("--test-limit", type=int, default=None, help="evaluate on the first N test images only")
    p.add_argument("--keep", default=None, help="write the bundles under this folder instead of a temp folder")
    p.add_argument("--json", default=None, help="also write the results as JSON here")
    args = p.parse_args(argv)

    from sdedge.checkpoint import load_checkpoint
    from sdedge.export import ExportConfig, export_bundle
    from sdedge.calibrate.benchmarking import provenance
    from sdedge.common.jsonio import write_json_atomic

    header = provenance("benchmarks/export_bench.py", argv, ("sdedge", "torch", "numpy", "onnx", "onnxruntime"))
    print(f"machine: {header['machine']}; ONNX Runtime threads {args.threads or 'default'}")
    results = []
    with tempfile.TemporaryDirectory(prefix="sdedge-export-bench-") as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        for ck in args.checkpoints:
            meta = load_checkpoint(ck).meta
            out = root / (Path(ck).stem + "-bundle")
            t = time.perf_counter()
            res = export_bundle(ExportConfig(checkpoint=ck, output=str(out), force=True, int8=True,
                                             int8_samples=args.int8_samples, int8_method=args.int8_method,
                                             data=args.data, threads=args.threads))
            wall = time.perf_counter() - t
            acc = test_accuracy(out, meta, args.data, args.threads, args.test_limit)
            row = {"checkpoint": ck, "model": res.manifest["model"]["name"],
                   "backbone": res.manifest["model"]["backbone"], "exits": len(res.manifest["sections"]),
                   "export_seconds": wall, "steps": res.timings, "sizes": res.sizes,
                   "macs": [s["macs"] for s in res.manifest["sections"]],
                   "val_int8": [r.to_json() for r in res.int8 or []], "test": acc}
            results.append(row)
            s = res.sizes
            print(f"\n== {row['model']} ({ck})")
            print(f"export: {wall:.1f} s  (" + ", ".join(f"{k} {v:.1f}" for k, v in res.timings.items()
                                                     if k != "total") + ")")
            print(f"size: FP32 sections {s['sections'] / 1e6:.2f} MB, INT8 sections {s['int8'] / 1e6:.2f} MB "
                  f"({s['int8'] / max(1, s['sections']):.2f}x), full.onnx {s['full'] / 1e6:.2f} MB, "
                  f"bundle {s['bundle'] / 1e6:.2f} MB")
            print(f"test accuracy on {acc['samples']} {meta['data']['dataset']} test images (ONNX Runtime CPU):")
            print(f"{'exit':>4}  {'FP32':>7}  {'INT8':>7}  {'Δ':>7}  {'agree':>7}")
            for k, (a, q, g) in enumerate(zip(acc["fp32"], acc["int8"], acc["agreement"]), start=1):
                print(f"{k:>4}  {a:>7.2%}  {q:>7.2%}  {(q - a) * 100:>+6.2f}pt  {g:>7.2%}")
            print(f"(inference over the test set: FP32 {acc['fp32_seconds']:.1f} s, INT8 {acc['int8_seconds']:.1f} s)")
    if args.json:
        write_json_atomic(args.json, {**header, "ort_threads": args.threads, "results": results}, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

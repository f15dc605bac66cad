"""INT8 vs FP32 sections on ONNX Runtime's CPU provider (issue 16 item 4): latency per section at batch 1
and 16, accuracy per exit, calibration methods, and what ONNX Runtime really runs (graph and profiler).

    python benchmarks/int8_bench.py BUNDLE [--data DIR] [--images 10000] [--calib-samples 512]
        [--methods minmax,percentile,entropy] [--batches 1,16] [--runs 400] [--warmup 30]
        [--no-old] [--json benchmarks/results/int8_bench.json] [--md benchmarks/results/int8_bench.md]

BUNDLE comes from ``sdedge export CKPT --int8`` (its ``int8/s*.onnx`` are the contender "bundle"). Contract:

* **Contenders**: ``fp32`` (the bundle's sections), ``int8`` (the bundle's INT8 sections, as exported)
  and, unless ``--no-old``, ``int8-tensorrt-layout``: the same FP32 sections quantized here with
  ``QuantizeSettings(target="tensorrt")`` (symmetric int8 activations, every Conv quantized: the layout
  ``sdedge export --int8`` wrote before issue 16 item 4), MinMax, calibrated like the export.
  For the calibration comparison each method in ``--methods`` re-quantizes the FP32 sections with the
  default settings (``target="onnxruntime"``) in a temporary folder. ``int8-converted-for-tensorrt``
  (accuracy and graph only) is the bundle's INT8 sections through ``tensorrt_qdq``: the symmetric int8
  graph TensorRT would get, run here by ONNX Runtime.
* **Calibration** (re-quantized contenders): ``--calib-samples`` training images of the bundle's dataset
  picked as the export picks them (``pick(n, N, seed=1)``), run through the FP32 chain so section k is
  calibrated on ``features_{k-1}``.
* **Accuracy**: the first ``--images`` images of the official test split, preprocessed
  with the manifest's ``preprocess``, run through each contender's chain (ONNX Runtime CPU, graph
  optimisation ``all``); per exit: accuracy, top-1 agreement with FP32, and RMS logit error over the RMS
  spread of the FP32 logits.
* **Latency**: ONNX Runtime CPU provider, ``intra_op_num_threads=1``, ``inter_op_num_threads=1``,
  sequential execution, spinning off, optimisation ``all`` (the runtime backend's defaults); per section
  and batch, the section's real inputs (FP32 chain features of the test images, the first ``batch``
  rows); contenders interleaved call by call in a shuffled order (``sdedge.calibrate.benchmarking``'s
  contract), ``--warmup`` untimed calls, then ``--runs`` timed calls each (``--runs // 4`` at batch >= 8);
  figure = p50 of INT8 / p50 of FP32.
* **Graph**: op counts of the graph ONNX Runtime runs after its optimisations (``optimized_model_filepath``)
  for each contender's sections, and the Conv nodes left in float.
* **Profiler**: ONNX Runtime's profiler (``enable_profiling``) over ``--profile-runs`` calls per section,
  batch and contender (fp32, int8, int8-tensorrt-layout): kernel time per op type (profiling adds a
  per-node cost, so these are shares, not latencies).
* The machine is shared (2 cores here, other jobs beside): only ratios measured side by side mean
  anything; the results record the CPU, its flags, the load average and the versions.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from sdedge.calibrate import benchmarking as B
from sdedge.common.atomic import write_text_atomic
from sdedge.common.hostinfo import available_cpus, cpu_flags, cpu_model
from sdedge.common.jsonio import write_json_atomic

def ort_session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def load_data(manifest: dict, data_dir: str | None, images: int, calib_samples: int) -> dict[str, Any]:
    from sdedge.data import checkpoint_data_spec, splits_for_spec
    from sdedge.export.samples import pick, preprocess

    model = manifest["model"]
    spec = checkpoint_data_spec({"data": model["data"], "model": model.get("config") or {}})
    cfg = model.get("config") or {}
    if spec.image_size is None or spec.in_channels is None:
        spec = replace(spec, image_size=spec.image_size or cfg.get("image_size"),
                       in_channels=spec.in_channels or cfg.get("in_channels"))
    splits = splits_for_spec(spec, data_dir)
    pre = manifest["input"]["preprocess"]
    test_images, test_labels = splits.test.images[:images], splits.test.labels[:images]
    train = splits.train.images
    calib = preprocess(train[pick(len(train), calib_samples, seed=1)], pre)
    return {"name": splits.name, "x_test": preprocess(test_images, pre), "y_test": np.asarray(test_labels),
            "calib": calib}


def chain(sessions: list[Any], x: np.ndarray, collect: bool = False) -> tuple[list[np.ndarray], list[np.ndarray]]:
    from sdedge.export.parity import chain_logits

    return chain_logits(sessions, x, batch=256, collect_inputs=collect)


def exit_rows(ref: list[np.ndarray], got: list[np.ndarray], labels: np.ndarray) -> list[dict[str, Any]]:
    rows = []
    for k, (a, b) in enumerate(zip(ref, got), start=1):
        spread = float(np.sqrt(np.mean((a - a.mean(1, keepdims=True)) ** 2)))
        rows.append({"exit": k, "fp32_accuracy": float(np.mean(a.argmax(1) == labels)),
                     "int8_accuracy": float(np.mean(b.argmax(1) == labels)),
                     "delta_pp": float((np.mean(b.argmax(1) == labels) - np.mean(a.argmax(1) == labels)) * 100),
                     "top1_agreement": float(np.mean(a.argmax(1) == b.argmax(1))),
                     "relative_logit_error": float(np.sqrt(np.mean((b - a) ** 2)) / spread) if spread else None})
    return rows


def profile_ops(path: Path, x: np.ndarray, runs: int) -> dict[str, Any]:
    """Kernel time per op type from ONNX Runtime's profiler, per call (shares, not latencies)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    so.enable_profiling = True
    with tempfile.TemporaryDirectory(prefix="sdedge-prof-") as tmp:
        so.profile_file_prefix = str(Path(tmp) / "p")
        s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        feed = {s.get_inputs()[0].name: x}
        for _ in range(runs):
            s.run(None, feed)
        events = json.loads(Path(s.end_profiling()).read_text())
    agg: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0])
    for e in events:
        if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time"):
            op = e["args"]["op_name"]
            agg[op][0] += e["dur"]
            agg[op][1] += 1
    total = sum(v[0] for v in agg.values()) or 1.0
    ops = {op: {"us_per_call": d / runs, "share": d / total, "nodes": c // runs}
           for op, (d, c) in sorted(agg.items(), key=lambda kv: -kv[1][0])}
    return {"kernel_us_per_call": total / runs, "ops": ops}


def time_sections(contenders: dict[str, list[Path]], inputs: list[np.ndarray], batches: list[int], runs: int,
                  warmup: int, quiet: bool = False) -> list[dict[str, Any]]:
    out = []
    for k, x_all in enumerate(inputs, start=1):
        sessions = {name: ort_session(paths[k - 1], 1) for name, paths in contenders.items()}
        for batch in batches:
            x = np.ascontiguousarray(x_all[:batch])
            feeds = {name: {s.get_inputs()[0].name: x} for name, s in sessions.items()}
            calls = {name: (lambda _x, s=s, f=feeds[name]: s.run(None, f)) for name, s in sessions.items()}
            n = runs if batch < 8 else max(25, runs // 4)
            times = B._interleaved(calls, [x], n, warmup, seed=k * 100 + batch)  # call by call, shuffled
            row: dict[str, Any] = {"section": k, "batch": batch, "runs": n,
                                   "stats": {name: B.stats_ms(t) for name, t in times.items()}}
            p50 = {name: row["stats"][name]["p50_ms"] for name in times}
            row["ratio_p50"] = {name: p50[name] / p50["fp32"] for name in times if name != "fp32"}
            out.append(row)
            if not quiet:
                print(f"  s{k} batch {batch:>2}: fp32 p50 {p50['fp32']:.3f} ms; " + ", ".join(
                    f"{name} {r:.2f}x" for name, r in row["ratio_p50"].items()), flush=True)
    return out


def stem_probe(hw: tuple[int, int], batches: list[int], runs: int, warmup: int, tmp: Path) -> list[dict[str, Any]]:
    """One Conv(C_in -> 16, 3x3) + ReLU, FP32 vs fully quantized (``float_stem=False``), per C_in: where an
    integer Conv stops paying (the reason for ``FLOAT_CONV_MAX_IN_CHANNELS``)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from sdedge.export.quantize import QuantizeSettings, quantize_section

    rows = []
    rng = np.random.default_rng(0)
    for cin in (1, 3, 4, 8, 16):
        w = numpy_helper.from_array(rng.standard_normal((16, cin, 3, 3)).astype(np.float32) * 0.3, "w")
        bias = numpy_helper.from_array(np.zeros(16, np.float32), "b")
        nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
                 helper.make_node("Relu", ["c"], ["y"], name="relu")]
        g = helper.make_graph(nodes, "probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, cin, *hw])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 16, *hw])], [w, bias])
        f32, q8 = tmp / f"probe{cin}.onnx", tmp / f"probe{cin}_int8.onnx"
        onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), str(f32))
        x = rng.standard_normal((64, cin, *hw)).astype(np.float32)
        quantize_section(f32, q8, "x", x, QuantizeSettings(float_stem=False))
        for row in time_sections({"fp32": [f32], "int8": [q8]}, [x], batches, runs, warmup, quiet=True):
            rows.append({"in_channels": cin, "batch": row["batch"], "ratio_p50": row["ratio_p50"]["int8"]})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle", type=Path, help="bundle exported with `sdedge export CKPT --int8`")
    p.add_argument("--data", default=os.environ.get("SDEDGE_DATA"), help="dataset folder (default SDEDGE_DATA)")
    p.add_argument("--images", type=int, default=10000, help="test images for accuracy (the first N)")
    p.add_argument("--calib-samples", type=int, default=512, help="training images to calibrate re-quantized sections")
    p.add_argument("--methods", default="minmax,percentile,entropy", help="calibration methods compared")
    p.add_argument("--batches", default="1,16")
    p.add_argument("--runs", type=int, default=400, help="timed calls per contender at batch 1 (/4 at batch >= 8)")
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--profile-runs", type=int, default=200, help="calls per profiled section (0: no profiler)")
    p.add_argument("--no-old", dest="old", action="store_false",
                   help="leave out the int8-tensorrt-layout contender (the pre-issue-16 settings)")
    p.add_argument("--threads", type=int, default=None, help="threads for the accuracy runs (default: all CPUs)")
    p.add_argument("--json", type=Path, help="write every figure here")
    p.add_argument("--md", type=Path, help="write a Markdown summary here")
    args = p.parse_args(argv)

    from sdedge.export.quantize import QuantizeSettings, optimized_graph, quantize_section, tensorrt_qdq_bytes
    from sdedge.runtime import open_bundle

    t0 = time.time()
    bundle = open_bundle(args.bundle)  # checksums verified
    man = bundle.manifest
    raw = man.raw
    if not all(s.int8_file for s in man.sections):
        raise SystemExit(f"{args.bundle} has no INT8 sections: export it with `sdedge export CKPT --int8`")
    threads = args.threads or available_cpus()
    batches = [int(b) for b in args.batches.split(",")]
    methods = [m for m in args.methods.split(",") if m]
    contract = B.contract(1, args.warmup, args.runs, extra="see the module docstring of benchmarks/int8_bench.py")
    contract.update({
        "cpu_model": cpu_model(), "cpu_flags": cpu_flags(), "cpus_available": available_cpus(),
        "versions": {**contract["versions"], **B.versions(("onnx",)), "python": platform.python_version()},
        "bundle": str(args.bundle), "bundle_int8_record": raw.get("int8"),
        "batches": batches, "timed_calls_batch_ge_8": max(25, args.runs // 4),
        "accuracy_images": args.images, "calibration_samples": args.calib_samples,
        "inputs": "the sections' real inputs: FP32 chain features of the first test images",
        "timer": "time.perf_counter around one InferenceSession.run of one section (numpy in, numpy out)"})
    print(f"# int8_bench: {contract['machine']}; load avg {contract['load_average_at_start']}; avx512_vnni "
          f"{contract['cpu_flags'].get('avx512_vnni')}; onnxruntime {contract['versions'].get('onnxruntime')}",
          flush=True)

    data = load_data(raw, args.data, args.images, args.calib_samples)
    fp32_paths = [bundle.section_path(s.index) for s in man.sections]
    in_names = [raw["sections"][i]["inputs"][0]["name"] for i in range(len(fp32_paths))]
    fp32_sessions = [ort_session(pth, threads) for pth in fp32_paths]
    ref, test_inputs = chain(fp32_sessions, data["x_test"], collect=True)
    _, calib_inputs = chain(fp32_sessions, data["calib"], collect=True)

    results: dict[str, Any] = {"contract": contract, "accuracy": {}, "graphs": {}, "latency": [], "profile": {}}
    with tempfile.TemporaryDirectory(prefix="sdedge-int8-bench-") as tmp:
        contenders: dict[str, list[Path]] = {"int8": [bundle.section_path(s.index, "int8") for s in man.sections]}
        requant: dict[str, QuantizeSettings] = {f"requant-{m}": QuantizeSettings(method=m) for m in methods}
        if args.old:
            requant["int8-tensorrt-layout"] = QuantizeSettings(method="minmax", target="tensorrt")
        quant_seconds = {}
        for name, settings in requant.items():
            folder = Path(tmp) / name
            folder.mkdir()
            t = time.perf_counter()
            paths = []
            for k, (src, x) in enumerate(zip(fp32_paths, calib_inputs), start=1):
                dst = folder / f"s{k}.onnx"
                quantize_section(src, dst, in_names[k - 1], x, settings)
                paths.append(dst)
            quant_seconds[name] = time.perf_counter() - t
            contenders[name] = paths
            print(f"quantized {name} in {quant_seconds[name]:.1f} s", flush=True)
        conv_dir = Path(tmp) / "converted"
        conv_dir.mkdir()
        contenders["int8-converted-for-tensorrt"] = []
        for k, pth in enumerate(contenders["int8"], start=1):  # what build-engines --int8 would hand TensorRT
            (conv_dir / f"s{k}.onnx").write_bytes(tensorrt_qdq_bytes(pth))
            contenders["int8-converted-for-tensorrt"].append(conv_dir / f"s{k}.onnx")
        results["quantize_seconds"] = quant_seconds
        results["settings"] = {name: s.to_json() for name, s in requant.items()}

        print(f"accuracy on {len(data['y_test'])} {data['name']} test images", flush=True)
        for name, paths in contenders.items():
            got = chain([ort_session(pth, threads) for pth in paths], data["x_test"])[0]
            rows = exit_rows(ref, got, data["y_test"])
            results["accuracy"][name] = rows
            print(f"  {name}: " + ", ".join(f"exit {r['exit']} {r['fp32_accuracy']:.4f}->{r['int8_accuracy']:.4f} "
                                           f"({r['delta_pp']:+.2f}pp)" for r in rows), flush=True)

        for name, paths in [("fp32", fp32_paths)] + list(contenders.items()):
            results["graphs"][name] = [optimized_graph(pth).to_json() for pth in paths]

        timed = {"fp32": fp32_paths, "int8": contenders["int8"]}
        if args.old:
            timed["int8-tensorrt-layout"] = contenders["int8-tensorrt-layout"]
        print("latency (1 thread, interleaved call by call; INT8 p50 / FP32 p50)", flush=True)
        results["latency"] = time_sections(timed, test_inputs, batches, args.runs, args.warmup)

        print("stem probe: Conv(C_in -> 16, 3x3) + ReLU, INT8 / FP32", flush=True)
        hw = tuple(int(v) for v in raw["input"]["shape"][2:])
        results["stem_probe"] = stem_probe(hw, batches, max(100, args.runs // 4), args.warmup, Path(tmp))
        for r in results["stem_probe"]:
            print(f"  C_in {r['in_channels']:>2} batch {r['batch']:>2}: {r['ratio_p50']:.2f}x", flush=True)

        if args.profile_runs > 0:
            for name, paths in timed.items():
                for k, x_all in enumerate(test_inputs, start=1):
                    for batch in batches:
                        results["profile"].setdefault(name, []).append(
                            {"section": k, "batch": batch,
                             **profile_ops(paths[k - 1], np.ascontiguousarray(x_all[:batch]),
                                           args.profile_runs if batch < 8 else max(20, args.profile_runs // 4))})
    contract["load_average_end"] = B.load_average()
    contract["seconds"] = round(time.time() - t0, 1)
    if args.json:
        write_json_atomic(args.json, results)
    md = markdown(results)
    if args.md:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(args.md, md)
    print(md)
    return 0


def markdown(res: dict[str, Any]) -> str:
    c = res["contract"]
    flags = ", ".join(f for f, on in c["cpu_flags"].items() if on) or "unknown"
    lines = ["# INT8 vs FP32 sections on ONNX Runtime CPU (issue 16 item 4)", "",
             f"Command: `{c['command']}`  ",
             f"Date: {c['date_utc']}; {c['seconds']} s.  ",
             f"Machine: {c['machine']}; CPU flags: {flags}; load average {(c['load_average_at_start'] or [float('nan')])[0]:.2f} at start, "
             f"{c['load_average_end'][0]:.2f} at end (a shared machine: only side-by-side ratios mean anything).  ",
             f"Versions: {json.dumps(c['versions'])}.  ",
             f"Bundle: `{c['bundle']}`, INT8 record: `{json.dumps((c['bundle_int8_record'] or {}).get('quantization'))}`.",
             "", "## Latency: INT8 p50 / FP32 p50 per section (1 intra-op thread, interleaved call by call)", ""]
    names = [n for n in res["latency"][0]["ratio_p50"]] if res["latency"] else []
    lines.append("| section | batch | FP32 p50 ms | " + " | ".join(f"{n} ratio" for n in names) + " |")
    lines.append("|---|---|---|" + "---|" * len(names))
    for r in res["latency"]:
        lines.append(f"| s{r['section']} | {r['batch']} | {r['stats']['fp32']['p50_ms']:.3f} | "
                     + " | ".join(f"{r['ratio_p50'][n]:.2f}" for n in names) + " |")
    goal = 0.6
    cells = [(r["section"], r["batch"], r["ratio_p50"]["int8"]) for r in res["latency"] if "int8" in r["ratio_p50"]]
    missed = [f"s{k} batch {b} ({v:.2f})" for k, b, v in cells if v > goal]
    lines += ["", f"Goal INT8 <= {goal} x FP32: met in {len(cells) - len(missed)} of {len(cells)} cells"
              + (f"; missed: {', '.join(missed)}." if missed else ".")]
    for k, b, v in cells:
        if v <= goal:
            continue
        prof = {p["section"]: p for p in res["profile"].get("int8", []) if p["batch"] == b}.get(k)
        if prof:
            compute = sum(o["share"] for op, o in prof["ops"].items() if op in ("QLinearConv", "Conv", "QGemm"))
            rest = ", ".join(f"{op} {o['share']:.0%} ({o['nodes']} nodes)" for op, o in prof["ops"].items()
                             if op not in ("QLinearConv", "Conv", "QGemm"))
            lines.append(f"- s{k} batch {b}: convolutions and GEMM are {compute:.0%} of the INT8 kernel time; the rest "
                         f"is layout and requantisation around them, which the FP32 graph does not have (its NCHWc "
                         f"Conv fuses the residual Add and ReLU): {rest}.")
    if res.get("stem_probe"):
        lines += ["", "Stem probe, one Conv(C_in → 16, 3×3) + ReLU fully quantized, INT8 p50 / FP32 p50: "
                  + "; ".join(f"C_in {r['in_channels']} b{r['batch']} {r['ratio_p50']:.2f}" for r in res["stem_probe"])
                  + " (why dense Convs with fewer than 8 input channels stay float)."]
    lines += ["", "Why, and what TensorRT does instead: `docs/int8.md`."]
    lines += ["", f"## Accuracy per exit on {c['accuracy_images']} test images (FP32 → INT8, Δ in points, "
              "top-1 agreement with FP32)", ""]
    for name, rows in res["accuracy"].items():
        lines.append(f"- **{name}**: " + "; ".join(
            f"exit {r['exit']} {r['fp32_accuracy']:.4f} → {r['int8_accuracy']:.4f} ({r['delta_pp']:+.2f} pp, "
            f"agree {r['top1_agreement']:.3f})" for r in rows))
    lines += ["", "## What ONNX Runtime runs (op counts after its optimisations, per section)", ""]
    for name, graphs in res["graphs"].items():
        lines.append(f"- **{name}**: " + " / ".join(
            ", ".join(f"{op} {n}" for op, n in g["ops"].items()) + (f" [float Conv: {len(g['float_convs'])}]"
                                                                     if g["float_convs"] else "")
            for g in graphs))
    if res["profile"]:
        lines += ["", "## Profiler: share of kernel time per op type (top 5)", ""]
        for name, rows in res["profile"].items():
            for r in rows:
                top = list(r["ops"].items())[:5]
                lines.append(f"- {name} s{r['section']} b{r['batch']}: kernels {r['kernel_us_per_call']:.0f} µs/call; "
                             + ", ".join(f"{op} {v['share']:.0%} ({v['nodes']})" for op, v in top))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())

"""Pruning + distillation + INT8, side by side (issue 16's table).

Rows: the unpruned FP32 model; pruned to each ``--targets`` fraction of the MACs and recovered three ways
(``labels``: CE at every exit; ``distill``: the unpruned model as teacher; ``data-free``: distilled on
images synthesised from the teacher, no data read); each also as INT8 sections (``sdedge export --int8``).
Columns: parameters, MACs per exit, p50 latency per exit (ONNX Runtime CPU, 1 thread, batch 1: the sum
of the section p50s along the chain (MACs likewise: each section with its exit head), sections timed
interleaved across all rows; ``latency ratio ÷ MAC ratio`` per exit against the unpruned FP32 row: 1.00
when latency falls in proportion to MACs), test accuracy per exit and of the ensemble (ONNX Runtime on the exported
sections), and two areas under an anytime curve (:func:`sdedge.calibrate.curves.anytime_auc`: the mean,
over latency limits from 0 to the unpruned FP32 model's deepest-exit latency, of the best accuracy that fits
the limit; 0 before exit 1 fits; a cheaper model with the same accuracy scores higher):

* ``deadline AUC``: fixed exits at the interleaved p50 latencies above;
* ``calibrated AUC``: after ``sdedge calibrate`` of each bundle and precision on the validation split
  (temperatures, per-exit thresholds, the latency profile it measures: 1 thread, batch 1, mean ms), the
  fixed exits and the confidence policy's threshold sweep replayed on the *test* images with the calibrated
  temperatures; the calibrated thresholds' own point (test accuracy at mean latency) is reported beside it.

``--round-to 8 16`` adds, per target, rows pruned with channel counts rounded to those multiples (recovered
with each of ``--round-mode``, distill by default; ``--round-mode distill labels`` gives both): ONNX Runtime's
CPU kernels block channels by 8/16. ``--iterative STEPS EPOCHS`` adds, at the smallest target, the iterative
schedule (``--steps STEPS --step-epochs EPOCHS``: prune, recover for EPOCHS, prune again, ..., then the final
recovery) beside one-shot pruning given the same total epochs
(``--epochs + (STEPS - 1) * EPOCHS``), both distilled.

    python benchmarks/compress_bench.py --teacher runs/fm/best.pt --data DIR --targets 0.7 0.5 --epochs 3 \\
        --work /tmp/cb --json benchmarks/results/compress_bench.json --md benchmarks/results/compress_bench.md

Everything it trains goes under ``--work`` (re-runs reuse what is there). Figures depend on the teacher
and on the epochs given: the results file records both.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sdedge.calibrate import benchmarking as B  # noqa: E402
from sdedge.common.atomic import write_text_atomic  # noqa: E402
from sdedge.common.jsonio import write_json_atomic  # noqa: E402


def _train_cfg(args, out: Path, epochs: int | None = None):
    from sdedge.train import TrainConfig

    return TrainConfig(epochs=epochs or args.epochs, batch_size=args.batch_size, lr=args.lr, schedule="cosine", data=args.data,
                       output=str(out), device="cpu" if args.cpu else "auto", threads=args.threads, progress=False,
                       verbose=not args.quiet)


def prune_rows(args) -> dict[str, str]:
    from sdedge.compress import PruneConfig, SynthConfig, prune

    ckpts = {"unpruned": args.teacher}
    for t in args.targets:
        for mode in args.modes:
            name = f"p{round(t * 100)}-{mode}"
            out = Path(args.work) / name
            t0 = time.time()
            cfg = PruneConfig(checkpoint=args.teacher, output=str(out), target_macs=t,
                              recovery="labels" if mode == "labels" else "distill", data_free=mode == "data-free",
                              synth=SynthConfig(images=args.synth_images, iterations=args.synth_iterations),
                              synth_val_images=max(64, args.synth_images // 8), train=_train_cfg(args, out),
                              importance=args.importance)
            res = prune(cfg)
            print(f"# {name}: {time.time() - t0:.0f} s, MACs kept {res.report.macs_kept:.3f}", flush=True)
            ckpts[name] = res.best_checkpoint
        for r in args.round_to:  # channel counts multiples of r: what the CPU's blocked kernels want
            for mode in args.round_mode:
                name = f"p{round(t * 100)}-{mode}-round{r}"
                out = Path(args.work) / name
                res = prune(PruneConfig(checkpoint=args.teacher, output=str(out), target_macs=t, round_to=r,
                                        recovery=mode, train=_train_cfg(args, out), importance=args.importance))
                print(f"# {name}: MACs kept {res.report.macs_kept:.3f}, channels {res.report.section_channels_after}",
                      flush=True)
                ckpts[name] = res.best_checkpoint
        if args.iterative and t == min(args.targets):  # iterative vs one-shot at equal recovery epochs
            steps, step_epochs = args.iterative
            total = args.epochs + (steps - 1) * step_epochs
            runs = {f"p{round(t * 100)}-distill-steps{steps}x{step_epochs}": dict(steps=steps, step_epochs=step_epochs,
                                                                                 epochs=args.epochs),
                    f"p{round(t * 100)}-distill-oneshot{total}ep": dict(steps=1, step_epochs=0, epochs=total)}
            for name, kw in runs.items():
                out = Path(args.work) / name
                t0 = time.time()
                res = prune(PruneConfig(checkpoint=args.teacher, output=str(out), target_macs=t, recovery="distill",
                                        steps=kw["steps"], step_epochs=kw["step_epochs"], importance=args.importance,
                                        train=_train_cfg(args, out, kw["epochs"])))
                print(f"# {name}: {time.time() - t0:.0f} s, MACs kept {res.report.macs_kept:.3f}", flush=True)
                ckpts[name] = res.best_checkpoint
    return ckpts


def export_rows(args, ckpts: dict[str, str]) -> dict[str, Path]:
    from sdedge.export import ExportConfig, export_bundle

    bundles = {}
    for name, ck in ckpts.items():
        out = Path(args.work) / "bundles" / name
        if not (out / "manifest.json").is_file():
            export_bundle(ExportConfig(checkpoint=ck, output=str(out), int8=True, data=args.data, threads=1,
                                       int8_eval_samples=500, parity_samples=32))
        bundles[name] = out
    return bundles


def accuracy(bundle, images: np.ndarray, labels: np.ndarray, precision: str) -> dict[str, Any]:
    from sdedge.export.parity import chain_logits, ort_session
    from sdedge.export.samples import preprocess
    from sdedge.runtime.policies import softmax

    sessions = [ort_session(bundle.section_path(s.index, precision), None)
                for s in bundle.manifest.sections]
    logits, _ = chain_logits(sessions, preprocess(images, bundle.manifest.raw["input"]["preprocess"]))
    exits = [float(np.mean(z.argmax(1) == labels)) for z in logits]
    ens = sum(softmax(z) for z in logits)  # the mean of the exits' probabilities, as the trainer's ensemble
    return {"exits": exits, "ensemble": float(np.mean(ens.argmax(1) == labels)), "logits": np.stack(logits)}


def calibrated_curve(path: Path, precision: str, args, test_logits: np.ndarray, labels: np.ndarray) -> dict:
    """``sdedge calibrate`` on the validation split (nothing written), then its curves replayed on the test set."""
    from sdedge.calibrate.api import calibrate_bundle
    from sdedge.calibrate.curves import offline_curves
    from sdedge.calibrate.thresholds import ReplayTable, exit_costs_from_profile

    res = calibrate_bundle(path, data=args.data, split="val", write=False, profile_runs=args.cal_runs,
                           overhead_runs=args.cal_runs, intra_op_threads=1, precision=precision)
    k = test_logits.shape[0]
    costs = exit_costs_from_profile(res.profiles[res.device], k, stat="mean_ms")
    temps = [f.temperature for f in res.temperature_fits]
    table = ReplayTable(test_logits, labels, temps, res.calibration["criterion"])
    curves = offline_curves(table, costs, {"thresholds": res.thresholds.thresholds, "enabled": res.thresholds.enabled})
    point = curves.series["calibrated"][0]
    return {"exit_mean_ms": [round(float(v), 4) for v in costs.cumulative],
            "points": curves.series["fixed_exit"] + curves.series["confidence"],
            "temperatures": temps, "thresholds": list(res.thresholds.thresholds),
            "test_accuracy": point["accuracy"], "test_mean_ms": point["mean_latency_ms"],
            "test_mean_exit": point["mean_exit"]}


def section_latencies(bundles: dict[str, Any], images: np.ndarray, runs: int, warmup: int) -> dict[str, dict]:
    """p50 ms per section, per (row, precision), all sections of one index timed interleaved."""
    from sdedge.export.parity import chain_logits, ort_session
    from sdedge.export.samples import preprocess

    k = len(next(iter(bundles.values())).manifest.sections)
    out: dict[str, dict] = {f"{n}/{p}": [] for n in bundles for p in ("fp32", "int8")}
    inputs = {}
    for n, b in bundles.items():
        x = preprocess(images[:1], b.manifest.raw["input"]["preprocess"])
        sessions = [ort_session(b.section_path(s.index), 1) for s in b.manifest.sections]
        _, ins = chain_logits(sessions, x, collect_inputs=True)
        inputs[n] = ins
    for i in range(k):
        calls = {}
        for n, b in bundles.items():
            for p in ("fp32", "int8"):
                s = ort_session(b.section_path(i + 1, p), 1)
                feed = {s.get_inputs()[0].name: np.ascontiguousarray(inputs[n][i][:1])}
                calls[f"{n}/{p}"] = (lambda _x, s=s, f=feed: s.run(None, f))
        times = B._interleaved(calls, [None], runs, warmup, seed=i)
        for name, t in times.items():
            out[name].append(B.stats_ms(t)["p50_ms"])
        print(f"  section {i + 1} timed ({len(calls)} contenders x {runs} calls)", flush=True)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True, help="the trained (unpruned) checkpoint")
    p.add_argument("--data", required=True, help="dataset folder (test split for accuracy, train for recovery)")
    p.add_argument("--targets", type=float, nargs="+", default=[0.7, 0.5])
    p.add_argument("--modes", nargs="+", default=["labels", "distill", "data-free"],
                   choices=["labels", "distill", "data-free"])
    p.add_argument("--importance", default="magnitude")
    p.add_argument("--round-to", type=int, nargs="*", default=[],
                   help="also prune with channel counts rounded to these multiples (one row each per target)")
    p.add_argument("--round-mode", nargs="+", default=["distill"], choices=["labels", "distill"],
                   help="recovery of the --round-to rows (one row per mode)")
    p.add_argument("--iterative", type=int, nargs=2, metavar=("STEPS", "EPOCHS"), default=None,
                   help="also prune in STEPS steps recovering EPOCHS between them, beside one-shot with equal epochs")
    p.add_argument("--cal-runs", type=int, default=200, help="latency profile runs per section of each calibration")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--synth-images", type=int, default=1024)
    p.add_argument("--synth-iterations", type=int, default=100)
    p.add_argument("--test-images", type=int, default=10000)
    p.add_argument("--runs", type=int, default=500)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--cpu", action="store_true", help="train on the CPU even if CUDA is present")
    p.add_argument("--work", required=True)
    p.add_argument("--json", default=None)
    p.add_argument("--md", default=None)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args()

    from sdedge.calibrate.curves import anytime_auc
    from sdedge.common.datasets import find_folder, read_split
    from sdedge.runtime.bundle import open_bundle

    t0 = time.time()
    record: dict[str, Any] = B.contract(1, args.warmup, args.runs, extra="benchmarks/compress_bench.py docstring")
    record["settings"] = vars(args)
    ckpts = prune_rows(args)
    paths = export_rows(args, ckpts)
    bundles = {n: open_bundle(b) for n, b in paths.items()}
    man = bundles["unpruned"].manifest
    name = man.raw["model"]["data"]["dataset"]
    test = read_split(name, "test", find_folder(name, args.data), None)
    idx = np.arange(min(args.test_images, len(test)))
    images, labels = test.images[idx], test.labels[idx]
    lat = section_latencies(bundles, images, args.runs, args.warmup)
    rows = []
    horizon = float(np.sum(lat["unpruned/fp32"]))
    for n, b in bundles.items():
        prune_rec = None
        pj = Path(args.work) / n / "prune.json"
        if pj.is_file():
            prune_rec = json.loads(pj.read_text())
        secs = b.manifest.raw["sections"]  # a section's MACs include its exit head: the chain computes them all
        macs = [int(v) for v in np.cumsum([sec["macs"] for sec in secs])]
        params = int(sum(sec["params"] for sec in secs))
        for prec in ("fp32", "int8"):
            acc = accuracy(b, images, labels, prec)
            ms = [float(v) for v in np.cumsum(lat[f"{n}/{prec}"])]
            fixed = [{"mean_latency_ms": v, "accuracy": a} for v, a in zip(ms, acc["exits"])]
            cal = calibrated_curve(paths[n], prec, args, acc["logits"], labels)
            rows.append({"row": n, "precision": prec, "params": params,
                         "macs_per_exit": macs, "p50_ms_per_exit": [round(v, 4) for v in ms],
                         "test_accuracy_per_exit": acc["exits"], "test_ensemble": acc["ensemble"],
                         "anytime_auc": anytime_auc(fixed, horizon), "calibrated": cal,
                         "macs_kept": prune_rec["report"]["macs_kept"] if prune_rec else 1.0})
            print(f"{n:>16} {prec}: acc {'/'.join(f'{a:.4f}' for a in acc['exits'])} ens {acc['ensemble']:.4f} "
                  f"p50 {'/'.join(f'{v:.3f}' for v in ms)} ms auc {rows[-1]['anytime_auc']:.4f} calibrated "
                  f"{cal['test_accuracy']:.4f} at {cal['test_mean_ms']:.3f} ms", flush=True)
    base = next(r for r in rows if r["row"] == "unpruned" and r["precision"] == "fp32")
    cal_horizon = base["calibrated"]["exit_mean_ms"][-1]  # the unpruned FP32 deepest exit, by its own profile
    for r in rows:
        r["calibrated"]["anytime_auc"] = anytime_auc(r["calibrated"].pop("points"), cal_horizon)
        r["latency_ratio_per_exit"] = [round(a / b_, 3) for a, b_ in zip(r["p50_ms_per_exit"], base["p50_ms_per_exit"])]
        r["mac_ratio_per_exit"] = [round(a / b_, 3) if a and b_ else None
                                   for a, b_ in zip(r["macs_per_exit"], base["macs_per_exit"])]
        r["accuracy_change_pp"] = [round(100 * (a - b_), 2) for a, b_ in zip(r["test_accuracy_per_exit"],
                                                                             base["test_accuracy_per_exit"])]
    record["rows"] = rows
    record["seconds"] = round(time.time() - t0, 1)
    if args.json:
        write_json_atomic(args.json, record, indent=1)
    md = markdown(record)
    if args.md:
        write_text_atomic(args.md, md)
    print(md)
    return 0


def markdown(rec: dict) -> str:
    lines = ["# Pruning + distillation + INT8 (benchmarks/compress_bench.py)", "",
             f"Command: `{rec['command']}`  ", f"Date: {rec['date_utc']}; {rec['seconds']} s.  ",
             f"Machine: {rec['machine']}; load average at start {rec['load_average_at_start']}.  ",
             f"Versions: {json.dumps(rec['versions'])}.  ",
             f"Settings: {json.dumps({k: v for k, v in rec['settings'].items() if k not in ('json', 'md', 'quiet')})}.", "",
             "| row | prec | MACs kept | params | MACs/exit (M) | p50 ms/exit | latency ÷ unpruned | latency ratio ÷ MAC ratio | test acc/exit | Δ pp/exit | ens | deadline AUC | calibrated AUC | calibrated: test acc @ mean ms |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rec["rows"]:
        macs = "/".join(f"{m / 1e6:.2f}" if m else "-" for m in r["macs_per_exit"])
        lines.append(f"| {r['row']} | {r['precision']} | {r['macs_kept']:.3f} | {r['params'] or '-'} | {macs} | "
                     + "/".join(f"{v:.3f}" for v in r["p50_ms_per_exit"]) + " | "
                     + "/".join(f"{v:.2f}" for v in r["latency_ratio_per_exit"]) + " | "
                     + "/".join(f"{a / m:.2f}" if m else "-" for a, m in zip(r["latency_ratio_per_exit"],
                                                                           r["mac_ratio_per_exit"])) + " | "
                     + "/".join(f"{a:.4f}" for a in r["test_accuracy_per_exit"]) + " | "
                     + "/".join(f"{d:+.2f}" for d in r["accuracy_change_pp"]) + f" | {r['test_ensemble']:.4f} | "
                     f"{r['anytime_auc']:.4f} | {r['calibrated']['anytime_auc']:.4f} | "
                     f"{r['calibrated']['test_accuracy']:.4f} @ {r['calibrated']['test_mean_ms']:.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())

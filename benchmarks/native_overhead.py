"""What a C caller pays for the session: the native core beside ONNX Runtime's C API alone (issue 12's figures).

    python benchmarks/native_overhead.py BUNDLE [--threads 1] [--runs 3000] [--warmup 300] [--rounds 3]
                                         [--split BUNDLE_V2] [--build-dir build/native-bench] [--json out.json]

Builds ``native/bench/overhead.c`` with CMake (``-DSDEDGE_BUILD_BENCH=ON``, Release, its own copy of the core
from this checkout) and runs it ``--rounds`` times on the bundle, with the ONNX Runtime library of the
installed ``onnxruntime`` wheel (the one the core loads from Python too). Each round, in one C process:
``full.onnx`` and the naive chain of section graphs through ONNX Runtime's C API, and
``sdedge_session_infer_f32`` with no policy, with a 10 s budget (deadline only: the whole network fits, so
``full.onnx`` answers by rule 9; ``deadline_sections``: the same on a session without ``full.onnx``, the section
loop) and with threshold 1.0 (the confidence policy computed at every exit, never stopping): batch 1, the same float input, interleaved call
by call in a shuffled order (see the C file). No Python is timed. ``--split BUNDLE_V2``: the same model exported
with ``--format-version 2`` (exit heads as graphs of their own); its deadline-only and confidence sessions
join the same rounds (``deadline_split``, ``confidence_split``), so the heads' share is measured side by side.

Printed: each round's p50 per contender and the session contenders over ``full`` and over ``chain``; then the
median over rounds of each ratio. Goals (issue 12): deadline only <= 1.03 x ``full.onnx``, the confidence
policy <= 1.15 x. ``--json`` records the command, machine, versions, load and every round's figures.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from sdedge.calibrate import benchmarking as B
from sdedge.common.atomic import write_text_atomic

REPO = Path(__file__).resolve().parents[1]
SESSION = ("none", "deadline", "confidence", "deadline_sections", "deadline_split", "confidence_split")
GOALS = {"deadline": 1.03, "confidence": 1.15}


def build(build_dir: Path) -> Path:
    """Configure and build the ``sdedge_overhead`` target; its path."""
    subprocess.run(["cmake", "-S", str(REPO / "native"), "-B", str(build_dir), "-DSDEDGE_BUILD_BENCH=ON",
                    "-DCMAKE_BUILD_TYPE=Release"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", str(build_dir), "--target", "sdedge_overhead", "-j", str(os.cpu_count() or 1)],
                   check=True, stdout=subprocess.DEVNULL)
    return build_dir / "sdedge_overhead"


def ratios(contenders: dict) -> dict[str, dict[str, float]]:
    full, chain = contenders["full"]["p50_us"], contenders["chain"]["p50_us"]
    return {c: {"over_full": contenders[c]["p50_us"] / full, "over_chain": contenders[c]["p50_us"] / chain}
            for c in ("chain", *SESSION) if c in contenders}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=3000, help="timed calls per contender and round")
    p.add_argument("--warmup", type=int, default=300, help="untimed calls per contender first")
    p.add_argument("--rounds", type=int, default=3, help="separate processes, to show the spread")
    p.add_argument("--split", metavar="BUNDLE_V2", help="the same model exported with --format-version 2")
    p.add_argument("--build-dir", default=str(REPO / "build" / "native-bench"))
    p.add_argument("--json", help="write every figure here")
    args = p.parse_args(argv)

    from sdedge.runtime.native_engine import onnxruntime_library

    ort = onnxruntime_library()
    if ort is None:
        sys.exit("the onnxruntime wheel is not installed (its capi/libonnxruntime.so.* is the library timed)")
    exe = build(Path(args.build_dir))
    rounds = []
    for r in range(args.rounds):
        out = subprocess.run([str(exe), str(Path(args.bundle).resolve()), ort, "--runs", str(args.runs), "--warmup",
                              str(args.warmup), "--threads", str(args.threads)]
                             + (["--split", str(Path(args.split).resolve())] if args.split else []),
                             check=True, capture_output=True, text=True).stdout
        res = json.loads(out)
        res["ratios"] = ratios(res["contenders"])
        rounds.append(res)
        c = res["contenders"]
        print(f"round {r + 1}: p50 us " + ", ".join(f"{n} {v['p50_us']:.1f}" for n, v in c.items()))
        print("          " + ", ".join(f"{n} {q['over_full']:.3f}x full / {q['over_chain']:.3f}x chain"
                                       for n, q in res["ratios"].items()))
    median = {n: {k: statistics.median(r["ratios"][n][k] for r in rounds) for k in ("over_full", "over_chain")}
              for n in rounds[0]["ratios"]}
    print(f"\nmedian over {args.rounds} rounds (p50 ratios; goals: deadline <= 1.03 x full, confidence <= 1.15 x):")
    print(f"{'contender':16s} {'/full':>7s} {'/chain':>7s}  goal")
    for n, q in median.items():
        goal = GOALS.get(n)
        verdict = "" if goal is None else f"<= {goal}: {'met' if q['over_full'] <= goal else 'MISSED'}"
        print(f"{n:16s} {q['over_full']:7.3f} {q['over_chain']:7.3f}  {verdict}")
    if args.json:
        contract = B.contract(args.threads, args.warmup, args.runs,
                              extra="C process: ONNX Runtime C API (full, chain) and sdedge_session_infer_f32, float "
                                    "input, CLOCK_MONOTONIC around one call; the onnxruntime library: " + ort)
        write_text_atomic(args.json, json.dumps({"contract": contract, "rounds": rounds, "median_ratios": median},
                                                indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

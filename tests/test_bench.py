"""sdedge bench: per-exit latency, split overhead, decision overhead, deadline compliance, live curves, CLI.

Small run counts keep it fast; the assertions are about structure and invariants that hold on any
machine (ordering of exits, shares in range, every budget measured, curves present), not about speed.
"""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sdedge.calibrate.bench import BenchConfig, run_bench
from sdedge.runtime import SessionOptions, open_bundle
from sdedge.common.errors import PolicyError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Budgets whose outcome does not depend on the machine's speed or load: 1 ns is below the cost of any
# infer call (Python and one ONNX Runtime run alone take microseconds), so it is always missed; 60 s is
# above any call of the tiny model even beside a CPU burner on a shared 2-core CI box (a call takes
# milliseconds), so it is always met with every section run.
TIGHT_MS, GENEROUS_MS = 1e-6, 60_000.0


def test_bench_measures_every_part_and_saves_json(tiny_bundle: Path, digits_splits, tmp_path: Path) -> None:
    cfg = BenchConfig(session=SessionOptions(backend="onnxruntime", intra_op_threads=1, warmup=5), runs=30, warmup=5,
                      calls=60, budgets_ms=(TIGHT_MS, GENEROUS_MS),
                      burn=1, plot=str(tmp_path / "bench.png"), curve_samples=60, json_path=str(tmp_path / "b.json"))
    res = run_bench(tiny_bundle, cfg, images=digits_splits.val.images, labels=digits_splits.val.labels)
    k = open_bundle(tiny_bundle).manifest.num_exits
    lat = res.latency
    assert [e["exit"] for e in lat["exits"]] == list(range(1, k + 1))
    assert all(0 < e["p50_ms"] <= e["p99_ms"] for e in lat["exits"])
    assert lat["split_overhead"] > 0 and lat["full"]["p50_ms"] > 0  # the tiny bundle has full.onnx
    assert all(0 < e["mac_share"] <= 1.5 for e in lat["exits"])
    assert lat["contract"]["threads"] == 1 and "machine" in lat["contract"]
    assert res.overhead["per_exit"] and res.overhead["plain"]["p50_ms"] > 0
    # every budget, quiet and beside a burner
    assert [(c["budget"], c["burner_processes"]) for c in res.compliance] == \
        [(TIGHT_MS, 0), (GENEROUS_MS, 0), (TIGHT_MS, 1), (GENEROUS_MS, 1)]
    for c in res.compliance:
        assert c["calls"] == 60 and sum(c["exit_histogram"]) == 60
    tight, generous = res.compliance[0], res.compliance[1]
    assert tight["exit_histogram"][0] == 60 and tight["met_share"] == 0.0  # exit 1 is the floor, late
    assert generous["exit_histogram"][-1] == 60 and generous["met_share"] == 1.0  # every section, on time
    saved = json.loads((tmp_path / "b.json").read_text())
    assert set(saved) >= {"latency", "overhead", "compliance", "curves", "device"}
    text = res.summary()
    assert "split overhead" in text and "deadline compliance" in text and "decision overhead" in text
    # live anytime curves beside the replayed/simulated ones
    png = Path(res.files["png"]).read_bytes()
    assert png[:8] == PNG_SIGNATURE
    from PIL import Image

    with Image.open(tmp_path / "bench.png") as im:
        assert im.format == "PNG" and 300 <= im.size[0] <= 3000 and 300 <= im.size[1] <= 3000
    with open(res.files["csv"], newline="") as f:
        series = {r["series"] for r in csv.DictReader(f)}
    assert {"fixed_exit", "confidence", "deadline", "deadline_live", "confidence_live"} <= series
    live = {p["value"]: p for p in res.curves.series["deadline_live"]}
    assert live[GENEROUS_MS]["mean_exit"] == k and live[GENEROUS_MS]["deadline_met_share"] == 1.0


def test_bench_arguments_are_checked(tiny_bundle: Path) -> None:
    with pytest.raises(PolicyError, match="budgets"):
        run_bench(tiny_bundle, BenchConfig(budgets_ms=(1.0, -2.0)))
    with pytest.raises(PolicyError, match="burn"):
        run_bench(tiny_bundle, BenchConfig(burn=-1))


def test_cli_bench(tiny_bundle: Path, tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "sdedge.cli", "bench", str(tiny_bundle), "--runs", "20", "--warmup", "3",
                          "--calls", "30", "--threads", "1", "--backend", "onnxruntime", "--json",
                          str(tmp_path / "bench.json"), "-q"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "latency/full" in out.stdout and "met excl. floor" in out.stdout
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert len(saved["compliance"]) in (4, 5)  # exit-1 p99 and 50/75/100/125 % of the full p50 (distinct)
    budgets = [c["budget"] for c in saved["compliance"]]
    assert budgets == sorted(budgets) and np.all(np.diff(budgets) > 0)
    bad = subprocess.run([sys.executable, "-m", "sdedge.cli", "bench", str(tiny_bundle), "--budgets", "1,x"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "comma-separated" in bad.stderr


def test_results_header_names_the_benchmarks_own_command_and_versions() -> None:
    """Every results file starts with the same header (one helper): a benchmark run from a test or another
    script records its own command line, and a package that is not installed is recorded as such."""
    import re

    from sdedge.calibrate.benchmarking import provenance

    h = provenance("benchmarks/example.py", ["--seeds", "3"], ("numpy", "no-such-package-sdedge"))
    assert h["command"] == "python benchmarks/example.py --seeds 3"
    assert h["versions"] == {"numpy": np.__version__, "no-such-package-sdedge": None}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", h["date_utc"])
    load = h["load_average_at_start"]  # None only where the OS has no load average
    assert "SIMD" in h["machine"] and (load is None or (len(load) == 3 and min(load) >= 0))

"""sdedge quickstart: the README's first command runs end to end (short setting, one CPU thread).

``--short`` is checked to be short by the work it does (epochs, width, profile runs), not by a wall-clock
bound: the same work takes 3x longer on a loaded CI machine, and a hang is caught by the subprocess timeout.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sdedge.runtime import AnytimeSession, open_bundle


def test_quickstart_runs_end_to_end(tmp_path: Path) -> None:
    out_dir = tmp_path / "qs"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "sdedge.cli", "quickstart", "--short", "--threads", "1", "-o",
                          str(out_dir)], capture_output=True, text=True, timeout=300, env=env, cwd=str(tmp_path))
    print(f"quickstart --short took {time.perf_counter() - t:.1f} s")  # for the log; the work is checked below
    assert out.returncode == 0, out.stderr[-4000:]
    text = out.stdout
    for needle in ("exit table", "answers (budget", "files:", "calibration.json", "target:"):
        assert needle in text, needle
    # the progress went to stderr, step by step
    assert all(f"{i}/4" in out.stderr for i in range(1, 5))
    summary = json.loads((out_dir / "quickstart.json").read_text())
    bundle = Path(summary["bundle"])
    assert bundle == out_dir / "bundle" and (out_dir / "run" / "best.pt").is_file()
    b = open_bundle(bundle)  # verified: sections, full.onnx, calibration and profile checksums
    assert b.calibration is not None and b.profile_names()
    # --short did the short setting's work: its epochs and width, and a short latency profile
    from sdedge.quickstart import SHORT

    run = json.loads((out_dir / "run" / "results.json").read_text())
    assert [h["epoch"] for h in run["history"]] == list(range(1, SHORT["epochs"] + 1))
    assert run["config"]["backbone_kwargs"] == SHORT["backbone_kwargs"] and run["config"]["epochs"] == SHORT["epochs"]
    assert all(b.profile(d)["runs"] <= 30 for d in b.profile_names())
    k = b.manifest.num_exits
    assert [e["exit"] for e in summary["exits"]] == list(range(1, k + 1))
    assert all(e["latency_ms"] > 0 and e["mac_share"] > 0 for e in summary["exits"])
    assert len(summary["answers"]) == 5 and summary["budget_ms"] > 0
    assert all(1 <= a["exit"] <= k for a in summary["answers"])
    png = out_dir / "anytime.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the bundle answers with the calibrated thresholds straight away
    with AnytimeSession(bundle, backend="onnxruntime", intra_op_threads=1, warmup=0) as s:
        c, h, w = s.input_shape
        import numpy as np

        r = s.infer(np.zeros((h, w, c), np.uint8), threshold="calibrated")
        assert 1 <= r.exit_index <= k


def test_quickstart_refuses_an_unknown_dataset(tmp_path: Path) -> None:
    from sdedge.quickstart import QuickstartConfig, quickstart
    from sdedge.common.errors import DataError

    with pytest.raises(DataError, match="digits"):
        quickstart(QuickstartConfig(dataset="imagenet", output=str(tmp_path / "x"), progress=False))

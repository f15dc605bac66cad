"""The shared test vectors the C++ core replays are what the Python runtime decides today.

``native/tests/vectors/deadline_trace.json`` is written by ``native/tests/deadline_vectors.py`` from the
Python deadline rules and replayed bit for bit by ``native/tests/unit_deadline.cpp``. If the Python rules
change and the file is not regenerated, the C++ test would keep passing against stale vectors: this test
regenerates the file and requires the committed copy to be identical.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VECTORS = REPO / "native" / "tests" / "vectors" / "deadline_trace.json"


def test_committed_deadline_vectors_match_the_python_rules(tmp_path: Path) -> None:
    out = tmp_path / "trace.json"
    run = subprocess.run([sys.executable, str(REPO / "native" / "tests" / "deadline_vectors.py"), str(out)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert out.read_bytes() == VECTORS.read_bytes(), (
        "native/tests/vectors/deadline_trace.json is stale: regenerate it with "
        "`python native/tests/deadline_vectors.py` and make the C++ port follow (ctest unit_deadline)")

"""The runtime imports and runs without PyTorch (a Jetson image often has none).

Two proofs: a subprocess of this interpreter where ``import torch`` is made to fail, and, when CI sets
``SDEDGE_NOTORCH_PYTHON`` to the python of a separate environment that never had torch installed,
the same script under that interpreter. The static check of every module's imports is in
``tests/test_architecture.py``.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


SCRIPT = r"""
import sys
if sys.argv[2] == "block":
    sys.modules["torch"] = None  # any `import torch` now raises ImportError
import numpy as np
import sdedge.runtime as rt
from sdedge.runtime import AnytimeSession
from sdedge.runtime import policies, profile, calibration, preprocess, session
from sdedge.runtime.backends import create_backend, onnxruntime, tensorrt
from sdedge.common import hostinfo
s = AnytimeSession(sys.argv[1], backend="onnxruntime", intra_op_threads=1, warmup=1)
c, h, w = s.input_shape
x = np.random.default_rng(0).integers(0, 256, (3, h, w, c), dtype=np.uint8)
rs = s.infer(x, budget_ms=1000, threshold=0.5)
assert len(rs) == 3 and all(1 <= r.exit_index <= s.num_exits for r in rs)
assert s.infer_all_exits(x).shape == (s.num_exits, 3, len(s.classes))
from sdedge.commands import run as run_cmd  # the CLI subcommand module imports torch-free too
core = ("sdedge.models", "sdedge.losses", "sdedge.train", "sdedge.data", "sdedge.checkpoint", "torch")
bad = [m for m, mod in list(sys.modules.items())
       if mod is not None and any(m == c or m.startswith(c + ".") for c in core)]
assert not bad, bad
print("OK", s.device_name, rs[0].exit_index)
"""


def run_script(python: str, bundle: Path, mode: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    return subprocess.run([python, "-c", SCRIPT, str(bundle), mode], capture_output=True, text=True, timeout=300,
                          env=env, cwd=str(bundle.parent))


def test_runtime_runs_with_torch_blocked(tiny_bundle: Path) -> None:
    out = run_script(sys.executable, tiny_bundle, "block")
    assert out.returncode == 0 and out.stdout.startswith("OK"), out.stderr[-3000:]


@pytest.mark.skipif(not os.environ.get("SDEDGE_NOTORCH_PYTHON"), reason="SDEDGE_NOTORCH_PYTHON not set (CI sets it)")
def test_runtime_runs_in_an_environment_without_torch(tiny_bundle: Path) -> None:
    py = os.environ["SDEDGE_NOTORCH_PYTHON"]
    probe = subprocess.run([py, "-c", "import torch"], capture_output=True, text=True, timeout=120)
    assert probe.returncode != 0, f"{py} has torch installed; it must be a torch-free environment"
    out = run_script(py, tiny_bundle, "plain")
    assert out.returncode == 0 and out.stdout.startswith("OK"), out.stderr[-3000:]

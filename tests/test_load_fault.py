"""A short run of benchmarks/load_fault.py: mixed valid/invalid load on the real server, kill -9 during export/calibrate.

500 requests from 8 loopback clients against ``sdedge serve`` in its own process: every request is
answered with its expected status (no connection errors, no 5xx), the server's RSS stays flat and the
server is still ready. Then ``sdedge export --force`` and ``sdedge calibrate`` are each SIGKILLed 3 times
at stratified random points of their run: the bundle verifies and loads after every kill, and one more
run of each succeeds on top of whatever the kills left. The full-size run (10 000 requests, 20 kills
each) is ``python benchmarks/load_fault.py`` (figures in docs/robustness.md).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")


@pytest.fixture(scope="module")
def lf(load_fault):
    return load_fault  # benchmarks/load_fault.py (conftest)


def test_mixed_load_is_answered_without_errors_and_memory_stays_flat(lf, tiny_bundle: Path, tmp_path: Path) -> None:
    rep = lf.run_load(tiny_bundle, requests=500, clients=8, budget_ms=50.0, seed=1, warmup_share=0.2,
                      log=tmp_path / "server.log", say=lambda s: None)
    assert rep.sent == 500 and rep.answered == 500, rep.wrong_examples
    assert rep.connection_errors == 0 and rep.server_errors_5xx == 0, rep.wrong_examples
    assert rep.wrong_status == 0, rep.wrong_examples
    assert len(rep.by_kind) >= 15  # the mix really mixed valid and invalid kinds
    assert rep.valid_infers > 200 and rep.deadline_met_share is not None
    assert rep.rss_growth_kb < 32 * 1024, rep  # flat: well under 32 MiB over 400 requests
    assert rep.server_alive_after and rep.server_ready_after


@pytest.mark.parametrize("command", ["export", "calibrate"])
def test_kill_9_midway_always_leaves_a_valid_bundle(lf, command: str, tiny_checkpoint: Path, tiny_bundle: Path,
                                                    tmp_path: Path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, copy)
    cmd = lf.export_cmd(tiny_checkpoint, copy) if command == "export" else lf.calibrate_cmd(copy)
    rep = lf.run_kills(command, cmd, copy, kills=3, seed=7, say=lambda s: None)
    assert rep.kills == 3 and rep.valid_after_kill == 3, rep.invalid
    assert rep.final_run_ok and rep.final_valid, rep.invalid
    if command == "export":  # a killed export's staging folder is removed by the next export
        assert rep.leftover_staging_after_final == 0

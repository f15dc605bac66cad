"""``benchmarks/deadline_frontier.py``: the replay drives the runtime's own deadline rules on recorded times,
and its oracle and goal bookkeeping are right on scripted traces."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from sdedge.calibrate import benchmarking as B

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fr():
    spec = importlib.util.spec_from_file_location("deadline_frontier", REPO / "benchmarks" / "deadline_frontier.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclass resolves annotations through sys.modules
    spec.loader.exec_module(mod)
    return mod


def _trace(fr, secs: np.ndarray, own: np.ndarray, budgets: np.ndarray, rows: np.ndarray | None = None):
    n, k = secs.shape
    return fr.Trace("steady", np.ones(n, np.int64) if rows is None else rows, budgets, own, secs,
                    np.ones(3, np.int64), np.full(3, float(own[0])), np.tile(secs[0], (3, 1)))


def test_oracle_is_the_deepest_exit_whose_own_time_and_sections_fit(fr) -> None:
    secs = np.array([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [2.0, 1.0, 1.0]])
    own = np.array([0.5, 0.5, 0.5])
    assert B.oracle_exits(own, secs, np.array([2.5, 3.5, 2.0])).tolist() == [2, 3, 0]


def test_constant_times_reach_the_oracle_and_meet_every_deadline(fr) -> None:
    rng = np.random.default_rng(0)
    n = 600
    secs = np.tile([1.0, 1.0, 1.0, 1.0], (n, 1))
    own = np.full(n, 0.2)
    budgets = rng.uniform(1.3, 4.5, n)
    t = _trace(fr, secs, own, budgets)
    exits, end = fr.replay(t, 0.99, None, None)
    got = fr.figures(t, exits, end, settle_calls=0)
    assert got["met_share_admitted"] == 1.0
    assert exits.tolist() == B.oracle_exits(own, secs, budgets).tolist()
    assert got["depth_vs_oracle"] == 1.0


def test_a_low_quantile_trades_compliance_for_depth_on_noisy_times(fr) -> None:
    rng = np.random.default_rng(1)
    n = 3000
    secs = 1.0 + rng.exponential(0.15, (n, 4)) + (rng.random((n, 4)) < 0.05) * 2.0  # 5 % pre-empted runs
    own = np.full(n, 0.2)
    budgets = rng.uniform(1.5, 5.0, n)
    t = _trace(fr, secs, own, budgets)
    res = [{"setting": f"q={q}", **fr.figures(t, *fr.replay(t, q, None, None), settle_calls=200)} for q in (0.5, 0.99)]
    low, high = res
    assert low["depth_vs_oracle"] > high["depth_vs_oracle"]
    assert low["met_share_admitted"] < high["met_share_admitted"]
    front = fr.frontier(res)
    assert front["deepest_meeting_compliance"] in (None, "q=0.99")
    assert "q=0.5" not in front["settings_meeting_both_goals"]


def test_traces_round_trip_through_a_file(fr, tmp_path) -> None:
    rng = np.random.default_rng(2)
    secs = rng.uniform(0.5, 1.0, (20, 4))
    t = _trace(fr, secs, np.full(20, 0.1), rng.uniform(1, 4, 20), rows=rng.integers(1, 5, 20))
    b = fr.Trace("batches", **{f: getattr(t, f) for f in fr.Trace.__dataclass_fields__ if f != "name"})
    path = tmp_path / "t.npz"
    fr.save_traces(str(path), [b, t], {"command": "x"})
    back, contract = fr.load_traces(str(path))
    assert contract == {"command": "x"}
    assert [x.name for x in back] == ["steady", "batches"]
    for f in fr.Trace.__dataclass_fields__:
        if f != "name":
            np.testing.assert_array_equal(getattr(back[0], f), getattr(t, f))
    assert not list(tmp_path.glob("*.tmp*"))


def test_budgets_from_the_trace_span_its_own_exit1_tail_to_its_full_median_per_row_count(fr) -> None:
    rng = np.random.default_rng(3)
    n = 2000
    rows = rng.integers(1, 3, n)
    secs = rng.uniform(0.9, 1.1, (n, 4)) * rows[:, None]
    own = np.full(n, 0.1)
    t = _trace(fr, secs, own, np.full(n, 99.0), rows=rows)
    b = fr.budgets_from_trace(t, seed=0)
    for r in (1, 2):
        sel = rows == r
        lo = np.percentile(own[sel] + secs[sel, 0], 99.9)
        hi = np.percentile(own[sel] + secs[sel].sum(axis=1), 50)
        assert lo <= b.budget_ms[sel].min() and b.budget_ms[sel].max() <= hi
    np.testing.assert_array_equal(b.section_ms, t.section_ms)  # only the budgets change
    assert t.budget_ms[0] == 99.0

"""``benchmarks/train_accuracy_preset.py``'s seed pairing: differences are taken seed by seed, never by position."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def preset():
    spec = importlib.util.spec_from_file_location("train_accuracy_preset",
                                                  REPO / "benchmarks" / "train_accuracy_preset.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(seed: int, exits: list[float], ensemble: float) -> dict:
    return {"seed": seed, "test": {"exits": exits, "ensemble": ensemble, "n": 10000}}


def test_versus_pairs_runs_by_seed_not_by_position(preset) -> None:
    now = {"byot": [_run(1, [0.90, 0.92], 0.93), _run(0, [0.80, 0.82], 0.83)]}
    earlier = {"per_seed": {"byot": [_run(0, [0.70, 0.72], 0.73), _run(1, [0.89, 0.91], 0.92), _run(2, [0, 0], 0)]},
               "command": "x"}
    d = preset.versus_earlier(now, earlier)["byot"]
    assert d["seeds"] == [1, 0]
    assert d["per_seed"][0] == pytest.approx([0.01, 0.10])
    assert d["mean"] == pytest.approx([0.055, 0.055, 0.055])
    assert d["above_zero_by_one_std"] == [False, False, False]  # std 0.064 > mean


def test_a_method_missing_from_the_earlier_file_is_left_out(preset) -> None:
    now = {"dsn": [_run(0, [0.9], 0.9)], "byot": [_run(0, [0.9], 0.9)]}
    assert list(preset.versus_earlier(now, {"per_seed": {"dsn": [_run(0, [0.8], 0.8)]}})) == ["dsn"]
    assert preset.versus_earlier(now, {"per_seed": {"dsn": [_run(5, [0.8], 0.8)]}}) == {}


def test_within_a_run_byot_is_paired_with_each_baseline(preset) -> None:
    per_seed = {"dsn": [_run(0, [0.8], 0.8), _run(1, [0.7], 0.7)], "byot": [_run(1, [0.75], 0.7), _run(0, [0.9], 0.8)]}
    d = preset.paired_differences(per_seed)["byot-dsn"]
    assert d["per_seed"][0] == pytest.approx([0.05, 0.10])
    assert d["above_zero_by_one_std"][0] is True

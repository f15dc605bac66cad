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


def _settings(**over) -> dict:
    base = {"width": 16, "epochs": 8, "heads_epochs": 1, "batch_size": 128, "lr": 0.1, "schedule": "onecycle",
            "nesterov": True, "warmup_epochs": 0.0, "ema": 0.998, "head": "byot-authors", "crop_padding": 2,
            "random_erasing": 0.0, "deepest_ce_weight": None, "threads": 2, "limit": None, "device": "cpu",
            "out": "/a", "seeds": 1, "methods": ["byot"]}
    return {**base, **over}


def test_included_runs_are_keyed_by_method_and_seed_and_name_their_file(preset) -> None:
    earlier = {"settings": _settings(out="/elsewhere", seeds=1),
               "per_seed": {"byot": [_run(0, [0.9], 0.9)], "dsn": [{**_run(3, [0.8], 0.8), "included_from": "old"}]}}
    got, left_out = preset.included_runs(earlier, _settings(seeds=2, methods=["dsn", "byot"]), "e.json")
    assert set(got) == {("byot", 0), ("dsn", 3)} and left_out == []
    assert got["byot", 0]["included_from"] == "e.json"
    assert got["dsn", 3]["included_from"] == "old"  # an included run keeps naming where it was trained
    assert got["byot", 0]["test"]["exits"] == [0.9]


def test_runs_of_another_recipe_are_refused(preset) -> None:
    earlier = {"settings": _settings(crop_padding=None), "per_seed": {"byot": [_run(0, [0.9], 0.9)]}}
    with pytest.raises(ValueError, match="crop_padding: None there, 2 here"):
        preset.included_runs(earlier, _settings(), "e.json")


def test_a_byot_only_setting_leaves_out_only_the_byot_runs(preset) -> None:
    earlier = {"settings": _settings(), "per_seed": {"byot": [_run(0, [0.9], 0.9)], "dsn": [_run(0, [0.8], 0.8)]}}
    got, left_out = preset.included_runs(earlier, _settings(deepest_ce_weight=0.7), "e.json")
    assert set(got) == {("dsn", 0)}
    assert left_out == ["byot (deepest_ce_weight: None there, 0.7 here)"]


def test_a_setting_not_named_anywhere_still_counts_as_recipe(preset) -> None:
    earlier = {"settings": _settings(), "per_seed": {"dsn": [_run(0, [0.8], 0.8)]}}
    with pytest.raises(ValueError, match="new_flag: None there, 3 here"):
        preset.included_runs(earlier, _settings(new_flag=3), "e.json")
    got, _ = preset.included_runs(earlier, _settings(out="/b", json="x.json", seeds=5), "e.json")
    assert set(got) == {("dsn", 0)}  # paths, seed counts and output options are not the recipe

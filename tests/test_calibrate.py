"""sdedge calibrate: temperatures, thresholds by replay, latency profiles, atomic writes, data, plots, CLI.

Synthetic tests use generated multi-exit logits (fast, exact expectations); the others calibrate a
private copy of the session-wide ``tiny_bundle`` (3 exits, digits) once per module with small profile
settings, then check what was written against the live runtime.
"""
from __future__ import annotations

import ast
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from sdedge.calibrate.api import CalibrationConfig, calibrate_bundle
from sdedge.calibrate.profile import default_batch_sizes
from sdedge.calibrate.curves import accuracy_at_fractions, anytime_auc, offline_curves, simulate_deadline_exit
from sdedge.calibrate.metrics import ece, nll
from sdedge.calibrate.temperature import fit_temperature, fit_temperatures
from sdedge.calibrate.thresholds import ExitCosts, ReplayTable, Target, fit_heldout_split, select_thresholds
from sdedge.runtime import AnytimeSession, SessionOptions, open_bundle
from sdedge.common.jsonio import dump_json
from sdedge.runtime.bundle import update_bundle
from sdedge.common.errors import BundleError, InputError, PolicyError
from sdedge.runtime.policies import ConfidencePolicy, DeadlinePolicy, LatencyEstimator, replay
from sdedge.runtime.profile import LatencyProfile

REPO = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FAST = dict(profile_runs=20, profile_warmup=3, overhead_runs=20, session=SessionOptions(intra_op_threads=1))


# -- synthetic logits ---------------------------------------------------------------------------------------
def synth(n: int, seed: int = 0, accs=(0.55, 0.75, 0.9), c: int = 10, scale: float = 4.0):
    """Multi-exit logits where deeper exits are right more often and easy samples are confident early.

    Each sample has a difficulty d in [0, 1); exit k is right when d < accs[k]; the predicted class gets a
    boost that shrinks with d; everything is multiplied by ``scale`` (over-confident logits).
    """
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    d = rng.random(n)
    k = len(accs)
    z = rng.normal(0, 1, (k, n, c))
    for j, a in enumerate(accs):
        right = d < a
        wrong = (y + 1 + rng.integers(0, c - 1, n)) % c
        pred = np.where(right, y, wrong)
        z[j, np.arange(n), pred] += 2.5 * (1.2 - d) + 0.3 * j
    return (scale * z).astype(np.float32), y


COSTS = ExitCosts((1.0, 2.0, 3.0), "ms", "synthetic", section_prior_ms=(1.2, 1.2, 1.2), section_mean_ms=(1.0, 1.0, 1.0))


def test_temperature_lowers_nll_on_heldout_generated_logits() -> None:
    z, y = synth(4000, seed=1)
    fit = fit_temperature(z[2, :2000], y[:2000], heldout_logits=z[2, 2000:], heldout_labels=y[2000:])
    assert fit.converged and not fit.at_bound and fit.temperature > 1.5  # over-confident logits get cooled
    assert fit.heldout_nll_after < fit.heldout_nll_before - 0.1
    assert fit.heldout_ece_after < fit.heldout_ece_before / 2
    assert fit.nll_after <= fit.nll_before
    # the optimum: the NLL is no lower a little to either side
    for f in (0.97, 1.03):
        assert nll(z[2, :2000], y[:2000], fit.temperature * f) >= fit.nll_after - 1e-9
    fits = fit_temperatures(z[:, :2000], y[:2000], heldout_logits=z[:, 2000:], heldout_labels=y[2000:])
    assert len(fits) == 3 and all(f.heldout_nll_after < f.heldout_nll_before for f in fits)


def test_temperature_on_a_bound_is_reported_not_converged() -> None:
    y = np.arange(200) % 10
    z = np.full((200, 10), -1.0, np.float32)
    z[np.arange(200), y] = 1.0  # always right, small margin: the NLL keeps falling as T -> 0
    fit = fit_temperature(z, y, bounds=(0.05, 20.0))
    assert fit.at_bound and not fit.converged and fit.temperature == pytest.approx(0.05, rel=1e-3)
    assert "lower bound" in fit.note
    with pytest.raises(InputError, match="NaN"):
        fit_temperature(np.full((4, 3), np.nan), np.zeros(4, int))
    with pytest.raises(InputError, match="bounds"):
        fit_temperature(z, y, bounds=(2.0, 3.0))


def test_ece_of_a_perfectly_calibrated_predictor_is_small() -> None:
    rng = np.random.default_rng(0)
    n = 20000
    p = rng.uniform(0.5, 1.0, n)  # confidence of class 0 against class 1, right with probability p
    y = (rng.random(n) > p).astype(int)
    z = np.stack([np.log(p), np.log(1 - p)], axis=1)
    assert ece(z, y) < 0.02 and ece(z * 3, y) > 0.1


@pytest.mark.parametrize("criterion", ["max_prob", "entropy", "margin"])
def test_replay_table_equals_the_runtime_replay(criterion: str) -> None:
    z, y = synth(500, seed=2)
    temps = (1.7, 0.8, 1.2)
    table = ReplayTable(z, y, temps, criterion)
    rng = np.random.default_rng(0)
    for _ in range(20):
        thr = [float(v) for v in rng.choice(table.conf[:-1].ravel(), 2)] + [None]
        en = [bool(v) for v in rng.integers(0, 2, 2)] + [True]
        pol = ConfidencePolicy(criterion, tuple(t if e else None for t, e in zip(thr, en)), temps)
        assert np.array_equal(table.exits(thr, en), replay(z, pol).exit_index)


def test_accuracy_target_is_met_and_cheaper_than_the_deepest_exit() -> None:
    z, y = synth(3000, seed=3)
    temps = [f.temperature for f in fit_temperatures(z[:, :1500], y[:1500])]
    table = ReplayTable(z, y, temps)
    fit_t, held_t = table.subset(np.arange(1500)), table.subset(np.arange(1500, 3000))
    res = select_thresholds(fit_t, COSTS, Target.accuracy(max_accuracy_drop=1.0), heldout=held_t, confidence_z=0)
    deepest = fit_t.exit_accuracies()[-1]
    assert res.method == "shared-sweep+greedy" and res.target["kind"] == "accuracy"
    assert res.target_met and res.fit["accuracy"] >= deepest - 0.01 - 1e-12
    assert res.fit["mean_latency_ms"] < 3.0 * 0.9  # at least 10 % cheaper than running every section
    assert res.thresholds[-1] is None and res.enabled[-1] is True
    # what the result says equals a fresh replay of its thresholds
    again = fit_t.evaluate(res.thresholds, COSTS, res.enabled)
    assert again["accuracy"] == res.fit["accuracy"] and again["exit_histogram"] == res.fit["exit_histogram"]
    assert res.heldout is not None and abs(res.heldout["accuracy"] - res.fit["accuracy"]) < 0.03
    # the greedy refinement never does worse than the best shared threshold
    best_shared = min((fit_t.evaluate([t, t, None], COSTS)["mean_cost"] for t in np.unique(fit_t.conf[:2])
                       if fit_t.evaluate([t, t, None], COSTS)["accuracy"] >= deepest - 0.01), default=3.0)
    assert res.fit["mean_cost"] <= best_shared + 1e-12


def test_a_confidence_margin_makes_the_accuracy_target_conservative() -> None:
    from sdedge.calibrate.thresholds import accuracy_bound

    z, y = synth(3000, seed=8)
    table = ReplayTable(z, y, (1.0, 1.0, 1.0))
    target = Target.accuracy(max_accuracy_drop=1.0)
    loose = select_thresholds(table, COSTS, target, confidence_z=0)
    tight = select_thresholds(table, COSTS, target, confidence_z=2)
    assert loose.target_met and tight.target_met and tight.target["confidence_z"] == 2
    assert tight.fit["accuracy"] >= loose.fit["accuracy"] and tight.fit["mean_cost"] >= loose.fit["mean_cost"]
    assert tight.fit["accuracy_lower_bound"] >= table.exit_accuracies()[-1] - 0.01 - 1e-12
    ex = table.exits(tight.thresholds, tight.enabled)
    correct = table.correct[ex - 1, np.arange(table.n)]
    assert tight.fit["accuracy_lower_bound"] == pytest.approx(accuracy_bound(correct, table.correct[-1] * 1.0, 2))
    # answering like the deepest exit has no uncertainty relative to it; an absolute bound does
    assert accuracy_bound(table.correct[-1], table.correct[-1] * 1.0, 2) == pytest.approx(table.exit_accuracies()[-1])
    assert accuracy_bound(table.correct[-1], None, 2) < table.exit_accuracies()[-1]


def test_unreachable_targets_warn_with_the_nearest_point() -> None:
    z, y = synth(1000, seed=4)
    table = ReplayTable(z, y, (1.0, 1.0, 1.0))
    res = select_thresholds(table, COSTS, Target.accuracy(target_accuracy=0.999))
    assert not res.target_met and res.nearest_achievable is not None
    assert any("unreachable" in w and "nearest achievable" in w for w in res.warnings)
    best = max(table.evaluate([t, t, None], COSTS)["accuracy"] for t in np.unique(table.conf[:2])[::10])
    assert res.nearest_achievable["accuracy"] >= best - 1e-12
    res = select_thresholds(table, COSTS, Target.latency(0.5))  # below exit 1's cost
    assert not res.target_met and res.fit["mean_latency_ms"] == pytest.approx(1.0)
    assert any("unreachable" in w for w in res.warnings)


def test_latency_target_is_met_with_the_best_accuracy() -> None:
    z, y = synth(2000, seed=5)
    table = ReplayTable(z, y, (1.0, 1.0, 1.0))
    res = select_thresholds(table, COSTS, Target.latency(1.8))
    assert res.target_met and res.fit["mean_latency_ms"] <= 1.8 + 1e-9
    assert res.fit["accuracy"] > table.exit_accuracies()[0]
    for t in np.unique(table.conf[:2])[::25]:  # no shared threshold within the budget beats it
        r = table.evaluate([t, t, None], COSTS)
        if r["mean_cost"] <= 1.8:
            assert r["accuracy"] <= res.fit["accuracy"] + 1e-12


def test_an_exit_that_never_fires_is_disabled_explicitly() -> None:
    z, y = synth(1500, seed=6)
    z[1] = 0.0  # exit 2 is uninformative: confidence 1/C for everyone, never worth stopping at
    table = ReplayTable(z, y, (1.0, 1.0, 1.0))
    res = select_thresholds(table, COSTS, Target.accuracy(max_accuracy_drop=1.0))
    assert res.enabled[1] is False and res.fit["exit_histogram"][1] == 0
    for k in range(2):  # an enabled exit fires on the data; a disabled one never does
        fired = res.fit["exit_histogram"][k]
        assert (fired > 0) == res.enabled[k]


def test_target_arguments_are_checked() -> None:
    with pytest.raises(PolicyError, match=r"target accuracy must be a fraction in \(0, 1\] or a percentage"):
        Target.accuracy(target_accuracy=1.5e2)
    with pytest.raises(PolicyError, match="target latency must be a positive number of milliseconds, got -1"):
        Target.latency(-1)
    assert Target.accuracy(target_accuracy=92).value == pytest.approx(0.92)  # percent accepted
    with pytest.raises(PolicyError, match="one target"):
        CalibrationConfig(target_accuracy=0.9, target_latency_ms=3).check()


def test_deadline_simulation_follows_the_runtime_rule() -> None:
    prof = {"format": "sdedge-profile", "format_version": 1, "device": "x", "batch_sizes": {"1": {"sections": [
        {"index": i, "p50_ms": m, "p90_ms": q, "p99_ms": p, "mean_ms": m} for i, (m, q, p) in
        enumerate([(1.0, 1.3, 1.5), (2.0, 3.0, 4.0), (1.0, 1.1, 1.2)], start=1)]}}, "decision_overhead_ms": 0.1,
        "fixed_per_call_ms": 0.05}
    from sdedge.calibrate.thresholds import exit_costs_from_profile

    assert exit_costs_from_profile(prof, 3).cumulative == pytest.approx((1.15, 3.25, 4.35))
    no_p90 = json.loads(json.dumps(prof))  # a profile without the prior's quantile: the runtime falls back (p99)
    for s in no_p90["batch_sizes"]["1"]["sections"]:
        del s["p90_ms"]
    for doc in (prof, no_p90):
        costs = exit_costs_from_profile(doc, 3)
        pol = DeadlinePolicy(LatencyEstimator(3), LatencyProfile.from_json(doc, 3))
        for budget in np.linspace(0.5, 8.0, 40):
            # the runtime: stop before section k+1 if now + p90(k+1) + overhead > deadline, now = time spent so far
            k, now = 1, 1.0 + 0.1
            while k < 3 and not pol.should_stop(k + 1, 1, now * 1e-3, budget * 1e-3):
                now += [1.0, 2.0, 1.0][k] + 0.1
                k += 1
            assert simulate_deadline_exit(costs, budget) == k


# -- the real bundle -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def calibrated(tiny_bundle: Path, tmp_path_factory) -> tuple[Path, object]:
    dst = tmp_path_factory.mktemp("calibrated") / "bundle"
    shutil.copytree(tiny_bundle, dst)
    plot = dst.parent / "curve.png"
    res = calibrate_bundle(dst, config=CalibrationConfig(max_accuracy_drop=1.0, plot=str(plot), **FAST))
    return dst, res


def test_calibration_is_written_atomically_and_verifies(calibrated) -> None:
    path, res = calibrated
    b = open_bundle(path)  # every checksum, the new files included
    dev = res.device
    assert "calibration.json" in b.manifest.files and f"profiles/{dev}.json" in b.manifest.files
    cal = b.calibration
    k = b.manifest.num_exits
    from sdedge.runtime.calibration import FORMAT, FORMAT_VERSION  # the runtime owns the format

    assert cal["format"] == FORMAT and cal["format_version"] == FORMAT_VERSION
    for key in ("criterion", "temperatures", "thresholds", "enabled", "method", "target", "target_met",
                "expected", "temperature_fits", "data", "warnings"):
        assert key in cal, key
    assert len(cal["temperatures"]) == len(cal["thresholds"]) == len(cal["enabled"]) == k
    assert cal["method"] == "shared-sweep+greedy" and cal["target"]["kind"] == "accuracy"
    assert all({"converged", "at_bound", "nll_before", "nll_after", "ece_before", "ece_after"} <= set(f)
               for f in cal["temperature_fits"])
    assert cal["data"]["fit_n"] + cal["data"]["heldout_n"] == cal["data"]["n"] == 200
    assert cal["data"]["same_split"] is False
    assert not list(path.parent.glob("bundle.tmp-*"))  # no staging folder left behind
    text = res.summary()
    assert "target:" in text and "held-out" in text and "exit" in text


def test_temperature_scaling_lowers_nll_on_the_real_bundle(calibrated) -> None:
    _, res = calibrated
    fits = res.temperature_fits
    assert all(f.nll_after <= f.nll_before + 1e-12 for f in fits)  # on the fitting half: never worse
    before = sum(f.heldout_nll_before for f in fits)
    after = sum(f.heldout_nll_after for f in fits)
    assert after < before  # and lower on the held-out half


def test_thresholds_meet_the_target_and_match_the_live_runtime(calibrated) -> None:
    path, res = calibrated
    cal = open_bundle(path).calibration
    thr = res.thresholds
    # a max-drop target is always reachable (the deepest exit alone meets it), so it must be met: a
    # calibrator that misses it is broken, not unlucky
    assert thr.target["max_accuracy_drop_pp"] == 1.0 and thr.target_met and cal["target_met"] is True
    assert thr.fit["accuracy"] >= thr.target["value"] - 1e-12
    from sdedge.calibrate.datasets import load_calibration_split

    with AnytimeSession(path, backend="onnxruntime", intra_op_threads=1, warmup=0, max_batch=256) as s:
        val = load_calibration_split(s.manifest)
        fit_idx, held_idx = fit_heldout_split(len(val.labels), 0.5, 0)
        table = ReplayTable(s.infer_all_exits(val.images), val.labels, cal["temperatures"], cal["criterion"])
        want = table.exits(cal["thresholds"], cal["enabled"])
        live = s.infer(val.images, threshold="calibrated")  # the batch path
        got = np.array([r.exit_index for r in live])
        labels = np.array([r.label for r in live])
        assert np.array_equal(got, want)  # sample by sample
        assert np.array_equal(labels, table.pred[want - 1, np.arange(len(want))])
        # what calibrate reported equals the live re-run
        for idx, rep in ((fit_idx, cal["expected"]["fit"]), (held_idx, cal["expected"]["heldout"])):
            assert float((labels[idx] == val.labels[idx]).mean()) == pytest.approx(rep["accuracy"], abs=1e-12)
            assert np.bincount(got[idx], minlength=s.num_exits + 1)[1:].tolist() == rep["exit_histogram"]
        for i in range(40):  # the single-image path decides the same
            assert s.infer(val.images[i], threshold="calibrated").exit_index == want[i]
        # explicit per-exit thresholds that split the data: replay == live as well
        t = [float(np.median(table.conf[0])), float(np.median(table.conf[1])), None]
        got = np.array([r.exit_index for r in s.infer(val.images, threshold=t)])
        assert len(set(got.tolist())) >= 2 and np.array_equal(got, table.exits(t))


def test_the_profile_is_written_and_used_by_the_deadline_policy(calibrated, tmp_path: Path) -> None:
    path, res = calibrated
    dst = tmp_path / "bundle"
    shutil.copytree(path, dst)
    prof = open_bundle(dst).profile(res.device)
    assert prof["device"] == res.device and prof["runs"] == FAST["profile_runs"]
    with AnytimeSession(dst, backend="onnxruntime", intra_op_threads=1, warmup=0, engine="python") as s:  # reads its rule
        assert s.device_name == res.device and s.profile is not None
        for k in range(1, s.num_exits + 1):  # nothing measured online yet: the cost is the profile's p90
            assert s.deadline_policy.section_cost_ms(k, 1) == pytest.approx(
                prof["batch_sizes"]["1"]["sections"][k - 1]["p90_ms"])
    # by default batches up to 16 rows are profiled, so a batch is charged a measured figure (the profiled
    # size at or above its row count), not n times the one-row figure; beyond 16, the 16-row one scaled
    assert sorted(map(int, prof["batch_sizes"])) == [1, 2, 4, 8, 16]
    assert default_batch_sizes(64) == (1, 2, 4, 8, 16) and default_batch_sizes(6) == (1, 2, 4, 6)
    assert default_batch_sizes(1) == (1,)
    with AnytimeSession(dst, backend="onnxruntime", intra_op_threads=1, warmup=0, engine="python",
                        max_batch=32) as s:
        p90 = {int(b): [e["p90_ms"] for e in v["sections"]] for b, v in prof["batch_sizes"].items()}
        for k in range(1, s.num_exits + 1):
            cost = s.deadline_policy.section_cost_ms
            assert cost(k, 8) == pytest.approx(p90[8][k - 1]) and cost(k, 5) == pytest.approx(p90[8][k - 1])
            assert cost(k, 3) == pytest.approx(p90[4][k - 1])
            assert cost(k, 24) == pytest.approx(p90[16][k - 1] * 24 / 16)
    # a profile that says section 2 takes 10 s makes any budget below that stop at exit 1
    prof["batch_sizes"]["1"]["sections"][1].update(p90_ms=10_000.0, p99_ms=10_000.0)
    update_bundle(dst, {f"profiles/{res.device}.json": dump_json(prof)})
    with AnytimeSession(dst, backend="onnxruntime", intra_op_threads=1, warmup=2) as s:
        x = np.zeros(s.input_shape, np.float32)
        r = s.infer(x, budget_ms=5_000)
        assert r.exit_index == 1 and r.stopped_by == "deadline"


def test_plot_is_a_valid_png_with_the_expected_curves(calibrated) -> None:
    path, res = calibrated
    png = Path(res.plot_files["png"])
    data = png.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    import matplotlib.image

    img = matplotlib.image.imread(str(png))
    assert img.ndim == 3 and 300 <= img.shape[0] <= 3000 and 300 <= img.shape[1] <= 3000
    assert img[..., :3].std() > 0.01  # not a blank canvas
    with open(res.plot_files["csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    series = {r["series"] for r in rows}
    assert {"fixed_exit", "confidence", "calibrated", "deadline"} <= series
    assert sum(r["series"] == "fixed_exit" for r in rows) == open_bundle(path).manifest.num_exits
    table = json.loads(Path(res.plot_files["json"]).read_text())
    assert set(table["series"]) == series and len(table["accuracy_at_fraction"]) == 4
    fx = [p["accuracy"] for p in table["series"]["fixed_exit"]]
    assert fx == pytest.approx(res.thresholds.heldout["exit_accuracies"])


def test_plot_without_matplotlib_names_the_extra(monkeypatch) -> None:
    from sdedge.calibrate import plot
    from sdedge.calibrate.curves import CurveSet

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(plot.PlotError, match=r"sdedge\[plot\]"):
        plot.render_png(CurveSet())


def test_curves_summary_at_latency_fractions() -> None:
    z, y = synth(1000, seed=7)
    cs = offline_curves(ReplayTable(z, y, (1.0, 1.0, 1.0)), COSTS)
    rows = accuracy_at_fractions(cs)
    assert [r["fraction"] for r in rows] == [0.25, 0.5, 0.75, 1.0]
    last = rows[-1]
    assert last["fixed_exit"]["accuracy"] == pytest.approx(ReplayTable(z, y, (1, 1, 1)).exit_accuracies()[-1])
    assert last["confidence"]["accuracy"] >= last["fixed_exit"]["accuracy"]
    assert rows[0]["fixed_exit"] is None  # 0.75 ms: not even exit 1 fits


def test_cpu_flags_name_the_simd_features_int8_speed_depends_on(tmp_path: Path) -> None:
    from sdedge.common.hostinfo import SIMD_FLAGS, cpu_flags

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n\n"
                    "processor\t: 1\nflags\t\t: fpu\n")
    got = cpu_flags(str(info))
    assert set(got) == set(SIMD_FLAGS)
    assert [f for f, on in got.items() if on] == ["avx2", "avx512f", "avx512_vnni"]  # the first CPU's line
    assert cpu_flags(str(tmp_path / "missing")) == {}


def test_anytime_auc_is_the_exact_area_under_the_best_accuracy_that_fits() -> None:
    pts = [{"mean_latency_ms": 1.0, "accuracy": 0.5}, {"mean_latency_ms": 3.0, "accuracy": 0.9},
           {"mean_latency_ms": 2.0, "accuracy": 0.4}]  # unsorted; the 2 ms point is dominated by the 1 ms one
    # 0 on [0, 1), 0.5 on [1, 3), 0.9 on [3, 4]: (0 + 1.0 + 0.9) / 4
    assert anytime_auc(pts, 4.0) == pytest.approx(1.9 / 4)
    assert anytime_auc(pts, 2.0) == pytest.approx(0.5 / 2)  # points beyond the horizon do not count
    cheaper = [dict(p, mean_latency_ms=p["mean_latency_ms"] / 2) for p in pts]
    assert anytime_auc(cheaper, 4.0) > anytime_auc(pts, 4.0)  # same accuracies, faster: a larger area
    assert anytime_auc([], 4.0) == 0.0
    with pytest.raises(ValueError, match="horizon"):
        anytime_auc(pts, 0.0)
    z, y = synth(1000, seed=7)
    cs = offline_curves(ReplayTable(z, y, (1.0, 1.0, 1.0)), COSTS)
    full = cs.series["fixed_exit"][-1]
    assert anytime_auc(cs.series["fixed_exit"], full["mean_latency_ms"]) < full["accuracy"]


# -- interruptions, permissions ------------------------------------------------------------------------------------------
def _snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_a_step_failing_midway_leaves_the_bundle_untouched(calibrated, tmp_path: Path, monkeypatch) -> None:
    path, _ = calibrated
    dst = tmp_path / "bundle"
    shutil.copytree(path, dst)
    before = _snapshot(dst)
    import sdedge.calibrate.api as api

    def boom(*a, **k):
        raise RuntimeError("simulated failure while choosing thresholds")

    monkeypatch.setattr(api, "select_thresholds", boom)
    with pytest.raises(RuntimeError, match="simulated"):
        calibrate_bundle(dst, config=CalibrationConfig(**FAST))
    assert _snapshot(dst) == before
    open_bundle(dst)
    assert not list(tmp_path.glob("bundle.tmp-*"))


KILL_SCRIPT = r"""
import sys, time
import sdedge.calibrate.api as api
import sdedge.common.jsonio as rb
real = rb.dump_json
def slow(obj):  # called by update_bundle for the new manifest, after the new files are staged
    if isinstance(obj, dict) and obj.get("format") == "sdedge-bundle":
        print("STAGED", flush=True)
        time.sleep(120)
    return real(obj)
rb.dump_json = slow
api.calibrate_bundle(sys.argv[1], config=api.CalibrationConfig(profile_runs=10, profile_warmup=1, overhead_runs=10,
                                                                target_latency_ms=1.0), intra_op_threads=1)
print("FINISHED", flush=True)
"""


def test_calibration_killed_mid_write_leaves_the_old_bundle(calibrated, tmp_path: Path) -> None:
    path, _ = calibrated
    dst = tmp_path / "bundle"
    shutil.copytree(path, dst)
    before = _snapshot(dst)
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(dst)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "STAGED", proc.stderr.read()[-2000:]
        assert list(tmp_path.glob("bundle.tmp-*"))  # the new calibration is staged beside the bundle
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert _snapshot(dst) == before  # the old calibration, byte for byte
    b = open_bundle(dst)
    assert b.calibration["target"]["kind"] == "accuracy"
    # the leftover staging folder does not stop the next calibration
    calibrate_bundle(dst, config=CalibrationConfig(target_latency_ms=1.0, **FAST))
    assert open_bundle(dst).calibration["target"]["kind"] == "latency_ms"


RO_SCRIPT = r"""
import os, sys
import sdedge.cli, sdedge.commands.calibrate, sdedge.calibrate.api, sdedge.calibrate.datasets  # before dropping root
import sdedge.runtime.session, sdedge.runtime.backends.onnxruntime
if os.geteuid() == 0:  # root ignores permission bits: run as an unprivileged user from here on
    os.setgid(65534)
    os.setuid(65534)
sys.exit(sdedge.cli.main(sys.argv[1:]))
"""


def test_a_read_only_bundle_gives_a_clear_error(tiny_bundle: Path) -> None:
    root = Path(tempfile.mkdtemp(prefix="sdedge-ro-", dir="/tmp"))
    try:
        dst = root / "bundle"
        shutil.copytree(tiny_bundle, dst)
        rng = np.random.default_rng(0)
        c, h, w = open_bundle(dst).manifest.input.shape[1:]
        np.save(root / "x.npy", rng.integers(0, 255, (20, h, w, c), dtype=np.uint8))
        np.save(root / "y.npy", rng.integers(0, 10, 20))
        for p in [root, dst, *dst.rglob("*"), root / "x.npy", root / "y.npy"]:
            os.chmod(p, 0o555 if p.is_dir() else 0o444)
        before = _snapshot(dst)
        out = subprocess.run([sys.executable, "-c", RO_SCRIPT, "calibrate", str(dst), "--images", str(root / "x.npy"),
                              "--labels", str(root / "y.npy"), "-q"], capture_output=True, text=True, timeout=300,
                             cwd="/tmp")
        assert out.returncode == 2, out.stderr[-2000:]
        assert "not writable" in out.stderr and str(dst) in out.stderr
        assert "Traceback" not in out.stderr
        assert _snapshot(dst) == before
    finally:
        for p in [root, *root.rglob("*")]:
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        shutil.rmtree(root, ignore_errors=True)


# -- data ------------------------------------------------------------------------------------------------------------------------
def test_the_validation_split_is_the_one_training_held_out(tiny_bundle: Path, digits_splits) -> None:
    from sdedge.calibrate.datasets import load_calibration_split

    man = open_bundle(tiny_bundle).manifest
    val = load_calibration_split(man)
    assert np.array_equal(val.images, digits_splits.val.images) and np.array_equal(val.labels, digits_splits.val.labels)
    test = load_calibration_split(man, split="test")
    assert np.array_equal(test.images, digits_splits.test.images)


def test_fashion_mnist_reader_matches_the_training_reader(fmnist_dir: Path) -> None:
    from sdedge.calibrate.datasets import load_calibration_split
    from sdedge.data import load_splits

    s = load_splits("fashion-mnist", fmnist_dir, limit=3000, seed=3)
    man = {"model": {"dataset": "fashion-mnist", "training": {"hparams": {"limit": 3000, "seed": 3, "val_size": None}}}}
    val = load_calibration_split(man, fmnist_dir)
    assert val.images.shape == s.val.images.shape and np.array_equal(val.images, s.val.images)
    assert np.array_equal(val.labels, s.val.labels)
    # the same through the data spec, where export puts it (manifest model.data)
    man = {"model": {"data": s.spec.to_json()}}
    val = load_calibration_split(man, fmnist_dir)
    assert np.array_equal(val.images, s.val.images) and np.array_equal(val.labels, s.val.labels)
    assert np.array_equal(load_calibration_split(man, fmnist_dir, "test").images, s.test.images)


def test_the_data_spec_travels_from_training_to_calibration(tiny_checkpoint: Path, tiny_bundle: Path,
                                                            digits_splits) -> None:
    """train -> checkpoint meta['data'] -> manifest model.data (verbatim) -> what calibrate reads: one spec."""
    from sdedge.calibrate.datasets import dataset_spec
    from sdedge.checkpoint import load_checkpoint
    from sdedge.common.datasets import DataSpec
    from sdedge.data import checkpoint_data_spec

    meta = load_checkpoint(tiny_checkpoint).meta
    spec = checkpoint_data_spec(meta)
    assert spec == DataSpec("digits", 200, 0, None, (16, 16), 1) == digits_splits.spec
    man = open_bundle(tiny_bundle).manifest
    assert man.raw["model"]["data"] == {k: meta["data"][k] for k in DataSpec.FIELDS} == spec.to_json()
    assert dataset_spec(man) == spec


def test_a_bad_data_spec_in_the_manifest_is_a_clear_error(tmp_path: Path) -> None:
    from sdedge.calibrate.datasets import dataset_spec, load_calibration_split
    from sdedge.common.errors import DataError

    with pytest.raises(DataError, match=r"manifest model.data\) is not usable: data spec: seed must be .*--images"):
        dataset_spec({"model": {"data": {"dataset": "digits", "seed": -1}}})
    with pytest.raises(DataError, match="not usable: unknown dataset 'svhn'.*--images X.npy"):
        load_calibration_split({"model": {"data": {"dataset": "svhn"}}}, tmp_path)
    with pytest.raises(DataError, match="does not say which dataset"):
        load_calibration_split({"model": {"data": None, "name": "m"}}, tmp_path)


def test_calibration_data_errors_are_clear(calibrated, tmp_path: Path) -> None:
    from sdedge.calibrate.datasets import load_arrays, load_calibration_split
    from sdedge.common.errors import DataError

    path, _ = calibrated
    with pytest.raises(DataError, match="labels"):
        calibrate_bundle(path, images=np.zeros((4, 16, 16, 1), np.uint8), labels=np.array([0, 1, 99, 2]), write=False)
    with pytest.raises(DataError, match="both images and labels"):
        calibrate_bundle(path, images=np.zeros((4, 16, 16, 1), np.uint8), write=False)
    with pytest.raises(DataError, match="does not exist"):
        load_arrays(tmp_path / "nope.npy", tmp_path / "nope2.npy")
    with pytest.raises(DataError, match="Fashion-MNIST not found"):
        load_calibration_split({"model": {"dataset": "fashion-mnist"}}, tmp_path)
    with pytest.raises(BundleError, match="does not exist"):
        calibrate_bundle(tmp_path / "missing")


def test_dry_run_with_arrays_and_no_profile_writes_nothing(calibrated, tmp_path: Path) -> None:
    path, _ = calibrated
    dst = tmp_path / "bundle"
    shutil.copytree(path, dst)
    before = _snapshot(dst)
    from sdedge.calibrate.datasets import load_calibration_split

    val = load_calibration_split(open_bundle(dst).manifest)
    res = calibrate_bundle(dst, images=val.images, labels=val.labels, write=False, profile_runs=0,
                           heldout_fraction=0.0, criterion="entropy", intra_op_threads=1)
    assert _snapshot(dst) == before and res.files_written == []
    assert res.calibration["criterion"] == "entropy"
    assert any("same split" in w for w in res.warnings)  # evaluation on the fitting data is flagged
    assert res.calibration["profile"] == f"profiles/{res.device}.json"  # the bundle's existing profile is used


# -- CLI and the torch-free promise -----------------------------------------------------------------------------------------
def test_cli_calibrate_with_arrays(calibrated, tmp_path: Path) -> None:
    path, _ = calibrated
    dst = tmp_path / "bundle"
    shutil.copytree(path, dst)
    from sdedge.calibrate.datasets import load_calibration_split

    val = load_calibration_split(open_bundle(dst).manifest)
    np.save(tmp_path / "x.npy", val.images)
    np.save(tmp_path / "y.npy", val.labels)
    out = subprocess.run([sys.executable, "-m", "sdedge.cli", "calibrate", str(dst), "--images", str(tmp_path / "x.npy"),
                          "--labels", str(tmp_path / "y.npy"), "--target-latency-ms", "5", "--profile-runs", "10",
                          "--overhead-runs", "10", "--threads", "1", "--batch-sizes", "1,4", "--json",
                          str(tmp_path / "r.json"), "-q"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "mean latency <= 5 ms" in out.stdout and "written into the bundle" in out.stdout
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["target"]["kind"] == "latency_ms" and rep["data"]["source"].startswith("arrays")
    prof = open_bundle(dst).profile(rep["device"])
    assert set(prof["batch_sizes"]) == {"1", "4"}
    bad = subprocess.run([sys.executable, "-m", "sdedge.cli", "calibrate", str(dst), "--target-accuracy", "0.9",
                          "--target-latency-ms", "3"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "not allowed with" in bad.stderr


NOTORCH = r"""
import importlib.abc, sys
class _NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("torch", "torchvision"):
            raise ImportError(f"{name} is blocked in this test")
if sys.argv[2] == "block":
    sys.meta_path.insert(0, _NoTorch())
import numpy as np
from sdedge.calibrate import calibrate_bundle, CalibrationConfig
from sdedge.runtime import SessionOptions
cfg = CalibrationConfig(profile_runs=10, overhead_runs=10, session=SessionOptions(intra_op_threads=1))
if len(sys.argv) > 3:  # arrays (an environment without scikit-learn cannot read the digits example)
    res = calibrate_bundle(sys.argv[1], images=np.load(sys.argv[3]), labels=np.load(sys.argv[4]), config=cfg)
else:
    res = calibrate_bundle(sys.argv[1], config=cfg)
core = ("sdedge.models", "sdedge.losses", "sdedge.train", "sdedge.data", "sdedge.checkpoint", "sdedge.export", "torch")
bad = [m for m, mod in list(sys.modules.items()) if mod is not None and any(m == c or m.startswith(c + ".") for c in core)]
assert not bad, bad
print("OK", res.thresholds.target_met)
"""


def test_calibrate_runs_without_torch(tiny_bundle: Path, tmp_path: Path) -> None:
    dst = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, dst)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", NOTORCH, str(dst), "block"], capture_output=True, text=True,
                         timeout=300, env=env)
    assert out.returncode == 0 and out.stdout.startswith("OK"), out.stderr[-3000:]
    assert open_bundle(dst).calibration is not None


@pytest.mark.skipif(not os.environ.get("SDEDGE_NOTORCH_PYTHON"), reason="SDEDGE_NOTORCH_PYTHON not set (CI sets it)")
def test_calibrate_runs_in_an_environment_without_torch(tiny_bundle: Path, tmp_path: Path, digits_splits) -> None:
    dst = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, dst)
    np.save(tmp_path / "x.npy", digits_splits.val.images)
    np.save(tmp_path / "y.npy", digits_splits.val.labels)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([os.environ["SDEDGE_NOTORCH_PYTHON"], "-c", NOTORCH, str(dst), "plain", str(tmp_path / "x.npy"),
                          str(tmp_path / "y.npy")], capture_output=True, text=True, timeout=300, env=env, cwd=str(tmp_path))
    assert out.returncode == 0 and out.stdout.startswith("OK"), out.stderr[-3000:]


def test_no_calibrate_module_imports_torch_or_sdedge_core() -> None:
    forbidden = ("torch", "torchvision", "sdedge.models", "sdedge.losses", "sdedge.train", "sdedge.data",
                 "sdedge.checkpoint", "sdedge.export")
    files = sorted((REPO / "calibrate").glob("*.py")) + [REPO / "sdedge" / "commands" / n for n in ("calibrate.py", "bench.py")]
    offenders = []
    for f in files:
        for node in ast.walk(ast.parse(f.read_text("utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else \
                ["sdedge." + (node.module or "")] if isinstance(node, ast.ImportFrom) else []
            for n in names:
                if any(n == c or n.startswith(c + ".") for c in forbidden) or n in ("sdedge.data", "sdedge.models"):
                    offenders.append(f"{f.name}: {n}")
    assert not offenders, offenders


def test_a_profile_alone_needs_no_dataset_but_a_named_missing_one_is_an_error(tiny_bundle: Path, tmp_path: Path,
                                                                               monkeypatch) -> None:
    from sdedge.calibrate import api
    from sdedge.common.errors import DataError

    def no_dataset(*a, **k):
        raise DataError("Fashion-MNIST not found in /usr/share/datasets/fashion-mnist; pass --data DIR")

    monkeypatch.setattr(api, "_data", no_dataset)
    monkeypatch.delenv("SDEDGE_DATA", raising=False)
    dst = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, dst)
    res = calibrate_bundle(dst, config=CalibrationConfig(profile_only=True, **FAST))
    assert any("random pixels" in w for w in res.warnings) and "warning: no dataset" in res.summary()
    b = open_bundle(dst)  # the profile is written and checksummed
    assert f"profiles/{res.device}.json" in b.manifest.files and b.profile(res.device) is not None
    with pytest.raises(DataError, match="not found"):  # a full calibration needs labelled images
        calibrate_bundle(dst, config=CalibrationConfig(**FAST), write=False)
    with pytest.raises(DataError, match="not found"):  # a folder that was named stays an error
        calibrate_bundle(dst, config=CalibrationConfig(profile_only=True, data=str(tmp_path / "nope"), **FAST))
    monkeypatch.setenv("SDEDGE_DATA", str(tmp_path / "nope"))
    with pytest.raises(DataError, match="not found"):
        calibrate_bundle(dst, config=CalibrationConfig(profile_only=True, **FAST))

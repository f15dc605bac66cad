"""Exit policies, latency estimates, profile and calibration readers on synthetic numbers (no model)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from sdedge.runtime.calibration import Calibration
from sdedge.common.errors import BundleError, PolicyError
from sdedge.runtime.policies import (PROBE_FIRST, PROBE_MAX, ConfidencePolicy, DeadlinePolicy, LatencyEstimator,
                                     check_budget_ms, check_criterion, check_threshold, confidence, replay, softmax)
from sdedge.runtime.profile import LatencyProfile, make_profile

C = 10


def test_softmax_is_stable_and_tempered() -> None:
    z = np.array([[1000.0, 999.0, -1000.0]], np.float32)
    p = softmax(z)
    assert np.isfinite(p).all() and p.sum() == pytest.approx(1.0, abs=1e-6)
    assert p[0, 0] == pytest.approx(1 / (1 + math.e ** -1), rel=1e-5)
    hot = softmax(z, temperature=0.5)
    flat = softmax(z, temperature=4.0)
    assert hot[0, 0] > p[0, 0] > flat[0, 0]
    assert flat.dtype == np.float32


@pytest.mark.parametrize("criterion", ["max_prob", "entropy", "margin"])
def test_confidence_range_and_extremes(criterion: str) -> None:
    uniform = np.full((1, C), 1 / C, np.float32)
    onehot = np.eye(C, dtype=np.float32)[:1]
    rng = np.random.default_rng(0)
    rand = softmax(rng.normal(0, 3, (500, C)).astype(np.float32))
    lo = {"max_prob": 1 / C, "entropy": 0.0, "margin": 0.0}[criterion]
    assert confidence(uniform, criterion)[0] == pytest.approx(lo, abs=1e-6)
    assert confidence(onehot, criterion)[0] == pytest.approx(1.0, abs=1e-6)
    c = confidence(rand, criterion)
    assert c.shape == (500,) and (c >= 0).all() and (c <= 1).all()


def test_confidence_orders_sharper_distributions_higher() -> None:
    z = np.array([3.0, 1.0, 0.5, 0.0], np.float32)[None]
    for criterion in ("max_prob", "entropy", "margin"):
        sharp, soft = confidence(softmax(z, 0.5), criterion)[0], confidence(softmax(z, 2.0), criterion)[0]
        assert sharp > soft, criterion


def test_entropy_confidence_matches_definition() -> None:
    p = np.array([[0.5, 0.25, 0.25, 0.0]], np.float32)
    h = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert confidence(p, "entropy")[0] == pytest.approx(1 - h / math.log(4), abs=1e-6)
    assert confidence(p, "margin")[0] == pytest.approx(0.25)


@pytest.mark.parametrize("bad", [-0.01, 1.01, float("nan"), float("inf"), True, "0.5", None])
def test_threshold_outside_range_is_refused(bad) -> None:
    with pytest.raises(PolicyError, match=r"\[0, 1\]"):
        check_threshold(bad)


def test_threshold_may_be_calibrated_where_asked() -> None:
    assert check_threshold("calibrated", calibrated=True) == "calibrated"
    assert check_threshold(np.float32(0.25), "parameters.threshold", calibrated=True) == 0.25
    with pytest.raises(PolicyError, match=r"^parameters\.threshold must be a number in \[0, 1\] or \"calibrated\""):
        check_threshold("calibrate", "parameters.threshold", calibrated=True)
    with pytest.raises(PolicyError, match=r"^threshold must be a number in \[0, 1\], got 'calibrated'"):
        check_threshold("calibrated")


@pytest.mark.parametrize("bad", [0, -0.0, -5, float("nan"), float("inf"), True, "5", None, 1j, 10 ** 400])
def test_budget_must_be_positive_finite_milliseconds(bad) -> None:
    with pytest.raises(PolicyError, match=r"^parameters\.budget_ms must be a positive finite number of milliseconds"):
        check_budget_ms(bad, "parameters.budget_ms")


def test_budget_and_criterion_come_back_checked() -> None:
    assert check_budget_ms(5) == 5.0 and isinstance(check_budget_ms(np.float32(0.5)), float)
    assert check_criterion("entropy") == "entropy"
    with pytest.raises(PolicyError, match=r"^unknown confidence criterion 'luck' \(parameters\.criterion\); "
                                          r"expected one of max_prob, entropy, margin"):
        check_criterion("luck", "parameters.criterion")
    with pytest.raises(PolicyError, match="unknown confidence criterion"):
        check_criterion(["max_prob"])


def test_policy_build_forms() -> None:
    assert ConfidencePolicy.build(3).thresholds == (None, None, None)
    assert ConfidencePolicy.build(3, 0.8).thresholds == (0.8, 0.8, None)
    assert ConfidencePolicy.build(3, [0.9, None]).thresholds == (0.9, None, None)
    assert ConfidencePolicy.build(3, [0.9, 0.7, 0.1]).thresholds == (0.9, 0.7, None)  # the last always answers
    with pytest.raises(PolicyError, match="2 or 3 values"):
        ConfidencePolicy.build(3, [0.5])
    with pytest.raises(PolicyError, match=r"exit 2"):
        ConfidencePolicy.build(3, [0.5, 1.5])
    with pytest.raises(PolicyError, match="criterion"):
        ConfidencePolicy.build(3, 0.5, criterion="energy")
    with pytest.raises(PolicyError, match="sdedge calibrate"):
        ConfidencePolicy.build(3, "calibrated")
    with pytest.raises(PolicyError, match="'calibrated'"):
        ConfidencePolicy.build(3, "high")


def cal(**kw) -> Calibration:
    d = {"criterion": "margin", "temperatures": [2.0, 1.5, 1.0], "thresholds": [0.6, 0.4, None],
         "enabled": [True, False, True], "method": "test"}
    d.update(kw)
    return Calibration.from_json(d, 3)


def test_calibrated_policy_uses_thresholds_flags_criterion_and_temperatures() -> None:
    c = cal()
    pol = ConfidencePolicy.build(3, "calibrated", calibration=c)
    assert pol.criterion == "margin" and pol.thresholds == (0.6, None, None)  # exit 2 disabled
    assert pol.temperatures == (2.0, 1.5, 1.0)
    # the user's own threshold keeps the calibrated temperatures but ignores flags
    own = ConfidencePolicy.build(3, 0.5, calibration=c)
    assert own.thresholds == (0.5, 0.5, None) and own.temperatures == (2.0, 1.5, 1.0)
    with pytest.raises(PolicyError, match="for criterion 'margin'"):
        ConfidencePolicy.build(3, "calibrated", criterion="entropy", calibration=c)


@pytest.mark.parametrize("field, value, message", [
    ("temperatures", [1.0, 1.0], "3 values"),
    ("temperatures", [1.0, -1.0, 1.0], "exit 2"),
    ("thresholds", [0.5, 1.2, None], "exit 2"),
    ("enabled", [True, 1, True], "exit 2"),
    ("criterion", "energy", "criterion"),
])
def test_malformed_calibration_is_refused(field: str, value, message: str) -> None:
    with pytest.raises(BundleError, match=message):
        cal(**{field: value})


def test_replay_threshold_zero_one_and_none() -> None:
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 2, (3, 50, C)).astype(np.float32)
    assert (replay(logits, ConfidencePolicy.build(3, 0.0)).exit_index == 1).all()
    assert (replay(logits, ConfidencePolicy.build(3, None)).exit_index == 3).all()
    assert (replay(logits, ConfidencePolicy.build(3, 1.0)).exit_index == 3).all()  # never sure enough


def test_replay_picks_first_confident_exit_and_its_answer() -> None:
    # sample 0 is sure at exit 1; sample 1 only at exit 2; sample 2 never (answers at exit 3)
    z = np.zeros((3, 3, 4), np.float32)
    z[0, 0, 2] = 10
    z[1, 1, 1] = 10
    z[2, 2, 3] = 1
    r = replay(z, ConfidencePolicy.build(3, 0.9))
    assert r.exit_index.tolist() == [1, 2, 3]
    assert r.label.tolist() == [2, 1, 3]
    np.testing.assert_allclose(r.probabilities[2], softmax(z[2, 2:3])[0], rtol=1e-6)


def test_replay_ensemble_averages_the_exits_run() -> None:
    rng = np.random.default_rng(2)
    z = rng.normal(0, 1, (3, 20, C)).astype(np.float32)
    pol = ConfidencePolicy.build(3, None)
    r = replay(z, pol, answer="ensemble")
    mean = (softmax(z[0]) + softmax(z[1]) + softmax(z[2])) / 3
    np.testing.assert_allclose(r.probabilities, mean, rtol=1e-5)
    np.testing.assert_array_equal(r.label, mean.argmax(1))
    with pytest.raises(PolicyError, match="answer"):
        replay(z, pol, answer="vote")


def test_estimator_high_quantile_and_window() -> None:
    est = LatencyEstimator(2, window=100, quantile=0.95)
    assert est.estimate(1, 1) is None
    for v in range(100, 0, -1):  # slowest first: the last two runs (rule 2's "recent" term) are the fastest
        est.record(1, 1, float(v))
    assert est.estimate(1, 1) == pytest.approx(96.0)  # "higher" p95 of 1..100: an observed value
    for _ in range(100):  # the window forgets the old, slow runs
        est.record(1, 1, 2.0)
    assert est.estimate(1, 1) == pytest.approx(2.0)
    # one slow run is felt at once (issue 12 item 4d; the old p95 here needed 5 slow runs to move) ...
    est.record(1, 1, 50.0)
    assert est.estimate(1, 1) == pytest.approx(50.0)
    est.record(1, 1, 2.0)
    assert est.estimate(1, 1) == pytest.approx(50.0)  # ... the last two runs count ...
    est.record(1, 1, 2.0)
    assert est.estimate(1, 1) == pytest.approx(2.0)  # ... then the quantile again, which one run does not move
    for _ in range(5):
        est.record(1, 1, 50.0)
    assert est.estimate(1, 1) == pytest.approx(50.0)


def test_estimator_exact_row_counts_borrow_pessimistically() -> None:
    """Rows are counted exactly (the old power-of-two buckets pooled 5..8 rows, so 8-row calls were judged by
    5-row timings: issue 12 item 4c); a count never measured borrows, never optimistically for it."""
    est = LatencyEstimator(1, window=16, quantile=0.99)
    for _ in range(5):
        est.record(1, 4, 8.0)
    assert est.estimate(1, 3) == pytest.approx(8.0)  # the next larger measured count (more rows never cost less)
    assert est.estimate(1, 1) == pytest.approx(8.0)
    assert est.estimate(1, 16) == pytest.approx(32.0)  # the largest smaller one scaled: pessimistic
    est.record(1, 8, 10.0)
    assert est.estimate(1, 5) == pytest.approx(10.0)  # min(8 rows: 10, 4 rows scaled: 8 * 5/4)
    assert est.estimate(1, 6) == pytest.approx(10.0)
    est.record(1, 2, 2.0)
    assert est.estimate(1, 3) == pytest.approx(3.0)  # min(4 rows: 8, 2 rows scaled: 2 * 3/2)
    assert est.estimate(1, 8) == pytest.approx(10.0) and est.count(1, 8) == 1 and est.count(1, 5) == 0
    assert est.estimate(0, 1) is None  # nothing measured at all: the only "unknown"


def test_warmup_settles_on_the_median() -> None:
    est = LatencyEstimator(2, window=16)
    for ms in (2.0, 5.4, 2.1):  # one pre-empted warm-up run (issue 12 item 4b)
        est.record(2, 1, ms)
    est.record(0, 1, 0.03)
    est.settle()
    assert est.estimate(2, 1) == pytest.approx(2.1) and est.count(2, 1) == 1
    assert est.estimate(0, 1) == pytest.approx(0.03)


def _profile_dict(k: int = 3, ms=(1.0, 2.0, 3.0), device: str = "dev-x") -> dict:
    return make_profile(device, "onnxruntime", "fp32", 2,
                        {1: [[m] * 10 for m in ms], 8: [[4 * m] * 10 for m in ms]}, 0.01, 10)


def test_profile_roundtrip_and_lookup() -> None:
    prof = LatencyProfile.from_json(_profile_dict(), 3)
    assert prof.batch_sizes == [1, 8] and prof.threads == 2
    assert prof.section_ms(2, 1) == pytest.approx(2.0)
    assert prof.section_ms(2, 5) == pytest.approx(8.0)  # next larger profiled batch
    assert prof.section_ms(2, 16) == pytest.approx(16.0)  # beyond the largest: linear
    assert prof.decision_overhead_ms == pytest.approx(0.01)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.pop("batch_sizes"), "batch_sizes"),
    (lambda d: d["batch_sizes"]["1"]["sections"].pop(), "3 sections"),
    (lambda d: d["batch_sizes"]["1"]["sections"][0].__setitem__("p99_ms", -1), "non-negative"),
    (lambda d: d["batch_sizes"].__setitem__("x", {}), "not an integer"),
    (lambda d: d.__setitem__("format_version", 9), "format_version"),
    (lambda d: d.pop("format_version"), "'format_version' must be an integer"),
    (lambda d: d.__setitem__("format", "sdedge-calibration"), "is not an sdedge latency profile"),
    (lambda d: d.pop("format"), "is not an sdedge latency profile"),
])
def test_malformed_profile_is_refused(mutate, message: str) -> None:
    d = _profile_dict()
    mutate(d)
    with pytest.raises(BundleError, match=message):
        LatencyProfile.from_json(d, 3)


def test_deadline_policy_uses_larger_of_profile_and_online() -> None:
    est = LatencyEstimator(3, window=16)
    prof = LatencyProfile.from_json(_profile_dict(), 3)
    pol = DeadlinePolicy(est, prof)
    assert pol.section_cost_ms(2, 1) == pytest.approx(2.0)  # profile alone
    for _ in range(5):
        est.record(2, 1, 5.0)  # the device is slower now than when profiled
    assert pol.section_cost_ms(2, 1) == pytest.approx(5.0)
    assert DeadlinePolicy(est, None).section_cost_ms(3, 1) == 0.0  # nothing known yet
    d = _profile_dict()
    d["fixed_per_call_ms"] = 0.02
    assert DeadlinePolicy(LatencyEstimator(3), LatencyProfile.from_json(d, 3)).overhead_ms(1) == pytest.approx(0.03)
    now = 100.0
    assert not pol.should_stop(2, 1, now, now + 0.006)  # 5 ms + 0.01 ms overhead fits in 6 ms
    assert pol.should_stop(2, 1, now, now + 0.004)


def test_figures_are_never_forgotten_and_come_down_by_trimming() -> None:
    """The old rule forgot figures after 60 s without a sample, so the next call ran the section unguarded
    (issue 12 item 4a); figures now have no age at all, and come down only by rule 4: after PROBE_FIRST
    deadline stops charged to a cell, its largest sample goes."""
    est = LatencyEstimator(2, window=16)
    pol = DeadlinePolicy(est, None)
    for ms in (1.0, 1.1, 1.0, 9.0, 1.2, 1.0):  # one pre-empted run among quiet ones
        est.record(2, 1, ms)
    assert est.estimate(2, 1) == pytest.approx(9.0)  # the higher p99 of 6 samples: their largest
    now, deadline = 100.0, 100.005  # 5 ms of slack: 9 ms does not fit, 1.2 ms would
    for _ in range(PROBE_FIRST - 1):
        assert pol.should_stop(2, 1, now, deadline)
    assert est.estimate(2, 1) == pytest.approx(9.0)
    assert pol.should_stop(2, 1, now, deadline)  # the 16th stop trims the 9 ms sample
    assert est.estimate(2, 1) == pytest.approx(1.2) and est.count(2, 1) == 5
    assert not pol.should_stop(2, 1, now, deadline)  # the section runs again ...
    est.record(2, 1, 1.1)  # ... and its run confirms the trim: the next interval stays PROBE_FIRST


def test_a_persistent_slowdown_backs_off_the_trims() -> None:
    est = LatencyEstimator(2, window=16)
    pol = DeadlinePolicy(est, None)
    est.record(2, 1, 1.0)
    est.record(2, 1, 1.0)
    now, deadline = 100.0, 100.005
    runs = 0
    for _ in range(20_000):
        if pol.should_stop(2, 1, now, deadline):
            continue
        runs += 1
        est.record(2, 1, 9.0)  # every run of it is slow: each trim is proved wrong, the interval doubles
    # the first run, then one after each trim: after 16, 32, ..., 2048 stops (4080 in all; 8 runs), then
    # every PROBE_MAX stops ((20000 - 1 - 4080 - 8) // (2048 + 1) = 7 runs): 16 late calls in 20 000
    assert PROBE_MAX == 2048 and runs == 1 + 8 + 7


def test_a_stop_the_profile_causes_is_not_charged_to_the_online_figure() -> None:
    est = LatencyEstimator(3, window=16)
    prof = LatencyProfile.from_json(_profile_dict(ms=(1.0, 8.0, 3.0)), 3)  # the profile says 8 ms
    pol = DeadlinePolicy(est, prof)
    for ms in (1.0, 9.0):
        est.record(2, 1, ms)
    for _ in range(10 * PROBE_FIRST):
        assert pol.should_stop(2, 1, 100.0, 100.005)
    assert est.count(2, 1) == 2 and est.estimate(2, 1) == pytest.approx(9.0)  # no trim: the profile decided


@pytest.mark.parametrize("kw, message", [({"quantile": 0.2}, "quantile"), ({"window": 4}, "window"),
                                         ({"window": 8.5}, "window")])
def test_estimator_settings_are_checked(kw, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        LatencyEstimator(2, **kw)


@pytest.mark.parametrize("c", [2, 10, 100])
@pytest.mark.parametrize("temperature", [1.0, 0.7, 2.5])
def test_single_row_max_prob_is_bit_identical_to_the_array_path(c: int, temperature: float) -> None:
    from sdedge.runtime.policies import max_prob_of_row

    rng = np.random.default_rng(c)
    logits = (rng.standard_normal((300, c)) * rng.uniform(0.1, 30, (300, 1))).astype(np.float32)
    ref = confidence(softmax(logits, temperature), "max_prob")
    got = np.array([max_prob_of_row(row, temperature) for row in logits], np.float32)
    np.testing.assert_array_equal(got, ref)  # exact: live single-image decisions equal the replay's


@pytest.mark.parametrize("criterion", ["max_prob", "entropy", "margin"])
def test_step_decides_as_replay_for_one_row_and_for_a_batch(criterion: str) -> None:
    """The live decision (ConfidencePolicy.step, scalar fast path included) is replay's, row by row,
    also when a threshold equals a row's float32 confidence exactly (the comparison is made once)."""
    rng = np.random.default_rng(3)
    z = (rng.standard_normal((3, 64, 10)) * 3).astype(np.float32)
    conf0 = confidence(softmax(z[0]), criterion)
    pol = ConfidencePolicy.build(3, [float(conf0[5]), 0.6], criterion)  # row 5 sits exactly on the threshold
    rep = replay(z, pol)
    for k in (1, 2):
        stop, conf, n_stop = pol.step(k, z[k - 1])
        want = pol.stop_mask(k, rep.exit_confidences[k - 1])
        assert 0 < n_stop < z.shape[1] and n_stop == want.sum()
        np.testing.assert_array_equal(stop, want)
        np.testing.assert_array_equal(conf, rep.exit_confidences[k - 1])
        for i in range(z.shape[1]):
            s1, c1, n1 = pol.step(k, z[k - 1, i:i + 1])
            assert s1 is None and n1 == int(want[i]) and c1[0] == conf[i]
    assert pol.step(1, z[0, 5:6])[2] == 1 and rep.exit_index[5] == 1
    given = pol.step(1, z[0], softmax(z[0]))  # the ensemble form: the caller's answer probabilities
    np.testing.assert_array_equal(given[1], pol.step(1, z[0])[1])
    all_stop = ConfidencePolicy.build(3, 0.0, criterion).step(1, z[0])
    assert all_stop[0] is None and all_stop[2] == z.shape[1]
    assert pol.step(3, z[2]) is None  # the deepest exit has no threshold
    assert ConfidencePolicy.build(3, None).step(1, z[0]) is None

"""Exit policies (runtime/policies.py): behaviour that the mutation run of issue 17 item 4 found untested.

Each test names the kind of mutant it kills (``benchmarks/mutation.py``); all of them check answers, error
messages or refusals on synthetic numbers (no model, no clock).
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from sdedge.common.errors import PolicyError
from sdedge.runtime.policies import (PROBE_FIRST, ConfidencePolicy, DeadlinePolicy, LatencyEstimator, check_budget_ms,
                                     check_criterion, confidence, exit_answers, max_prob_of_row, replay, softmax)
from sdedge.runtime.profile import LatencyProfile, make_profile

CRITERIA_TEXT = "max_prob, entropy, margin"


def _logits(shape: tuple[int, ...], seed: int = 0, scale: float = 3.0) -> np.ndarray:
    return (np.random.default_rng(seed).normal(size=shape) * scale).astype(np.float32)


def _ref_softmax(z: np.ndarray, t: float) -> np.ndarray:
    z = z.astype(np.float64) / t
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


# -- the parameter checks' messages ----------------------------------------------------------------------------
def test_criterion_errors_name_the_parameter_only_when_told() -> None:
    with pytest.raises(PolicyError) as e:
        check_criterion("luck")
    assert str(e.value) == f"unknown confidence criterion 'luck'; expected one of {CRITERIA_TEXT}"
    with pytest.raises(PolicyError) as e:
        check_criterion("luck", "parameters.criterion")
    assert str(e.value) == f"unknown confidence criterion 'luck' (parameters.criterion); expected one of {CRITERIA_TEXT}"


def test_budget_error_names_budget_ms_by_default() -> None:
    with pytest.raises(PolicyError, match=r"^budget_ms must be a positive finite number of milliseconds, got -1$"):
        check_budget_ms(-1)


def test_confidence_refuses_an_unknown_criterion_listing_the_known_ones() -> None:
    with pytest.raises(PolicyError) as e:
        confidence(np.full((1, 3), 1 / 3, np.float32), "luck")
    assert str(e.value) == f"unknown confidence criterion 'luck'; expected one of {CRITERIA_TEXT}"


# -- softmax and confidences -------------------------------------------------------------------------------------
@pytest.mark.parametrize("t", [1.0, 2.0, 3.0])
def test_softmax_divides_by_every_temperature(t: float) -> None:
    z = _logits((4, 5))
    np.testing.assert_allclose(softmax(z, t), _ref_softmax(z, t), rtol=1e-5, atol=1e-7)


def test_softmax_is_row_wise_on_any_rank_and_float32() -> None:
    z = _logits((2, 3, 4), seed=1).astype(np.float64)
    p = softmax(z, 2.0)
    assert p.dtype == np.float32  # float64 logits too: the answers are float32
    for i in range(2):
        np.testing.assert_allclose(p[i], _ref_softmax(z[i], 2.0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(p.sum(axis=-1), 1.0, rtol=1e-6)


def test_confidences_against_a_hand_computation() -> None:
    p = np.array([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3], [0.25, 0.25, 0.5]], np.float32)
    np.testing.assert_allclose(confidence(p, "max_prob"), [0.6, 0.5, 0.5], rtol=1e-6)
    np.testing.assert_allclose(confidence(p, "margin"), [0.3, 0.2, 0.25], rtol=1e-5)
    ent = [1 + sum(v * math.log(v) for v in row) / math.log(3) for row in p.tolist()]
    np.testing.assert_allclose(confidence(p, "entropy"), ent, rtol=1e-5)


@pytest.mark.parametrize("criterion", ["max_prob", "margin", "entropy"])
def test_confidence_of_a_stack_of_exits_is_per_row(criterion: str) -> None:
    """Probabilities [K, B, C]: each row's confidence over its own C classes (C=4 differs from B=3)."""
    p = softmax(_logits((2, 3, 4), seed=2))
    c = confidence(p, criterion)
    assert c.shape == (2, 3)
    for i in range(2):
        np.testing.assert_allclose(c[i], confidence(p[i], criterion), rtol=1e-6)


def test_entropy_confidence_is_float32_and_exactly_zero_for_uniform() -> None:
    """Over 6 classes float32 round-off puts 1 - H/log C at -1.2e-7: the clip holds it at 0."""
    c = confidence(softmax(np.zeros((2, 6), np.float32)), "entropy")
    assert c.dtype == np.float32
    assert c.tolist() == [0.0, 0.0]


@pytest.mark.parametrize("t", [1.0, 2.0, 0.5])
def test_max_prob_of_row_equals_the_softmax_max(t: float) -> None:
    z = _logits((5,), seed=3)
    want = float(confidence(softmax(z[None], t), "max_prob")[0])
    assert max_prob_of_row(z, t) == want
    if t == 1.0:
        assert max_prob_of_row(z) == want  # the default temperature is 1


# -- ConfidencePolicy -----------------------------------------------------------------------------------------
TEMPS = (1.0, 2.0, 4.0)


def _policy(thresholds=(0.5, 0.5, None), criterion: str = "max_prob", temps=TEMPS) -> ConfidencePolicy:
    return ConfidencePolicy(criterion, tuple(thresholds), tuple(temps))


def test_calibrated_threshold_without_calibration_says_what_to_run() -> None:
    with pytest.raises(PolicyError, match=r"^threshold='calibrated' needs calibration.json in the bundle; run `sdedge"):
        ConfidencePolicy.build(3, "calibrated")


@pytest.mark.parametrize("k", [1, 2, 3])
def test_each_exit_uses_its_own_temperature(k: int) -> None:
    z = _logits((3, 5), seed=4)
    np.testing.assert_array_equal(_policy().probs(k, z), softmax(z, TEMPS[k - 1]))


@pytest.mark.parametrize("k", [1, 2])
def test_one_row_step_uses_the_exit_temperature(k: int) -> None:
    z = _logits((1, 5), seed=5, scale=1.0)
    stop, conf, n_stop = _policy(thresholds=(0.0, 0.0, None)).step(k, z)
    assert conf.dtype == np.float32
    assert float(conf[0]) == pytest.approx(float(softmax(z, TEMPS[k - 1]).max()), rel=1e-6)


def test_one_row_step_with_the_callers_answer_judges_that_answer() -> None:
    """With ``answer_probs`` (the ensemble's answer) the confidence is that of the answer, not of the logits."""
    z = np.array([[10.0, 0.0, 0.0]], np.float32)  # the exit alone: sure
    answer = np.array([[0.4, 0.35, 0.25]], np.float32)  # the mean of the exits so far: not sure
    stop, conf, n_stop = _policy(thresholds=(0.9, 0.9, None)).step(1, z, answer)
    assert float(conf[0]) == pytest.approx(0.4) and n_stop == 0


def test_step_on_two_rows_judges_each_row() -> None:
    z = np.array([[10.0, 0.0, 0.0], [0.0, 0.1, 0.0]], np.float32)
    stop, conf, n_stop = _policy(thresholds=(0.9, 0.9, None), temps=(1.0, 1.0, 1.0)).step(1, z)
    assert conf.shape == (2,) and n_stop == 1
    assert stop.tolist() == [True, False]
    # the one-row fast path and the batch path agree on the same row, dtype included
    one = _policy(thresholds=(0.9, 0.9, None), temps=(1.0, 1.0, 1.0)).step(1, z[1:])
    assert one[1].dtype == conf.dtype and one[1][0] == conf[1]


def test_step_returns_the_mask_when_exactly_one_row_of_several_stops() -> None:
    z = np.array([[0.0, 0.1, 0.0], [10.0, 0.0, 0.0], [0.0, 0.0, 0.2]], np.float32)
    stop, conf, n_stop = _policy(thresholds=(0.9, 0.9, None), temps=(1.0, 1.0, 1.0)).step(1, z)
    assert n_stop == 1 and stop is not None and stop.tolist() == [False, True, False]


# -- exit_answers and replay ------------------------------------------------------------------------------------
def test_exit_answers_default_is_the_last_exit_and_uses_each_temperature() -> None:
    lg = _logits((3, 4, 5), seed=6)
    pol = _policy()
    probs, conf = exit_answers(lg, pol)  # answer defaults to "last"
    for k in range(3):
        np.testing.assert_array_equal(probs[k], softmax(lg[k], TEMPS[k]))
    np.testing.assert_array_equal(conf, np.stack([confidence(probs[k], "max_prob") for k in range(3)]))


def test_exit_answers_ensemble_is_the_running_mean() -> None:
    lg = _logits((3, 4, 5), seed=7)
    probs, _ = exit_answers(lg, _policy(), "ensemble")
    single = [softmax(lg[k], TEMPS[k]) for k in range(3)]
    for k in range(3):
        np.testing.assert_allclose(probs[k], sum(single[:k + 1]) / (k + 1), rtol=1e-6)


def test_exit_answers_refuses_an_unknown_answer_listing_the_known_ones() -> None:
    with pytest.raises(PolicyError) as e:
        exit_answers(_logits((3, 1, 5)), _policy(), "vote")
    assert str(e.value) == "answer must be one of last, ensemble, got 'vote'"


def test_replay_of_float64_logits_decides_as_the_session_on_float32() -> None:
    """The session sees float32 logits from the backend: replay casts first, so the probabilities are the
    same bits whether the caller hands it float64 or float32 logits."""
    lg64 = np.random.default_rng(8).normal(size=(3, 64, 7)) * 3
    pol = _policy(temps=(1.3, 2.7, 3.1))
    a, b = replay(lg64, pol), replay(lg64.astype(np.float32), pol)
    np.testing.assert_array_equal(a.probabilities, b.probabilities)
    np.testing.assert_array_equal(a.exit_confidences, b.exit_confidences)


def test_replay_result_confidence_is_that_of_the_exit_taken() -> None:
    lg = _logits((3, 6, 5), seed=9)
    r = replay(lg, _policy(thresholds=(0.6, 0.8, None)))
    assert r.confidence.shape == (6,)
    np.testing.assert_array_equal(r.confidence, r.exit_confidences[r.exit_index - 1, np.arange(6)])
    np.testing.assert_array_equal(r.label, r.probabilities.argmax(axis=1))


def test_replay_refuses_logits_of_another_exit_count() -> None:
    with pytest.raises(PolicyError, match=r"^expected logits of shape \[K=3, B, C\], got \[2, 4, 5\]$"):
        replay(_logits((2, 4, 5)), _policy())


# -- LatencyEstimator --------------------------------------------------------------------------------------------
def test_estimator_bounds_are_inclusive() -> None:
    LatencyEstimator(3, window=8, quantile=0.5)
    LatencyEstimator(3, window=8, quantile=1.0)
    with pytest.raises(PolicyError, match=r"latency_quantile must be in \[0.5, 1\], got 1.5"):
        LatencyEstimator(3, quantile=1.5)
    with pytest.raises(PolicyError, match="latency_window must hold at least 8 samples, got 7"):
        LatencyEstimator(3, window=7)


def test_default_window_keeps_the_last_256_samples() -> None:
    est = LatencyEstimator(2)
    for i in range(300):
        est.record(1, 1, float(i))
    assert est.count(1, 1) == 256


def test_reset_forgets_one_section_or_all() -> None:
    est = LatencyEstimator(2)
    for s in (0, 1, 2):
        est.record(s, 1, 1.0 + s)
    est.reset(1)
    assert [est.count(s, 1) for s in (0, 1, 2)] == [1, 0, 1]
    assert est.estimate(1, 1) is None and est.estimate(2, 1) == 3.0
    est.reset()
    assert [est.count(s, 1) for s in (0, 1, 2)] == [0, 0, 0]
    assert est.estimate(0, 1) is None and est.estimate(2, 1) is None


def test_borrowing_takes_the_smallest_larger_count_and_the_largest_smaller() -> None:
    est = LatencyEstimator(1)
    for rows, ms in ((1, 1.0), (4, 4.0), (8, 4.0)):
        est.record(1, rows, ms)
    # 2 rows: min(figure at 4 rows, figure at 1 row * 2 / 1) = min(4, 2); 8 rows is neither
    assert est.estimate(1, 2) == 2.0
    assert est.estimate(1, 6) == 4.0  # min(4 at 8 rows, 4 * 6 / 4 = 6)


def test_a_cell_of_two_samples_is_trimmed_after_the_charged_stops() -> None:
    est = LatencyEstimator(1)
    est.record(1, 1, 1.0)
    est.record(1, 1, 100.0)
    for _ in range(PROBE_FIRST - 1):
        est.skipped(1, 1)
    assert est.estimate(1, 1) == 100.0
    est.skipped(1, 1)
    assert est.estimate(1, 1) == 1.0


def test_the_count_restarts_after_each_trim() -> None:
    est = LatencyEstimator(1)
    for ms in (1.0, 50.0, 100.0):
        est.record(1, 1, ms)
    for _ in range(PROBE_FIRST):
        est.skipped(1, 1)
    assert est.estimate(1, 1) == 50.0
    for _ in range(PROBE_FIRST - 1):
        est.skipped(1, 1)
    assert est.estimate(1, 1) == 50.0  # one stop short of the next trim
    est.skipped(1, 1)
    assert est.estimate(1, 1) == 1.0


# -- DeadlinePolicy ----------------------------------------------------------------------------------------------
def _profile(samples: list[float], overhead_ms: float = 0.0) -> LatencyProfile:
    """A one-section profile at one row from ``samples`` (its p50 and p99 differ when the samples do)."""
    return LatencyProfile.from_json(make_profile("dev", "scripted", "fp32", 1, {1: [samples]}, overhead_ms, 5), 1)


def test_the_profile_figure_is_its_p90_by_default_or_the_quantile_asked_for() -> None:
    prof = _profile([1.0, 1.0, 1.0, 1.0, 10.0])
    p99, p90, p50 = (prof.section_ms(1, 1, q) for q in ("p99_ms", "p90_ms", "p50_ms"))
    assert p99 > p90 > 6 and p50 == 1.0
    assert DeadlinePolicy(LatencyEstimator(1), prof).section_cost_ms(1, 1) == p90
    assert DeadlinePolicy(LatencyEstimator(1), prof, profile_quantile="p50_ms").section_cost_ms(1, 1) == p50
    assert DeadlinePolicy(LatencyEstimator(1), prof, profile_quantile="p99_ms").section_cost_ms(1, 1) == p99
    # and the decision follows that figure: 5 ms of slack fits the p50, not the p90; 8 ms the p90, not the p99
    assert not DeadlinePolicy(LatencyEstimator(1), prof, profile_quantile="p50_ms").should_stop(1, 1, 0.0, 5e-3)
    assert DeadlinePolicy(LatencyEstimator(1), prof).should_stop(1, 1, 0.0, 5e-3)
    assert not DeadlinePolicy(LatencyEstimator(1), prof).should_stop(1, 1, 0.0, 8e-3)
    assert DeadlinePolicy(LatencyEstimator(1), prof, profile_quantile="p99_ms").should_stop(1, 1, 0.0, 8e-3)


def test_margin_adds_to_the_overhead() -> None:
    est = LatencyEstimator(1)
    est.record(0, 1, 1.0)
    assert DeadlinePolicy(est, margin_ms=2.0).overhead_ms(1) == 3.0


def test_a_profile_figure_alone_decides_with_no_floor() -> None:
    """Nothing measured, profile 0.5 ms: 0.7 ms of slack fits."""
    pol = DeadlinePolicy(LatencyEstimator(1), _profile([0.5] * 5))
    assert not pol.should_stop(1, 1, 1.0, 1.0 + 0.7e-3)
    assert pol.should_stop(1, 1, 1.0, 1.0 + 0.3e-3)


def test_an_online_figure_alone_decides_with_no_floor() -> None:
    est = LatencyEstimator(1)
    est.record(1, 1, 0.5)
    assert not DeadlinePolicy(est).should_stop(1, 1, 1.0, 1.0 + 0.7e-3)


def test_the_overhead_counts_against_the_slack() -> None:
    est = LatencyEstimator(1)
    est.record(1, 1, 2.0)
    est.record(0, 1, 1.0)
    pol = DeadlinePolicy(est)
    assert pol.should_stop(1, 1, 1.0, 1.0 + 2.5e-3)  # 2 + 1 > 2.5
    assert not pol.should_stop(1, 1, 1.0, 1.0 + 3.5e-3)


def test_a_section_that_ends_exactly_at_the_deadline_runs() -> None:
    est = LatencyEstimator(1)
    est.record(1, 1, 500.0)
    assert 1.0 + 500.0 * 1e-3 == 1.5  # exact in binary: the boundary itself is tested
    assert not DeadlinePolicy(est).should_stop(1, 1, 1.0, 1.5)


def _stops_until_trim(prior_ms: float, overhead_ms: float, slack_ms: float, stops: int = PROBE_FIRST) -> float:
    """The online figure (samples 1 and 100 ms) after ``stops`` deadline stops with ``slack_ms`` left."""
    est = LatencyEstimator(1)
    est.record(1, 1, 1.0)
    est.record(1, 1, 100.0)
    if overhead_ms:
        est.record(0, 1, overhead_ms)
    pol = DeadlinePolicy(est, _profile([prior_ms] * 5))
    for _ in range(stops):
        assert pol.should_stop(1, 1, 1.0, 1.0 + slack_ms * 1e-3)
    return est.estimate(1, 1)


def test_stops_are_charged_when_the_profile_alone_would_fit() -> None:
    assert _stops_until_trim(prior_ms=5.0, overhead_ms=0.0, slack_ms=10.0) == 1.0  # trimmed: charged


def test_stops_are_charged_when_the_profile_fits_exactly() -> None:
    # 1.0 + (250 + 250) * 1e-3 == 1.5 exactly: the profile fits at the boundary
    assert 1.0 + (250.0 + 250.0) * 1e-3 == 1.5
    est = LatencyEstimator(1)
    est.record(1, 1, 1.0)
    est.record(1, 1, 1000.0)
    est.record(0, 1, 250.0)
    pol = DeadlinePolicy(est, _profile([250.0] * 5))
    for _ in range(PROBE_FIRST):
        assert pol.should_stop(1, 1, 1.0, 1.5)
    assert est.estimate(1, 1) == 1.0


def test_stops_are_not_charged_when_the_profile_and_overhead_do_not_fit() -> None:
    # profile 5 ms + overhead 4 ms = 9 > 6 ms of slack: the stop is the profile's, not the online figure's
    assert _stops_until_trim(prior_ms=5.0, overhead_ms=4.0, slack_ms=6.0, stops=3 * PROBE_FIRST) == 100.0


# -- per-row decisions of a dynamic batch (infer_rows) -----------------------------------------------------------
def _has(cls, name: str) -> bool:
    return hasattr(cls, name)


@pytest.mark.skipif(not _has(ConfidencePolicy, "step_rows"), reason="step_rows not in this tree")
def test_step_rows_judges_each_row_against_its_own_threshold() -> None:
    pol = _policy(thresholds=(None, None, None), temps=(2.0, 1.0, 1.0))
    z = np.array([[0.0, 9.0], [0.0, 9.0], [0.4, 0.0]], np.float32)
    conf_want = confidence(softmax(z, 2.0), "max_prob")  # exit 1's temperature
    stop, conf, n_stop = pol.step_rows(1, z, np.float32([0.9, np.nan, 0.5]))
    np.testing.assert_array_equal(conf, conf_want)
    assert stop.tolist() == [True, False, True] and n_stop == 2  # NaN: no threshold for that row
    assert pol.step_rows(1, z, np.full(3, np.nan, np.float32)) is None  # no row has a threshold
    # exactly at the threshold stops; one of three is a split (the mask), none or all is not
    stop, _, n_stop = pol.step_rows(1, z, np.float32([conf_want[0], 1.0, 1.0]))
    assert n_stop == 1 and stop.tolist() == [True, False, False]
    assert pol.step_rows(1, z, np.float32([1.0, 1.0, 1.0]))[0::2] == (None, 0)
    assert pol.step_rows(1, z, np.float32([0.0, 0.0, 0.0]))[0::2] == (None, 3)
    # the caller's answer (the ensemble's mean) is judged instead of the exit's own softmax
    answer = np.float32([[0.5, 0.5], [0.1, 0.9], [0.2, 0.8]])
    stop, conf, n_stop = pol.step_rows(1, z, np.float32([0.7, 0.7, 0.7]), answer)
    np.testing.assert_array_equal(conf, confidence(answer, "max_prob"))
    assert stop.tolist() == [False, True, True] and n_stop == 2


def _linear_rows_policy(max_rows: int) -> DeadlinePolicy:
    """Section 2 measured at every row count 1..max_rows: n rows take n ms."""
    est = LatencyEstimator(2)
    for n in range(1, max_rows + 1):
        est.record(2, n, float(n))
    return DeadlinePolicy(est)


@pytest.mark.skipif(not _has(DeadlinePolicy, "rows_out_of_time"), reason="rows_out_of_time not in this tree")
def test_rows_out_of_time_each_check_counts_the_rows_still_going() -> None:
    pol = _linear_rows_policy(4)
    d = np.array([0.5e-3, 2.5e-3, 10e-3, np.inf])  # 4 rows: 4 ms, 3 rows: 3 ms, 2 rows: 2 ms
    late = pol.rows_out_of_time(2, d, np.ones(4, bool), 0.0)
    assert late.tolist() == [True, True, False, False]  # the second fits only on 2 rows, so it stops too
    # a row that is not going on (it stopped by confidence) is neither judged nor counted
    late = pol.rows_out_of_time(2, np.array([0.5e-3, 3.5e-3]), np.array([False, True]), 0.0)
    assert late.tolist() == [False, False]


@pytest.mark.skipif(not _has(DeadlinePolicy, "rows_out_of_time"), reason="rows_out_of_time not in this tree")
def test_rows_out_of_time_breaks_ties_by_row_order() -> None:
    """40 rows, every other one due in 25 ms (the rest in 1 s): 40 rows take 40 ms, so the earliest 15 of the
    tied rows stop, in row order, and then 25 rows fit."""
    pol = _linear_rows_policy(40)
    d = np.array([25e-3 if i % 2 == 0 else 1.0 for i in range(40)])
    late = pol.rows_out_of_time(2, d, np.ones(40, bool), 0.0)
    assert np.flatnonzero(late).tolist() == list(range(0, 30, 2))

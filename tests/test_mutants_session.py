"""``AnytimeSession`` (runtime/session.py) on the Python engine, against a scripted backend whose logits are a
table and a scripted clock: the answers of mixed batches (rows stopping at different exits, by confidence or
by the deadline), the ensemble answer, per-exit confidences, the refusals and the start-up that the mutation
run of issue 17 item 4 found untested.

No real timing and no model: :class:`TableBackend` reads each row's id from its first pixel, returns the
scripted logits of that row at each section and advances the :class:`FakeClock` of test_deadline_policy.py
by a scripted number of milliseconds. The native engine cannot run a scripted backend (it loads the ONNX
graphs itself), so these tests are Python-engine only; the engines' agreement is test_native_engine.py's.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sdedge.common.digest import sha256_bytes
from sdedge.common.errors import BundleError, ChecksumError, InputError, PolicyError
from sdedge.runtime import AnytimeSession
from sdedge.runtime.backends.base import Backend
from sdedge.runtime.policies import confidence, softmax

from test_deadline_policy import DEVICE, K, FakeClock, scripted_bundle

C = 2  # classes of the scripted bundle ("a", "b")
SURE = [0.0, 8.0]  # max prob 0.9997 for class b
UNSURE = [0.2, 0.0]  # max prob 0.55 for class a
MID = [0.0, 1.5]  # max prob 0.82 for class b


class TableBackend(Backend):
    """Row ``i`` (its first pixel) gets ``logits[k][i]`` from section k, which takes ``ms[k]`` milliseconds
    on any number of rows (or the next value queued in ``queue[k]``). Handles are arrays of row ids.
    Like ONNX Runtime it takes float32 inputs only."""

    name = "table"

    def __init__(self, clock: FakeClock, logits: dict[int, list[list[float]]], ms=(1.0, 2.0, 3.0),
                 max_batch: int | None = None) -> None:
        self.clock, self.ms = clock, ms
        self.logits = {k: np.asarray(v, np.float32) for k, v in logits.items()}
        self.queue: dict[int, list[float]] = {k: [] for k in range(1, K + 1)}
        self.runs = 0
        self.closed = False
        if max_batch is not None:
            self.max_batch = max_batch

    @property
    def num_sections(self) -> int:
        return K

    @property
    def device_name(self) -> str:
        return DEVICE

    def upload(self, x: np.ndarray) -> np.ndarray:
        if x.dtype != np.float32:
            raise TypeError(f"the graph takes float32 inputs, got {x.dtype}")
        return x[:, 0, 0, 0].astype(np.int64)

    def run_section(self, index: int, ids: np.ndarray):
        self.runs += 1
        q = self.queue[index]
        self.clock.advance_ms(q.pop(0) if q else self.ms[index - 1])
        return (None if index == K else ids), self.logits[index][ids]

    def take_rows(self, ids: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return ids[rows]

    def close(self) -> None:
        self.closed = True


def rows_input(n: int, ids=None) -> np.ndarray:
    x = np.zeros((n, 1, 4, 4), np.float32)
    x[:, 0, 0, 0] = np.arange(n) if ids is None else ids
    return x


def table(*per_row: tuple[list[float], list[float], list[float]]) -> dict[int, list[list[float]]]:
    """``table((z1, z2, z3) of row 0, (z1, z2, z3) of row 1, ...)`` -> {section: [row logits]}."""
    return {k: [list(r[k - 1]) for r in per_row] for k in range(1, K + 1)}


def session(tmp_path: Path, logits, warmup: int = 0, max_batch: int = 4, profile=None, calibration=None,
            backend_max_batch=None, **kw):
    clock = FakeClock()
    be = TableBackend(clock, logits, max_batch=backend_max_batch)
    b = scripted_bundle(tmp_path, profile)
    if calibration is not None:
        (tmp_path / "calibration.json").write_text(json.dumps(calibration))
        b.manifest.files["calibration.json"] = "0" * 64
    s = AnytimeSession(b, backend=be, warmup=warmup, max_batch=max_batch, clock=clock, **kw)
    return s, be, clock


# four rows: 0 sure at exit 1; 1 sure at exit 2; 2 never sure; 3 sure at exit 1
MIXED = table((SURE, SURE, SURE), (UNSURE, SURE, SURE), (UNSURE, UNSURE, MID), ([8.0, 0.0], SURE, SURE))


def test_a_batch_stops_each_row_at_its_own_exit(tmp_path: Path) -> None:
    s, be, clock = session(tmp_path, MIXED)
    t0 = clock()
    res = s.infer(rows_input(4), threshold=0.9)
    assert [r.exit_index for r in res] == [1, 2, 3, 1]
    assert [r.exits_run for r in res] == [1, 2, 3, 1]
    assert [r.stopped_by for r in res] == ["confidence", "confidence", "last", "confidence"]
    assert [r.label for r in res] == [1, 1, 1, 0] and [r.class_name for r in res] == ["b", "b", "b", "a"]
    for i, r in enumerate(res):
        want = softmax(be.logits[r.exit_index][i:i + 1])[0]
        assert r.probabilities.dtype == np.float32
        np.testing.assert_array_equal(r.probabilities, want)
        assert r.confidence == pytest.approx(float(want.max()), rel=1e-6)
        assert r.deadline_met is None and r.latency_ms == pytest.approx(6.0)
    # each row's confidence at every exit it ran, shallow first
    assert res[2].exit_confidences == pytest.approx([0.5498, 0.5498, float(softmax(np.float32([MID]))[0].max())], abs=1e-4)
    assert res[1].exit_confidences == pytest.approx([0.5498, 0.99966], abs=1e-4)
    assert res[0].exit_confidences == pytest.approx([0.99966], abs=1e-4)
    assert clock() - t0 == pytest.approx(6e-3)  # sections 2 and 3 ran on the rows still going only
    assert be.runs == 3


def test_a_batch_that_all_stops_at_exit_one_returns_there(tmp_path: Path) -> None:
    s, be, _ = session(tmp_path, table((SURE, SURE, SURE), ([9.0, 0.0], SURE, SURE)))
    res = s.infer(rows_input(2), threshold=0.9)
    assert [(r.exit_index, r.stopped_by, r.label) for r in res] == [(1, "confidence", 1), (1, "confidence", 0)]
    assert be.runs == 1


def test_single_image_returns_one_result_and_a_batch_a_list(tmp_path: Path) -> None:
    s, _, _ = session(tmp_path, MIXED)
    one = s.infer(rows_input(1)[0], threshold=0.9)
    assert not isinstance(one, list) and one.exit_index == 1
    assert isinstance(s.infer(rows_input(1), threshold=0.9), list)


def test_threshold_and_criterion_reach_the_policy(tmp_path: Path) -> None:
    s, _, _ = session(tmp_path, MIXED)
    x = rows_input(1, ids=[2])
    assert s.infer(x, threshold=0.5)[0].exit_index == 1  # 0.55 >= 0.5
    r = s.infer(x, threshold=0.5, criterion="margin")[0]  # margin 0.0997 < 0.5
    assert r.exit_index == 3
    assert r.confidence == pytest.approx(float(confidence(softmax(np.float32([MID])), "margin")[0]), rel=1e-6)
    assert s.infer(x, criterion="margin")[0].exit_index == 3  # a criterion alone sets no threshold
    assert [r.exit_index for r in s.infer(rows_input(4), threshold=[0.9, 0.99])] == [1, 2, 3, 1]  # per exit


def test_an_unhashable_threshold_is_refused_by_the_policy(tmp_path: Path) -> None:
    s, _, _ = session(tmp_path, MIXED)
    with pytest.raises(PolicyError, match=r"^threshold\[0\] \(exit 1\) must be a number in \[0, 1\], got \[0.5\]"):
        s.infer(rows_input(1), threshold=[[0.5], 0.5])


def test_the_deadline_stops_the_rest_while_confident_rows_answer(tmp_path: Path) -> None:
    """Row 0 is sure at exit 1 and row 1 at exit 2; row 2 is not: section 3 does not fit the 4 ms budget, so
    row 2 answers at exit 2 by the deadline while row 1 answers there by confidence."""
    s, _, _ = session(tmp_path, MIXED, warmup=1)
    res = s.infer(rows_input(3), threshold=0.9, budget_ms=4.0)
    assert [(r.exit_index, r.stopped_by) for r in res] == [(1, "confidence"), (2, "confidence"), (2, "deadline")]
    assert [r.label for r in res] == [1, 1, 0]
    np.testing.assert_array_equal(res[2].probabilities, softmax(np.float32([UNSURE]))[0])
    assert all(r.deadline_met for r in res)


def test_the_deadline_stops_all_remaining_rows_after_earlier_confident_ones(tmp_path: Path) -> None:
    s, _, _ = session(tmp_path, table((SURE, SURE, SURE), (UNSURE, UNSURE, MID), (UNSURE, MID, MID)), warmup=1)
    res = s.infer(rows_input(3), threshold=0.9, budget_ms=4.0)
    assert [(r.exit_index, r.stopped_by) for r in res] == [(1, "confidence"), (2, "deadline"), (2, "deadline")]
    assert [r.label for r in res] == [1, 0, 1]


def test_the_deadline_judges_only_the_rows_still_going(tmp_path: Path) -> None:
    """Section 2 costs 1 ms a row: on the two rows left after exit 1 it fits 4.5 ms, on four it would not."""
    clock = FakeClock()
    be = TableBackend(clock, table((SURE,) * 3, (SURE,) * 3, (UNSURE, UNSURE, MID), (UNSURE, UNSURE, MID)))
    be.run_section = _per_row_ms(be, {1: 0.5, 2: 1.0, 3: 1.0})
    s = AnytimeSession(scripted_bundle(tmp_path), backend=be, warmup=1, max_batch=4, clock=clock)
    res = s.infer(rows_input(4), threshold=0.9, budget_ms=4.5)
    # exit 1 after 2 ms (4 rows); section 2 on 2 rows: 2 ms (borrowed: min(4 ms at 4 rows, 1 ms x 2)) -> 4 ms
    assert [(r.exit_index, r.stopped_by) for r in res] == [(1, "confidence"), (1, "confidence"), (2, "deadline"),
                                                          (2, "deadline")]
    assert all(r.deadline_met for r in res)


def _per_row_ms(be: TableBackend, per_row: dict[int, float]):
    def run_section(index: int, ids: np.ndarray):
        be.runs += 1
        be.clock.advance_ms(per_row[index] * len(ids))
        return (None if index == K else ids), be.logits[index][ids]
    return run_section


def test_a_run_that_ends_exactly_at_the_deadline_met_it(tmp_path: Path) -> None:
    s, be, clock = session(tmp_path, MIXED, warmup=1)
    be.queue[3] = [4.0]  # section 3 is 1 ms slower than its figure: the call ends at the deadline exactly
    t0 = clock()
    deadline = ((t0 + 1.0 * 1e-3) + 2.0 * 1e-3) + 4.0 * 1e-3  # as the clock adds it up
    r = s.infer(rows_input(1, ids=[2]), deadline=deadline)[0]
    assert r.exit_index == 3 and clock() == deadline and r.deadline_met is True


def test_budget_and_deadline_the_earlier_wins(tmp_path: Path) -> None:
    s, _, clock = session(tmp_path, MIXED, warmup=1)
    x = rows_input(1, ids=[2])
    t0 = clock()
    assert s.infer(x, budget_ms=100.0, deadline=t0 + 3.5e-3)[0].exit_index == 2
    t0 = clock()
    assert s.infer(x, budget_ms=3.5, deadline=t0 + 0.1)[0].exit_index == 2
    t0 = clock()
    assert s.infer(x, budget_ms=100.0, deadline=t0 + 0.1)[0].exit_index == 3


@pytest.mark.parametrize("bad", [True, "5", float("inf"), float("nan")])
def test_a_bad_deadline_is_refused(tmp_path: Path, bad) -> None:
    s, _, _ = session(tmp_path, MIXED)
    with pytest.raises(PolicyError) as e:
        s.infer(rows_input(1), deadline=bad)
    assert str(e.value) == f"deadline must be a finite time.perf_counter() value in seconds, got {bad!r}"


def test_the_ensemble_answer_is_the_mean_of_the_exits_run(tmp_path: Path) -> None:
    """answer="ensemble": row 0's mean is sure after exit 1; rows 1 and 2 never are (row 1's mean of exits 1-2
    is 0.72, although exit 2 alone is sure), so they answer at exit 3. Answers and confidences are the means'."""
    logits = table((SURE, SURE, SURE), (UNSURE, SURE, [0.0, 12.0]), (UNSURE, UNSURE, [3.0, 0.0]))
    s, _, _ = session(tmp_path, logits, answer="ensemble")
    res = s.infer(rows_input(3), threshold=0.9)
    assert [(r.exit_index, r.stopped_by) for r in res] == [(1, "confidence"), (3, "last"), (3, "last")]
    p = {k: softmax(np.asarray(logits[k], np.float32)) for k in (1, 2, 3)}
    want = [p[1][0], (p[1][1] + p[2][1] + p[3][1]) / 3, (p[1][2] + p[2][2] + p[3][2]) / 3]
    for r, w in zip(res, want):
        np.testing.assert_allclose(r.probabilities, w, rtol=1e-6)
        assert r.confidence == pytest.approx(float(w.max()), rel=1e-6)
    assert res[1].exit_confidences == pytest.approx([float(p[1][1].max()), float(((p[1][1] + p[2][1]) / 2).max()),
                                                     float(want[1].max())], rel=1e-6)


def test_the_ensemble_with_a_deadline_answers_the_mean(tmp_path: Path) -> None:
    logits = table((SURE, SURE, SURE), (UNSURE, MID, MID))
    s, _, _ = session(tmp_path, logits, warmup=1, answer="ensemble")
    res = s.infer(rows_input(2), threshold=0.9, budget_ms=4.0)
    assert [(r.exit_index, r.stopped_by) for r in res] == [(1, "confidence"), (2, "deadline")]
    p1, p2 = softmax(np.float32([UNSURE]))[0], softmax(np.float32([MID]))[0]
    np.testing.assert_allclose(res[1].probabilities, (p1 + p2) / 2, rtol=1e-6)


def test_calibrated_temperatures_apply_to_every_answer(tmp_path: Path) -> None:
    cal = {"format": "sdedge-calibration", "format_version": 1, "criterion": "max_prob", "temperatures": [2.0, 3.0, 4.0],
           "thresholds": [0.6, 0.6, None], "enabled": [True, True, True]}
    s, _, _ = session(tmp_path, MIXED, calibration=cal)
    r = s.infer(rows_input(1, ids=[2]))[0]
    assert r.exit_index == 3
    np.testing.assert_array_equal(r.probabilities, softmax(np.float32([MID]), 4.0)[0])
    assert "calibration=yes" in repr(s)
    # the calibrated thresholds only when asked for: row 0 is sure at exit 1 (0.98 at T=2 >= 0.6)
    assert s.infer(rows_input(1, ids=[0]), threshold="calibrated")[0].exit_index == 1


def test_non_finite_logits_are_refused_naming_the_image(tmp_path: Path) -> None:
    logits = table((SURE, SURE, SURE), (SURE, SURE, [float("nan"), 0.0]), (SURE, SURE, SURE))
    s, _, _ = session(tmp_path, logits)
    peak = "2"  # row 1's largest preprocessed value (its id pixel is 1)
    x = rows_input(3, ids=[0, 1, 2])
    x[1, 0, 1, 1] = 2.0
    with pytest.raises(InputError) as e:
        s.infer(x)
    assert str(e.value) == (f"exit 3 produced non-finite probabilities (NaN/Inf) for image 1 of the batch: its "
                            f"preprocessed values reach |x| = {peak}, which overflows the network; expected "
                            "preprocessed values of order 1 (or send raw uint8 pixels)")
    with pytest.raises(InputError) as e:
        s.infer(x[1])
    assert str(e.value).startswith("exit 3 produced non-finite probabilities (NaN/Inf) for the input: its "
                                   "preprocessed values reach |x| = 2,")


def test_infer_all_exits_returns_every_exit_in_chunks(tmp_path: Path) -> None:
    s, be, _ = session(tmp_path, MIXED, max_batch=3)
    out = s.infer_all_exits(rows_input(4))  # more rows than max_batch: two chunks
    assert out.shape == (K, 4, C)
    for k in range(1, K + 1):
        np.testing.assert_array_equal(out[k - 1], be.logits[k])
    one = s.infer_all_exits(rows_input(1, ids=[3])[0])
    np.testing.assert_array_equal(one[:, 0], [be.logits[k][3] for k in range(1, K + 1)])


def test_a_backend_with_fewer_rows_caps_max_batch(tmp_path: Path) -> None:
    s, _, _ = session(tmp_path, MIXED, max_batch=4, backend_max_batch=2)
    assert s.max_batch == 2
    with pytest.raises(InputError, match=r"^batch of 3 images is larger than max_batch=2"):
        s.infer(rows_input(3))


def test_latency_window_and_quantile_reach_the_estimator(tmp_path: Path) -> None:
    s, _, _ = session(tmp_path, MIXED, latency_window=8, latency_quantile=0.5)
    for _ in range(20):
        s.infer(rows_input(1, ids=[2]))
    assert s.estimator.count(1, 1) == 8 and s.estimator.quantile == 0.5


def test_warmup_zero_runs_nothing_and_warmup_runs_float32(tmp_path: Path) -> None:
    s, be, _ = session(tmp_path, MIXED, warmup=0)
    assert be.runs == 0 and s.estimator.count(1, 1) == 0
    s, be, _ = session(tmp_path, MIXED, warmup=2, max_batch=4)
    assert be.runs == (1 + 2) * K * 2  # an untimed chain, then 2 calls, at 1 row and at 4 rows
    assert s.estimator.count(1, 1) == 1 and s.estimator.count(1, 4) == 1


def test_the_runtime_own_time_is_charged_as_overhead(tmp_path: Path) -> None:
    """The scripted clock moves only in the sections: the overhead figure must be 0, not a fraction of them."""
    s, _, _ = session(tmp_path, MIXED)
    s.infer(rows_input(1, ids=[2]))
    assert abs(s.estimator.estimate(0, 1)) < 1e-6


def test_engine_choice(tmp_path: Path) -> None:
    from sdedge.runtime.native_engine import NativeUnavailable

    assert session(tmp_path, MIXED, engine="python")[0].engine == "python"
    assert session(tmp_path, MIXED)[0].engine == "python"  # auto: a scripted backend runs on the Python engine
    with pytest.raises(NativeUnavailable, match=r"^engine='native' cannot run this session: "):
        session(tmp_path, MIXED, engine="native")


def test_repr_and_missing_attributes(tmp_path: Path) -> None:
    s, _, _ = session(tmp_path, MIXED)
    assert repr(s) == (f"AnytimeSession({str(tmp_path)!r}, engine='python', backend='table', device='{DEVICE}', "
                       "exits=3, profile=no, calibration=no)")
    with pytest.raises(AttributeError) as e:
        s.no_such_thing  # noqa: B018
    assert str(e.value) == "'AnytimeSession' object has no attribute 'no_such_thing'"


def test_repr_says_when_a_profile_is_loaded(tmp_path: Path) -> None:
    from sdedge.runtime.profile import make_profile

    prof = make_profile(DEVICE, "table", "fp32", 1, {1: [[1.0], [2.0], [3.0]]}, 0.0, 1)
    s, _, _ = session(tmp_path, MIXED, profile=prof)
    assert repr(s).endswith("exits=3, profile=yes, calibration=no)")


def test_a_failed_start_leaves_the_callers_backend_open(tmp_path: Path) -> None:
    clock = FakeClock()
    be = TableBackend(clock, MIXED)
    b = scripted_bundle(tmp_path, {"format": "sdedge-profile", "format_version": 1})  # a malformed profile
    with pytest.raises(BundleError, match="^malformed latency profile: "):
        AnytimeSession(b, backend=be, warmup=0, clock=clock)
    assert not be.closed  # the caller made it: the caller closes it


def _synthetic_bundle_dir(root: Path) -> Path:
    from test_bundle_format import make_manifest
    from sdedge.common.jsonio import dump_json

    files = {f"sections/s{i}.onnx": f"section {i}".encode() for i in (1, 2, 3)}
    files["full.onnx"] = b"full graph"
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    m = make_manifest(files, classes=2)
    (root / "manifest.json").write_bytes(dump_json(m))
    assert m["files"]["full.onnx"]["sha256"] == sha256_bytes(b"full graph")
    return root


def test_a_bundle_path_is_verified_unless_told_not_to(tmp_path: Path) -> None:
    root = _synthetic_bundle_dir(tmp_path / "b")
    (root / "full.onnx").write_bytes(b"full graph!")
    clock = FakeClock()
    with pytest.raises(ChecksumError, match="full.onnx"):
        AnytimeSession(root, backend=TableBackend(clock, MIXED), warmup=0, clock=clock)
    s = AnytimeSession(root, backend=TableBackend(clock, MIXED), warmup=0, clock=clock, verify=False)
    assert s.num_exits == 3


# -- infer_rows: each row its own threshold and deadline, answered as it settles -------------------------------
def test_rows_with_their_own_thresholds_are_answered_as_they_settle(tmp_path: Path) -> None:
    s, be, clock = session(tmp_path, MIXED)
    t0 = clock()
    heard: list[tuple[list[int], list, float]] = []
    res = s.infer_rows(rows_input(4), thresholds=[0.9, 0.99, None, 0.5],
                       on_settled=lambda idx, rs: heard.append((idx, rs, (clock() - t0) * 1e3)))
    assert [(r.exit_index, r.stopped_by) for r in res] == [(1, "confidence"), (2, "confidence"), (3, "last"),
                                                          (1, "confidence")]
    assert [h[0] for h in heard] == [[0, 3], [1], [2]]
    assert [h[2] for h in heard] == pytest.approx([1.0, 3.0, 6.0])
    assert [r.latency_ms for r in res] == pytest.approx([1.0, 3.0, 6.0, 1.0])  # each at the moment it settled
    assert all(r.deadline_met is None for r in res)
    assert heard[0][1][1] is res[3] and heard[2][1][0] is res[2]  # the results heard are the ones returned
    assert [r.label for r in res] == [1, 1, 1, 0] and [r.class_name for r in res] == ["b", "b", "b", "a"]
    for i, r in enumerate(res):
        np.testing.assert_array_equal(r.probabilities, softmax(be.logits[r.exit_index][i:i + 1])[0])
    assert res[1].exit_confidences == pytest.approx([0.5498, 0.99966], abs=1e-4)
    assert s.estimator.count(0, 4) == 1 and abs(s.estimator.estimate(0, 4)) < 1e-6  # own time charged, and 0


def test_rows_with_their_own_deadlines(tmp_path: Path) -> None:
    s, _, clock = session(tmp_path, table(*[(UNSURE, UNSURE, MID)] * 4), warmup=1)
    t0 = clock()
    res = s.infer_rows(rows_input(4), deadlines=[t0 + 2e-3, t0 + 4e-3, None, t0 - 1.0])
    assert [(r.exit_index, r.stopped_by) for r in res] == [(1, "deadline"), (2, "deadline"), (3, "last"),
                                                          (1, "deadline")]
    assert [r.deadline_met for r in res] == [True, True, None, False]  # the last one was late when it came
    assert [r.latency_ms for r in res] == pytest.approx([1.0, 3.0, 6.0, 1.0])


def test_rows_confident_and_late_at_the_same_exit(tmp_path: Path) -> None:
    """At exit 1 row 0 is sure and row 1 is out of time: both settle there, each with its reason; row 2 goes on."""
    s, _, clock = session(tmp_path, MIXED, warmup=1)
    t0 = clock()
    res = s.infer_rows(rows_input(3), thresholds=[0.9, None, None], deadlines=[None, t0 + 2e-3, None])
    assert [(r.exit_index, r.stopped_by) for r in res] == [(1, "confidence"), (1, "deadline"), (3, "last")]
    assert [r.label for r in res] == [1, 0, 1]


def test_rows_in_ensemble_mode_answer_the_mean(tmp_path: Path) -> None:
    logits = table((SURE, SURE, SURE), (UNSURE, MID, MID))
    s, _, _ = session(tmp_path, logits, answer="ensemble")
    res = s.infer_rows(rows_input(2), thresholds=[0.9, 0.6])
    assert [(r.exit_index, r.stopped_by) for r in res] == [(1, "confidence"), (2, "confidence")]
    p1, p2 = softmax(np.float32([UNSURE]))[0], softmax(np.float32([MID]))[0]
    np.testing.assert_allclose(res[1].probabilities, (p1 + p2) / 2, rtol=1e-6)


def test_infer_rows_refusals_name_the_counts_and_criteria(tmp_path: Path) -> None:
    cal = {"format": "sdedge-calibration", "format_version": 1, "criterion": "margin", "temperatures": [1.0] * 3,
           "thresholds": [0.5, 0.5, None], "enabled": [True, True, True]}
    s, _, _ = session(tmp_path, MIXED, calibration=cal)
    with pytest.raises(PolicyError) as e:
        s.infer_rows(rows_input(2), thresholds=[0.5, 0.5, 0.5])
    assert str(e.value) == "infer_rows needs one threshold and one deadline per row: 2 rows, 3 thresholds, 2 deadlines"
    with pytest.raises(PolicyError) as e:
        s.infer_rows(rows_input(2), deadlines=[None])
    assert str(e.value) == "infer_rows needs one threshold and one deadline per row: 2 rows, 2 thresholds, 1 deadlines"
    with pytest.raises(PolicyError) as e:
        s.infer_rows(rows_input(2), thresholds=[0.5, "calibrated"])
    assert str(e.value) == ("the rows of one infer_rows call must share a criterion; got 'max_prob' and 'margin' "
                            "(\"calibrated\" rows use the calibration's)")
    assert [r.exit_index for r in s.infer_rows(rows_input(2), thresholds=["calibrated", 0.05], criterion="margin")] \
        == [1, 1]


def test_non_finite_rows_are_refused_naming_the_image(tmp_path: Path) -> None:
    """Row 0 settles at exit 1 and is answered; row 1 reaches exit 3, whose logits overflow."""
    s, _, _ = session(tmp_path, table((SURE, SURE, SURE), (UNSURE, UNSURE, [float("inf"), 0.0])))
    with np.errstate(invalid="ignore"):
        with pytest.raises(InputError, match=r"^exit 3 produced non-finite probabilities \(NaN/Inf\) for image 1 of the batch"):
            s.infer_rows(rows_input(2), thresholds=[0.9, 0.9])
        with pytest.raises(InputError, match=r"^exit 3 produced non-finite probabilities \(NaN/Inf\) for the input"):
            s.infer_rows(rows_input(1, ids=[1]), thresholds=[0.9])

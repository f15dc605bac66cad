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


# -- more of the decision loop: options, the ensemble on splits, exact boundaries, refusals ----------------------
def test_an_options_record_is_taken_and_kept(tmp_path: Path) -> None:
    from sdedge.runtime import SessionOptions

    clock = FakeClock()
    opts = SessionOptions(answer="ensemble", criterion="margin", warmup=0, max_batch=2)
    s = AnytimeSession(scripted_bundle(tmp_path), opts, backend=TableBackend(clock, MIXED), clock=clock)
    assert s.options.answer == "ensemble" and s.options.max_batch == 2 and s.answer == "ensemble"
    r = s.infer(rows_input(1, ids=[2]), threshold=0.5)[0]  # the session's criterion: margin 0.0997 < 0.5
    assert r.exit_index == 3
    assert s.infer(rows_input(1, ids=[2]), threshold=0.09)[0].exit_index == 1


def test_close_closes_the_backend(tmp_path: Path) -> None:
    s, be, _ = session(tmp_path, MIXED)
    s.close()
    assert be.closed


def test_a_criterion_alone_reports_that_criterion(tmp_path: Path) -> None:
    s, _, _ = session(tmp_path, MIXED)
    r = s.infer(rows_input(1, ids=[2]), criterion="entropy")[0]
    assert r.exit_index == 3
    assert r.confidence == pytest.approx(float(confidence(softmax(np.float32([MID])), "entropy")[0]), rel=1e-6)


def test_an_ensemble_answer_is_float32(tmp_path: Path) -> None:
    s, _, _ = session(tmp_path, MIXED, answer="ensemble")
    res = s.infer(rows_input(4))  # every row to the last exit: one group, the batch in order
    assert all(r.probabilities.dtype == np.float32 and r.exit_index == 3 for r in res)


ENSEMBLE_SPLIT = table((UNSURE, MID, MID), (UNSURE, UNSURE, MID), (UNSURE, UNSURE, SURE))


def test_an_ensemble_row_stopping_mid_batch_answers_its_mean(tmp_path: Path) -> None:
    """At exit 2 row 0's mean (0.63) passes 0.6 while the others go on: its answer is the mean of exits 1-2."""
    s, _, _ = session(tmp_path, ENSEMBLE_SPLIT, answer="ensemble")
    res = s.infer(rows_input(3), threshold=0.6)
    assert [(r.exit_index, r.stopped_by) for r in res] == [(2, "confidence"), (3, "last"), (3, "last")]
    p1, p2 = softmax(np.float32([UNSURE]))[0], softmax(np.float32([MID]))[0]
    np.testing.assert_allclose(res[0].probabilities, (p1 + p2) / 2, rtol=1e-6)
    assert res[0].confidence == pytest.approx(float(((p1 + p2) / 2).max()), rel=1e-6)


def test_an_ensemble_split_between_confidence_and_deadline_answers_the_means(tmp_path: Path) -> None:
    s, _, _ = session(tmp_path, table((UNSURE, SURE, SURE), (UNSURE, MID, MID)), warmup=1, answer="ensemble")
    res = s.infer(rows_input(2), threshold=0.7, budget_ms=4.0)
    assert [(r.exit_index, r.stopped_by) for r in res] == [(2, "confidence"), (2, "deadline")]
    pu, pm, ps = (softmax(np.float32([z]))[0] for z in (UNSURE, MID, SURE))
    np.testing.assert_allclose(res[0].probabilities, (pu + ps) / 2, rtol=1e-6)
    np.testing.assert_allclose(res[1].probabilities, (pu + pm) / 2, rtol=1e-6)


def test_non_finite_message_shows_the_offending_images_own_values(tmp_path: Path) -> None:
    logits = table((SURE, SURE, SURE), (SURE, SURE, [float("nan"), 0.0]), (SURE, SURE, SURE))
    s, _, _ = session(tmp_path, logits)
    x = rows_input(3)
    x[1, 0, 1, 1], x[2, 0, 1, 1] = 2.0, 5.0  # the next image's larger values are not the offender's
    with pytest.raises(InputError, match=r"for image 1 of the batch: its preprocessed values reach \|x\| = 2, "):
        s.infer(x)
    # answered as rows settle: row 0 at exit 1, then rows 1 and 2 together at exit 3, where row 2 overflows
    x = rows_input(4, ids=[0, 0, 1, 0])
    x[2, 0, 1, 1], x[3, 0, 1, 1] = 2.0, 5.0
    with np.errstate(invalid="ignore"):
        with pytest.raises(InputError, match=r"for image 2 of the batch: its preprocessed values reach \|x\| = 2, "):
            s.infer_rows(x, thresholds=[0.9, None, None, None])


def test_a_row_settling_exactly_at_its_deadline_met_it(tmp_path: Path) -> None:
    s, _, clock = session(tmp_path, MIXED, warmup=1)
    t0 = clock()
    d = t0 + 1.0 * 1e-3  # exit 1 ends exactly then, and section 2 does not fit
    r = s.infer_rows(rows_input(2, ids=[2, 2]), deadlines=[d, None])
    assert (r[0].exit_index, r[0].stopped_by, r[0].deadline_met) == (1, "deadline", True)


def test_rows_in_ensemble_mode_are_judged_and_answered_on_the_mean(tmp_path: Path) -> None:
    logits = table((SURE, SURE, SURE), (UNSURE, MID, MID))
    s, _, clock = session(tmp_path, logits, warmup=1, answer="ensemble")
    res = s.infer_rows(rows_input(2), thresholds=[0.9, 0.7])  # row 1: exit 2 alone 0.82, the mean 0.63
    assert [(r.exit_index, r.stopped_by) for r in res] == [(1, "confidence"), (3, "last")]
    t0 = clock()
    res = s.infer_rows(rows_input(2), thresholds=[0.9, None], deadlines=[None, t0 + 4e-3])
    assert [(r.exit_index, r.stopped_by) for r in res] == [(1, "confidence"), (2, "deadline")]
    pu, pm = softmax(np.float32([UNSURE]))[0], softmax(np.float32([MID]))[0]
    np.testing.assert_allclose(res[1].probabilities, (pu + pm) / 2, rtol=1e-6)


def test_rows_all_settled_before_the_last_exit_by_confidence_and_deadline(tmp_path: Path) -> None:
    s, _, clock = session(tmp_path, MIXED, warmup=1)
    t0 = clock()
    res = s.infer_rows(rows_input(2), thresholds=[0.9, None], deadlines=[None, t0 + 2e-3])
    assert [(r.exit_index, r.stopped_by) for r in res] == [(1, "confidence"), (1, "deadline")]


def test_a_named_backend_that_cannot_load_the_graphs_is_refused_naming_the_file(tmp_path: Path) -> None:
    from sdedge.common.errors import BackendError

    root = _synthetic_bundle_dir(tmp_path / "b")
    with pytest.raises(BackendError, match=r"could not load .*sections/s1\.onnx"):
        AnytimeSession(root, backend="onnxruntime", warmup=0, engine="python")


# -- precision "auto", the runtime's own time including the input's conversion, ensemble splits in both modes ----
def _has_session(name: str) -> bool:
    return hasattr(AnytimeSession, name)


@pytest.mark.skipif(not _has_session("backend_info"), reason="precision resolution not in this tree")
def test_auto_precision_is_a_ready_backends_own(tmp_path: Path) -> None:
    from types import SimpleNamespace

    s, _, _ = session(tmp_path, MIXED)
    assert s.precision == "fp32" and s.backend_info["precision"] == "fp32"  # a backend that says nothing: fp32
    clock = FakeClock()
    be = TableBackend(clock, MIXED)
    be.options = SimpleNamespace(precision="fp16")
    s = AnytimeSession(scripted_bundle(tmp_path), backend=be, warmup=0, clock=clock)
    assert s.precision == "fp16" and s.describe_backend() == f"table fp16 on {DEVICE} (python engine)"


@pytest.mark.skipif(not _has_session("backend_info"), reason="precision resolution not in this tree")
def test_auto_backend_on_a_bundle_without_engines_loads_the_onnx_graphs(tmp_path: Path) -> None:
    from sdedge.common.errors import BackendError

    root = _synthetic_bundle_dir(tmp_path / "b")  # no engines built: auto means ONNX Runtime, fp32
    with pytest.raises(BackendError, match=r"could not load .*sections/s1\.onnx"):
        AnytimeSession(root, backend="auto", warmup=0, engine="python")


class SlowToConvert:
    """An array-like input whose conversion to an array takes ``ms`` on the scripted clock."""

    def __init__(self, x: np.ndarray, clock: FakeClock, ms: float) -> None:
        self.x, self.clock, self.ms = x, clock, ms

    def __array__(self, dtype=None, copy=None):
        self.clock.advance_ms(self.ms)
        return self.x if dtype is None else self.x.astype(dtype)


def test_input_conversion_counts_as_the_runtimes_own_time(tmp_path: Path) -> None:
    """The scripted clock moves only in the sections and while the input is converted: the overhead figure of
    the call (rule 7) is exactly that conversion time."""
    s, _, clock = session(tmp_path, MIXED)
    r = s.infer(SlowToConvert(rows_input(1, ids=[2]), clock, 0.5))[0]
    assert r.latency_ms == pytest.approx(6.5)
    assert s.estimator.estimate(0, 1) == pytest.approx(0.5, abs=1e-9)
    s.infer_rows(SlowToConvert(rows_input(2, ids=[2, 2]), clock, 0.25))
    assert s.estimator.estimate(0, 2) == pytest.approx(0.25, abs=1e-9)


def test_ensemble_rows_stopping_mid_batch_answer_their_means_in_row_mode(tmp_path: Path) -> None:
    s, _, _ = session(tmp_path, table((UNSURE, SURE, SURE), (UNSURE, UNSURE, MID)), answer="ensemble")
    res = s.infer_rows(rows_input(2), thresholds=[0.7, 0.7])  # row 0's mean at exit 2: 0.725
    assert [(r.exit_index, r.stopped_by) for r in res] == [(2, "confidence"), (3, "last")]
    pu, ps = softmax(np.float32([UNSURE]))[0], softmax(np.float32([SURE]))[0]
    np.testing.assert_allclose(res[0].probabilities, (pu + ps) / 2, rtol=1e-6)


@pytest.mark.skipif(not _has_session("section_cost_ms"), reason="section_cost_ms not in this tree")
def test_section_cost_is_the_deadline_policys_figure(tmp_path: Path) -> None:
    """Section 0 is the runtime's own time (the overhead figure), sections 1..K their predicted cost; 1 row by default."""
    from sdedge.runtime.profile import make_profile

    prof = make_profile(DEVICE, "table", "fp32", 1, {1: [[1.0], [2.0], [3.0]]}, 0.5, 1)  # decision overhead 0.5 ms
    s, _, _ = session(tmp_path, MIXED, warmup=1, max_batch=4, profile=prof)
    s.estimator.record(0, 1, 0.25)
    s.estimator.record(0, 4, 0.75)
    assert s.section_cost_ms(0) == s.deadline_policy.overhead_ms(1) == 0.5  # the profile's, larger than 0.25
    assert s.section_cost_ms(0, 4) == s.deadline_policy.overhead_ms(4) == 0.75
    assert [s.section_cost_ms(k) for k in (1, 2, 3)] == pytest.approx([1.0, 2.0, 3.0])
    assert s.section_cost_ms(2, 4) == s.deadline_policy.section_cost_ms(2, 4)

"""The server's scheduling: earliest deadline first, expired requests answered without running, and dynamic
batches whose rows each keep their own threshold and deadline (``AnytimeSession.infer_rows``, both engines).

No real timing: the queue is driven by a scripted clock, the per-row deadline rule by the scripted backend and
clock of ``test_deadline_policy``; the real-bundle tests use only deadlines that every run meets or misses
by hours (already passed, or none).
"""
from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field

import numpy as np
import pytest

from sdedge.common.errors import PolicyError
from sdedge.runtime.server.scheduler import EdfQueue, Overloaded, ShuttingDown
from test_deadline_policy import K, linear_ms, scripted_session


@dataclass
class Job:
    name: str
    deadline: float | None
    t_enqueued: float
    late: bool = False
    rows: int = 1
    kind: str = "a"
    gone: bool = False
    extra: dict = field(default_factory=dict)

    def cancelled(self) -> bool:
        return self.gone


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def drain(q: EdfQueue, **kw) -> list[list[str]]:
    """Take until empty; each take's batch as names, expired ones as ``!name``."""
    out = []
    while len(q):
        got = q.take(timeout=0, **kw)
        if got is None:
            break
        expired, batch = got
        out.append([f"!{j.name}" for j in expired] + [j.name for j in batch])
    return out


def test_earliest_deadline_first_fifo_among_equals_no_deadline_last():
    clock = Clock()
    q = EdfQueue(16, clock, promote_after_s=10.0)
    for name, d in (("late", 105.0), ("none1", None), ("soon", 101.0), ("tie1", 103.0), ("none2", None),
                    ("tie2", 103.0)):
        q.put(Job(name, d, clock()))
    assert drain(q) == [["soon"], ["tie1"], ["tie2"], ["late"], ["none1"], ["none2"]]


def test_a_request_without_deadline_does_not_starve():
    clock = Clock()
    q = EdfQueue(16, clock, promote_after_s=1.0)
    q.put(Job("patient", None, clock()))  # arrives at 100.0: served as if due at 101.0 ...
    for i in range(3):
        q.put(Job(f"d{i}", 100.5 + i, clock()))  # ... so after d0 (100.5), before d1 (101.5) and d2
    assert drain(q) == [["d0"], ["patient"], ["d1"], ["d2"]]


def test_fifo_order_is_arrival_order():
    clock = Clock()
    q = EdfQueue(16, clock, order="fifo")
    for i, d in enumerate((105.0, None, 101.0)):
        clock.t += 0.001
        q.put(Job(f"j{i}", d, clock()))
    assert drain(q) == [["j0"], ["j1"], ["j2"]]


def test_adaptive_order_is_edf_while_its_group_meets_deadlines():
    clock = Clock()
    q = EdfQueue(16, clock, promote_after_s=10.0, order="adaptive")
    for name, d in (("late", 105.0), ("none1", None), ("soon", 101.0), ("tie1", 103.0), ("none2", None),
                    ("tie2", 103.0)):
        q.put(Job(name, d, clock()))
    assert q.hit_share == 1.0
    assert drain(q) == [["soon"], ["tie1"], ["tie2"], ["late"], ["none1"], ["none2"]]


def test_adaptive_group_shrinks_while_it_misses_and_the_rest_wait_in_arrival_order():
    from sdedge.runtime.server import scheduler as S

    clock = Clock()
    q = EdfQueue(256, clock, promote_after_s=10.0, order="adaptive")
    member = Job("member", 200.0, clock())
    q.put(member)
    q.take(timeout=0)
    outsider = Job("outsider", 200.0, clock())
    outsider.sdedge_hit = False
    for _ in range(S.ADAPT_WINDOW - 1):
        q.report(member, False)
        q.report(outsider, False)  # not in the group: not counted
    assert q.hit_share == 1.0
    q.report(member, False)  # the window's last outcome: 0 % met < 95 %
    assert q.hit_share == pytest.approx(S.ADAPT_DOWN)
    for _ in range(60 * S.ADAPT_WINDOW):  # down to the floor, never below
        q.report(member, False)
    assert q.hit_share == pytest.approx(S.ADAPT_FLOOR)
    for _ in range(20 * S.ADAPT_WINDOW):  # everything met: back up, step by step
        q.report(member, True)
    assert S.ADAPT_FLOOR * S.ADAPT_UP ** 19 < q.hit_share <= min(1.0, S.ADAPT_FLOOR * S.ADAPT_UP ** 20) + 1e-12
    q.hit_share = 0.5
    for i in range(20):  # deadlines falling with arrival: EDF would reverse them
        clock.t += 0.001
        q.put(Job(f"j{i:02d}", 105.0 - 0.1 * i, clock()))  # due before "nodl" is promoted (arrival + 10 s)
    q.put(Job("nodl", None, clock()))
    order = [names[0] for names in drain(q)]
    group = [n for n in order if n != "nodl" and 0 <= int(n[1:]) < 20][:order.index("nodl")]
    rest = order[order.index("nodl") + 1:]
    assert 6 <= len(group) <= 14 and len(group) + len(rest) == 20  # about half joined the group
    assert group == sorted(group, reverse=True)  # the group: earliest deadline first
    assert rest == sorted(rest)  # the others: after the requests without a deadline, in arrival order


def test_the_pool_reports_each_outcome_to_the_adaptive_order():
    import time
    from types import SimpleNamespace

    from sdedge.runtime.server import scheduler as S
    from sdedge.runtime.server.worker import InferencePool

    class Late:
        max_batch = 1
        clock = staticmethod(time.perf_counter)

        def infer(self, x, threshold=None, criterion=None, deadline=None):
            return [SimpleNamespace(deadline_met=False, latency_ms=1.0)]

    async def go(pool: InferencePool) -> None:
        for _ in range(S.ADAPT_WINDOW):
            await pool.run(np.zeros((1, 4, 4, 1), np.uint8), deadline=time.perf_counter() + 60)

    for order, share in (("adaptive", S.ADAPT_DOWN), ("edf", 1.0)):
        pool = InferencePool([Late()], queue_order=order, batching=False)
        try:
            asyncio.run(go(pool))
            assert pool._q.hit_share == pytest.approx(share), order
        finally:
            pool.close(5)


def test_the_queue_order_is_a_server_and_cli_setting():
    from sdedge.cli import build_parser
    from sdedge.runtime.server.config import ServerConfig, ServerConfigError

    assert ServerConfig(queue_order="adaptive").queue_order == "adaptive"
    with pytest.raises(ServerConfigError, match="edf, fifo, adaptive"):
        ServerConfig(queue_order="lifo")
    args = build_parser().parse_args(["serve", "bundle", "--queue-order", "adaptive"])
    assert args.queue_order == "adaptive"


def test_expired_requests_come_back_unrun_unless_they_asked_for_the_floor():
    clock = Clock()
    q = EdfQueue(16, clock)
    q.put(Job("gone", 100.5, clock()))
    q.put(Job("floor", 100.6, clock(), late=True))
    q.put(Job("fine", 200.0, clock()))
    q.put(Job("cancelled", 100.1, clock(), gone=True))
    clock.t = 101.0  # the first two deadlines have passed while they waited
    assert drain(q) == [["!gone", "floor"], ["fine"]]


def test_under_contention_a_request_that_cannot_reach_its_first_exit_is_shed():
    clock = Clock()
    q = EdfQueue(16, clock)
    floor = lambda job: 0.5 * job.rows  # noqa: E731 - exit 1 takes 0.5 s a row
    q.put(Job("hopeless", 100.3, clock()))  # 0.3 s left < 0.5 s: its answer would come late
    q.put(Job("floor", 100.2, clock(), late=True))  # asked for the floor answer: runs anyway
    q.put(Job("fine", 100.6, clock()))
    q.put(Job("wide", 100.9, clock(), rows=2))  # 1.0 s for its 2 rows > 0.9 s left
    q.put(Job("loose", 110.0, clock()))
    assert drain(q, floor_s=floor) == [["floor"], ["!hopeless", "fine"], ["!wide", "loose"]]
    assert not len(q)
    # the same request alone in the queue runs (nothing else wants the worker; the session answers late)
    q.put(Job("alone", 100.3, clock()))
    assert drain(q, floor_s=floor) == [["alone"]]
    # shed while a batch forms too: a request joins the head's batch only if it can still reach exit 1
    q.put(Job("head", 100.6, clock()))
    q.put(Job("wide2", 101.0, clock(), rows=2))
    q.put(Job("tight", 100.4, clock()))
    clock.t = 100.05
    # "tight" would head the queue (0.35 s left < 0.5 s: shed); "head" runs, and "wide2" (0.95 s left < 1 s
    # for its 2 rows) is shed as it would join head's batch
    assert drain(q, max_rows=4, compatible=lambda a, b: True, floor_s=floor) == [["!tight", "!wide2", "head"]]


def test_without_a_cost_figure_only_the_expired_are_shed():
    clock = Clock()
    def no_figure(job):
        raise RuntimeError("no profile yet")
    for floor in (None, no_figure):
        q = EdfQueue(16, clock)
        q.put(Job("tight", clock() + 1e-6, clock()))
        q.put(Job("other", clock() + 10.0, clock()))
        assert drain(q, floor_s=floor) == [["tight"], ["other"]]


def test_batches_take_compatible_requests_in_queue_order_up_to_max_rows():
    clock = Clock()
    q = EdfQueue(16, clock)
    for name, d, rows, kind in (("a1", 101.0, 2, "a"), ("b1", 101.5, 1, "b"), ("a2", 102.0, 3, "a"),
                                ("a3", 103.0, 2, "a"), ("a4", 104.0, 1, "a"), ("b2", 105.0, 1, "b")):
        q.put(Job(name, d, clock(), rows=rows, kind=kind))
    same = lambda x, y: x.kind == y.kind  # noqa: E731
    # a1 heads; a2 fits (5 rows), a3 would make 7 > 6 and waits, a4 fits (6); b1 keeps its place
    assert drain(q, max_rows=6, compatible=same) == [["a1", "a2", "a4"], ["b1", "b2"], ["a3"]]


def test_bounded_and_closing():
    clock = Clock()
    q = EdfQueue(2, clock)
    q.put(Job("x", None, clock()))
    q.put(Job("y", None, clock()))
    with pytest.raises(Overloaded, match="queue is full"):
        q.put(Job("z", None, clock()))
    q.close()
    with pytest.raises(ShuttingDown, match="shutting down"):
        q.put(Job("z", None, clock()))
    assert drain(q) == [["x"], ["y"]] and q.take(timeout=0) is None


def test_max_delay_waits_for_more_rows():
    clock = Clock()
    q = EdfQueue(16, clock)
    q.put(Job("first", None, clock()))
    later = threading.Timer(0.05, lambda: q.put(Job("second", None, clock())))
    later.start()
    # the worker waits (up to 60 s) for a second compatible request to fill its 2 rows, and returns once it has
    expired, batch = q.take(max_rows=2, compatible=lambda a, b: True, max_delay_s=60.0)
    later.join()
    assert [j.name for j in batch] == ["first", "second"] and not expired


# -- per-row thresholds and deadlines in one call ------------------------------------------------------------
def test_rows_with_different_deadlines_leave_at_their_own_exit(tmp_path):
    """Two rows, scripted section times: the tight row stops when section 2 on both rows would overrun it;
    the other then runs on alone (one row is cheaper) to the deepest exit."""
    s, _, clock = scripted_session(tmp_path, warmup=3, max_batch=2)
    t0 = clock()
    tight = t0 + (linear_ms(1, 2) + 0.5 * linear_ms(2, 2)) * 1e-3  # section 2 on 2 rows does not fit
    loose = t0 + 1.0
    heard: list[tuple[list[int], float]] = []
    r = s.infer_rows(np.zeros((2, 1, 4, 4), np.float32), deadlines=[tight, loose],
                     on_settled=lambda idx, res: heard.append((idx, clock())))
    assert [x.exit_index for x in r] == [1, K] and [x.stopped_by for x in r] == ["deadline", "last"]
    # the tight row was answered when it stopped, before the loose one went on: its deadline held
    assert [h[0] for h in heard] == [[0], [1]] and heard[0][1] - t0 == pytest.approx(linear_ms(1, 2) * 1e-3)
    assert r[0].deadline_met is True and r[0].latency_ms == pytest.approx(linear_ms(1, 2))
    expected_ms = linear_ms(1, 2) + sum(linear_ms(k, 1) for k in range(2, K + 1))  # the loose row ran alone
    assert r[1].deadline_met is True and r[1].latency_ms == pytest.approx(expected_ms)
    assert clock() - t0 == pytest.approx(expected_ms * 1e-3)


def test_a_row_that_fits_only_once_another_stops(tmp_path):
    """Rows stop earliest deadline first, each check on the rows still going: the middle row fits section 2
    on two rows but not on three, so only the earliest stops and the two others go on together."""
    s, _, clock = scripted_session(tmp_path, warmup=3, max_batch=3)
    t0 = clock()
    after1 = linear_ms(1, 3)
    two, three = (s.deadline_policy.section_cost_ms(2, n) for n in (2, 3))  # 2 rows: borrowed (rule 3)
    assert two < three
    d_early = t0 + (after1 + 0.5 * two) * 1e-3        # fits section 2 on no count
    d_mid = t0 + (after1 + (two + three) / 2) * 1e-3  # fits it on 2 rows, not on 3
    r = s.infer_rows(np.zeros((3, 1, 4, 4), np.float32), deadlines=[d_mid, d_early, None])
    assert [x.exit_index for x in r] == [2, 1, K]
    assert [x.stopped_by for x in r] == ["deadline", "deadline", "last"] and r[2].deadline_met is None


def test_infer_rows_checks_its_arguments(tmp_path):
    s, _, _ = scripted_session(tmp_path, warmup=0, max_batch=2)
    x = np.zeros((2, 1, 4, 4), np.float32)
    with pytest.raises(PolicyError, match="one threshold and one deadline per row"):
        s.infer_rows(x, thresholds=[0.5])
    with pytest.raises(PolicyError, match="threshold"):
        s.infer_rows(x, thresholds=[0.5, 7.0])
    with pytest.raises(PolicyError, match="deadline"):
        s.infer_rows(x, deadlines=[float("nan"), None])


@pytest.fixture()
def real_session(tiny_bundle, engine):
    from sdedge.runtime import AnytimeSession

    s = AnytimeSession(tiny_bundle, backend="onnxruntime", intra_op_threads=1, warmup=1, max_batch=8, engine=engine)
    assert s.engine == engine
    yield s
    s.close()


def test_each_row_gets_the_answer_it_would_get_alone(real_session):
    s = real_session
    c, h, w = s.input_shape
    x = np.random.default_rng(3).standard_normal((7, c, h, w)).astype(np.float32)
    past, k = s.clock() - 1.0, s.num_exits
    thresholds = [None, 0.0, 1.0, 0.55, [0.2] + [None] * (k - 2), None, 0.0]
    deadlines = [None, None, None, None, None, past, past]
    rows = s.infer_rows(x, thresholds=thresholds, deadlines=deadlines)
    for i, r in enumerate(rows):
        alone = s.infer(x[i], threshold=thresholds[i], deadline=deadlines[i])
        assert (r.exit_index, r.label, r.stopped_by) == (alone.exit_index, alone.label, alone.stopped_by), i
        np.testing.assert_allclose(r.probabilities, alone.probabilities, rtol=1e-5, atol=1e-6)
        assert r.deadline_met == alone.deadline_met
    assert rows[5].exit_index == 1 and rows[5].deadline_met is False and rows[0].exit_index == k


def test_rows_must_share_a_criterion(real_session):
    s = real_session
    if s.calibration is None or s.calibration.criterion == "max_prob":
        pytest.skip("needs a calibration under another criterion than the default")
    x = np.zeros((2,) + s.input_shape, np.float32)
    with pytest.raises(PolicyError, match="share a criterion"):
        s.infer_rows(x, thresholds=["calibrated", 0.5])


# -- the pool runs waiting requests as one batch ---------------------------------------------------------------
def test_waiting_requests_run_as_one_batch_with_their_own_policies(real_session):
    from sdedge.runtime.server.worker import InferencePool

    s = real_session
    gate = threading.Event()

    class Held:  # the real session behind a gate, so requests pile up while the first one runs
        max_batch, clock = s.max_batch, s.clock

        def infer(self, x, **kw):
            gate.wait(60)
            return s.infer(x, **kw)

        def infer_rows(self, x, **kw):
            calls.append(x.shape[0])
            return s.infer_rows(x, **kw)

    calls: list[int] = []
    c, h, w = s.input_shape
    x = np.random.default_rng(5).standard_normal((5, c, h, w)).astype(np.float32)
    thresholds = [None, 0.0, 1.0, 0.5, None]

    async def main():
        pool = InferencePool([Held()], max_queue=16)
        started = threading.Event()
        pool.observer = lambda ev, job: started.set() if ev == "started" else None
        first = asyncio.ensure_future(pool.run(x[:1], threshold=None))
        await asyncio.to_thread(started.wait, 60)
        rest = [asyncio.ensure_future(pool.run(x[i:i + 1], threshold=thresholds[i])) for i in range(1, 5)]
        while pool.qsize() < 4:
            await asyncio.sleep(0)
        gate.set()
        outs = [await first] + [await r for r in rest]
        pool.close(30)
        return outs

    outs = asyncio.run(main())
    assert calls == [4]  # the four that waited together ran as one batch
    assert [o.batch_rows for o in outs] == [1, 4, 4, 4, 4]
    for i, o in enumerate(outs):
        alone = s.infer(x[i], threshold=thresholds[i])
        assert (o.results[0].exit_index, o.results[0].label) == (alone.exit_index, alone.label), i


def test_rows_are_reported_as_they_settle(real_session):
    """``on_settled`` hears of every row once, early exits first, with the results the call returns."""
    s = real_session
    c, h, w = s.input_shape
    x = np.random.default_rng(9).standard_normal((4, c, h, w)).astype(np.float32)
    heard: list[tuple[list[int], list]] = []
    out = s.infer_rows(x, thresholds=[None, 0.0, None, 0.0], on_settled=lambda idx, res: heard.append((idx, res)))
    assert [sorted(i) for i, _ in heard] == [[1, 3], [0, 2]]
    for idx, res in heard:
        for i, r in zip(idx, res):
            assert (r.exit_index, r.label, r.stopped_by) == (out[i].exit_index, out[i].label, out[i].stopped_by)
    assert out[1].exit_index == 1 and out[0].exit_index == s.num_exits
    assert out[1].latency_ms <= out[0].latency_ms and out[0].deadline_met is None


def test_a_batch_grows_only_while_its_tightest_deadline_allows():
    """The server's admission: the first section on all the batch's rows must end by the tightest deadline
    in it (the session's cost figures); what does not fit waits for the next batch."""
    from sdedge.runtime.server.worker import _FirstExitCosts, _slack_admission

    class Costs:  # 1 ms per row for section 1, 0.5 ms per call of overhead
        def section_cost_ms(self, section, rows):
            return 0.5 if section == 0 else float(rows)

    clock = Clock()
    q = EdfQueue(16, clock)
    q.put(Job("tight", clock() + 3.6e-3, clock()))  # room for 3 rows: 3 + 0.5 ms <= 3.6 ms
    for i in range(5):
        q.put(Job(f"loose{i}", clock() + 1.0, clock()))
    q.put(Job("free", None, clock()))
    admit = _slack_admission(_FirstExitCosts(Costs()))
    same = lambda a, b: True  # noqa: E731
    assert drain(q, max_rows=8, compatible=same, admit=admit) == [
        ["tight", "loose0", "loose1"], ["loose2", "loose3", "loose4", "free"]]


def test_forming_a_batch_costs_bounded_work_however_long_the_queue():
    """Under overload EDF's head is the tightest request and its slack admits few rows: one take must not
    offer every waiting request to ``admit`` (400 waiting made a take cost more than the inference). A refusal
    by the batch's own slack holds for every request behind it; the look-ahead is bounded in any case."""
    from sdedge.runtime.server import scheduler

    clock = Clock()
    q = EdfQueue(1000, clock)
    q.put(Job("tight", clock() + 1.5e-3, clock()))
    for i in range(400):
        q.put(Job(f"loose{i}", clock() + 1.0 + i * 1e-3, clock()))
    offered: list[int] = []

    def admit(batch, job, rows_after, now):  # 1 ms per row: the tight head's slack holds one row
        offered.append(rows_after)
        return now + rows_after * 1e-3 <= min(j.deadline for j in (*batch, job))

    looked: list[str] = []

    def compatible(a, b):
        looked.append(b.name)
        return True

    expired, batch = q.take(max_rows=8, compatible=compatible, timeout=0, admit=admit)
    assert [j.name for j in batch] == ["tight"] and not expired
    assert offered == [2] and len(q) == 400  # one refusal said it for the 399 behind; all keep their places
    # the next batch is headed by a loose request with slack for all 8 rows
    expired, batch = q.take(max_rows=8, compatible=compatible, timeout=0, admit=admit)
    assert [j.name for j in batch] == [f"loose{i}" for i in range(8)]
    # a queue of requests that cannot share the head's run: the look-ahead stops at its bound
    q2 = EdfQueue(1000, clock)
    for i in range(500):
        q2.put(Job(f"b{i}", clock() + 1.0 + i * 1e-3, clock(), kind="a" if i == 0 else "b"))
    looked.clear()
    expired, batch = q2.take(max_rows=4, compatible=lambda a, b: looked.append(b.name) or a.kind == b.kind,
                             timeout=0)
    assert [j.name for j in batch] == ["b0"] and len(q2) == 499
    assert len(looked) == max(scheduler._SCAN_MIN, scheduler._SCAN_PER_ROW * 4)


def test_start_by_is_the_latest_end_that_keeps_the_waiting_requests_feasible():
    """``EdfQueue.start_by``: served one after another in queue order at their first exits (0.5 s a row),
    each waiting request must still start in time; requests already hopeless, ``late`` ones, cancelled
    ones and those without a deadline bound nothing (the last still take their turn)."""
    clock = Clock()  # t = 100
    q = EdfQueue(16, clock, promote_after_s=10.0)
    floor = lambda job: 0.5 * job.rows  # noqa: E731
    assert q.start_by(floor, clock()) is None  # nothing waits
    q.put(Job("free", None, clock()))
    assert q.start_by(floor, clock()) is None  # nothing waiting has a deadline
    q.put(Job("hopeless", 100.2, clock()))  # cannot reach exit 1 (0.5 s) by 100.2: bounds nothing
    q.put(Job("floor", 100.1, clock(), late=True))  # runs whatever happens
    q.put(Job("gone", 100.6, clock(), gone=True))
    q.put(Job("a", 103.0, clock(), rows=2))  # needs 1 s: start by 102
    q.put(Job("b", 102.0, clock()))  # first in EDF order: start by 101.5; then "a" by 103 - 1.5 = 101.5
    assert q.start_by(floor, clock()) == pytest.approx(101.5)
    q.put(Job("c", 103.2, clock()))  # after "b" and "a": 103.2 - 2.0
    assert q.start_by(floor, clock()) == pytest.approx(101.2)
    assert q.start_by(floor, clock(), lookahead=5) == pytest.approx(101.5)  # "c" is beyond the look-ahead
    clock.t = 101.6  # "b" cannot reach its first exit any more (shed next): "a" by 102.0, "c" by 101.7
    assert q.start_by(floor, clock()) == pytest.approx(101.7)
    def no_figure(job):
        raise RuntimeError("no profile yet")
    assert q.start_by(no_figure, clock()) is None


def test_a_refusal_for_a_requests_own_tight_deadline_does_not_close_the_batch():
    """In FIFO order a later request can be tighter than the batch: refused for its own deadline, it must
    not keep the looser requests behind it out."""
    clock = Clock()
    q = EdfQueue(16, clock, order="fifo")
    q.put(Job("head", clock() + 1.0, clock()))
    q.put(Job("tight", clock() + 1.5e-3, clock()))  # joining "head" (2 rows: 2 ms) would make it late
    q.put(Job("loose1", clock() + 1.0, clock()))
    q.put(Job("loose2", clock() + 1.0, clock()))

    def admit(batch, job, rows_after, now):
        return now + rows_after * 1e-3 <= min(j.deadline for j in (*batch, job))

    same = lambda a, b: True  # noqa: E731
    assert drain(q, max_rows=8, compatible=same, admit=admit) == [["head", "loose1", "loose2"], ["tight"]]


def test_section_costs_are_readable_on_both_engines(real_session):
    s = real_session
    costs = [s.section_cost_ms(k, r) for k in range(s.num_exits + 1) for r in (1, s.max_batch)]
    assert all(c >= 0.0 and np.isfinite(c) for c in costs)
    assert s.section_cost_ms(1, 1) > 0.0  # the warm-up measured it
    with pytest.raises(PolicyError, match="section"):
        s.section_cost_ms(s.num_exits + 1, 1)


def test_reply_lag_margin_is_a_recent_high_quantile_capped_by_the_budget():
    from sdedge.runtime.server.reply_lag import ReplyLag

    lag = ReplyLag(window=100, quantile=90.0, every=10, min_samples=20, horizon_s=2.0)
    for _ in range(19):
        lag.record(0.010, 0.0)
    assert lag.margin_s(1.0, 0.0) == 0.0  # too few answers yet
    for i in range(81):
        lag.record(0.001 * (i % 10), 0.0)  # 0..9 ms
    assert 0.0 < lag.current_s <= 0.010
    for _ in range(100):  # the window moves on: the recent lags alone
        lag.record(0.004, 1.0)
    assert lag.current_s == pytest.approx(0.004)
    assert lag.margin_s(0.006, 1.0) == pytest.approx(0.003)  # at most half the budget
    lag.record(-1.0, 1.0)  # a clock step backwards counts as no lag
    assert lag.current_s >= 0.0
    # a burst's lags age out: quiet requests long after it get no margin from it
    assert lag.margin_s(1.0, 2.5) == pytest.approx(0.004)
    assert lag.margin_s(1.0, 3.5) == 0.0 and lag.current_s == 0.0

"""The native engine (``libsdedge.so`` through ``sdedge.runtime.native_engine``) against the Python fallback.

Both engines on one real exported bundle must agree: every exit's logits, and for a set of policies the
exits, labels, stop reasons, probabilities, confidences and exit confidences (float tolerance). Plus the
choice of engine (``auto``, ``native``, ``python``), the clear error where the core is missing or cannot
run a request, and the core's statuses mapped onto the Python error classes. The tests that need the core
skip where it is not built.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from sdedge.common.errors import BackendError, ChecksumError, InputError, PolicyError
from sdedge.common.jsonio import dump_json
from sdedge.runtime import AnytimeSession, SessionOptions, open_bundle
from sdedge.runtime.bundle import update_bundle
from sdedge.runtime.calibration import calibration_document

from conftest import require_engine

OPTS = dict(backend="onnxruntime", intra_op_threads=1, warmup=0)


def _images(shape: tuple[int, int, int], n: int, seed: int) -> np.ndarray:
    c, h, w = shape
    x = np.random.default_rng(seed).random((n, h, w, c))
    x = (x + np.roll(x, 1, 1) + np.roll(x, 1, 2)) / 3
    return (x * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def calibrated_bundle(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny bundle with a calibration (temperatures, thresholds, one disabled exit)."""
    dst = tmp_path_factory.mktemp("native") / "bundle"
    shutil.copytree(tiny_bundle, dst)
    k = open_bundle(dst).manifest.num_exits
    doc = calibration_document("max_prob", [1.7] + [1.2] * (k - 1), [0.55] + [0.6] * (k - 2) + [None],
                               [True] * (k - 1) + [True])
    update_bundle(dst, {"calibration.json": dump_json(doc)})
    return dst


@pytest.fixture(scope="module")
def pair(calibrated_bundle: Path) -> tuple[AnytimeSession, AnytimeSession]:
    require_engine("native")
    nat = AnytimeSession(calibrated_bundle, engine="native", **OPTS)
    py = AnytimeSession(calibrated_bundle, engine="python", **OPTS)
    yield nat, py
    nat.close()
    py.close()


def _off_ties(conf: np.ndarray, q: float) -> float:
    """A threshold near the ``q`` quantile of ``conf`` that no confidence equals within 1e-4 (engines may
    compute a confidence an ulp apart: an exact tie could fall either way)."""
    t = float(np.quantile(conf, q))
    while np.any(np.abs(conf - t) < 1e-4):
        t += 1.7e-4
    return t


def _assert_same(a: list, b: list) -> None:
    assert [(r.exit_index, r.label, r.stopped_by) for r in a] == [(r.exit_index, r.label, r.stopped_by) for r in b]
    for ra, rb in zip(a, b):
        np.testing.assert_allclose(ra.probabilities, rb.probabilities, rtol=1e-4, atol=1e-6)
        assert ra.confidence == pytest.approx(rb.confidence, abs=1e-5)
        np.testing.assert_allclose(ra.exit_confidences, rb.exit_confidences, rtol=1e-4, atol=1e-6)
        assert ra.exits_run == ra.exit_index and ra.class_name == rb.class_name
        assert ra.deadline_met is rb.deadline_met


def test_engines_agree_on_a_real_bundle(pair: tuple[AnytimeSession, AnytimeSession]) -> None:
    nat, py = pair
    assert (nat.engine, py.engine) == ("native", "python")
    assert (nat.num_exits, nat.classes, nat.input_shape, nat.max_batch) == (py.num_exits, py.classes, py.input_shape,
                                                                           py.max_batch)
    assert (nat.device_name, nat.backend_name) == (py.device_name, py.backend_name)
    assert nat.calibration == py.calibration and (nat.profile is None) == (py.profile is None)
    raw = _images(nat.input_shape, 24, seed=21)
    logits = py.infer_all_exits(raw)
    np.testing.assert_allclose(nat.infer_all_exits(raw), logits, rtol=1e-4, atol=1e-5)
    k = nat.num_exits
    conf1 = np.array([r.exit_confidences[0] for r in py.infer(raw)], np.float64)
    t = _off_ties(conf1, 0.5)
    policies: list[dict] = [{}, {"threshold": 0.0}, {"threshold": 1.0}, {"threshold": t},
                            {"threshold": [t] + [None] * (k - 2)}, {"threshold": [None] * (k - 1) + [0.3]},
                            {"threshold": "calibrated"}, {"budget_ms": 60_000}, {"budget_ms": 60_000, "threshold": t},
                            {"deadline": time.perf_counter() + 60}]
    for crit in ("entropy", "margin"):
        c = np.array([r.exit_confidences[0] for r in py.infer(raw, criterion=crit)], np.float64)
        policies.append({"threshold": _off_ties(c, 0.5), "criterion": crit})
    split = False
    for kw in policies:
        a, b = nat.infer(raw, **kw), py.infer(raw, **kw)
        _assert_same(a, b)
        split |= len({r.exit_index for r in a}) > 1
        one_a, one_b = nat.infer(raw[3], **kw), py.infer(raw[3], **kw)  # a single image: one result
        _assert_same([one_a], [one_b])
    assert split, "no policy split the batch over exits: the comparison is weak"


def test_the_core_takes_raw_pixels_as_they_are_and_checks_floats_itself(
        pair: tuple[AnytimeSession, AnytimeSession], monkeypatch: pytest.MonkeyPatch) -> None:
    """The native binding does not do the core's work twice: uint8 pixels go to the core's uint8 entry
    (it preprocesses them), float input to the float one unchecked (the core refuses NaN/Inf, same message)."""
    nat, py = pair
    core = nat._native
    calls: list[str] = []
    for attr, kind in (("_infer", "f32"), ("_infer_u8", "u8")):
        fn = getattr(core, attr)
        monkeypatch.setattr(core, attr, lambda *a, _fn=fn, _kind=kind: calls.append(_kind) or _fn(*a))
    raw = _images(nat.input_shape, 3, seed=5)
    _assert_same(nat.infer(raw, threshold=0.5), py.infer(raw, threshold=0.5))
    assert calls == ["u8"]
    x = py._prep(raw).batch
    _assert_same(nat.infer(x, budget_ms=60_000), py.infer(x, budget_ms=60_000))
    assert calls == ["u8", "f32"]
    x[1, 0, 0, 0] = np.nan
    msgs = []
    for s in (nat, py):
        with pytest.raises(InputError) as e:
            s.infer(x)
        msgs.append(str(e.value))
    assert msgs[0] == msgs[1] and "1 NaN/Inf" in msgs[0]
    assert calls[-1] == "f32"  # the core refused it


def test_engines_agree_with_ensemble_answers_and_a_default_criterion(calibrated_bundle: Path) -> None:
    require_engine("native")
    kw = dict(OPTS, answer="ensemble", criterion="margin")
    nat, py = AnytimeSession(calibrated_bundle, engine="native", **kw), AnytimeSession(calibrated_bundle, **kw,
                                                                                        engine="python")
    x = py._prep(_images(py.input_shape, 16, seed=22)).batch  # floats, preprocessed
    conf = np.array([r.exit_confidences[0] for r in py.infer(x)], np.float64)
    for t in (None, _off_ties(conf, 0.3), _off_ties(conf, 0.7)):
        _assert_same(nat.infer(x, threshold=t), py.infer(x, threshold=t))
    nat.close()
    py.close()


def test_deadlines_on_the_native_engine(pair: tuple[AnytimeSession, AnytimeSession]) -> None:
    nat, _ = pair
    x = _images(nat.input_shape, 4, seed=23)
    r = nat.infer(x[0], budget_ms=1e-6)
    assert r.exit_index == 1 and r.stopped_by == "deadline" and r.deadline_met is False
    rs = nat.infer(x, deadline=time.perf_counter() - 1.0)  # already past: the floor answers
    assert all(r.exit_index == 1 and r.deadline_met is False for r in rs)
    r = nat.infer(x[0], budget_ms=30_000, deadline=time.perf_counter() + 60)
    assert r.exit_index == nat.num_exits and r.deadline_met is True and 0 < r.latency_ms < 30_000


def test_native_errors_are_the_python_classes(pair: tuple[AnytimeSession, AnytimeSession], tmp_path: Path) -> None:
    nat, py = pair
    for bad in ({"threshold": 1.5}, {"threshold": [0.5] * (nat.num_exits + 1)}, {"criterion": "top5"},
                {"budget_ms": -1}, {"threshold": "calibrated", "criterion": "margin"}):
        with pytest.raises(PolicyError) as en:
            nat.infer(np.zeros(nat.input_shape, np.float32), **bad)
        with pytest.raises(PolicyError) as ep:
            py.infer(np.zeros(py.input_shape, np.float32), **bad)
        assert str(en.value) == str(ep.value)
    # the core's own statuses: a tampered section, opened by the core directly, names the file
    from sdedge.runtime.native_engine import NativeSession

    dst = tmp_path / "bundle"
    shutil.copytree(nat.bundle.path, dst)
    sec = dst / nat.manifest.sections[1].file
    sec.write_bytes(sec.read_bytes()[:-1] + b"\0")
    with pytest.raises(ChecksumError, match=nat.manifest.sections[1].file):
        NativeSession(str(dst), SessionOptions(**OPTS))
    with pytest.raises(ChecksumError, match=nat.manifest.sections[1].file):  # the session: the Python reader refuses first
        AnytimeSession(dst, engine="native", **OPTS)


def test_python_only_attributes_say_so_on_the_native_engine(pair: tuple[AnytimeSession, AnytimeSession]) -> None:
    nat, py = pair
    for name in ("estimator", "deadline_policy"):
        with pytest.raises(AttributeError, match="not available on the native engine.*engine='python'"):
            getattr(nat, name)
        assert getattr(py, name) is not None
    # `backend` is a Python backend over the same bundle, for reference measurements
    x = py._prep(_images(nat.input_shape, 2, seed=24)).batch
    np.testing.assert_allclose(np.stack(nat.backend.run_chain(x)), nat.infer_all_exits(x), rtol=1e-4, atol=1e-5)
    assert "engine='native'" in repr(nat)


def test_concurrent_calls_on_the_native_engine(pair: tuple[AnytimeSession, AnytimeSession]) -> None:
    import threading

    nat, _ = pair
    x = _images(nat.input_shape, 8, seed=25)
    expected = [nat.infer(x[i]).label for i in range(8)]
    got: dict[int, list[int]] = {i: [] for i in range(8)}

    def work(i: int) -> None:
        for _ in range(20):
            got[i].append(nat.infer(x[i], budget_ms=10_000, threshold=[None] * (nat.num_exits - 1)).label)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(got[i] == [expected[i]] * 20 for i in range(8))


# -- choosing the engine (no core needed) --------------------------------------------------------------------------
def test_engine_option_is_checked() -> None:
    with pytest.raises(PolicyError, match="engine must be one of auto, native, python"):
        SessionOptions(engine="rust")


def test_native_without_the_core_is_a_clear_error_and_auto_falls_back(tiny_bundle: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SDEDGE_NATIVE_LIBRARY", str(tmp_path / "missing" / "libsdedge.so"))
    with pytest.raises(BackendError, match=r"engine='native' cannot run this session: the sdedge native core is not "
                                           r"installed: .*missing/libsdedge.so does not exist.*SDEDGE_BUILD_NATIVE=1"):
        AnytimeSession(tiny_bundle, engine="native", **OPTS)
    s = AnytimeSession(tiny_bundle, **OPTS)  # engine="auto"
    assert s.engine == "python" and s.infer(np.zeros(s.input_shape, np.float32)).exit_index == s.num_exits
    s.close()
    lib = tmp_path / "not-a-library.so"
    lib.write_bytes(b"not an ELF file")
    monkeypatch.setenv("SDEDGE_NATIVE_LIBRARY", str(lib))
    with pytest.raises(BackendError, match="cannot be loaded"):
        AnytimeSession(tiny_bundle, engine="native", **OPTS)


@pytest.mark.parametrize("kw, why", [({"backend": "tensorrt", "precision": "fp16"}, "Python engine only"),
                                     ({"precision": "int8"}, "precision 'int8'"),
                                     ({"backend_options": {"allow_spinning": True}}, "backend_options")])
def test_native_refuses_what_only_python_runs(tiny_bundle: Path, kw: dict, why: str) -> None:
    require_engine("native")
    with pytest.raises(BackendError, match=f"engine='native' cannot run this session: .*{why}"):
        AnytimeSession(tiny_bundle, engine="native", **dict(OPTS, **kw))


def test_auto_picks_native_where_it_can(tiny_bundle: Path) -> None:
    require_engine("native")
    s = AnytimeSession(tiny_bundle, **OPTS)
    assert s.engine == "native"
    s.close()
    s = AnytimeSession(tiny_bundle, clock=lambda: time.perf_counter(), **OPTS)  # a custom clock: Python
    assert s.engine == "python"
    s.close()


# -- each test below opens its own sessions: mutation testing (benchmarks/mutation.py) credits the start of a
# -- module-scoped session to the first test that used it only, so what the start sets up is checked here ---------
def test_a_native_start_runs_in_the_core_and_reads_the_bundles_profile(calibrated_bundle: Path,
                                                                        tmp_path: Path) -> None:
    from sdedge.runtime.profile import make_profile, profile_relpath

    require_engine("native")
    dst = tmp_path / "bundle"
    shutil.copytree(calibrated_bundle, dst)
    py = AnytimeSession(dst, engine="python", **OPTS)
    k, device = py.num_exits, py.device_name
    py.close()
    doc = make_profile(device, "onnxruntime", "fp32", 1, {1: [[0.5 + s] * 5 for s in range(k)]}, 0.25, 5)
    update_bundle(dst, {profile_relpath(device): dump_json(doc)})
    nat, py = AnytimeSession(dst, engine="native", **OPTS), AnytimeSession(dst, engine="python", **OPTS)
    assert nat.engine == "native" and nat.profile is not None and nat.profile == py.profile
    # the core reads the same profile: its figures are floors under its cost estimates
    assert nat.section_cost_ms(k, 1) >= 0.5 + (k - 1)
    with pytest.raises(AttributeError, match="AnytimeSession.estimator is not available on the native engine"):
        nat.estimator
    with pytest.raises(AttributeError, match="^'AnytimeSession' object has no attribute 'no_such_thing'$"):
        nat.no_such_thing
    nat.close()
    py.close()


def test_the_reference_backend_of_a_native_session_takes_its_options_and_closes_with_it(tiny_bundle: Path) -> None:
    require_engine("native")
    nat = AnytimeSession(tiny_bundle, engine="native", **OPTS)
    be = nat.backend  # made on first access, with the session's backend options
    assert be.options.intra_op_threads == 1 and be.options.max_batch == nat.max_batch
    x = np.zeros((1, *nat.input_shape), np.float32)
    assert len(be.run_chain(x)) == nat.num_exits
    nat.close()
    with pytest.raises(BackendError, match="backend is closed"):
        be.run_chain(x)


def test_rows_with_their_own_thresholds_and_deadlines_on_the_native_engine(calibrated_bundle: Path) -> None:
    require_engine("native")
    nat = AnytimeSession(calibrated_bundle, engine="native", **OPTS)
    py = AnytimeSession(calibrated_bundle, engine="python", **OPTS)
    k = nat.num_exits
    raw = _images(nat.input_shape, 6, seed=26)
    t = _off_ties(np.array([r.exit_confidences[0] for r in py.infer(raw)], np.float64), 0.5)
    soon = time.perf_counter() + 60
    thresholds = [None, t, [t] + [None] * (k - 2), None, t, None]
    deadlines = [soon, soon, None, time.perf_counter() - 1.0, None, soon]  # row 3's deadline has passed
    heard: list[int] = []
    a = nat.infer_rows(raw, thresholds, deadlines, on_settled=lambda idx, rs: heard.extend(idx))
    b = py.infer_rows(raw, thresholds, deadlines)
    _assert_same(a, b)
    assert sorted(heard) == list(range(6))
    assert [r.deadline_met for r in a] == [True, True, None, False, None, True]
    assert a[0].exit_index == a[5].exit_index == k and a[3].exit_index == 1 and a[3].stopped_by == "deadline"
    assert all(0 < r.latency_ms < 60_000 for r in a)
    nat.close()
    py.close()

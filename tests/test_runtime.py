"""AnytimeSession on a real exported bundle (ONNX Runtime, CPU): policies, batches, inputs, backends, CLI.

The bundle is the session-wide ``tiny_bundle`` (a 3-exit model trained briefly on digits, 1x8x8 input);
tests that add a calibration or a profile work on a private copy. One shared session per engine (1
thread, no warm-up) serves the read-only tests. The behavioural tests run on both engines (the
``engine`` fixture: the native core, skipped where it is not built, and the Python fallback).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from sdedge.runtime import AnytimeSession, open_bundle
from sdedge.runtime.backends import create_backend
from sdedge.runtime.backends.base import BackendOptions
from sdedge.common.jsonio import dump_json
from sdedge.runtime.bundle import update_bundle
from sdedge.common.errors import BackendError, BundleError, InputError, PolicyError
from sdedge.runtime.policies import ConfidencePolicy, replay, softmax
from sdedge.runtime.preprocess import Preprocessor
from sdedge.runtime.profile import make_profile, profile_relpath

from conftest import ENGINES, require_engine

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", params=ENGINES)
def session(tiny_bundle: Path, request: pytest.FixtureRequest) -> AnytimeSession:
    engine = require_engine(request.param)
    s = AnytimeSession(tiny_bundle, backend="onnxruntime", intra_op_threads=1, warmup=2, max_batch=32, engine=engine)
    assert s.engine == engine
    yield s
    s.close()


@pytest.fixture
def bundle_copy(tiny_bundle: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, dst)
    return dst


def images(session: AnytimeSession, n: int, seed: int = 0) -> np.ndarray:
    """Real-looking inputs: raw uint8 pixels with structure (smoothed noise), HWC/NHWC as the model wants."""
    c, h, w = session.input_shape
    rng = np.random.default_rng(seed)
    x = rng.random((n, h, w, c))
    x = (x + np.roll(x, 1, 1) + np.roll(x, 1, 2)) / 3
    return (x * 255).astype(np.uint8)


def floats(session: AnytimeSession, n: int, seed: int = 0) -> np.ndarray:
    return manual_preprocess(session, images(session, n, seed))


def manual_preprocess(session: AnytimeSession, raw: np.ndarray) -> np.ndarray:
    """``(pixel * scale - mean) / std`` per channel, NHWC -> NCHW, written out by hand."""
    pre = session.manifest.preprocess
    x = raw.astype(np.float64) * pre.scale
    x = (x - np.asarray(pre.mean)) / np.asarray(pre.std)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)


# -- the session -------------------------------------------------------------------------------------------
def test_session_describes_itself(session: AnytimeSession, tiny_bundle: Path) -> None:
    man = open_bundle(tiny_bundle).manifest
    assert session.num_exits == man.num_exits >= 2
    assert session.classes == man.classes
    assert session.input_shape == tuple(man.input.shape[1:])
    assert session.backend_name == "onnxruntime"
    assert session.device_name.startswith("onnxruntime-cpu-") and session.device_name.endswith("-t1")
    assert all(ch.isalnum() or ch in "-." for ch in session.device_name)


def test_no_policy_runs_to_the_deepest_exit(session: AnytimeSession) -> None:
    r = session.infer(floats(session, 1)[0])
    assert r.exit_index == r.exits_run == session.num_exits and r.stopped_by == "last"
    assert r.deadline_met is None and r.latency_ms > 0
    assert r.probabilities.shape == (len(session.classes),) and r.probabilities.sum() == pytest.approx(1, abs=1e-5)
    assert r.class_name == session.classes[r.label] and r.label == int(r.probabilities.argmax())
    assert len(r.exit_confidences) == session.num_exits
    assert r.exit_confidences[-1] == pytest.approx(r.confidence)


@pytest.mark.parametrize("criterion", ["max_prob", "entropy", "margin"])
def test_threshold_zero_stops_at_exit_one(session: AnytimeSession, criterion: str) -> None:
    for r in session.infer(floats(session, 5), threshold=0.0, criterion=criterion):
        assert r.exit_index == 1 and r.stopped_by == "confidence"


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "0.9", [0.5, 2.0]])
def test_threshold_outside_the_range_is_refused(session: AnytimeSession, bad) -> None:
    with pytest.raises(PolicyError, match=r"threshold(\[1\] \(exit 2\))? must be (in|a number in) \[0, 1\]"):
        session.infer(floats(session, 1)[0], threshold=bad)


def test_budget_too_small_for_section_two_stops_at_exit_one(session: AnytimeSession) -> None:
    r = session.infer(floats(session, 1)[0], budget_ms=1e-6)
    assert r.exit_index == 1 and r.stopped_by == "deadline"
    assert r.deadline_met is False  # exit 1 is the floor: it answers, and says the budget did not hold


def test_generous_budget_reaches_the_deepest_exit(session: AnytimeSession) -> None:
    r = session.infer(floats(session, 1)[0], budget_ms=10_000)
    assert r.exit_index == session.num_exits and r.deadline_met is True
    import time

    r = session.infer(floats(session, 1)[0], deadline=time.perf_counter() + 10)
    assert r.exit_index == session.num_exits and r.deadline_met is True


def test_batch_deadline_stops_every_row_still_running(session: AnytimeSession) -> None:
    x = floats(session, 8, seed=14)
    t = mixed_threshold(session, x)
    rs = session.infer(x, threshold=t, budget_ms=1e-6)
    assert all(r.exit_index == 1 and r.deadline_met is False for r in rs)
    assert {r.stopped_by for r in rs} == {"confidence", "deadline"}  # the sure ones left on confidence first
    if session.engine == "python":  # the native core keeps its latency figures inside (unit_deadline tests them)
        assert session.estimator.count(1, 8) >= 1  # batch timings feed their own bucket


@pytest.mark.parametrize("kw", [{"budget_ms": 0}, {"budget_ms": -1}, {"budget_ms": float("inf")},
                                {"budget_ms": float("nan")}, {"budget_ms": "5"}, {"budget_ms": True},
                                {"deadline": float("nan")}])
def test_bad_budgets_are_refused(session: AnytimeSession, kw) -> None:
    with pytest.raises(PolicyError, match="budget_ms|deadline"):
        session.infer(floats(session, 1)[0], **kw)


def mixed_threshold(session: AnytimeSession, x: np.ndarray) -> float:
    """A max_prob threshold that sends some samples out early and keeps others going."""
    conf = softmax(session.infer_all_exits(x)[0]).max(1)
    return float(np.quantile(conf, 0.5))


@pytest.mark.parametrize("answer", ["last", "ensemble"])
def test_batch_early_exit_equals_running_each_sample_alone(tiny_bundle: Path, answer: str, engine: str) -> None:
    s = AnytimeSession(tiny_bundle, backend="onnxruntime", intra_op_threads=1, warmup=0, answer=answer, engine=engine)
    x = floats(s, 24, seed=3)
    t = mixed_threshold(s, x)
    batch = s.infer(x, threshold=t)
    exits = {r.exit_index for r in batch}
    assert len(exits) >= 2, f"threshold {t} did not split the batch: exits {exits}"
    for i, r in enumerate(batch):
        alone = s.infer(x[i], threshold=t)
        assert (alone.exit_index, alone.label, alone.stopped_by) == (r.exit_index, r.label, r.stopped_by)
        np.testing.assert_allclose(alone.probabilities, r.probabilities, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(alone.exit_confidences, r.exit_confidences, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("answer", ["last", "ensemble"])
def test_live_decisions_equal_infer_all_exits_and_replay(tiny_bundle: Path, answer: str, engine: str) -> None:
    s = AnytimeSession(tiny_bundle, backend="onnxruntime", intra_op_threads=1, warmup=0, answer=answer, engine=engine)
    x = floats(s, 24, seed=4)
    t = mixed_threshold(s, x)
    live = s.infer(x, threshold=t)
    logits = s.infer_all_exits(x)
    assert logits.shape == (s.num_exits, 24, len(s.classes))
    rep = replay(logits, ConfidencePolicy.build(s.num_exits, t), answer=answer)
    assert [r.exit_index for r in live] == rep.exit_index.tolist()
    assert [r.label for r in live] == rep.label.tolist()
    for i, r in enumerate(live):
        k = r.exit_index
        if answer == "last":  # the answer is exactly the chosen exit's softmax
            np.testing.assert_allclose(r.probabilities, softmax(logits[k - 1, i:i + 1])[0], rtol=1e-4, atol=1e-6)
        else:
            mean = np.mean([softmax(logits[j, i:i + 1])[0] for j in range(k)], axis=0)
            np.testing.assert_allclose(r.probabilities, mean, rtol=1e-4, atol=1e-6)


def test_run_chain_is_the_section_loop_with_per_section_times(session: AnytimeSession) -> None:
    be = session.backend
    x = floats(session, 5)
    seen = []
    out = be.run_chain(x, on_section=lambda k, ms, feats: seen.append((k, ms, feats is None)))
    ref = session.infer_all_exits(x)
    assert len(out) == session.num_exits
    for k in range(session.num_exits):
        np.testing.assert_array_equal(out[k], ref[k])
    assert [k for k, _, _ in seen] == list(range(1, session.num_exits + 1))
    assert all(ms > 0 for _, ms, _ in seen)
    assert [last for _, _, last in seen] == [False] * (session.num_exits - 1) + [True]
    two = be.run_chain(x, upto=2)
    assert len(two) == 2 and np.array_equal(two[1], ref[1])
    for bad in (0, session.num_exits + 1):
        with pytest.raises(BackendError, match="upto must be between 1 and"):
            be.run_chain(x, upto=bad)


def test_full_reference_equals_the_chained_sections(session: AnytimeSession, tiny_bundle: Path) -> None:
    if not open_bundle(tiny_bundle).has_full:
        pytest.skip("bundle has no full.onnx")
    x = floats(session, 4, seed=5)
    ref = session.backend.run_reference(x)
    np.testing.assert_allclose(session.infer_all_exits(x)[-1], ref, rtol=1e-4, atol=1e-4)


# -- inputs --------------------------------------------------------------------------------------------------
def test_raw_uint8_equals_manually_preprocessed_float(session: AnytimeSession) -> None:
    raw = images(session, 6, seed=6)
    a = session.infer_all_exits(raw)
    b = session.infer_all_exits(manual_preprocess(session, raw))
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    one = session.infer(raw[0])
    assert one.label == session.infer(manual_preprocess(session, raw[:1])[0]).label
    if session.input_shape[0] == 1:  # grayscale: HW and NHW are accepted too
        np.testing.assert_allclose(session.infer_all_exits(raw[..., 0]), a, rtol=1e-6)
        np.testing.assert_allclose(session.infer(raw[0, ..., 0]).probabilities, one.probabilities, rtol=1e-6)


def test_non_contiguous_and_other_float_dtypes_are_accepted(session: AnytimeSession) -> None:
    x = floats(session, 4, seed=7)
    ref = session.infer_all_exits(x)
    strided = np.empty((8,) + x.shape[1:], np.float32)[::2]
    strided[...] = x
    assert not strided.flags.c_contiguous
    np.testing.assert_allclose(session.infer_all_exits(strided), ref, rtol=1e-6)
    np.testing.assert_allclose(session.infer_all_exits(x.astype(np.float64)), ref, rtol=1e-5, atol=1e-5)


def bad_inputs(session: AnytimeSession) -> list[tuple[str, object, str]]:
    c, h, w = session.input_shape
    good = floats(session, 2)
    nan = good.copy()
    nan[0, 0, 0, 0] = np.nan
    inf = good.copy()
    inf[1, -1, -1, -1] = np.inf
    return [
        ("rank 5", good[None], "rank 5"),
        ("rank 1", good.reshape(-1), "rank 1"),
        ("channels", np.zeros((2, c + 1, h, w), np.float32), r"shape \[2, %d" % (c + 1)),
        ("size", np.zeros((2, c, h + 1, w), np.float32), "expected float32"),
        ("HWC float", np.zeros((h, w, c), np.float32) if (h, w, c) != (c, h, w) else np.zeros((1,), np.float32),
         "HWC|rank"),
        ("int32", good.astype(np.int32), "dtype int32"),
        ("bool", good > 0, "dtype bool"),
        ("complex", good.astype(np.complex64), "dtype complex64"),
        ("nan", nan, "NaN/Inf"),
        ("inf", inf, "NaN/Inf"),
        ("empty", np.zeros((0, c, h, w), np.float32), "empty batch"),
        ("too big", np.zeros((33, c, h, w), np.float32), "max_batch=32"),
        ("uint8 wrong size", np.zeros((h + 2, w, c), np.uint8), "uint8 input has shape"),
        ("uint8 CHW", np.zeros((2, c, h, w), np.uint8) if c != h else np.zeros((2, 1), np.uint8), "CHW|uint8"),
        ("not an array", "picture.png", "numpy array"),
        ("ragged list", [[1.0, 2.0], [3.0]], "could not be converted|dtype"),
    ]


def test_each_bad_input_gets_its_own_clear_error(session: AnytimeSession) -> None:
    messages = set()
    for name, x, pattern in bad_inputs(session):
        with pytest.raises(InputError, match=pattern) as err:
            session.infer(x)
        messages.add(str(err.value))
    assert len(messages) >= 12  # distinct messages, not one generic error


def test_infer_all_exits_chunks_batches_above_max_batch(session: AnytimeSession) -> None:
    x = floats(session, 70, seed=8)
    whole = session.infer_all_exits(x)
    assert whole.shape[1] == 70
    np.testing.assert_allclose(whole[:, 40:50], session.infer_all_exits(x[40:50]), rtol=1e-4, atol=1e-5)


def test_preprocessor_on_a_synthetic_rgb_manifest() -> None:
    from sdedge.runtime.manifest import validate_manifest

    raw = {"format": "sdedge-bundle", "format_version": 1,
           "input": {"name": "image", "shape": [None, 3, 4, 5], "dtype": "float32",
                     "preprocess": {"scale": 1 / 255, "mean": [0.1, 0.2, 0.3], "std": [0.5, 0.25, 2.0],
                                    "channel_order": "RGB"}},
           "classes": ["a", "b"],
           "sections": [{"file": "s1.onnx", "sha256": "0" * 64, "inputs": [{"name": "image", "shape": [None, 3, 4, 5]}],
                         "outputs": [{"name": "logits_1", "shape": [None, 2]}]}]}
    prep = Preprocessor(validate_manifest(raw), max_batch=4)
    pix = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    out = prep(pix)
    assert out.single and out.batch.shape == (1, 3, 4, 5) and out.batch.flags.c_contiguous
    for ch, (m, s) in enumerate(zip((0.1, 0.2, 0.3), (0.5, 0.25, 2.0))):
        np.testing.assert_allclose(out.batch[0, ch], (pix[..., ch] / 255 - m) / s, rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match=r"\[4,5,3\]"):
        prep(pix[..., 0])  # HW only for one-channel models


# -- calibration and profiles ----------------------------------------------------------------------------------
def test_profile_for_this_device_drives_the_deadline_policy(bundle_copy: Path, engine: str) -> None:
    s = AnytimeSession(bundle_copy, backend="onnxruntime", intra_op_threads=1, warmup=1, engine=engine)
    k = s.num_exits
    assert s.profile is None
    x = floats(s, 1)[0]
    assert s.infer(x, budget_ms=1000).exit_index == k  # online estimates: everything fits in a second
    huge = [[0.05] * 5] + [[1e6] * 5] * (k - 1)  # section 2 and after "take" 1000 s on this device
    prof = make_profile(s.device_name, "onnxruntime", "fp32", 1, {1: huge}, 0.01, 5)
    other = make_profile("some-other-device", "onnxruntime", "fp32", 1, {1: [[1e6] * 5] * k}, 0.01, 5)
    update_bundle(bundle_copy, {profile_relpath(s.device_name): dump_json(prof),
                                profile_relpath("some-other-device"): dump_json(other)})
    s2 = AnytimeSession(bundle_copy, backend="onnxruntime", intra_op_threads=1, warmup=1, engine=engine)
    assert s2.profile is not None and s2.profile.device == s.device_name
    r = s2.infer(x, budget_ms=1000)
    assert r.exit_index == 1 and r.stopped_by == "deadline" and r.deadline_met is True
    assert s2.infer(x).exit_index == k  # no deadline: the profile does not matter


def test_measured_profile_roundtrips_through_the_bundle(bundle_copy: Path) -> None:
    from sdedge.calibrate.profile import ProfileConfig, measure_profile  # what `sdedge calibrate` writes
    from sdedge.runtime.policies import PROFILE_PRIOR_QUANTILE
    from sdedge.runtime.profile import LatencyProfile

    s = AnytimeSession(bundle_copy, backend="onnxruntime", intra_op_threads=1, warmup=0)
    prof = measure_profile(s, floats(s, 4), ProfileConfig(batch_sizes=(1, 4), runs=20, warmup=2, overhead_runs=20))
    parsed = LatencyProfile.from_json(prof, s.num_exits)
    assert parsed.device == s.device_name and parsed.batch_sizes == [1, 4] and parsed.runs == 20
    assert all(0 < parsed.section_ms(k, 1) < 1000 for k in range(1, s.num_exits + 1))
    assert 0 <= parsed.decision_overhead_ms < 1000 and 0 <= parsed.fixed_per_call_ms < 1000
    update_bundle(bundle_copy, {profile_relpath(s.device_name): dump_json(prof)})
    s2 = AnytimeSession(bundle_copy, backend="onnxruntime", intra_op_threads=1, warmup=0, engine="python")  # reads its rule
    prior = parsed.section_ms(2, 1, PROFILE_PRIOR_QUANTILE)  # rule 6: the profile's figure is the prior
    assert s2.profile is not None and s2.deadline_policy.section_cost_ms(2, 1) >= prior
    # without batch sizes: 1, 2, 4, 8, 16 up to the session's max_batch (never a size it cannot run)
    small = AnytimeSession(bundle_copy, backend="onnxruntime", intra_op_threads=1, warmup=0, max_batch=6)
    auto = measure_profile(small, floats(small, 4), ProfileConfig(runs=5, warmup=0, overhead_runs=0))
    assert LatencyProfile.from_json(auto, small.num_exits).batch_sizes == [1, 2, 4, 6]
    with pytest.raises(InputError, match="exceed the session's max_batch"):
        measure_profile(small, floats(small, 4), ProfileConfig(batch_sizes=(8,), runs=5, warmup=0, overhead_runs=0))


def calibrate(bundle: Path, k: int, drop: tuple[str, ...] = (), **fields) -> None:
    """Write a calibration.json the way `sdedge calibrate` does, ``fields`` changed and ``drop`` removed."""
    from sdedge.runtime.calibration import calibration_document

    data = calibration_document("max_prob", [2.0] * k, [0.0] * (k - 1) + [None], [True] * k, method="test")
    data.update(fields)
    for key in drop:
        del data[key]
    update_bundle(bundle, {"calibration.json": dump_json(data)})


@pytest.mark.parametrize("rel", ["calibration.json", "profiles/some-device.json"])
def test_a_bundle_json_file_that_is_not_json_is_refused_naming_it(bundle_copy: Path, rel: str) -> None:
    update_bundle(bundle_copy, {rel: b"{not json"})  # checksummed: only its content is wrong
    b = open_bundle(bundle_copy)
    with pytest.raises(BundleError, match=r"is not valid JSON") as e:
        b.calibration if rel == "calibration.json" else b.profile("some-device")
    assert rel.split("/")[-1] in str(e.value)


@pytest.mark.parametrize("fields, drop, newer, message", [
    ({"format": "sdedge-profile"}, (), False, r"is not an sdedge calibration: 'format' is 'sdedge-profile'"),
    ({}, ("format",), False, r"is not an sdedge calibration: 'format' is None"),
    ({"format_version": 2}, (), True, r"format_version 2, not supported .*reads version 1.*upgrade sdedge"),
    ({"format_version": 0}, (), True, r"format_version 0, not supported .*re-run `sdedge calibrate`"),
    ({}, ("format_version",), False, r"'format_version' must be an integer, got None"),
    ({"format_version": "1"}, (), False, r"'format_version' must be an integer, got '1'"),
], ids=["other-format", "no-format", "newer-version", "older-version", "no-version", "string-version"])
def test_calibration_of_another_format_or_version_is_refused(bundle_copy: Path, fields: dict, drop: tuple,
                                                              newer: bool, message: str) -> None:
    from sdedge.common.errors import FormatVersionError
    from sdedge.runtime.calibration import load_calibration

    calibrate(bundle_copy, open_bundle(bundle_copy).manifest.num_exits, drop=drop, **fields)
    b = open_bundle(bundle_copy)  # the bundle verifies: the file is intact, only its format is foreign
    with pytest.raises(BundleError, match=message) as e:
        load_calibration(b)
    assert isinstance(e.value, FormatVersionError) == newer  # a version mismatch has its own type
    assert str(bundle_copy / "calibration.json") in str(e.value)  # the message names the file
    with pytest.raises(BundleError, match=message):  # and a session refuses the bundle with it
        AnytimeSession(bundle_copy, backend="onnxruntime", intra_op_threads=1, warmup=0)


def test_calibration_document_is_what_the_reader_reads() -> None:
    from sdedge.runtime.calibration import FORMAT, FORMAT_VERSION, calibration_document, parse_calibration

    doc = calibration_document("margin", [1.5, 1.0], [0.7, None], [True, True], method="test", target_met=True)
    assert doc["format"] == FORMAT == "sdedge-calibration" and doc["format_version"] == FORMAT_VERSION == 1
    c = parse_calibration(json.loads(dump_json(doc)), 2)
    assert (c.criterion, c.temperatures, c.thresholds, c.enabled) == ("margin", (1.5, 1.0), (0.7, None), (True, True))
    assert c.raw["method"] == "test" and c.raw["target_met"] is True  # the writer's report rides along
    with pytest.raises(ValueError, match="format_version"):  # a report field cannot forge the header
        calibration_document("margin", [1.0], [None], [True], format_version=2)


def test_calibration_temperatures_always_apply_thresholds_on_request(bundle_copy: Path, engine: str) -> None:
    k = open_bundle(bundle_copy).manifest.num_exits
    calibrate(bundle_copy, k)
    s = AnytimeSession(bundle_copy, backend="onnxruntime", intra_op_threads=1, warmup=0, engine=engine)
    x = floats(s, 3, seed=9)
    logits = s.infer_all_exits(x)
    plain = s.infer(x)  # threshold None: no confidence stop, but calibrated probabilities
    for i, r in enumerate(plain):
        assert r.exit_index == k
        np.testing.assert_allclose(r.probabilities, softmax(logits[-1, i:i + 1], 2.0)[0], rtol=1e-4, atol=1e-6)
    assert all(r.exit_index == 1 for r in s.infer(x, threshold="calibrated"))
    with pytest.raises(PolicyError, match="criterion 'max_prob'"):
        s.infer(x, threshold="calibrated", criterion="margin")


def test_disabled_exit_never_stops_on_confidence(bundle_copy: Path, engine: str) -> None:
    k = open_bundle(bundle_copy).manifest.num_exits
    calibrate(bundle_copy, k, enabled=[False] + [True] * (k - 1))
    s = AnytimeSession(bundle_copy, backend="onnxruntime", intra_op_threads=1, warmup=0, engine=engine)
    assert all(r.exit_index == 2 for r in s.infer(floats(s, 3), threshold="calibrated"))


# -- backends ------------------------------------------------------------------------------------------------------
def test_backend_errors_are_clear(tiny_bundle: Path) -> None:
    b = open_bundle(tiny_bundle)
    with pytest.raises(BackendError, match="unknown backend 'cuda-magic'"):
        create_backend(b, "cuda-magic")
    with pytest.raises(BackendError, match="not available in this onnxruntime.*CPUExecutionProvider"):
        create_backend(b, "onnxruntime", BackendOptions(providers=["NoSuchExecutionProvider"]))
    with pytest.raises(BackendError, match="fp16"):
        create_backend(b, "onnxruntime", BackendOptions(precision="fp16"))
    with pytest.raises(BackendError, match="unknown onnxruntime backend option"):
        create_backend(b, "onnxruntime", BackendOptions(extra={"spin": True}))
    if not b.manifest.sections[0].int8_file:
        with pytest.raises(BundleError, match="no INT8 sections"):
            create_backend(b, "onnxruntime", BackendOptions(precision="int8"))


def test_auto_backend_without_engines_is_onnxruntime(tiny_bundle: Path, engine: str) -> None:
    s = AnytimeSession(tiny_bundle, intra_op_threads=1, warmup=0, engine=engine)  # backend="auto"
    assert s.backend_name == "onnxruntime" and s.infer(floats(s, 1)[0]).exit_index == s.num_exits
    s.close()


def test_tensorrt_missing_is_a_clear_error(tiny_bundle: Path) -> None:
    pytest.importorskip("numpy")
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    with pytest.raises(BackendError, match=r"tensorrt package.*pip install"):
        AnytimeSession(tiny_bundle, backend="tensorrt", warmup=0)


def test_onnxruntime_options_give_the_same_answers(session: AnytimeSession, tiny_bundle: Path) -> None:
    if session.engine != "python":  # the threshold below ties a row's confidence exactly: engines may differ by an ulp
        pytest.skip("backend_options run on the Python engine; the engines' agreement: tests/test_native_engine.py")
    x = floats(session, 5, seed=10)
    ref = session.infer_all_exits(x)
    for extra in ({"io_binding": True}, {"allow_spinning": True, "graph_optimization": "basic"}):
        s = AnytimeSession(tiny_bundle, backend="onnxruntime", intra_op_threads=2, warmup=0, backend_options=extra)
        np.testing.assert_allclose(s.infer_all_exits(x), ref, rtol=1e-4, atol=1e-5)
        t = mixed_threshold(s, x)
        assert [r.exit_index for r in s.infer(x, threshold=t)] == [r.exit_index for r in session.infer(x, threshold=t)]
        s.close()


def test_concurrent_calls_are_safe(session: AnytimeSession) -> None:
    x = floats(session, 8, seed=11)
    expected = [session.infer(x[i]).label for i in range(8)]
    got: dict[int, int] = {}

    def work(i: int) -> None:
        for _ in range(5):
            got[i] = session.infer(x[i], budget_ms=10_000).label

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [got[i] for i in range(8)] == expected


def test_tensorrt_row_gather_logic_on_a_fake_device() -> None:
    from sdedge.runtime.backends.tensorrt import gather_rows, row_runs

    assert row_runs(np.array([0, 1, 2, 5, 6, 9])) == [(0, 3), (5, 2), (9, 1)]
    assert row_runs(np.array([], np.int64)) == []

    class FakeCuda:  # device memory = one host byte array, pointers = offsets
        def __init__(self) -> None:
            self.mem = bytearray(4096)
            self.copies = 0

        def d2d(self, dst: int, src: int, n: int, stream: object) -> None:
            self.mem[dst:dst + n] = self.mem[src:src + n]
            self.copies += 1

    cuda = FakeCuda()
    src = np.arange(10 * 6, dtype=np.float32).reshape(10, 6)
    cuda.mem[0:src.nbytes] = src.tobytes()
    rows = np.array([1, 2, 3, 7, 9])
    gather_rows(cuda, 2048, 0, 6 * 4, rows, None)
    out = np.frombuffer(bytes(cuda.mem[2048:2048 + 5 * 24]), np.float32).reshape(5, 6)
    np.testing.assert_array_equal(out, src[rows])
    assert cuda.copies == 3  # one copy per run of consecutive rows


def test_cuda_python_gather_on_a_gpu() -> None:
    """Device-side row gather through cuda-python (runs where a GPU and cuda-python exist)."""
    cudart = pytest.importorskip("cuda.bindings.runtime")
    from sdedge.runtime.backends.tensorrt import CudaPython, gather_rows

    err, count = cudart.cudaGetDeviceCount()
    if err != cudart.cudaError_t.cudaSuccess or count == 0:
        pytest.skip("no CUDA device")
    cuda = CudaPython(cudart)
    stream = cuda.create_stream()
    src = np.random.default_rng(0).random((16, 33)).astype(np.float32)
    a, b = cuda.malloc(src.nbytes), cuda.malloc(src.nbytes)
    try:
        cuda.h2d(a, src, stream)
        rows = np.array([0, 3, 4, 5, 15])
        gather_rows(cuda, b, a, 33 * 4, rows, stream)
        out = np.empty((5, 33), np.float32)
        cuda.d2h(out, b, stream)
        cuda.sync(stream)
        np.testing.assert_array_equal(out, src[rows])
    finally:
        cuda.free(a)
        cuda.free(b)
        cuda.destroy_stream(stream)


# -- the CLI ---------------------------------------------------------------------------------------------------------
def test_sdedge_run_prints_class_confidence_exit_and_latency(session: AnytimeSession, tiny_bundle: Path,
                                                             tmp_path: Path) -> None:
    from PIL import Image

    raw = images(session, 2, seed=12)
    png = tmp_path / "a.png"
    c = session.input_shape[0]
    Image.fromarray(raw[0, ..., 0] if c == 1 else raw[0]).resize((20, 20)).save(png)
    npy = tmp_path / "b.npy"
    np.save(npy, raw[1])
    cmd = [sys.executable, "-m", "sdedge.cli", "run", str(tiny_bundle), str(png), str(npy), "--budget-ms", "1000",
           "--threads", "1"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 2
    for line in lines:
        assert "confidence" in line and "exit " in line and " ms" in line and "deadline met" in line
    assert "resized 20x20" in lines[0]
    assert " engine):" in out.stderr  # which engine runs: "(native engine)" or "(python engine)"
    assert session.classes[session.infer(raw[1]).label] in lines[1]
    bad = subprocess.run([sys.executable, "-m", "sdedge.cli", "run", str(tiny_bundle), str(npy), "--threshold", "1.5"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "[0, 1]" in bad.stderr


def test_a_call_with_no_policy_runs_full_onnx_and_answers_as_the_chain(tiny_bundle: Path, engine: str) -> None:
    """Issue 12 item 5: no policy -> full.onnx (no intermediate exit heads); the answer is the chain's."""
    opts = dict(engine=engine, backend="onnxruntime", intra_op_threads=1, warmup=2)
    with AnytimeSession(tiny_bundle, **opts) as s, AnytimeSession(tiny_bundle, full_graph=False, **opts) as c:
        assert s.full_graph and not c.full_graph
        raw = images(s, 6, seed=5)
        a, b = s.infer(raw), c.infer(raw)
        k = s.num_exits
        assert [(r.exit_index, r.stopped_by, r.deadline_met) for r in a] == [(k, "last", None)] * 6
        assert [r.label for r in a] == [r.label for r in b]
        for ra, rb in zip(a, b):
            np.testing.assert_allclose(ra.probabilities, rb.probabilities, rtol=1e-4, atol=1e-6)
            assert ra.confidence == pytest.approx(rb.confidence, abs=1e-5)
            np.testing.assert_allclose(ra.exit_confidences, rb.exit_confidences, rtol=1e-4, atol=1e-6)
            assert len(ra.exit_confidences) == k
        settled: list[list[int]] = []
        rows = s.infer_rows(raw, on_settled=lambda idx, res: settled.append(idx))  # no row has a policy
        assert settled == [list(range(6))] and [r.label for r in rows] == [r.label for r in a]
        if engine == "python":  # which graphs ran: the sections only when a policy needs them
            calls: list[int] = []
            run = s.backend.run_section
            s.backend.run_section = lambda i, x: calls.append(i) or run(i, x)  # type: ignore[method-assign]
            s.infer(raw[0])
            assert calls == []
            s.infer(raw[0], threshold=1.0)
            assert calls == list(range(1, k + 1))
            # the warm-up timed the sections although no-policy calls skip them
            assert all(s.estimator.count(i, 1) > 0 for i in range(1, k + 1))


def test_a_deadline_the_whole_network_fits_runs_full_onnx(tiny_bundle: Path, engine: str) -> None:
    """Policies rule 9: a deadline-only call whose budget the whole chain fits runs full.onnx, timed into its own
    cells; a tight budget, a threshold, the ensemble or per-row deadlines run the sections."""
    opts = dict(engine=engine, backend="onnxruntime", intra_op_threads=1, warmup=2)
    with AnytimeSession(tiny_bundle, **opts) as s, AnytimeSession(tiny_bundle, full_graph=False, **opts) as c:
        raw = images(s, 4, seed=7)
        k = s.num_exits
        a, b = s.infer(raw, budget_ms=60_000), c.infer(raw, budget_ms=60_000)
        assert [(r.exit_index, r.stopped_by, r.deadline_met) for r in a] == [(k, "last", True)] * 4
        assert [r.label for r in a] == [r.label for r in b]
        for ra, rb in zip(a, b):
            np.testing.assert_allclose(ra.probabilities, rb.probabilities, rtol=1e-4, atol=1e-6)
            np.testing.assert_allclose(ra.exit_confidences, rb.exit_confidences, rtol=1e-4, atol=1e-6)
        tight = s.infer(raw[0], budget_ms=1e-6)  # nothing fits: the floor answers, as before
        assert (tight.exit_index, tight.stopped_by, tight.deadline_met) == (1, "deadline", False)
        # rows with their own deadlines and no threshold (a server's batch): the earliest deadline decides
        settled: list[list[int]] = []
        far = s.clock() + 60.0
        rows = s.infer_rows(raw, deadlines=[far, None, far, far], on_settled=lambda idx, res: settled.append(idx))
        assert settled == [[0, 1, 2, 3]] and [(r.exit_index, r.deadline_met) for r in rows] == \
            [(k, True), (k, None), (k, True), (k, True)]
        rows = s.infer_rows(raw, deadlines=[far, s.clock() - 1.0, None, far])  # one row already late
        assert [(r.exit_index, r.stopped_by) for r in rows] == [(k, "last"), (1, "deadline"), (k, "last"), (k, "last")]
        if engine == "python":
            full_runs: list[int] = []
            run_full = s.backend.run_full
            s.backend.run_full = lambda x: full_runs.append(1) or run_full(x)  # type: ignore[method-assign]
            s.infer(raw[0], budget_ms=60_000)
            assert full_runs == [1] and s.estimator.estimate_full(1) is not None
            s.infer(raw[0], budget_ms=60_000, threshold=1.0)  # a confidence test at every exit needs the sections
            s.infer_rows(raw[:2], thresholds=[None, 1.0], deadlines=[s.clock() + 60.0] * 2)  # a row threshold too
            assert full_runs == [1]
            s.infer_rows(raw[:2], deadlines=[s.clock() + 60.0] * 2)  # per-row deadlines the whole network fits
            assert full_runs == [1, 1]
            pol = s.deadline_policy
            assert pol.full_cost_ms(1) >= sum(pol.section_cost_ms(i, 1) for i in range(1, k + 1)) - 1e-12
            s.estimator.record_full(1, 1e6)  # a full graph that has become slow is charged its own figure
            assert pol.full_cost_ms(1) >= 1e6 and not pol.full_fits(1, 0.0, 100.0)
            s.infer(raw[0], budget_ms=60_000)
            assert full_runs == [1, 1]  # so the sections run again


def test_a_full_graph_that_is_not_the_network_is_refused_naming_it(tiny_bundle: Path, tmp_path: Path,
                                                                  engine: str) -> None:
    """full.onnx is checked as a section is (its input is the image, its output the deepest exit's logits)."""
    dst = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, dst)
    update_bundle(dst, {"full.onnx": (dst / "sections" / "s1.onnx").read_bytes()})  # checksummed, but section 1
    with pytest.raises(BundleError, match=r"full graph \(full\.onnx\).*outputs"):
        AnytimeSession(dst, engine=engine, backend="onnxruntime", intra_op_threads=1, warmup=0)
    with AnytimeSession(dst, engine=engine, backend="onnxruntime", intra_op_threads=1, warmup=0,
                        full_graph=False) as s:  # never loaded: the sections still answer
        assert not s.full_graph and s.infer(images(s, 1)[0]).exit_index == s.num_exits


def test_a_call_back_into_the_session_from_on_settled_is_refused_not_a_hang(session: AnytimeSession) -> None:
    """A session serializes its calls; an ``on_settled`` callback that calls into the same session gets a
    PolicyError at once (both engines) instead of waiting on the lock its own call holds."""
    x = floats(session, 2, seed=21)
    seen: list[BaseException | None] = []

    def settled(idx, results):
        try:
            session.infer(x[:1])
            seen.append(None)
        except PolicyError as e:
            seen.append(e)

    done: list = []
    t = threading.Thread(target=lambda: done.append(session.infer_rows(x, thresholds=[0.0, None], on_settled=settled)),
                         daemon=True)
    t.start()
    t.join(120)
    assert not t.is_alive(), "infer_rows hung on a call back into the session"
    assert seen and all(isinstance(e, PolicyError) and "called back into a session" in str(e) for e in seen)
    assert len(done[0]) == 2 and session.infer(x[:1])[0].exit_index >= 1  # free again afterwards


@pytest.mark.parametrize("budget_ms", [1e13, 1e20, 1e305])
def test_a_huge_finite_budget_is_a_deadline_far_away(session: AnytimeSession, budget_ms: float) -> None:
    """Positive and finite is a valid budget however large: the answer is the deepest exit, deadline met (the
    native engine's int64 nanosecond deadline is clipped, not wrapped)."""
    x = floats(session, 2, seed=22)
    out = session.infer(x, budget_ms=budget_ms)
    assert [r.exit_index for r in out] == [session.num_exits] * 2 and all(r.deadline_met is True for r in out)
    rows = session.infer_rows(x, deadlines=[session.clock() + budget_ms * 1e-3, None])
    assert [r.exit_index for r in rows] == [session.num_exits] * 2 and rows[0].deadline_met is True


@pytest.mark.parametrize("opts, needle", [({"max_batch": 4097}, "max_batch must be an integer in 1..4096"),
                                          ({"latency_quantile": 0.3}, "latency_quantile must be in"),
                                          ({"latency_window": 3}, "latency_window must hold at least 8")])
def test_options_out_of_range_are_refused_before_the_bundle_is_read(opts: dict, needle: str) -> None:
    from sdedge.runtime import SessionOptions

    with pytest.raises(PolicyError, match=needle):
        SessionOptions(**opts)
    with pytest.raises(PolicyError, match=needle):  # before the (missing) bundle is looked at
        AnytimeSession("/nonexistent/bundle", **opts)


def test_calibration_temperatures_must_be_normal_float32(bundle_copy: Path, engine: str) -> None:
    """1e-300 is a positive finite double but 0 as the float32 that divides the logits: refused at open."""
    k = open_bundle(bundle_copy).manifest.num_exits
    calibrate(bundle_copy, k, temperatures=[1e-300] + [1.0] * (k - 1))
    with pytest.raises(BundleError, match=r"temperatures\[0\] \(exit 1\) must be a positive finite number within "
                                          r"float32's normal range"):
        AnytimeSession(bundle_copy, backend="onnxruntime", intra_op_threads=1, warmup=0, engine=engine)

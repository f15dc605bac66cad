"""Bundle format version 2: exit heads as graphs of their own, run only where a call needs their logits.

The same tiny trained checkpoint is exported as version 1 (``tiny_bundle``) and version 2; both must give
the same answers under every policy, on both engines, while version 2 runs an intermediate head only for a
confidence decision, the ensemble answer, or a stop at that exit (the Python engine's backend is counted
here; ``native/tests/unit_session.cpp`` counts the core's, ``tests/test_tensorrt_runtime.py`` TensorRT's).
"""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from sdedge.common.errors import BundleError, ChecksumError, ExportError
from sdedge.runtime import AnytimeSession, open_bundle
from sdedge.runtime.manifest import validate_manifest
from sdedge.runtime.policies import DeadlinePolicy, LatencyEstimator

PY = dict(backend="onnxruntime", intra_op_threads=1, engine="python", warmup=1)


@pytest.fixture(scope="session")
def bundle_v2(tiny_checkpoint: Path, tmp_path_factory) -> Path:
    from sdedge.export import ExportConfig, export_bundle

    out = tmp_path_factory.mktemp("v2") / "bundle"
    return Path(export_bundle(ExportConfig(checkpoint=str(tiny_checkpoint), output=str(out),
                                           format_version=2)).bundle_path)


def images(bundle: Path, n: int = 48) -> np.ndarray:
    from sdedge.calibrate.datasets import load_calibration_split

    return load_calibration_split(open_bundle(bundle).manifest).images[:n]


class Counting:
    """Counts trunk and head runs of a session's backend (keyed by section)."""

    def __init__(self, session: AnytimeSession) -> None:
        self.trunks: list[int] = []
        self.heads: list[int] = []
        be = session.backend
        trunk, head = be.run_trunk, be.run_head
        be.run_trunk = lambda k, x: (self.trunks.append(k), trunk(k, x))[1]
        be.run_head = lambda k, f: (self.heads.append(k), head(k, f))[1]

    def reset(self) -> None:
        self.trunks.clear()
        self.heads.clear()


# -- the files and the manifest -----------------------------------------------------------------------------
def test_export_writes_heads_apart_and_keeps_the_section_costs(tiny_bundle: Path, bundle_v2: Path) -> None:
    m1, m2 = open_bundle(tiny_bundle).manifest, open_bundle(bundle_v2).manifest
    assert (m1.format_version, m2.format_version) == (1, 2) and not m1.split_heads and m2.split_heads
    k = m2.num_exits
    for s1, s2 in zip(m1.sections, m2.sections):
        assert s2.macs == s1.macs and s2.params == s1.params  # the section with its exit head, as in version 1
        if s2.index < k:
            assert s2.head is not None and s2.head.file == f"heads/h{s2.index}.onnx"
            assert (bundle_v2 / s2.head.file).is_file() and 0 < s2.head.macs < s2.macs
            assert [t.name for t in s2.file_outputs] == [f"features_{s2.index}"]
            assert s2.head.input == s2.features and s2.head.logits == s1.logits
        else:
            assert s2.head is None and [t.name for t in s2.file_outputs] == [f"logits_{k}"]
    raw = json.loads((bundle_v2 / "manifest.json").read_text())
    assert validate_manifest(raw).sections == m2.sections  # what the exporter wrote reads back the same


def test_every_exit_gives_the_same_logits_as_version_1(tiny_bundle: Path, bundle_v2: Path) -> None:
    x = images(tiny_bundle)
    with AnytimeSession(tiny_bundle, **PY) as s1, AnytimeSession(bundle_v2, **PY) as s2:
        assert s2.backend.split_heads and not s1.backend.split_heads
        assert s2.describe_backend().endswith("(python engine, exit heads apart)")
        assert s1.describe_backend().endswith("(python engine)")
        np.testing.assert_allclose(s2.infer_all_exits(x), s1.infer_all_exits(x), atol=1e-5)


@pytest.mark.parametrize("call", [
    dict(), dict(threshold=0.6), dict(threshold=[0.5, None]), dict(budget_ms=10_000.0),
    dict(threshold=0.7, budget_ms=10_000.0), dict(threshold=0.6, criterion="margin")])
@pytest.mark.parametrize("answer", ["last", "ensemble"])
def test_answers_match_version_1(tiny_bundle: Path, bundle_v2: Path, call: dict, answer: str, engine: str) -> None:
    x = images(tiny_bundle)
    with AnytimeSession(tiny_bundle, answer=answer, **PY) as s1, \
            AnytimeSession(bundle_v2, answer=answer, **{**PY, "engine": engine}) as s2:
        assert s2.engine == engine
        r1, r2 = s1.infer(x, **call), s2.infer(x, **call)
        assert [r.exit_index for r in r2] == [r.exit_index for r in r1]
        assert [r.stopped_by for r in r2] == [r.stopped_by for r in r1]
        assert [r.label for r in r2] == [r.label for r in r1]
        for a, b in zip(r1, r2):
            np.testing.assert_allclose(b.probabilities, a.probabilities, atol=1e-5)
            np.testing.assert_allclose(b.exit_confidences, a.exit_confidences, atol=1e-5)
        one = s2.infer(x[3], **call)  # the single-image path decides the same
        assert one.exit_index == r1[3].exit_index and one.label == r1[3].label


def test_rows_with_their_own_thresholds_and_deadlines_match_version_1(tiny_bundle: Path, bundle_v2: Path,
                                                                      engine: str) -> None:
    x = images(tiny_bundle, 12)
    thr = [None, 0.5, 0.99, 0.0, None, 0.7] * 2
    with AnytimeSession(tiny_bundle, **PY) as s1, AnytimeSession(bundle_v2, **{**PY, "engine": engine}) as s2:
        far = s1.clock() + 100.0
        dl = [None, far] * 6
        r1 = s1.infer_rows(x, thresholds=thr, deadlines=dl)
        r2 = s2.infer_rows(x, thresholds=thr, deadlines=dl)
        assert [(r.exit_index, r.label, r.stopped_by) for r in r2] == [(r.exit_index, r.label, r.stopped_by) for r in r1]
        past = s2.clock() - 1.0  # already late: every such row stops at exit 1, whose head must run for it
        r3 = s2.infer_rows(x, deadlines=[past if i % 2 else None for i in range(12)])
        assert all((r.exit_index, r.stopped_by) == (1, "deadline") for r in r3[1::2])
        assert all(r.exit_index == s2.num_exits for r in r3[0::2])
        for r, ref in zip(r3[1::2], s1.infer(x[1::2], budget_ms=1e-6)):
            np.testing.assert_allclose(r.probabilities, ref.probabilities, atol=1e-5)
            np.testing.assert_allclose(r.exit_confidences, ref.exit_confidences, atol=1e-5)


# -- heads run only where they are needed ----------------------------------------------------------------------------
def test_a_deadline_only_call_runs_only_the_head_where_it_stops(bundle_v2: Path) -> None:
    x = images(bundle_v2, 4)
    with AnytimeSession(bundle_v2, **PY) as s:  # a budget the whole network fits: full.onnx (rule 9)
        count = Counting(s)
        r = s.infer(x, budget_ms=10_000.0)
        assert all((v.exit_index, v.stopped_by, v.deadline_met) == (s.num_exits, "last", True) for v in r)
        assert count.trunks == [] and count.heads == []
    with AnytimeSession(bundle_v2, full_graph=False, **PY) as s:  # the sections, as when the whole does not fit
        k = s.num_exits
        count = Counting(s)
        r = s.infer(x, budget_ms=10_000.0)  # reaches the deepest exit: its head is inside the last section
        assert all(v.exit_index == k for v in r)
        assert count.trunks == list(range(1, k)) and count.heads == []
        count.reset()
        r = s.infer(x[0], budget_ms=1e-6)  # stops at exit 1: its head runs once, for the answer
        assert (r.exit_index, r.stopped_by, r.deadline_met) == (1, "deadline", False)
        assert count.trunks == [1] and count.heads == [1]
        count.reset()
        s.infer(x, threshold=1.0)  # a threshold at every exit: every head the call passes runs (none stop)
        assert count.heads == list(range(1, k))
        count.reset()
        s.infer(x, threshold=[None, 1.0])  # a threshold at exit 2 only
        assert count.heads == [2]


def test_ensemble_and_warm_up_run_every_head(bundle_v2: Path) -> None:
    x = images(bundle_v2, 2)
    with AnytimeSession(bundle_v2, **{**PY, "warmup": 0}) as s:
        count = Counting(s)
        s._warmup(2)  # the warm-up times every head (rule 8) ...
        k = s.num_exits
        assert count.heads.count(1) >= 2 and sorted(set(count.heads)) == list(range(1, k))
        assert all(s.estimator._heads[i] for i in range(1, k))
    with AnytimeSession(bundle_v2, answer="ensemble", **PY) as s:
        count = Counting(s)
        s.infer(x, budget_ms=10_000.0)  # ... and the ensemble needs every exit's probabilities
        assert count.heads == list(range(1, s.num_exits))


def test_exit_confidences_of_a_call_that_skipped_heads_are_computed_on_demand(bundle_v2: Path, engine: str) -> None:
    x = images(bundle_v2, 3)
    with AnytimeSession(bundle_v2, **{**PY, "engine": engine}) as s:
        if engine == "python":
            count = Counting(s)
        r = s.infer(x, budget_ms=10_000.0)
        if engine == "python":
            assert count.heads == []
        x[:] = 0  # the caller reuses its buffer: the confidences are still those of the call's input
        conf = r[1].exit_confidences
        ref = s.infer(images(bundle_v2, 3), threshold=1.0)[1].exit_confidences
        np.testing.assert_allclose(conf, ref, atol=1e-6)


# -- the estimator: heads timed apart (rule 8) -------------------------------------------------------------------------
def test_a_section_costs_its_trunk_plus_its_head() -> None:
    est = LatencyEstimator(3)
    est.record(2, 1, 1.0)
    assert est.estimate(2, 1) == 1.0  # no head measured: the trunk alone (version 1: always)
    est.record_head(2, 1, 0.25)
    assert est.estimate(2, 1) == 1.25
    est.record_head(2, 4, 0.5)
    assert est.estimate(2, 4) == 4 * 1.0 + 0.5  # each part borrows by rule 3 on its own
    est.record(2, 4, 2.0)
    assert est.estimate(2, 4) == 2.5 and est.estimate(2, 2) == pytest.approx(min(2.0, 2 * 1.0) + min(0.5, 2 * 0.25))
    assert LatencyEstimator(3).estimate(2, 1) is None
    est.record_head(1, 1, 0.5)
    assert est.estimate(1, 1) is None  # a head figure alone does not make a section's figure
    pol = DeadlinePolicy(est)
    assert pol.section_cost_ms(2, 1) == 1.25
    assert pol.should_stop(2, 1, now=0.0, deadline=1.2e-3) and not pol.should_stop(2, 1, now=0.0, deadline=1.3e-3)
    est.reset(2)
    assert est.estimate(2, 1) is None and not est._heads[2]


def test_head_cells_settle_to_their_lower_median() -> None:
    est = LatencyEstimator(2)
    for ms in (0.2, 5.0, 0.3):
        est.record(1, 1, 1.0)
        est.record_head(1, 1, ms)
    est.settle()
    assert est.estimate(1, 1) == pytest.approx(1.0 + 0.3)


# -- refusals ---------------------------------------------------------------------------------------------------------------
def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "b"
    shutil.copytree(src, dst)
    return dst


def _rewrite(root: Path, fn) -> None:
    m = json.loads((root / "manifest.json").read_text())
    fn(m)
    (root / "manifest.json").write_text(json.dumps(m))


def test_a_tampered_head_is_refused_naming_it(bundle_v2: Path, tmp_path: Path) -> None:
    b = _copy(bundle_v2, tmp_path)
    data = bytearray((b / "heads/h1.onnx").read_bytes())
    data[len(data) // 2] ^= 1
    (b / "heads/h1.onnx").write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="heads/h1.onnx"):
        open_bundle(b)


def test_swapped_heads_are_refused_at_load(bundle_v2: Path, tmp_path: Path) -> None:
    b = _copy(bundle_v2, tmp_path)
    m = open_bundle(b).manifest
    if m.sections[0].head.input.shape == m.sections[1].head.input.shape:
        pytest.skip("both heads read features of one shape")
    (b / "heads/h1.onnx").rename(b / "tmp.onnx")
    (b / "heads/h2.onnx").rename(b / "heads/h1.onnx")
    (b / "tmp.onnx").rename(b / "heads/h2.onnx")

    def swap(raw: dict) -> None:
        h1, h2 = raw["sections"][0]["head"], raw["sections"][1]["head"]
        h1["sha256"], h2["sha256"] = h2["sha256"], h1["sha256"]
    _rewrite(b, swap)
    with pytest.raises(BundleError, match="exit head of section 1"):
        AnytimeSession(b, **PY)


@pytest.mark.parametrize("mutate, message", [
    (lambda m: m["sections"][0].pop("head"), "must have a head"),
    (lambda m: m["sections"][-1].__setitem__("head", copy.deepcopy(m["sections"][0]["head"])), "only format version 2"),
    (lambda m: m["sections"][0]["head"]["inputs"][0].__setitem__("name", "features_2"), "section's features"),
    (lambda m: m["sections"][0]["head"]["outputs"][0].__setitem__("name", "logits_9"), "logits_1"),
    (lambda m: m["sections"][0]["head"].__setitem__("file", "../h.onnx"), "escapes"),
    (lambda m: m["sections"][0]["head"].__setitem__("int8_file", "int8/h1.onnx"), "int8_file and head.int8_file"),
    (lambda m: m["sections"][0]["outputs"].append(m["sections"][0]["head"]["outputs"][0]), "must hold features"),
    (lambda m: m.__setitem__("format_version", 1), "must hold features and logits"),
])
def test_malformed_version_2_manifests(bundle_v2: Path, mutate, message) -> None:
    raw = json.loads((bundle_v2 / "manifest.json").read_text())
    mutate(raw)
    with pytest.raises(BundleError, match=message):
        validate_manifest(raw)


def test_int8_and_fp16_copies_of_trunks_and_heads(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from sdedge.export import ExportConfig, export_bundle

    res = export_bundle(ExportConfig(checkpoint=str(tiny_checkpoint), output=str(tmp_path / "b"), format_version=2,
                                     int8=True, fp16=True, int8_samples=64, int8_eval_samples=64))
    b = open_bundle(res.bundle_path)  # every copy checksummed
    for s in b.manifest.sections:
        assert s.int8_file == f"int8/s{s.index}.onnx" and s.fp16_file == f"fp16/s{s.index}.onnx"
        if s.head is not None:
            assert s.head.int8_file == f"int8/h{s.index}.onnx" and s.head.fp16_file == f"fp16/h{s.index}.onnx"
            assert b.head_path(s.index, "int8").is_file() and b.head_path(s.index, "fp16-graph").is_file()
    assert len(res.int8) == b.manifest.num_exits and all(r.top1_agreement > 0.5 for r in res.int8)
    x = images(res.bundle_path, 16)
    with AnytimeSession(res.bundle_path, precision="int8", **PY) as s:
        count = Counting(s)
        assert s.backend.split_heads
        r = s.infer(x, threshold=0.0)  # every row stops at exit 1: trunk 1 and head 1 of the INT8 graphs
        assert count.trunks == [1] and count.heads == [1] and all(v.exit_index == 1 for v in r)
        assert np.isfinite(s.infer_all_exits(x)).all()


def test_another_format_version_is_refused_at_export(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from sdedge.export import ExportConfig, export_bundle

    with pytest.raises(ExportError, match="format version must be one of 1, 2"):
        export_bundle(ExportConfig(checkpoint=str(tiny_checkpoint), output=str(tmp_path / "x"), format_version=3))
    assert not (tmp_path / "x").exists()


def test_calibrate_and_serve_a_version_2_bundle(bundle_v2: Path, tmp_path: Path) -> None:
    from sdedge.calibrate.api import CalibrationConfig, calibrate_bundle
    from sdedge.runtime.options import SessionOptions

    b = _copy(bundle_v2, tmp_path)
    res = calibrate_bundle(b, config=CalibrationConfig(profile_runs=10, profile_warmup=1, overhead_runs=10,
                                                       batch_sizes=(1, 2),
                                                       session=SessionOptions(intra_op_threads=1)))
    prof = open_bundle(b).profile(res.device)
    assert prof is not None and sorted(prof["batch_sizes"]) == ["1", "2"]
    with AnytimeSession(b, **PY) as s:
        r = s.infer(images(b, 8), threshold="calibrated")
        assert all(1 <= v.exit_index <= s.num_exits for v in r)

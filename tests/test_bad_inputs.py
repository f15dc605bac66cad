"""The bad-input catalogue's cases that no other test file covers (see docs/robustness.md for the whole table).

Each case asserts the specific error (type and message) and that nothing was left broken: the bundle
still verifies, the session still gives the same answers, the server still answers. Cases already
covered elsewhere (test_checkpoint.py, test_bundle_format.py, test_export.py, test_runtime.py,
test_calibrate.py, test_server.py, test_server_errors.py) are only referenced in the table.
"""
from __future__ import annotations

import concurrent.futures as cf
import http.client
import json
import pickle
import shutil
import socket
import time
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

from sdedge.runtime import AnytimeSession
from sdedge.common.digest import sha256_file
from sdedge.common.jsonio import dump_json
from sdedge.runtime.bundle import open_bundle
from sdedge.common.errors import BundleError, CheckpointError, InputError, PolicyError
from sdedge.runtime.manifest import validate_manifest


@pytest.fixture(scope="module")
def session(tiny_bundle):
    s = AnytimeSession(tiny_bundle, backend="onnxruntime", intra_op_threads=1, warmup=1, max_batch=4)
    yield s
    s.close()


def good(session, n=2, seed=0) -> np.ndarray:
    c, h, w = session.input_shape
    return np.random.default_rng(seed).standard_normal((n, c, h, w)).astype(np.float32)


def assert_still_answers(session, ref=None) -> None:
    x = good(session, 2, seed=1)
    got = session.infer_all_exits(x)
    if ref is not None:
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    r = session.infer(x[0])
    assert np.isfinite(r.probabilities).all() and 1 <= r.exit_index <= session.num_exits


# -- checkpoints (the rest: tests/test_checkpoint.py) -----------------------------------------------------------------------
def _foreign_files(tmp: Path) -> dict[str, Path]:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    files = {
        "random bytes": rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "zip magic then random": b"PK\x03\x04" + rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "empty file": b"",
        "a numpy .npy": b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }" + b" " * 40,
    }
    out = {k: tmp / f"{i}.pt" for i, k in enumerate(files)}
    for k, data in files.items():
        out[k].write_bytes(data)
    legacy = tmp / "legacy.pt"  # another project's state dict in torch's pre-1.6 (non-zip) pickle format
    torch.save({"conv.weight": torch.zeros(2, 2)}, legacy, _use_new_zipfile_serialization=False)
    out["legacy-format state dict"] = legacy
    plain = tmp / "plain.pkl"  # a plain pickle (not torch.save) of a dict of lists
    plain.write_bytes(pickle.dumps({"format": "sdedge-checkpoint", "weights": [1, 2, 3]}))
    out["plain pickle"] = plain
    return out


def test_random_and_foreign_files_are_refused_as_checkpoints(tmp_path: Path) -> None:
    from sdedge.checkpoint import load_checkpoint

    for case, path in _foreign_files(tmp_path).items():
        before = path.read_bytes()
        with pytest.raises(CheckpointError, match="not a readable checkpoint|not an sdedge checkpoint|refused") as e:
            load_checkpoint(path)
        assert str(path) in str(e.value), case
        assert path.read_bytes() == before, case  # reading never writes


def test_a_checkpoint_missing_a_metadata_field_is_refused_on_load(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from sdedge.checkpoint import FORMAT, content_digest, load_checkpoint

    sd = {"w": torch.ones(2)}
    for missing in ("model", "classes"):
        meta = {"model": {"backbone": "tiny"}, "data": {}, "classes": ["a", "b"], "method": {"name": "byot"}}
        del meta[missing]
        meta_json = json.dumps(meta)  # digest consistent: only the missing field is wrong
        path = tmp_path / f"no-{missing}.pt"
        torch.save({"format": FORMAT, "format_version": 1, "meta": meta_json, "state_dict": sd,
                    "sha256": content_digest(meta_json, sd)}, path)
        with pytest.raises(CheckpointError, match=rf"metadata lacks required field\(s\) \['{missing}'\]"):
            load_checkpoint(path)


# -- bundles: section graphs vs the manifest (the rest: test_bundle_format.py, test_export.py) -----------------------------
def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _rewrite(root: Path, fn) -> None:
    m = json.loads((root / "manifest.json").read_text())
    fn(m)
    (root / "manifest.json").write_bytes(dump_json(m))


def test_a_swapped_section_graph_is_refused_at_load_naming_the_section(session, tiny_bundle: Path,
                                                                        tmp_path: Path) -> None:
    b = _copy(tiny_bundle, tmp_path / "swapped")
    shutil.copy(b / "sections/s1.onnx", b / "sections/s2.onnx")  # checksums updated: only the graph's I/O can tell
    _rewrite(b, lambda m: m["sections"][1].__setitem__("sha256", sha256_file(b / "sections/s2.onnx")))
    open_bundle(b)  # the checksums are consistent ...
    with pytest.raises(BundleError, match=r"section 2 \(sections/s2\.onnx\): the graph's inputs are \['image'\] "
                                          r"but the manifest says \['features_1'\]"):
        AnytimeSession(b, backend="onnxruntime", intra_op_threads=1, warmup=0)  # ... but the load refuses it
    open_bundle(tiny_bundle)
    assert_still_answers(session)


@pytest.mark.parametrize("where, mutate, message", [
    ("features shape", lambda m: (m["sections"][0]["outputs"][0].__setitem__("shape", [None, 8, 8, 8]),
                                  m["sections"][1]["inputs"][0].__setitem__("shape", [None, 8, 8, 8])),
     r"section 1 \(sections/s1\.onnx\): output 'features_1' has shape \[None, \d+, \d+, \d+\] in the graph but "
     r"\[None, 8, 8, 8\] in the manifest"),
    ("input image size", lambda m: (m["input"].__setitem__("shape", [None, 1, 8, 8]),
                                    m["sections"][0]["inputs"][0].__setitem__("shape", [None, 1, 8, 8])),
     r"section 1 \(sections/s1\.onnx\): input 'image' has shape"),
    ("dtype", lambda m: m["sections"][2]["outputs"][0].__setitem__("dtype", "float16"),
     r"section 3 \(sections/s3\.onnx\): output 'logits_3' has type tensor\(float\) in the graph but dtype 'float16'"),
])
def test_manifest_shapes_that_disagree_with_the_graphs_are_refused_at_load(tiny_bundle: Path, tmp_path: Path,
                                                                          where, mutate, message) -> None:
    b = _copy(tiny_bundle, tmp_path / "edited")
    _rewrite(b, mutate)
    open_bundle(b)  # self-consistent manifest, valid checksums
    with pytest.raises(BundleError, match=message):
        AnytimeSession(b, backend="onnxruntime", intra_op_threads=1, warmup=0)


@pytest.mark.parametrize("mutate, message", [
    (lambda m: m.__setitem__("format_version", "1"), "'format_version' must be an integer"),
    (lambda m: m.__setitem__("sections", {}), "sections: expected list, got dict"),
    (lambda m: m["sections"][0].__setitem__("file", 5), r"sections\[0\]\.file: expected str, got int"),
    (lambda m: m["input"]["preprocess"].__setitem__("mean", ["a"]), r"input\.preprocess\.mean must hold numbers"),
    (lambda m: m["input"]["preprocess"].__setitem__("mean", [None]), r"input\.preprocess\.mean must hold numbers"),
    (lambda m: m["input"]["preprocess"].__setitem__("std", [10 ** 400]), r"input\.preprocess\.std must hold numbers"),
    (lambda m: m["input"]["preprocess"].__setitem__("scale", float("inf")), "positive and finite"),
    (lambda m: m.__setitem__("model", []), "manifest.model must be an object"),
    (lambda m: m.__setitem__("files", {"full.onnx": 5}), r"files\['full\.onnx'\]\.sha256"),
    (lambda m: m["sections"][0].__setitem__("macs", -1), "non-negative integer"),
    (lambda m: m["sections"][0].__setitem__("int8_file", "../x.onnx"), "escapes the bundle folder"),
    (lambda m: m.pop("input"), "missing key 'input'"),
])
def test_manifest_wrong_types_on_a_real_manifest(tiny_bundle: Path, mutate, message) -> None:
    raw = json.loads((tiny_bundle / "manifest.json").read_text())
    mutate(raw)
    with pytest.raises(BundleError, match=message):
        validate_manifest(raw)


# -- runtime inputs (the rest: test_runtime.py::test_each_bad_input_gets_its_own_clear_error, test_bad_budgets...) -------
def _input_cases(session) -> list[tuple[str, object, dict, type, str]]:
    c, h, w = session.input_shape
    x = good(session, 1)
    return [
        ("object dtype", np.array([None] * 4, dtype=object), {}, InputError, "dtype object is not supported"),
        ("big-endian uint16", np.zeros((1, h, w, c), ">u2"), {}, InputError, "dtype >u2 is not supported"),
        ("structured dtype", np.zeros((1, c, h, w), [("a", "f4")]), {}, InputError, "is not supported"),
        ("float16 overflow to Inf", np.full((1, c, h, w), 70000, np.float16), {}, InputError, "NaN/Inf"),
        ("huge finite floats", np.full((1, c, h, w), 3.0e38, np.float32), {}, InputError,
         r"exit \d produced non-finite probabilities .* \|x\| = 3e\+38"),
        ("one huge row in a batch", np.concatenate([good(session, 2), np.full((1, c, h, w), 3e38, np.float32)]), {},
         InputError, "image 2 of the batch"),
        ("zero-size image", np.zeros((1, c, h, 0), np.float32), {}, InputError, r"shape \[1, %d, %d, 0\]" % (c, h)),
        ("batch above the cap", np.zeros((5, c, h, w), np.float32), {}, InputError, "max_batch=4"),
        ("per-exit thresholds, wrong count", x, {"threshold": [0.5] * 7}, PolicyError, "needs 2 or 3 values|values"),
        ("threshold numpy NaN", x, {"threshold": np.float32("nan")}, PolicyError, r"in \[0, 1\]"),
        ("threshold Decimal", x, {"threshold": Decimal("0.5")}, PolicyError, r"number in \[0, 1\]"),
        ("threshold '0.5' string", x, {"threshold": "0.5"}, PolicyError, "'calibrated'"),
        ("criterion as a list", x, {"threshold": 0.5, "criterion": ["max_prob"]}, PolicyError, "unknown confidence"),
        ("budget Decimal", x, {"budget_ms": Decimal("5")}, PolicyError, "budget_ms must be a positive finite"),
        ("budget complex", x, {"budget_ms": 1j}, PolicyError, "budget_ms"),
        ("budget -0.0", x, {"budget_ms": -0.0}, PolicyError, "budget_ms"),
        ("deadline +inf", x, {"deadline": float("inf")}, PolicyError, "deadline must be a finite"),
    ]


def test_each_runtime_bad_input_is_refused_and_the_session_keeps_answering(session) -> None:
    ref = session.infer_all_exits(good(session, 2, seed=1))
    for case, x, kw, etype, pattern in _input_cases(session):
        with pytest.raises(etype, match=pattern):
            session.infer(x, **kw)
        assert_still_answers(session, ref)  # same answers after every refusal (no state left behind)


def test_unusual_but_valid_layouts_give_the_same_answers(session) -> None:
    x = good(session, 3, seed=2)
    ref = session.infer_all_exits(x)
    variants = {
        "fortran order": np.asfortranarray(x),
        "negative strides": x[:, :, ::-1, :][:, :, ::-1, :],
        "read-only buffer": np.frombuffer(x.tobytes(), np.float32).reshape(x.shape),
        "big-endian float32": x.astype(">f4"),
        "float16": x.astype(np.float16),
    }
    for name, v in variants.items():
        tol = 2e-2 if v.dtype == np.float16 else 1e-5
        np.testing.assert_allclose(session.infer_all_exits(v), ref, rtol=tol, atol=tol, err_msg=name)
    past = session.infer(x[0], deadline=time.perf_counter() - 100)  # a deadline already passed: exit 1, not met
    assert past.exit_index == 1 and past.deadline_met is False


# -- HTTP (the rest: test_server_errors.py, test_server.py) ------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(session):
    pytest.importorskip("starlette")
    pytest.importorskip("uvicorn")
    pytest.importorskip("prometheus_client")
    from sdedge.runtime.server import BackgroundServer, ServerConfig, SessionOptions, build_app

    cfg = ServerConfig(port=0, log_level="critical", session=SessionOptions(max_batch=4), max_body_mb=0.05,
                       body_timeout_s=1.0,
                       timeout_keep_alive=5)
    app = build_app(session, cfg)
    srv = BackgroundServer(app, cfg).start()
    srv.state = app.state.sdedge
    yield srv
    srv.stop()


def call(srv, method: str, path: str, body: bytes | None = None, headers: dict | None = None, timeout: float = 30):
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=timeout)
    try:
        conn.request(method, path, body, headers or {})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def infer_doc(session, value: float = 0.1, n: int = 1) -> dict:
    c, h, w = session.input_shape
    return {"inputs": [{"name": "image", "datatype": "FP32", "shape": [n, c, h, w], "data": [value] * (n * c * h * w)}]}


def post(srv, doc, timeout: float = 30):
    return call(srv, "POST", f"/v2/models/{srv.state.model_name}/infer", json.dumps(doc).encode(),
                {"Content-Type": "application/json"}, timeout)


def metric(srv, needle: str) -> float:
    text = call(srv, "GET", "/metrics")[1].decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(needle))


def assert_server_answers(srv, session) -> None:
    assert call(srv, "GET", "/v2/health/ready")[0] == 200
    status, body = post(srv, infer_doc(session))
    assert status == 200 and json.loads(body)["outputs"], body[:300]


def test_huge_finite_values_get_400_not_500(server, session) -> None:
    before = metric(server, 'sdedge_requests_total{endpoint="infer",status="500"}')
    status, body = post(server, infer_doc(session, value=3.0e38))
    assert status == 400, body[:300]
    assert "non-finite probabilities" in json.loads(body)["error"]
    assert metric(server, 'sdedge_requests_total{endpoint="infer",status="500"}') == before
    assert_server_answers(server, session)


def _head(srv, length: int) -> bytes:
    return (f"POST /v2/models/{srv.state.model_name}/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


def test_truncated_body_then_disconnect_is_a_client_error_not_a_fault(server, session) -> None:
    body = json.dumps(infer_doc(session)).encode()
    before_500 = metric(server, 'sdedge_requests_total{endpoint="infer",status="500"}')
    before_400 = metric(server, 'sdedge_requests_total{endpoint="infer",status="400"}')
    for how in ("close", "half-close"):
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            s.sendall(_head(server, len(body)) + body[:100])
            if how == "half-close":
                s.shutdown(socket.SHUT_WR)
                assert s.recv(65536) == b""  # nobody to answer: the server just closes
    end = time.monotonic() + 30  # counted as soon as the server sees the disconnects; 30 s only bounds a failure
    while metric(server, 'sdedge_requests_total{endpoint="infer",status="400"}') < before_400 + 2:
        assert time.monotonic() < end, "the truncated requests were never counted"
        time.sleep(0.05)
    assert metric(server, 'sdedge_requests_total{endpoint="infer",status="500"}') == before_500
    assert_server_answers(server, session)


def test_slow_header_trickle_and_a_client_that_never_reads_do_not_block_others(server, session) -> None:
    body = json.dumps(infer_doc(session)).encode()
    trickle = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    deaf = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    try:
        trickle.sendall(b"POST /v2/models/x/infer HTTP/1.1\r\nHost: x\r\n")  # head never finished
        deaf.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        deaf.sendall((_head(server, len(body)) + body) * 20)  # 20 pipelined requests, answers never read
        # No server timer frees either connection while the test runs (a head has no timeout, and the deaf
        # one stalls on its full send buffer), so a server they blocked would hold the others for good: each
        # request's socket timeout is the check, with no wall-clock bound on the healthy case (milliseconds
        # each here, but seconds on a loaded CI machine).
        for _ in range(5):
            assert post(server, infer_doc(session), timeout=30)[0] == 200
    finally:
        trickle.close()
        deaf.close()
    assert_server_answers(server, session)


def test_many_concurrent_connections_are_all_answered(server, session) -> None:
    idle = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(150)]
    try:
        doc = infer_doc(session)
        with cf.ThreadPoolExecutor(32) as pool:
            statuses = list(pool.map(lambda _: post(server, doc)[0], range(128)))
        assert statuses == [200] * 128
    finally:
        for s in idle:
            s.close()
    assert_server_answers(server, session)

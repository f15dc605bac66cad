"""Property-based fuzzing of the two parsers that read untrusted bytes: the bundle manifest and the request.

* :func:`sdedge.runtime.manifest.validate_manifest` on arbitrary JSON-like values and on mutations of a
  valid manifest: it returns a manifest or raises :class:`BundleError` (``FormatVersionError`` included),
  never anything else (a ``TypeError`` from ``float(None)`` would escape ``except BundleError`` in a
  robot's loader);
* :func:`sdedge.runtime.server.protocol.parse_infer_request` on arbitrary bytes and header values, on
  mutated valid JSON requests and on mutated binary-extension bodies: it returns a request or raises
  :class:`ProtocolError` with a 4xx status, never anything else;
* the running server on arbitrary bodies and headers (Content-Type, Content-Encoding,
  Inference-Header-Content-Length): every answer is below 500 and the server keeps answering;
* the atheris harness ``fuzz/fuzz_request_decoding.py`` for a short bounded run (skipped without atheris).

Bounded: the Hypothesis profile's ``max_examples`` (``tests/conftest.py``: 200 in the default, derandomized
``ci`` profile; 2/5 of it for the loopback server), no deadline; the file runs in well under 30 s on one
core. Run longer by hand with ``HYPOTHESIS_PROFILE=dev`` (random, 1000 examples, seed printed on a
failure), a higher ``HYPOTHESIS_MAX_EXAMPLES``, or ``python fuzz/fuzz_request_decoding.py -max_total_time=600``.
"""
from __future__ import annotations

import copy
import gzip
import http.client
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sdedge.common.errors import BundleError
from sdedge.runtime.manifest import FORMAT, validate_manifest
from sdedge.runtime.server.protocol import ModelIO, ProtocolError, parse_infer_request

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = settings().max_examples  # the loaded profile's (tests/conftest.py), HYPOTHESIS_MAX_EXAMPLES included
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# -- generic JSON-like values ----------------------------------------------------------------------------------
_scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-(10**400), max_value=10**400)
            | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12))
json_values = st.recursive(_scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                           max_leaves=12)


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (tuple of keys/indices) into a nested JSON value, the root included."""
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, prefix + (i,))
    return out


def mutate(data: st.DataObject, doc: Any, rounds: int = 3) -> Any:
    """Apply 1..rounds random edits (replace a value, delete a key/item, add a key) to a copy of ``doc``."""
    doc = copy.deepcopy(doc)
    for _ in range(data.draw(st.integers(1, rounds))):
        path = data.draw(st.sampled_from(_paths(doc)))
        op = data.draw(st.sampled_from(["replace", "delete", "add", "wrap"]))
        if not path:
            if op == "replace":
                doc = data.draw(json_values)
            continue
        parent = doc
        for k in path[:-1]:
            parent = parent[k]
        key = path[-1]
        if op == "replace":
            parent[key] = data.draw(json_values)
        elif op == "delete":
            del parent[key]
        elif op == "wrap":
            parent[key] = [parent[key]]
        elif isinstance(parent, dict):
            parent[data.draw(st.text(max_size=8))] = data.draw(json_values)
        else:
            parent.insert(key, data.draw(json_values))
    return doc


# -- the manifest reader -------------------------------------------------------------------------------------------
def valid_manifest(k: int = 3, classes: int = 4) -> dict:
    shapes = [[None, 8, 16, 16], [None, 16, 8, 8]]
    sections = []
    for i in range(1, k + 1):
        ins = [{"name": "image" if i == 1 else f"features_{i - 1}",
                "shape": [None, 1, 16, 16] if i == 1 else shapes[i - 2], "dtype": "float32"}]
        outs = [] if i == k else [{"name": f"features_{i}", "shape": shapes[i - 1], "dtype": "float32"}]
        outs.append({"name": f"logits_{i}", "shape": [None, classes], "dtype": "float32"})
        sections.append({"index": i, "file": f"sections/s{i}.onnx", "sha256": f"{i:064x}", "inputs": ins,
                         "outputs": outs, "macs": 1000 * i, "params": 10 * i,
                         **({"int8_file": f"int8/s{i}.onnx"} if i == 1 else {})})
    return {
        "format": FORMAT, "format_version": 1, "created": "2026-01-01T00:00:00Z", "sdedge_version": "0.1.0",
        "model": {"name": "t", "backbone": "tiny", "method": "byot", "num_classes": classes},
        "input": {"name": "image", "shape": [None, 1, 16, 16], "dtype": "float32", "layout": "NCHW",
                  "preprocess": {"scale": 1 / 255, "mean": [0.3], "std": [0.3], "channel_order": "L"}},
        "classes": [f"c{i}" for i in range(classes)],
        "sections": sections,
        "exits": [{"index": i, "val_accuracy": 0.5} for i in range(1, k + 1)],
        "files": {"full.onnx": {"sha256": "f" * 64}, "int8/s1.onnx": {"sha256": "e" * 64}},
    }


def valid_manifest_v2(k: int = 3, classes: int = 4) -> dict:
    """The same model as format version 2: sections 1..K-1 return their features, each exit head a graph apart."""
    m = valid_manifest(k, classes)
    m["format_version"] = 2
    for s in m["sections"][:-1]:
        feats, logits = s["outputs"]
        s["outputs"] = [feats]
        s["head"] = {"file": f"heads/h{s['index']}.onnx", "sha256": f"{s['index'] + 7:064x}", "inputs": [feats],
                     "outputs": [logits], "macs": 10, "params": 2,
                     **({"int8_file": f"int8/h{s['index']}.onnx"} if s.get("int8_file") else {})}
        if s.get("int8_file"):
            m["files"][f"int8/h{s['index']}.onnx"] = {"sha256": "d" * 64}
    return m


def _validate_or_bundle_error(raw: Any) -> None:
    try:
        m = validate_manifest(raw)
    except BundleError as e:  # FormatVersionError and ChecksumError are BundleErrors
        assert str(e), "an error must say what is wrong"
        return
    # accepted: the typed view must be usable without further surprises
    assert m.num_exits >= 1 and len(m.classes) >= 2 and isinstance(m.model, dict)
    assert all(np.isfinite(m.preprocess.std)) and all(np.isfinite(m.preprocess.mean))


def test_the_fuzzing_template_is_valid() -> None:
    assert validate_manifest(valid_manifest()).num_exits == 3
    v2 = validate_manifest(valid_manifest_v2())
    assert v2.num_exits == 3 and v2.split_heads and v2.sections[0].head.int8_file == "int8/h1.onnx"


@FUZZ
@given(raw=json_values)
def test_manifest_reader_on_arbitrary_json(raw) -> None:
    _validate_or_bundle_error(raw)


@FUZZ
@given(extra=st.dictionaries(st.sampled_from(["model", "input", "classes", "sections", "exits", "files"]), json_values))
def test_manifest_reader_on_arbitrary_fields_of_a_v1_manifest(extra) -> None:
    _validate_or_bundle_error({"format": FORMAT, "format_version": 1, **extra})


@FUZZ
@given(data=st.data())
def test_manifest_reader_on_mutated_valid_manifests(data) -> None:
    _validate_or_bundle_error(mutate(data, valid_manifest(k=data.draw(st.integers(1, 3)))))


@FUZZ
@given(data=st.data())
def test_manifest_reader_on_mutated_version_2_manifests(data) -> None:
    _validate_or_bundle_error(mutate(data, valid_manifest_v2(k=data.draw(st.integers(1, 3)))))


# -- the request parser ----------------------------------------------------------------------------------------------
IO = ModelIO(input_name="image", chw=(3, 4, 5), classes=("a", "b", "c"), max_batch=4)
_header_values = st.none() | st.integers(-5, 5000).map(str) | st.text(max_size=8)


def _parse_or_protocol_error(body: bytes, header: str | None) -> None:
    try:
        req = parse_infer_request(body, header, IO)
    except ProtocolError as e:
        assert 400 <= e.status < 500 and str(e)
        return
    assert req.array.shape[0] == req.batch and 1 <= req.batch <= IO.max_batch
    assert req.array.dtype in (np.float32, np.uint8)


def valid_request(data: st.DataObject) -> dict:
    b = data.draw(st.integers(1, 2))
    raw = data.draw(st.booleans())
    shape = [b, 4, 5, 3] if raw else [b, 3, 4, 5]
    n = int(np.prod(shape))
    t = {"name": "image", "datatype": "UINT8" if raw else "FP32", "shape": shape,
         "data": [7] * n if raw else [0.25] * n}
    doc: dict = {"id": "r1", "inputs": [t], "parameters": {"budget_ms": 5, "threshold": 0.5, "criterion": "margin"}}
    if data.draw(st.booleans()):
        doc["outputs"] = [{"name": "label"}, {"name": "probabilities", "parameters": {"binary_data": True}}]
    return doc


@FUZZ
@given(body=st.binary(max_size=400), header=_header_values)
def test_request_parser_on_arbitrary_bytes(body, header) -> None:
    _parse_or_protocol_error(body, header)


@FUZZ
@given(data=st.data())
def test_request_parser_on_mutated_json_requests(data) -> None:
    doc = mutate(data, valid_request(data))
    body = json.dumps(doc, allow_nan=True).encode()  # NaN/Infinity tokens included on purpose
    _parse_or_protocol_error(body, data.draw(st.none() | st.just(str(len(body)))))


@FUZZ
@given(data=st.data())
def test_request_parser_on_mutated_binary_requests(data) -> None:
    doc = valid_request(data)
    t = doc["inputs"][0]
    arr = np.asarray(t.pop("data"), np.float32 if t["datatype"] == "FP32" else np.uint8)
    t["parameters"] = {"binary_data_size": arr.nbytes}
    doc = mutate(data, doc, rounds=2) if data.draw(st.booleans()) else doc
    head = json.dumps(doc, allow_nan=True).encode()
    tail = arr.tobytes()
    cut = data.draw(st.integers(-8, 8))
    tail = tail[:len(tail) + cut] if cut < 0 else tail + data.draw(st.binary(min_size=cut, max_size=cut))
    hl = data.draw(st.sampled_from(["exact", "off", "none", "text"]))
    header = {"exact": str(len(head)), "off": str(len(head) + data.draw(st.integers(-20, 20))), "none": None,
              "text": data.draw(st.text(max_size=6))}[hl]
    _parse_or_protocol_error(head + tail, header)


# -- the running server: arbitrary bodies and headers never give a 5xx ----------------------------------------------------
@pytest.fixture(scope="module")
def server(tiny_bundle):
    pytest.importorskip("starlette")
    pytest.importorskip("uvicorn")
    pytest.importorskip("prometheus_client")
    from sdedge.runtime import AnytimeSession
    from sdedge.runtime.server import BackgroundServer, ServerConfig, SessionOptions, build_app

    s = AnytimeSession(tiny_bundle, backend="onnxruntime", intra_op_threads=1, warmup=1, max_batch=4)
    cfg = ServerConfig(port=0, log_level="critical", session=SessionOptions(max_batch=4), max_body_mb=0.05,
                       body_timeout_s=2.0)
    app = build_app(s, cfg)
    srv = BackgroundServer(app, cfg).start()
    srv.state = app.state.sdedge
    yield srv
    srv.stop()
    s.close()


_token = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=24)


@settings(max_examples=max(1, EXAMPLES * 2 // 5), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                                  HealthCheck.too_slow])
@given(data=st.data())
def test_server_answers_arbitrary_requests_below_500(server, data) -> None:
    c, h, w = server.state.io.chw
    good = {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, c, h, w], "data": [0.1] * (c * h * w)}]}
    kind = data.draw(st.sampled_from(["bytes", "mutated", "valid"]))
    body = (data.draw(st.binary(max_size=300)) if kind == "bytes" else
            json.dumps(mutate(data, good, 2) if kind == "mutated" else good, allow_nan=True).encode())
    headers = {}
    if data.draw(st.booleans()):
        headers["Content-Type"] = data.draw(st.sampled_from(["application/json", "application/octet-stream",
                                                              "text/plain"]) | _token)
    enc = data.draw(st.sampled_from([None, "gzip", "deflate", "identity", "br"]) | _token)
    if enc is not None:
        headers["Content-Encoding"] = enc
        if enc == "gzip" and data.draw(st.booleans()):
            body = gzip.compress(body)
    if data.draw(st.booleans()):
        headers["Inference-Header-Content-Length"] = data.draw(st.integers(-3, 400).map(str) | _token)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("POST", f"/v2/models/{server.state.model_name}/infer", body, headers)
        r = conn.getresponse()
        out = r.read()
    finally:
        conn.close()
    assert r.status < 500, (r.status, out[:300], headers)
    if r.status != 200:
        assert json.loads(out)["error"]


def test_server_still_ready_after_fuzzing(server) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("GET", "/v2/health/ready")
    assert conn.getresponse().status == 200
    conn.close()


# -- atheris: a short coverage-guided run of fuzz/fuzz_request_decoding.py --------------------------------------------------
@pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="atheris is not installed (pip install atheris)")
def test_atheris_harness_runs_clean_for_a_bounded_time(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    shutil.copytree(REPO / "fuzz" / "corpus" / "request_decoding", corpus)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, str(REPO / "fuzz" / "fuzz_request_decoding.py"), str(corpus),
                          "-runs=300000", "-max_total_time=10", "-rss_limit_mb=2048", "-print_final_stats=1"],
                         capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-3000:]
    assert "Done" in log and "stat::number_of_executed_units" in log, log[-3000:]
    runs = int(log.split("stat::number_of_executed_units:")[1].split()[0])
    assert runs >= 500, log[-2000:]
    assert not list(tmp_path.glob("crash-*"))

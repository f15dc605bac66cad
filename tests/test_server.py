"""``sdedge serve``: the real server on a loopback port, driven by the real ``tritonclient.http``.

Covers metadata and readiness, inference with binary and JSON tensors (answers equal
``AnytimeSession.infer`` on the same input), per-request budget/threshold changing the exit taken,
the output filter and request id, concurrent clients, ``/metrics`` counting what was sent, the
protocol layer on its own (no server), and the torch-free property of the server package.
Bad requests and shutdown are in ``test_server_errors.py``.
"""
from __future__ import annotations

import ast
import concurrent.futures as cf
import gzip
import http.client
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

tritonclient_http = pytest.importorskip("tritonclient.http")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from sdedge.runtime.server import BackgroundServer, ServerConfig, SessionOptions, build_app  # noqa: E402
from sdedge.runtime.server.protocol import (ModelIO, ProtocolError, RequestedOutput, encode_infer_response,  # noqa: E402
                                            parse_infer_request)

REPO = Path(__file__).resolve().parents[1]
GENEROUS_MS = 60_000.0  # a budget no tiny model misses


@pytest.fixture(scope="module")
def session(tiny_bundle):
    from sdedge.runtime import AnytimeSession

    s = AnytimeSession(tiny_bundle, backend="onnxruntime", intra_op_threads=1, warmup=1, max_batch=8)
    yield s
    s.close()


@pytest.fixture(scope="module")
def server(session):
    cfg = ServerConfig(port=0, session=SessionOptions(max_batch=8), max_body_mb=1, budget_ms=GENEROUS_MS,
                       log_level="warning")
    app = build_app(session, cfg)
    with BackgroundServer(app, cfg) as srv:
        srv.state = app.state.sdedge
        yield srv


@pytest.fixture()
def client(server):
    c = tritonclient_http.InferenceServerClient(server.address, connection_timeout=30, network_timeout=60)
    yield c
    c.close()


def images(session, n: int, seed: int = 0, raw: bool = False) -> np.ndarray:
    c, h, w = session.input_shape
    rng = np.random.default_rng(seed)
    if raw:
        return rng.integers(0, 256, (n, h, w, c), dtype=np.uint8)
    return rng.standard_normal((n, c, h, w)).astype(np.float32)


def infer(client, server, x: np.ndarray, binary: bool = True, outputs=("probabilities", "label", "exit_index",
                                                                       "confidence", "class_name"), **params):
    dt = "FP32" if x.dtype == np.float32 else "UINT8"
    inp = tritonclient_http.InferInput(server.state.io.input_name, list(x.shape), dt)
    inp.set_data_from_numpy(x, binary_data=binary)
    outs = [tritonclient_http.InferRequestedOutput(n, binary_data=binary) for n in outputs]
    return client.infer(server.state.model_name, [inp], outputs=outs, parameters=params or None)


def metric_values(server) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


# -- metadata and health ---------------------------------------------------------------------------------
def test_health_and_metadata_through_tritonclient(client, server, session):
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "sdedge" and "binary_tensor_data" in meta["extensions"]
    name = server.state.model_name
    assert name == session.manifest.model["name"]
    assert client.is_model_ready(name) and client.is_model_ready(name, model_version="1")
    m = client.get_model_metadata(name)
    c, h, w = session.input_shape
    assert m["name"] == name and m["versions"] == ["1"] and m["platform"] == "sdedge"
    assert m["inputs"] == [{"name": session.manifest.input.name, "datatype": "FP32", "shape": [-1, c, h, w]},
                           {"name": session.manifest.input.name, "datatype": "UINT8", "shape": [-1, h, w, c]}]
    outs = {o["name"]: (o["datatype"], o["shape"]) for o in m["outputs"]}
    assert outs == {"probabilities": ("FP32", [-1, len(session.classes)]), "label": ("INT64", [-1]),
                    "exit_index": ("INT32", [-1]), "confidence": ("FP32", [-1]), "class_name": ("BYTES", [-1])}
    assert client.get_model_metadata(name, model_version="1") == m
    cfg = client.get_model_config(name)
    # Triton's model-config shape (it parses as model_config.proto's ModelConfig), sdedge's details inside
    from google.protobuf import json_format
    from tritonclient.grpc import model_config_pb2

    json_format.ParseDict(cfg, model_config_pb2.ModelConfig())
    assert cfg["max_batch_size"] == 8 and cfg["input"] == [
        {"name": session.manifest.input.name, "data_type": "TYPE_FP32", "format": "FORMAT_NCHW", "dims": [c, h, w]}]
    details = json.loads(cfg["parameters"]["sdedge"]["string_value"])
    assert details["num_exits"] == session.num_exits and details["classes"] == list(session.classes)
    assert {"datatype": "UINT8", "shape": [-1, h, w, c]}.items() <= details["accepted_inputs"][1].items()
    assert details["defaults"]["budget_ms"] == GENEROUS_MS
    assert cfg["parameters"]["engine"]["string_value"] == session.engine
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.get_model_metadata("no-such-model")
    assert not client.is_model_ready("no-such-model")


def test_each_endpoint_is_a_method_of_the_server_by_name(client, server):
    from starlette.routing import Route

    from sdedge.runtime.server import InferenceServer
    from sdedge.runtime.server.app import package_version

    srv = server.app.state.server
    assert isinstance(srv, InferenceServer) and srv.state is server.state and srv.app is server.app
    endpoints = {r.path: r.endpoint for r in server.app.routes if isinstance(r, Route)}
    for path, method in (("/v2", srv.get_server_metadata), ("/v2/health/live", srv.get_live),
                         ("/v2/health/ready", srv.get_ready), ("/metrics", srv.get_metrics),
                         ("/v2/models/{name}", srv.get_model_metadata), ("/v2/models/{name}/ready", srv.get_model_ready),
                         ("/v2/models/{name}/config", srv.get_model_config),
                         ("/v2/models/{name}/infer", srv.post_infer),
                         ("/v2/models/{name}/versions/{version}/infer", srv.post_infer)):
        assert endpoints[path] == method, path
    import importlib.metadata

    assert client.get_server_metadata()["version"] == package_version() == importlib.metadata.version("sdedge")


def test_router_endpoint_and_fast_path_give_the_same_answer(server, session):
    """The served model's exact infer paths are answered on the raw ASGI channels (``answer_infer``); the
    router's ``post_infer`` wraps the same answer in a Starlette response: both agree, good or bad request."""
    import asyncio

    from starlette.requests import Request

    srv = server.app.state.server
    name = server.state.model_name
    x = images(session, 2, seed=5, raw=True)
    head = json.dumps({"inputs": [{"name": server.state.io.input_name, "shape": list(x.shape), "datatype": "UINT8",
                                   "parameters": {"binary_data_size": x.nbytes}}],
                       "outputs": [{"name": n, "parameters": {"binary_data": True}} for n in ("label", "exit_index")]}
                      ).encode()
    good = [(b"content-type", b"application/octet-stream"),
            (b"inference-header-content-length", str(len(head)).encode())], [head + x.tobytes()]
    cases = {"good": good,
             "bad type": ([(b"content-type", b"text/plain")], [b"{}"]),
             "truncated": ([(b"content-type", b"application/json")], [b'{"inputs": ', None]),
             "bad json": ([(b"content-type", b"application/json")], [b'{"inputs": [NaN]}'])}

    def run(via_router: bool, headers: list, chunks: list) -> tuple[int, dict, dict]:
        msgs = [{"type": "http.request", "body": c, "more_body": i + 1 < len(chunks)} if c is not None
                else {"type": "http.disconnect"} for i, c in enumerate(chunks)]

        async def receive() -> dict:
            return msgs.pop(0) if msgs else {"type": "http.disconnect"}

        scope = {"type": "http", "method": "POST", "path": f"/v2/models/{name}/infer", "headers": headers,
                 "query_string": b"", "path_params": {"name": name}}
        if via_router:
            response = asyncio.run(srv.post_infer(Request(scope, receive)))
            status, body = response.status_code, bytes(response.body)
            hdrs = {k.decode(): v.decode() for k, v in response.raw_headers if k != b"content-length"}
        else:
            status, body, hdrs = asyncio.run(srv.answer_infer(scope, receive, {"name": name}))
        return status, hdrs, body

    for case, (headers, chunks) in cases.items():
        (s1, h1, b1), (s2, h2, b2) = run(True, headers, chunks), run(False, headers, chunks)
        if case != "good":
            assert s1 == s2 and h1 == h2, case
            assert s1 in (400, 415) and json.loads(b1) == json.loads(b2) and "error" in json.loads(b1), case
            continue
        # the JSON header's length moves with the digits of the timings in it
        n1, n2 = int(h1.pop("inference-header-content-length")), int(h2.pop("inference-header-content-length"))
        assert h1 == h2 == {"content-type": "application/octet-stream"}
        d1, d2 = json.loads(b1[:n1]), json.loads(b2[:n2])
        for d in (d1, d2):
            for k in ("latency_ms", "queue_ms", "inference_ms"):
                d["parameters"].pop(k)
        assert s1 == s2 == 200 and d1 == d2 and b1[n1:] == b2[n2:]
        ref = session.infer(x)
        assert np.frombuffer(b1[n1:n1 + 16], "<i8").tolist() == [r.label for r in ref]
    assert run(False, *cases["truncated"])[1].get("connection") == "close"  # refused before the body was read


# -- inference -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("raw", [False, True], ids=["fp32", "uint8"])
def test_answers_equal_the_session(client, server, session, binary, raw):
    x = images(session, 5, seed=1 + raw, raw=raw)
    r = infer(client, server, x, binary=binary, threshold=0.5)
    ref = session.infer(x, threshold=0.5)
    np.testing.assert_array_equal(r.as_numpy("label"), [e.label for e in ref])
    np.testing.assert_array_equal(r.as_numpy("exit_index"), [e.exit_index for e in ref])
    np.testing.assert_allclose(r.as_numpy("probabilities"), np.stack([e.probabilities for e in ref]), rtol=1e-6,
                               atol=1e-7)
    np.testing.assert_allclose(r.as_numpy("confidence"), [e.confidence for e in ref], rtol=1e-6)
    names = [v.decode() if isinstance(v, bytes) else v for v in r.as_numpy("class_name")]
    assert names == [e.class_name for e in ref]
    assert r.as_numpy("probabilities").dtype == np.float32 and r.as_numpy("label").dtype == np.int64
    p = r.get_response()["parameters"]
    assert p["exits_run"] == max(e.exit_index for e in ref) and p["deadline_met"] is True
    assert p["budget_ms"] == GENEROUS_MS and 0 <= p["queue_ms"] <= p["latency_ms"]
    assert 0 < p["inference_ms"] <= p["latency_ms"]


def test_single_image_reports_exit_and_why(client, server, session):
    x = images(session, 1, seed=3)
    r = infer(client, server, x)
    p = r.get_response()["parameters"]
    assert p["exit_index"] == session.num_exits and p["stopped_by"] == "last"
    r = infer(client, server, x, threshold=0.0)
    p = r.get_response()["parameters"]
    assert p["exit_index"] == 1 and p["stopped_by"] == "confidence"


def test_per_request_threshold_and_budget_change_the_exit(client, server, session):
    x = images(session, 4, seed=4)
    k = session.num_exits
    assert list(infer(client, server, x).as_numpy("exit_index")) == [k] * 4  # server default: generous budget
    assert list(infer(client, server, x, threshold=0.0).as_numpy("exit_index")) == [1] * 4
    assert list(infer(client, server, x, threshold=1.0).as_numpy("exit_index")) == [k] * 4
    # over before it starts: refused with 504 and not run (counted), unless the floor answer is asked for
    expired_before = metric_values(server)[("sdedge_deadline_expired_total", ())]
    with pytest.raises(InferenceServerException, match="deadline exceeded") as e:
        infer(client, server, x, budget_ms=1e-3)
    assert e.value.status() == "504"
    assert metric_values(server)[("sdedge_deadline_expired_total", ())] == expired_before + 1
    r = infer(client, server, x, budget_ms=1e-3, late="answer")  # exit 1 is the floor, and says so
    assert list(r.as_numpy("exit_index")) == [1] * 4
    p = r.get_response()["parameters"]
    assert p["deadline_met"] is False and p["budget_ms"] == 1e-3
    crit = infer(client, server, x, threshold=0.5, criterion="entropy").as_numpy("exit_index")
    assert list(crit) == [e.exit_index for e in session.infer(x, threshold=0.5, criterion="entropy")]


def test_output_filter_request_id_and_binary_default(server, session):
    x = images(session, 2, seed=5)
    inp = tritonclient_http.InferInput("image", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    c = tritonclient_http.InferenceServerClient(server.address)
    r = c.infer(server.state.model_name, [inp], request_id="req-42",
                outputs=[tritonclient_http.InferRequestedOutput("label", binary_data=False)])
    resp = r.get_response()
    assert resp["id"] == "req-42" and resp["model_version"] == "1"
    assert [o["name"] for o in resp["outputs"]] == ["label"] and "data" in resp["outputs"][0]
    r = c.infer(server.state.model_name, [inp], model_version="1")  # no outputs: all, in binary
    outs = r.get_response()["outputs"]
    assert {o["name"] for o in outs} == {"probabilities", "label", "exit_index", "confidence", "class_name"}
    assert all("binary_data_size" in o["parameters"] for o in outs)
    c.close()


def test_gzip_request_and_nested_json_data(server, session):
    x = images(session, 2, seed=6)
    body = json.dumps({"inputs": [{"name": "image", "datatype": "FP32", "shape": list(x.shape), "data": x.tolist()}],
                       "parameters": {"threshold": 0.0}}).encode()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("POST", f"/v2/models/{server.state.model_name}/infer", gzip.compress(body),
                 {"Content-Type": "application/json", "Content-Encoding": "gzip"})
    resp = conn.getresponse()
    doc = json.loads(resp.read())
    conn.close()
    assert resp.status == 200, doc
    outs = {o["name"]: o for o in doc["outputs"]}
    assert outs["exit_index"]["data"] == [1, 1]
    assert outs["label"]["data"] == [e.label for e in session.infer(x, threshold=0.0)]


def test_concurrent_clients_each_get_their_own_answer(server, session):
    xs = [images(session, 1, seed=100 + i) for i in range(16)]
    ref = [session.infer(x, threshold=0.5)[0] for x in xs]

    def one(i: int):
        c = tritonclient_http.InferenceServerClient(server.address)
        try:
            r = infer(c, server, xs[i], threshold=0.5)
            return r.as_numpy("label")[0], r.as_numpy("exit_index")[0], r.get_response()["parameters"]
        finally:
            c.close()

    with cf.ThreadPoolExecutor(8) as pool:
        got = list(pool.map(one, range(16)))
    assert [(g[0], g[1]) for g in got] == [(r.label, r.exit_index) for r in ref]
    assert all(g[2]["deadline_met"] and g[2]["queue_ms"] >= 0 for g in got)


def test_metrics_count_what_was_sent(client, server, session):
    k = session.num_exits
    before = metric_values(server)
    x = images(session, 3, seed=7)
    infer(client, server, x, threshold=0.0)           # 3 images at exit 1
    infer(client, server, x[:2])                      # 2 images at exit K
    infer(client, server, x[:1], budget_ms=1e-3, late="answer")  # 1 image, deadline missed (the floor answer)
    with pytest.raises(InferenceServerException, match="threshold"):
        infer(client, server, x, threshold=7.0)       # 400
    with pytest.raises(InferenceServerException, match="deadline exceeded"):
        infer(client, server, x[:1], budget_ms=1e-3)  # 504: expired in the queue, not run
    after = metric_values(server)

    def delta(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("sdedge_requests_total", endpoint="infer", status="200") == 3
    assert delta("sdedge_requests_total", endpoint="infer", status="400") == 1
    assert delta("sdedge_requests_total", endpoint="infer", status="504") == 1
    assert delta("sdedge_deadline_expired_total") == 1
    assert delta("sdedge_inference_requests_total") == 3
    assert delta("sdedge_images_total") == 6
    assert delta("sdedge_exits_total", exit="1") == 4 and delta("sdedge_exits_total", exit=str(k)) == 2
    assert sum(delta("sdedge_exits_total", exit=str(i)) for i in range(1, k + 1)) == 6
    assert delta("sdedge_request_latency_seconds_count") == 3
    assert delta("sdedge_queue_seconds_count") == 3 and delta("sdedge_inference_seconds_count") == 3
    assert delta("sdedge_deadline_requests_total") == 3 and delta("sdedge_deadline_misses_total") == 1
    assert after[("sdedge_inflight_requests", ())] == 0 and after[("sdedge_queue_depth", ())] == 0
    assert delta("sdedge_requests_total", endpoint="metrics", status="200") == 1  # the first scrape


# -- the protocol layer alone (no server, no bundle) -----------------------------------------------------------
IO = ModelIO(input_name="image", chw=(3, 4, 5), classes=("a", "b"), max_batch=4)


def _body(inputs, outputs=None, **params):
    return tritonclient_http.InferenceServerClient.generate_request_body(inputs, outputs=outputs,
                                                                         parameters=params or None)


def test_protocol_parses_tritonclient_bodies():
    x = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    for binary in (True, False):
        inp = tritonclient_http.InferInput("image", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        body, hl = _body([inp], budget_ms=3, threshold=0.25, criterion="margin")
        req = parse_infer_request(body, None if hl is None else str(hl), IO)
        np.testing.assert_array_equal(req.array, x)
        assert req.array.dtype == np.float32 and req.datatype == "FP32"
        assert (req.budget_ms, req.threshold, req.criterion) == (3.0, 0.25, "margin")
        assert all(o.binary for o in req.outputs) and len(req.outputs) == 5  # tritonclient sets binary_data_output
    u = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(1, 4, 5, 3)
    inp = tritonclient_http.InferInput("image", [1, 4, 5, 3], "UINT8")
    inp.set_data_from_numpy(u, binary_data=False)
    body, hl = _body([inp], threshold="calibrated")
    req = parse_infer_request(body, None, IO)
    np.testing.assert_array_equal(req.array, u)
    assert req.datatype == "UINT8" and req.threshold == "calibrated" and req.budget_ms is None


def test_protocol_binary_tensors_after_any_header_length_are_aligned():
    x = np.arange(60, dtype=np.float32).reshape(1, 3, 4, 5)
    for pad in range(4):
        head = json.dumps({"id": "x" * pad, "inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 3, 4, 5],
                                                         "parameters": {"binary_data_size": 240}}]}).encode()
        req = parse_infer_request(head + x.tobytes(), str(len(head)), IO)
        assert req.array.flags.aligned and req.array.dtype == np.float32
        np.testing.assert_array_equal(req.array, x)


def test_protocol_nested_and_flat_json_are_the_same():
    x = np.random.default_rng(0).standard_normal((1, 3, 4, 5)).astype(np.float32)
    for data in (x.tolist(), x.ravel().tolist()):
        body = json.dumps({"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 3, 4, 5], "data": data}]})
        np.testing.assert_array_equal(parse_infer_request(body.encode(), None, IO).array, x)


@pytest.mark.parametrize("tensor,message", [
    ({"datatype": "FP64", "shape": [1, 3, 4, 5], "data": [0.0] * 60}, "datatype 'FP64'"),
    ({"datatype": "FP32", "shape": [1, 4, 5, 3], "data": [0.0] * 60}, "shape [1, 4, 5, 3]"),
    ({"datatype": "FP32", "shape": [1, 3, 4, 5], "data": [0.0] * 59}, "holds 59 values"),
    ({"datatype": "FP32", "shape": [5, 3, 4, 5], "data": [0.0] * 300}, "larger than this server's max batch"),
    ({"datatype": "FP32", "shape": [0, 3, 4, 5], "data": []}, "at least 1"),
    ({"datatype": "FP32", "shape": [1, 3, 4, 5], "data": ["x"] * 60}, "strings"),
    ({"datatype": "FP32", "shape": [1, 3, 4, 5], "data": [True] * 60}, "booleans"),
    ({"datatype": "FP32", "shape": [1, 3, 4, 5], "data": [[0.0] * 59, [0.0]]}, "not a regular array"),
    ({"datatype": "UINT8", "shape": [1, 4, 5, 3], "data": [256] * 60}, "0..255"),
    ({"datatype": "UINT8", "shape": [1, 4, 5, 3], "data": [0.5] * 60}, "non-integer"),
    ({"datatype": "FP32", "shape": [1, 3, 4, 5]}, "neither"),
    ({"datatype": "FP32", "shape": "1,3,4,5", "data": []}, "list of integers"),
])
def test_protocol_refuses_bad_tensors(tensor, message):
    body = json.dumps({"inputs": [dict(name="image", **tensor)]}).encode()
    with pytest.raises(ProtocolError, match=re.escape(message)) as e:
        parse_infer_request(body, None, IO)
    assert e.value.status == 400


def test_protocol_refuses_lying_binary_sizes():
    x = np.zeros((1, 3, 4, 5), np.float32)
    inp = tritonclient_http.InferInput("image", [1, 3, 4, 5], "FP32")
    inp.set_data_from_numpy(x)
    body, hl = _body([inp])
    assert parse_infer_request(body, str(hl), IO).array.shape == (1, 3, 4, 5)
    for bad_hl, msg in ((str(len(body) + 1), "body holds"), ("0", "body holds"), ("abc", "integer"),
                        (str(hl - 1), "malformed JSON")):
        with pytest.raises(ProtocolError, match=msg):
            parse_infer_request(body, bad_hl, IO)
    with pytest.raises(ProtocolError, match="add up to"):
        parse_infer_request(body + b"\0\0\0\0", str(hl), IO)
    with pytest.raises(ProtocolError, match="only 236 bytes"):
        parse_infer_request(body[:-4], str(hl), IO)
    with pytest.raises(ProtocolError, match="needs the Inference-Header-Content-Length header"):
        parse_infer_request(body, None, IO)  # binary data without the header
    with pytest.raises(ProtocolError, match="binary_data_size is 240 bytes but only 0 bytes"):
        parse_infer_request(body[:hl], None, IO)


@pytest.mark.parametrize("doc,message", [
    ({"inputs": []}, "non-empty"),
    ({"inputs": [{"name": "img", "datatype": "FP32", "shape": [1, 3, 4, 5], "data": [0] * 60}]}, "unknown input 'img'"),
    ({"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 3, 4, 5], "data": [0] * 60}],
      "parameters": {"budget_ms": -1}}, "budget_ms"),
    ({"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 3, 4, 5], "data": [0] * 60}],
      "parameters": {"threshold": 1.5}}, "threshold"),
    ({"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 3, 4, 5], "data": [0] * 60}],
      "parameters": {"criterion": "vibes"}}, "criterion"),
    ({"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 3, 4, 5], "data": [0] * 60}],
      "outputs": [{"name": "logits"}]}, "unknown output 'logits'"),
    ({"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 3, 4, 5], "data": [0] * 60}],
      "outputs": [{"name": "label", "parameters": {"classification": 3}}]}, "classification"),
    ({"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 3, 4, 5], "data": [0] * 60}], "id": 7}, "id"),
    ([1, 2], "JSON object"),
])
def test_protocol_refuses_bad_requests(doc, message):
    with pytest.raises(ProtocolError, match=re.escape(message)):
        parse_infer_request(json.dumps(doc).encode(), None, IO)


@pytest.mark.parametrize("name,value", [("budget_ms", 0), ("budget_ms", -1), ("budget_ms", True), ("budget_ms", "5"),
                                        ("budget_ms", 10 ** 400), ("threshold", 1.5), ("threshold", "0.5"),
                                        ("threshold", False), ("criterion", "vibes"), ("criterion", 3)])
def test_request_parameters_are_checked_by_the_policies(name, value):
    """The protocol, ServerConfig and the session refuse a parameter with the policies' one check."""
    from sdedge.common.errors import PolicyError
    from sdedge.runtime.policies import check_budget_ms, check_criterion, check_threshold

    check = {"budget_ms": check_budget_ms, "criterion": check_criterion,
             "threshold": lambda v, where: check_threshold(v, where, calibrated=True)}[name]
    with pytest.raises(PolicyError, match=name) as want:
        check(value, f"parameters.{name}")
    doc = {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 3, 4, 5], "data": [0] * 60}],
           "parameters": {name: value}}
    with pytest.raises(ProtocolError, match=name) as got:
        parse_infer_request(json.dumps(doc).encode(), None, IO)
    assert str(got.value) == str(want.value) and got.value.status == 400
    with pytest.raises(PolicyError, match=name) as cfg_err:
        ServerConfig(**{name: value})
    with pytest.raises(PolicyError, match=name) as own:
        check(value, name)
    assert str(cfg_err.value) == str(own.value)


def test_protocol_refuses_nan_tokens_and_bad_json():
    with pytest.raises(ProtocolError, match="NaN is not a JSON number"):
        parse_infer_request(b'{"inputs": [{"name": "image", "datatype": "FP32", "shape": [1,3,4,5], "data": [NaN]}]}',
                            None, IO)
    with pytest.raises(ProtocolError, match="malformed JSON"):
        parse_infer_request(b'{"inputs": [', None, IO)
    with pytest.raises(ProtocolError, match="malformed JSON"):
        parse_infer_request(b"\xff\xfe", None, IO)


def test_protocol_encoding_reads_back_with_tritonclient():
    from sdedge.runtime.session import InferenceResult

    res = [InferenceResult(1, "b", np.array([0.25, 0.75], np.float32), 0.75, 2, 2, 1.0, True),
           InferenceResult(0, "a", np.array([0.9, 0.1], np.float32), 0.9, 1, 1, 1.0, True)]
    for binary in (True, False):
        outs = [RequestedOutput(n, binary) for n in ("probabilities", "label", "exit_index", "confidence", "class_name")]
        body, hl = encode_infer_response("m", "1", "id-1", res, outs, ("a", "b"), {"latency_ms": 1.0})
        assert (hl is None) == (not binary)
        r = tritonclient_http.InferResult.from_response_body(body, header_length=hl)
        np.testing.assert_array_equal(r.as_numpy("probabilities"), np.float32([[0.25, 0.75], [0.9, 0.1]]))
        np.testing.assert_array_equal(r.as_numpy("label"), [1, 0])
        np.testing.assert_array_equal(r.as_numpy("exit_index"), [2, 1])
        np.testing.assert_allclose(r.as_numpy("confidence"), [0.75, 0.9])
        assert [v.decode() if isinstance(v, bytes) else v for v in r.as_numpy("class_name")] == ["b", "a"]
        assert r.get_response()["id"] == "id-1" and r.get_response()["parameters"] == {"latency_ms": 1.0}


# -- torch-free --------------------------------------------------------------------------------------------
NOTORCH = r"""
import sys, json, http.client
sys.modules["torch"] = None
import numpy as np
from sdedge.runtime.server import BackgroundServer, ServerConfig, SessionOptions, build_app
from sdedge.commands import serve as serve_cmd
cfg = ServerConfig(port=0, session=SessionOptions(warmup=0, intra_op_threads=1), log_level="warning")
app = build_app(sys.argv[1], cfg)
st = app.state.sdedge
c, h, w = st.io.chw
with BackgroundServer(app, cfg) as srv:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
    body = json.dumps({"inputs": [{"name": st.io.input_name, "datatype": "UINT8", "shape": [1, h, w, c],
                                   "data": [7] * (h * w * c)}]})
    conn.request("POST", f"/v2/models/{st.model_name}/infer", body, {"Content-Type": "application/json"})
    r = conn.getresponse()
    assert r.status == 200, r.read()
    doc = json.loads(r.read())
core = ("sdedge.models", "sdedge.losses", "sdedge.train", "sdedge.data", "sdedge.checkpoint", "sdedge.export", "torch")
bad = [m for m, mod in list(sys.modules.items()) if mod is not None and any(m == x or m.startswith(x + ".") for x in core)]
assert not bad, bad
print("OK", doc["parameters"]["exits_run"])
"""


def test_server_runs_with_torch_blocked(tiny_bundle):
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    out = subprocess.run([sys.executable, "-c", NOTORCH, str(tiny_bundle)], capture_output=True, text=True,
                         timeout=300, env=env, cwd=str(tiny_bundle.parent))
    assert out.returncode == 0 and out.stdout.startswith("OK"), out.stderr[-3000:]


@pytest.mark.skipif(not os.environ.get("SDEDGE_NOTORCH_PYTHON"), reason="SDEDGE_NOTORCH_PYTHON not set (CI sets it)")
def test_server_runs_in_an_environment_without_torch(tiny_bundle):
    py = os.environ["SDEDGE_NOTORCH_PYTHON"]
    assert subprocess.run([py, "-c", "import torch"], capture_output=True, timeout=120).returncode != 0, \
        f"{py} has torch installed; it must be a torch-free environment"
    if subprocess.run([py, "-c", "import starlette, uvicorn, prometheus_client"], capture_output=True,
                      timeout=120).returncode != 0:
        pytest.skip("the torch-free environment has no serve extra (pip install '.[serve]')")
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    out = subprocess.run([py, "-c", NOTORCH, str(tiny_bundle)], capture_output=True, text=True, timeout=300, env=env,
                         cwd=str(tiny_bundle.parent))
    assert out.returncode == 0 and out.stdout.startswith("OK"), out.stderr[-3000:]


def test_server_sources_import_no_torch():
    forbidden = ("torch", "torchvision", "sdedge.models", "sdedge.losses", "sdedge.train", "sdedge.data",
                 "sdedge.checkpoint", "sdedge.export")
    files = {f: "sdedge.runtime.server" for f in (REPO / "runtime" / "server").glob("*.py")}
    files[REPO / "sdedge" / "commands" / "serve.py"] = "sdedge.commands"
    assert len(files) >= 8
    for f, pkg in files.items():
        for node in ast.walk(ast.parse(f.read_text("utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1] if node.level else []
                names = [".".join(base + ([node.module] if node.module else []))]
            else:
                continue
            for n in names:
                assert not any(n == c or n.startswith(c + ".") for c in forbidden), f"{f.name} imports {n}"

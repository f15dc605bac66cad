"""The KServe v2 gRPC endpoint, through the real ``tritonclient.grpc`` client, beside ``tritonclient.http``
against the same server: same answers, same parameters, statuses for bad and oversized messages."""
from __future__ import annotations

import numpy as np
import pytest

tritonclient_grpc = pytest.importorskip("tritonclient.grpc")
tritonclient_http = pytest.importorskip("tritonclient.http")
grpc = pytest.importorskip("grpc")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from tritonclient.utils import InferenceServerException  # noqa: E402

from sdedge.runtime.server import BackgroundServer, ServerConfig, SessionOptions, build_app  # noqa: E402

OUTPUTS = ("probabilities", "label", "exit_index", "confidence", "class_name")


@pytest.fixture(scope="module")
def session(tiny_bundle):
    from sdedge.runtime import AnytimeSession

    s = AnytimeSession(tiny_bundle, backend="onnxruntime", intra_op_threads=1, warmup=1, max_batch=8)
    yield s
    s.close()


@pytest.fixture(scope="module")
def server(session):
    cfg = ServerConfig(port=0, grpc_port=0, session=SessionOptions(max_batch=8), max_body_mb=0.25,
                       log_level="warning")
    app = build_app(session, cfg)
    with BackgroundServer(app, cfg) as srv:
        assert srv.grpc_port and srv.grpc_port != srv.port
        srv.state = app.state.sdedge
        yield srv


@pytest.fixture()
def gclient(server):
    c = tritonclient_grpc.InferenceServerClient(server.grpc_address)
    yield c
    c.close()


@pytest.fixture()
def hclient(server):
    c = tritonclient_http.InferenceServerClient(server.address, network_timeout=60)
    yield c
    c.close()


def images(session, n, seed=0, raw=False):
    c, h, w = session.input_shape
    rng = np.random.default_rng(seed)
    if raw:
        return rng.integers(0, 256, (n, h, w, c), dtype=np.uint8)
    return rng.standard_normal((n, c, h, w)).astype(np.float32)


def ask(module, client, server, x, **params):
    dt = "FP32" if x.dtype == np.float32 else "UINT8"
    inp = module.InferInput(server.state.io.input_name, list(x.shape), dt)
    if module is tritonclient_http:
        inp.set_data_from_numpy(x, binary_data=True)
        outs = [module.InferRequestedOutput(n, binary_data=True) for n in OUTPUTS]
    else:
        inp.set_data_from_numpy(x)
        outs = [module.InferRequestedOutput(n) for n in OUTPUTS]
    return client.infer(server.state.model_name, [inp], outputs=outs, parameters=params or None)


def test_health_metadata_config_statistics_and_index(gclient, server, session):
    name = server.state.model_name
    assert gclient.is_server_live() and gclient.is_server_ready()
    assert gclient.is_model_ready(name) and gclient.is_model_ready(name, model_version="1")
    meta = gclient.get_server_metadata(as_json=True)
    assert meta["name"] == "sdedge" and {"binary_tensor_data", "statistics"} <= set(meta["extensions"])
    m = gclient.get_model_metadata(name, as_json=True)
    c, h, w = session.input_shape
    assert [(i["datatype"], [int(d) for d in i["shape"]]) for i in m["inputs"]] == [("FP32", [-1, c, h, w]),
                                                                                   ("UINT8", [-1, h, w, c])]
    assert {o["name"] for o in m["outputs"]} == set(OUTPUTS)
    cfg = gclient.get_model_config(name, as_json=True)["config"]
    assert cfg["name"] == name and int(cfg["max_batch_size"]) == 8 and cfg["input"][0]["data_type"] == "TYPE_FP32"
    idx = gclient.get_model_repository_index(as_json=True)
    assert idx["models"] == [{"name": name, "version": "1", "state": "READY"}]
    with pytest.raises(InferenceServerException, match="unknown model") as e:
        gclient.get_model_metadata("nope")
    assert e.value.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException, match="unknown version"):
        gclient.is_model_ready(name, model_version="7")


def test_grpc_and_http_give_identical_answers(gclient, hclient, server, session):
    for x, params in ((images(session, 5, seed=1), {}),
                      (images(session, 4, seed=2, raw=True), {"threshold": 0.6}),
                      (images(session, 3, seed=3), {"threshold": 0.5, "criterion": "entropy"}),
                      (images(session, 1, seed=4), {"threshold": "calibrated"} if session.calibration else {})):
        g = ask(tritonclient_grpc, gclient, server, x, **params)
        h = ask(tritonclient_http, hclient, server, x, **params)
        for n in OUTPUTS:
            assert np.array_equal(g.as_numpy(n), h.as_numpy(n)), n
        alone = session.infer(x, **params)
        assert g.as_numpy("exit_index").tolist() == [r.exit_index for r in alone]
        assert g.as_numpy("class_name").tolist() == [r.class_name.encode() for r in alone]
        gp = g.get_response(as_json=True)["parameters"]
        assert "latency_ms" in gp and int(gp["exits_run"]["int64_param"]) == max(r.exit_index for r in alone)


def test_request_id_output_filter_and_response_parameters(gclient, server, session):
    x = images(session, 1, seed=5)
    inp = tritonclient_grpc.InferInput("image", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    r = gclient.infer(server.state.model_name, [inp], request_id="req-7", parameters={"budget_ms": 60000},
                      outputs=[tritonclient_grpc.InferRequestedOutput("label")])
    resp = r.get_response()
    assert resp.id == "req-7" and [o.name for o in resp.outputs] == ["label"]
    assert r.as_numpy("exit_index") is None and r.as_numpy("label").shape == (1,)
    assert resp.parameters["deadline_met"].bool_param is True
    assert resp.parameters["stopped_by"].string_param in ("last", "confidence", "deadline")


def test_deadline_exceeded_and_the_floor_answer(gclient, server, session):
    x = images(session, 2, seed=6)
    with pytest.raises(InferenceServerException, match="deadline exceeded") as e:
        ask(tritonclient_grpc, gclient, server, x, budget_ms=1e-3)
    assert e.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    r = ask(tritonclient_grpc, gclient, server, x, budget_ms=1e-3, late="answer")
    assert r.as_numpy("exit_index").tolist() == [1, 1]
    assert r.get_response().parameters["deadline_met"].bool_param is False


@pytest.mark.parametrize("make, needle", [
    (lambda s: tritonclient_grpc.InferInput("image", [1, 3], "FP32"), "expected"),
    (lambda s: tritonclient_grpc.InferInput("nope", [1, *s.input_shape], "FP32"), "unknown input"),
    (lambda s: tritonclient_grpc.InferInput("image", [1, *s.input_shape], "INT64"), "datatype"),
    (lambda s: tritonclient_grpc.InferInput("image", [99, *s.input_shape], "FP32"), "max batch"),
])
def test_bad_requests_are_invalid_argument(gclient, server, session, make, needle):
    inp = make(session)
    shape = inp.shape()
    dt = {"FP32": np.float32, "INT64": np.int64}[inp.datatype()]
    inp.set_data_from_numpy(np.zeros(shape, dt))
    with pytest.raises(InferenceServerException, match=needle) as e:
        gclient.infer(server.state.model_name, [inp])
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert gclient.is_server_ready()  # and the server keeps serving


def test_bad_parameters_nan_and_lying_raw_sizes(server, session):
    from tritonclient.grpc import service_pb2

    c, h, w = session.input_shape
    channel = grpc.insecure_channel(server.grpc_address)
    infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                request_serializer=service_pb2.ModelInferRequest.SerializeToString,
                                response_deserializer=service_pb2.ModelInferResponse.FromString)

    def request(raw: bytes, **params):
        req = service_pb2.ModelInferRequest(model_name=server.state.model_name)
        req.inputs.add(name="image", datatype="FP32", shape=[1, c, h, w])
        req.raw_input_contents.append(raw)
        for k, v in params.items():
            if isinstance(v, str):
                req.parameters[k].string_param = v
            else:
                req.parameters[k].double_param = v
        return req

    good = np.zeros((1, c, h, w), np.float32).tobytes()
    for req, needle in ((request(good[:-4]), "binary_data_size"),
                        (request(np.full((1, c, h, w), np.nan, np.float32).tobytes()), "NaN"),
                        (request(good, threshold=7.0), "threshold"),
                        (request(good, criterion="vibes"), "criterion"),
                        (request(good, late="maybe"), "late")):
        with pytest.raises(grpc.RpcError) as e:
            infer(req, timeout=60)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and needle in e.value.details()
    # garbage that is not a ModelInferRequest at all, and a message above the size cap: refused with a status
    raw_call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    counted = server.state.metrics.grpc_requests.labels(method="ModelInfer", code="INVALID_ARGUMENT")
    before = counted._value.get()
    with pytest.raises(grpc.RpcError) as e:
        raw_call(b"\xff\xff\xff\xff\x0f not protobuf", timeout=60)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "not a valid inference.ModelInferRequest" in e.value.details()
    assert counted._value.get() == before + 1  # counted like any other bad request
    with pytest.raises(grpc.RpcError) as e:
        infer(request(b"\0" * (1 << 20)), timeout=60)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    ok = infer(request(good), timeout=60)  # still serving
    assert ok.model_name == server.state.model_name and len(ok.raw_output_contents) == len(OUTPUTS)
    channel.close()


def test_statistics_count_both_protocols(gclient, hclient, server, session):
    name = server.state.model_name
    before = gclient.get_inference_statistics(name, as_json=True)["model_stats"][0]
    x = images(session, 3, seed=8)
    ask(tritonclient_grpc, gclient, server, x)
    ask(tritonclient_http, hclient, server, x[:2])
    after = gclient.get_inference_statistics(name, as_json=True)["model_stats"][0]
    http_after = hclient.get_inference_statistics(name)["model_stats"][0]
    assert int(after["inference_count"]) - int(before.get("inference_count", 0)) == 5
    assert int(after["inference_stats"]["success"]["count"]) - \
        int(before["inference_stats"]["success"].get("count", 0)) == 2
    assert int(http_after["inference_count"]) == int(after["inference_count"])
    assert int(after["execution_count"]) >= 2 and after["batch_stats"]
    assert hclient.get_model_repository_index() == [{"name": name, "version": "1", "state": "READY"}]


def test_typed_contents_are_counted_before_they_are_read(server, session):
    """Typed ``contents`` of the wrong size or in the wrong field are refused by their count (naming the field),
    before any value is converted; the right ones answer as raw tensors do."""
    from tritonclient.grpc import service_pb2

    c, h, w = session.input_shape
    channel = grpc.insecure_channel(server.grpc_address)
    infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                request_serializer=service_pb2.ModelInferRequest.SerializeToString,
                                response_deserializer=service_pb2.ModelInferResponse.FromString)
    x = images(session, 1, seed=3, raw=True)
    req = service_pb2.ModelInferRequest(model_name=server.state.model_name)
    t = req.inputs.add(name="image", datatype="UINT8", shape=list(x.shape))
    t.contents.bytes_contents.append(x.tobytes())  # UINT8 belongs in uint_contents
    with pytest.raises(grpc.RpcError) as e:
        infer(req, timeout=60)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"contents.uint_contents holds 0 values but UINT8 {list(x.shape)} needs {x.size}" in e.value.details()
    t.contents.ClearField("bytes_contents")
    t.contents.uint_contents.extend(x.ravel().tolist())
    typed = infer(req, timeout=60)
    labels = {o.name: raw for o, raw in zip(typed.outputs, typed.raw_output_contents)}["label"]
    assert np.frombuffer(labels, np.int64).tolist() == [session.infer(x[0]).label]
    t.contents.uint_contents.append(0)  # one too many
    with pytest.raises(grpc.RpcError) as e:
        infer(req, timeout=60)
    assert "holds %d values" % (x.size + 1) in e.value.details()
    channel.close()


def test_a_cancelled_call_is_counted_as_cancelled(server, session):
    """A call whose client gives up while it waits is counted CANCELLED, not OK."""
    import threading

    metrics = server.state.metrics.grpc_requests
    ok, cancelled = (metrics.labels(method="ModelInfer", code=code) for code in ("OK", "CANCELLED"))
    pool = server.state.pool
    started, release = threading.Event(), threading.Event()
    real = pool.run

    async def slow(*a, **k):  # hold the call in the server until the client has given up
        import asyncio

        started.set()
        while not release.is_set():
            await asyncio.sleep(0.01)
        return await real(*a, **k)

    c = tritonclient_grpc.InferenceServerClient(server.grpc_address)
    ok0, cancelled0 = ok._value.get(), cancelled._value.get()
    pool.run = slow
    try:
        with pytest.raises(InferenceServerException):
            c.infer(server.state.model_name, [_input(session, server)], client_timeout=0.3)
        assert started.wait(30)
        for _ in range(300):  # the server notices the cancellation on its own loop
            if cancelled._value.get() > cancelled0:
                break
            threading.Event().wait(0.01)
    finally:
        release.set()
        pool.run = real
        c.close()
    assert cancelled._value.get() == cancelled0 + 1 and ok._value.get() == ok0


def _input(session, server):
    x = images(session, 1, seed=5)
    inp = tritonclient_grpc.InferInput(server.state.io.input_name, list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return inp

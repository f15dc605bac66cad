"""The KServe v2 protocol layer (runtime/server/protocol.py) alone: exact refusals, accepted edge cases, the
metadata documents and the response encoding that the mutation run of issue 17 item 4 found untested.

No server and no bundle: requests are bytes, answers are parsed requests, messages and documents.
"""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from sdedge.common.errors import PolicyError
from sdedge.runtime.server.protocol import (ModelIO, ProtocolError, RequestedOutput, encode_infer_response, error_body,
                                            model_metadata, parse_infer_request, parse_json, server_metadata)

IO = ModelIO(input_name="image", chw=(3, 4, 5), classes=("a", "b"), max_batch=4)
IO1 = ModelIO(input_name="image", chw=(1, 4, 5), classes=("a", "b"), max_batch=4)
EXPECTED = "FP32 [B,3,4,5] (preprocessed NCHW) or UINT8 [B,4,5,3] (raw NHWC pixels), 1 <= B <= 4"
EXPECTED1 = "FP32 [B,1,4,5] (preprocessed NCHW) or UINT8 [B,4,5,1] (raw NHWC pixels) or UINT8 [B,4,5], 1 <= B <= 4"
ALL_OUTPUTS = ["probabilities", "label", "exit_index", "confidence", "class_name"]


def tensor(**kw) -> dict:
    t = {"name": "image", "datatype": "FP32", "shape": [1, 3, 4, 5], "data": [0.0] * 60}
    t.update(kw)
    return {k: v for k, v in t.items() if v is not ...}


def request(*inputs, **fields) -> bytes:
    return json.dumps(dict(inputs=list(inputs) or [tensor()], **fields)).encode()


def refused(body: bytes, io: ModelIO = IO, header: str | None = None) -> str:
    with pytest.raises(ProtocolError) as e:
        parse_infer_request(body, header, io)
    assert e.value.status == 400
    return str(e.value)


# -- what the model takes and returns ----------------------------------------------------------------------
def test_expected_forms_in_messages() -> None:
    assert IO.expected() == EXPECTED
    assert IO1.expected() == EXPECTED1


def test_metadata_documents() -> None:
    inputs = IO.inputs_metadata()
    assert inputs[0] == {"name": "image", "datatype": "FP32", "shape": [-1, 3, 4, 5]}  # what a client builds from
    forms = [(f["datatype"], f["shape"]) for f in IO.accepted_inputs()]
    assert all(e["name"] == "image" and (e["datatype"], e["shape"]) in forms for e in inputs)
    assert IO.outputs_metadata() == [
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]}, {"name": "label", "datatype": "INT64", "shape": [-1]},
        {"name": "exit_index", "datatype": "INT32", "shape": [-1]}, {"name": "confidence", "datatype": "FP32", "shape": [-1]},
        {"name": "class_name", "datatype": "BYTES", "shape": [-1]}]
    assert model_metadata(IO, "m", ("1", "2")) == {"name": "m", "versions": ["1", "2"], "platform": "sdedge",
                                                  "inputs": IO.inputs_metadata(), "outputs": IO.outputs_metadata()}
    assert model_metadata(IO, "m", ["1"], {"engine": "python"})["parameters"] == {"engine": "python"}
    server = server_metadata("0.1.0")
    assert (server["name"], server["version"]) == ("sdedge", "0.1.0")
    assert {"binary_tensor_data", "parameters"} <= set(server["extensions"])  # the extensions implemented here
    assert json.loads(error_body("bad 'x'")) == {"error": "bad 'x'"}


def test_accepted_inputs_list_the_grayscale_form_only_for_one_channel() -> None:
    rgb = [{"name": "image", "datatype": "FP32", "shape": [-1, 3, 4, 5], "layout": "NCHW", "note": "preprocessed"},
           {"name": "image", "datatype": "UINT8", "shape": [-1, 4, 5, 3], "layout": "NHWC",
            "note": "raw pixels, preprocessed by the server"}]
    assert IO.accepted_inputs() == rgb
    gray = IO1.accepted_inputs()
    assert len(gray) == 3 and gray[1]["shape"] == [-1, 4, 5, 1]
    assert gray[2] == {"name": "image", "datatype": "UINT8", "shape": [-1, 4, 5], "layout": "NHW", "note": "raw grayscale pixels"}


# -- the body, its JSON part and the header length -----------------------------------------------------------
def test_header_length_may_be_one_byte_or_the_whole_body() -> None:
    assert refused(b"1", header="1") == 'the request must be a JSON object with an "inputs" list, got int'
    body = request()
    assert parse_infer_request(body, str(len(body)), IO).array.shape == (1, 3, 4, 5)


def test_malformed_json_messages() -> None:
    try:
        json.loads(b"{")
    except json.JSONDecodeError as e:
        err = str(e)
    with pytest.raises(ProtocolError) as got:
        parse_json(b"{")
    assert str(got.value) == f"malformed JSON request: {err}"
    hint = " (binary tensor data after the JSON needs the Inference-Header-Content-Length header)"
    assert refused(b"{") == f"malformed JSON request: {err}{hint}"
    assert refused(b"{", header="1") == f"malformed JSON request: {err}"
    assert refused(b"[" * 100_000) == "malformed JSON request: nested too deeply"


@pytest.mark.parametrize("body,message", [
    (json.dumps([1]).encode(), 'the request must be a JSON object with an "inputs" list, got list'),
    (request(id=7), '"id" must be a string, got int'),
    (request(parameters=[]), '"parameters" must be an object, got list'),
    (json.dumps({"inputs": []}).encode(), f"the request needs a non-empty \"inputs\" list with one tensor named 'image': {EXPECTED}"),
    (json.dumps({"inputs": [3]}).encode(), "inputs[0] must be an object with name/shape/datatype, got int"),
    (request(tensor(), tensor()), "input 'image' appears more than once"),
    (request(parameters={"binary_data_output": "yes"}), "parameters.binary_data_output must be true or false, got 'yes'"),
    (request(tensor(shape=[1, "3", 4, 5])), "input 'image': \"shape\" must be a list of integers, got [1, '3', 4, 5]"),
    (request(tensor(shape=[1, 3.0, 4, 5])), "input 'image': \"shape\" must be a list of integers, got [1, 3.0, 4, 5]"),
    (request(tensor(datatype="UINT8", shape=[1, 5, 4, 3], data=[0] * 60)),
     f"input 'image' has datatype UINT8 and shape [1, 5, 4, 3]; expected {EXPECTED}"),
    (request(tensor(datatype="UINT8", shape=[1, 4, 5], data=[0] * 20)),
     f"input 'image' has datatype UINT8 and shape [1, 4, 5]; expected {EXPECTED}"),
    (request(tensor(parameters=[])), "input 'image': \"parameters\" must be an object, got list"),
    (request(tensor(data=..., parameters={"binary_data_size": -1})),
     "input 'image': binary_data_size must be a non-negative integer, got -1"),
    (request(tensor(data=..., parameters={"binary_data_size": "240"})),
     "input 'image': binary_data_size must be a non-negative integer, got '240'"),
    (request(tensor(data=..., parameters={"binary_data_size": True})),
     "input 'image': binary_data_size must be a non-negative integer, got True"),
    (request(tensor(data=..., parameters={"binary_data_size": 0})),
     "input 'image': binary_data_size is 0 bytes but FP32 [1, 3, 4, 5] needs 240"),
    (request(tensor(data=..., parameters={"binary_data_size": 100})),
     "input 'image': binary_data_size is 100 bytes but FP32 [1, 3, 4, 5] needs 240"),
    (request(tensor(parameters={"binary_data_size": 240})), "input 'image' has both \"data\" and binary_data_size; send one"),
    (request(tensor(data="0")), "input 'image': \"data\" must be a list (flattened row-major or nested), got str"),
    (request(tensor(data=[True] * 60)), "input 'image': FP32 \"data\" must hold numbers, got booleans"),
    (request(tensor(data=["x"] * 60)), "input 'image': FP32 \"data\" must hold numbers, got strings"),
    (request(tensor(data=[None] * 60)), "input 'image': FP32 \"data\" must hold numbers, got mixed or non-numeric values"),
    (request(tensor(datatype="UINT8", shape=[1, 4, 5, 3], data=[0.5] * 60)),
     "input 'image': UINT8 \"data\" must hold integers in 0..255, got non-integer numbers"),
    (request(tensor(data=[[0.0] * 30, [0.0] * 30])),
     "input 'image': nested \"data\" has shape [2, 30] but \"shape\" says [1, 3, 4, 5]"),
    (request(outputs=[]), "\"outputs\" must be a non-empty list of {\"name\": ...} objects, got []"),
    (request(outputs=[3]), "outputs[0] must be an object with a \"name\" string, got 3"),
    (request(outputs=[{"name": "logits"}]),
     "unknown output 'logits'; this model returns probabilities, label, exit_index, confidence, class_name"),
    (request(outputs=[{"name": "label"}, {"name": "label"}]), "output 'label' is requested more than once"),
    (request(outputs=[{"name": "label", "parameters": []}]), "outputs[0].parameters must be an object, got list"),
    (request(outputs=[{"name": "label", "parameters": {"classification": 2}}]),
     "the classification extension is not supported; request the \"label\", \"class_name\" and \"probabilities\" "
     "outputs instead"),
    (request(outputs=[{"name": "label", "parameters": {"binary_data": "yes"}}]),
     "outputs[0].parameters.binary_data must be true or false, got 'yes'"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_refusals_and_their_messages(body: bytes, message: str) -> None:
    assert refused(body) == message


@pytest.mark.parametrize("shape", [[1, 4, 6], [2, 4, 5, 1, 1], [1, 5, 4]])
def test_grayscale_nhw_must_match_the_model(shape) -> None:
    n = int(np.prod(shape))
    assert refused(request(tensor(datatype="UINT8", shape=shape, data=[0] * n)), IO1) == \
        f"input 'image' has datatype UINT8 and shape {shape}; expected {EXPECTED1}"


# -- accepted requests ---------------------------------------------------------------------------------------
def test_grayscale_nhw_and_nhwc_are_accepted_for_one_channel() -> None:
    data = list(range(20))
    req = parse_infer_request(request(tensor(datatype="UINT8", shape=[1, 4, 5], data=data)), None, IO1)
    assert req.array.dtype == np.uint8 and req.array.shape == (1, 4, 5)
    np.testing.assert_array_equal(req.array.ravel(), data)
    req = parse_infer_request(request(tensor(datatype="UINT8", shape=[1, 4, 5, 1], data=data)), None, IO1)
    assert req.array.shape == (1, 4, 5, 1)


def test_uint8_edges_and_dtype() -> None:
    req = parse_infer_request(request(tensor(datatype="UINT8", shape=[1, 4, 5, 3], data=[0, 255] * 30)), None, IO)
    assert req.array.dtype == np.uint8 and int(req.array.max()) == 255 and int(req.array.min()) == 0


def test_a_batch_of_max_batch_is_accepted() -> None:
    req = parse_infer_request(request(tensor(shape=[4, 3, 4, 5], data=[0.0] * 240)), None, IO)
    assert req.batch == 4


def test_values_beyond_float32_become_inf_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        req = parse_infer_request(request(tensor(data=[1e39] + [0.0] * 59)), None, IO)
    assert np.isinf(req.array.ravel()[0]) and req.array.dtype == np.float32


def test_parsed_request_keeps_id_parameters_and_outputs() -> None:
    params = {"budget_ms": 5, "priority": 3}
    req = parse_infer_request(request(id="r1", parameters=params), None, IO)
    assert req.id == "r1" and req.parameters == params and req.budget_ms == 5.0
    assert req.outputs == [RequestedOutput(n, False) for n in ALL_OUTPUTS]  # JSON outputs unless asked
    req = parse_infer_request(request(parameters={"binary_data_output": True}), None, IO)
    assert req.outputs == [RequestedOutput(n, True) for n in ALL_OUTPUTS]


@pytest.mark.parametrize("default", [False, True])
def test_requested_outputs_take_their_own_binary_flag_or_the_default(default: bool) -> None:
    outs = [{"name": "confidence", "parameters": {"binary_data": not default}}, {"name": "label"},
            {"name": "exit_index", "parameters": {}}]
    req = parse_infer_request(request(outputs=outs, parameters={"binary_data_output": default}), None, IO)
    assert req.outputs == [RequestedOutput("confidence", not default), RequestedOutput("label", default),
                           RequestedOutput("exit_index", default)]


# -- the response ----------------------------------------------------------------------------------------------
def _results(conf: float = 0.75):
    from sdedge.runtime.session import InferenceResult

    return [InferenceResult(1, "b", np.array([0.25, 0.75], np.float32), conf, 2, 2, 1.0, True)]


def test_response_names_the_model_and_version() -> None:
    body, hl = encode_infer_response("m", "3", None, _results(), [RequestedOutput("label", False)], ("a", "b"))
    doc = json.loads(body)
    assert hl is None and doc["model_name"] == "m" and doc["model_version"] == "3" and "id" not in doc
    assert doc["outputs"] == [{"name": "label", "datatype": "INT64", "shape": [1], "data": [1]}]


def test_response_never_writes_nan_tokens() -> None:
    with pytest.raises(ValueError, match="not JSON compliant"):
        encode_infer_response("m", "1", None, _results(conf=float("nan")), [RequestedOutput("confidence", False)],
                              ("a", "b"))


# -- what later commits added: parameters.late, the model configuration, the repository index -------------------
def _protocol_has(name: str) -> bool:
    import sdedge.runtime.server.protocol as protocol

    return hasattr(protocol, name)


@pytest.mark.skipif(not _protocol_has("check_late"), reason="parameters.late not in this tree")
def test_late_parameter() -> None:
    assert parse_infer_request(request(), None, IO).late is False  # refuse by default
    assert parse_infer_request(request(parameters={"late": "answer"}), None, IO).late is True
    assert parse_infer_request(request(parameters={"late": "refuse"}), None, IO).late is False
    assert refused(request(parameters={"late": "run"})) == "parameters.late must be one of 'refuse', 'answer', got 'run'"
    from sdedge.runtime.server.protocol import check_late

    with pytest.raises(PolicyError) as e:
        check_late(1)
    assert str(e.value) == "late must be one of 'refuse', 'answer', got 1"


@pytest.mark.skipif(not _protocol_has("request_from_doc"), reason="request_from_doc not in this tree")
def test_a_decoded_document_and_its_binary_part_are_validated_as_a_body() -> None:
    from sdedge.runtime.server.protocol import request_from_doc

    x = np.arange(60, dtype=np.float32)
    doc = {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 3, 4, 5], "parameters": {"binary_data_size": 240}}]}
    np.testing.assert_array_equal(request_from_doc(doc, x.tobytes(), IO).array.ravel(), x)  # bytes or memoryview
    with pytest.raises(ProtocolError, match="add up to 240"):
        request_from_doc(doc, x.tobytes() + b"\0" * 4, IO)


@pytest.mark.skipif(not _protocol_has("model_config"), reason="model_config not in this tree")
@pytest.mark.parametrize("batching", [False, True])
def test_model_config_in_tritons_shape(batching: bool) -> None:
    from sdedge.runtime.server.protocol import model_config

    cfg = model_config(IO, "m", "2", {"engine": "python", "exits": 3}, batching, 1500)
    assert cfg["name"] == "m" and cfg["platform"] == "sdedge" and cfg["backend"] == "sdedge"
    assert cfg["version_policy"] == {"specific": {"versions": ["2"]}} and cfg["max_batch_size"] == 4
    assert cfg["input"] == [{"name": "image", "data_type": "TYPE_FP32", "format": "FORMAT_NCHW", "dims": [3, 4, 5]}]
    assert cfg["output"] == [{"name": "probabilities", "data_type": "TYPE_FP32", "dims": [2]},
                             {"name": "label", "data_type": "TYPE_INT64", "dims": [1]},
                             {"name": "exit_index", "data_type": "TYPE_INT32", "dims": [1]},
                             {"name": "confidence", "data_type": "TYPE_FP32", "dims": [1]},
                             {"name": "class_name", "data_type": "TYPE_STRING", "dims": [1]}]
    assert cfg["parameters"] == {"engine": {"string_value": "python"}, "exits": {"string_value": "3"}}
    if batching:
        assert cfg["dynamic_batching"] == {"max_queue_delay_microseconds": 1500}
    else:
        assert "dynamic_batching" not in cfg


@pytest.mark.skipif(not _protocol_has("repository_index"), reason="repository_index not in this tree")
def test_repository_index() -> None:
    from sdedge.runtime.server.protocol import repository_index

    assert repository_index("m", "1", True) == [{"name": "m", "version": "1", "state": "READY"}]
    assert repository_index("m", "1", False) == [{"name": "m", "version": "1", "state": "UNAVAILABLE",
                                                  "reason": "the server is starting or stopping"}]


def test_binary_bytes_outputs_are_length_prefixed_utf8() -> None:
    res = _results()
    body, hl = encode_infer_response("m", "1", None, res, [RequestedOutput("class_name", True)], ("a", "bé"))
    head = json.loads(body[:hl])
    assert head["outputs"] == [{"name": "class_name", "datatype": "BYTES", "shape": [1],
                                "parameters": {"binary_data_size": 7}}]
    assert body[hl:] == (3).to_bytes(4, "little") + "bé".encode("utf-8")  # 3 bytes: 'b' and 'é' in UTF-8

"""KServe v2 / Open Inference Protocol messages: parse inference requests, encode responses.

Pure numpy + json (no web framework), so it is unit-tested without a server and reused by any
transport. What it implements of the protocol
(https://kserve.github.io/website/latest/modelserving/data_plane/v2_protocol/):

* **Request** ``{"id"?, "parameters"?, "inputs": [tensor], "outputs"?: [{"name", "parameters"?}]}`` with
  one input tensor, named after the bundle's input (``image``):

  - ``FP32`` ``[B, C, H, W]``: preprocessed pixels;
  - ``UINT8`` ``[B, H, W, C]`` (``[B, H, W]`` too for a one-channel model): raw pixels in the model's
    channel order, preprocessed by the runtime with the bundle's ``preprocess``.

  Other datatypes, another rank or size, ``B`` of 0 or above ``max_batch`` are refused (400).
  ``data`` is a row-major flattened list or a nested list of the tensor's shape; JSON numbers only
  (``NaN``/``Infinity`` are not JSON and are refused, so are bools, strings, out-of-range UINT8).
* **Binary tensor data extension**: with the ``Inference-Header-Content-Length: N`` header, the first
  ``N`` bytes of the body are the JSON request and the rest holds the tensors, one after the other in
  input order, each sized by its ``parameters.binary_data_size`` (little-endian, row-major). Sizes that
  do not add up to the body, or a header length that does not fit it, are refused (400).
* **Request parameters**: ``budget_ms`` (positive number), ``threshold`` (number in [0, 1] or
  ``"calibrated"``), ``criterion`` (``max_prob``/``entropy``/``margin``), each checked by the
  policies' ``check_*`` functions (as the session checks its arguments), ``late`` (``"refuse"``, the
  default: a request whose deadline passed while it queued is answered 504 "deadline exceeded" without
  running; ``"answer"``: it runs and gets the first exit's answer), ``binary_data_output``
  (bool: every output in binary). Other parameters (e.g. ``tritonclient``'s ``priority``,
  ``timeout``, ``sequence_id``) are accepted and ignored.
* **Outputs**: ``probabilities`` FP32 ``[B, C]``, ``label`` INT64 ``[B]``, ``exit_index`` INT32 ``[B]``
  (1 = shallowest), ``confidence`` FP32 ``[B]``, ``class_name`` BYTES ``[B]``. ``outputs`` in the
  request picks some (each ``parameters.binary_data`` true/false); without it every output is
  returned, in binary when ``binary_data_output`` is set. The ``classification`` extension is refused.
* **Errors**: :class:`ProtocolError` carries the HTTP status; the body is ``{"error": "<message>"}``.
"""
from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from ...common.errors import InputError, PolicyError
from ..policies import check_budget_ms, check_criterion, check_threshold

INPUT_DATATYPES = ("FP32", "UINT8")
OUTPUTS: dict[str, str] = {  # name -> v2 datatype
    "probabilities": "FP32",
    "label": "INT64",
    "exit_index": "INT32",
    "confidence": "FP32",
    "class_name": "BYTES",
}
_NP = {"FP32": np.dtype("<f4"), "UINT8": np.dtype("u1"), "INT64": np.dtype("<i8"), "INT32": np.dtype("<i4")}
KNOWN_PARAMETERS = ("budget_ms", "threshold", "criterion", "late", "binary_data_output")
LATE_MODES = ("refuse", "answer")


class ProtocolError(InputError):
    """A request the protocol layer refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ModelIO:
    """What the served model takes and returns, as the protocol describes it."""

    input_name: str
    chw: tuple[int, int, int]
    classes: tuple[str, ...]
    max_batch: int

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def inputs_metadata(self) -> list[dict]:
        """Every accepted form of the one input, as v2 tensor metadata: FP32 ``[-1, C, H, W]`` (preprocessed
        NCHW) first, then UINT8 ``[-1, H, W, C]`` (raw NHWC pixels). Both entries carry the input's one name:
        a request sends one tensor of that name in either form (v2 metadata has no field for alternatives;
        a client that builds its request from the first entry gets the FP32 form)."""
        c, h, w = self.chw
        return [{"name": self.input_name, "datatype": "FP32", "shape": [-1, c, h, w]},
                {"name": self.input_name, "datatype": "UINT8", "shape": [-1, h, w, c]}]

    def outputs_metadata(self) -> list[dict]:
        shapes = {"probabilities": [-1, self.num_classes]}
        return [{"name": n, "datatype": dt, "shape": shapes.get(n, [-1])} for n, dt in OUTPUTS.items()]

    def accepted_inputs(self) -> list[dict]:
        """Every input form accepted (the metadata can name only one datatype per input)."""
        c, h, w = self.chw
        forms = [{"name": self.input_name, "datatype": "FP32", "shape": [-1, c, h, w], "layout": "NCHW",
                  "note": "preprocessed"},
                 {"name": self.input_name, "datatype": "UINT8", "shape": [-1, h, w, c], "layout": "NHWC",
                  "note": "raw pixels, preprocessed by the server"}]
        if c == 1:
            forms.append({"name": self.input_name, "datatype": "UINT8", "shape": [-1, h, w], "layout": "NHW",
                          "note": "raw grayscale pixels"})
        return forms

    def expected(self) -> str:
        c, h, w = self.chw
        s = f"FP32 [B,{c},{h},{w}] (preprocessed NCHW) or UINT8 [B,{h},{w},{c}] (raw NHWC pixels)"
        return s + (f" or UINT8 [B,{h},{w}]" if c == 1 else "") + f", 1 <= B <= {self.max_batch}"


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool


@dataclass
class InferRequest:
    """A parsed, validated inference request (policy fields are None when the request did not set them)."""

    id: str | None
    array: np.ndarray  # float32 [B,C,H,W] or uint8 [B,H,W,C] / [B,H,W]
    datatype: str
    outputs: list[RequestedOutput]
    budget_ms: float | None = None
    threshold: Any = None
    criterion: str | None = None
    late: bool = False  # parameters.late == "answer": run even when the deadline passed in the queue
    parameters: dict = field(default_factory=dict)

    @property
    def batch(self) -> int:
        return int(self.array.shape[0])


# -- parsing ------------------------------------------------------------------------------------------------
def _reject_constant(token: str) -> Any:
    raise ProtocolError(f"malformed JSON: {token} is not a JSON number (send finite numbers only)")


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """The JSON part and the binary part of a body, per ``Inference-Header-Content-Length``."""
    if header_length is None:
        return body, memoryview(b"")
    try:
        n = int(header_length.strip())
    except ValueError:
        raise ProtocolError(f"Inference-Header-Content-Length must be an integer, got {header_length!r}") from None
    if n <= 0 or n > len(body):
        raise ProtocolError(f"Inference-Header-Content-Length is {n} but the body holds {len(body)} bytes; expected "
                            f"1..{len(body)} (the length of the JSON part at the start of the body)")
    view = memoryview(body)
    return bytes(view[:n]), view[n:]


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)  # made once: json.loads(..., parse_constant=) makes one a call
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def parse_json(text: bytes | str, hint: str = "") -> Any:
    """A JSON document (bytes in UTF-8, -16 or -32, or str), as ``json.loads`` reads it, NaN and Infinity
    refused; a :class:`ProtocolError` saying what is wrong otherwise."""
    try:
        if isinstance(text, (bytes, bytearray)):
            text = text.decode(json.detect_encoding(text), "surrogatepass")
        elif text.startswith("\ufeff"):
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        return _DECODER.decode(text)
    except ProtocolError:
        raise
    except (UnicodeDecodeError, ValueError) as e:  # JSONDecodeError is a ValueError
        raise ProtocolError(f"malformed JSON request: {e}{hint}") from None
    except RecursionError:
        raise ProtocolError("malformed JSON request: nested too deeply") from None


def parse_infer_request(body: bytes, header_length: str | None, io: ModelIO) -> InferRequest:
    """Parse and validate one ``POST .../infer`` body (see the module docstring for the rules)."""
    head, binary = split_body(body, header_length)
    req = parse_json(head, "" if header_length is not None else
                     " (binary tensor data after the JSON needs the Inference-Header-Content-Length header)")
    return request_from_doc(req, binary, io)


def request_from_doc(req: Any, binary: memoryview | bytes, io: ModelIO) -> InferRequest:
    """Validate a decoded request document and the binary tensor data after it: the one validator of
    every transport (HTTP JSON and binary, and gRPC, whose messages are mapped onto this form)."""
    binary = memoryview(binary)
    if not isinstance(req, dict):
        raise ProtocolError(f"the request must be a JSON object with an \"inputs\" list, got {type(req).__name__}")
    rid = req.get("id")
    if rid is not None and not isinstance(rid, str):
        raise ProtocolError(f"\"id\" must be a string, got {type(rid).__name__}")
    params = req.get("parameters", {})
    if not isinstance(params, dict):
        raise ProtocolError(f"\"parameters\" must be an object, got {type(params).__name__}")
    inputs = req.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ProtocolError(f"the request needs a non-empty \"inputs\" list with one tensor named "
                            f"{io.input_name!r}: {io.expected()}")
    offset = 0
    array = datatype = None
    for i, t in enumerate(inputs):
        if not isinstance(t, dict):
            raise ProtocolError(f"inputs[{i}] must be an object with name/shape/datatype, got {type(t).__name__}")
        name = t.get("name")
        if name != io.input_name:
            raise ProtocolError(f"unknown input {name!r}: this model has one input, {io.input_name!r}")
        if array is not None:
            raise ProtocolError(f"input {name!r} appears more than once")
        array, datatype, offset = _parse_input(t, binary, offset, io)
    if offset != len(binary):
        raise ProtocolError(f"the body holds {len(binary)} bytes of binary tensor data after the JSON header but the "
                            f"inputs' binary_data_size add up to {offset}")
    assert array is not None and datatype is not None
    binary_default = params.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise ProtocolError(f"parameters.binary_data_output must be true or false, got {binary_default!r}")
    return InferRequest(id=rid, array=array, datatype=datatype, outputs=_parse_outputs(req.get("outputs"), binary_default),
                        budget_ms=_parameter(params, "budget_ms", check_budget_ms),
                        threshold=_parameter(params, "threshold", lambda v, where: check_threshold(v, where, True)),
                        criterion=_parameter(params, "criterion", check_criterion),
                        late=_parameter(params, "late", check_late) == "answer", parameters=params)


def check_late(value: Any, where: str = "late") -> str:
    """``parameters.late``: what to do with a request whose deadline passed before it could start:
    ``"refuse"`` (default: answered "deadline exceeded" without running) or ``"answer"`` (run it: the
    first exit's answer, the floor)."""
    if value not in LATE_MODES:
        raise PolicyError(f"{where} must be one of {', '.join(map(repr, LATE_MODES))}, got {value!r}")
    return value


def _parse_input(t: dict, binary: memoryview, offset: int, io: ModelIO) -> tuple[np.ndarray, str, int]:
    name, datatype, shape = t["name"], t.get("datatype"), t.get("shape")
    if datatype not in INPUT_DATATYPES:
        raise ProtocolError(f"input {name!r} has datatype {datatype!r}; expected {io.expected()}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise ProtocolError(f"input {name!r}: \"shape\" must be a list of integers, got {shape!r}")
    c, h, w = io.chw
    if datatype == "FP32":
        ok = len(shape) == 4 and shape[1:] == [c, h, w]
    else:
        ok = (len(shape) == 4 and shape[1:] == [h, w, c]) or (c == 1 and len(shape) == 3 and shape[1:] == [h, w])
    if not ok:
        raise ProtocolError(f"input {name!r} has datatype {datatype} and shape {shape}; expected {io.expected()}")
    b = shape[0]
    if b < 1:
        raise ProtocolError(f"input {name!r}: batch size must be at least 1, got shape {shape}")
    if b > io.max_batch:
        raise ProtocolError(f"input {name!r}: batch of {b} images is larger than this server's max batch "
                            f"({io.max_batch}); split the request")
    dt = _NP[datatype]
    count = math.prod(shape)
    params = t.get("parameters", {})
    if not isinstance(params, dict):
        raise ProtocolError(f"input {name!r}: \"parameters\" must be an object, got {type(params).__name__}")
    size = params.get("binary_data_size")
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ProtocolError(f"input {name!r}: binary_data_size must be a non-negative integer, got {size!r}")
        if "data" in t:
            raise ProtocolError(f"input {name!r} has both \"data\" and binary_data_size; send one")
        if size != count * dt.itemsize:
            raise ProtocolError(f"input {name!r}: binary_data_size is {size} bytes but {datatype} {shape} needs "
                                f"{count * dt.itemsize}")
        if offset + size > len(binary):
            raise ProtocolError(f"input {name!r}: binary_data_size is {size} bytes but only {len(binary) - offset} bytes "
                                f"of binary data follow the JSON header (check Inference-Header-Content-Length)")
        arr = np.frombuffer(binary, dtype=dt, count=count, offset=offset).reshape(shape)
        if not arr.flags.aligned:  # the JSON header has any length: do not hand engines a misaligned buffer
            arr = arr.copy()
        return arr, datatype, offset + size
    if "data" not in t:
        raise ProtocolError(f"input {name!r} has neither \"data\" nor parameters.binary_data_size")
    return _json_tensor(t["data"], name, datatype, shape, count), datatype, offset


class TypedContents:
    """A gRPC input's typed ``contents`` (a protobuf repeated field, ``where`` names it), in place of a JSON
    ``data`` list: :func:`_json_tensor` counts it before converting it, once the shape has been checked."""

    __slots__ = ("values", "where")

    def __init__(self, values: Any, where: str) -> None:
        self.values, self.where = values, where


def _json_tensor(data: Any, name: str, datatype: str, shape: list[int], count: int) -> np.ndarray:
    if isinstance(data, TypedContents):
        if len(data.values) != count:
            raise ProtocolError(f"input {name!r}: {data.where} holds {len(data.values)} values but {datatype} "
                                f"{shape} needs {count} (typed contents: FP32 in fp32_contents, UINT8 in uint_contents; "
                                f"or send raw_input_contents)")
        data = list(data.values)
    if not isinstance(data, list):
        raise ProtocolError(f"input {name!r}: \"data\" must be a list (flattened row-major or nested), "
                            f"got {type(data).__name__}")
    try:
        arr = np.array(data)
        if arr.dtype.kind == "O" and datatype == "FP32" and all(type(v) in (int, float) for v in arr.flat):
            arr = arr.astype(np.float64)  # integers beyond int64/uint64 are numbers too
    except (ValueError, TypeError, OverflowError) as e:
        raise ProtocolError(f"input {name!r}: \"data\" is not a regular array of numbers ({e})") from None
    kinds = "iuf" if datatype == "FP32" else "iu"
    if arr.dtype.kind not in kinds:
        what = {"b": "booleans", "U": "strings", "O": "mixed or non-numeric values", "f": "non-integer numbers"}.get(
            arr.dtype.kind, str(arr.dtype))
        want = "numbers" if datatype == "FP32" else "integers in 0..255"
        raise ProtocolError(f"input {name!r}: {datatype} \"data\" must hold {want}, got {what}")
    if arr.ndim > 1 and list(arr.shape) != shape:
        raise ProtocolError(f"input {name!r}: nested \"data\" has shape {list(arr.shape)} but \"shape\" says {shape}")
    if arr.size != count:
        raise ProtocolError(f"input {name!r}: \"data\" holds {arr.size} values but shape {shape} needs {count}")
    if datatype == "UINT8":
        if arr.size and (int(arr.min()) < 0 or int(arr.max()) > 255):
            raise ProtocolError(f"input {name!r}: UINT8 values must be in 0..255, got {int(arr.min())}..{int(arr.max())}")
        return arr.astype(np.uint8).reshape(shape)
    with np.errstate(over="ignore"):  # beyond float32 range becomes Inf, which the session refuses (NaN/Inf)
        return arr.astype(np.float32).reshape(shape)


def _parameter(params: dict, name: str, check: Callable[[Any, str], Any]) -> Any:
    """``parameters[name]`` checked by ``check(value, where)`` (None when absent); a bad one is a 400."""
    v = params.get(name)
    if v is None:
        return None
    try:
        return check(v, f"parameters.{name}")
    except PolicyError as e:
        raise ProtocolError(str(e)) from None


def _parse_outputs(outputs: Any, binary_default: bool) -> list[RequestedOutput]:
    if outputs is None:
        return [RequestedOutput(n, binary_default) for n in OUTPUTS]
    if not isinstance(outputs, list) or not outputs:
        raise ProtocolError(f"\"outputs\" must be a non-empty list of {{\"name\": ...}} objects, got {outputs!r}")
    picked: list[RequestedOutput] = []
    for i, o in enumerate(outputs):
        if not isinstance(o, dict) or not isinstance(o.get("name"), str):
            raise ProtocolError(f"outputs[{i}] must be an object with a \"name\" string, got {o!r}")
        name = o["name"]
        if name not in OUTPUTS:
            raise ProtocolError(f"unknown output {name!r}; this model returns {', '.join(OUTPUTS)}")
        if any(p.name == name for p in picked):
            raise ProtocolError(f"output {name!r} is requested more than once")
        p = o.get("parameters", {})
        if not isinstance(p, dict):
            raise ProtocolError(f"outputs[{i}].parameters must be an object, got {type(p).__name__}")
        if p.get("classification"):
            raise ProtocolError("the classification extension is not supported; request the \"label\", "
                                "\"class_name\" and \"probabilities\" outputs instead")
        binary = p.get("binary_data", binary_default)
        if not isinstance(binary, bool):
            raise ProtocolError(f"outputs[{i}].parameters.binary_data must be true or false, got {binary!r}")
        picked.append(RequestedOutput(name, binary))
    return picked


# -- encoding -----------------------------------------------------------------------------------------------
def output_arrays(results: Sequence[Any], names: Sequence[str], classes: Sequence[str]) -> dict[str, Any]:
    """The requested output tensors of a batch of ``InferenceResult`` (class_name: a list of str)."""
    out: dict[str, Any] = {}
    for n in names:
        if n == "probabilities":
            out[n] = np.stack([r.probabilities for r in results]).astype("<f4", copy=False)
        elif n == "label":
            out[n] = np.array([r.label for r in results], "<i8")
        elif n == "exit_index":
            out[n] = np.array([r.exit_index for r in results], "<i4")
        elif n == "confidence":
            out[n] = np.array([r.confidence for r in results], "<f4")
        elif n == "class_name":
            out[n] = [classes[r.label] for r in results]
    return out


def bytes_tensor(strings: Sequence[str]) -> bytes:
    """A BYTES tensor's raw form: each element as a 4-byte little-endian length and its UTF-8 bytes."""
    parts = []
    for s in strings:
        b = s.encode("utf-8")
        parts.append(struct.pack("<I", len(b)))
        parts.append(b)
    return b"".join(parts)


def encode_infer_response(model_name: str, model_version: str, request_id: str | None, results: Sequence[Any],
                          outputs: Sequence[RequestedOutput], classes: Sequence[str],
                          parameters: dict | None = None) -> tuple[bytes, int | None]:
    """The response body, and the JSON header length when some outputs are binary (else None)."""
    arrays = output_arrays(results, [o.name for o in outputs], classes)
    entries, blobs = [], []
    for o in outputs:
        arr = arrays[o.name]
        dt = OUTPUTS[o.name]
        shape = list(arr.shape) if isinstance(arr, np.ndarray) else [len(arr)]
        e: dict[str, Any] = {"name": o.name, "datatype": dt, "shape": shape}
        if o.binary:
            raw = bytes_tensor(arr) if dt == "BYTES" else arr.tobytes()
            e["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            e["data"] = list(arr) if dt == "BYTES" else arr.ravel().tolist()
        entries.append(e)
    resp: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        resp["id"] = request_id
    if parameters:
        resp["parameters"] = parameters
    resp["outputs"] = entries
    head = _ENCODER.encode(resp).encode()
    if not blobs:
        return head, None
    return head + b"".join(blobs), len(head)


def error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


EXTENSIONS = ("binary_tensor_data", "parameters", "statistics", "model_repository", "model_configuration")
_TRITON_TYPES = {"FP32": "TYPE_FP32", "UINT8": "TYPE_UINT8", "INT64": "TYPE_INT64", "INT32": "TYPE_INT32",
                 "BYTES": "TYPE_STRING"}


def server_metadata(version: str) -> dict:
    return {"name": "sdedge", "version": version, "extensions": list(EXTENSIONS)}


def model_config(io: ModelIO, name: str, version: str, parameters: dict[str, str], batching: bool,
                 max_queue_delay_us: int) -> dict:
    """The model configuration in Triton's model-config (``model_config.proto``) JSON shape.

    Shapes there leave the batch dimension out (``max_batch_size`` > 0). Triton's config has one datatype per
    input, so the input is listed in its FP32 NCHW form; the UINT8 NHWC form it also accepts is in the
    model metadata and in ``parameters.sdedge`` (``accepted_inputs``). ``parameters`` values are strings.
    """
    c, h, w = io.chw
    cfg: dict[str, Any] = {
        "name": name, "platform": "sdedge", "backend": "sdedge", "version_policy": {"specific": {"versions": [version]}},
        "max_batch_size": io.max_batch,
        "input": [{"name": io.input_name, "data_type": "TYPE_FP32", "format": "FORMAT_NCHW", "dims": [c, h, w]}],
        "output": [{"name": o["name"], "data_type": _TRITON_TYPES[o["datatype"]], "dims": o["shape"][1:] or [1]}
                   for o in io.outputs_metadata()],
        "parameters": {k: {"string_value": str(v)} for k, v in parameters.items()},
    }
    if batching:
        cfg["dynamic_batching"] = {"max_queue_delay_microseconds": int(max_queue_delay_us)}
    return cfg


def repository_index(name: str, version: str, ready: bool) -> list[dict]:
    """The model repository extension's index (``POST /v2/repository/index``): the one model served."""
    entry = {"name": name, "version": version, "state": "READY" if ready else "UNAVAILABLE"}
    if not ready:
        entry["reason"] = "the server is starting or stopping"
    return [entry]


def model_metadata(io: ModelIO, name: str, versions: Sequence[str], parameters: dict | None = None) -> dict:
    """The v2 model metadata; ``parameters`` (Triton's extension field): what runs the model (engine, backend, device)."""
    out = {"name": name, "versions": list(versions), "platform": "sdedge",
           "inputs": io.inputs_metadata(), "outputs": io.outputs_metadata()}
    if parameters:
        out["parameters"] = dict(parameters)
    return out

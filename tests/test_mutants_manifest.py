"""The manifest schema (runtime/manifest.py): each refusal's exact message, the typed view's values and the
``to_json`` forms the exporter writes, which the mutation run of issue 17 item 4 found untested.

Every malformed manifest below differs from a valid one (``make_manifest`` of test_bundle_format.py) in one
place; the whole message is compared, so a message that names the wrong field (or none) fails.
"""
from __future__ import annotations

import copy

import pytest

from sdedge.common.digest import sha256_bytes
from sdedge.common.errors import BundleError, FormatVersionError
from sdedge.runtime.manifest import Preprocess, SectionSpec, TensorSpec, check_relpath, validate_manifest

from test_bundle_format import make_manifest

FILES = {f"sections/s{i}.onnx": f"section {i}".encode() for i in (1, 2, 3)}
FILES["full.onnx"] = b"full graph"
SHA = sha256_bytes(b"x")
BIG = 10 ** 400  # an int beyond float range (JSON allows it)
TUPLE_NAME = str((int, float))  # how _get names the (int, float) type


def base(k: int = 3, classes: int = 4) -> dict:
    files = {f"sections/s{i}.onnx": f"section {i}".encode() for i in range(1, k + 1)}
    files["full.onnx"] = b"full graph"
    return make_manifest(files, k=k, classes=classes)


def _set(path: tuple, value):
    def edit(m: dict) -> None:
        d = m
        for p in path[:-1]:
            d = d[p]
        d[path[-1]] = value
    return edit


def _del(path: tuple):
    def edit(m: dict) -> None:
        d = m
        for p in path[:-1]:
            d = d[p]
        del d[path[-1]]
    return edit


def _int8(m: dict) -> None:
    m["sections"][0]["int8_file"] = "int8/s1.onnx"
    m["sections"][1]["int8_file"] = "int8/s2.onnx"
    m["files"]["int8/s1.onnx"] = {"sha256": SHA}


S0, S1, S2 = ("sections", 0), ("sections", 1), ("sections", 2)
PRE = ("input", "preprocess")

MALFORMED = [
    (_set(("model",), []), "manifest.model must be an object (name, backbone, method, ...)"),
    (_del(("input",)), "manifest: missing key 'input'"),
    (_set(("input",), []), "manifest.input: expected dict, got list"),
    (_del(("input", "name")), "input: missing key 'name'"),
    (_del(("input", "shape")), "input: missing key 'shape'"),
    (_set(("input", "dtype"), 3), "input.dtype must be a string"),
    (_set(("input", "shape"), [None, 1, 0, 16]), "input.shape: dimensions must be positive integers or null, got [None, 1, 0, 16]"),
    (_set(("input", "shape"), [None, True, 16, 16]), "input.shape: dimensions must be positive integers or null, got [None, True, 16, 16]"),
    (_set(("input", "shape"), [None, 1, 16]), "input.shape must be [null, C, H, W], got [None, 1, 16]"),
    (_set(("input", "shape"), [None, None, 16, 16]), "input.shape must be [null, C, H, W], got [None, None, 16, 16]"),
    (_del(PRE), "input: missing key 'preprocess'"),
    (_del(PRE + ("mean",)), "input.preprocess: missing key 'mean'"),
    (_set(PRE + ("mean",), "0.3"), "input.preprocess.mean: expected list, got str"),
    (_set(PRE + ("mean",), ["a"]), "input.preprocess.mean must hold numbers, got 'a'"),
    (_set(PRE + ("mean",), [True]), "input.preprocess.mean must hold numbers, got True"),
    (_set(PRE + ("mean",), [BIG]), f"input.preprocess.mean must hold numbers, got {BIG!r}"[:300]),
    (_del(PRE + ("std",)), "input.preprocess: missing key 'std'"),
    (_set(PRE + ("std",), [None]), "input.preprocess.std must hold numbers, got None"),
    (_del(PRE + ("scale",)), "input.preprocess: missing key 'scale'"),
    (_set(PRE + ("scale",), True), f"input.preprocess.scale: expected {TUPLE_NAME}, got bool"),
    (_set(PRE + ("scale",), BIG), f"input.preprocess.scale must hold numbers, got {BIG!r}"[:300]),
    (_set(PRE + ("mean",), [0.3, 0.3]), "input.preprocess mean/std must have 1 values (one per channel)"),
    (_set(PRE + ("std",), [0.3, 0.3]), "input.preprocess mean/std must have 1 values (one per channel)"),
    (_set(PRE + ("mean",), [float("inf")]), "input.preprocess mean must be finite"),
    (_set(PRE + ("std",), [0.0]), "input.preprocess std and scale must be positive and finite"),
    (_set(PRE + ("scale",), 0), "input.preprocess std and scale must be positive and finite"),
    (_set(PRE + ("channel_order",), "rgb"), "input.preprocess.channel_order must be RGB, BGR or L, got 'rgb'"),
    (_del(("classes",)), "manifest: missing key 'classes'"),
    (_set(("classes",), ["only"]), "classes must be a list of at least two class names"),
    (_set(("classes",), [1, 2, 3, 4]), "classes must be a list of at least two class names"),
    (_del(("sections",)), "manifest: missing key 'sections'"),
    (_set(("sections",), []), "sections must list at least one section"),
    (_set(S1, 5), "sections[1] must be an object"),
    (_del(S1 + ("file",)), "sections[1]: missing key 'file'"),
    (_set(S1 + ("file",), ""), "sections[1].file: file path must be a non-empty string"),
    (_del(S1 + ("sha256",)), "sections[1]: missing key 'sha256'"),
    (_set(S1 + ("sha256",), "abc"), "sections[1].sha256: sha256 must be 64 lowercase hex digits"),
    (_set(S1 + ("sha256",), "X" * 64), "sections[1].sha256: sha256 must be 64 lowercase hex digits"),
    (_del(S1 + ("inputs",)), "sections[1]: missing key 'inputs'"),
    (_del(S1 + ("outputs",)), "sections[1]: missing key 'outputs'"),
    (lambda m: m["sections"][1]["inputs"].append(m["sections"][1]["inputs"][0]), "sections[1].inputs must hold exactly one tensor"),
    (_set(S1 + ("inputs",), [3]), "sections[1].inputs[0]: expected an object with name/shape/dtype, got int"),
    (_set(S1 + ("outputs",), [{"name": "logits_2", "shape": [None, 4]}]), "sections[1].outputs must hold features and logits"),
    (lambda m: m["sections"][2]["outputs"].append(m["sections"][2]["outputs"][0]), "sections[2].outputs must hold logits"),
    (lambda m: m["sections"][1]["outputs"].__setitem__(0, 3), "sections[1].outputs[0]: expected an object with name/shape/dtype, got int"),
    (lambda m: m["sections"][1]["outputs"].__setitem__(1, 3), "sections[1].outputs[-1]: expected an object with name/shape/dtype, got int"),
    (lambda m: m["sections"][1]["outputs"][0].__setitem__("name", "f2"), "sections[1]: features output must be named 'features_2'"),
    (lambda m: m["sections"][1]["outputs"][0].__setitem__("shape", [None]), "sections[1]: features shape must start with a dynamic batch"),
    (lambda m: m["sections"][1]["outputs"][1].__setitem__("name", "l2"), "sections[1]: logits output must be named 'logits_2'"),
    (_set(S1 + ("macs",), -1), "sections[1].macs must be a non-negative integer or null"),
    (_set(S1 + ("macs",), "5"), "sections[1].macs must be a non-negative integer or null"),
    (_set(S1 + ("params",), True), "sections[1].params must be a non-negative integer or null"),
    (_set(S1 + ("int8_file",), "../x"), "sections[1].int8_file: path '../x' escapes the bundle folder or is not a plain relative path"),
    (lambda m: (_int8(m), m["files"].pop("int8/s1.onnx"), m["files"].__setitem__("int8/s2.onnx", {"sha256": SHA}))
     and None, "sections[0].int8_file 'int8/s1.onnx' is not listed in files"),
    (_int8, "sections[1].int8_file 'int8/s2.onnx' is not listed in files"),
    (_set(("files",), []), "files must be an object mapping relative paths to {sha256}"),
    (_set(("files", "../x"), {"sha256": SHA}), "files['../x']: path '../x' escapes the bundle folder or is not a plain relative path"),
    (_set(("files", "full.onnx"), {"sha256": "0" * 63}), "files['full.onnx'].sha256: sha256 must be 64 lowercase hex digits"),
    (_set(("exits",), {}), "exits must be a list"),
]


@pytest.mark.parametrize("edit,message", MALFORMED, ids=[m for _, m in MALFORMED])
def test_each_malformed_manifest_is_refused_with_its_message(edit, message: str) -> None:
    m = base()
    edit(m)
    with pytest.raises(BundleError) as e:
        validate_manifest(m)
    assert str(e.value) == f"malformed manifest: {message}"


def test_another_format_version_names_the_manifest_and_the_fix() -> None:
    m = base()
    m["format_version"] = 0
    with pytest.raises(FormatVersionError) as e:
        validate_manifest(m)
    assert str(e.value) == ("manifest has format_version 0, not supported by this sdedge (reads version 1, 2); "
                            "re-export the bundle")


@pytest.mark.parametrize("path", ["", ".", "./", "a/\x00b", "\\x", "/abs", "c:x", "../up"])
def test_check_relpath_refuses_paths_that_are_not_plain_relative(path: str) -> None:
    with pytest.raises(BundleError, match="^malformed manifest: where: "):
        check_relpath(path, "where")
    assert check_relpath("a/./b//c", "where") == "a/b/c"


def test_the_typed_view_holds_the_manifest_values() -> None:
    m = base()
    m["sections"][0]["macs"] = 0
    m["sections"][1]["macs"] = None
    m["input"]["dtype"] = "float16"
    v = validate_manifest(m)
    assert v.input == TensorSpec("image", (None, 1, 16, 16), "float16")
    assert v.preprocess == Preprocess(1 / 255, (0.3,), (0.3,), "L")
    s1, s2, s3 = v.sections
    assert s1.input == TensorSpec("image", (None, 1, 16, 16), "float32")
    assert s1.features == TensorSpec("features_1", (None, 8, 16, 16), "float32")
    assert s1.logits == TensorSpec("logits_1", (None, 4), "float32")
    assert (s1.macs, s1.params, s2.macs, s2.params, s3.macs, s3.params) == (0, 10, None, 20, 3000, 30)
    assert s3.features is None
    assert v.files == {"full.onnx": sha256_bytes(b"full graph")}
    assert v.exits == m["exits"] and v.classes == ("c0", "c1", "c2", "c3")


def test_a_tensor_without_dtype_is_float32() -> None:
    m = base()
    del m["sections"][1]["inputs"][0]["dtype"]
    del m["input"]["dtype"]
    v = validate_manifest(m)
    assert v.input.dtype == "float32" and v.sections[1].input.dtype == "float32"


def test_smallest_valid_manifests_are_accepted() -> None:
    """One section, two classes, 2-D features, macs 0, no exits, no files, files given as bare digests."""
    one = base(k=1, classes=2)
    del one["exits"], one["files"]
    v = validate_manifest(one)
    assert v.num_exits == 1 and v.num_classes == 2 and v.files == {} and v.exits == []
    flat = base()
    flat["sections"][0]["outputs"][0]["shape"] = [None, 8]
    flat["sections"][1]["inputs"][0]["shape"] = [None, 8]
    flat["files"] = {"full.onnx": SHA}
    v = validate_manifest(flat)
    assert v.sections[0].features.shape == (None, 8) and v.files == {"full.onnx": SHA}


@pytest.mark.parametrize("channels,order,want", [(1, None, "L"), (3, None, "RGB"), (3, "BGR", "BGR"), (3, "RGB", "RGB"),
                                                 (1, "L", "L")])
def test_channel_order_default_and_choices(channels: int, order, want: str) -> None:
    m = base()
    shape = [None, channels, 16, 16]
    m["input"]["shape"] = shape
    m["sections"][0]["inputs"][0]["shape"] = shape
    pre = m["input"]["preprocess"]
    pre["mean"], pre["std"] = [0.5] * channels, [0.25] * channels
    pre.pop("channel_order")
    if order is not None:
        pre["channel_order"] = order
    assert validate_manifest(m).preprocess == Preprocess(1 / 255, (0.5,) * channels, (0.25,) * channels, want)


def test_to_json_is_the_manifest_form_the_exporter_writes() -> None:
    m = base()
    _int8(m)
    m["files"]["int8/s2.onnx"] = {"sha256": SHA}
    v = validate_manifest(copy.deepcopy(m))
    for spec, raw in zip(v.sections, m["sections"]):
        assert spec.to_json() == raw
    assert "int8_file" not in v.sections[2].to_json()
    assert v.input.to_json() == {"name": "image", "shape": [None, 1, 16, 16], "dtype": "float32"}
    assert v.preprocess.to_json() == {"scale": 1 / 255, "mean": [0.3], "std": [0.3], "channel_order": "L",
                                      "raw_dtype": "uint8", "raw_layout": "HWC"}


def _fp16(m: dict) -> None:
    for s in m["sections"]:
        s["fp16_file"] = f"fp16/s{s['index']}.onnx"
        m["files"][s["fp16_file"]] = {"sha256": SHA}


HAS_FP16 = "fp16_file" in SectionSpec.__dataclass_fields__


@pytest.mark.skipif(not HAS_FP16, reason="fp16 sections not in this tree")
def test_fp16_files_are_read_listed_and_written_back() -> None:
    m = base()
    _fp16(m)
    v = validate_manifest(copy.deepcopy(m))
    assert [s.fp16_file for s in v.sections] == ["fp16/s1.onnx", "fp16/s2.onnx", "fp16/s3.onnx"]
    for spec, raw in zip(v.sections, m["sections"]):
        assert spec.to_json() == raw
    assert "fp16_file" not in validate_manifest(base()).sections[0].to_json()
    m["files"].pop("fp16/s2.onnx")
    with pytest.raises(BundleError) as e:
        validate_manifest(m)
    assert str(e.value) == "malformed manifest: sections[1].fp16_file 'fp16/s2.onnx' is not listed in files"
    m = base()
    m["sections"][2]["fp16_file"] = "../x"
    with pytest.raises(BundleError) as e:
        validate_manifest(m)
    assert str(e.value) == ("malformed manifest: sections[2].fp16_file: path '../x' escapes the bundle folder or is "
                            "not a plain relative path")

"""sdedge.common's small pieces on their own: registries, the format header, strict JSON, progress."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from sdedge.common.errors import BundleError, FormatVersionError
from sdedge.common.formats import check_format
from sdedge.common.jsonio import dump_json, write_json_atomic
from sdedge.common.progress import reporter
from sdedge.common.registry import Registry


def test_registry_registers_once_and_names_the_registered_on_a_miss() -> None:
    reg: Registry[int] = Registry("widget")
    reg.register("b")(2)
    reg.add("a", 1)
    assert reg.get("a") == 1 and "b" in reg and len(reg) == 2
    assert list(reg) == ["b", "a"] and reg.names() == ["a", "b"]  # iteration: registration order
    with pytest.raises(ValueError, match="widget 'a' is registered twice"):
        reg.add("a", 3)
    assert reg.get("a") == 1
    with pytest.raises(ValueError, match=r"unknown widget 'c'; choose one of: a, b"):
        reg.get("c")
    with pytest.raises(ValueError, match="unknown widget"):
        reg.get(["unhashable"])  # type: ignore[arg-type]


@pytest.mark.parametrize("doc, error, message", [
    ([], BundleError, "malformed f.json: top level must be an object, got list"),
    ({"format": "other", "format_version": 1}, BundleError, "f.json is not an sdedge thing: 'format' is 'other'"),
    ({"format_version": 1}, BundleError, "'format' is None"),
    ({"format": "fmt"}, BundleError, "'format_version' must be an integer, got None"),
    ({"format": "fmt", "format_version": True}, BundleError, "'format_version' must be an integer, got True"),
    ({"format": "fmt", "format_version": 3}, FormatVersionError, r"format_version 3, .*reads version 1, 2\); upgrade"),
    ({"format": "fmt", "format_version": 0}, FormatVersionError, r"format_version 0, .*; make it again"),
])
def test_format_header(doc, error, message: str) -> None:
    with pytest.raises(error, match=message):
        check_format(doc, "fmt", (1, 2), "thing", "f.json", "make it again")


def test_format_header_returns_the_version() -> None:
    assert check_format({"format": "fmt", "format_version": 2}, "fmt", (1, 2), "thing", "f.json", "") == 2


def test_json_is_strict_and_written_whole(tmp_path: Path) -> None:
    assert dump_json({"b": 1, "a": [1.5]}) == b'{\n  "a": [\n    1.5\n  ],\n  "b": 1\n}\n'
    with pytest.raises(ValueError, match="not JSON compliant: nan"):
        dump_json({"x": float("nan")})
    p = tmp_path / "r.json"
    write_json_atomic(p, {"x": 1}, indent=1)
    assert json.loads(p.read_text()) == {"x": 1} and p.read_text().endswith("\n")
    with pytest.raises(ValueError, match="not JSON compliant: inf"):
        write_json_atomic(p, {"x": float("inf")})
    assert json.loads(p.read_text()) == {"x": 1}  # the failed write left the old file
    assert [q.name for q in tmp_path.iterdir()] == ["r.json"]


def test_progress_reporter(capsys: pytest.CaptureFixture) -> None:
    seen: list[str] = []
    reporter(seen.append, "[x]")("one")
    reporter(True, "[x]")("two")
    reporter(False, "[x]")("three")
    assert seen == ["one"] and capsys.readouterr().err == "[x] two\n"

"""The bundle contract (runtime/manifest.py, runtime/bundle.py, runtime/atomic.py) on synthetic bundles.

These bundles hold placeholder bytes instead of ONNX graphs: the reader's job here is the manifest
schema, checksums, path safety and atomic updates, which do not depend on the graphs' content.
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest

from sdedge.common.atomic import staging_dir, write_bytes_atomic
from sdedge.common.digest import sha256_bytes
from sdedge.common.jsonio import dump_json
from sdedge.runtime.bundle import open_bundle, update_bundle
from sdedge.common.errors import BundleError, ChecksumError, FormatVersionError
from sdedge.runtime.manifest import validate_manifest

from bundle_tamper import assert_tamper_refused, bundle_files


def make_manifest(files: dict[str, bytes], k: int = 3, classes: int = 4) -> dict:
    shapes = [[None, 8, 16, 16], [None, 16, 8, 8]]
    sections = []
    for i in range(1, k + 1):
        name = f"sections/s{i}.onnx"
        ins = [{"name": "image" if i == 1 else f"features_{i - 1}",
                "shape": [None, 1, 16, 16] if i == 1 else shapes[i - 2], "dtype": "float32"}]
        outs = [] if i == k else [{"name": f"features_{i}", "shape": shapes[i - 1], "dtype": "float32"}]
        outs.append({"name": f"logits_{i}", "shape": [None, classes], "dtype": "float32"})
        sections.append({"index": i, "file": name, "sha256": sha256_bytes(files[name]), "inputs": ins,
                         "outputs": outs, "macs": 1000 * i, "params": 10 * i})
    return {
        "format": "sdedge-bundle", "format_version": 1, "created": "2026-01-01T00:00:00Z", "sdedge_version": "0.1.0",
        "model": {"name": "t", "backbone": "tiny", "method": "byot", "num_classes": classes},
        "input": {"name": "image", "shape": [None, 1, 16, 16], "dtype": "float32", "layout": "NCHW",
                  "preprocess": {"scale": 1 / 255, "mean": [0.3], "std": [0.3], "channel_order": "L"}},
        "classes": [f"c{i}" for i in range(classes)],
        "sections": sections,
        "exits": [{"index": i, "val_accuracy": 0.5, "test_accuracy": 0.5} for i in range(1, k + 1)],
        "files": {"full.onnx": {"sha256": sha256_bytes(files["full.onnx"])}},
    }


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    root = tmp_path / "b"
    files = {f"sections/s{i}.onnx": f"section {i}".encode() for i in (1, 2, 3)}
    files["full.onnx"] = b"full graph"
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / "manifest.json").write_bytes(dump_json(make_manifest(files)))
    return root


# every kind of file a bundle can hold, by how the manifest lists it: sections (the exit heads are inside
# them: there are no separate head graphs), the full graph, INT8 sections, calibration and a profile
EVERY_KIND = ["sections/s1.onnx", "sections/s2.onnx", "sections/s3.onnx", "full.onnx", "int8/s1.onnx",
              "int8/s2.onnx", "int8/s3.onnx", "calibration.json", "profiles/cpu.json"]


@pytest.fixture
def every_kind_bundle(bundle: Path) -> Path:
    """``bundle`` plus INT8 sections, ``calibration.json`` and ``profiles/cpu.json``, all checksummed."""
    extra = {f"int8/s{i}.onnx": f"int8 section {i}".encode() for i in (1, 2, 3)}
    extra["calibration.json"] = b'{"criterion": "max_prob", "thresholds": [0.9, 0.8]}'
    extra["profiles/cpu.json"] = b'{"device": "cpu", "sections_ms": [1.0, 2.0, 3.0]}'
    for rel, data in extra.items():
        (bundle / rel).parent.mkdir(parents=True, exist_ok=True)
        (bundle / rel).write_bytes(data)

    def add(m: dict) -> None:
        for s in m["sections"]:
            s["int8_file"] = f"int8/s{s['index']}.onnx"
        m["files"].update({rel: {"sha256": sha256_bytes(data)} for rel, data in extra.items()})

    rewrite(bundle, add)
    return bundle


def rewrite(root: Path, fn) -> None:
    m = json.loads((root / "manifest.json").read_text())
    fn(m)
    (root / "manifest.json").write_text(json.dumps(m))


def test_valid_bundle_opens(bundle: Path) -> None:
    b = open_bundle(bundle)
    assert b.manifest.num_exits == 3 and b.manifest.classes == ("c0", "c1", "c2", "c3")
    assert b.section_path(2) == bundle / "sections/s2.onnx"
    assert b.has_full and b.calibration is None and b.profile_names() == []


def test_altered_byte_is_refused_naming_the_file(bundle: Path) -> None:
    p = bundle / "sections/s2.onnx"
    data = bytearray(p.read_bytes())
    data[0] ^= 1
    p.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="sections/s2.onnx"):
        open_bundle(bundle)
    assert open_bundle(bundle, verify=False).manifest.num_exits == 3


def test_every_kind_of_file_is_checksummed(every_kind_bundle: Path) -> None:
    assert sorted(bundle_files(every_kind_bundle)) == sorted(EVERY_KIND)
    b = open_bundle(every_kind_bundle)
    assert b.section_path(3, "int8") == every_kind_bundle / "int8/s3.onnx" and b.profile_names() == ["cpu"]


@pytest.mark.parametrize("rel", EVERY_KIND)
def test_altered_file_of_each_kind_is_refused_naming_it(every_kind_bundle: Path, tmp_path: Path, rel: str) -> None:
    assert_tamper_refused(every_kind_bundle, rel, tmp_path)


def test_missing_file_is_refused_naming_it(bundle: Path) -> None:
    (bundle / "full.onnx").unlink()
    with pytest.raises(BundleError, match="full.onnx.*missing"):
        open_bundle(bundle)


def test_unknown_format_version(bundle: Path) -> None:
    rewrite(bundle, lambda m: m.__setitem__("format_version", 3))
    with pytest.raises(FormatVersionError, match=r"format_version 3, .*reads version 1, 2\); upgrade sdedge"):
        open_bundle(bundle)


@pytest.mark.parametrize("mutate, message", [
    (lambda m: m.pop("sections"), "missing key 'sections'"),
    (lambda m: m.__setitem__("classes", "abc"), "classes"),
    (lambda m: m["sections"][0].__setitem__("sha256", "xyz"), "sha256"),
    (lambda m: m["sections"][0].__setitem__("fp16_file", "fp16/s1.onnx"), "fp16_file .* is not listed in files"),
    (lambda m: m["sections"][0].__setitem__("fp16_file", "../x.onnx"), "escapes"),
    (lambda m: m["sections"][1]["inputs"][0].__setitem__("name", "features_9"), "features_1"),
    (lambda m: m["sections"][1]["inputs"][0].__setitem__("shape", [None, 3, 16, 16]), "does not match"),
    (lambda m: m["sections"][2]["outputs"][0].__setitem__("shape", [None, 5]), r"\[null, 4\]"),
    (lambda m: m["input"]["preprocess"].__setitem__("std", [0.0]), "positive"),
    (lambda m: m["input"].__setitem__("shape", [1, 1, 16, 16]), r"\[null, C, H, W\]"),
    (lambda m: m.__setitem__("format", "something-else"), "not an sdedge bundle"),
])
def test_malformed_manifest(bundle: Path, mutate, message) -> None:
    rewrite(bundle, mutate)
    with pytest.raises(BundleError, match=message):
        open_bundle(bundle)


@pytest.mark.parametrize("path", ["../escape.onnx", "/etc/passwd", "sections/../../x", "a\\b", "C:/x"])
def test_paths_cannot_escape_the_bundle(bundle: Path, path: str) -> None:
    rewrite(bundle, lambda m: m["sections"][0].__setitem__("file", path))
    with pytest.raises(BundleError, match="escapes the bundle"):
        open_bundle(bundle)


def test_symlink_out_of_the_bundle_is_refused(bundle: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.onnx"
    outside.write_bytes(b"full graph")
    (bundle / "full.onnx").unlink()
    os.symlink(outside, bundle / "full.onnx")
    with pytest.raises(BundleError, match="outside the bundle"):
        open_bundle(bundle)


def test_not_json_and_not_a_folder(tmp_path: Path, bundle: Path) -> None:
    (bundle / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        open_bundle(bundle)
    with pytest.raises(BundleError, match="does not exist"):
        open_bundle(tmp_path / "nope")


def test_update_bundle_adds_checksummed_files(bundle: Path) -> None:
    b = update_bundle(bundle, {"calibration.json": b'{"criterion": "max_prob"}', "profiles/cpu.json": b"{}"})
    assert b.calibration == {"criterion": "max_prob"}
    assert b.profile_names() == ["cpu"] and b.profile("cpu") == {}
    assert b.manifest.files["calibration.json"] == sha256_bytes(b'{"criterion": "max_prob"}')
    assert not list(bundle.parent.glob("b.tmp-*"))


def test_update_bundle_failure_leaves_old_bundle(bundle: Path, monkeypatch) -> None:
    before = (bundle / "manifest.json").read_bytes()
    with pytest.raises(BundleError, match="'../evil' escapes the bundle folder"):
        update_bundle(bundle, {"../evil": b"x"})
    assert (bundle / "manifest.json").read_bytes() == before
    open_bundle(bundle)
    assert not list(bundle.parent.glob("b.tmp-*"))


def test_update_does_not_write_through_hard_links(bundle: Path) -> None:
    update_bundle(bundle, {"calibration.json": b"1"})
    old = bundle / "calibration.json"
    ino = old.stat().st_ino
    update_bundle(bundle, {"calibration.json": b"2"})
    assert (bundle / "calibration.json").read_bytes() == b"2"
    assert (bundle / "calibration.json").stat().st_ino != ino


def test_staging_dir_replaces_atomically_or_not_at_all(tmp_path: Path) -> None:
    dst = tmp_path / "out"
    with staging_dir(dst) as tmp:
        (tmp / "a").write_text("one")
    assert (dst / "a").read_text() == "one"
    with pytest.raises(RuntimeError, match="killed midway"):
        with staging_dir(dst) as tmp:
            (tmp / "a").write_text("two")
            raise RuntimeError("killed midway")
    assert (dst / "a").read_text() == "one"
    with staging_dir(dst) as tmp:
        (tmp / "b").write_text("three")
    assert sorted(p.name for p in dst.iterdir()) == ["b"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_write_bytes_atomic(tmp_path: Path) -> None:
    p = tmp_path / "f.bin"
    write_bytes_atomic(p, b"abc")
    write_bytes_atomic(p, b"defg")
    assert p.read_bytes() == b"defg" and [x.name for x in tmp_path.iterdir()] == ["f.bin"]


def test_validate_manifest_keeps_unknown_fields(bundle: Path) -> None:
    raw = json.loads((bundle / "manifest.json").read_text())
    raw2 = copy.deepcopy(raw)
    raw2["vendor_extension"] = {"x": 1}
    assert validate_manifest(raw2).raw["vendor_extension"] == {"x": 1}


def test_staging_left_by_a_killed_writer_is_removed_by_the_next_update(bundle: Path) -> None:
    import subprocess
    import sys

    from sdedge.common.atomic import OWNER_MARKER

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs
    stale = bundle.with_name(bundle.name + ".tmp-dead0001")
    stale.mkdir()
    (stale / OWNER_MARKER).write_text(f"{__import__('socket').gethostname()} {dead.pid}\n")
    foreign = bundle.with_name(bundle.name + ".tmp-foreign1")  # no marker: not ours, left alone
    foreign.mkdir()
    update_bundle(bundle, {"calibration.json": b"{}"})
    assert not stale.exists() and foreign.exists()
    assert not (bundle / OWNER_MARKER).exists()  # the marker never ships inside a bundle
    open_bundle(bundle)

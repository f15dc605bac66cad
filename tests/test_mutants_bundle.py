"""The bundle reader and updater (runtime/bundle.py): refusals and updates the mutation run of issue 17 item 4
found untested, on synthetic bundles (placeholder bytes instead of graphs, as in test_bundle_format.py)."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from sdedge.common.digest import sha256_bytes
from sdedge.common.errors import BundleError, ChecksumError
from sdedge.common.jsonio import dump_json
from sdedge.runtime import bundle as bundle_mod
from sdedge.runtime.bundle import MAX_MANIFEST_BYTES, open_bundle, update_bundle

from test_bundle_format import make_manifest


def _write_bundle(root: Path, edit=None) -> Path:
    files = {f"sections/s{i}.onnx": f"section {i}".encode() for i in (1, 2, 3)}
    files["full.onnx"] = b"full graph"
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    m = make_manifest(files)
    if edit is not None:
        edit(m)
    (root / "manifest.json").write_bytes(dump_json(m))
    return root


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return _write_bundle(tmp_path / "b")


def test_file_refuses_a_path_out_of_the_bundle_naming_it(bundle: Path) -> None:
    b = open_bundle(bundle)
    assert b.file("full.onnx") == bundle / "full.onnx"
    with pytest.raises(BundleError, match=r"^malformed manifest: file: path '\.\./x' escapes the bundle folder"):
        b.file("../x")


def test_section_paths_by_precision(bundle: Path) -> None:
    b = open_bundle(bundle)
    assert b.section_path(2) == b.section_path(2, "fp16") == bundle / "sections/s2.onnx"  # fp16 runs the fp32 graph
    with pytest.raises(BundleError, match=rf"^bundle {re.escape(str(bundle))} has no INT8 sections; export with --int8$"):
        b.section_path(1, "int8")
    with pytest.raises(BundleError, match=r"^unknown precision 'bf16'; expected fp32, fp16 or int8$"):
        b.section_path(1, "bf16")


def test_a_listed_file_that_is_not_json_is_refused_naming_it(bundle: Path) -> None:
    data = b"{not json"
    (bundle / "calibration.json").write_bytes(data)
    update = json.loads((bundle / "manifest.json").read_text())
    update["files"]["calibration.json"] = {"sha256": sha256_bytes(data)}
    (bundle / "manifest.json").write_bytes(dump_json(update))
    b = open_bundle(bundle)
    with pytest.raises(BundleError, match=rf"^malformed {re.escape(str(bundle / 'calibration.json'))} is not valid JSON"):
        b.calibration  # noqa: B018


def test_a_manifest_that_is_not_json_is_refused_as_the_manifest(bundle: Path) -> None:
    (bundle / "manifest.json").write_text("{nope")
    with pytest.raises(BundleError, match=rf"^malformed manifest: {re.escape(str(bundle / 'manifest.json'))} is not valid JSON"):
        open_bundle(bundle)


def test_a_file_where_the_folder_should_be(bundle: Path, tmp_path: Path) -> None:
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(BundleError, match=rf"^{re.escape(str(f))} is not a bundle folder \(expected a folder holding manifest.json\)$"):
        open_bundle(f)
    (bundle / "manifest.json").unlink()
    with pytest.raises(BundleError, match=rf"^{re.escape(str(bundle))} is not a bundle: manifest.json is missing$"):
        open_bundle(bundle)


def test_manifest_size_limit_is_inclusive(bundle: Path) -> None:
    """A manifest of exactly MAX_MANIFEST_BYTES is read; one byte more is refused unread."""
    text = (bundle / "manifest.json").read_bytes()
    (bundle / "manifest.json").write_bytes(text + b" " * (MAX_MANIFEST_BYTES - len(text)))
    assert open_bundle(bundle).manifest.num_exits == 3
    (bundle / "manifest.json").write_bytes(text + b" " * (MAX_MANIFEST_BYTES + 1 - len(text)))
    with pytest.raises(BundleError, match=rf"manifest.json is larger than {MAX_MANIFEST_BYTES} bytes; refusing to parse it$"):
        open_bundle(bundle)


def test_checksum_message_shows_twelve_digits_of_each(bundle: Path) -> None:
    (bundle / "full.onnx").write_bytes(b"full graph!")
    want = open_bundle(bundle, verify=False).manifest.files["full.onnx"]
    got = sha256_bytes(b"full graph!")
    with pytest.raises(ChecksumError) as e:
        open_bundle(bundle)
    assert str(e.value) == (f"checksum mismatch for bundle file full.onnx: manifest says {want[:12]}..., "
                            f"file has {got[:12]}... (altered or corrupt)")


def test_update_writes_the_manifest_updates(bundle: Path) -> None:
    exits = [{"index": i, "val_accuracy": 0.9, "test_accuracy": 0.8} for i in (1, 2, 3)]
    b = update_bundle(bundle, {"calibration.json": b"{}"}, {"exits": exits})
    assert b.manifest.exits == exits
    assert json.loads((bundle / "manifest.json").read_text())["exits"] == exits


def test_update_of_a_bundle_listing_no_files(tmp_path: Path) -> None:
    root = _write_bundle(tmp_path / "b", edit=lambda m: (m.pop("files"), (tmp_path / "b" / "full.onnx").unlink()))
    b = update_bundle(root, {"calibration.json": b'{"a": 1}'})
    assert b.manifest.files == {"calibration.json": sha256_bytes(b'{"a": 1}')}
    assert b.calibration == {"a": 1}


def test_update_creates_nested_folders(bundle: Path) -> None:
    b = update_bundle(bundle, {"extra/deep/x.bin": b"x"})
    assert (bundle / "extra/deep/x.bin").read_bytes() == b"x"
    assert b.manifest.files["extra/deep/x.bin"] == sha256_bytes(b"x")


def test_update_refuses_a_new_file_out_of_the_bundle_naming_it(bundle: Path) -> None:
    with pytest.raises(BundleError, match=r"^malformed manifest: new file: path '\.\./evil' escapes the bundle folder"):
        update_bundle(bundle, {"../evil": b"x"})
    assert not (bundle.parent / "evil").exists()


@pytest.mark.parametrize("locked", ["folder", "parent"])
def test_update_refuses_a_folder_it_cannot_write(bundle: Path, monkeypatch, locked: str) -> None:
    """Either the bundle folder or its parent not writable: refused before anything is staged (os.access is
    scripted: the tests may run as root, for whom every folder is writable)."""
    target = bundle if locked == "folder" else bundle.parent
    real = os.access
    monkeypatch.setattr(bundle_mod.os, "access",
                        lambda p, mode, *a, **k: False if Path(p) == target and mode == os.W_OK else real(p, mode, *a, **k))
    before = sorted(p.name for p in bundle.parent.iterdir())
    with pytest.raises(BundleError, match=rf"^cannot update bundle {re.escape(str(bundle))}: the folder \(or its parent\) is not writable$"):
        update_bundle(bundle, {"calibration.json": b"{}"})
    assert sorted(p.name for p in bundle.parent.iterdir()) == before
    assert "calibration.json" not in open_bundle(bundle).manifest.files


def test_a_bundle_with_non_ascii_names_opens_under_a_c_locale(tmp_path: Path) -> None:
    """JSON files are read as UTF-8 whatever the process locale (a device image often runs with LANG=C)."""
    import subprocess
    import sys

    root = _write_bundle(tmp_path / "b", edit=lambda m: m.__setitem__("classes", ["chaussure", "été", "é", "ß"]))
    # sdedge's own writers escape non-ASCII (\u00e9); JSON may also hold it raw, as UTF-8 (another tool, an editor)
    raw = json.loads((root / "manifest.json").read_bytes())
    (root / "manifest.json").write_bytes(json.dumps(raw, ensure_ascii=False).encode("utf-8"))
    assert "été".encode("utf-8") in (root / "manifest.json").read_bytes()
    assert open_bundle(root).manifest.classes[1] == "été"  # here (a UTF-8 locale, most likely) ...
    env = dict(os.environ, LC_ALL="C", LANG="C", PYTHONCOERCECLOCALE="0", PYTHONUTF8="0",
               PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    code = ("import locale, sys; from sdedge.runtime.bundle import open_bundle; "
            "print(locale.getpreferredencoding(False)); print(open_bundle(sys.argv[1]).manifest.classes[1] == '\\u00e9t\\u00e9')")
    out = subprocess.run([sys.executable, "-c", code, str(root)], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    encoding, same = out.stdout.split()
    assert same == "True", encoding  # ... and under LANG=C, whose encoding is ASCII (ANSI_X3.4-1968) on glibc


@pytest.mark.skipif(not hasattr(bundle_mod.Bundle, "fp16_section_path"), reason="fp16 sections not in this tree")
def test_fp16_section_paths(tmp_path: Path) -> None:
    def with_fp16(m: dict) -> None:
        for s in m["sections"]:
            s["fp16_file"] = f"fp16/s{s['index']}.onnx"
            m["files"][s["fp16_file"]] = {"sha256": sha256_bytes(b"fp16")}

    plain = open_bundle(_write_bundle(tmp_path / "plain"))
    with pytest.raises(BundleError, match=rf"^bundle {re.escape(str(plain.path))} has no fp16 section graphs; export with --fp16$"):
        plain.fp16_section_path(1)
    root = _write_bundle(tmp_path / "fp16", edit=with_fp16)
    for i in (1, 2, 3):
        (root / f"fp16/s{i}.onnx").parent.mkdir(parents=True, exist_ok=True)
        (root / f"fp16/s{i}.onnx").write_bytes(b"fp16")
    b = open_bundle(root)
    assert b.fp16_section_path(2) == root / "fp16/s2.onnx"
    assert b.section_path(2, "fp16") == root / "sections/s2.onnx"  # the fp32 graph, run in fp16 by the backend


def test_json_nested_past_the_bound_is_refused_as_invalid(bundle: Path) -> None:
    """64 nested containers are read; 65, or a few hundred thousand (which would overflow a recursive reader),
    are refused as invalid JSON naming the file (the native core's reader has the same bound)."""
    m = json.loads((bundle / "manifest.json").read_text())
    deep: object = 1
    for _ in range(62):
        deep = [deep]
    m["model"]["note"] = deep  # 63 levels below the top object's own
    (bundle / "manifest.json").write_bytes(dump_json(m))
    assert open_bundle(bundle).manifest.raw["model"]["note"] == deep
    m["model"]["note"] = [[deep]]
    (bundle / "manifest.json").write_bytes(dump_json(m))
    with pytest.raises(BundleError, match=r"^malformed manifest: .*manifest.json is not valid JSON \(nested deeper than 64 levels\)$"):
        open_bundle(bundle)
    (bundle / "manifest.json").write_text('{"format": ' + "[" * 200000 + "]" * 200000 + "}")
    with pytest.raises(BundleError, match=r"nested deeper than 64 levels"):
        open_bundle(bundle)


def test_a_fifo_in_place_of_a_listed_json_file_is_refused_without_waiting(bundle: Path) -> None:
    """With verify=False nothing hashes calibration.json first: reading it must not wait for a writer."""
    m = json.loads((bundle / "manifest.json").read_text())
    m["files"]["calibration.json"] = {"sha256": "0" * 64}
    (bundle / "manifest.json").write_bytes(dump_json(m))
    os.mkfifo(bundle / "calibration.json")
    b = open_bundle(bundle, verify=False)
    with pytest.raises(BundleError, match=r"calibration.json is not a regular file$"):
        b.calibration  # noqa: B018


@pytest.mark.parametrize("edit", [lambda p: p.update(std=[1e-300]), lambda p: p.update(scale=1e300),
                                  lambda p: p.update(scale=1e-300), lambda p: p.update(mean=[1e39])],
                         ids=["std-underflows", "scale-overflows", "scale-underflows", "mean-overflows"])
def test_preprocessing_degenerate_in_float32_is_refused(tmp_path: Path, edit) -> None:
    """Finite in JSON, 0 or Inf in the float32 the runtimes compute in: the bundle's fault, said at open (not
    every later call's 'your input overflows')."""
    b = _write_bundle(tmp_path / "b", lambda m: edit(m["input"]["preprocess"]))
    with pytest.raises(BundleError, match=r"input.preprocess \(scale, mean, std\) maps pixel values 0..255 to zero "
                                          r"scale or beyond float32's finite range"):
        open_bundle(b)

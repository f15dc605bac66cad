"""Read, verify and update sdedge bundles on disk.

:func:`open_bundle` is the single way in: it parses ``manifest.json``, validates it
(:mod:`sdedge.runtime.manifest`), and checks the sha256 of every section and every listed file, refusing
the bundle with an error that names the offending file. :func:`update_bundle` replaces or adds files
(calibration, profiles) atomically and rewrites the manifest's checksums in the same swap.
"""
from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..common.atomic import clean_stale_staging, staging_dir
from ..common.digest import sha256_bytes, sha256_file
from ..common.errors import BundleError, ChecksumError
from ..common import jsonio
from .manifest import MANIFEST_NAME, HeadSpec, Manifest, SectionSpec, check_relpath, validate_manifest

CALIBRATION_NAME = "calibration.json"
PROFILES_DIR = "profiles"
MAX_JSON_BYTES = 16 * 1024 * 1024  # every JSON file of a bundle (native/src/json_util.hpp: kMaxJsonBytes)
MAX_MANIFEST_BYTES = MAX_JSON_BYTES
MAX_JSON_DEPTH = 64  # containers nested in one another (kMaxJsonDepth): sdedge's files need fewer than 10


@dataclass(frozen=True)
class Bundle:
    """A verified bundle: its folder and typed manifest."""

    path: Path
    manifest: Manifest

    def file(self, rel: str) -> Path:
        return self.path / check_relpath(rel, "file")

    def section_path(self, index: int, precision: str = "fp32") -> Path:
        """Path of 1-based section ``index``; ``precision='int8'`` picks the QDQ copy, ``'fp16-graph'`` the
        float16 one."""
        return self.graph_path(self.manifest.sections[index - 1], precision)

    def head_path(self, index: int, precision: str = "fp32") -> Path | None:
        """Path of section ``index``'s exit-head graph (format version 2; None where the head is inside the
        section's graph), ``precision`` as in :meth:`section_path`."""
        head = self.manifest.sections[index - 1].head
        return None if head is None else self.graph_path(head, precision)

    def fp16_section_path(self, index: int) -> Path:
        """Path of section ``index``'s float16 graph (float32 I/O), written by ``sdedge export --fp16``: what
        TensorRT 11, whose networks are strongly typed, builds fp16 engines from."""
        return self.section_path(index, "fp16-graph")

    def graph_path(self, graph: SectionSpec | HeadSpec, precision: str) -> Path:
        """Path of a section's or a head's graph: its ``int8`` or ``fp16-graph`` copy, else its own file."""
        if precision == "int8":
            if not graph.int8_file:
                raise BundleError(f"bundle {self.path} has no INT8 sections; export with --int8")
            return self.file(graph.int8_file)
        if precision == "fp16-graph":
            if not graph.fp16_file:
                raise BundleError(f"bundle {self.path} has no fp16 section graphs; export with --fp16")
            return self.file(graph.fp16_file)
        if precision not in ("fp32", "fp16"):
            raise BundleError(f"unknown precision {precision!r}; expected fp32, fp16 or int8")
        return self.file(graph.file)

    @property
    def has_full(self) -> bool:
        return "full.onnx" in self.manifest.files

    @property
    def calibration(self) -> dict | None:
        if CALIBRATION_NAME not in self.manifest.files:
            return None
        return read_json(self.file(CALIBRATION_NAME))

    def profile_names(self) -> list[str]:
        pre = PROFILES_DIR + "/"
        return sorted(r[len(pre):-5] for r in self.manifest.files if r.startswith(pre) and r.endswith(".json"))

    def profile(self, device: str) -> dict | None:
        rel = f"{PROFILES_DIR}/{device}.json"
        if rel not in self.manifest.files:
            return None
        return read_json(self.file(rel))


def _nesting(doc: Any) -> int:
    """How many containers (objects, arrays) are nested in one another in ``doc`` (iteratively)."""
    deepest, stack = 0, [(doc, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (dict, list)):
            deepest = max(deepest, d)
            stack.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v))
    return deepest


def read_json(path: Path, what: str = "", max_bytes: int = MAX_JSON_BYTES) -> Any:
    """A bundle's JSON file, parsed; :class:`BundleError` naming the file when it is not a regular file (a
    FIFO is refused without waiting on it), is larger than ``max_bytes``, is not JSON, or nests deeper than
    :data:`MAX_JSON_DEPTH` (the native core's reader has the same bounds)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise BundleError(f"malformed {what}{path} could not be read ({e.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BundleError(f"malformed {what}{path} is not a regular file")
        data = f.read(max_bytes + 1) if st.st_size <= max_bytes else b""
    if st.st_size > max_bytes or len(data) > max_bytes:  # refused unread, or grown while read
        raise BundleError(f"{path} is larger than {max_bytes} bytes; refusing to parse it")
    too_deep = f"malformed {what}{path} is not valid JSON (nested deeper than {MAX_JSON_DEPTH} levels)"
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"malformed {what}{path} is not valid JSON ({e})") from None
    except RecursionError:
        raise BundleError(too_deep) from None
    if _nesting(doc) > MAX_JSON_DEPTH:
        raise BundleError(too_deep)
    return doc


def read_manifest(path: str | os.PathLike) -> dict:
    root = Path(path)
    if not root.exists():
        raise BundleError(f"bundle folder {root} does not exist")
    if not root.is_dir():
        raise BundleError(f"{root} is not a bundle folder (expected a folder holding {MANIFEST_NAME})")
    mpath = root / MANIFEST_NAME
    if not mpath.is_file():
        raise BundleError(f"{root} is not a bundle: {MANIFEST_NAME} is missing")
    return read_json(mpath, "manifest: ", MAX_MANIFEST_BYTES)


def _verify(root: Path, rel: str, expected: str) -> None:
    p = root / rel
    if not p.is_file():
        raise BundleError(f"bundle file {rel} listed in the manifest is missing from {root}")
    real = p.resolve()
    if root.resolve() not in real.parents:
        raise BundleError(f"bundle file {rel} resolves outside the bundle folder ({real})")
    got = sha256_file(p)
    if got != expected:
        raise ChecksumError(f"checksum mismatch for bundle file {rel}: manifest says {expected[:12]}..., file has {got[:12]}... (altered or corrupt)")


def open_bundle(path: str | os.PathLike, verify: bool = True) -> Bundle:
    """Load and (by default) verify the bundle at ``path``."""
    root = Path(path)
    manifest = validate_manifest(read_manifest(root))
    if verify:
        for s in manifest.sections:
            _verify(root, s.file, s.sha256)
            if s.head is not None:
                _verify(root, s.head.file, s.head.sha256)
        for rel, sha in manifest.files.items():
            _verify(root, rel, sha)
    return Bundle(root, manifest)


def update_bundle(path: str | os.PathLike, new_files: Mapping[str, bytes],
                  manifest_updates: Mapping[str, Any] | None = None) -> Bundle:
    """Add or replace files in a bundle atomically, updating ``files`` checksums in the manifest.

    The whole bundle is staged beside the original (unchanged files hard-linked), then swapped in
    with one atomic rename: a crash at any point leaves the previous bundle intact.
    """
    root = Path(path)
    current = open_bundle(root)  # never update a bundle that does not verify
    raw = json.loads(json.dumps(current.manifest.raw))
    for k, v in (manifest_updates or {}).items():
        raw[k] = v
    files = raw.setdefault("files", {})
    if not os.access(root.parent, os.W_OK) or not os.access(root, os.W_OK):
        raise BundleError(f"cannot update bundle {root}: the folder (or its parent) is not writable")
    clean_stale_staging(root)  # folders left by a calibration that was killed mid-update
    with staging_dir(root, copy_existing=True) as tmp:
        for rel, data in new_files.items():
            norm = check_relpath(rel, "new file")
            dest = tmp / norm
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.exists():
                dest.unlink()  # break the hard link: never write through to the old bundle
            dest.write_bytes(data)
            files[norm] = {"sha256": sha256_bytes(data)}
        validate_manifest(raw)
        man = tmp / MANIFEST_NAME
        man.unlink()
        man.write_bytes(jsonio.dump_json(raw))
    return open_bundle(root)

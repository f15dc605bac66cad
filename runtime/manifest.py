"""The bundle manifest (format versions 1 and 2): schema, validation and typed views.

``manifest.json`` is the only entry point of a bundle (see ``shared/DESIGN.md`` section 4). The exporter
builds it through :func:`validate_manifest`, the runtime reads it through the same function, so both
sides agree on one schema. Validation checks types and cross-references, and that every file path
stays inside the bundle folder; checksums are checked by :mod:`sdedge.runtime.bundle`.

Tensor naming (fixed by this module): section ``k`` (1-based) takes ``image`` (k = 1) or
``features_{k-1}`` and returns ``features_k`` (all but the last section) and ``logits_k``.

Version 2 differs in one way: every section but the last is a *trunk* graph that returns
``features_k`` only, and its exit head is its own graph (``head``: ``features_k`` -> ``logits_k``, under
``heads/``), so a runtime runs a head only when its policy needs that exit's logits. The last section
keeps its head inside (its logits are always the answer). A section's ``macs`` and ``params`` mean the
same in both versions (the section with its exit head: what an exit costs); ``head.macs`` is the head's
share of them. INT8 and fp16 copies follow the same split (``head.int8_file``, ``head.fp16_file``)::

    {"index": 1, "file": "sections/s1.onnx", "sha256": "...",
     "inputs": [{"name": "image", "shape": [null, 1, 28, 28]}],
     "outputs": [{"name": "features_1", "shape": [null, 16, 28, 28]}],
     "macs": 1234, "params": 56,
     "head": {"file": "heads/h1.onnx", "sha256": "...",
              "inputs": [{"name": "features_1", "shape": [null, 16, 28, 28]}],
              "outputs": [{"name": "logits_1", "shape": [null, 10]}], "macs": 210, "params": 12}}
"""
from __future__ import annotations

import math
import posixpath
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..common.errors import BundleError
from ..common.formats import check_format

FORMAT = "sdedge-bundle"
FORMAT_VERSION = 1  # what the exporter writes unless asked for another
FORMAT_VERSIONS = (1, 2)  # what the readers accept
MANIFEST_NAME = "manifest.json"


def input_name(section: int) -> str:
    """Name of the input tensor of 1-based section ``section``."""
    return "image" if section == 1 else f"features_{section - 1}"


def features_name(section: int) -> str:
    return f"features_{section}"


def logits_name(section: int) -> str:
    return f"logits_{section}"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int | None, ...]  # None = dynamic (the batch)
    dtype: str = "float32"

    @classmethod
    def from_json(cls, d: Any, where: str) -> "TensorSpec":
        _require(isinstance(d, dict), f"{where}: expected an object with name/shape/dtype, got {type(d).__name__}")
        name = _get(d, "name", str, where)
        shape = _get(d, "shape", list, where)
        for s in shape:
            _require(s is None or (isinstance(s, int) and not isinstance(s, bool) and s > 0),
                     f"{where}.shape: dimensions must be positive integers or null, got {shape!r}")
        dtype = d.get("dtype", "float32")
        _require(isinstance(dtype, str), f"{where}.dtype must be a string")
        return cls(name, tuple(shape), dtype)

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class HeadSpec:
    """A separate exit-head graph (format version 2): ``features_k`` -> ``logits_k``."""

    file: str
    sha256: str
    input: TensorSpec
    logits: TensorSpec
    macs: int | None = None
    params: int | None = None
    int8_file: str | None = None
    fp16_file: str | None = None

    def to_json(self) -> dict:
        d: dict[str, Any] = {"file": self.file, "sha256": self.sha256, "inputs": [self.input.to_json()],
                             "outputs": [self.logits.to_json()], "macs": self.macs, "params": self.params}
        if self.int8_file:
            d["int8_file"] = self.int8_file
        if self.fp16_file:
            d["fp16_file"] = self.fp16_file
        return d


@dataclass(frozen=True)
class SectionSpec:
    index: int  # 1-based
    file: str
    sha256: str
    input: TensorSpec
    features: TensorSpec | None  # None for the last section
    logits: TensorSpec
    macs: int | None = None
    params: int | None = None
    int8_file: str | None = None
    fp16_file: str | None = None  # float16 graph with float32 I/O (`sdedge export --fp16`; TensorRT 11 fp16 engines)
    head: HeadSpec | None = None  # format version 2: the exit head's own graph (the file then returns features only)

    @property
    def file_outputs(self) -> list[TensorSpec]:
        """The outputs of the section's own file: features and logits (version 1, or the last section),
        features only (a version-2 trunk), logits only (the last section)."""
        if self.head is not None:
            return [self.features]  # type: ignore[list-item]
        return ([self.features] if self.features else []) + [self.logits]

    def to_json(self) -> dict:
        d: dict[str, Any] = {
            "index": self.index,
            "file": self.file,
            "sha256": self.sha256,
            "inputs": [self.input.to_json()],
            "outputs": [t.to_json() for t in self.file_outputs],
            "macs": self.macs,
            "params": self.params,
        }
        if self.int8_file:
            d["int8_file"] = self.int8_file
        if self.fp16_file:
            d["fp16_file"] = self.fp16_file
        if self.head is not None:
            d["head"] = self.head.to_json()
        return d


@dataclass(frozen=True)
class Preprocess:
    """How raw pixels become the model's float input: ``(pixel * scale - mean) / std`` per channel."""

    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    channel_order: str  # "RGB" or "L" (grayscale)

    def to_json(self) -> dict:
        return {"scale": self.scale, "mean": list(self.mean), "std": list(self.std),
                "channel_order": self.channel_order, "raw_dtype": "uint8", "raw_layout": "HWC"}


@dataclass(frozen=True)
class Manifest:
    """Typed, validated view of ``manifest.json``; ``raw`` keeps every field, known or not."""

    raw: dict
    input: TensorSpec
    preprocess: Preprocess
    classes: tuple[str, ...]
    sections: tuple[SectionSpec, ...]
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256

    @property
    def num_exits(self) -> int:
        return len(self.sections)

    @property
    def format_version(self) -> int:
        return int(self.raw["format_version"])

    @property
    def head_sections(self) -> list[int]:
        """The sections (1-based) whose exit heads are graphs of their own (format version 2: 1..K-1)."""
        return [s.index for s in self.sections if s.head is not None]

    @property
    def split_heads(self) -> bool:
        """Whether the exit heads are graphs of their own (format version 2)."""
        return bool(self.head_sections)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def model(self) -> dict:
        return self.raw.get("model", {})

    @property
    def exits(self) -> list[dict]:
        return self.raw.get("exits", [])


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise BundleError(f"malformed manifest: {msg}")


def _get(d: dict, key: str, typ: type | tuple, where: str) -> Any:
    _require(key in d, f"{where}: missing key {key!r}")
    v = d[key]
    ok = isinstance(v, typ) and not (isinstance(v, bool) and typ in (int, float, (int, float)))
    _require(ok, f"{where}.{key}: expected {getattr(typ, '__name__', typ)}, got {type(v).__name__}")
    return v


def check_relpath(path: str, where: str) -> str:
    """A bundle-relative POSIX path that cannot escape the bundle folder."""
    _require(isinstance(path, str) and path != "", f"{where}: file path must be a non-empty string")
    norm = posixpath.normpath(path)
    bad = (path.startswith(("/", "\\")) or "\\" in path or ":" in path or norm.startswith("..")
           or norm == "." or "\x00" in path)
    if bad:
        raise BundleError(f"malformed manifest: {where}: path {path!r} escapes the bundle folder or is not a plain relative path")
    return norm


def _pixels_stay_finite(scale: float, mean: Sequence[float], std: Sequence[float]) -> bool:
    """Whether ``(pixel * scale - mean) / std``, in float32 as the runtimes compute it (``pixel * a + b``), is
    finite with a non-zero slope for every pixel value 0..255 and channel (native/src/manifest.cpp has the
    same rule): a value finite in JSON can still be 0 or Inf in float32."""
    with np.errstate(all="ignore"):
        sd = np.asarray(std, np.float32)
        a = np.float32(scale) / sd
        b = -np.asarray(mean, np.float32) / sd
        ends = np.float32(255) * a + b
    return bool(np.all(np.isfinite(a)) and np.all(a != 0) and np.all(np.isfinite(b)) and np.all(np.isfinite(ends)))


def _floats(values: list, where: str) -> tuple[float, ...]:
    """JSON numbers as floats; anything else (strings, null, lists, ints beyond float range) is a BundleError."""
    out = []
    for v in values:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        try:
            f = float(v) if ok else math.nan
        except OverflowError:
            ok = False
        _require(ok, f"{where} must hold numbers, got {v!r}"[:300])
        out.append(f)
    return tuple(out)


def _hex64(v: Any, where: str) -> str:
    _require(isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v),
             f"{where}: sha256 must be 64 lowercase hex digits")
    return v


def _count(d: dict, key: str, where: str) -> int | None:
    v = d.get(key)
    _require(v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 0),
             f"{where}.{key} must be a non-negative integer or null")
    return v


def _head(h: Any, where: str, features: TensorSpec) -> HeadSpec:
    """A version-2 section's ``head`` entry: its own graph from the section's features to its logits."""
    _require(isinstance(h, dict), f"{where} must be an object")
    file = check_relpath(_get(h, "file", str, where), f"{where}.file")
    sha = _hex64(_get(h, "sha256", str, where), f"{where}.sha256")
    ins, outs = _get(h, "inputs", list, where), _get(h, "outputs", list, where)
    _require(len(ins) == 1 and len(outs) == 1, f"{where} must have exactly one input (features) and one output (logits)")
    t_in = TensorSpec.from_json(ins[0], f"{where}.inputs[0]")
    _require(t_in.name == features.name and t_in.shape == features.shape,
             f"{where}: input must be the section's features {features.name!r} {list(features.shape)}, "
             f"got {t_in.name!r} {list(t_in.shape)}")
    logits = TensorSpec.from_json(outs[0], f"{where}.outputs[0]")
    extra = {}
    for key in ("int8_file", "fp16_file"):
        if h.get(key) is not None:
            extra[key] = check_relpath(h[key], f"{where}.{key}")
    return HeadSpec(file, sha, t_in, logits, _count(h, "macs", where), _count(h, "params", where), **extra)


def validate_manifest(raw: Any) -> Manifest:
    """Check ``raw`` (parsed JSON) against format version 1 or 2 and return the typed view.

    Raises :class:`FormatVersionError` for another format version and :class:`BundleError` naming the
    first problem otherwise.
    """
    version = check_format(raw, FORMAT, FORMAT_VERSIONS, "bundle", "manifest", "re-export the bundle")

    _require(isinstance(raw.get("model", {}), dict), "manifest.model must be an object (name, backbone, method, ...)")
    inp = _get(raw, "input", dict, "manifest")
    input_spec = TensorSpec.from_json(inp, "input")
    _require(len(input_spec.shape) == 4 and input_spec.shape[0] is None and all(input_spec.shape[1:]),
             f"input.shape must be [null, C, H, W], got {list(input_spec.shape)}")
    pre = _get(inp, "preprocess", dict, "input")
    channels = input_spec.shape[1]
    mean = _floats(_get(pre, "mean", list, "input.preprocess"), "input.preprocess.mean")
    std = _floats(_get(pre, "std", list, "input.preprocess"), "input.preprocess.std")
    scale = _floats([_get(pre, "scale", (int, float), "input.preprocess")], "input.preprocess.scale")[0]
    _require(len(mean) == channels and len(std) == channels,
             f"input.preprocess mean/std must have {channels} values (one per channel)")
    _require(all(math.isfinite(m) for m in mean), "input.preprocess mean must be finite")
    _require(all(s > 0 and math.isfinite(s) for s in std) and math.isfinite(scale) and scale > 0,
             "input.preprocess std and scale must be positive and finite")
    _require(_pixels_stay_finite(scale, mean, std),
             "input.preprocess (scale, mean, std) maps pixel values 0..255 to zero scale or beyond float32's "
             "finite range: values too small or too large for float32")
    order = pre.get("channel_order", "RGB" if channels == 3 else "L")
    _require(order in ("RGB", "BGR", "L"), f"input.preprocess.channel_order must be RGB, BGR or L, got {order!r}")
    preprocess = Preprocess(float(scale), mean, std, order)

    classes = _get(raw, "classes", list, "manifest")
    _require(len(classes) >= 2 and all(isinstance(c, str) for c in classes),
             "classes must be a list of at least two class names")

    secs = _get(raw, "sections", list, "manifest")
    _require(len(secs) >= 1, "sections must list at least one section")
    sections = []
    prev_out: TensorSpec = input_spec
    for i, s in enumerate(secs, start=1):
        where = f"sections[{i - 1}]"
        _require(isinstance(s, dict), f"{where} must be an object")
        file = check_relpath(_get(s, "file", str, where), f"{where}.file")
        sha = _hex64(_get(s, "sha256", str, where), f"{where}.sha256")
        ins = _get(s, "inputs", list, where)
        outs = _get(s, "outputs", list, where)
        _require(len(ins) == 1, f"{where}.inputs must hold exactly one tensor")
        t_in = TensorSpec.from_json(ins[0], f"{where}.inputs[0]")
        _require(t_in.name == input_name(i), f"{where}: input must be named {input_name(i)!r}, got {t_in.name!r}")
        _require(t_in.shape[1:] == prev_out.shape[1:],
                 f"{where}: input shape {list(t_in.shape)} does not match the previous output {list(prev_out.shape)}")
        last = i == len(secs)
        split = version == 2 and not last  # a version-2 trunk: features out, the head in its own graph
        _require(len(outs) == (1 if last or split else 2),
                 f"{where}.outputs must hold {'logits' if last else 'features' if split else 'features and logits'}")
        feats = None if last else TensorSpec.from_json(outs[0], f"{where}.outputs[0]")
        head = None
        if split:
            _require("head" in s, f"{where}: a format version 2 section other than the last must have a head")
            head = _head(s["head"], f"{where}.head", feats)  # type: ignore[arg-type]
            logits = head.logits
        else:
            _require("head" not in s, f"{where}: only format version 2 sections other than the last have a head")
            logits = TensorSpec.from_json(outs[-1], f"{where}.outputs[-1]")
        if feats is not None:
            _require(feats.name == features_name(i), f"{where}: features output must be named {features_name(i)!r}")
            _require(len(feats.shape) >= 2 and feats.shape[0] is None, f"{where}: features shape must start with a dynamic batch")
            prev_out = feats
        _require(logits.name == logits_name(i), f"{where}: logits output must be named {logits_name(i)!r}")
        _require(list(logits.shape) == [None, len(classes)],
                 f"{where}: logits shape must be [null, {len(classes)}], got {list(logits.shape)}")
        macs, params = _count(s, "macs", where), _count(s, "params", where)
        int8, fp16 = s.get("int8_file"), s.get("fp16_file")
        if int8 is not None:
            int8 = check_relpath(int8, f"{where}.int8_file")
        if fp16 is not None:
            fp16 = check_relpath(fp16, f"{where}.fp16_file")
        sections.append(SectionSpec(i, file, sha, t_in, feats, logits, macs, params, int8, fp16, head))

    files_raw = raw.get("files", {})
    _require(isinstance(files_raw, dict), "files must be an object mapping relative paths to {sha256}")
    files: dict[str, str] = {}
    for rel, info in files_raw.items():
        norm = check_relpath(rel, f"files[{rel!r}]")
        sha = info.get("sha256") if isinstance(info, dict) else info
        files[norm] = _hex64(sha, f"files[{rel!r}].sha256")
    for s in sections:
        extra = [("int8_file", s.int8_file), ("fp16_file", s.fp16_file)]
        if s.head is not None:
            extra += [("head.int8_file", s.head.int8_file), ("head.fp16_file", s.head.fp16_file)]
            _require((s.int8_file is None) == (s.head.int8_file is None),
                     f"sections[{s.index - 1}]: int8_file and head.int8_file must be given together")
            _require((s.fp16_file is None) == (s.head.fp16_file is None),
                     f"sections[{s.index - 1}]: fp16_file and head.fp16_file must be given together")
        for key, rel in extra:
            if rel:
                _require(rel in files, f"sections[{s.index - 1}].{key} {rel!r} is not listed in files")
    exits = raw.get("exits", [])
    _require(isinstance(exits, list), "exits must be a list")
    return Manifest(raw, input_spec, preprocess, tuple(classes), tuple(sections), files)

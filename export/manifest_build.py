"""Assemble ``manifest.json`` (format version 1 or 2) from the checkpoint metadata and the export's results.

The schema belongs to :mod:`sdedge.runtime.manifest`; this module only fills it in and always passes
the result through :func:`~sdedge.runtime.manifest.validate_manifest` before anyone writes it.

``model.data`` is the checkpoint's :class:`~sdedge.common.datasets.DataSpec` (``meta["data"]`` less
``preprocess``, which becomes ``input.preprocess``), copied as recorded once it parses; a checkpoint
that names no dataset gets ``null`` there, and one whose record does not parse is refused.
"""
from __future__ import annotations

import datetime as _dt
import platform
from dataclasses import dataclass
from typing import Any, Sequence

from ..common.errors import DataError, ExportError
from ..data import checkpoint_data_spec
from ..runtime.manifest import (FORMAT, FORMAT_VERSION, HeadSpec, SectionSpec, TensorSpec, features_name,
                                input_name, logits_name, validate_manifest)

# checkpoint meta keys represented elsewhere in the manifest (not copied into model.training)
_NOT_TRAINING = ("model", "data", "classes")


@dataclass
class HeadInfo:
    """A section's exit head as a graph of its own (format version 2)."""

    file: str
    sha256: str
    features_shape: list[int | None]
    logits_shape: list[int | None]
    macs: int | None
    params: int
    int8_file: str | None = None
    fp16_file: str | None = None


@dataclass
class SectionInfo:
    index: int
    file: str
    sha256: str
    input_shape: list[int | None]
    features_shape: list[int | None] | None
    logits_shape: list[int | None]
    macs: int | None
    params: int
    int8_file: str | None = None
    fp16_file: str | None = None
    head: HeadInfo | None = None  # format version 2: the head split off (macs/params above still include it)


def versions() -> dict[str, str]:
    import importlib

    from .. import __version__

    out = {"sdedge": __version__, "python": platform.python_version()}
    for mod in ("torch", "onnx", "onnxruntime", "onnxscript", "numpy"):
        try:
            out[mod] = str(importlib.import_module(mod).__version__)
        except (ImportError, AttributeError):
            pass
    return out


def _accuracies(meta: dict, split: str, k: int) -> list[float | None]:
    acc = (meta.get("accuracy") or {}).get(split) or {}
    exits = acc.get("exits") if isinstance(acc, dict) else None
    if not isinstance(exits, list) or len(exits) != k:
        return [None] * k
    return [float(a) if isinstance(a, (int, float)) and not isinstance(a, bool) else None for a in exits]


def build_manifest(meta: dict[str, Any], name: str, checkpoint_file: str, checkpoint_sha256: str,
                   sections: Sequence[SectionInfo], files: dict[str, str], full: dict[str, Any] | None,
                   parity: dict[str, Any] | None, int8: dict[str, Any] | None,
                   export_info: dict[str, Any], format_version: int = FORMAT_VERSION) -> dict[str, Any]:
    """The manifest as a JSON-able dict, already validated."""
    mcfg = meta.get("model") or {}
    dmeta = meta.get("data") or {}
    try:
        spec = checkpoint_data_spec(meta)  # None: the checkpoint names no dataset
    except DataError as e:
        raise ExportError(f"the checkpoint's data record is not usable: {e}") from None
    pre = dmeta.get("preprocess")
    if not isinstance(pre, dict):
        raise ExportError("the checkpoint has no data.preprocess (scale, mean, std, channel_order); "
                          "it cannot describe its input to a device")
    method = meta.get("method")
    method_name = method.get("name") if isinstance(method, dict) else method
    k = len(sections)
    classes = list(meta.get("classes") or [])
    c_in = sections[0].input_shape[1:]
    preprocess = {"scale": pre.get("scale", 1.0 / 255.0), "mean": list(pre.get("mean", [])),
                  "std": list(pre.get("std", [])), "channel_order": pre.get("channel_order", "RGB" if c_in[0] == 3 else "L"),
                  "raw_dtype": "uint8", "raw_layout": "HWC"}
    specs = []
    for s in sections:
        head = None
        if s.head is not None:
            head = HeadSpec(s.head.file, s.head.sha256, TensorSpec(features_name(s.index), tuple(s.head.features_shape)),
                            TensorSpec(logits_name(s.index), tuple(s.head.logits_shape)), s.head.macs, s.head.params,
                            s.head.int8_file, s.head.fp16_file)
        specs.append(SectionSpec(
            s.index, s.file, s.sha256, TensorSpec(input_name(s.index), tuple(s.input_shape)),
            TensorSpec(features_name(s.index), tuple(s.features_shape)) if s.features_shape is not None else None,
            TensorSpec(logits_name(s.index), tuple(s.logits_shape)), s.macs, s.params, s.int8_file,
            s.fp16_file, head).to_json())
    val, test = _accuracies(meta, "val", k), _accuracies(meta, "test", k)
    exits = []
    for i in range(k):
        e: dict[str, Any] = {"index": i + 1, "val_accuracy": val[i], "test_accuracy": test[i]}
        if int8:
            row = int8["exits"][i]
            e["int8_val_accuracy"] = row["int8_accuracy"]
            e["int8_top1_agreement"] = row["top1_agreement"]
        exits.append(e)
    raw: dict[str, Any] = {
        "format": FORMAT,
        "format_version": format_version,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "sdedge_version": versions()["sdedge"],
        "model": {
            "name": name,
            "backbone": mcfg.get("backbone"),
            "head": mcfg.get("head"),
            "method": method_name,
            "num_classes": len(classes),
            "num_exits": k,
            "dataset": spec.dataset if spec is not None else None,
            # the checkpoint's DataSpec, verbatim: calibrate re-creates the same validation split from it
            "data": spec.to_json() if spec is not None else None,
            "config": mcfg,
            "training": {key: v for key, v in meta.items() if key not in _NOT_TRAINING},
            "source_checkpoint": {"file": checkpoint_file, "sha256": checkpoint_sha256},
        },
        "input": {"name": input_name(1), "shape": list(sections[0].input_shape), "dtype": "float32",
                  "layout": "NCHW", "preprocess": preprocess},
        "classes": classes,
        "sections": specs,
        "exits": exits,
        "files": {rel: {"sha256": sha} for rel, sha in sorted(files.items())},
        "export": export_info,
        "versions": versions(),
    }
    if full is not None:
        raw["full"] = full
    if parity is not None:
        raw["parity"] = parity
    if int8 is not None:
        raw["int8"] = int8
    validate_manifest(raw)
    return raw

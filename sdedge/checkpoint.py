"""Checkpoints: plain tensors plus JSON metadata, written atomically, read with ``weights_only=True``.

Layout of the ``torch.save``'d dict::

    {"format": "sdedge-checkpoint", "format_version": 1,
     "meta": "<JSON string>",            # model config, data/preprocess, classes, method + hparams, accuracies, versions
     "state_dict": {name: Tensor},
     "sha256": "<hex>",                  # digest of meta + every state_dict tensor (name, dtype, shape, bytes)
     "train_state": {...} | absent}      # optimizer/scheduler/epoch, only in resumable "last.pt" files

Metadata is a JSON string so it stays JSON-able by construction. The digest catches altered or
bit-rotted weights and metadata, which ``torch.load`` itself would load silently (it does not check
the zip's CRCs); it is an integrity check, not a signature, and does not cover ``train_state``.
Anything else (a foreign state dict, a pickle carrying code, a truncated file, a newer format, a
digest mismatch) is refused with :class:`CheckpointError`.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import platform
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .common.atomic import write_bytes_atomic
from .common.errors import CheckpointError

FORMAT = "sdedge-checkpoint"
FORMAT_VERSION = 1
REQUIRED_META = ("model", "data", "classes", "method")


@dataclass
class Checkpoint:
    meta: dict
    state_dict: dict[str, torch.Tensor]
    train_state: dict[str, Any] | None = None
    path: Path | None = field(default=None, compare=False)


def library_versions() -> dict[str, str]:
    import numpy

    from . import __version__

    v = {"sdedge": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
         "python": platform.python_version()}
    try:
        import torchvision

        v["torchvision"] = torchvision.__version__
    except ImportError:
        pass
    return v


def content_digest(meta_json: str, state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 over the metadata string and every tensor's name, dtype, shape and raw bytes (sorted by name)."""
    h = hashlib.sha256(meta_json.encode("utf-8"))
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"\0{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode("utf-8"))
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def save_checkpoint(path: str | os.PathLike, meta: dict, state_dict: dict[str, torch.Tensor],
                    train_state: dict[str, Any] | None = None) -> Path:
    """Serialise to memory, then write atomically (temp file + fsync + rename)."""
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise CheckpointError(f"checkpoint metadata lacks {missing}")
    meta = dict(meta)
    meta.setdefault("versions", library_versions())
    meta_json = json.dumps(meta, sort_keys=True, allow_nan=False)
    sd = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    obj: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "meta": meta_json,
        "state_dict": sd,
        "sha256": content_digest(meta_json, sd),
    }
    if train_state is not None:
        obj["train_state"] = train_state
    buf = io.BytesIO()
    torch.save(obj, buf)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, buf.getvalue())
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str = "cpu") -> Checkpoint:
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder; give the checkpoint file (e.g. {path / 'best.pt'})")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message is several lines, among them advice to load with weights_only=False: never do that.
        # A global it refused to import means the file asks for code; anything else is a corrupt file.
        text = str(e)
        found = re.search(r"(unsupported GLOBAL [^\n]*|Unsupported global: [^\n]*)", text, re.IGNORECASE)
        if found:
            raise CheckpointError(f"{path} was refused: it carries pickled objects other than tensors and plain data "
                                  f"(possibly code), which sdedge never loads (read with weights_only=True: nothing in "
                                  f"it was run): {found.group(1).strip()}") from None
        why = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
        raise CheckpointError(f"{path} is not a readable checkpoint (corrupt: "
                              f"{why.group(1).strip() if why else 'not a pickle of tensors and plain data'})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable checkpoint (corrupt or truncated: {e})") from None
    except Exception as e:  # noqa: BLE001 - a damaged archive surfaces as KeyError, IndexError, UnicodeError, ...
        raise CheckpointError(f"{path} is not a readable checkpoint (corrupt: {type(e).__name__}: {e})") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an sdedge checkpoint (no 'format': {FORMAT!r}); "
                              "a bare state dict from another project cannot be used")
    ver = obj.get("format_version")
    if not isinstance(ver, int) or ver > FORMAT_VERSION or ver < 1:
        raise CheckpointError(f"{path}: checkpoint format_version {ver!r} is not supported "
                              f"(this sdedge reads version {FORMAT_VERSION}; upgrade sdedge)")
    try:
        meta = json.loads(obj["meta"])
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: metadata is missing or not JSON ({e})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: metadata must be a JSON object")
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise CheckpointError(f"{path}: metadata lacks required field(s) {missing}")
    sd = obj.get("state_dict")
    if not isinstance(sd, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()):
        raise CheckpointError(f"{path}: 'state_dict' must map names to tensors")
    digest = obj.get("sha256")
    if not isinstance(digest, str):
        raise CheckpointError(f"{path} has no content digest ('sha256'); it was not written by sdedge's save_checkpoint")
    actual = content_digest(obj["meta"], sd)
    if actual != digest:
        raise CheckpointError(f"{path} was altered or is corrupt: its content digest is {actual[:16]}..., "
                              f"the file records {digest[:16]}...")
    return Checkpoint(meta, sd, obj.get("train_state"), path)


def model_from_checkpoint(ckpt: Checkpoint | str | os.PathLike):
    """Rebuild the model described by a checkpoint and load its weights (strictly)."""
    from .models import ModelConfig, build_model

    if not isinstance(ckpt, Checkpoint):
        ckpt = load_checkpoint(ckpt)
    try:
        cfg = ModelConfig.from_json(ckpt.meta["model"])
        model = build_model(cfg, ckpt.state_dict)
    except (TypeError, KeyError, ValueError, RuntimeError) as e:  # RuntimeError: torch refusing the sizes
        raise CheckpointError(f"checkpoint model config is invalid: {str(e).splitlines()[0] if str(e) else e!r}") from None
    for name, t in ckpt.state_dict.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"checkpoint weights hold NaN or Inf (tensor {name!r}): the training diverged or "
                                  f"the file was edited; use an earlier checkpoint")
    try:
        model.load_state_dict(ckpt.state_dict, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint weights do not fit its model config: {' '.join(str(e).split())[:500]}") from None
    model.eval()
    return model

"""CIFAR-10 / CIFAR-100 reader for the official "python version" folders.

``cifar-100-python/{train,test,meta}`` and ``cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``:
pickled dicts with ``data`` (``[N, 3072]`` uint8, channel-major), ``fine_labels``/``labels`` and the
label names in ``meta``. The pickles are read with a restricted unpickler that only builds plain
containers, strings, numbers and numpy arrays, so a hostile file cannot run code.
``download=True`` uses torchvision's own downloader (needs a network).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..calibrate.datasets import load_cifar_pickle
from ..runtime.errors import DataError
from .base import ImageArrays

LAYOUT = {
    "cifar100": ("cifar-100-python", ["train"], ["test"], "meta", "fine_labels", "fine_label_names", 100),
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                "batches.meta", "labels", "label_names", 10),
}


_load = load_cifar_pickle


def find_folder(name: str, data_dir: str | os.PathLike | None, download: bool = False) -> Path:
    sub = LAYOUT[name][0]
    root = Path(data_dir or os.environ.get("SDEDGE_DATA") or "")
    if not str(root) or str(root) == ".":
        if not download:
            raise DataError(f"{name}: pass --data DIR (the folder holding {sub}/) or set SDEDGE_DATA, or use --download")
        root = Path.home() / ".cache" / "sdedge"
    for cand in (root / sub, root):
        if (cand / LAYOUT[name][3]).is_file():
            return cand
    if download:
        from torchvision import datasets  # lazily: only users with a network take this path

        cls = datasets.CIFAR100 if name == "cifar100" else datasets.CIFAR10
        cls(str(root), train=True, download=True)
        cls(str(root), train=False, download=True)
        return root / sub
    raise DataError(f"{name} not found: expected {root / sub}/{LAYOUT[name][3]} (the official python version); "
                    "point --data at the folder that holds it, or use --download")


def read(name: str, folder: Path) -> tuple[ImageArrays, ImageArrays, list[str]]:
    _sub, train_files, test_files, meta_file, label_key, names_key, ncls = LAYOUT[name]
    meta = _load(folder / meta_file)
    if names_key not in meta:
        raise DataError(f"{folder / meta_file}: missing key {names_key!r} (keys: {sorted(meta)})")
    classes = [c.decode() if isinstance(c, bytes) else str(c) for c in meta[names_key]]
    if len(classes) != ncls:
        raise DataError(f"{folder / meta_file}: {len(classes)} class names, expected {ncls}")

    def part(files: list[str]) -> ImageArrays:
        xs, ys = [], []
        for f in files:
            d = _load(folder / f)
            for key in ("data", label_key):
                if key not in d:
                    raise DataError(f"{folder / f}: missing key {key!r} (keys: {sorted(d)})")
            data = np.asarray(d["data"])
            labels = np.asarray(d[label_key], dtype=np.int64)
            if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
                raise DataError(f"{folder / f}: 'data' must be uint8 [N, 3072], got {data.dtype} {data.shape}")
            if labels.shape != (data.shape[0],) or (labels.size and (labels.min() < 0 or labels.max() >= ncls)):
                raise DataError(f"{folder / f}: labels do not match the data (count or range 0..{ncls - 1})")
            xs.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            ys.append(labels)
        return ImageArrays(np.ascontiguousarray(np.concatenate(xs)), np.concatenate(ys))

    return part(train_files), part(test_files), classes

"""Real images for the export checks: the checkpoint's dataset, preprocessed exactly as the bundle says.

Parity, INT8 calibration and the FP32-vs-INT8 accuracy report all read the data the checkpoint was
trained on (``meta['data']['dataset']``), from ``--data DIR``, else ``SDEDGE_DATA`` and the dataset's
default folders (:func:`sdedge.data.load_splits`). The validation split is rebuilt with the trainer's
hold-out size, seed and image limit when the checkpoint records them (``data.val_size``, ``data.seed``,
``data.limit``), so the accuracy reported here is measured on the images the trainer selected on.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..runtime.errors import DataError, ExportError


@dataclass
class ExportData:
    """Train (for INT8 calibration) and validation (for parity and accuracy) images, as uint8 NHWC."""

    name: str
    train_images: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray


def preprocess(images: np.ndarray, pre: dict[str, Any]) -> np.ndarray:
    """uint8 ``[N, H, W, C]`` -> float32 ``[N, C, H, W]`` via ``(pixel * scale - mean) / std``."""
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ExportError(f"expected uint8 images [N, H, W, C], got {images.dtype} {list(images.shape)}")
    scale = np.float32(pre["scale"])
    mean = np.asarray(pre["mean"], np.float32)[None, :, None, None]
    std = np.asarray(pre["std"], np.float32)[None, :, None, None]
    x = images.astype(np.float32).transpose(0, 3, 1, 2) * scale
    return np.ascontiguousarray((x - mean) / std, dtype=np.float32)


def load_export_data(meta: dict[str, Any], data_dir: str | os.PathLike | None) -> ExportData:
    """The checkpoint's dataset (raises :class:`DataError` naming what is missing)."""
    from ..data import load_splits

    dmeta = meta.get("data") or {}
    name = dmeta.get("dataset")
    if not name:
        raise DataError("the checkpoint does not name its dataset (meta data.dataset); pass --data with samples")
    kwargs: dict[str, Any] = {}
    if isinstance(dmeta.get("val_size"), int):
        kwargs["val_size"] = dmeta["val_size"]
    seed = dmeta.get("seed", dmeta.get("split_seed"))
    if isinstance(seed, int):
        kwargs["seed"] = seed
    if isinstance(dmeta.get("limit"), int):  # a run on the first N images holds out from those N
        kwargs["limit"] = dmeta["limit"]
    splits = load_splits(name, data_dir or dmeta.get("data_dir"), **kwargs)
    want_hw = tuple(dmeta.get("image_size") or meta.get("model", {}).get("image_size") or splits.image_size)
    want_c = dmeta.get("in_channels") or meta.get("model", {}).get("in_channels") or splits.in_channels
    if tuple(splits.image_size) != want_hw or splits.in_channels != want_c:
        raise DataError(f"dataset {name} has {splits.in_channels}x{splits.image_size[0]}x{splits.image_size[1]} "
                        f"images but the checkpoint expects {want_c}x{want_hw[0]}x{want_hw[1]}")
    return ExportData(splits.name, splits.train.images, splits.val.images, splits.val.labels)


def pick(n_total: int, n: int, seed: int = 0) -> np.ndarray:
    """``n`` sorted indices out of ``n_total``, seeded (all of them when ``n >= n_total``)."""
    if n >= n_total:
        return np.arange(n_total)
    return np.sort(np.random.default_rng(seed).choice(n_total, size=n, replace=False))

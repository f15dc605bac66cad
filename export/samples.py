"""Real images for the export checks: the checkpoint's dataset, preprocessed exactly as the bundle says.

Parity, INT8 calibration and the FP32-vs-INT8 accuracy report all read the data the checkpoint was
trained on, as its :class:`~sdedge.common.datasets.DataSpec` (``meta['data']``) says, from ``--data DIR``,
else ``SDEDGE_DATA`` and the dataset's default folders (:func:`sdedge.data.splits_for_spec`). The
validation split is rebuilt with the trainer's hold-out size, seed and image limit from that spec, so
the accuracy reported here is measured on the images the trainer selected on.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..common.errors import DataError, ExportError


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
    from ..data import checkpoint_data_spec, splits_for_spec

    spec = checkpoint_data_spec(meta)
    if spec is None:
        raise DataError("the checkpoint does not name its dataset (meta data.dataset); pass --data with samples")
    model = meta.get("model") or {}
    if spec.image_size is None or spec.in_channels is None:  # a record without the geometry: the model's
        spec = replace(spec, image_size=spec.image_size or model.get("image_size"),
                       in_channels=spec.in_channels or model.get("in_channels"))
    splits = splits_for_spec(spec, data_dir)
    return ExportData(splits.name, splits.train.images, splits.val.images, splits.val.labels)


def pick(n_total: int, n: int, seed: int = 0) -> np.ndarray:
    """``n`` sorted indices out of ``n_total``, seeded (all of them when ``n >= n_total``)."""
    if n >= n_total:
        return np.arange(n_total)
    return np.sort(np.random.default_rng(seed).choice(n_total, size=n, replace=False))

"""The training side of a dataset: the three splits with the statistics and metadata training needs.

:class:`DataSplits` holds train/val/test as :class:`~sdedge.common.datasets.ImageArrays` (read and split by
:mod:`sdedge.common.datasets`, the one reader every stage shares), plus the normalisation statistics
computed on the training split, the class names, whether horizontal flips are valid, and the
:class:`~sdedge.common.datasets.DataSpec` that rebuilds the same splits elsewhere.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..common.datasets import DataSpec, ImageArrays
from ..common.errors import DataError


@dataclass
class DataSplits:
    name: str
    train: ImageArrays
    val: ImageArrays
    test: ImageArrays
    classes: list[str]
    mean: list[float]  # per channel, in [0, 1] pixel units
    std: list[float]
    hflip: bool  # whether horizontal flips are a valid augmentation for this data
    channel_order: str  # "L" or "RGB"
    spec: DataSpec | None = None  # what the checkpoint records (hold-out size actually used, image geometry)

    @property
    def in_channels(self) -> int:
        return int(self.train.images.shape[3])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.train.images.shape[1]), int(self.train.images.shape[2])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def preprocess_json(self) -> dict:
        """What a client needs to turn raw uint8 pixels into the model input."""
        return {"scale": 1.0 / 255.0, "mean": self.mean, "std": self.std, "channel_order": self.channel_order}

    def split(self, name: str) -> ImageArrays:
        if name not in ("train", "val", "test"):
            raise DataError(f"unknown split {name!r}; expected train, val or test")
        return getattr(self, name)


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (at least 1e-3) of uint8 ``[N, H, W, C]`` images, in [0, 1] units."""
    x = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
    return [round(float(v), 6) for v in x.mean(0)], [round(float(max(v, 1e-3)), 6) for v in x.std(0)]

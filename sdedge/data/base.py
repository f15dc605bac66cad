"""In-memory image datasets as uint8 arrays, with the metadata a checkpoint and bundle need.

Every reader returns :class:`ImageArrays` (``images`` uint8 ``[N, H, W, C]``, ``labels`` int64 ``[N]``)
so channels and image size always come from the data. :class:`DataSplits` holds train/val/test plus
the normalisation statistics computed on the training split.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..runtime.errors import DataError


@dataclass
class ImageArrays:
    images: np.ndarray  # uint8 [N, H, W, C]
    labels: np.ndarray  # int64 [N]

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise DataError(f"images must be uint8 [N, H, W, C], got {self.images.dtype} {self.images.shape}")
        if self.labels.shape != (self.images.shape[0],):
            raise DataError(f"{self.images.shape[0]} images but labels of shape {self.labels.shape}")
        self.labels = self.labels.astype(np.int64, copy=False)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, idx: np.ndarray | slice) -> "ImageArrays":
        return ImageArrays(self.images[idx], self.labels[idx])


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
    x = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
    return [round(float(v), 6) for v in x.mean(0)], [round(float(max(v, 1e-3)), 6) for v in x.std(0)]


def holdout(train: ImageArrays, val_size: int, seed: int) -> tuple[ImageArrays, ImageArrays]:
    """Seeded random hold-out of ``val_size`` training images for validation.

    The indices come from :func:`sdedge.calibrate.datasets.holdout_indices`, the one implementation the
    torch-free calibrator also uses to find the same validation split on the device.
    """
    from ..calibrate.datasets import holdout_indices

    tr, va = holdout_indices(len(train), val_size, seed)
    return train.subset(tr), train.subset(va)

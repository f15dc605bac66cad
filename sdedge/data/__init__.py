"""Datasets by name: ``fashion-mnist``, ``cifar100``, ``cifar10``, ``digits`` (built-in example).

:func:`load_splits` returns train / validation (seeded hold-out from train) / official test, with
channel statistics from the training split, class names and whether horizontal flip is a valid
augmentation.
"""
from __future__ import annotations

import os

from ..runtime.errors import DataError
from .base import DataSplits, ImageArrays, channel_stats, holdout

DATASETS = ("fashion-mnist", "cifar100", "cifar10", "digits")


def load_splits(name: str, data_dir: str | os.PathLike | None = None, val_size: int | None = None,
                seed: int = 0, download: bool = False, limit: int | None = None) -> DataSplits:
    """Load dataset ``name``; ``limit`` keeps only the first N training and test images (tests)."""
    name = name.lower().replace("_", "-")
    if name in ("fashionmnist", "fmnist"):
        name = "fashion-mnist"
    if name == "fashion-mnist":
        from . import fashion_mnist as fm

        folder = fm.find_folder(data_dir)
        train, test = fm.read_split(folder, "train", limit), fm.read_split(folder, "test", limit)
        classes, hflip, order = list(fm.CLASSES), True, "L"
        default_val = 5000
    elif name in ("cifar100", "cifar10"):
        from . import cifar

        folder = cifar.find_folder(name, data_dir, download)
        train, test, classes = cifar.read(name, folder)
        if limit:
            train, test = train.subset(slice(0, limit)), test.subset(slice(0, limit))
        hflip, order, default_val = True, "RGB", 5000
    elif name == "digits":
        from . import digits

        train, test, classes = digits.read(seed=0)
        if limit:
            train, test = train.subset(slice(0, limit)), test.subset(slice(0, limit))
        hflip, order, default_val = False, "L", 200
    else:
        raise DataError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    if val_size is None:
        val_size = min(default_val, len(train) // 10) if limit else default_val
    train, val = holdout(train, val_size, seed)
    mean, std = channel_stats(train.images)
    return DataSplits(name, train, val, test, classes, mean, std, hflip, order)


__all__ = ["DATASETS", "DataSplits", "ImageArrays", "load_splits"]

"""Datasets for training, by name: ``fashion-mnist``, ``cifar100``, ``cifar10``, ``digits`` (built-in example).

:func:`load_splits` returns train / validation (seeded hold-out from train) / official test, with
channel statistics from the training split, class names and whether horizontal flip is a valid
augmentation. Reading, the name aliases, the limit and the hold-out rule are
:mod:`sdedge.common.datasets` (shared with export and the torch-free calibrator); this package adds
what only training needs: the statistics, the CIFAR download (:mod:`.cifar`) and the batch
augmentation (:mod:`.augment`, torch).

The checkpoint's ``meta["data"]`` is the run's :class:`~sdedge.common.datasets.DataSpec` (its JSON
form) plus ``preprocess`` (the normalisation the model expects): :func:`checkpoint_data` writes it,
:func:`checkpoint_data_spec` reads it back. Export copies that spec into the manifest as ``model.data``.
Checkpoints that name no dataset give ``None``; ones whose ``data`` lacks a field (hand-written ones:
the trainer has always written them all) read it as the spec's default (``val_size`` None: the
default hold-out rule, ``seed`` 0, no limit, geometry unchecked).
"""
from __future__ import annotations

import os
from typing import Any, Mapping

from ..common.dataset_files import CIFAR
from ..common.datasets import (DATASETS, DataSpec, ImageArrays, find_folder, read_classes, read_split)
from ..common.errors import DataError
from .base import DataSplits, channel_stats


def load_splits(name: str, data_dir: str | os.PathLike | None = None, val_size: int | None = None,
                seed: int = 0, download: bool = False, limit: int | None = None) -> DataSplits:
    """Load dataset ``name``; ``limit`` keeps only the first N training and test images (tests)."""
    spec = DataSpec(name, val_size, seed, limit or None)
    name = spec.dataset
    if name in CIFAR:
        from . import cifar

        folder = cifar.find_folder(name, data_dir, download)
    else:
        folder = find_folder(name, data_dir)
    classes = read_classes(name, folder)
    full = read_split(name, "train", folder, spec.limit)
    test = read_split(name, "test", folder, spec.limit)
    train, val = spec.split_train(full)
    mean, std = channel_stats(train.images)
    info = spec.info
    return DataSplits(name, train, val, test, classes, mean, std, info.hflip, info.channel_order,
                      spec.with_data(train, val))


def splits_for_spec(spec: DataSpec, data_dir: str | os.PathLike | None = None, download: bool = False) -> DataSplits:
    """The splits ``spec`` describes (same hold-out), checked against its image geometry."""
    splits = load_splits(spec.dataset, data_dir, spec.val_size, spec.seed, download, spec.limit)
    spec.check_geometry(splits.train, f"dataset {spec.dataset}")
    return splits


def checkpoint_data(splits: DataSplits) -> dict[str, Any]:
    """What training writes under the checkpoint's ``meta["data"]``: the spec's JSON plus ``preprocess``."""
    if splits.spec is None:
        raise DataError("these splits carry no data spec (build them with load_splits)")
    return {**splits.spec.to_json(), "preprocess": splits.preprocess_json()}


def checkpoint_data_spec(meta: Mapping[str, Any]) -> DataSpec | None:
    """The :class:`DataSpec` in checkpoint metadata (``None`` if it names no dataset; :class:`DataError` if bad)."""
    data = meta.get("data")
    if data is None:
        return None
    if not isinstance(data, Mapping):
        raise DataError(f"checkpoint meta 'data' must be an object, got {type(data).__name__}")
    if data.get("dataset") is None:
        return None
    try:
        return DataSpec.from_json({k: v for k, v in data.items() if k != "preprocess"})
    except DataError as e:
        raise DataError(f"checkpoint meta 'data': {e}") from None


__all__ = ["DATASETS", "DataSpec", "DataSplits", "ImageArrays", "checkpoint_data", "checkpoint_data_spec",
           "load_splits", "splits_for_spec"]

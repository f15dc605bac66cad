"""Datasets by name, and the rule that splits them: the one implementation every stage uses.

Training (``sdedge.data.load_splits``), export (parity and INT8 images) and the torch-free calibrator
all read a dataset through this module, so they see the same images in the same order and hold out
the same validation split:

* names: ``fashion-mnist`` (aliases ``fashionmnist``, ``fmnist``; ``_`` reads as ``-``, any case),
  ``cifar100``, ``cifar10``, ``digits`` (:func:`canonical_name`);
* the limit rule: ``limit=N`` keeps only the first N images of the official train and test splits
  (:func:`read_split`);
* the validation hold-out: ``val_size`` images drawn at random (seeded) from the (limited) training
  split, the rest train on (:func:`holdout_indices`); ``val_size=None`` means the dataset's default,
  5 000 (200 for ``digits``), or 10 % of the training split (capped there) when a limit is set
  (:func:`resolve_val_size`);
* :class:`DataSpec`: the record that says which data a model was trained and selected on (dataset,
  hold-out size, seed, limit, and the image geometry the model takes). Training writes it into the
  checkpoint, export copies it into the manifest (``model.data``), calibration reads it back; its JSON
  form is checked on the way in (:meth:`DataSpec.from_json`).

The file formats themselves are read in :mod:`sdedge.common.dataset_files`. Imports numpy and the rest
of ``sdedge.common`` only (scikit-learn lazily, for ``digits``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from types import MappingProxyType
from pathlib import Path
from typing import Any, ClassVar, Mapping

import numpy as np

from . import dataset_files as files
from .errors import DataError


@dataclass(frozen=True)
class DatasetInfo:
    """What is fixed about a dataset, whatever folder it is read from."""

    name: str
    channel_order: str  # "L" or "RGB"
    hflip: bool  # whether a horizontal flip is a valid augmentation
    default_val_size: int  # the hold-out when none is asked for and no limit is set


DATASETS = ("fashion-mnist", "cifar100", "cifar10", "digits")
INFO = MappingProxyType({
    "fashion-mnist": DatasetInfo("fashion-mnist", "L", True, 5000),
    "cifar100": DatasetInfo("cifar100", "RGB", True, 5000),
    "cifar10": DatasetInfo("cifar10", "RGB", True, 5000),
    "digits": DatasetInfo("digits", "L", False, 200),
})
ALIASES = MappingProxyType({"fashionmnist": "fashion-mnist", "fmnist": "fashion-mnist"})


def canonical_name(name: str) -> str:
    """The dataset's canonical name (``fmnist`` -> ``fashion-mnist``); :class:`DataError` if unknown."""
    key = str(name).lower().replace("_", "-")
    key = ALIASES.get(key, key)
    if key not in INFO:
        raise DataError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    return key


@dataclass
class ImageArrays:
    """uint8 images ``[N, H, W, C]`` with int64 labels ``[N]`` (checked), so shapes come from the data."""

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


# -- folders and files ------------------------------------------------------------------------------------------
def find_folder(name: str, data_dir: str | os.PathLike | None, alternative: str = "") -> Path | None:
    """Where dataset ``name`` lies (``None`` for ``digits``, which ships with scikit-learn).

    ``alternative`` ends a CIFAR not-found message with what else the user can do.
    """
    name = canonical_name(name)
    if name == "fashion-mnist":
        return files.find_fashion_mnist(data_dir)
    if name in files.CIFAR:
        return files.find_cifar(name, data_dir, alternative)
    return None


def describe_source(folder: Path | None) -> str:
    """Where the images came from, for reports: the folder, or ``scikit-learn digits``."""
    return str(folder) if folder is not None else "scikit-learn digits"


def apply_limit(arrays: ImageArrays, limit: int | None) -> ImageArrays:
    """The limit rule: the first ``limit`` images (all of them when ``limit`` is None or 0)."""
    if not limit:
        return arrays
    return ImageArrays(np.ascontiguousarray(arrays.images[:limit]), arrays.labels[:limit])


def read_split(name: str, split: str, folder: Path | None, limit: int | None = None) -> ImageArrays:
    """The official ``train`` or ``test`` split of ``name`` read from ``folder`` (see :func:`find_folder`),
    cut to its first ``limit`` images."""
    name = canonical_name(name)
    if split not in ("train", "test"):
        raise DataError(f"the files hold the official 'train' and 'test' splits, not {split!r}")
    if name == "digits":
        images, labels = files.read_digits(split)
    elif folder is None:
        raise DataError(f"{name}: no dataset folder given")
    elif name == "fashion-mnist":
        images, labels = files.read_fashion_mnist(folder, split)
    else:
        images, labels = files.read_cifar(name, folder, split)
    return apply_limit(ImageArrays(np.ascontiguousarray(images), labels), limit)


def read_classes(name: str, folder: Path | None) -> list[str]:
    """The class names, in label order (CIFAR's come from the folder's meta file)."""
    name = canonical_name(name)
    if name == "fashion-mnist":
        return list(files.FASHION_MNIST_CLASSES)
    if name == "digits":
        return list(files.DIGITS_CLASSES)
    if folder is None:
        raise DataError(f"{name}: no dataset folder given")
    return files.read_cifar_classes(name, folder)


# -- the hold-out ----------------------------------------------------------------------------------------------
def resolve_val_size(name: str, val_size: int | None, n_train: int, limit: int | None) -> int:
    """``val_size``, or the default: the dataset's (5 000; 200 for digits), at most 10 % under a limit."""
    if val_size is not None:
        return int(val_size)
    default = INFO[canonical_name(name)].default_val_size
    return min(default, n_train // 10) if limit else default


def holdout_indices(n: int, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices of a seeded random hold-out of ``val_size`` among ``n`` items, sorted."""
    if not 0 <= val_size < n:
        raise DataError(f"validation size {val_size} must be between 0 and {n - 1} (training set size minus one)")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[val_size:]), np.sort(perm[:val_size])


def holdout(train: ImageArrays, val_size: int, seed: int) -> tuple[ImageArrays, ImageArrays]:
    """Seeded random hold-out of ``val_size`` training images: ``(train rest, validation)``."""
    tr, va = holdout_indices(len(train), val_size, seed)
    return train.subset(tr), train.subset(va)


# -- the record of which data a model saw --------------------------------------------------------------------------
def _int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


@dataclass(frozen=True)
class DataSpec:
    """Which data a model was trained and selected on: enough to rebuild the same splits anywhere.

    ``dataset`` (canonical name), ``val_size`` (the hold-out size; None: the default rule of
    :func:`resolve_val_size`; training always records the number it used), ``seed`` (of the hold-out),
    ``limit`` (first N train/test images; None: all), and the image geometry the model takes
    (``image_size`` ``(H, W)``, ``in_channels``; None where not recorded), which readers check the data
    at hand against. Values are checked on construction (:class:`DataError`).
    """

    dataset: str
    val_size: int | None = None
    seed: int = 0
    limit: int | None = None
    image_size: tuple[int, int] | None = None
    in_channels: int | None = None

    FIELDS: ClassVar[tuple[str, ...]] = ("dataset", "val_size", "seed", "limit", "image_size", "in_channels")

    def __post_init__(self) -> None:
        if not isinstance(self.dataset, str) or not self.dataset:
            raise DataError(f"data spec: dataset must be a dataset name, got {self.dataset!r}")
        object.__setattr__(self, "dataset", canonical_name(self.dataset))
        if self.val_size is not None and not (_int(self.val_size) and self.val_size >= 0):
            raise DataError(f"data spec: val_size must be an integer >= 0 or null, got {self.val_size!r}")
        if not (_int(self.seed) and self.seed >= 0):
            raise DataError(f"data spec: seed must be an integer >= 0, got {self.seed!r}")
        if self.limit is not None and not (_int(self.limit) and self.limit >= 1):
            raise DataError(f"data spec: limit must be an integer >= 1 or null, got {self.limit!r}")
        if self.image_size is not None:
            hw = self.image_size
            if not (isinstance(hw, (list, tuple)) and len(hw) == 2 and all(_int(v) and v >= 1 for v in hw)):
                raise DataError(f"data spec: image_size must be [height, width] (positive integers) or null, got {hw!r}")
            object.__setattr__(self, "image_size", (int(hw[0]), int(hw[1])))
        if self.in_channels is not None and not (_int(self.in_channels) and self.in_channels >= 1):
            raise DataError(f"data spec: in_channels must be an integer >= 1 or null, got {self.in_channels!r}")
        for f in ("val_size", "seed", "limit", "in_channels"):
            v = getattr(self, f)
            if v is not None:
                object.__setattr__(self, f, int(v))

    def to_json(self) -> dict[str, Any]:
        """Every field, JSON-able (``image_size`` as a list)."""
        return {"dataset": self.dataset, "val_size": self.val_size, "seed": self.seed, "limit": self.limit,
                "image_size": list(self.image_size) if self.image_size is not None else None,
                "in_channels": self.in_channels}

    @classmethod
    def from_json(cls, obj: Any) -> "DataSpec":
        """Parse and check :meth:`to_json`'s form; only ``dataset`` is required, unknown keys are refused."""
        if not isinstance(obj, Mapping):
            raise DataError(f"data spec must be a JSON object, got {type(obj).__name__}")
        unknown = sorted(set(obj) - set(cls.FIELDS))
        if unknown:
            raise DataError(f"data spec: unknown keys {unknown} (expected some of {list(cls.FIELDS)})")
        if obj.get("dataset") is None:
            raise DataError("data spec: missing 'dataset' (which dataset the model was trained on)")
        kw = {k: obj[k] for k in cls.FIELDS if k in obj}
        if kw.get("seed") is None:
            kw.pop("seed", None)
        return cls(**kw)

    @property
    def info(self) -> DatasetInfo:
        return INFO[self.dataset]

    def resolved_val_size(self, n_train: int) -> int:
        """The hold-out size on a (limited) training split of ``n_train`` images."""
        return resolve_val_size(self.dataset, self.val_size, n_train, self.limit)

    def split_train(self, full_train: ImageArrays) -> tuple[ImageArrays, ImageArrays]:
        """``(train, val)`` from the (limited) official training split, by the seeded hold-out."""
        return holdout(full_train, self.resolved_val_size(len(full_train)), self.seed)

    def with_data(self, train: ImageArrays, val: ImageArrays) -> "DataSpec":
        """This spec with what the data turned out to be: the hold-out size used and the image geometry."""
        return replace(self, val_size=len(val), image_size=(int(train.images.shape[1]), int(train.images.shape[2])),
                       in_channels=int(train.images.shape[3]))

    def check_geometry(self, arrays: ImageArrays, what: str = "the data at hand") -> None:
        """:class:`DataError` if ``arrays`` are not the ``in_channels``×``image_size`` images recorded here."""
        h, w, c = (int(v) for v in arrays.images.shape[1:])
        want_hw = self.image_size or (h, w)
        want_c = self.in_channels or c
        if (h, w) != tuple(want_hw) or c != want_c:
            raise DataError(f"{what} has images of {c}x{h}x{w} but the checkpoint expects "
                            f"{want_c}x{want_hw[0]}x{want_hw[1]}")


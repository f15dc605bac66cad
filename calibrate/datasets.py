"""Calibration data: the validation split the model was trained *without*, found from the bundle.

``sdedge calibrate`` runs on the target device, where the training core is not importable; the
dataset readers, the name aliases, the limit and the seeded hold-out are the torch-free ones in
:mod:`sdedge.common.datasets`, the same functions training split its data with, so the validation
images here are exactly ``sdedge.data.load_splits(...).val`` (tests check it). What this module adds:

* :func:`dataset_spec`: the bundle's :class:`~sdedge.common.datasets.DataSpec`, read from the one place
  export puts it, ``manifest["model"]["data"]`` (copied verbatim from the checkpoint's ``meta["data"]``).
  A manifest without ``model.data`` (hand-written ones; every export has written it) falls back to what
  older readers used: the dataset from ``model.dataset`` and ``val_size`` / ``seed`` / ``limit`` from
  the training configuration (``model.training.hparams``), defaults where absent;
* :func:`load_calibration_split`: that split as :class:`LabelledImages` with a description of its source;
* :func:`load_arrays` / :func:`optional_arrays`: any other data, as ``--images X.npy --labels Y.npy``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from sdedge.common.datasets import DataSpec, describe_source, find_folder, read_split
from sdedge.common.errors import DataError

ARRAYS_HINT = "pass calibration images with --images X.npy --labels Y.npy"


@dataclass
class LabelledImages:
    """Raw uint8 images ``[N, H, W, C]`` with int64 labels, and where they came from."""

    images: np.ndarray
    labels: np.ndarray
    source: str
    split: str


def check_labels_in_range(lab: LabelledImages, num_classes: int, what: str = "labels") -> None:
    """:class:`DataError` unless every label is a class index of the bundle, ``0..num_classes-1``."""
    if lab.labels.size and (lab.labels.min() < 0 or lab.labels.max() >= num_classes):
        raise DataError(f"{what} must lie in 0..{num_classes - 1}, found {int(lab.labels.min())}..{int(lab.labels.max())}")


def dataset_spec(manifest: Any) -> DataSpec:
    """The :class:`DataSpec` of the data the bundle was trained on (a manifest object or its raw dict)."""
    model = manifest.raw.get("model", {}) if hasattr(manifest, "raw") else dict(manifest.get("model", {}))
    data = model.get("data")
    if data:
        try:
            return DataSpec.from_json(data)
        except DataError as e:
            raise DataError(f"the bundle's data spec (manifest model.data) is not usable: {e}; {ARRAYS_HINT}") from None
    hp = (model.get("training") or {}).get("hparams") or {}
    name = model.get("dataset") or hp.get("dataset")
    if not name:
        raise DataError(f"the bundle does not say which dataset it was trained on (manifest model.data); {ARRAYS_HINT}")
    try:
        return DataSpec(str(name), hp.get("val_size"), hp.get("seed") or 0, hp.get("limit") or None)
    except DataError as e:
        raise DataError(f"{e}; {ARRAYS_HINT}") from None


def load_calibration_split(manifest: Any, data_dir: str | os.PathLike | None = None, split: str = "val") -> LabelledImages:
    """The ``split`` (``val``: the training hold-out; ``test``; ``train``: the rest) of the bundle's dataset."""
    if split not in ("val", "test", "train"):
        raise DataError(f"unknown split {split!r}; expected val, test or train")
    spec = dataset_spec(manifest)
    name = spec.dataset
    folder = find_folder(name, data_dir, alternative="pass --images X.npy --labels Y.npy")
    where = describe_source(folder)
    if split == "test":
        test = read_split(name, "test", folder, spec.limit)
        return LabelledImages(test.images, test.labels, f"{name} test ({where})", "test")
    train, val = spec.split_train(read_split(name, "train", folder, spec.limit))
    out = val if split == "val" else train
    return LabelledImages(out.images, out.labels,
                          f"{name} {split} split (hold-out of {len(val)}, seed {spec.seed}; {where})", split)


def load_arrays(images_path: str | os.PathLike, labels_path: str | os.PathLike) -> LabelledImages:
    """Calibration data from two ``.npy`` files (pickles refused)."""
    out = []
    for p in (images_path, labels_path):
        try:
            out.append(np.load(p, allow_pickle=False))
        except FileNotFoundError:
            raise DataError(f"calibration array {p} does not exist") from None
        except (ValueError, OSError) as e:
            raise DataError(f"{p} is not a readable .npy array ({e})") from None
    images, labels = out
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"labels {labels_path} must be a 1-D integer array, got {labels.dtype} {list(labels.shape)}")
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{images.shape[0]} images in {images_path} but {labels.shape[0]} labels in {labels_path}")
    return LabelledImages(images, labels.astype(np.int64), f"arrays {images_path}, {labels_path}", "given")


def optional_arrays(images_path: str | os.PathLike | None,
                    labels_path: str | os.PathLike | None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``--images X.npy --labels Y.npy`` as arrays, ``(None, None)`` when neither is given."""
    if (images_path is None) != (labels_path is None):
        raise DataError("--images and --labels go together")
    if images_path is None:
        return None, None
    arrs = load_arrays(images_path, labels_path)
    return arrs.images, arrs.labels

"""Fashion-MNIST (and MNIST-format) reader: the four IDX files, gzip-compressed or not.

Looks in ``--data DIR`` (or ``SDEDGE_DATA``), then Debian's ``/usr/share/datasets/fashion-mnist``.
Checks magic numbers, dimensions and file sizes, and says which file is wrong. The byte-level IDX
parsing is shared with the torch-free calibration reader (:mod:`sdedge.calibrate.datasets`).
"""
from __future__ import annotations

import os
from pathlib import Path

from ..calibrate.datasets import find_fashion_mnist, read_fashion_mnist
from .base import ImageArrays

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")


def find_folder(data_dir: str | os.PathLike | None) -> Path:
    """``data_dir``, else ``$SDEDGE_DATA``, else Debian's folder (or their ``fashion-mnist/`` subfolder)."""
    return find_fashion_mnist(data_dir)


def read_split(folder: Path, split: str, limit: int | None = None) -> ImageArrays:
    return ImageArrays(*read_fashion_mnist(folder, split, limit))

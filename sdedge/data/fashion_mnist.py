"""Fashion-MNIST (and MNIST-format) reader: the four IDX files, gzip-compressed or not.

Looks in ``--data DIR`` (or ``SDEDGE_DATA``), then Debian's ``/usr/share/datasets/fashion-mnist``.
Checks magic numbers, dimensions and file sizes, and says which file is wrong.
"""
from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np

from ..runtime.errors import DataError
from .base import ImageArrays

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")


def _open(folder: Path, stem: str) -> bytes:
    for name in (stem + ".gz", stem):
        p = folder / name
        if p.is_file():
            try:
                if name.endswith(".gz"):
                    with gzip.open(p, "rb") as f:
                        return f.read()
                return p.read_bytes()
            except (OSError, EOFError) as e:
                raise DataError(f"{p} is not a readable IDX file ({e})") from None
    raise DataError(f"Fashion-MNIST file {stem}(.gz) not found in {folder}")


def parse_idx(data: bytes, expect_ndim: int, name: str, limit: int | None = None) -> np.ndarray:
    """Parse an IDX ubyte array; ``limit`` reads only the first ``limit`` items."""
    magic = 0x800 + expect_ndim
    if len(data) < 4 + 4 * expect_ndim:
        raise DataError(f"{name}: file too short for an IDX header ({len(data)} bytes)")
    got = struct.unpack(">I", data[:4])[0]
    if got != magic:
        raise DataError(f"{name}: wrong IDX magic number {got} (expected {magic}: unsigned bytes, {expect_ndim} dims)")
    dims = struct.unpack(f">{expect_ndim}I", data[4:4 + 4 * expect_ndim])
    header = 4 + 4 * expect_ndim
    expected = int(np.prod(dims)) + header
    if len(data) != expected:
        raise DataError(f"{name}: size {len(data)} bytes does not match its header {dims} ({expected} bytes expected)")
    n = dims[0] if limit is None else min(limit, dims[0])
    per = int(np.prod(dims[1:])) if expect_ndim > 1 else 1
    arr = np.frombuffer(data, np.uint8, count=n * per, offset=header)
    return arr.reshape((n,) + tuple(dims[1:]))


def find_folder(data_dir: str | os.PathLike | None) -> Path:
    cands = [Path(data_dir)] if data_dir else []
    env = os.environ.get("SDEDGE_DATA")
    if not data_dir and env:
        cands.append(Path(env))
    if not data_dir:
        cands.append(DEBIAN_DIR)
    for c in cands:
        for sub in (c, c / "fashion-mnist", c / "FashionMNIST" / "raw"):
            if (sub / "train-images-idx3-ubyte.gz").is_file() or (sub / "train-images-idx3-ubyte").is_file():
                return sub
    where = ", ".join(str(c) for c in cands) or "(nowhere: pass --data DIR or set SDEDGE_DATA)"
    raise DataError(f"Fashion-MNIST not found in {where}; expected train-images-idx3-ubyte.gz and friends "
                    "(Debian: apt-get install dataset-fashion-mnist)")


def read_split(folder: Path, split: str, limit: int | None = None) -> ImageArrays:
    img_stem, lbl_stem = FILES[split]
    images = parse_idx(_open(folder, img_stem), 3, img_stem, limit)
    labels = parse_idx(_open(folder, lbl_stem), 1, lbl_stem, limit)
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{img_stem} has {images.shape[0]} images but {lbl_stem} has {labels.shape[0]} labels")
    if labels.size and labels.max() >= len(CLASSES):
        raise DataError(f"{lbl_stem}: label {int(labels.max())} out of range for {len(CLASSES)} classes")
    return ImageArrays(np.ascontiguousarray(images[..., None]), labels.astype(np.int64))

"""Torch-free readers of the official dataset files, and the folder finders, each written once.

* Fashion-MNIST (and MNIST-format): the four IDX files, gzip-compressed or not. The folder is
  ``--data DIR``, else ``$SDEDGE_DATA``, else Debian's ``/usr/share/datasets/fashion-mnist`` (or a
  ``fashion-mnist/`` / ``FashionMNIST/raw`` folder under any of them). Magic numbers, dimensions and
  file sizes are checked, and an error names the file that is wrong.
* CIFAR-10 / CIFAR-100, the official "python version" folders (``cifar-100-python/{train,test,meta}``,
  ``cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``): pickled dicts read with a
  restricted unpickler that only builds plain containers, strings, numbers and numpy arrays, so a
  hostile file cannot run code. ``data`` (``[N, 3072]`` uint8, channel-major) becomes ``[N, 32, 32, 3]``.
* ``digits``, the built-in example: scikit-learn's bundled handwritten digits (1 797 images, 8×8,
  10 classes; scikit-learn is imported only here, lazily). Pixels (0-16) are rescaled to 0-255 and
  upsampled 2× to 16×16 so four-stage backbones keep some spatial extent; there is no official test
  split, so a fixed seeded 25 % is the test split.

Every reader returns ``(images, labels)``: uint8 ``[N, H, W, C]`` and int64 ``[N]``, the whole official
split. Which split, how many images (the limit) and the validation hold-out are decided by
:mod:`sdedge.common.datasets`, which is what the stages call.
"""
from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from .errors import DataError

Arrays = tuple[np.ndarray, np.ndarray]  # uint8 images [N, H, W, C], int64 labels [N]

# -- Fashion-MNIST -----------------------------------------------------------------------------------------------
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = MappingProxyType({"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")})


def parse_idx(data: bytes, expect_ndim: int, name: str, limit: int | None = None) -> np.ndarray:
    """Parse an IDX unsigned-byte array; ``limit`` reads only the first ``limit`` items."""
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
    return np.frombuffer(data, np.uint8, count=n * per, offset=header).reshape((n,) + tuple(dims[1:]))


def read_idx_bytes(folder: Path, stem: str) -> bytes:
    """The decompressed bytes of IDX file ``stem`` (``.gz`` or plain) in ``folder``."""
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


def named_data_dir(data_dir: str | os.PathLike | None) -> str | os.PathLike | None:
    """The data folder the user named: ``data_dir`` (``--data``), else ``$SDEDGE_DATA``; None when neither."""
    return data_dir or os.environ.get("SDEDGE_DATA") or None


def find_fashion_mnist(data_dir: str | os.PathLike | None) -> Path:
    """``data_dir``, else ``$SDEDGE_DATA``, else Debian's folder (or their ``fashion-mnist/`` subfolder)."""
    named = named_data_dir(data_dir)
    cands = ([Path(named)] if named else []) + ([] if data_dir else [DEBIAN_FASHION_MNIST])
    for c in cands:
        for sub in (c, c / "fashion-mnist", c / "FashionMNIST" / "raw"):
            if (sub / "train-images-idx3-ubyte.gz").is_file() or (sub / "train-images-idx3-ubyte").is_file():
                return sub
    raise DataError(f"Fashion-MNIST not found in {', '.join(map(str, cands)) or '(nowhere)'}; pass --data DIR "
                    "(the folder holding train-images-idx3-ubyte.gz) or --images X.npy --labels Y.npy")


def read_fashion_mnist(folder: Path, split: str) -> Arrays:
    """The official ``train`` (60 000) or ``test`` (10 000) split, as ``[N, 28, 28, 1]`` images."""
    img_stem, lbl_stem = IDX_FILES[split]
    images = parse_idx(read_idx_bytes(folder, img_stem), 3, img_stem)
    labels = parse_idx(read_idx_bytes(folder, lbl_stem), 1, lbl_stem)
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{img_stem} has {images.shape[0]} images but {lbl_stem} has {labels.shape[0]} labels")
    if labels.size and labels.max() >= 10:
        raise DataError(f"{lbl_stem}: label {int(labels.max())} out of range for 10 classes")
    return images[..., None], labels.astype(np.int64)


# -- CIFAR -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CifarLayout:
    """Where one CIFAR variant keeps what, in its official python-version folder."""

    folder: str  # the folder name inside the dataset root
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str  # the class names; also the file that marks the folder
    label_key: str
    names_key: str
    num_classes: int


CIFAR = MappingProxyType({
    "cifar100": CifarLayout("cifar-100-python", ("train",), ("test",), "meta", "fine_labels", "fine_label_names", 100),
    "cifar10": CifarLayout("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
                           "batches.meta", "labels", "label_names", 10),
})


class _PlainUnpickler(pickle.Unpickler):
    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar"), ("_codecs", "encode"),
                # pickle protocol 5 (numpy >= 1.16 re-saves): np.frombuffer(bytes, dtype).reshape(shape)
                ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise DataError(f"refusing to unpickle {module}.{name}: CIFAR files hold only plain data")


def load_cifar_pickle(path: Path) -> dict:
    """One CIFAR python-format pickle as a dict with str keys; refuses anything but plain data."""
    if not path.is_file():
        raise DataError(f"CIFAR file {path} not found")
    try:
        obj = _PlainUnpickler(io.BytesIO(path.read_bytes()), encoding="latin1").load()
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - any unpickling failure means "not a CIFAR file"
        raise DataError(f"{path} is not a CIFAR python-format file ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def locate_cifar(name: str, root: Path) -> Path | None:
    """``root/<folder>`` or ``root`` itself, whichever holds the variant's meta file; None if neither does."""
    layout = CIFAR[name]
    for cand in (root / layout.folder, root):
        if (cand / layout.meta_file).is_file():
            return cand
    return None


def find_cifar(name: str, data_dir: str | os.PathLike | None, alternative: str = "") -> Path:
    """The CIFAR folder under ``data_dir`` (else ``$SDEDGE_DATA``); ``alternative`` ends the error message
    with what else the caller's user can do (e.g. ``"use --download"``)."""
    layout = CIFAR[name]
    tail = f", or {alternative}" if alternative else ""
    root = named_data_dir(data_dir)
    if not root:
        raise DataError(f"{name}: pass --data DIR (the folder holding {layout.folder}/) or set SDEDGE_DATA{tail}")
    found = locate_cifar(name, Path(root))
    if found is None:
        raise DataError(f"{name} not found: expected {Path(root) / layout.folder}/{layout.meta_file} (the official "
                        f"python version); point --data at the folder that holds it{tail}")
    return found


def read_cifar_classes(name: str, folder: Path) -> list[str]:
    """The class names from the variant's meta file, checked against its class count."""
    layout = CIFAR[name]
    meta = load_cifar_pickle(folder / layout.meta_file)
    if layout.names_key not in meta:
        raise DataError(f"{folder / layout.meta_file}: missing key {layout.names_key!r} (keys: {sorted(meta)})")
    classes = [c.decode() if isinstance(c, bytes) else str(c) for c in meta[layout.names_key]]
    if len(classes) != layout.num_classes:
        raise DataError(f"{folder / layout.meta_file}: {len(classes)} class names, expected {layout.num_classes}")
    return classes


def read_cifar(name: str, folder: Path, split: str) -> Arrays:
    """The official ``train`` or ``test`` split as ``[N, 32, 32, 3]`` images (every file checked)."""
    layout = CIFAR[name]
    ncls = layout.num_classes
    xs, ys = [], []
    for f in layout.train_files if split == "train" else layout.test_files:
        d = load_cifar_pickle(folder / f)
        for key in ("data", layout.label_key):
            if key not in d:
                raise DataError(f"{folder / f}: missing key {key!r} (keys: {sorted(d)})")
        data = np.asarray(d["data"])
        labels = np.asarray(d[layout.label_key], dtype=np.int64)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise DataError(f"{folder / f}: 'data' must be uint8 [N, 3072], got {data.dtype} {data.shape}")
        if labels.shape != (data.shape[0],) or (labels.size and (labels.min() < 0 or labels.max() >= ncls)):
            raise DataError(f"{folder / f}: labels do not match the data (count or range 0..{ncls - 1})")
        xs.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        ys.append(labels)
    return np.concatenate(xs), np.concatenate(ys)


# -- digits (the built-in example) -------------------------------------------------------------------------------
DIGITS_CLASSES = tuple(str(i) for i in range(10))
DIGITS_TEST_SEED = 0  # the seeded 25 % test split never changes


def read_digits(split: str) -> Arrays:
    """scikit-learn's digits as 16×16 images; ``test`` is a fixed seeded quarter, ``train`` the rest."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("the built-in digits example needs scikit-learn (`pip install scikit-learn`); "
                        "or pass --images X.npy --labels Y.npy") from None
    d = load_digits()
    img = np.clip(np.round(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    img = img.repeat(2, axis=1).repeat(2, axis=2)[..., None]
    labels = d.target.astype(np.int64)
    perm = np.random.default_rng(DIGITS_TEST_SEED).permutation(len(labels))
    n_test = len(labels) // 4
    idx = np.sort(perm[:n_test]) if split == "test" else np.sort(perm[n_test:])
    return img[idx], labels[idx]

"""Torch-free calibration data: the validation split the model was trained *without*, read with numpy.

``sdedge calibrate`` runs on the target device, where ``sdedge.data`` (part of the training core) is
not importable, so this module reads the bundle's dataset itself:

* Fashion-MNIST: the IDX files (``train-images-idx3-ubyte.gz`` ...) via gzip + numpy;
* CIFAR-10/100: the official python pickles through a restricted unpickler that builds only plain
  containers and numpy arrays (a hostile file cannot run code);
* ``digits`` (the built-in example): scikit-learn's bundled copy, when scikit-learn is installed.

The validation split is the one training held out: the same reader order, then the seeded hold-out of
:func:`holdout_indices` (``sdedge.data.base.holdout`` calls the same function, so both sides share one
implementation), with ``val_size``, ``seed`` and ``limit`` from the bundle's training metadata. Tests
check the images equal ``sdedge.data.load_splits(...).val`` exactly. Any other data goes in as arrays
(``--images X.npy --labels Y.npy``).
"""
from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sdedge.runtime.errors import DataError

DEFAULT_VAL = {"digits": 200}  # every other dataset: 5000
IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
CIFAR = {"cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels"),
         "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels")}


def holdout_indices(n: int, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices of a seeded random hold-out of ``val_size`` among ``n`` items, sorted."""
    if not 0 <= val_size < n:
        raise DataError(f"validation size {val_size} must be between 0 and {n - 1} (training set size minus one)")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[val_size:]), np.sort(perm[:val_size])


@dataclass
class LabelledImages:
    """Raw uint8 images ``[N, H, W, C]`` with int64 labels, and where they came from."""

    images: np.ndarray
    labels: np.ndarray
    source: str
    split: str


# -- dataset identity from the manifest ---------------------------------------------------------------------
def dataset_spec(manifest: Any) -> dict[str, Any]:
    """``{name, val_size, seed, limit}`` of the data the bundle was trained on (manifest metadata)."""
    model = manifest.raw.get("model", {}) if hasattr(manifest, "raw") else dict(manifest.get("model", {}))
    training = model.get("training") or {}
    hp = training.get("hparams") or {}
    data = model.get("data") or training.get("data") or {}
    name = data.get("dataset") or model.get("dataset") or hp.get("dataset")
    if not name:
        raise DataError("the bundle does not say which dataset it was trained on (manifest model.dataset); "
                        "pass calibration images with --images X.npy --labels Y.npy")
    return {"name": str(name).lower().replace("_", "-"),
            "val_size": data.get("val_size", hp.get("val_size")),
            "seed": data.get("seed", hp.get("seed", 0)),
            "limit": data.get("limit", hp.get("limit"))}


# -- readers ---------------------------------------------------------------------------------------------------
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


def find_fashion_mnist(data_dir: str | os.PathLike | None) -> Path:
    cands = [Path(data_dir)] if data_dir else [Path(p) for p in (os.environ.get("SDEDGE_DATA"),) if p] + \
        [Path("/usr/share/datasets/fashion-mnist")]
    for c in cands:
        for sub in (c, c / "fashion-mnist", c / "FashionMNIST" / "raw"):
            if (sub / "train-images-idx3-ubyte.gz").is_file() or (sub / "train-images-idx3-ubyte").is_file():
                return sub
    raise DataError(f"Fashion-MNIST not found in {', '.join(map(str, cands)) or '(nowhere)'}; pass --data DIR "
                    "(the folder holding train-images-idx3-ubyte.gz) or --images X.npy --labels Y.npy")


def read_fashion_mnist(folder: Path, split: str, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    img_stem, lbl_stem = IDX_FILES[split]
    images = parse_idx(read_idx_bytes(folder, img_stem), 3, img_stem, limit)
    labels = parse_idx(read_idx_bytes(folder, lbl_stem), 1, lbl_stem, limit)
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{img_stem} has {images.shape[0]} images but {lbl_stem} has {labels.shape[0]} labels")
    if labels.size and labels.max() >= 10:
        raise DataError(f"{lbl_stem}: label {int(labels.max())} out of range for 10 classes")
    return np.ascontiguousarray(images[..., None]), labels.astype(np.int64)


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


def find_cifar(name: str, data_dir: str | os.PathLike | None) -> Path:
    sub = CIFAR[name][0]
    root = data_dir or os.environ.get("SDEDGE_DATA")
    if not root:
        raise DataError(f"{name}: pass --data DIR (the folder holding {sub}/) or set SDEDGE_DATA, "
                        "or pass --images X.npy --labels Y.npy")
    for cand in (Path(root) / sub, Path(root)):
        if (cand / CIFAR[name][1][0]).is_file():
            return cand
    raise DataError(f"{name} not found: expected {Path(root) / sub}/{CIFAR[name][1][0]} (the official python version)")


def read_cifar(name: str, folder: Path, split: str, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    _sub, train_files, test_files, key = CIFAR[name]
    xs, ys = [], []
    for f in train_files if split == "train" else test_files:
        d = load_cifar_pickle(folder / f)
        if "data" not in d or key not in d:
            raise DataError(f"{folder / f}: missing key 'data' or {key!r}")
        data = np.asarray(d["data"])
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise DataError(f"{folder / f}: 'data' must be uint8 [N, 3072], got {data.dtype} {data.shape}")
        xs.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        ys.append(np.asarray(d[key], np.int64))
    images, labels = np.ascontiguousarray(np.concatenate(xs)), np.concatenate(ys)
    if limit:
        images, labels = images[:limit], labels[:limit]
    return images, labels


def read_digits(split: str, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("the built-in digits example needs scikit-learn (`pip install scikit-learn`); "
                        "or pass --images X.npy --labels Y.npy") from None
    d = load_digits()
    img = np.clip(np.round(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    img = img.repeat(2, axis=1).repeat(2, axis=2)[..., None]
    labels = d.target.astype(np.int64)
    perm = np.random.default_rng(0).permutation(len(labels))
    n_test = len(labels) // 4
    idx = np.sort(perm[:n_test]) if split == "test" else np.sort(perm[n_test:])
    images, labels = np.ascontiguousarray(img[idx]), labels[idx]
    if limit:
        images, labels = images[:limit], labels[:limit]
    return images, labels


def _read(name: str, data_dir: str | os.PathLike | None, split: str, limit: int | None) -> tuple[np.ndarray, np.ndarray, str]:
    if name in ("fashion-mnist", "fashionmnist", "fmnist"):
        folder = find_fashion_mnist(data_dir)
        return (*read_fashion_mnist(folder, split, limit), str(folder))
    if name in CIFAR:
        folder = find_cifar(name, data_dir)
        return (*read_cifar(name, folder, split, limit), str(folder))
    if name == "digits":
        return (*read_digits(split, limit), "scikit-learn digits")
    raise DataError(f"calibration cannot read dataset {name!r} without the training core; pass "
                    "--images X.npy --labels Y.npy")


def load_calibration_split(manifest: Any, data_dir: str | os.PathLike | None = None, split: str = "val") -> LabelledImages:
    """The ``split`` (``val``: the training hold-out; ``test``; ``train``: the rest) of the bundle's dataset."""
    if split not in ("val", "test", "train"):
        raise DataError(f"unknown split {split!r}; expected val, test or train")
    spec = dataset_spec(manifest)
    name, limit = spec["name"], spec["limit"]
    if split == "test":
        images, labels, where = _read(name, data_dir, "test", limit)
        return LabelledImages(images, labels, f"{name} test ({where})", "test")
    images, labels, where = _read(name, data_dir, "train", limit)
    val_size = spec["val_size"]
    if val_size is None:
        default = DEFAULT_VAL.get(name, 5000)
        val_size = min(default, len(labels) // 10) if limit else default
    tr, va = holdout_indices(len(labels), int(val_size), int(spec["seed"] or 0))
    idx = va if split == "val" else tr
    return LabelledImages(np.ascontiguousarray(images[idx]), labels[idx],
                          f"{name} {split} split (hold-out of {val_size}, seed {spec['seed']}; {where})", split)


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

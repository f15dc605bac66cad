"""Dataset readers (real Fashion-MNIST slice, CIFAR folders written here in the official format),
the validation hold-out, the data spec a checkpoint records, and the batch augmentation."""
from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from sdedge.common.dataset_files import parse_idx, read_idx_bytes
from sdedge.common.datasets import DataSpec, ImageArrays, find_folder, holdout, read_split
from sdedge.data import checkpoint_data, checkpoint_data_spec, load_splits
from sdedge.data.augment import AugmentConfig, BatchAugment, default_padding, normalize
from sdedge.common.errors import DataError

# --------------------------------------------------------------------------- Fashion-MNIST


def test_fashion_mnist_reads_a_slice_of_the_real_data(fmnist_dir: Path) -> None:
    folder = find_folder("fashion-mnist", fmnist_dir)
    train = read_split("fashion-mnist", "train", folder, limit=1000)
    assert train.images.shape == (1000, 28, 28, 1) and train.images.dtype == np.uint8
    assert train.labels[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]  # the file's first labels
    counts = np.bincount(train.labels, minlength=10)
    assert counts.sum() == 1000 and counts.min() > 50  # every class present in the first 1000
    assert 0 < train.images.mean() < 255
    # the full label files: 6 000 per class in train, 1 000 per class in test
    for stem, per_class in (("train-labels-idx1-ubyte", 6000), ("t10k-labels-idx1-ubyte", 1000)):
        labels = parse_idx(read_idx_bytes(folder, stem), 1, stem)
        assert np.bincount(labels).tolist() == [per_class] * 10


def test_fashion_mnist_splits_and_metadata(fmnist_dir: Path) -> None:
    s = load_splits("fashion-mnist", fmnist_dir, limit=600, seed=3)
    assert (len(s.train), len(s.val), len(s.test)) == (540, 60, 600)
    assert s.in_channels == 1 and s.image_size == (28, 28) and s.num_classes == 10 and s.hflip
    assert s.classes[9] == "Ankle boot" and s.channel_order == "L"
    assert len(s.mean) == len(s.std) == 1 and 0.1 < s.mean[0] < 0.6
    assert s.preprocess_json()["scale"] == pytest.approx(1 / 255)


def _idx_bytes(arr: np.ndarray) -> bytes:
    return struct.pack(">I", 0x800 + arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def _write_fmnist(folder: Path, n: int = 20, mutate: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    files = {
        "train-images-idx3-ubyte": _idx_bytes(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)),
        "train-labels-idx1-ubyte": _idx_bytes(rng.integers(0, 10, n, dtype=np.uint8)),
        "t10k-images-idx3-ubyte": _idx_bytes(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)),
        "t10k-labels-idx1-ubyte": _idx_bytes(rng.integers(0, 10, n, dtype=np.uint8)),
    }
    files.update(mutate or {})
    for name, data in files.items():
        with gzip.open(folder / f"{name}.gz", "wb") as f:
            f.write(data)
    return folder


def test_fashion_mnist_rejects_a_wrong_folder(tmp_path: Path) -> None:
    (tmp_path / "somefile.txt").write_text("not a dataset")
    with pytest.raises(DataError, match="Fashion-MNIST not found in " + str(tmp_path)):
        load_splits("fashion-mnist", tmp_path)


def test_fashion_mnist_written_folder_reads(tmp_path: Path) -> None:
    s = load_splits("fashion-mnist", _write_fmnist(tmp_path / "ok", n=40), val_size=10)
    assert (len(s.train), len(s.val), len(s.test)) == (30, 10, 40)


@pytest.mark.parametrize("name,data,message", [
    ("train-images-idx3-ubyte", struct.pack(">IIII", 0x801, 20, 28, 28) + bytes(20 * 784), "wrong IDX magic"),
    ("train-images-idx3-ubyte", struct.pack(">IIII", 0x803, 20, 28, 28) + bytes(20 * 784 - 5), "does not match its header"),
    ("t10k-labels-idx1-ubyte", b"\x00\x00", "too short"),
    ("train-labels-idx1-ubyte", struct.pack(">II", 0x801, 20) + bytes([12] * 20), "out of range"),
    ("train-labels-idx1-ubyte", struct.pack(">II", 0x801, 19) + bytes(19), "has 20 images but"),
])
def test_fashion_mnist_rejects_bad_files_naming_them(tmp_path: Path, name: str, data: bytes, message: str) -> None:
    folder = _write_fmnist(tmp_path, mutate={name: data})
    with pytest.raises(DataError, match=message) as e:
        load_splits("fashion-mnist", folder, val_size=2)
    assert name.split("-")[0] in str(e.value)


def test_fashion_mnist_rejects_a_file_that_is_not_gzip(tmp_path: Path) -> None:
    folder = _write_fmnist(tmp_path)
    (folder / "train-images-idx3-ubyte.gz").write_bytes(b"this is not gzip data" * 10)
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz is not a readable IDX file"):
        load_splits("fashion-mnist", folder, val_size=2)


# --------------------------------------------------------------------------- CIFAR


def _cifar_data(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    data[0, :1024], data[0, 1024:2048], data[0, 2048:] = 10, 20, 30  # image 0: R=10, G=20, B=30 everywhere
    return data


def _dump(path: Path, obj, protocol: int = 2) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))


def write_cifar100(root: Path, n_train: int = 60, n_test: int = 20, bytes_keys: bool = False,
                   protocol: int = 2) -> Path:
    d = root / "cifar-100-python"
    d.mkdir(parents=True)

    def k(s: str):
        return s.encode() if bytes_keys else s

    for name, n, seed in (("train", n_train, 1), ("test", n_test, 2)):
        labels = [(i * 7) % 100 for i in range(n)]
        _dump(d / name, {k("data"): _cifar_data(n, seed), k("fine_labels"): labels,
                         k("coarse_labels"): [lab // 5 for lab in labels], k("batch_label"): k(f"{name} batch"),
                         k("filenames"): [k(f"img_{i}.png") for i in range(n)]}, protocol)
    _dump(d / "meta", {k("fine_label_names"): [k(f"class_{i}") for i in range(100)],
                       k("coarse_label_names"): [k(f"super_{i}") for i in range(20)]}, protocol)
    return d


def write_cifar10(root: Path, per_batch: int = 10) -> Path:
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    for i, name in enumerate([f"data_batch_{j}" for j in range(1, 6)] + ["test_batch"]):
        _dump(d / name, {"data": _cifar_data(per_batch, i), "labels": [(j + i) % 10 for j in range(per_batch)],
                         "batch_label": name, "filenames": [f"{name}_{j}.png" for j in range(per_batch)]})
    _dump(d / "batches.meta", {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                               "horse", "ship", "truck"], "num_vis": 3072, "num_cases_per_batch": per_batch})
    return d


@pytest.mark.parametrize("bytes_keys,protocol", [(False, 2), (True, 2), (False, 5)])
def test_cifar100_reads_the_official_python_format(tmp_path: Path, bytes_keys: bool, protocol: int) -> None:
    write_cifar100(tmp_path, bytes_keys=bytes_keys, protocol=protocol)
    s = load_splits("cifar100", tmp_path, val_size=10, seed=1)
    assert (len(s.train), len(s.val), len(s.test)) == (50, 10, 20)
    assert s.in_channels == 3 and s.image_size == (32, 32) and s.num_classes == 100 and s.hflip
    assert s.classes[:2] == ["class_0", "class_1"] and s.channel_order == "RGB"
    assert sorted(s.train.labels.tolist() + s.val.labels.tolist()) == sorted((i * 7) % 100 for i in range(60))
    first_test = s.test.images[0]
    assert first_test.shape == (32, 32, 3) and first_test[..., 0].max() == 10 and first_test[..., 1].min() == 20
    assert (first_test[..., 2] == 30).all()  # channel-major rows became HWC correctly
    # --data may also point at the cifar-100-python folder itself
    assert len(load_splits("cifar100", tmp_path / "cifar-100-python", val_size=10).test) == 20


def test_cifar10_reads_the_official_python_format(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    s = load_splits("cifar10", tmp_path, val_size=5)
    assert (len(s.train), len(s.val), len(s.test)) == (45, 5, 10)
    assert s.classes[0] == "airplane" and s.num_classes == 10


def test_calibration_reads_the_training_splits_of_cifar(tmp_path: Path, monkeypatch) -> None:
    from sdedge.calibrate.datasets import load_calibration_split

    write_cifar100(tmp_path, n_train=60, n_test=20)
    s = load_splits("cifar100", tmp_path, val_size=10, seed=4, limit=50)
    man = {"model": {"data": s.spec.to_json()}}
    for split in ("train", "val", "test"):
        got, want = load_calibration_split(man, tmp_path, split), s.split(split)
        assert np.array_equal(got.images, want.images) and np.array_equal(got.labels, want.labels), split
    monkeypatch.delenv("SDEDGE_DATA", raising=False)
    with pytest.raises(DataError, match="cifar100: pass --data DIR .* or pass --images X.npy"):
        load_calibration_split(man, None)
    with pytest.raises(DataError, match="cifar100: pass --data DIR .* or use --download"):
        load_splits("cifar100")


def test_cifar_rejects_a_wrong_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cifar100 not found: expected .*cifar-100-python/meta"):
        load_splits("cifar100", tmp_path)
    write_cifar10(tmp_path)  # a CIFAR-10 folder is not CIFAR-100
    with pytest.raises(DataError, match="cifar100 not found"):
        load_splits("cifar100", tmp_path)


@pytest.mark.parametrize("target,obj,message", [
    ("train", {"fine_labels": [0]}, "train: missing key 'data'"),
    ("train", {"data": np.zeros((2, 3000), np.uint8), "fine_labels": [0, 1]}, r"'data' must be uint8 \[N, 3072\]"),
    ("train", {"data": np.zeros((2, 3072), np.float32), "fine_labels": [0, 1]}, "must be uint8"),
    ("train", {"data": np.zeros((2, 3072), np.uint8), "fine_labels": [0]}, "labels do not match"),
    ("test", {"data": np.zeros((2, 3072), np.uint8), "fine_labels": [0, 100]}, "labels do not match"),
    ("meta", {"coarse_label_names": []}, "meta: missing key 'fine_label_names'"),
    ("meta", {"fine_label_names": ["a"] * 10}, "10 class names, expected 100"),
    ("train", [1, 2, 3], "expected a pickled dict"),
])
def test_cifar_rejects_bad_contents(tmp_path: Path, target: str, obj, message: str) -> None:
    d = write_cifar100(tmp_path)
    _dump(d / target, obj)
    with pytest.raises(DataError, match=message):
        load_splits("cifar100", tmp_path, val_size=1)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))  # would create the marker file when unpickled


def test_cifar_refuses_a_pickle_carrying_code(tmp_path: Path) -> None:
    d = write_cifar100(tmp_path / "data")
    marker = tmp_path / "pwned"
    _dump(d / "train", {"data": np.zeros((2, 3072), np.uint8), "fine_labels": [0, 1], "x": _Evil(marker)})
    with pytest.raises(DataError, match="refusing to unpickle .*open"):
        load_splits("cifar100", tmp_path / "data", val_size=1)
    assert not marker.exists()  # the code never ran
    (d / "meta").write_bytes(b"\x80\x02garbage")
    with pytest.raises(DataError, match="meta is not a CIFAR python-format file"):
        load_splits("cifar100", tmp_path / "data", val_size=1)


def test_unknown_dataset_and_bad_split_sizes(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown dataset 'mnist3d'"):
        load_splits("mnist3d")
    with pytest.raises(DataError, match="validation size 2000 must be between 0 and"):
        load_splits("digits", val_size=2000)


# --------------------------------------------------------------------------- hold-out and digits


def test_holdout_is_seeded_and_disjoint() -> None:
    arr = ImageArrays(np.arange(100, dtype=np.uint8).reshape(100, 1, 1, 1), np.arange(100))
    tr, va = holdout(arr, 20, seed=5)
    tr2, va2 = holdout(arr, 20, seed=5)
    _, va3 = holdout(arr, 20, seed=6)
    assert len(va) == 20 and len(tr) == 80
    assert set(tr.labels.tolist()).isdisjoint(va.labels.tolist())
    assert va.labels.tolist() == va2.labels.tolist() and va.labels.tolist() != va3.labels.tolist()


def test_digits_builtin_example(digits_splits) -> None:
    s = digits_splits
    assert s.image_size == (16, 16) and s.in_channels == 1 and s.num_classes == 10 and not s.hflip
    assert len(s.val) == 200 and len(s.train) + len(s.val) + len(s.test) == 1797


def test_names_and_aliases_are_one_table(tmp_path: Path) -> None:
    for alias in ("fmnist", "FashionMNIST", "fashion_mnist", "Fashion-MNIST"):
        assert DataSpec(alias).dataset == "fashion-mnist"
    assert load_splits("fmnist", _write_fmnist(tmp_path), val_size=4).name == "fashion-mnist"
    with pytest.raises(DataError, match="unknown dataset 'svhn'; choose one of: fashion-mnist, cifar100"):
        DataSpec("svhn")


def test_the_limit_and_default_hold_out_rules(tmp_path: Path) -> None:
    folder = _write_fmnist(tmp_path, n=40)
    s = load_splits("fashion-mnist", folder, limit=30)  # first 30 of each split; hold-out 10 % of them
    assert (len(s.train), len(s.val), len(s.test)) == (27, 3, 30)
    full = read_split("fashion-mnist", "train", folder)
    assert np.array_equal(read_split("fashion-mnist", "train", folder, limit=30).images, full.images[:30])
    assert np.array_equal(np.sort(np.concatenate([s.train.labels, s.val.labels])), np.sort(full.labels[:30]))
    with pytest.raises(DataError, match="validation size 5000 must be between 0 and 39"):
        load_splits("fashion-mnist", folder)  # no limit: the dataset's default, 5 000


# --------------------------------------------------------------------------- the data spec


def test_data_spec_round_trip_and_what_training_records(digits_splits) -> None:
    spec = digits_splits.spec
    assert spec == DataSpec("digits", 200, 0, None, (16, 16), 1)
    assert DataSpec.from_json(spec.to_json()) == spec
    assert spec.to_json() == {"dataset": "digits", "val_size": 200, "seed": 0, "limit": None, "image_size": [16, 16],
                              "in_channels": 1}
    meta = {"data": checkpoint_data(digits_splits)}
    assert meta["data"]["preprocess"] == digits_splits.preprocess_json()
    assert checkpoint_data_spec(meta) == spec
    assert checkpoint_data_spec({"data": {"preprocess": {}}}) is None  # names no dataset
    # a partial record (hand-written checkpoints) reads as the defaults
    assert DataSpec.from_json({"dataset": "fmnist"}) == DataSpec("fashion-mnist", None, 0, None, None, None)
    # the spec rebuilds the very same split
    again = load_splits(spec.dataset, None, spec.val_size, spec.seed, limit=spec.limit)
    assert np.array_equal(again.val.images, digits_splits.val.images)


@pytest.mark.parametrize("obj,message", [
    ([1, 2], "must be a JSON object"),
    ({"val_size": 10}, "missing 'dataset'"),
    ({"dataset": "imagenet"}, "unknown dataset 'imagenet'"),
    ({"dataset": 7}, "dataset must be a dataset name"),
    ({"dataset": "digits", "val_size": -1}, "val_size must be an integer >= 0"),
    ({"dataset": "digits", "val_size": 2.5}, "val_size must be an integer"),
    ({"dataset": "digits", "val_size": True}, "val_size must be an integer"),
    ({"dataset": "digits", "seed": "0"}, "seed must be an integer >= 0"),
    ({"dataset": "digits", "seed": -3}, "seed must be an integer >= 0"),
    ({"dataset": "digits", "limit": 0}, "limit must be an integer >= 1"),
    ({"dataset": "digits", "image_size": [16]}, r"image_size must be \[height, width\]"),
    ({"dataset": "digits", "image_size": [16, 0]}, "image_size must be"),
    ({"dataset": "digits", "in_channels": 0}, "in_channels must be an integer >= 1"),
    ({"dataset": "digits", "split_seed": 1}, r"unknown keys \['split_seed'\]"),
])
def test_a_bad_data_spec_is_refused_clearly(obj, message: str) -> None:
    with pytest.raises(DataError, match=message):
        DataSpec.from_json(obj)


def test_a_bad_checkpoint_data_record_names_where_it_is() -> None:
    with pytest.raises(DataError, match=r"checkpoint meta 'data': data spec: val_size must be"):
        checkpoint_data_spec({"data": {"dataset": "digits", "val_size": "lots", "preprocess": {}}})
    with pytest.raises(DataError, match="must be an object"):
        checkpoint_data_spec({"data": ["digits"]})


def test_the_geometry_check() -> None:
    arr = ImageArrays(np.zeros((3, 16, 16, 1), np.uint8), np.zeros(3, np.int64))
    DataSpec("digits", image_size=(16, 16), in_channels=1).check_geometry(arr)
    DataSpec("digits").check_geometry(arr)  # nothing recorded, nothing to check
    with pytest.raises(DataError, match="has images of 1x16x16 but the checkpoint expects 3x32x32"):
        DataSpec("digits", image_size=(32, 32), in_channels=3).check_geometry(arr)


# --------------------------------------------------------------------------- augmentation


def _identity_aug(**kw) -> BatchAugment:
    return BatchAugment(AugmentConfig(**kw), (8, 8), [0.0], [1.0 / 255.0])  # normalisation = raw pixel values


def test_default_padding_scales_with_image_size() -> None:
    assert default_padding((32, 32)) == 4 and default_padding((28, 28)) == 4 and default_padding((16, 16)) == 2
    assert default_padding((8, 8)) == 1


def test_augment_crop_and_flip_are_shifted_or_mirrored_windows() -> None:
    x = torch.arange(64, dtype=torch.uint8).view(1, 8, 8, 1).repeat(64, 1, 1, 1)
    g = torch.Generator().manual_seed(0)
    y = _identity_aug(padding=2, hflip=True)(x, g)[:, 0]
    assert y.shape == (64, 8, 8)
    src = torch.nn.functional.pad(x[0, :, :, 0].float(), (2, 2, 2, 2))
    windows = {(dy, dx, f) for dy in range(5) for dx in range(5) for f in (False, True)}
    seen = set()
    for img in y:
        for dy, dx, f in windows:
            w = src[dy:dy + 8, dx:dx + 8]
            if torch.allclose(img, w.flip(1) if f else w, atol=1e-3):
                seen.add((dy, dx, f))
                break
        else:
            pytest.fail("an augmented image is not a padded crop (or its mirror) of the input")
    assert any(f for *_, f in seen) and any(not f for *_, f in seen) and len(seen) > 10


def test_augment_off_is_plain_normalisation_and_seeded() -> None:
    x = torch.randint(0, 256, (16, 8, 8, 3), dtype=torch.uint8)
    aug = BatchAugment(AugmentConfig(padding=0, hflip=False), (8, 8), [0.5, 0.4, 0.3], [0.2, 0.2, 0.25])
    ref = normalize(x, torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.2, 0.2, 0.25]))
    assert torch.allclose(aug(x, torch.Generator().manual_seed(1)), ref)
    assert torch.allclose(ref[3, 1], (x[3, :, :, 1].float() / 255 - 0.4) / 0.2)
    full = BatchAugment(AugmentConfig(cutout=4), (8, 8), [0.5] * 3, [0.2] * 3)
    a = full(x, torch.Generator().manual_seed(7))
    b = full(x, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)  # same seed, same augmentation (resume relies on it)


def test_cutout_blanks_one_square_per_image() -> None:
    x = torch.full((32, 8, 8, 1), 200, dtype=torch.uint8)
    y = _identity_aug(padding=0, hflip=False, cutout=4)(x, torch.Generator().manual_seed(0))[:, 0]
    zeros = (y == 0).sum(dim=(1, 2))
    assert zeros.max().item() == 16 and zeros.min().item() >= 4  # 4x4, clipped at the border
    assert ((y == 0) | ((y - 200).abs() < 1e-3)).all()


def test_autoaugment_keeps_shape_dtype_range() -> None:
    x = torch.randint(0, 256, (4, 8, 8, 3), dtype=torch.uint8)
    aug = BatchAugment(AugmentConfig(autoaugment=True), (8, 8), [0.0] * 3, [1 / 255.0] * 3)
    y = aug(x, torch.Generator().manual_seed(0))
    assert y.shape == (4, 3, 8, 8) and y.min() >= 0 and y.max() <= 255
    with pytest.raises(ValueError, match="uint8"):
        aug(x.float(), torch.Generator())


def test_random_erasing_erases_rectangles_per_image_reproducibly() -> None:
    x = torch.full((64, 16, 16, 1), 200, dtype=torch.uint8)
    aug = _identity_aug(padding=0, hflip=False, random_erasing=0.5)
    y = aug(x, torch.Generator().manual_seed(3))[:, 0]
    erased = (y == 0).flatten(1).any(1)
    assert 0.25 < float(erased.float().mean()) < 0.75  # p = 0.5 per image (64 images; bounds ~4 sigma)
    for img in y[erased]:  # each erased region is one axis-aligned rectangle of zeros, the rest untouched
        rows, cols = (img == 0).nonzero(as_tuple=True)
        box = img[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert (box == 0).all() and int((img == 0).sum()) == box.numel()
        assert ((img == 0) | ((img - 200).abs() < 1e-3)).all()
    areas = {int((img == 0).sum()) for img in y[erased]}
    assert len(areas) > 1  # a region drawn per image, not one for the batch
    assert torch.equal(y, aug(x, torch.Generator().manual_seed(3))[:, 0])  # seeded by the batch generator
    assert "random erasing p=0.5" in aug.describe()
    with pytest.raises(ValueError, match="random erasing probability"):
        _identity_aug(random_erasing=1.5)

"""Dataset loaders (trainers/datasets.py): digits, CIFAR folders, synthetic, fingerprints."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from trainers.datasets import DATASETS, DatasetNotFound, load_dataset

CIFAR10_FILES = [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"]


def _rows(x: np.ndarray) -> list[bytes]:
    return sorted(r.tobytes() for r in x.reshape(len(x), -1))


def test_digits_shapes_range_and_complete_split() -> None:
    from sklearn.datasets import load_digits

    ds = load_dataset("digits")
    assert ds.name == "digits" and ds.num_classes == 10 and ds.input_range == (0.0, 1.0)
    assert ds.x_train.shape[1:] == (8, 8, 1) and ds.x_test.shape[1:] == (8, 8, 1)
    assert len(ds.x_train) + len(ds.x_test) == 1797
    assert len(ds.x_test) == 360  # ceil(0.2 * 1797), as train_test_split gives
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0 and ds.x_test.max() <= 1.0
    # train + test is exactly the bundled set, image by image, and labels travel with their images
    sk = load_digits()
    expected = (sk.images.astype(np.float32) / 16.0)[..., None]
    assert _rows(np.concatenate([ds.x_train, ds.x_test])) == _rows(expected)
    lookup = {img.tobytes(): int(label) for img, label in zip(expected, sk.target, strict=True)}
    assert all(
        lookup[img.tobytes()] == label for img, label in zip(ds.x_test[:50], ds.y_test[:50], strict=True)
    )
    with pytest.raises(ValueError):
        ds.x_train[0, 0, 0, 0] = 1.0  # shared, read-only arrays


def test_digits_split_is_stratified() -> None:
    ds = load_dataset("digits", test_fraction=0.25)
    total = np.bincount(np.concatenate([ds.y_train, ds.y_test]), minlength=10)
    test = np.bincount(ds.y_test, minlength=10)
    assert np.all(np.abs(test - 0.25 * total) <= 1)


def test_digits_split_is_deterministic_per_seed() -> None:
    a, b, c = load_dataset("digits", seed=1), load_dataset("digits", seed=1), load_dataset("digits", seed=2)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert a.fingerprint == b.fingerprint
    assert not np.array_equal(a.y_test, c.y_test)
    assert a.fingerprint != c.fingerprint
    assert load_dataset("digits", seed=1, test_fraction=0.3).fingerprint != a.fingerprint


def test_unknown_names_and_options_are_reported() -> None:
    with pytest.raises(KeyError, match="digits") as info:
        load_dataset("mnist")
    assert "cifar10" in str(info.value) and "synthetic" in str(info.value)
    with pytest.raises(ValueError, match="colour"):
        load_dataset("digits", colour=True)
    with pytest.raises(ValueError, match="test_fraction"):
        load_dataset("digits", test_fraction=1.5)
    assert set(DATASETS) == {"digits", "cifar10", "cifar100", "synthetic"}


@pytest.mark.parametrize(
    ("name", "files"), [("cifar10", CIFAR10_FILES), ("cifar100", ["train", "test", "meta"])]
)
def test_missing_cifar_names_folder_and_files(tmp_path: Path, name: str, files: list[str]) -> None:
    (tmp_path / "data_batch_1").write_bytes(b"")  # a partial folder is still "not found"
    with pytest.raises(DatasetNotFound) as info:
        load_dataset(name, root=tmp_path)
    assert isinstance(info.value, FileNotFoundError)
    message = str(info.value)
    assert str(tmp_path) in message
    assert all(f in message for f in files)
    assert "cs.toronto.edu" in message


def test_missing_cifar_with_default_root_uses_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NESTBENCH_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(DatasetNotFound, match="nowhere"):
        load_dataset("cifar10")


def _fake_images(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)


def _dump(path: Path, doc: dict[bytes, object]) -> None:
    path.write_bytes(pickle.dumps(doc, protocol=2))


def _write_cifar10(folder: Path, rng: np.random.Generator) -> tuple[list[np.ndarray], list[list[int]]]:
    folder.mkdir(parents=True)
    datas, labels = [], []
    for fname, n in [*((f"data_batch_{i}", 3) for i in range(1, 6)), ("test_batch", 4)]:
        data, lab = _fake_images(rng, n), [int(v) for v in rng.integers(0, 10, size=n)]
        _dump(folder / fname, {b"batch_label": fname.encode(), b"data": data, b"labels": lab})
        datas.append(data)
        labels.append(lab)
    _dump(folder / "batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)]})
    return datas, labels


@pytest.mark.parametrize("nested", [False, True])
def test_cifar10_loader_reads_the_pickle_layout(tmp_path: Path, nested: bool) -> None:
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py" if nested else tmp_path / "flat"
    datas, labels = _write_cifar10(folder, rng)
    ds = load_dataset("cifar10", root=tmp_path if nested else folder)
    assert ds.x_train.shape == (15, 32, 32, 3) and ds.x_test.shape == (4, 32, 32, 3)
    assert ds.num_classes == 10 and ds.input_range == (0.0, 1.0)
    np.testing.assert_array_equal(ds.y_train, np.concatenate(labels[:5]))
    np.testing.assert_array_equal(ds.y_test, labels[5])
    # a row holds 1024 red, then 1024 green, then 1024 blue values, each row-major over 32x32
    first = datas[0][1]
    for h, w, c in [(0, 0, 0), (0, 1, 0), (1, 0, 0), (5, 7, 1), (31, 31, 2)]:
        assert ds.x_train[1, h, w, c] == pytest.approx(first[c * 1024 + h * 32 + w] / 255.0)
    last = datas[5][3]
    assert ds.x_test[3, 2, 3, 2] == pytest.approx(last[2 * 1024 + 2 * 32 + 3] / 255.0)
    sub = load_dataset("cifar10", root=folder, max_train=5, max_test=2)
    assert sub.x_train.shape[0] == 5 and sub.x_test.shape[0] == 2
    assert sub.fingerprint != ds.fingerprint


def test_cifar100_loader_fine_and_coarse_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    train, test = _fake_images(rng, 6), _fake_images(rng, 2)
    fine_tr, fine_te = [0, 99, 5, 42, 7, 3], [98, 1]
    coarse_tr, coarse_te = [0, 19, 1, 2, 3, 4], [5, 6]
    _dump(folder / "train", {b"data": train, b"fine_labels": fine_tr, b"coarse_labels": coarse_tr})
    _dump(folder / "test", {b"data": test, b"fine_labels": fine_te, b"coarse_labels": coarse_te})
    _dump(folder / "meta", {b"fine_label_names": [], b"coarse_label_names": []})
    fine = load_dataset("cifar100", root=tmp_path)
    assert fine.num_classes == 100 and fine.x_train.shape == (6, 32, 32, 3)
    np.testing.assert_array_equal(fine.y_train, fine_tr)
    coarse = load_dataset("cifar100", root=folder, labels="coarse")
    assert coarse.num_classes == 20
    np.testing.assert_array_equal(coarse.y_test, coarse_te)
    with pytest.raises(ValueError, match="labels"):
        load_dataset("cifar100", root=folder, labels="medium")


def test_corrupt_cifar_file_is_a_clear_error(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    _write_cifar10(folder, np.random.default_rng(2))
    (folder / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="data_batch_3"):
        load_dataset("cifar10", root=tmp_path)


def test_synthetic_shapes_options_and_determinism() -> None:
    ds = load_dataset("synthetic", h=10, w=6, c=2, classes=3, n=90)
    assert ds.x_train.shape[1:] == (10, 6, 2) and ds.num_classes == 3
    assert len(ds.x_train) + len(ds.x_test) == 90
    assert set(np.unique(ds.y_test)) == {0, 1, 2}
    assert ds.x_train.min() >= 0.0 and ds.x_train.max() <= 1.0
    again = load_dataset("synthetic", h=10, w=6, c=2, classes=3, n=90)
    np.testing.assert_array_equal(ds.x_train, again.x_train)
    assert ds.fingerprint == again.fingerprint
    other = load_dataset("synthetic", h=10, w=6, c=2, classes=3, n=90, seed=1)
    assert not np.array_equal(ds.x_train, other.x_train) and other.fingerprint != ds.fingerprint
    with pytest.raises(ValueError, match="classes"):
        load_dataset("synthetic", classes=1)


def test_synthetic_is_learnable() -> None:
    """Nearest class mean (fit on train) classifies the test split far above chance."""
    ds = load_dataset("synthetic", classes=5, n=500)
    means = np.stack([ds.x_train[ds.y_train == k].mean(axis=0) for k in range(5)])
    dist = ((ds.x_test[:, None] - means[None]) ** 2).sum(axis=(2, 3, 4))
    assert np.mean(dist.argmin(axis=1) == ds.y_test) > 0.9
    # ... but it is not trivial: single pixels are noisy
    assert ds.x_train[ds.y_train == 0].std(axis=0).mean() > 0.05

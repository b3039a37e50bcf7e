"""Datasets as plain arrays (NHWC float32), loaded without any network access.

`load_dataset(name, ...)` is the one entry point; `DATASETS` maps each name to its loader. Loaders:

- ``digits``: scikit-learn's bundled 8x8 digits, split by a stratified, seeded shuffle;
- ``cifar10`` / ``cifar100``: the standard python-pickle folders, read from disk (never downloaded);
- ``synthetic``: seeded random images with a class-dependent mean pattern, for shape-driven tests.

Every dataset carries a `fingerprint` (sha256 over name, options and arrays) that downstream caches key on.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Dataset:
    name: str
    x_train: np.ndarray  # float32 [N, H, W, C]
    y_train: np.ndarray  # int64 [N]
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    input_range: tuple[float, float]  # the range a pixel can take; fixes the int8 input quantization
    fingerprint: str  # sha256 over the arrays: part of every cache key downstream


class DatasetNotFound(FileNotFoundError):
    """A dataset that must be read from disk is not where it was looked for."""


# Where CIFAR folders are looked for when no root is given.
DATA_ENV = "NESTBENCH_DATA"
CIFAR_URLS = {
    "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    "cifar100": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
}
_CIFAR_LAYOUT: dict[str, tuple[str, tuple[str, ...], tuple[str, ...], str]] = {
    # name: (subfolder, train files, test files, meta file)
    "cifar10": (
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        ("test_batch",),
        "batches.meta",
    ),
    "cifar100": ("cifar-100-python", ("train",), ("test",), "meta"),
}


def default_data_root() -> Path:
    """$NESTBENCH_DATA when set, else ~/.cache/nestbench/data."""
    env = os.environ.get(DATA_ENV)
    return Path(env) if env else Path.home() / ".cache" / "nestbench" / "data"


def fingerprint(name: str, options: dict[str, Any], arrays: list[np.ndarray]) -> str:
    """sha256 over the dataset's name, its loading options and every array (dtype, shape, bytes)."""
    h = hashlib.sha256()
    h.update(json.dumps({"name": name, "options": options}, sort_keys=True, default=str).encode())
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _make(
    name: str,
    options: dict[str, Any],
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    num_classes: int,
) -> Dataset:
    arrays: list[np.ndarray] = [
        np.ascontiguousarray(x_train, dtype=np.float32),
        np.ascontiguousarray(y_train, dtype=np.int64),
        np.ascontiguousarray(x_test, dtype=np.float32),
        np.ascontiguousarray(y_test, dtype=np.int64),
    ]
    for a in arrays:
        a.setflags(write=False)  # datasets are shared by cache keys: nobody may edit them in place
    return Dataset(
        name=name,
        x_train=arrays[0],
        y_train=arrays[1],
        x_test=arrays[2],
        y_test=arrays[3],
        num_classes=num_classes,
        input_range=(0.0, 1.0),
        fingerprint=fingerprint(name, options, arrays),
    )


def _check_fraction(test_fraction: float) -> None:
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction}")


def _stratified_split(y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test), each class split in the same proportion; deterministic for a seed.

    scikit-learn's stratified split, so the test size is ceil(N * test_fraction) as users of
    train_test_split expect (360 of digits' 1 797 images at 0.2).
    """
    from sklearn.model_selection import train_test_split

    classes = len(np.unique(y))
    n_test = int(np.ceil(len(y) * test_fraction))
    if min(n_test, len(y) - n_test) < classes:
        raise ValueError(
            f"test_fraction {test_fraction} of {len(y)} samples leaves fewer than one sample per class "
            f"({classes} classes) on one side of the split"
        )
    train, test = train_test_split(
        np.arange(len(y)), test_size=test_fraction, stratify=y, random_state=seed, shuffle=True
    )
    return np.asarray(train), np.asarray(test)


def _reject_options(name: str, options: dict[str, Any], allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        known = ", ".join(allowed) if allowed else "none"
        raise ValueError(f"dataset {name!r}: unknown option {unknown[0]!r} (options: {known})")


def load_digits(*, root: Path | None = None, seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """scikit-learn's 8x8 digits (1 797 images, 10 classes), pixels 0..16 scaled to [0, 1]."""
    from sklearn.datasets import load_digits as sk_digits  # bundled with scikit-learn, no download

    _check_fraction(test_fraction)
    bunch = sk_digits()
    x = (np.asarray(bunch.images, dtype=np.float32) / 16.0)[..., None]
    y = np.asarray(bunch.target, dtype=np.int64)
    tr, te = _stratified_split(y, test_fraction, seed)
    options = {"seed": seed, "test_fraction": test_fraction}
    return _make("digits", options, x[tr], y[tr], x[te], y[te], 10)


def _find_cifar_folder(name: str, root: Path | None) -> Path:
    sub, train, test, meta = _CIFAR_LAYOUT[name]
    needed = (*train, *test, meta)
    base = Path(root) if root is not None else default_data_root()
    candidates = [base, base / sub, base / name]
    for folder in candidates:
        if all((folder / f).is_file() for f in needed):
            return folder
    looked = ", ".join(str(c) for c in candidates)
    raise DatasetNotFound(
        f"dataset {name!r} not found: looked in {looked} for the python-pickle files "
        f"{', '.join(needed)}. Download {CIFAR_URLS[name]} on a machine with internet access, unpack it "
        f"and pass its folder as the dataset root (or set ${DATA_ENV} to the folder holding {sub}/)."
    )


def _read_pickle(path: Path) -> dict[bytes, Any]:
    try:
        with path.open("rb") as f:
            doc = pickle.load(f, encoding="bytes")  # the official files are python-2 pickles
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable CIFAR pickle ({exc})") from exc
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected a dict, found {type(doc).__name__}")
    return doc


def _read_cifar_batches(
    folder: Path, files: tuple[str, ...], label_key: bytes
) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for fname in files:
        path = folder / fname
        doc = _read_pickle(path)
        if b"data" not in doc or label_key not in doc:
            raise ValueError(f"{path}: missing key {'data' if b'data' not in doc else label_key.decode()!r}")
        data = np.asarray(doc[b"data"], dtype=np.uint8)
        labels = np.asarray(doc[label_key], dtype=np.int64)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
            raise ValueError(
                f"{path}: data {data.shape} / labels {labels.shape} do not form [N, 3072] images"
            )
        # Rows are channel-major (1024 red, 1024 green, 1024 blue): to NCHW, then NHWC.
        xs.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        ys.append(labels)
    return np.concatenate(xs), np.concatenate(ys)


def _subsample(x: np.ndarray, y: np.ndarray, limit: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if limit is None or limit >= len(y):
        return x, y
    if limit < 1:
        raise ValueError(f"a sample limit must be at least 1, got {limit}")
    idx = np.sort(np.random.default_rng(seed).permutation(len(y))[:limit])
    return x[idx], y[idx]


def _load_cifar(
    name: str,
    root: Path | None,
    seed: int,
    label_key: bytes,
    num_classes: int,
    max_train: int | None,
    max_test: int | None,
    extra_options: dict[str, Any],
) -> Dataset:
    _, train_files, test_files, _ = _CIFAR_LAYOUT[name]
    folder = _find_cifar_folder(name, root)
    x_tr, y_tr = _read_cifar_batches(folder, train_files, label_key)
    x_te, y_te = _read_cifar_batches(folder, test_files, label_key)
    for path, y in ((folder / train_files[0], y_tr), (folder / test_files[0], y_te)):
        if y.size and (y.min() < 0 or y.max() >= num_classes):
            raise ValueError(f"{path}: labels outside 0..{num_classes - 1}")
    x_tr, y_tr = _subsample(x_tr, y_tr, max_train, seed)
    x_te, y_te = _subsample(x_te, y_te, max_test, seed + 1)
    # CIFAR has a fixed train/test split, so seed only matters for the optional subsampling.
    options = {"seed": seed, "max_train": max_train, "max_test": max_test, **extra_options}
    return _make(name, options, _to_unit(x_tr), y_tr, _to_unit(x_te), y_te, num_classes)


def _to_unit(pixels: np.ndarray) -> np.ndarray:
    """uint8 → float32 in [0, 1], scaled in place (CIFAR-10's train set is 600 MB as float32)."""
    x = pixels.astype(np.float32)
    x /= 255.0
    return x


def load_cifar10(
    *,
    root: Path | None = None,
    seed: int = 0,
    test_fraction: float = 0.2,
    max_train: int | None = None,
    max_test: int | None = None,
) -> Dataset:
    """CIFAR-10 from data_batch_1..5 / test_batch / batches.meta; `max_*` keep a seeded subset.

    CIFAR comes with a fixed train/test split, so `test_fraction` is accepted and ignored.
    """
    return _load_cifar("cifar10", root, seed, b"labels", 10, max_train, max_test, {})


def load_cifar100(
    *,
    root: Path | None = None,
    seed: int = 0,
    test_fraction: float = 0.2,
    labels: str = "fine",
    max_train: int | None = None,
    max_test: int | None = None,
) -> Dataset:
    """CIFAR-100 from train / test / meta; `labels` "fine" (100 classes) or "coarse" (20)."""
    if labels not in ("fine", "coarse"):
        raise ValueError(f"dataset 'cifar100': option 'labels' must be 'fine' or 'coarse', got {labels!r}")
    key, classes = (b"fine_labels", 100) if labels == "fine" else (b"coarse_labels", 20)
    return _load_cifar("cifar100", root, seed, key, classes, max_train, max_test, {"labels": labels})


def load_synthetic(
    *,
    root: Path | None = None,
    seed: int = 0,
    test_fraction: float = 0.2,
    h: int = 12,
    w: int = 12,
    c: int = 3,
    classes: int = 4,
    n: int = 400,
    noise: float = 0.15,
) -> Dataset:
    """Seeded images in [0, 1]: each class has its own smooth mean pattern, plus Gaussian noise.

    The class patterns make the set learnable (a small net gets far above chance in a few epochs),
    which lets tests see that a trainer really trains; the noise keeps it from being trivial.
    """
    for opt, value, low in (("h", h, 1), ("w", w, 1), ("c", c, 1), ("classes", classes, 2)):
        if int(value) != value or value < low:
            raise ValueError(
                f"dataset 'synthetic': option {opt!r} must be an integer >= {low}, got {value!r}"
            )
    if n < 2 * classes:
        raise ValueError(f"dataset 'synthetic': option 'n' must be at least 2 * classes = {2 * classes}")
    if noise < 0:
        raise ValueError(f"dataset 'synthetic': option 'noise' must be >= 0, got {noise}")
    _check_fraction(test_fraction)
    rng = np.random.default_rng(seed)
    # Smooth patterns: a coarse random grid upsampled, so nearby pixels agree (convolutions help).
    coarse = rng.uniform(0.15, 0.85, size=(classes, (h + 3) // 4 + 1, (w + 3) // 4 + 1, c))
    rows = np.minimum(np.arange(h) // 4, coarse.shape[1] - 1)
    cols = np.minimum(np.arange(w) // 4, coarse.shape[2] - 1)
    means = coarse[:, rows][:, :, cols]
    y = np.arange(n) % classes
    x = np.clip(means[y] + rng.normal(0.0, noise, size=(n, h, w, c)), 0.0, 1.0)
    tr, te = _stratified_split(y, test_fraction, seed)
    options = {"seed": seed, "test_fraction": test_fraction, "h": h, "w": w, "c": c, "classes": classes}
    options.update({"n": n, "noise": noise})
    return _make("synthetic", options, x[tr], y[tr], x[te], y[te], classes)


Loader = Callable[..., Dataset]
DATASETS: dict[str, Loader] = {
    "digits": load_digits,
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "synthetic": load_synthetic,
}


def dataset_options(name: str) -> tuple[str, ...]:
    """The options `load_dataset(name, **options)` accepts besides root, seed and test_fraction."""
    import inspect

    params = inspect.signature(DATASETS[name]).parameters
    return tuple(p for p in params if p not in ("root", "seed", "test_fraction"))


def load_dataset(
    name: str, *, root: Path | None = None, seed: int = 0, test_fraction: float = 0.2, **options: Any
) -> Dataset:
    """Load dataset `name`; KeyError for an unknown name, ValueError for a bad option,
    DatasetNotFound when a dataset read from disk is absent."""
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    _reject_options(name, options, dataset_options(name))
    return DATASETS[name](root=root, seed=seed, test_fraction=test_fraction, **options)

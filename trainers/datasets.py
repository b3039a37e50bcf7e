"""Datasets as plain arrays (NHWC float32), loaded without any network access."""

from __future__ import annotations

from dataclasses import dataclass

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

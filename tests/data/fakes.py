"""Fakes for the loader tests: tiny datasets in the IDX format of (Fashion-)MNIST, and the
message of a download that fails offline."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from fedbackdoor.data.image_data import ImageData

OFFLINE = "network disabled in tests"
"""What every download attempt raises in the data tests (``URLError(OFFLINE)``)."""


def write_idx(path: Path, array: np.ndarray, *, compress: bool = False) -> None:
    """Write a uint8 array in the IDX format torchvision's MNIST reader parses."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape
    )
    payload = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


def fake_idx_set(
    folder: Path,
    *,
    compress: bool = False,
    num_train: int = 6,
    num_test: int = 4,
    image_size: tuple[int, int] = (5, 7),
) -> dict[str, np.ndarray]:
    """Tiny MNIST-format files (5x7 images unless ``image_size``) in ``folder``; returns the
    arrays written."""
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (num_train, *image_size), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, num_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (num_test, *image_size), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, num_test, dtype=np.uint8),
    }
    arrays["train-images-idx3-ubyte"][0] = 255  # one all-white image maps to exactly 1.0
    for name, array in arrays.items():
        write_idx(folder / (name + ".gz" if compress else name), array, compress=compress)
    return arrays


def assert_matches_idx(data: ImageData, arrays: dict[str, np.ndarray]) -> None:
    expected_train = torch.from_numpy(arrays["train-images-idx3-ubyte"]).float() / 255
    expected_test = torch.from_numpy(arrays["t10k-images-idx3-ubyte"]).float() / 255
    torch.testing.assert_close(data.x_train, expected_train.unsqueeze(1))
    torch.testing.assert_close(data.x_test, expected_test.unsqueeze(1))
    np.testing.assert_array_equal(data.y_train.numpy(), arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(data.y_test.numpy(), arrays["t10k-labels-idx1-ubyte"])
    assert data.image_size == (5, 7)
    assert data.channels == 1

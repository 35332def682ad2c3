"""Tests for fedbackdoor.data.datasets: synthetic data, torchvision loading, lookup order."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torchvision.datasets
import torchvision.datasets.cifar
import torchvision.datasets.mnist
from omegaconf import OmegaConf
from torch import nn

from fedbackdoor.data import datasets
from fedbackdoor.data.datasets import (
    CACHE_DIR_ENV,
    DATA_DIR_ENV,
    DEBIAN_FASHION_MNIST_DIR,
    DEBIAN_FASHION_MNIST_FILES,
    ImageData,
    clear_cache,
    get_dataset,
    load_dataset,
    synthetic,
)

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
OFFLINE = "network disabled in tests"


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """No test reads the user's cache or env, or touches the network; caches start empty."""
    cache = tmp_path / "cache"
    monkeypatch.setenv(CACHE_DIR_ENV, str(cache))
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)

    def offline(*args: object, **kwargs: object) -> None:
        raise URLError(OFFLINE)

    monkeypatch.setattr(torchvision.datasets.mnist, "download_and_extract_archive", offline)
    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", offline)
    clear_cache()
    yield cache
    clear_cache()


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
    folder: Path, *, compress: bool = False, num_train: int = 6, num_test: int = 4
) -> dict[str, np.ndarray]:
    """Tiny MNIST-format files (5x7 images) in ``folder``; returns the arrays written."""
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (num_train, 5, 7), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, num_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (num_test, 5, 7), dtype=np.uint8),
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


# --------------------------------------------------------------------------------------------
# synthetic


def test_synthetic_shapes_dtypes_and_range() -> None:
    data = synthetic()

    assert data.x_train.shape == (2000, 1, 12, 12)
    assert data.x_test.shape == (500, 1, 12, 12)
    assert data.x_train.dtype == torch.float32
    assert data.y_train.dtype == torch.int64
    assert data.num_classes == 4
    assert data.name == "synthetic"
    assert data.channels == 1
    assert data.image_size == (12, 12)
    for x in (data.x_train, data.x_test):
        assert x.min() >= 0.0
        assert x.max() <= 1.0
    counts = torch.bincount(data.y_train, minlength=4)
    assert counts.max() - counts.min() <= 1
    assert len(data.mean) == len(data.std) == 1
    assert data.mean[0] == pytest.approx(data.x_train.mean().item(), abs=1e-5)


def test_synthetic_multichannel_non_square() -> None:
    data = synthetic(num_train=30, num_test=10, num_classes=3, image_size=(8, 10), channels=3)

    assert data.x_train.shape == (30, 3, 8, 10)
    assert data.image_size == (8, 10)
    assert data.channels == 3
    assert len(data.mean) == len(data.std) == 3


def test_synthetic_is_deterministic_per_seed() -> None:
    first = synthetic(num_train=200, num_test=50, seed=3)
    again = synthetic(num_train=200, num_test=50, seed=3)
    other = synthetic(num_train=200, num_test=50, seed=4)

    for name in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(first, name), getattr(again, name))
    assert not torch.equal(first.x_train, other.x_train)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_train": 0},
        {"num_classes": 1},
        {"image_size": (12,)},
        {"image_size": (0, 12)},
        {"channels": 0},
        {"noise_std": -0.1},
    ],
)
def test_synthetic_rejects_bad_settings(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        synthetic(**kwargs)  # type: ignore[arg-type]


def test_small_cnn_learns_synthetic_in_a_few_epochs() -> None:
    data = synthetic(seed=1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(8 * 6 * 6, data.num_classes),
        )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    generator = torch.Generator().manual_seed(0)

    for _ in range(3):
        order = torch.randperm(len(data.y_train), generator=generator)
        for batch in order.split(32):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(data.x_train[batch]), data.y_train[batch])
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        accuracy = (model(data.x_test).argmax(1) == data.y_test).float().mean().item()

    assert accuracy > 0.9


# --------------------------------------------------------------------------------------------
# get_dataset


def test_get_dataset_synthetic_is_cached_and_accepts_yaml_lists() -> None:
    first = get_dataset("synthetic", None, image_size=[12, 12], seed=0, num_train=100)
    again = get_dataset("synthetic", num_train=100, seed=0, image_size=(12, 12))
    other = get_dataset("synthetic", num_train=100, seed=1, image_size=(12, 12))

    assert first is again
    assert other is not first
    assert first.x_train.shape == (100, 1, 12, 12)
    assert torch.equal(first.x_train, synthetic(num_train=100).x_train)


def test_get_dataset_rejects_synthetic_settings_for_real_dataset() -> None:
    with pytest.raises(ValueError, match="synthetic"):
        get_dataset("mnist", None, seed=0)


def test_get_dataset_rejects_unknown_synthetic_setting() -> None:
    with pytest.raises(TypeError):
        get_dataset("synthetic", colour="blue")


@pytest.mark.parametrize("loader", [load_dataset, get_dataset])
def test_unknown_dataset_name_lists_valid_names(loader: object) -> None:
    with pytest.raises(ValueError, match="cifar10.*fashion_mnist.*mnist"):
        loader("imagenet")  # type: ignore[operator]


def test_load_dataset_points_synthetic_to_its_factory() -> None:
    with pytest.raises(ValueError, match="synthetic"):
        load_dataset("synthetic")


# --------------------------------------------------------------------------------------------
# torchvision datasets and the lookup order


@pytest.mark.skipif(
    not all((DEBIAN_FASHION_MNIST_DIR / f).is_file() for f in DEBIAN_FASHION_MNIST_FILES),
    reason="Debian package dataset-fashion-mnist is not installed",
)
def test_fashion_mnist_from_debian_package(isolated: Path) -> None:
    data = load_dataset("fashion_mnist")
    again = load_dataset("fashion_mnist")

    assert again is data
    assert data.x_train.shape == (60000, 1, 28, 28)
    assert data.x_test.shape == (10000, 1, 28, 28)
    assert data.x_train.dtype == torch.float32
    assert data.y_train.dtype == torch.int64
    assert data.num_classes == 10
    assert data.name == "fashion_mnist"
    assert data.x_train.min() == 0.0
    assert data.x_train.max() == 1.0
    assert set(data.y_train.unique().tolist()) == set(range(10))
    assert data.mean == (0.2860,)
    assert data.std == (0.3530,)
    # The standard statistics are those of these very images.
    assert data.x_train.mean().item() == pytest.approx(0.2860, abs=5e-4)
    assert data.x_train.std().item() == pytest.approx(0.3530, abs=5e-4)
    raw = isolated / "FashionMNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(
        f.removesuffix(".gz") for f in DEBIAN_FASHION_MNIST_FILES
    )


def test_load_dataset_reads_files_once_per_process(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake_idx_set(tmp_path / "data" / "MNIST" / "raw")
    constructed: list[bool] = []

    class MNIST(torchvision.datasets.MNIST):  # same name: torchvision derives the folder from it
        def __init__(self, *args: object, **kwargs: object) -> None:
            constructed.append(True)
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(torchvision.datasets, "MNIST", MNIST)

    first = load_dataset("mnist", tmp_path / "data")
    again = load_dataset("mnist", str(tmp_path / "data"))

    assert again is first
    assert len(constructed) == 2  # train and test split, read once


def test_data_dir_is_tried_first(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    arrays = fake_idx_set(tmp_path / "data" / "FashionMNIST" / "raw")
    # A Debian dir that would also work must not be used when data_dir has the files.
    fake_idx_set(tmp_path / "debian", compress=True, num_train=3)
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "debian")

    data = load_dataset("fashion_mnist", tmp_path / "data")

    assert_matches_idx(data, arrays)
    assert data.x_train.max() == 1.0
    assert data.mean == (0.2860,)


def test_data_dir_env_var_is_used_when_no_data_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    arrays = fake_idx_set(tmp_path / "env_data" / "MNIST" / "raw")
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "env_data"))

    data = load_dataset("mnist")

    assert_matches_idx(data, arrays)
    assert data.mean == (0.1307,)


def test_debian_files_are_decompressed_into_the_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, isolated: Path
) -> None:
    arrays = fake_idx_set(tmp_path / "debian", compress=True)
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "debian")

    data = load_dataset("fashion_mnist", tmp_path / "empty")

    assert_matches_idx(data, arrays)
    raw = isolated / "FashionMNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(arrays)  # no temporary files left


def test_decompression_keeps_files_already_in_the_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, isolated: Path
) -> None:
    fake_idx_set(tmp_path / "debian", compress=True)
    cached = fake_idx_set(isolated / "FashionMNIST" / "raw", num_train=2)
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "debian")

    data = load_dataset("fashion_mnist")

    assert_matches_idx(data, cached)


def test_missing_everywhere_names_all_three_places(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, isolated: Path
) -> None:
    missing_debian = tmp_path / "no-such-debian-dir"
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST_DIR", missing_debian)
    empty = tmp_path / "empty"
    empty.mkdir()

    with pytest.raises(FileNotFoundError) as excinfo:
        load_dataset("fashion_mnist", empty)

    message = str(excinfo.value)
    assert str(empty) in message
    assert str(missing_debian) in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert OFFLINE in message
    assert str(isolated) in message


def test_missing_cifar10_names_data_dir_and_download(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as excinfo:
        load_dataset("cifar10", tmp_path)

    message = str(excinfo.value)
    assert str(tmp_path) in message
    assert OFFLINE in message
    assert "apt-get" not in message


def test_channels_last_images_become_channels_first() -> None:
    hwc = np.arange(2 * 4 * 5 * 3, dtype=np.uint8).reshape(2, 4, 5, 3)

    images = datasets._images_to_tensor(hwc)

    assert images.shape == (2, 3, 4, 5)
    assert images.is_contiguous()
    torch.testing.assert_close(
        images[1, 2, 3, 4], torch.tensor(hwc[1, 3, 4, 2] / 255.0, dtype=torch.float32)
    )


def test_image_data_rejects_inconsistent_fields() -> None:
    x = torch.zeros(4, 1, 3, 3)
    y = torch.zeros(4, dtype=torch.int64)

    with pytest.raises(ValueError, match="mean"):
        ImageData(x, y, x, y, num_classes=2, name="t", mean=(0.5, 0.5), std=(0.5, 0.5))
    with pytest.raises(ValueError, match="y_train"):
        ImageData(x, y[:3], x, y, num_classes=2, name="t", mean=(0.5,), std=(0.5,))
    with pytest.raises(ValueError, match="x_test"):
        ImageData(x, y, x.double(), y, num_classes=2, name="t", mean=(0.5,), std=(0.5,))


# --------------------------------------------------------------------------------------------
# conf/dataset


@pytest.mark.parametrize(
    "path", sorted((CONF_DIR / "dataset").glob("*.yaml")), ids=lambda p: p.stem
)
def test_dataset_configs_are_consistent(path: Path) -> None:
    cfg = OmegaConf.create({"seed": 0, "dataset": OmegaConf.load(path)})
    node = cfg.dataset

    assert node.name == path.stem
    assert node.data_dir is None
    if node.name == "synthetic":
        data = get_dataset(node.name, node.data_dir, **(node.synthetic or {}))
        assert data.num_classes == node.num_classes
        assert data.channels == node.channels
        assert list(data.image_size) == list(node.image_size)
    else:
        assert node.synthetic is None
        spec = datasets._TORCHVISION_DATASETS[node.name]
        assert spec.num_classes == node.num_classes
        assert len(spec.mean) == node.channels

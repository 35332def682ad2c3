"""Tests for fedbackdoor.data.torchvision_sets: the loaders, their lookup order, the caches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets

from fedbackdoor.data import torchvision_sets
from fedbackdoor.data.torchvision_sets import (
    DATA_DIR_ENV,
    DEBIAN_FASHION_MNIST_DIR,
    DEBIAN_FASHION_MNIST_FILES,
    cifar10,
    clear_cache,
    fashion_mnist,
    mnist,
)
from tests.data.fakes import OFFLINE, assert_matches_idx, fake_idx_set, write_idx

pytestmark = pytest.mark.usefixtures("isolated")


@pytest.fixture
def constructed(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """One entry per split torchvision's MNIST reads (MNIST only)."""
    reads: list[bool] = []

    class MNIST(torchvision.datasets.MNIST):  # same name: torchvision derives the folder from it
        def __init__(self, *args: object, **kwargs: object) -> None:
            reads.append(True)
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(torchvision.datasets, "MNIST", MNIST)
    return reads


@pytest.mark.skipif(
    not all((DEBIAN_FASHION_MNIST_DIR / f).is_file() for f in DEBIAN_FASHION_MNIST_FILES),
    reason="Debian package dataset-fashion-mnist is not installed",
)
def test_fashion_mnist_from_debian_package(isolated: Path) -> None:
    data = fashion_mnist()
    again = fashion_mnist()

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


def test_loader_reads_files_once_per_process(tmp_path: Path, constructed: list[bool]) -> None:
    fake_idx_set(tmp_path / "data" / "MNIST" / "raw")

    first = mnist(tmp_path / "data")
    again = mnist(str(tmp_path / "data"))

    assert again is first
    assert len(constructed) == 2  # train and test split, read once


def test_a_new_process_loads_the_cached_tensors_without_torchvision(
    tmp_path: Path, constructed: list[bool], isolated: Path
) -> None:
    fake_idx_set(tmp_path / "data" / "MNIST" / "raw")
    first = mnist(tmp_path / "data")
    clear_cache()  # as in a fresh process

    again = mnist(tmp_path / "data")

    assert again is not first
    assert len(constructed) == 2  # only the first read went through torchvision
    for name in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(again, name), getattr(first, name))
    assert again.num_classes == first.num_classes == 10
    assert [p.name.split("-")[0] for p in (isolated / "tensors").iterdir()] == ["mnist"]


def test_a_cache_file_without_the_class_count_is_rebuilt(
    tmp_path: Path, constructed: list[bool], isolated: Path
) -> None:
    fake_idx_set(tmp_path / "data" / "MNIST" / "raw")
    mnist(tmp_path / "data")
    (cache_file,) = (isolated / "tensors").iterdir()
    arrays = torch.load(cache_file, weights_only=True)
    del arrays["num_classes"]  # as an earlier version wrote it
    torch.save(arrays, cache_file)
    clear_cache()

    data = mnist(tmp_path / "data")

    assert len(constructed) == 4
    assert data.num_classes == 10
    assert "num_classes" in torch.load(cache_file, weights_only=True)


def test_num_classes_comes_from_torchvision_not_the_labels(tmp_path: Path) -> None:
    raw = tmp_path / "data" / "MNIST" / "raw"
    fake_idx_set(raw)
    for split, n in (("train", 6), ("t10k", 4)):  # labels 0-2 only: seven classes never occur
        write_idx(raw / f"{split}-labels-idx1-ubyte", np.arange(n, dtype=np.uint8) % 3)

    data = mnist(tmp_path / "data")

    assert int(data.y_train.max()) == 2
    assert data.num_classes == 10


def test_stated_facts_are_checked_against_the_loaded_data(tmp_path: Path) -> None:
    fake_idx_set(tmp_path / "data" / "MNIST" / "raw")

    data = mnist(tmp_path / "data", num_classes=10, image_size=[5, 7], channels=1)

    assert data.image_size == (5, 7)
    with pytest.raises(ValueError, match=r"num_classes=7 does not match.*num_classes 10"):
        mnist(tmp_path / "data", num_classes=7)
    with pytest.raises(ValueError, match=r"image_size=\(28, 28\) does not match.*\(5, 7\)"):
        mnist(tmp_path / "data", image_size=[28, 28])
    with pytest.raises(ValueError, match="channels=3 does not match"):
        mnist(tmp_path / "data", channels=3)


def test_name_labels_the_data_and_shares_its_tensors(tmp_path: Path) -> None:
    fake_idx_set(tmp_path / "data" / "MNIST" / "raw")

    default = mnist(tmp_path / "data")
    named = mnist(tmp_path / "data", name="digits")

    assert default.name == "mnist"
    assert named.name == "digits"
    assert named.x_train is default.x_train


def test_data_dir_is_tried_first(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    arrays = fake_idx_set(tmp_path / "data" / "FashionMNIST" / "raw")
    # A Debian dir that would also work must not be used when data_dir has the files.
    fake_idx_set(tmp_path / "debian", compress=True, num_train=3)
    monkeypatch.setattr(torchvision_sets, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "debian")

    data = fashion_mnist(tmp_path / "data")

    assert_matches_idx(data, arrays)
    assert data.x_train.max() == 1.0
    assert data.mean == (0.2860,)


def test_data_dir_env_var_is_used_when_no_data_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    arrays = fake_idx_set(tmp_path / "env_data" / "MNIST" / "raw")
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "env_data"))

    data = mnist()

    assert_matches_idx(data, arrays)
    assert data.mean == (0.1307,)


def test_debian_files_are_decompressed_into_the_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, isolated: Path
) -> None:
    arrays = fake_idx_set(tmp_path / "debian", compress=True)
    monkeypatch.setattr(torchvision_sets, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "debian")

    data = fashion_mnist(tmp_path / "empty")

    assert_matches_idx(data, arrays)
    raw = isolated / "FashionMNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(arrays)  # no temporary files left
    assert {p.stat().st_mode & 0o777 for p in raw.iterdir()} == {0o644}  # the cache may be shared


def test_decompression_keeps_files_already_in_the_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, isolated: Path
) -> None:
    fake_idx_set(tmp_path / "debian", compress=True)
    cached = fake_idx_set(isolated / "FashionMNIST" / "raw", num_train=2)
    monkeypatch.setattr(torchvision_sets, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "debian")

    data = fashion_mnist()

    assert_matches_idx(data, cached)


def test_missing_everywhere_names_all_three_places(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, isolated: Path
) -> None:
    missing_debian = tmp_path / "no-such-debian-dir"
    monkeypatch.setattr(torchvision_sets, "DEBIAN_FASHION_MNIST_DIR", missing_debian)
    empty = tmp_path / "empty"
    empty.mkdir()

    with pytest.raises(FileNotFoundError) as excinfo:
        fashion_mnist(empty)

    message = str(excinfo.value)
    assert str(empty) in message
    assert str(missing_debian) in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert OFFLINE in message
    assert str(isolated) in message


def test_missing_cifar10_names_data_dir_and_download(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as excinfo:
        cifar10(tmp_path)

    message = str(excinfo.value)
    assert str(tmp_path) in message
    assert OFFLINE in message
    assert "apt-get" not in message


def test_channels_last_images_become_channels_first() -> None:
    hwc = np.arange(2 * 4 * 5 * 3, dtype=np.uint8).reshape(2, 4, 5, 3)

    images = torchvision_sets._images_to_tensor(hwc)

    assert images.shape == (2, 3, 4, 5)
    assert images.is_contiguous()
    torch.testing.assert_close(
        images[1, 2, 3, 4], torch.tensor(hwc[1, 3, 4, 2] / 255.0, dtype=torch.float32)
    )


NOISE = np.random.default_rng(0).bytes(100)


@pytest.mark.parametrize(
    ("name", "damage", "problem"),
    [
        ("train-images-idx3-ubyte", b"", "is not an IDX file of bytes (0 bytes, header empty)"),
        (
            "train-images-idx3-ubyte",
            NOISE,
            f"is not an IDX file of bytes (100 bytes, header {NOISE[:4].hex()})",
        ),
        ("train-images-idx3-ubyte", 50, "is cut short or damaged (50 bytes, its header says 226)"),
        ("train-images-idx3-ubyte", 16, "is cut short or damaged (16 bytes, its header says 226)"),
        ("t10k-labels-idx1-ubyte", 6, "is cut short (6 bytes, less than its 8-byte header)"),
        ("t10k-labels-idx1-ubyte", None, "is missing"),
    ],
)
def test_damaged_files_in_a_given_data_dir_are_one_error_naming_the_file(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    name: str,
    damage: bytes | int | None,
    problem: str,
) -> None:
    # Prepare: the user's copy with one file damaged (empty, noise, cut at a byte, gone), and
    # a Debian copy that would load: it must not be used instead
    raw = tmp_path / "data" / "FashionMNIST" / "raw"
    fake_idx_set(raw)
    fake_idx_set(tmp_path / "debian", compress=True)
    monkeypatch.setattr(torchvision_sets, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "debian")
    bad = raw / name
    if damage is None:
        bad.unlink()
    else:
        bad.write_bytes(damage if isinstance(damage, bytes) else bad.read_bytes()[:damage])

    # Execute
    with pytest.raises(FileNotFoundError) as info:
        fashion_mnist(tmp_path / "data")

    # Assert
    assert str(info.value) == (
        f"Could not load dataset 'fashion_mnist' from data_dir {tmp_path / 'data'}: {bad} {problem}"
    )


def test_gzipped_files_in_a_given_data_dir_are_named_with_the_fix(tmp_path: Path) -> None:
    raw = tmp_path / "data" / "MNIST" / "raw"
    fake_idx_set(raw, compress=True)

    with pytest.raises(FileNotFoundError) as info:
        mnist(tmp_path / "data")

    assert str(info.value) == (
        f"Could not load dataset 'mnist' from data_dir {tmp_path / 'data'}: "
        f"{raw / 'train-images-idx3-ubyte'} is missing (gunzip its .gz)"
    )


def test_a_corrupt_cifar10_batch_in_a_given_data_dir_is_named(tmp_path: Path) -> None:
    raw = tmp_path / "cifar-10-batches-py"
    raw.mkdir()
    (raw / "data_batch_1").write_bytes(NOISE)
    name, md5 = torchvision.datasets.CIFAR10.train_list[0]

    with pytest.raises(FileNotFoundError) as info:
        cifar10(tmp_path)

    assert str(info.value) == (
        f"Could not load dataset 'cifar10' from data_dir {tmp_path}: {raw / name} is cut short "
        f"or corrupt (its MD5 is not the dataset's {md5})"
    )


def test_damaged_files_in_the_env_var_data_dir_still_fall_back(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Only a data_dir passed to the loader is the only place tried; the default search
    # ($FEDBACKDOOR_DATA_DIR, the Debian package, the cache) stays as it was.
    raw = tmp_path / "env_data" / "FashionMNIST" / "raw"
    fake_idx_set(raw)
    images = raw / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:50])
    arrays = fake_idx_set(tmp_path / "debian", compress=True, num_train=3)
    monkeypatch.setattr(torchvision_sets, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "debian")
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "env_data"))

    data = fashion_mnist()

    assert_matches_idx(data, arrays)

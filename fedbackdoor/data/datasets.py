"""Image datasets as whole tensors in memory: Fashion-MNIST, MNIST, CIFAR-10 and a synthetic set.

Every dataset is held as one ``float32`` tensor of images in ``[0, 1]`` per split, plus
``int64`` labels, so training indexes batches and triggers are stamped on whole batches; nothing
goes through PIL or a per-sample ``__getitem__``. Per-channel normalisation is left to the model
(the statistics travel with the data as :attr:`ImageData.mean` / :attr:`ImageData.std`), so a
trigger is always defined in pixel space.

The torchvision datasets are read from local files when possible and downloaded only as a last
resort; see :func:`load_dataset` for the lookup order. Fashion-MNIST is Xiao et al. (2017),
"Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine Learning Algorithms".
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib
import inspect
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "CACHE_DIR_ENV",
    "DATA_DIR_ENV",
    "DEBIAN_FASHION_MNIST_DIR",
    "DEBIAN_FASHION_MNIST_FILES",
    "ImageData",
    "clear_cache",
    "default_cache_dir",
    "get_dataset",
    "load_dataset",
    "synthetic",
]

DATA_DIR_ENV = "FEDBACKDOOR_DATA_DIR"
"""Environment variable naming a torchvision root to try first when ``data_dir`` is None."""

CACHE_DIR_ENV = "FEDBACKDOOR_CACHE_DIR"
"""Environment variable overriding :func:`default_cache_dir`."""

DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where the Debian package ``dataset-fashion-mnist`` installs the gzipped IDX files."""

DEBIAN_FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


@dataclass(frozen=True, eq=False)
class ImageData:
    """A labelled image dataset held in memory, train and test split.

    The instance is shared (it is cached per process), so its tensors must never be modified in
    place: index or ``clone()`` before poisoning.

    Attributes
    ----------
    x_train, x_test : Tensor
        Images, ``float32`` of shape ``[N, C, H, W]`` with values in ``[0, 1]``.
    y_train, y_test : Tensor
        Labels, ``int64`` of shape ``[N]`` with values in ``[0, num_classes)``.
    num_classes : int
        Number of classes.
    name : str
        Dataset name (``"fashion_mnist"``, ``"synthetic"``, ...).
    mean, std : tuple of float
        Per-channel statistics of the training images, for the model's input normalisation.
    """

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    name: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        for split, x, y in (
            ("train", self.x_train, self.y_train),
            ("test", self.x_test, self.y_test),
        ):
            if x.ndim != 4 or x.dtype != torch.float32:
                raise ValueError(
                    f"x_{split} must be float32 [N, C, H, W], got {x.dtype} {tuple(x.shape)}"
                )
            if y.ndim != 1 or y.dtype != torch.int64 or len(y) != len(x):
                raise ValueError(
                    f"y_{split} must be int64 [{len(x)}], got {y.dtype} {tuple(y.shape)}"
                )
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(
                f"train images {tuple(self.x_train.shape[1:])} and test images "
                f"{tuple(self.x_test.shape[1:])} differ in shape"
            )
        if not len(self.mean) == len(self.std) == self.channels:
            raise ValueError(
                f"mean {self.mean} and std {self.std} need one value per channel ({self.channels})"
            )
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {self.num_classes}")

    @property
    def channels(self) -> int:
        """Number of image channels ``C``."""
        return int(self.x_train.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        """Image height and width ``(H, W)``."""
        return int(self.x_train.shape[2]), int(self.x_train.shape[3])

    def __repr__(self) -> str:
        return (
            f"ImageData(name={self.name!r}, train={len(self.y_train)}, test={len(self.y_test)}, "
            f"num_classes={self.num_classes}, channels={self.channels}, "
            f"image_size={self.image_size})"
        )


# --------------------------------------------------------------------------------------------
# Synthetic data


def synthetic(
    *,
    num_train: int = 2000,
    num_test: int = 500,
    num_classes: int = 4,
    image_size: Sequence[int] = (12, 12),
    channels: int = 1,
    seed: int = 0,
    noise_std: float = 0.3,
) -> ImageData:
    """A small, learnable image dataset made in memory: noisy copies of one prototype per class.

    Each class gets a smooth random prototype (uniform noise on a coarse grid, upsampled
    bilinearly); a sample is its class prototype plus Gaussian pixel noise, clipped to
    ``[0, 1]``. Classes are balanced (sizes differ by at most one) and shuffled. A small CNN
    learns it to high accuracy within a few epochs, which makes it the dataset for fast tests.

    Parameters
    ----------
    num_train, num_test : int
        Number of training and test samples.
    num_classes : int
        Number of classes (at least 2).
    image_size : sequence of two int
        Image height and width.
    channels : int
        Number of image channels.
    seed : int
        Seed of the ``torch.Generator`` all draws come from; the same arguments give the same
        tensors.
    noise_std : float
        Standard deviation of the per-pixel Gaussian noise (before clipping).

    Returns
    -------
    ImageData
        ``name="synthetic"``; mean and std are measured on the training images.
    """
    height, width = _image_size(image_size)
    if num_train < 1 or num_test < 1:
        raise ValueError(f"num_train and num_test must be positive, got {num_train}, {num_test}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    if channels < 1:
        raise ValueError(f"channels must be positive, got {channels}")
    if noise_std < 0:
        raise ValueError(f"noise_std must be non-negative, got {noise_std}")

    generator = torch.Generator().manual_seed(int(seed))
    coarse = torch.rand(
        num_classes, channels, max(2, height // 3), max(2, width // 3), generator=generator
    )
    prototypes = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)

    def draw(n: int) -> tuple[Tensor, Tensor]:
        labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=generator)]
        noise = torch.randn(n, channels, height, width, generator=generator)
        images = (prototypes[labels] + noise_std * noise).clamp_(0.0, 1.0)
        return images, labels

    x_train, y_train = draw(num_train)
    x_test, y_test = draw(num_test)
    mean = x_train.mean(dim=(0, 2, 3))
    std = x_train.std(dim=(0, 2, 3)).clamp_min(1e-6)
    return ImageData(
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=num_classes,
        name="synthetic",
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
    )


def _image_size(image_size: Sequence[int]) -> tuple[int, int]:
    """``(H, W)`` from any two-element sequence (YAML gives lists), validated."""
    size = tuple(int(v) for v in image_size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"image_size must be two positive ints (H, W), got {image_size!r}")
    return size[0], size[1]


# --------------------------------------------------------------------------------------------
# torchvision datasets


@dataclass(frozen=True)
class _TorchvisionSpec:
    """How to build one torchvision dataset, and its standard normalisation statistics."""

    class_name: str  # attribute of ``torchvision.datasets``, looked up at call time
    raw_folder: str  # where under the root torchvision keeps the files
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    debian_package: bool = False  # raw files may come from DEBIAN_FASHION_MNIST_DIR


_TORCHVISION_DATASETS: dict[str, _TorchvisionSpec] = {
    "fashion_mnist": _TorchvisionSpec(
        "FashionMNIST", "FashionMNIST/raw", 10, (0.2860,), (0.3530,), debian_package=True
    ),
    "mnist": _TorchvisionSpec("MNIST", "MNIST/raw", 10, (0.1307,), (0.3081,)),
    "cifar10": _TorchvisionSpec(
        "CIFAR10", "cifar-10-batches-py", 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    ),
}

# What a failed attempt to read a torchvision root can raise: RuntimeError ("Dataset not found",
# bad checksum, failed download), OSError (I/O, URLError, bad gzip), EOFError (truncated gzip).
_LOAD_ERRORS = (RuntimeError, OSError, EOFError)


def default_cache_dir() -> Path:
    """Where decompressed and downloaded raw files go.

    ``$FEDBACKDOOR_CACHE_DIR`` if set, else ``~/.cache/fedbackdoor/data``.
    """
    override = os.environ.get(CACHE_DIR_ENV)
    if override:
        return Path(override).expanduser()
    return Path.home() / ".cache" / "fedbackdoor" / "data"


def load_dataset(name: str, data_dir: str | os.PathLike[str] | None = None) -> ImageData:
    """Load a torchvision dataset whole into memory, once per process.

    The raw files are looked for, in order:

    1. in ``data_dir`` (a torchvision root, e.g. ``<data_dir>/FashionMNIST/raw/...``), or in
       ``$FEDBACKDOOR_DATA_DIR`` when ``data_dir`` is None;
    2. for ``fashion_mnist`` only, in :data:`DEBIAN_FASHION_MNIST_DIR` (Debian package
       ``dataset-fashion-mnist``): the gzipped IDX files are decompressed once, atomically, into
       the cache dir (:func:`default_cache_dir`), which then serves as the root;
    3. in the cache dir, downloading them there first if missing (needs internet).

    Results are cached per process on the name, the resolved data dir, the cache dir and the
    Debian dir, so the server and every Ray actor each read the files once and share the tensors
    (never modify them in place).

    Parameters
    ----------
    name : {"fashion_mnist", "mnist", "cifar10"}
        Dataset name. For the synthetic dataset use :func:`synthetic` or :func:`get_dataset`.
    data_dir : str or path-like, optional
        A torchvision root to try first.

    Returns
    -------
    ImageData
        Images ``float32`` in ``[0, 1]`` as ``[N, C, H, W]``, with the dataset's standard
        per-channel mean and std.

    Raises
    ------
    ValueError
        If ``name`` is not one of the supported datasets.
    FileNotFoundError
        If every place failed; the message lists each place tried and why it failed.
    """
    if name not in _TORCHVISION_DATASETS:
        raise ValueError(
            f"Unknown dataset {name!r}; load_dataset knows {sorted(_TORCHVISION_DATASETS)} "
            f"(the synthetic dataset comes from synthetic() or get_dataset('synthetic'))"
        )
    if data_dir is None:
        data_dir = os.environ.get(DATA_DIR_ENV) or None
    root = None if data_dir is None else str(Path(data_dir).expanduser())
    debian_dir = (
        str(DEBIAN_FASHION_MNIST_DIR) if _TORCHVISION_DATASETS[name].debian_package else None
    )
    return _load_torchvision(name, root, str(default_cache_dir()), debian_dir)


@functools.lru_cache(maxsize=4)
def _load_torchvision(
    name: str, data_dir: str | None, cache_dir: str, debian_dir: str | None
) -> ImageData:
    """:func:`load_dataset` with every lookup location resolved, so it can be cached."""
    spec = _TORCHVISION_DATASETS[name]
    tried: list[str] = []
    last_error: BaseException | None = None

    if data_dir is not None:
        try:
            return _read_torchvision(spec, name, Path(data_dir), Path(cache_dir), download=False)
        except _LOAD_ERRORS as err:
            last_error = err
            tried.append(f"data_dir {data_dir}: {type(err).__name__}: {err}")
    else:
        tried.append(f"data_dir: none given (pass data_dir or set ${DATA_DIR_ENV})")

    if debian_dir is not None:
        debian = Path(debian_dir)
        missing = [f for f in DEBIAN_FASHION_MNIST_FILES if not (debian / f).is_file()]
        if missing:
            tried.append(
                f"Debian package files in {debian}: {', '.join(missing)} not found "
                f"(install them with `apt-get install dataset-fashion-mnist`)"
            )
        else:
            try:
                _decompress_debian_fashion_mnist(debian, Path(cache_dir))
                return _read_torchvision(
                    spec, name, Path(cache_dir), Path(cache_dir), download=False
                )
            except _LOAD_ERRORS as err:
                last_error = err
                tried.append(
                    f"Debian package files in {debian} (decompressed into {cache_dir}): "
                    f"{type(err).__name__}: {err}"
                )

    try:
        # With the files already in the cache, torchvision skips the download.
        return _read_torchvision(spec, name, Path(cache_dir), Path(cache_dir), download=True)
    except _LOAD_ERRORS as err:
        last_error = err
        tried.append(f"download into cache dir {cache_dir}: {type(err).__name__}: {err}")

    places = "\n".join(f"  {i}. {line}" for i, line in enumerate(tried, start=1))
    raise FileNotFoundError(
        f"Could not load dataset {name!r}. Tried, in order:\n{places}"
    ) from last_error


def _read_torchvision(
    spec: _TorchvisionSpec, name: str, root: Path, cache_dir: Path, *, download: bool
) -> ImageData:
    """Both splits of a torchvision dataset under ``root``, converted to tensors in one go.

    The first read of a set of raw files goes through torchvision and leaves their tensors in
    ``<cache_dir>/tensors/`` (keyed by the files' paths, sizes and modification times); later
    reads, e.g. every Ray actor of every run, load those tensors directly and do not even import
    torchvision (whose import alone takes about two seconds).
    """
    tensor_file = _tensor_cache_file(name, root / spec.raw_folder, cache_dir)
    if tensor_file is not None and tensor_file.is_file():
        try:
            arrays = torch.load(tensor_file, weights_only=True)
        except Exception:  # a damaged cache file is rebuilt below
            arrays = None
        if arrays is not None:
            return _image_data(spec, name, arrays)
    datasets = importlib.import_module("torchvision.datasets")
    dataset_cls = getattr(datasets, spec.class_name)
    train = dataset_cls(root=str(root), train=True, download=download)
    test = dataset_cls(root=str(root), train=False, download=download)
    arrays = {
        "x_train": torch.as_tensor(train.data),
        "y_train": torch.as_tensor(np.asarray(train.targets), dtype=torch.int64),
        "x_test": torch.as_tensor(test.data),
        "y_test": torch.as_tensor(np.asarray(test.targets), dtype=torch.int64),
    }
    tensor_file = tensor_file or _tensor_cache_file(name, root / spec.raw_folder, cache_dir)
    if tensor_file is not None:
        _save_atomically(arrays, tensor_file)
    return _image_data(spec, name, arrays)


def _image_data(spec: _TorchvisionSpec, name: str, arrays: dict[str, Tensor]) -> ImageData:
    return ImageData(
        x_train=_images_to_tensor(arrays["x_train"]),
        y_train=arrays["y_train"],
        x_test=_images_to_tensor(arrays["x_test"]),
        y_test=arrays["y_test"],
        num_classes=spec.num_classes,
        name=name,
        mean=spec.mean,
        std=spec.std,
    )


def _tensor_cache_file(name: str, raw_folder: Path, cache_dir: Path) -> Path | None:
    """Where the tensors of the raw files in ``raw_folder`` are cached (None if no files)."""
    if not raw_folder.is_dir():
        return None
    stats = sorted(
        (str(f.relative_to(raw_folder)), f.stat().st_size, f.stat().st_mtime_ns)
        for f in raw_folder.rglob("*")
        if f.is_file()
    )
    if not stats:
        return None
    key = hashlib.sha256(repr((str(raw_folder.resolve()), stats)).encode()).hexdigest()[:16]
    return cache_dir / "tensors" / f"{name}-{key}.pt"


def _save_atomically(arrays: dict[str, Tensor], target: Path) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        with os.fdopen(fd, "wb") as out:
            torch.save(arrays, out)
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, target)
    except OSError:  # a read-only cache only costs speed
        Path(locals().get("tmp_name", target)).unlink(missing_ok=True)


def _images_to_tensor(data: Tensor | np.ndarray) -> Tensor:
    """``uint8`` images ``[N, H, W]`` (MNIST) or ``[N, H, W, C]`` (CIFAR) -> ``float32``
    ``[N, C, H, W]`` in ``[0, 1]``."""
    images = torch.as_tensor(data)
    if images.dtype != torch.uint8:
        raise ValueError(f"expected uint8 images, got {images.dtype}")
    if images.ndim == 3:
        images = images.unsqueeze(1)
    elif images.ndim == 4:
        images = images.permute(0, 3, 1, 2)
    else:
        raise ValueError(f"expected images [N, H, W] or [N, H, W, C], got {tuple(images.shape)}")
    return images.to(torch.float32).div_(255.0).contiguous()


def _decompress_debian_fashion_mnist(debian_dir: Path, cache_dir: Path) -> Path:
    """Decompress the Debian IDX files into ``<cache_dir>/FashionMNIST/raw`` (where torchvision
    looks) unless already there; returns that folder.

    Each file is written under a temporary name and moved into place with ``os.replace``, so
    processes racing on a cold cache never see a partial file.
    """
    raw = cache_dir / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for gz_name in DEBIAN_FASHION_MNIST_FILES:
        target = raw / gz_name.removesuffix(".gz")
        if target.is_file():
            continue
        fd, tmp_name = tempfile.mkstemp(dir=raw, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out, gzip.open(debian_dir / gz_name, "rb") as src:
                shutil.copyfileobj(src, out, length=1 << 20)
            os.chmod(tmp_name, 0o644)  # mkstemp makes 0600; the cache may be shared
            os.replace(tmp_name, target)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
    return raw


# --------------------------------------------------------------------------------------------
# One entry point for configs


def get_dataset(
    name: str, data_dir: str | os.PathLike[str] | None = None, **synthetic_kwargs: Any
) -> ImageData:
    """The dataset a config names, cached per process.

    Parameters
    ----------
    name : str
        ``"synthetic"`` or a name :func:`load_dataset` knows.
    data_dir : str or path-like, optional
        Passed to :func:`load_dataset`; ignored for ``"synthetic"``.
    **synthetic_kwargs
        Keyword arguments of :func:`synthetic` (``image_size`` may be a list, as YAML gives it).
        Only allowed with ``name="synthetic"``.

    Returns
    -------
    ImageData
        The same object for the same arguments within a process.
    """
    if name == "synthetic":
        bound = inspect.signature(synthetic).bind(**synthetic_kwargs)
        bound.apply_defaults()
        settings = dict(bound.arguments)
        settings["image_size"] = _image_size(settings["image_size"])
        # A fixed argument order, so the cache key does not depend on keyword order.
        return _synthetic_cached(tuple(sorted(settings.items())))
    if synthetic_kwargs:
        raise ValueError(
            f"synthetic settings {sorted(synthetic_kwargs)} given for dataset {name!r}; "
            f"they apply only to 'synthetic'"
        )
    if name not in _TORCHVISION_DATASETS:
        valid = sorted([*_TORCHVISION_DATASETS, "synthetic"])
        raise ValueError(f"Unknown dataset {name!r}; valid names: {valid}")
    return load_dataset(name, data_dir)


@functools.lru_cache(maxsize=8)
def _synthetic_cached(settings: tuple[tuple[str, Any], ...]) -> ImageData:
    return synthetic(**dict(settings))


def clear_cache() -> None:
    """Forget every dataset cached by :func:`load_dataset` and :func:`get_dataset`."""
    _load_torchvision.cache_clear()
    _synthetic_cached.cache_clear()

"""The torchvision image datasets, read whole into memory: Fashion-MNIST, MNIST and CIFAR-10.

One loader per dataset (the ``_target_`` of ``conf/dataset/<name>.yaml``). Each reads the raw
files from local places when it can and downloads them only as a last resort, in the order
:func:`fashion_mnist` describes, and keeps the converted tensors in a cache on disk so that
later processes load them without torchvision.

References
----------
.. [1] H. Xiao, K. Rasul and R. Vollgraf, "Fashion-MNIST: a Novel Image Dataset for
   Benchmarking Machine Learning Algorithms", arXiv:1708.07747, 2017.
.. [2] Y. LeCun, L. Bottou, Y. Bengio and P. Haffner, "Gradient-Based Learning Applied to
   Document Recognition", Proc. IEEE 86(11), 1998 (MNIST).
.. [3] A. Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", 2009 (CIFAR-10).
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import importlib
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fedbackdoor.data.image_data import ImageData, check_stated
from fedbackdoor.files import atomic_path

__all__ = [
    "CACHE_DIR_ENV",
    "DATA_DIR_ENV",
    "DEBIAN_FASHION_MNIST_DIR",
    "DEBIAN_FASHION_MNIST_FILES",
    "cifar10",
    "clear_cache",
    "default_cache_dir",
    "fashion_mnist",
    "mnist",
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


@dataclass(frozen=True)
class _Source:
    """Where one torchvision dataset's files live and its standard normalisation statistics."""

    name: str  # the data's default name, and the prefix of its tensor cache files
    class_name: str  # attribute of ``torchvision.datasets``, looked up at call time
    raw_folder: str  # where under the root torchvision keeps the files
    mean: tuple[float, ...]
    std: tuple[float, ...]
    debian_package: bool = False  # raw files may come from DEBIAN_FASHION_MNIST_DIR
    idx: bool = False  # raw files in MNIST's IDX format (else CIFAR's batches, with MD5s)


_FASHION_MNIST = _Source(
    "fashion_mnist",
    "FashionMNIST",
    "FashionMNIST/raw",
    (0.2860,),
    (0.3530,),
    debian_package=True,
    idx=True,
)
_MNIST = _Source("mnist", "MNIST", "MNIST/raw", (0.1307,), (0.3081,), idx=True)
_CIFAR10 = _Source(
    "cifar10", "CIFAR10", "cifar-10-batches-py", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
)

# What a failed attempt to read a torchvision root can raise: RuntimeError ("Dataset not found",
# bad checksum, failed download), OSError (I/O, URLError, bad gzip), EOFError (truncated gzip).
_LOAD_ERRORS = (RuntimeError, OSError, EOFError)

# What torchvision's parsers raise on a damaged raw file (an empty or cut IDX file).
_PARSE_ERRORS = (AssertionError, ValueError, TypeError, KeyError, IndexError)

#: The (Fashion-)MNIST raw files torchvision reads, in the IDX format.
_IDX_FILES = tuple(f.removesuffix(".gz") for f in DEBIAN_FASHION_MNIST_FILES)


def fashion_mnist(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    name: str = "fashion_mnist",
    num_classes: int | None = None,
    image_size: Sequence[int] | None = None,
    channels: int | None = None,
) -> ImageData:
    """Fashion-MNIST [1]_: 60k/10k grayscale 28x28 clothing images, 10 classes.

    The raw files are looked for, in order:

    1. in ``data_dir`` (a torchvision root, e.g. ``<data_dir>/FashionMNIST/raw/...``), or in
       ``$FEDBACKDOOR_DATA_DIR`` when ``data_dir`` is None; a ``data_dir`` given here whose
       raw folder holds files is the only place tried: if they cannot be read, that is an
       error naming the file, never a silent switch to another copy;
    2. in :data:`DEBIAN_FASHION_MNIST_DIR` (Debian package ``dataset-fashion-mnist``): the
       gzipped IDX files are decompressed once, atomically, into the cache dir
       (:func:`default_cache_dir`), which then serves as the root;
    3. in the cache dir, downloading them there first if missing (needs internet).

    :func:`mnist` and :func:`cifar10` do the same without step 2. The data is read once per
    process for each resolved data dir, cache dir and Debian dir, so the server and every Ray
    actor each read the files once and share the tensors (never modify them in place).

    Parameters
    ----------
    data_dir : str or path-like, optional
        A torchvision root to try first.
    name : str
        The returned data's name (the config's ``dataset.name``).
    num_classes, image_size, channels : optional
        What the config states about the data; each one given must match what was loaded
        (:func:`~fedbackdoor.data.image_data.check_stated`).

    Returns
    -------
    ImageData
        Images ``float32`` in ``[0, 1]`` as ``[N, C, H, W]``, with the dataset's standard
        per-channel mean and std.

    Raises
    ------
    FileNotFoundError
        If every place failed; the message lists each place tried and why it failed. Or, in
        one line naming the file, if the raw files in a given ``data_dir`` are missing, cut
        short or corrupt.
    ValueError
        If a stated fact disagrees with the loaded data; the message names it.
    """
    data = _load(_FASHION_MNIST, data_dir, name)
    return check_stated(data, num_classes=num_classes, image_size=image_size, channels=channels)


def mnist(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    name: str = "mnist",
    num_classes: int | None = None,
    image_size: Sequence[int] | None = None,
    channels: int | None = None,
) -> ImageData:
    """MNIST [2]_: 60k/10k grayscale 28x28 handwritten digits, 10 classes.

    Read from ``data_dir`` (or ``$FEDBACKDOOR_DATA_DIR``), else from the cache dir, downloading
    there if needed; arguments, result and errors as for :func:`fashion_mnist`.
    """
    data = _load(_MNIST, data_dir, name)
    return check_stated(data, num_classes=num_classes, image_size=image_size, channels=channels)


def cifar10(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    name: str = "cifar10",
    num_classes: int | None = None,
    image_size: Sequence[int] | None = None,
    channels: int | None = None,
) -> ImageData:
    """CIFAR-10 [3]_: 50k/10k colour 32x32 images, 10 classes.

    Read from ``data_dir`` (or ``$FEDBACKDOOR_DATA_DIR``), else from the cache dir, downloading
    there if needed; arguments, result and errors as for :func:`fashion_mnist`.
    """
    data = _load(_CIFAR10, data_dir, name)
    return check_stated(data, num_classes=num_classes, image_size=image_size, channels=channels)


def default_cache_dir() -> Path:
    """Where decompressed and downloaded raw files go.

    ``$FEDBACKDOOR_CACHE_DIR`` if set, else ``~/.cache/fedbackdoor/data``.
    """
    override = os.environ.get(CACHE_DIR_ENV)
    if override:
        return Path(override).expanduser()
    return Path.home() / ".cache" / "fedbackdoor" / "data"


def clear_cache() -> None:
    """Forget every dataset this process has loaded."""
    _load_torchvision.cache_clear()


def _load(source: _Source, data_dir: str | os.PathLike[str] | None, name: str) -> ImageData:
    """``source``'s data, every lookup location resolved (the cache key), named ``name``."""
    given = data_dir is not None
    if data_dir is None:
        data_dir = os.environ.get(DATA_DIR_ENV) or None
    root = None if data_dir is None else str(Path(data_dir).expanduser())
    debian_dir = str(DEBIAN_FASHION_MNIST_DIR) if source.debian_package else None
    data = _load_torchvision(source, root, str(default_cache_dir()), debian_dir, given=given)
    # Another name shares the tensors: a new container, not a copy.
    return data if name == data.name else dataclasses.replace(data, name=name)


@functools.lru_cache(maxsize=4)
def _load_torchvision(
    source: _Source,
    data_dir: str | None,
    cache_dir: str,
    debian_dir: str | None,
    *,
    given: bool = False,
) -> ImageData:
    """The lookup order of :func:`fashion_mnist`, with every location resolved; ``given``:
    ``data_dir`` was passed (not taken from the environment)."""
    tried: list[str] = []
    last_error: BaseException | None = None

    if data_dir is not None:
        try:
            return _read_torchvision(source, Path(data_dir), Path(cache_dir), download=False)
        except (*_LOAD_ERRORS, *_PARSE_ERRORS) as err:
            raw = Path(data_dir) / source.raw_folder
            if given and raw.is_dir() and any(p.is_file() for p in raw.rglob("*")):
                # The user's own copy: loading another one instead would leave a config that
                # names files the run never read.
                raise FileNotFoundError(
                    f"Could not load dataset {source.name!r} from data_dir {data_dir}: "
                    f"{_unreadable(source, raw, err)}"
                ) from err
            if not isinstance(err, _LOAD_ERRORS):
                raise
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
                return _read_torchvision(source, Path(cache_dir), Path(cache_dir), download=False)
            except _LOAD_ERRORS as err:
                last_error = err
                tried.append(
                    f"Debian package files in {debian} (decompressed into {cache_dir}): "
                    f"{type(err).__name__}: {err}"
                )

    try:
        # With the files already in the cache, torchvision skips the download.
        return _read_torchvision(source, Path(cache_dir), Path(cache_dir), download=True)
    except _LOAD_ERRORS as err:
        last_error = err
        tried.append(f"download into cache dir {cache_dir}: {type(err).__name__}: {err}")

    places = "\n".join(f"  {i}. {line}" for i, line in enumerate(tried, start=1))
    raise FileNotFoundError(
        f"Could not load dataset {source.name!r}. Tried, in order:\n{places}"
    ) from last_error


def _read_torchvision(source: _Source, root: Path, cache_dir: Path, *, download: bool) -> ImageData:
    """Both splits of a torchvision dataset under ``root``, converted to tensors in one go.

    The first read of a set of raw files goes through torchvision and leaves their tensors (and
    the dataset's class count, from torchvision's ``classes``) in ``<cache_dir>/tensors/``
    (keyed by the files' paths, sizes and modification times); later reads, e.g. every Ray
    actor of every run, load those directly and do not even import torchvision (whose import
    alone takes about two seconds).
    """
    tensor_file = _tensor_cache_file(source.name, root / source.raw_folder, cache_dir)
    if tensor_file is not None and tensor_file.is_file():
        try:
            cached = torch.load(tensor_file, weights_only=True)
        except Exception:  # a damaged cache file is rebuilt below
            cached = None
        # A file without the class count (written by an earlier version) is rebuilt too.
        if isinstance(cached, dict) and "num_classes" in cached:
            return _image_data(source, cached)
    datasets = importlib.import_module("torchvision.datasets")
    dataset_cls = getattr(datasets, source.class_name)
    train = dataset_cls(root=str(root), train=True, download=download)
    test = dataset_cls(root=str(root), train=False, download=download)
    arrays = {
        "x_train": torch.as_tensor(train.data),
        "y_train": torch.as_tensor(np.asarray(train.targets), dtype=torch.int64),
        "x_test": torch.as_tensor(test.data),
        "y_test": torch.as_tensor(np.asarray(test.targets), dtype=torch.int64),
        "num_classes": len(train.classes),
    }
    tensor_file = tensor_file or _tensor_cache_file(
        source.name, root / source.raw_folder, cache_dir
    )
    if tensor_file is not None:
        try:
            tensor_file.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(tensor_file) as tmp:
                torch.save(arrays, tmp)
                tmp.chmod(0o644)  # whatever the umask: the cache may be shared
        except OSError:  # a read-only cache only costs speed
            pass
    return _image_data(source, arrays)


def _unreadable(source: _Source, raw: Path, err: BaseException) -> str:
    """Why torchvision could not read ``source``'s raw files in ``raw``, as one line: the
    first file that is missing, cut short or corrupt, else torchvision's own ``err``."""
    if source.idx:
        for name in _IDX_FILES:
            path = raw / name
            if not path.is_file():
                gzipped = path.with_name(f"{name}.gz").is_file()
                return f"{path} is missing" + (" (gunzip its .gz)" if gzipped else "")
            problem = _idx_problem(path)
            if problem is not None:
                return f"{path} {problem}"
    else:
        datasets = importlib.import_module("torchvision.datasets")
        utils = importlib.import_module("torchvision.datasets.utils")
        cls = getattr(datasets, source.class_name)
        for name, md5 in [*cls.train_list, *cls.test_list, (cls.meta["filename"], cls.meta["md5"])]:
            path = raw / name
            if not path.is_file():
                return f"{path} is missing"
            if not utils.check_integrity(str(path), md5):
                return f"{path} is cut short or corrupt (its MD5 is not the dataset's {md5})"
    reason = " ".join(str(err).split()) or "no reason given"
    return f"torchvision cannot read the files in {raw} ({type(err).__name__}: {reason})"


def _idx_problem(path: Path) -> str | None:
    """What is wrong with the IDX file of bytes at ``path`` (header: two zero bytes, type
    0x08, the number of dimensions, then each size as 4 big-endian bytes), or None."""
    size = path.stat().st_size
    with path.open("rb") as file:
        head = file.read(16)
    if len(head) < 4 or head[:3] != b"\x00\x00\x08" or not 1 <= head[3] <= 3:
        return f"is not an IDX file of bytes ({size} bytes, header {head[:4].hex() or 'empty'})"
    header = 4 + 4 * head[3]
    if size < header:
        return f"is cut short ({size} bytes, less than its {header}-byte header)"
    expected = header + math.prod(
        int.from_bytes(head[i : i + 4], "big") for i in range(4, header, 4)
    )
    if size != expected:
        return f"is cut short or damaged ({size} bytes, its header says {expected})"
    return None


def _image_data(source: _Source, arrays: Mapping[str, Any]) -> ImageData:
    """:class:`ImageData` from what torchvision read (or the tensor cache kept)."""
    return ImageData(
        x_train=_images_to_tensor(arrays["x_train"]),
        y_train=arrays["y_train"],
        x_test=_images_to_tensor(arrays["x_test"]),
        y_test=arrays["y_test"],
        num_classes=int(arrays["num_classes"]),
        name=source.name,
        mean=source.mean,
        std=source.std,
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

    Each file is written atomically (:func:`~fedbackdoor.files.atomic_path`), so processes
    racing on a cold cache never see a partial file.
    """
    raw = cache_dir / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for gz_name in DEBIAN_FASHION_MNIST_FILES:
        target = raw / gz_name.removesuffix(".gz")
        if target.is_file():
            continue
        with atomic_path(target) as tmp:
            with gzip.open(debian_dir / gz_name, "rb") as src, tmp.open("wb") as out:
                shutil.copyfileobj(src, out, length=1 << 20)
            tmp.chmod(0o644)  # whatever the umask: the cache may be shared
    return raw

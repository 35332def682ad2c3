"""The in-memory image dataset every loader returns, and the checks a loader makes against what
its config states.

Every dataset is held as one ``float32`` tensor of images in ``[0, 1]`` per split, plus
``int64`` labels, so training indexes batches and triggers are stamped on whole batches; nothing
goes through PIL or a per-sample ``__getitem__``. Per-channel normalisation is left to the model
(the statistics travel with the data as :attr:`ImageData.mean` / :attr:`ImageData.std`), so a
trigger is always defined in pixel space.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["ImageData", "check_stated", "image_size_pair"]


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


def image_size_pair(image_size: Sequence[int]) -> tuple[int, int]:
    """``(H, W)`` from a sequence of two positive ints, as YAML (a list) or Hydra (a
    ``ListConfig``) gives it.

    Raises
    ------
    ValueError
        If ``image_size`` is not two integers, or one of them is not positive.
    """
    if isinstance(image_size, str) or not isinstance(image_size, Sequence) or len(image_size) != 2:
        raise ValueError(f"image_size must be a pair of ints, got {image_size!r}")
    try:
        height, width = (operator.index(v) for v in image_size)
    except TypeError:
        raise ValueError(f"image_size must be a pair of ints, got {image_size!r}") from None
    if height <= 0 or width <= 0:
        raise ValueError(f"image_size must be positive, got ({height}, {width})")
    return height, width


def check_stated(
    data: ImageData,
    *,
    num_classes: int | None = None,
    image_size: Sequence[int] | None = None,
    channels: int | None = None,
) -> ImageData:
    """``data``, once it agrees with what its config states about it.

    A loader calls this with the facts its YAML states (``None``: not stated, not checked), so
    a config that other settings interpolate (``${dataset.num_classes}`` sizes a label flip,
    ``${dataset.image_size}`` a trigger) cannot silently describe other data than it loads.

    Raises
    ------
    ValueError
        Naming the first stated key that disagrees with the loaded data, and both values.
    """
    loaded: dict[str, object] = {
        "num_classes": data.num_classes,
        "image_size": data.image_size,
        "channels": data.channels,
    }
    stated: dict[str, object] = {
        "num_classes": num_classes,
        "image_size": None if image_size is None else image_size_pair(image_size),
        "channels": channels,
    }
    for key, value in stated.items():
        if value is not None and value != loaded[key]:
            raise ValueError(
                f"{key}={value!r} does not match the loaded {data.name!r} data, which has "
                f"{key} {loaded[key]!r} (dataset.{key} in the config must say what the loader "
                f"loads)"
            )
    return data

"""A synthetic image dataset made in memory from a seed: the dataset for fast tests and smoke
runs (``conf/dataset/synthetic.yaml``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from fedbackdoor.data.image_data import ImageData, image_size_pair

__all__ = ["synthetic"]


def synthetic(
    *,
    num_train: int = 2000,
    num_test: int = 500,
    num_classes: int = 4,
    image_size: Sequence[int] = (12, 12),
    channels: int = 1,
    seed: int = 0,
    noise_std: float = 0.3,
    name: str = "synthetic",
) -> ImageData:
    """A small, learnable image dataset made in memory: noisy copies of one prototype per class.

    Each class gets a smooth random prototype (uniform noise on a coarse grid, upsampled
    bilinearly); a sample is its class prototype plus Gaussian pixel noise, clipped to
    ``[0, 1]``. Classes are balanced (sizes differ by at most one) and shuffled. A small CNN
    learns it to high accuracy within a few epochs, which makes it the dataset for fast tests.

    ``num_classes``, ``image_size`` and ``channels`` say what to make, so the data always
    agrees with a config that states them.

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
    name : str
        The returned data's name (the config's ``dataset.name``).

    Returns
    -------
    ImageData
        Mean and std are measured on the training images.
    """
    height, width = image_size_pair(image_size)
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
        name=name,
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
    )

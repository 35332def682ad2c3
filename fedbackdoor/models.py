"""The networks.

Both models take images in ``[0, 1]`` and normalise them with fixed per-channel statistics in
their first layer. The statistics are non-persistent buffers, so they are not part of the
``state_dict`` that clients send and the server aggregates, and triggers can be stamped in
pixel space by both attackers and the server's backdoor test.

References
----------
He et al., "Deep Residual Learning for Image Recognition", CVPR 2016 (ResNet-18; the 32x32
variant with a 3x3 stem and no max-pool is the one used throughout the FL-backdoor literature,
e.g. Xie et al., "DBA", ICLR 2020).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class Normalize(nn.Module):
    """Subtract a per-channel mean and divide by a per-channel std (fixed, not learned)."""

    mean: Tensor
    std: Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"mean has {len(mean)} channels but std has {len(std)}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive, got {tuple(std)}")
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


class SmallCNN(nn.Module):
    """Two 5x5 convolutions and two dense layers, for 28x28 (and other small) inputs.

    About 171k parameters for 1x28x28 inputs; no dropout, so training draws randomness only
    from the caller's generator (batch order).

    Parameters
    ----------
    in_channels, num_classes : int
        Input channels and output classes.
    image_size : sequence of two ints
        Input height and width (each divisible by 4).
    mean, std : sequence of float
        Per-channel normalisation statistics of the dataset.
    hidden : int
        Width of the hidden dense layer.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: Sequence[int] = (28, 28),
        mean: Sequence[float] = (0.5,),
        std: Sequence[float] = (0.5,),
        hidden: int = 100,
    ) -> None:
        super().__init__()
        h, w = (int(s) for s in image_size)
        if h % 4 or w % 4:
            raise ValueError(f"SmallCNN needs image_size divisible by 4, got {(h, w)}")
        self.features = nn.Sequential(
            Normalize(mean, std),
            nn.Conv2d(in_channels, 16, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(
            nn.Linear(32 * (h // 4) * (w // 4), hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class _BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 for 32x32 inputs (3x3 stem, no max-pool), about 11.2M parameters.

    Parameters are as for :class:`SmallCNN`; ``image_size`` is accepted for a uniform
    constructor and only checked to be square.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: Sequence[int] = (32, 32),
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
        width: int = 64,
    ) -> None:
        super().__init__()
        h, w = (int(s) for s in image_size)
        if h != w:
            raise ValueError(f"ResNet18 expects square images, got {(h, w)}")
        self.normalize = Normalize(mean, std)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
        )
        layers: list[nn.Module] = []
        in_planes = width
        for i, planes in enumerate((width, 2 * width, 4 * width, 8 * width)):
            stride = 1 if i == 0 else 2
            layers += [_BasicBlock(in_planes, planes, stride), _BasicBlock(planes, planes, 1)]
            in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(in_planes, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.layers(self.stem(self.normalize(x)))
        out = torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1)
        return self.head(out)


def resolve_device(device: str) -> torch.device:
    """Map the config's ``device`` (``cpu``, ``cuda``, ``cuda:N``, ``auto``) to a torch device.

    Raises
    ------
    ValueError
        For an unknown name, or ``cuda`` on a machine without a usable GPU.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r} but no CUDA GPU is available here; use cpu/auto")
        return torch.device(device)
    raise ValueError(f"device={device!r} is not one of cpu, cuda, cuda:N, auto")

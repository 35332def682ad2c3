"""Tests for fedbackdoor.data.image_data: the container, the image-size helper, the checks of
stated facts."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from fedbackdoor.data.image_data import ImageData, check_stated, image_size_pair


def tiny(num_classes: int = 3, channels: int = 1) -> ImageData:
    x = torch.zeros(4, channels, 5, 7)
    y = torch.zeros(4, dtype=torch.int64)
    stats = (0.5,) * channels
    return ImageData(x, y, x, y, num_classes=num_classes, name="tiny", mean=stats, std=stats)


def test_image_data_rejects_inconsistent_fields() -> None:
    x = torch.zeros(4, 1, 3, 3)
    y = torch.zeros(4, dtype=torch.int64)

    with pytest.raises(ValueError, match="mean"):
        ImageData(x, y, x, y, num_classes=2, name="t", mean=(0.5, 0.5), std=(0.5, 0.5))
    with pytest.raises(ValueError, match="y_train"):
        ImageData(x, y[:3], x, y, num_classes=2, name="t", mean=(0.5,), std=(0.5,))
    with pytest.raises(ValueError, match="x_test"):
        ImageData(x, y, x.double(), y, num_classes=2, name="t", mean=(0.5,), std=(0.5,))


@pytest.mark.parametrize("size", [(5, 7), [5, 7], OmegaConf.create([5, 7])])
def test_image_size_pair_accepts_what_yaml_and_hydra_give(size: object) -> None:
    assert image_size_pair(size) == (5, 7)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("size", "message"),
    [
        ((12,), "pair of ints"),
        ((1, 2, 3), "pair of ints"),
        ("12", "pair of ints"),
        ((12.5, 12), "pair of ints"),
        ((0, 12), "positive"),
        ((12, -1), "positive"),
    ],
)
def test_image_size_pair_rejects_what_is_not_two_positive_ints(size: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        image_size_pair(size)  # type: ignore[arg-type]


def test_check_stated_passes_agreeing_and_unstated_facts() -> None:
    data = tiny()

    assert check_stated(data) is data
    assert check_stated(data, num_classes=3, image_size=[5, 7], channels=1) is data


@pytest.mark.parametrize(
    ("stated", "key"),
    [
        ({"num_classes": 10}, "num_classes=10"),
        ({"image_size": [28, 28]}, r"image_size=\(28, 28\)"),
        ({"channels": 3}, "channels=3"),
    ],
)
def test_check_stated_names_the_key_that_disagrees(stated: dict[str, object], key: str) -> None:
    with pytest.raises(ValueError, match=rf"{key} does not match the loaded 'tiny' data"):
        check_stated(tiny(), **stated)  # type: ignore[arg-type]

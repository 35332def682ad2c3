"""Tests for fedbackdoor.data.synthetic."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedbackdoor.data.synthetic import synthetic


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


def test_synthetic_name_labels_the_data_and_changes_nothing_else() -> None:
    named = synthetic(num_train=20, num_test=5, name="tiny")
    default = synthetic(num_train=20, num_test=5)

    assert named.name == "tiny"
    assert torch.equal(named.x_train, default.x_train)


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

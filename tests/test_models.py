from __future__ import annotations

import pytest
import torch

from fedbackdoor.models import ResNet18, SmallCNN, resolve_device


def test_small_cnn_shapes_and_size_for_fashion_mnist() -> None:
    model = SmallCNN(1, 10, (28, 28), mean=(0.286,), std=(0.353,))

    out = model(torch.rand(4, 1, 28, 28))
    params = sum(p.numel() for p in model.parameters())

    assert out.shape == (4, 10)
    assert 150_000 < params < 200_000


def test_normalisation_statistics_are_not_part_of_the_state_dict() -> None:
    # Clients send and the server aggregates state_dicts: fixed statistics must not travel.
    model = SmallCNN(1, 10, (28, 28), mean=(0.5,), std=(0.25,))

    assert not any("mean" in k or "std" in k for k in model.state_dict())


def test_normalisation_is_applied() -> None:
    plain = SmallCNN(1, 3, (8, 8), mean=(0.0,), std=(1.0,))
    shifted = SmallCNN(1, 3, (8, 8), mean=(0.5,), std=(1.0,))
    shifted.load_state_dict(plain.state_dict())
    x = torch.rand(2, 1, 8, 8)

    assert torch.allclose(shifted(x + 0.5), plain(x), atol=1e-6)


def test_small_cnn_rejects_sizes_it_cannot_pool() -> None:
    with pytest.raises(ValueError, match="divisible by 4"):
        SmallCNN(1, 10, (30, 30))


def test_resnet18_on_cifar_sized_inputs() -> None:
    model = ResNet18(3, 10, (32, 32), width=8)

    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ValueError, match="device='tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device("cuda")

"""Tests for fedbackdoor.defenses.transforms."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedbackdoor.defenses.transforms import add_gaussian_noise, clip_to_norm

# --------------------------------------------------------------------------------------------
# clip_to_norm
# --------------------------------------------------------------------------------------------


def test_clip_leaves_small_rows_alone_and_brings_big_rows_to_max_norm() -> None:
    # Prepare: norms 5 (3-4-0), 0.5, 0 and 2 (exactly max_norm) with max_norm = 2
    updates = torch.tensor([[3.0, 4.0, 0.0], [0.3, -0.4, 0.0], [0.0, 0.0, 0.0], [0.0, 2.0, 0.0]])

    # Execute
    clipped = clip_to_norm(updates, max_norm=2.0)

    # Assert: row 0 scaled by 2/5 -> (1.2, 1.6, 0) ; the others unchanged bit for bit
    torch.testing.assert_close(clipped[0], torch.tensor([1.2, 1.6, 0.0]))
    assert torch.equal(clipped[1:], updates[1:])


def test_clip_does_not_modify_its_input() -> None:
    # Prepare
    updates = torch.tensor([[30.0, 40.0]])
    before = updates.clone()

    # Execute
    clip_to_norm(updates, max_norm=1.0)

    # Assert
    assert torch.equal(updates, before)


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(1, 8),
    d=st.integers(1, 64),
    scale=st.floats(1e-3, 1e6),
    max_norm=st.floats(1e-2, 1e2),
)
def test_clip_properties(seed: int, n: int, d: int, scale: float, max_norm: float) -> None:
    # Prepare
    generator = torch.Generator().manual_seed(seed)
    updates = scale * torch.randn(n, d, generator=generator)
    norms = torch.linalg.vector_norm(updates, dim=1)

    # Execute
    clipped = clip_to_norm(updates, max_norm=max_norm, generator=generator)

    # Assert
    clipped_norms = torch.linalg.vector_norm(clipped, dim=1)
    small = norms <= max_norm
    assert torch.equal(clipped[small], updates[small])
    torch.testing.assert_close(
        clipped_norms[~small], torch.full_like(clipped_norms[~small], max_norm), rtol=1e-5, atol=0
    )
    # direction kept: a positive multiple of the original row
    cosine = torch.nn.functional.cosine_similarity(clipped, updates, dim=1)
    torch.testing.assert_close(cosine, torch.ones_like(cosine))


def test_clip_survives_entries_whose_square_overflows_float32() -> None:
    # Prepare: 1e30 ** 2 = 1e60 > float32 max (3.4e38)
    updates = torch.tensor([[1e30, 1e30]])

    # Execute
    clipped = clip_to_norm(updates, max_norm=1.0)

    # Assert
    torch.testing.assert_close(clipped, torch.full((1, 2), 2**-0.5))


@pytest.mark.parametrize("max_norm", [0.0, -1.0, float("nan")])
def test_clip_rejects_bad_max_norm(max_norm: float) -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match="max_norm="):
        clip_to_norm(torch.ones(2, 3), max_norm=max_norm)


def test_clip_rejects_unstacked_updates() -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match="2-D"):
        clip_to_norm(torch.ones(3), max_norm=1.0)


# --------------------------------------------------------------------------------------------
# add_gaussian_noise
# --------------------------------------------------------------------------------------------


def test_noise_is_reproducible_with_the_same_seed() -> None:
    # Prepare
    update = torch.arange(50, dtype=torch.float32)

    # Execute
    first = add_gaussian_noise(update, sigma=0.1, generator=torch.Generator().manual_seed(7))
    second = add_gaussian_noise(update, sigma=0.1, generator=torch.Generator().manual_seed(7))
    other = add_gaussian_noise(update, sigma=0.1, generator=torch.Generator().manual_seed(8))

    # Assert
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


def test_noise_with_sigma_zero_is_a_no_op() -> None:
    # Prepare
    update = torch.arange(10, dtype=torch.float32)
    generator = torch.Generator().manual_seed(0)
    state = generator.get_state()

    # Execute
    result = add_gaussian_noise(update, sigma=0.0, generator=generator)

    # Assert
    assert torch.equal(result, update)
    assert torch.equal(generator.get_state(), state)


def test_noise_has_the_requested_scale_and_leaves_input_alone() -> None:
    # Prepare
    update = torch.full((200_000,), 3.0)
    before = update.clone()

    # Execute
    noisy = add_gaussian_noise(update, sigma=0.5, generator=torch.Generator().manual_seed(1))

    # Assert: the sample mean/std of 2e5 draws are within ~5 standard errors
    noise = noisy - update
    assert noise.mean().abs().item() < 0.01
    assert noise.std().item() == pytest.approx(0.5, rel=0.01)
    assert noisy.dtype == update.dtype
    assert torch.equal(update, before)


@pytest.mark.parametrize("sigma", [-0.1, float("nan"), float("inf")])
def test_noise_rejects_bad_sigma(sigma: float) -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match="sigma="):
        add_gaussian_noise(torch.ones(3), sigma=sigma, generator=torch.Generator())

"""Tests for fedbackdoor.defenses.transforms."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedbackdoor.defenses.transforms import (
    add_gaussian_noise,
    clip_to_median_norm,
    clip_to_norm,
)

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
# clip_to_median_norm
# --------------------------------------------------------------------------------------------


def test_median_clip_by_hand_odd_n() -> None:
    # Prepare: norms 5 (3-4), 1 and 2
    updates = torch.tensor([[3.0, 4.0], [0.0, 1.0], [2.0, 0.0]])

    # Execute
    clipped = clip_to_median_norm(updates)

    # Assert: median norm 2 -> row 0 scaled by 2/5 to (1.2, 1.6) ; rows 1, 2 unchanged bit for bit
    torch.testing.assert_close(clipped[0], torch.tensor([1.2, 1.6]))
    assert torch.equal(clipped[1:], updates[1:])


def test_median_clip_by_hand_even_n_and_multiplier() -> None:
    # Prepare: norms 1, 2, 4 and 10
    updates = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, -4.0], [6.0, 8.0]])

    # Execute
    plain = clip_to_median_norm(updates)
    doubled = clip_to_median_norm(updates, multiplier=2.0)

    # Assert: median (2 + 4) / 2 = 3 -> (0, -4) to (0, -3), (6, 8) to (1.8, 2.4) ;
    # with multiplier 2 the bound is 6 -> only (6, 8) clipped, to (3.6, 4.8)
    torch.testing.assert_close(
        plain, torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, -3.0], [1.8, 2.4]])
    )
    torch.testing.assert_close(
        doubled, torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, -4.0], [3.6, 4.8]])
    )


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(1, 9),
    d=st.integers(1, 32),
    multiplier=st.floats(1.0, 4.0),
    data=st.data(),
)
def test_median_clip_properties(
    seed: int, n: int, d: int, multiplier: float, data: st.DataObject
) -> None:
    # Prepare: rows of very different scales
    generator = torch.Generator().manual_seed(seed)
    scales = torch.logspace(-3, 3, n)[torch.randperm(n, generator=generator)].unsqueeze(1)
    updates = scales * torch.randn(n, d, generator=generator)
    norms = torch.linalg.vector_norm(updates, dim=1)
    bound = multiplier * float(torch.quantile(norms.double(), 0.5))
    permutation = torch.tensor(data.draw(st.permutations(range(n))))

    # Execute
    clipped = clip_to_median_norm(updates, multiplier=multiplier, generator=generator)
    permuted = clip_to_median_norm(updates[permutation], multiplier=multiplier)

    # Assert: rows within the bound untouched (at least half of them for multiplier >= 1), the
    # others brought to the bound in the same direction ; clipping each row commutes with order
    small = norms <= bound
    assert torch.equal(clipped[small], updates[small])
    assert int(small.sum()) >= (n + 1) // 2
    clipped_norms = torch.linalg.vector_norm(clipped[~small], dim=1)
    torch.testing.assert_close(
        clipped_norms, torch.full_like(clipped_norms, bound), rtol=1e-5, atol=0
    )
    cosine = torch.nn.functional.cosine_similarity(clipped, updates, dim=1)
    torch.testing.assert_close(cosine, torch.ones_like(cosine))
    assert torch.equal(permuted, clipped[permutation])


def test_median_clip_bound_is_not_raised_by_a_boosted_minority() -> None:
    # Prepare: 5 benign rows of norm ~1 and 2 boosted rows of norm 1e6
    benign = torch.nn.functional.normalize(
        torch.randn(5, 8, generator=torch.Generator().manual_seed(0)), dim=1
    )
    updates = torch.cat([1e6 * benign[:2], benign])

    # Execute
    clipped = clip_to_median_norm(updates)

    # Assert: the median norm is 1, so the boosted rows come down to norm 1
    torch.testing.assert_close(
        torch.linalg.vector_norm(clipped, dim=1), torch.ones(7), rtol=1e-5, atol=0
    )


def test_median_clip_zeroes_rows_when_most_updates_are_zero() -> None:
    # Prepare: median norm 0
    updates = torch.tensor([[0.0, 0.0], [0.0, 0.0], [3.0, 4.0]])

    # Execute
    clipped = clip_to_median_norm(updates)

    # Assert: the bound is 0, and no NaN from 0 / 0
    assert torch.equal(clipped, torch.zeros(3, 2))


def test_median_clip_handles_edge_inputs_without_modifying_them() -> None:
    # Prepare
    empty = torch.empty(0, 4)
    huge = torch.tensor([[1e30, 1e30], [1.0, 0.0], [0.0, 2.0]])  # 1e60 overflows float32
    before = huge.clone()

    # Execute
    clipped_empty = clip_to_median_norm(empty)
    clipped_huge = clip_to_median_norm(huge)

    # Assert: median norm 2 -> the huge row to norm 2 along (1, 1)
    assert clipped_empty.shape == (0, 4)
    torch.testing.assert_close(clipped_huge[0], torch.full((2,), 2**0.5))
    assert torch.equal(huge, before)


@pytest.mark.parametrize("multiplier", [0.0, -1.0, float("nan"), float("inf")])
def test_median_clip_rejects_bad_multiplier(multiplier: float) -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match="multiplier="):
        clip_to_median_norm(torch.ones(2, 3), multiplier=multiplier)


def test_median_clip_rejects_unstacked_updates() -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match="2-D"):
        clip_to_median_norm(torch.ones(3))


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

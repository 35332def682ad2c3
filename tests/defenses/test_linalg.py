"""Tests for fedbackdoor.defenses._linalg: the pairwise distances, Gram matrices and
combinations the rules share."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedbackdoor.defenses._linalg import (
    BLOCK_COLUMNS,
    centred_gram,
    combine,
    pairwise_squared_distances,
)
from tests.defenses.rounds import random_updates


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 10), d=st.integers(1, 32))
def test_pairwise_squared_distances_match_a_naive_double_loop(seed: int, n: int, d: int) -> None:
    # Prepare
    updates, _ = random_updates(seed, n, d)
    naive = torch.empty(n, n, dtype=torch.float64)
    for i in range(n):
        for j in range(n):
            naive[i, j] = (updates[i].double() - updates[j].double()).square().sum()

    # Execute
    fast = pairwise_squared_distances(updates)

    # Assert
    torch.testing.assert_close(fast, naive, rtol=1e-5, atol=1e-6)


def test_pairwise_squared_distances_do_not_cancel_under_a_large_common_offset() -> None:
    # Prepare: two updates 1e-3 apart in one coordinate, both offset by 1e3 everywhere
    updates = torch.full((2, 1000), 1000.0)
    updates[1, 0] += 1e-3

    # Execute
    distances = pairwise_squared_distances(updates)

    # Assert: the float32 ||x||^2 + ||y||^2 - 2xy form gives 0 here (||x||^2 ~ 1e9)
    expected = float((updates[1, 0].double() - updates[0, 0].double()) ** 2)
    assert distances[0, 1].item() == pytest.approx(expected, rel=1e-6)


def test_pairwise_distances_stay_exact_beside_a_sparse_outlier_the_sketch_misses() -> None:
    # Prepare: d = 3 * 8192, so the sketch that picks the centre reads every 3rd coordinate.
    # Row 0 is the most central row there (zeros) but holds 1e4 in coordinate 1, which the
    # sketch skips; float32 products centred at row 0 would bury the benign distances (~5)
    # under rounding of ~1e8 * 1e-7.
    gen = torch.Generator().manual_seed(3)
    d = 3 * 8192
    updates = 0.01 * torch.randn(7, d, generator=gen)
    updates[0, ::3] = 0.0
    updates[0, 1] = 1e4
    naive = torch.cdist(updates.double(), updates.double()).square()

    # Execute
    distances = pairwise_squared_distances(updates)

    # Assert
    torch.testing.assert_close(distances, naive, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Gram matrices and combinations
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("precision", ["float64", "native"])
def test_centred_gram_matches_the_float64_products_across_column_blocks(precision: str) -> None:
    # Prepare: more columns than one block, cut across a block boundary
    updates, _ = random_updates(5, 6, 2 * BLOCK_COLUMNS + 3)
    origin = updates[2] + 0.5
    centred = updates.double() - origin.double()

    # Execute
    gram = centred_gram(updates, origin, precision=precision)  # type: ignore[arg-type]

    # Assert: float64 to rounding, the native (float32) products to float32's
    assert gram.dtype == torch.float64 and torch.equal(gram, gram.T)
    tolerance = 1e-12 if precision == "float64" else 1e-5
    torch.testing.assert_close(gram, centred @ centred.T, rtol=tolerance, atol=tolerance)


def test_centred_gram_rejects_an_unknown_precision() -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match=r"precision must be 'float64' or 'native'"):
        centred_gram(torch.ones(2, 3), torch.zeros(3), precision="half")  # type: ignore[arg-type]


def test_combine_relative_to_an_origin_is_the_same_combination() -> None:
    # Prepare: coefficients summing to less than 1 leave the rest at the origin
    updates, _ = random_updates(6, 4, BLOCK_COLUMNS + 5)
    origin = torch.randn(BLOCK_COLUMNS + 5, generator=torch.Generator().manual_seed(7))
    coefficients = torch.tensor([0.1, 0.2, 0.3, 0.1], dtype=torch.float64)
    expected = (1 - 0.7) * origin.double() + coefficients @ updates.double()

    # Execute
    plain = combine(updates, coefficients)
    relative = combine(updates, coefficients, origin=origin)

    # Assert
    assert plain.dtype == relative.dtype == torch.float32
    torch.testing.assert_close(plain, (coefficients @ updates.double()).float())
    torch.testing.assert_close(relative, expected.float())

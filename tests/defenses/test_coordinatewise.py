"""Tests for fedbackdoor.defenses.coordinatewise: median and trimmed mean."""

from __future__ import annotations

import functools
from collections.abc import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from fedbackdoor.defenses.base import Aggregate
from fedbackdoor.defenses.coordinatewise import median, trimmed_mean
from tests.defenses.rounds import random_updates

# As in the rules' shared tests (test_base.py).
COORDINATEWISE: dict[str, Callable[[Tensor, Tensor], Aggregate]] = {
    "median": median,
    "trimmed_mean": functools.partial(trimmed_mean, beta=0.2),
}


def test_median_by_hand_odd_n() -> None:
    # Prepare
    updates = torch.tensor([[1.0, 9.0], [7.0, -1.0], [3.0, 4.0]])
    weights = torch.tensor([1.0, 50.0, 1.0])

    # Execute
    result = median(updates, weights)

    # Assert: column 0 sorted 1, 3, 7 -> 3 ; column 1 sorted -1, 4, 9 -> 4 (weights ignored)
    torch.testing.assert_close(result.update, torch.tensor([3.0, 4.0]))
    assert result.flagged is None


def test_median_by_hand_even_n_averages_the_two_middle_values() -> None:
    # Prepare
    updates = torch.tensor([[1.0, 0.0], [2.0, 10.0], [4.0, 20.0], [100.0, 30.0]])
    weights = torch.ones(4)

    # Execute
    result = median(updates, weights)

    # Assert: column 0 middle pair (2, 4) -> 3 ; column 1 middle pair (10, 20) -> 15
    # (torch.median would give the lower values 2 and 10)
    torch.testing.assert_close(result.update, torch.tensor([3.0, 15.0]))


def test_trimmed_mean_by_hand() -> None:
    # Prepare
    updates = torch.tensor([[1.0, 5.0], [2.0, 4.0], [3.0, 3.0], [4.0, 2.0], [100.0, -50.0]])
    weights = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])

    # Execute
    result = trimmed_mean(updates, weights, beta=0.2)

    # Assert: k = floor(0.2 * 5) = 1 dropped from each end, per coordinate, unweighted:
    # column 0: 1 2 3 4 100 -> (2 + 3 + 4) / 3 = 3 ; column 1: -50 2 3 4 5 -> (2 + 3 + 4) / 3 = 3
    torch.testing.assert_close(result.update, torch.tensor([3.0, 3.0]))
    assert result.flagged is None


def test_trimmed_mean_with_beta_zero_is_the_unweighted_mean() -> None:
    # Prepare
    updates = torch.tensor([[0.0], [3.0], [9.0]])

    # Execute
    result = trimmed_mean(updates, torch.tensor([1.0, 1.0, 10.0]), beta=0.0)

    # Assert: k = 0 -> (0 + 3 + 9) / 3 = 4
    torch.testing.assert_close(result.update, torch.tensor([4.0]))


@pytest.mark.parametrize("name", ["median", "trimmed_mean"])
@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 12), d=st.integers(1, 16))
def test_coordinatewise_rules_stay_within_each_coordinate_range(
    name: str, seed: int, n: int, d: int
) -> None:
    # Prepare
    updates, weights = random_updates(seed, n, d)

    # Execute
    result = COORDINATEWISE[name](updates, weights)

    # Assert
    assert torch.all(result.update >= updates.min(dim=0).values)
    assert torch.all(result.update <= updates.max(dim=0).values)

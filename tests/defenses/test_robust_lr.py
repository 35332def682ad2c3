"""Tests for fedbackdoor.defenses.robust_lr (RLR)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedbackdoor.defenses._linalg import BLOCK_COLUMNS
from fedbackdoor.defenses.base import NotEnoughClients
from fedbackdoor.defenses.robust_lr import rlr
from tests.defenses.rounds import random_updates, seeded


def test_rlr_by_hand() -> None:
    # Prepare: theta = 3, weights sum to 6
    updates = torch.tensor(
        [
            [1.0, 1.0, -1.0, -2.0],
            [2.0, -1.0, -1.0, -1.0],
            [3.0, 1.0, -1.0, -3.0],
            [1.0, -1.0, 1.0, 0.0],
            [1.0, 2.0, 0.0, -1.0],
        ]
    )
    weights = torch.tensor([1.0, 1.0, 1.0, 1.0, 2.0])

    # Execute
    result = rlr(updates, weights, theta=3)

    # Assert: votes, weighted means, outcome
    #   col 0: +5, |5| >= 3 keep      (1 + 2 + 3 + 1 + 2) / 6 = 9/6 = 1.5
    #   col 1: +1, flip               (1 - 1 + 1 - 1 + 4) / 6 = 4/6 -> -2/3
    #   col 2: -3 + 1 + 0 = -2, flip  (-1 - 1 - 1 + 1 + 0) / 6 = -2/6 -> +1/3
    #   col 3: -4 (0 votes for none), keep  (-2 - 1 - 3 + 0 - 2) / 6 = -8/6 = -4/3
    torch.testing.assert_close(result.update, torch.tensor([1.5, -2 / 3, 1 / 3, -4 / 3]))
    assert result.flagged is None


def test_rlr_reverses_a_backdoor_coordinate_pushed_by_a_minority() -> None:
    # Prepare: 10 clients, theta = 4. Coordinates 0-4: all agree (positive). Coordinate 5: two
    # attackers push +100, the 8 benign clients split 4 / 4 around 0.
    generator = seeded(14)
    updates = torch.rand(10, 6, generator=generator) + 0.1
    updates[:, 5] = torch.tensor([100.0, 0.01, -0.01, 0.02, -0.02, 100.0, 0.03, -0.03, 0.01, -0.01])
    weights = torch.ones(10)

    # Execute
    result = rlr(updates, weights, theta=4)

    # Assert: vote on coordinate 5 is 2 + 0 = 2 < 4 -> the mean (~20) is reversed
    averaged = updates.mean(dim=0)
    torch.testing.assert_close(result.update[:5], averaged[:5])
    torch.testing.assert_close(result.update[5], -averaged[5])
    assert result.update[5] < 0


def test_rlr_with_theta_one_is_the_weighted_mean_where_any_client_moved() -> None:
    # Prepare
    updates, weights = random_updates(15, 4, 6)

    # Execute
    result = rlr(updates, weights, theta=1)

    # Assert: with 4 clients a vote of 0 needs a tie 2/2; elsewhere every coordinate is kept
    votes = torch.sign(updates).sum(dim=0)
    mean = (weights / weights.sum()) @ updates
    torch.testing.assert_close(result.update, torch.where(votes == 0, -mean, mean))


def test_rlr_raises_not_enough_clients_when_n_below_theta() -> None:
    # Prepare
    updates, weights = random_updates(0, 3, 2)

    # Execute / Assert
    with pytest.raises(NotEnoughClients, match=r"n >= theta = 4 clients.*got n=3 \(theta=4\)"):
        rlr(updates, weights, theta=4)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(1, 10),
    d=st.integers(1, 20),
    theta=st.integers(1, 10),
)
def test_rlr_matches_a_per_coordinate_loop(seed: int, n: int, d: int, theta: int) -> None:
    # Prepare
    updates, weights = random_updates(seed, n, d)
    updates[updates.abs() < 0.3] = 0  # some zero entries, which vote for neither sign
    theta = min(theta, n)
    expected = torch.empty(d, dtype=torch.float64)
    for k in range(d):
        vote = sum((value > 0) - (value < 0) for value in updates[:, k].tolist())
        mean = sum(w * v for w, v in zip(weights.tolist(), updates[:, k].tolist(), strict=True))
        mean /= float(weights.sum())
        expected[k] = mean if abs(vote) >= theta else -mean

    # Execute
    result = rlr(updates, weights, theta=theta)

    # Assert
    torch.testing.assert_close(result.update, expected.float(), rtol=1e-5, atol=1e-6)


def test_rlr_blocks_agree_with_the_whole_matrix() -> None:
    # Prepare: more columns than one block, cut across a block boundary
    updates, weights = random_updates(16, 7, 2 * BLOCK_COLUMNS + 11)
    votes = torch.sign(updates).sum(dim=0)
    mean = (weights / weights.sum()) @ updates

    # Execute
    result = rlr(updates, weights, theta=3)

    # Assert
    torch.testing.assert_close(result.update, torch.where(votes.abs() >= 3, mean, -mean))

"""Tests for fedbackdoor.attacks.omniscient: ALIE, IPM, Min-Max and Min-Sum."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch

from fedbackdoor.attacks.omniscient import alie, alie_z_max, ipm, minmax, minsum
from tests.attacks.rounds import four_clients

# --------------------------------------------------------------------------------------------
# ALIE
# --------------------------------------------------------------------------------------------


def test_alie_by_hand() -> None:
    updates, malicious = four_clients()

    out = alie(updates, malicious, z=2.0)

    # Benign rows [1, -2, 0.5] and [0.25, 4, 2]: mu = [0.625, 1, 1.25], population
    # sigma = |difference| / 2 = [0.375, 3, 0.75]; mu - 2 sigma = [-0.125, -5, -0.25].
    expected = torch.tensor([-0.125, -5.0, -0.25])
    assert torch.equal(out[1], expected) and torch.equal(out[3], expected)


def test_alie_lies_within_z_benign_stds_of_the_benign_mean() -> None:
    # Prepare
    generator = torch.Generator().manual_seed(3)
    updates = torch.randn(10, 50, generator=generator) * 4.0 + 1.0
    malicious = torch.zeros(10, dtype=torch.bool)
    malicious[[2, 7]] = True
    benign = updates[~malicious]
    mu, sigma = benign.mean(dim=0), benign.std(dim=0, correction=0)

    # Execute
    out = alie(updates, malicious)

    # Assert: z_max for n = 10, m = 2 (see test_alie_z_max_by_hand).
    z = alie_z_max(10, 2)
    assert torch.equal(out[2], mu - z * sigma) and torch.equal(out[7], mu - z * sigma)
    assert torch.all((out[2] - mu).abs() <= z * sigma + 1e-6)


def test_alie_z_max_by_hand() -> None:
    # n = 10, m = 2: s = floor(10 / 2 + 1) - 2 = 4, z = Phi^{-1}((10 - 4) / 10) = Phi^{-1}(0.6).
    assert alie_z_max(10, 2) == pytest.approx(0.2533471031, abs=1e-9)
    # n = 50, m = 12: s = 26 - 12 = 14, z = Phi^{-1}(36 / 50) = Phi^{-1}(0.72).
    assert alie_z_max(50, 12) == pytest.approx(0.5828415072, abs=1e-9)


def test_alie_z_max_stays_finite_for_a_malicious_majority() -> None:
    # n = 4, m = 3: s = 3 - 3 = 0 would give Phi^{-1}(1) = inf; s is taken as 1: Phi^{-1}(0.75).
    assert alie_z_max(4, 3) == pytest.approx(0.6744897502, abs=1e-9)
    assert alie_z_max(1, 1) == 0.0


@pytest.mark.parametrize(
    ("num_clients", "num_malicious", "name"),
    [
        (10, 0, "num_malicious"),
        (3, 4, "num_malicious"),
        (2.0, 1, "num_clients"),
        (5, True, "num_malicious"),
    ],
)
def test_alie_z_max_rejects_bad_counts(num_clients: Any, num_malicious: Any, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        alie_z_max(num_clients, num_malicious)


# --------------------------------------------------------------------------------------------
# IPM
# --------------------------------------------------------------------------------------------


def test_ipm_by_hand() -> None:
    updates, malicious = four_clients()

    out = ipm(updates, malicious, epsilon=2.0)

    # Benign mean [0.625, 1, 1.25] times -2.
    expected = torch.tensor([-1.25, -2.0, -2.5])
    assert torch.equal(out[1], expected) and torch.equal(out[3], expected)


def test_omniscient_attacks_ignore_non_finite_benign_rows() -> None:
    # Prepare: benign row 2 is broken; the server rejects it after the attack.
    updates, malicious = four_clients()
    updates[2, 1] = float("nan")

    # Execute
    out = ipm(updates, malicious, epsilon=2.0)

    # Assert: -2 x the only finite benign row [1, -2, 0.5].
    assert torch.equal(out[1], torch.tensor([-2.0, 4.0, -1.0]))
    torch.testing.assert_close(out[2], updates[2], equal_nan=True)


def test_omniscient_attacks_fall_back_on_their_own_rows_without_benign_ones() -> None:
    updates, _ = four_clients()
    everyone = torch.ones(4, dtype=torch.bool)

    out = ipm(updates, everyone, epsilon=1.0)

    # Mean of all four rows: [3.25, 3, 2.5] / 4 = [0.8125, 0.75, 0.625].
    assert torch.equal(out, torch.tensor([[-0.8125, -0.75, -0.625]]).expand(4, 3))


# --------------------------------------------------------------------------------------------
# Min-Max and Min-Sum
# --------------------------------------------------------------------------------------------


def _gamma(out: torch.Tensor, mu: torch.Tensor, direction: torch.Tensor) -> float:
    """``gamma`` such that ``out = mu + gamma * direction``."""
    return float((out - mu) @ direction / (direction @ direction))


def _direction(benign: torch.Tensor, perturbation: str) -> torch.Tensor:
    mu = benign.mean(dim=0)
    if perturbation == "std":
        return -benign.std(dim=0, correction=0)
    if perturbation == "unit_vec":
        return -mu / mu.norm()
    return -mu.sign()


def _max_distance(candidate: torch.Tensor, benign: torch.Tensor) -> float:
    return float((benign - candidate).norm(dim=1).max())


def _sum_of_squares(candidate: torch.Tensor, benign: torch.Tensor) -> float:
    return float((benign - candidate).square().sum())


def _random_round() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(11)
    updates = torch.randn(8, 30, generator=generator, dtype=torch.float64) + 0.5
    malicious = torch.tensor([False, True, False, False, True, False, False, False])
    return updates, malicious


def test_minmax_by_hand() -> None:
    # Prepare: benign [0, 0] and [2, 0]; the malicious row's own values must not matter.
    updates = torch.tensor([[0.0, 0.0], [9.0, 9.0], [2.0, 0.0]])
    malicious = torch.tensor([False, True, False])

    # Execute
    out = minmax(updates, malicious, perturbation="std", tol=1e-5)

    # Assert: mu = [1, 0], sigma = [1, 0], candidate [1 - gamma, 0]; its distances to the benign
    # rows are |1 - gamma| and 1 + gamma <= max pairwise distance 2, so gamma = 1 and the
    # malicious update is [0, 0] (the search stops within 2 * tol below gamma).
    torch.testing.assert_close(out[1], torch.tensor([0.0, 0.0]), rtol=0, atol=2e-5)
    assert out[1, 0] >= 0.0  # never past the bound
    assert torch.equal(out[[0, 2]], updates[[0, 2]])


@pytest.mark.parametrize("perturbation", ["std", "unit_vec", "sign"])
def test_minmax_stays_within_the_benign_spread_with_the_largest_gamma(perturbation: str) -> None:
    # Prepare
    updates, malicious = _random_round()
    benign = updates[~malicious]
    mu, direction = benign.mean(dim=0), _direction(benign, perturbation)
    bound = float(torch.cdist(benign, benign).max())
    tol = 1e-6

    # Execute
    out = minmax(updates, malicious, perturbation=perturbation, tol=tol)

    # Assert
    gamma = _gamma(out[1], mu, direction)
    assert torch.equal(out[1], out[4])
    assert 0 < gamma < 20.0  # found, and below the search's cap 2 * gamma_init
    torch.testing.assert_close(out[1], mu + gamma * direction)
    assert _max_distance(out[1], benign) <= bound + 1e-9
    assert _max_distance(mu + 2 * gamma * direction, benign) > bound
    assert _max_distance(mu + (gamma + 3 * tol) * direction, benign) > bound


def test_minsum_by_hand() -> None:
    # Prepare: benign 0, 2 and 4 on a line.
    updates = torch.tensor([[0.0], [2.0], [7.0], [4.0]])
    malicious = torch.tensor([False, False, True, False])

    # Execute
    out = minsum(updates, malicious, perturbation="std", tol=1e-5)

    # Assert: mu = 2, sigma^2 = (4 + 0 + 4) / 3 = 8/3. Candidate 2 - gamma * sigma; its sum of
    # squares 8 + 3 gamma^2 sigma^2 = 8 + 8 gamma^2 must stay <= the largest benign sum,
    # max(0 + 4 + 16, 4 + 0 + 4, 16 + 4 + 0) = 20, so gamma^2 = 1.5, gamma * sigma = sqrt(4) = 2
    # and the malicious update is 0.
    torch.testing.assert_close(out[2], torch.tensor([0.0]), rtol=0, atol=2e-5 * math.sqrt(8 / 3))
    assert out[2, 0] >= 0.0


@pytest.mark.parametrize("perturbation", ["std", "unit_vec", "sign"])
def test_minsum_stays_within_the_benign_scores_with_the_largest_gamma(perturbation: str) -> None:
    # Prepare
    updates, malicious = _random_round()
    benign = updates[~malicious]
    k = benign.shape[0]
    mu, direction = benign.mean(dim=0), _direction(benign, perturbation)
    bound = float(torch.cdist(benign, benign).square().sum(dim=1).max())
    tol = 1e-6

    # Execute
    out = minsum(updates, malicious, perturbation=perturbation, tol=tol)

    # Assert: sum_i ||mu + g p - x_i||^2 = sum_i ||mu - x_i||^2 + k g^2 ||p||^2 (the cross term
    # vanishes around the mean), so the largest gamma has a closed form to compare with.
    gamma = _gamma(out[1], mu, direction)
    closed_form = math.sqrt(
        (bound - _sum_of_squares(mu, benign)) / (k * float(direction @ direction))
    )
    assert torch.equal(out[1], out[4])
    assert _sum_of_squares(out[1], benign) <= bound + 1e-9
    assert _sum_of_squares(mu + 2 * gamma * direction, benign) > bound
    assert closed_form - 2 * tol <= gamma <= closed_form


@pytest.mark.parametrize("attack", [minmax, minsum])
def test_shejwalkar_search_never_reaches_twice_gamma_init(
    attack: Callable[..., torch.Tensor],
) -> None:
    # The hand cases above need gamma = 1 (min-max) and 1.22 (min-sum); from gamma_init = 0.25
    # the halving search can only climb to 0.25 + 0.125 + ... < 0.5.
    updates = torch.tensor([[0.0, 0.0], [9.0, 9.0], [2.0, 0.0]])
    malicious = torch.tensor([False, True, False])

    out = attack(updates, malicious, gamma_init=0.25, tol=1e-6)

    # Candidate [1 - gamma, 0] with gamma just below 0.5.
    assert 0.5 < float(out[1, 0]) <= 0.5 + 2e-6


@pytest.mark.parametrize("attack", [minmax, minsum])
@pytest.mark.parametrize("perturbation", ["unit_vec", "sign"])
def test_shejwalkar_with_a_zero_benign_mean_submits_the_mean(
    attack: Callable[..., torch.Tensor], perturbation: str
) -> None:
    # mu = 0 gives no direction to push against: the update stays at mu (no NaN from 0 / 0).
    updates = torch.tensor([[1.0, -1.0], [5.0, 5.0], [-1.0, 1.0]])
    malicious = torch.tensor([False, True, False])

    out = attack(updates, malicious, perturbation=perturbation)

    assert torch.equal(out[1], torch.zeros(2))

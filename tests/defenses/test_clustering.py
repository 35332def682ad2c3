"""Tests for fedbackdoor.defenses.clustering: FLAME and Divide-and-Conquer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.cluster import HDBSCAN
from torch import Tensor

from fedbackdoor.defenses.base import NotEnoughClients
from fedbackdoor.defenses.clustering import dnc, flame
from tests.defenses.rounds import random_updates, seeded

SQRT2 = math.sqrt(2.0)


# --------------------------------------------------------------------------------------------
# FLAME
# --------------------------------------------------------------------------------------------


def _flame_by_hand_updates() -> Tensor:
    return torch.tensor(
        [
            [3.0, 3.0, 0.0, 0.0, 0.0],  # norm 3 sqrt2
            [1.0, 0.0, 1.0, 0.0, 0.0],  # norm sqrt2
            [2.0, 0.0, 0.0, 2.0, 0.0],  # norm 2 sqrt2
            [-0.5, 0.0, 0.0, 0.0, 0.0],  # norm 0.5
            [0.0, 0.0, 0.0, 0.0, 20.0],  # norm 20
        ]
    )


def test_flame_by_hand() -> None:
    # Prepare
    updates = _flame_by_hand_updates()
    weights = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])

    # Execute
    result = flame(updates, weights, noise_lambda=0.0, generator=seeded())

    # Assert: cosine distances: the first three pairwise 1 - 3/6 = 1 - 6/12 = 1 - 2/4 = 0.5 ;
    # x5 to all others 1 ; x4 to x1..x3 1 + 1/sqrt2 = 1.71. Single linkage, min cluster size
    # 5 // 2 + 1 = 3: x4 and x5 fall off at distance 1, the three others stay together down to
    # 0.5, where the cluster dissolves into pieces < 3 -> cluster {x1, x2, x3}.
    # Median norm of all five: 0.5, sqrt2, 2 sqrt2, 3 sqrt2, 20 -> S = 2 sqrt2 ; x1 clipped by
    # 2/3 to (2, 2, 0, 0, 0) ; mean of (2,2,0,0,0), (1,0,1,0,0), (2,0,0,2,0) (weights unused)
    # = (5/3, 2/3, 1/3, 2/3, 0).
    torch.testing.assert_close(result.update, torch.tensor([5 / 3, 2 / 3, 1 / 3, 2 / 3, 0.0]))
    assert result.flagged is not None
    assert result.flagged.tolist() == [False, False, False, True, True]


def test_flame_noise_is_lambda_times_the_median_norm_from_the_generator() -> None:
    # Prepare
    updates = _flame_by_hand_updates()
    weights = torch.ones(5)

    # Execute
    noiseless = flame(updates, weights, noise_lambda=0.0, generator=seeded())
    noised = flame(updates, weights, noise_lambda=0.01, generator=seeded(3))
    again = flame(updates, weights, noise_lambda=0.01, generator=seeded(3))

    # Assert: sigma = 0.01 * S = 0.01 * 2 sqrt2, drawn from the generator alone
    expected_noise = 0.01 * 2 * SQRT2 * torch.randn(5, generator=seeded(3))
    torch.testing.assert_close(noised.update - noiseless.update, expected_noise)
    assert torch.equal(noised.update, again.update)


def test_flame_clipped_norms_never_exceed_the_median_norm() -> None:
    # Prepare: similar directions, norms spread over four orders of magnitude
    generator = seeded(12)
    direction = torch.randn(40, generator=generator)
    rows = direction + 0.3 * torch.randn(9, 40, generator=generator)
    scales = torch.tensor([1e-2, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 100.0, 1e3])
    updates = rows * scales.unsqueeze(1)
    median_norm = float(torch.linalg.vector_norm(updates, dim=1).median())

    # Execute
    result = flame(updates, torch.ones(9), noise_lambda=0.0, generator=seeded())

    # Assert: a mean of vectors of norm <= S has norm <= S ; each clipped row is in the mean
    assert result.flagged is not None
    admitted = ~result.flagged
    assert float(torch.linalg.vector_norm(result.update)) <= median_norm * (1 + 1e-6)
    for row in updates[admitted]:
        clipped = row * min(1.0, median_norm / float(torch.linalg.vector_norm(row)))
        assert float(torch.linalg.vector_norm(clipped)) <= median_norm * (1 + 1e-6)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 20), d=st.integers(2, 10))
def test_flame_admits_a_majority(seed: int, n: int, d: int) -> None:
    # Prepare
    updates, weights = random_updates(seed, n, d)

    # Execute
    result = flame(updates, weights, noise_lambda=0.0, generator=seeded())

    # Assert
    assert result.flagged is not None
    assert int((~result.flagged).sum()) >= n // 2 + 1


def test_flame_rejects_a_colluding_minority_and_bounds_its_boost() -> None:
    # Prepare: 7 benign updates around a common direction, 3 colluders around the opposite one,
    # boosted 1000x (model replacement)
    generator = seeded(13)
    direction = torch.randn(60, generator=generator)
    benign = direction + 0.5 * torch.randn(7, 60, generator=generator)
    attackers = 1000 * (-direction + 0.05 * torch.randn(3, 60, generator=generator))
    updates = torch.cat([attackers[:1], benign, attackers[1:]])

    # Execute
    result = flame(updates, torch.ones(10), noise_lambda=0.0, generator=seeded())

    # Assert
    assert result.flagged is not None
    assert result.flagged[0] and result.flagged[-2:].all()
    median_norm = float(torch.linalg.vector_norm(updates, dim=1).median())
    assert float(torch.linalg.vector_norm(result.update)) <= median_norm * (1 + 1e-6)
    assert float(result.update @ direction) > 0


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(2, 12), d=st.integers(2, 10))
def test_flame_matches_a_naive_loop(seed: int, n: int, d: int) -> None:
    # Prepare
    updates, weights = random_updates(seed, n, d)
    points = updates.double()
    norms = [float(row.norm()) for row in points]
    distances = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if i != j:
                distances[i, j] = 1 - float(points[i] @ points[j]) / (norms[i] * norms[j])
    labels = (
        HDBSCAN(
            min_cluster_size=n // 2 + 1,
            min_samples=1,
            metric="precomputed",
            allow_single_cluster=True,
            copy=True,
        )
        .fit(np.clip(distances, 0, 2))
        .labels_
    )
    ordered = sorted(norms)
    median_norm = (ordered[(n - 1) // 2] + ordered[n // 2]) / 2
    admitted = [i for i in range(n) if labels[i] >= 0]
    clipped = [points[i] * min(1.0, median_norm / norms[i]) for i in admitted]
    noise = torch.randn(d, generator=seeded(1)).double()  # drawn in the updates' dtype
    expected = torch.stack(clipped).mean(dim=0) + 0.001 * median_norm * noise

    # Execute
    result = flame(updates, weights, generator=seeded(1))

    # Assert
    assert result.flagged is not None
    assert [i for i in range(n) if not result.flagged[i]] == admitted
    torch.testing.assert_close(result.update, expected.float(), rtol=1e-5, atol=1e-6)


def test_flame_with_one_client_admits_it() -> None:
    # Prepare
    updates = torch.tensor([[3.0, -4.0]])

    # Execute
    result = flame(updates, torch.ones(1), noise_lambda=0.0, generator=seeded())

    # Assert: S = 5, nothing clipped
    torch.testing.assert_close(result.update, torch.tensor([3.0, -4.0]))
    assert result.flagged is not None
    assert result.flagged.tolist() == [False]


# --------------------------------------------------------------------------------------------
# DnC
# --------------------------------------------------------------------------------------------


def _naive_dnc(
    updates: Tensor, *, f: int, c: float, niters: int, b: int, seed: int
) -> tuple[list[int], Tensor]:
    """DnC client by client: the same coordinate draws, an SVD, one projection per client."""
    n, d = updates.shape
    generator = seeded(seed)
    good = set(range(n))
    size = min(b, d)
    for _ in range(niters if size < d else 1):
        if size < d:
            columns = sorted(torch.randperm(d, generator=generator)[:size].tolist())
        else:
            columns = list(range(d))
        sample = updates.double()[:, columns].numpy()
        mu = sample.mean(axis=0)
        direction = np.linalg.svd(sample - mu)[2][0]
        scores = [float(np.dot(sample[i] - mu, direction) ** 2) for i in range(n)]
        ranked = sorted(range(n), key=lambda i: (scores[i], i))
        good &= set(ranked[: n - math.floor(c * f)])
    kept = sorted(good)
    return kept, updates.double()[kept].mean(dim=0)


def test_dnc_by_hand() -> None:
    # Prepare: 2-D, b >= d so no coordinates are drawn
    updates = torch.tensor([[1.0, 0.0], [3.0, 0.0], [-1.0, 0.0], [1.0, 10.0]])
    weights = torch.tensor([1.0, 1.0, 1.0, 9.0])

    # Execute
    result = dnc(updates, weights, f=1, generator=seeded())

    # Assert: mean (1, 2.5); centred (0, -2.5), (2, -2.5), (-2, -2.5), (0, 7.5);
    # C^T C = [[8, 0], [0, 75]] -> top direction (0, 1) ; scores 6.25, 6.25, 6.25, 56.25 ;
    # floor(c f) = 1 removed: client 3 ; mean of the rest (weights unused) = (1, 0)
    torch.testing.assert_close(result.update, torch.tensor([1.0, 0.0]))
    assert result.flagged is not None
    assert result.flagged.tolist() == [False, False, False, True]


def test_dnc_filtering_fraction_removes_c_times_f() -> None:
    # Prepare: 1-D, centred scores are the squared distances to the mean 2.2
    updates = torch.tensor([[0.0], [1.0], [2.0], [3.0], [5.0]])

    # Execute
    result = dnc(updates, torch.ones(5), f=1, c=2.0, generator=seeded())

    # Assert: scores 4.84, 1.44, 0.04, 0.64, 7.84 -> floor(2 * 1) = 2 removed: 5 and 0 ;
    # mean of 1, 2, 3 = 2
    torch.testing.assert_close(result.update, torch.tensor([2.0]))
    assert result.flagged is not None
    assert result.flagged.tolist() == [True, False, False, False, True]


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(3, 10),
    d=st.integers(2, 30),
    b=st.integers(1, 40),
    niters=st.integers(1, 4),
    f=st.integers(0, 2),
)
def test_dnc_matches_a_naive_loop(seed: int, n: int, d: int, b: int, niters: int, f: int) -> None:
    # Prepare
    updates, weights = random_updates(seed, n, d)
    kept, expected = _naive_dnc(updates, f=f, c=1.0, niters=niters, b=b, seed=seed)

    # Execute
    result = dnc(updates, weights, f=f, niters=niters, b=b, generator=seeded(seed))

    # Assert
    assert result.flagged is not None
    assert [i for i in range(n) if not result.flagged[i]] == kept
    if kept:
        torch.testing.assert_close(result.update, expected.float(), rtol=1e-5, atol=1e-6)
    else:
        assert torch.equal(result.update, torch.zeros(d))


def test_dnc_removes_colluding_outliers_along_their_shared_direction() -> None:
    # Prepare: 10 benign updates, 3 colluders sending the benign mean shifted by +3 everywhere
    benign, _ = random_updates(17, 10, 200)
    poison = benign.mean(dim=0) + 3.0
    updates = torch.cat([poison.expand(2, 200), benign, poison.expand(1, 200)])

    # Execute
    result = dnc(updates, torch.ones(13), f=3, b=50, niters=5, generator=seeded(18))

    # Assert: the shift dominates the top singular direction in every sub-sample
    assert result.flagged is not None
    assert result.flagged[:2].all() and result.flagged[-1]
    low, high = benign.min(dim=0).values, benign.max(dim=0).values
    assert torch.all((result.update >= low - 1e-5) & (result.update <= high + 1e-5))


def test_dnc_is_reproducible_from_the_generator() -> None:
    # Prepare
    updates, weights = random_updates(19, 8, 100)

    # Execute
    first = dnc(updates, weights, f=2, b=10, generator=seeded(4))
    second = dnc(updates, weights, f=2, b=10, generator=seeded(4))

    # Assert
    assert torch.equal(first.update, second.update)
    assert first.flagged is not None and second.flagged is not None
    assert torch.equal(first.flagged, second.flagged)


@pytest.mark.parametrize(("n", "f", "c"), [(1, 1, 1.0), (3, 1, 3.0), (4, 2, 2.0)])
def test_dnc_raises_not_enough_clients_when_it_would_remove_everybody(
    n: int, f: int, c: float
) -> None:
    # Prepare
    updates, weights = random_updates(0, n, 3)

    # Execute / Assert
    removed = math.floor(c * f)
    with pytest.raises(
        NotEnoughClients,
        match=rf"n >= floor\(c \* f\) \+ 1 = {removed + 1} .*got n={n} \(f={f}, c={c}\)",
    ):
        dnc(updates, weights, f=f, c=c, generator=seeded())

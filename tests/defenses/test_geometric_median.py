"""Tests for fedbackdoor.defenses.geometric_median (RFA)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from fedbackdoor.defenses.base import NotEnoughClients
from fedbackdoor.defenses.geometric_median import geometric_median
from tests.defenses.rounds import random_updates


def _pull(updates: Tensor, weights: Tensor, point: Tensor, *, without: int | None = None) -> float:
    """``||sum_i w_i (x_i - v) / ||x_i - v|| || / sum_i w_i``, leaving input ``without`` out."""
    offsets = updates.double() - point.double()
    keep = torch.ones(len(updates), dtype=torch.bool)
    if without is not None:
        keep[without] = False
    units = offsets[keep] / torch.linalg.vector_norm(offsets[keep], dim=1, keepdim=True)
    return float(torch.linalg.vector_norm(weights.double()[keep] @ units) / weights.sum())


def _is_optimal(updates: Tensor, weights: Tensor, point: Tensor, *, gap: float) -> bool:
    """The optimality condition of the geometric median, up to ``gap``.

    Either the unit vectors from ``point`` to the inputs have a weighted sum ~0, or ``point``
    is close to an input ``x_k`` (where Weiszfeld can converge slowly) that is itself optimal:
    the others' weighted unit vectors from ``x_k`` sum to a norm of at most ``w_k``.
    """
    if _pull(updates, weights, point) < gap:
        return True
    distances = torch.linalg.vector_norm(updates - point, dim=1)
    k = int(torch.argmin(distances))
    share = float(weights[k] / weights.sum())
    return bool(distances[k] < 1e-2) and _pull(updates, weights, updates[k], without=k) <= share


def _naive_weiszfeld(
    updates: Tensor, weights: Tensor, *, max_iter: int, eps: float, tol: float
) -> Tensor:
    """The smoothed Weiszfeld loop written directly on the d-dimensional points."""
    points = updates.double()
    share = weights.double() / weights.double().sum()
    point = torch.quantile(points, 0.5, dim=0)  # the coordinate-wise median
    for _ in range(max_iter):
        distances = torch.linalg.vector_norm(points - point, dim=1)
        pull = share / distances.clamp_min(eps)
        if torch.linalg.vector_norm(pull @ (points - point)) <= tol:
            break
        point = (pull / pull.sum()) @ points
    return point


def test_weiszfeld_steps_by_hand() -> None:
    # Prepare: points 0 and 1 with weights 3 and 1
    updates = torch.tensor([[0.0], [1.0]])
    weights = torch.tensor([3.0, 1.0])

    # Execute
    one = geometric_median(updates, weights, max_iter=1)
    two = geometric_median(updates, weights, max_iter=2)

    # Assert: start at the coordinate-wise median 0.5, shares a = 3/4 and 1/4:
    # step 1: distances 0.5, 0.5 -> b = 1.5, 0.5 -> v = (1.5*0 + 0.5*1) / 2 = 0.25
    # step 2: distances 0.25, 0.75 -> b = 3, 1/3 -> v = (3*0 + 1/3*1) / (10/3) = 0.1
    torch.testing.assert_close(one.update, torch.tensor([0.25]))
    torch.testing.assert_close(two.update, torch.tensor([0.1]))
    assert one.flagged is None


def test_geometric_median_by_hand() -> None:
    # Prepare: 1-D, where the geometric median is the (weighted) median ; and a 2-D triangle
    # whose angle at (0, 0) is >= 120 degrees, where it is that vertex (Fermat-Torricelli)
    heavy = (torch.tensor([[0.0], [1.0]]), torch.tensor([3.0, 1.0]))
    spread = (torch.tensor([[0.0], [1.0], [10.0]]), torch.ones(3))
    obtuse = (torch.tensor([[0.0, 0.0], [1.0, 0.0], [-1.0, 0.1]]), torch.ones(3))

    # Execute
    results = [geometric_median(updates, weights).update for updates, weights in (heavy, spread)]
    vertex = geometric_median(*obtuse).update

    # Assert: 3|v| + |1 - v| is smallest at 0 ; |v| + |1 - v| + |10 - v| at 1 ; the triangle's
    # median is (0, 0). Weiszfeld approaches a data point geometrically, hence the tolerance.
    torch.testing.assert_close(results[0], torch.tensor([0.0]), rtol=0, atol=1e-5)
    torch.testing.assert_close(results[1], torch.tensor([1.0]), rtol=0, atol=1e-5)
    torch.testing.assert_close(vertex, torch.zeros(2), rtol=0, atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(3, 12), d=st.integers(2, 16))
def test_unit_vectors_to_the_inputs_sum_to_zero(seed: int, n: int, d: int) -> None:
    # Prepare: random points in d >= 2 with equal weights
    updates, _ = random_updates(seed, n, d)
    weights = torch.ones(n)

    # Execute: Weiszfeld converges slowly on some small configurations (the worst of 2000
    # random cases needs thousands of iterations), hence the generous budget
    result = geometric_median(updates, weights, max_iter=10_000, tol=1e-9).update

    # Assert: the weighted sum of unit vectors from the result to the inputs is ~0, unless the
    # result is an input (possible for a triangle with an angle >= 120 degrees)
    assert _is_optimal(updates, weights, result, gap=1e-5)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(2, 12), d=st.integers(1, 16))
def test_optimality_condition_holds_with_sample_weights(seed: int, n: int, d: int) -> None:
    # Prepare: unequal weights; a heavy client (or d = 1) can put the median on an input
    updates, weights = random_updates(seed, n, d)

    # Execute
    result = geometric_median(updates, weights, max_iter=10_000, tol=1e-9).update

    # Assert: zero unit-vector sum, or at an input x_k a sum of the others of norm <= w_k
    assert _is_optimal(updates, weights, result, gap=1e-4)


@pytest.mark.parametrize("seed", range(5))
def test_default_settings_converge_on_a_typical_round(seed: int) -> None:
    # Prepare: 20 clients, d = 1000
    updates, weights = random_updates(seed, 20, 1000)

    # Execute
    result = geometric_median(updates, weights)

    # Assert
    assert _pull(updates, weights, result.update) < 1e-5


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 12), d=st.integers(1, 16))
def test_geometric_median_matches_a_naive_weiszfeld_loop(seed: int, n: int, d: int) -> None:
    # Prepare
    updates, weights = random_updates(seed, n, d)

    # Execute
    fast = geometric_median(updates, weights, max_iter=50, eps=1e-6, tol=1e-9).update
    naive = _naive_weiszfeld(updates, weights, max_iter=50, eps=1e-6, tol=1e-9)

    # Assert
    torch.testing.assert_close(fast, naive.float(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("f", [1, 3, 5])
def test_f_huge_outliers_below_half_keep_the_result_in_the_benign_range_in_1d(f: int) -> None:
    # Prepare: n = 2f + 1 clients with equal weights, f of them at 1e6 ; in 1-D the geometric
    # median is the median, the largest benign value here
    n = 2 * f + 1
    benign = torch.randn(n - f, 1, generator=torch.Generator().manual_seed(f))
    outliers = torch.full((f, 1), 1e6)
    updates = torch.cat([outliers[:1], benign, outliers[1:]])

    # Execute
    result = geometric_median(updates, torch.ones(n))

    # Assert: Weiszfeld reaches the input it converges to only up to ~eps
    torch.testing.assert_close(result.update, benign.max(dim=0).values, rtol=0, atol=1e-4)


def test_two_huge_outliers_among_nine_keep_the_result_in_the_benign_range() -> None:
    # Prepare: 7 benign clients in d = 10, 2 attackers at 1e6 in every coordinate
    benign = torch.randn(7, 10, generator=torch.Generator().manual_seed(0))
    outliers = torch.full((2, 10), 1e6)
    updates = torch.cat([outliers[:1], benign, outliers[1:]])

    # Execute
    result = geometric_median(updates, torch.ones(9))

    # Assert
    low, high = benign.min(dim=0).values, benign.max(dim=0).values
    assert torch.all((result.update >= low) & (result.update <= high))


@pytest.mark.parametrize(("n", "f"), [(3, 1), (9, 2), (11, 5), (20, 9)])
def test_outliers_below_half_move_the_result_a_bounded_amount_whatever_their_size(
    n: int, f: int
) -> None:
    # Prepare: close to half of the clients far away, the result can leave the benign box
    # (n = 2f + 1) but stays within Minsker's (2015, Lemma 2.1) bound: with a fraction
    # alpha = f / n < 1/2 of the points farther than r from z, ||median - z|| <= C r with
    # C = (1 - alpha) / sqrt(1 - 2 alpha).
    benign = torch.randn(n - f, 10, generator=torch.Generator().manual_seed(n))
    centre = benign.mean(dim=0)
    radius = float(torch.linalg.vector_norm(benign - centre, dim=1).max())
    alpha = f / n
    bound = (1 - alpha) / (1 - 2 * alpha) ** 0.5 * radius

    # Execute
    results = [
        geometric_median(torch.cat([benign, torch.full((f, 10), size)]), torch.ones(n)).update
        for size in (1e3, 1e6, 1e9)
    ]

    # Assert
    for result in results:
        assert float(torch.linalg.vector_norm(result - centre)) <= bound
    torch.testing.assert_close(results[1], results[2], rtol=0, atol=1e-4)


def test_geometric_median_uses_the_sample_weights() -> None:
    # Prepare: a minority of clients holding most of the samples wins
    updates = torch.tensor([[0.0], [0.0], [5.0]])

    # Execute
    equal = geometric_median(updates, torch.tensor([1.0, 1.0, 1.0])).update
    skewed = geometric_median(updates, torch.tensor([1.0, 1.0, 10.0])).update

    # Assert
    torch.testing.assert_close(equal, torch.tensor([0.0]), rtol=0, atol=1e-5)
    torch.testing.assert_close(skewed, torch.tensor([5.0]), rtol=0, atol=1e-5)


def test_geometric_median_keeps_precision_under_a_large_common_offset() -> None:
    # Prepare: three updates ~1e-3 apart around an offset of 1e3 in every coordinate
    generator = torch.Generator().manual_seed(0)
    spread = 1e-3 * torch.randn(3, 1000, generator=generator, dtype=torch.float64)
    updates = (1000.0 + spread).float()
    weights = torch.ones(3)

    # Execute
    shifted = geometric_median(updates, weights).update
    centred = geometric_median((updates.double() - 1000.0).float(), weights).update

    # Assert: the same point, up to float32's resolution at 1e3 (6e-5)
    torch.testing.assert_close(shifted.double() - 1000.0, centred.double(), rtol=0, atol=1.2e-4)


def test_geometric_median_raises_not_enough_clients_on_zero_updates() -> None:
    # Execute / Assert
    with pytest.raises(NotEnoughClients):
        geometric_median(torch.empty(0, 3), torch.empty(0))


@pytest.mark.parametrize(
    ("setting", "pattern"),
    [
        ({"max_iter": 0}, r"max_iter=0"),
        ({"max_iter": 2.5}, r"max_iter=2\.5"),
        ({"eps": 0.0}, r"eps=0\.0"),
        ({"eps": -1e-6}, r"eps=-1e-06"),
        ({"eps": float("inf")}, r"eps=inf"),
        ({"tol": -1.0}, r"tol=-1\.0"),
        ({"tol": float("nan")}, r"tol=nan"),
    ],
)
def test_geometric_median_rejects_bad_settings(setting: dict[str, float], pattern: str) -> None:
    # Prepare
    updates, weights = random_updates(0, 5, 3)

    # Execute / Assert
    with pytest.raises(ValueError, match=pattern) as raised:
        geometric_median(updates, weights, **setting)  # type: ignore[arg-type]
    assert not isinstance(raised.value, NotEnoughClients)

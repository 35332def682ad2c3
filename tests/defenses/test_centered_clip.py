"""Tests for fedbackdoor.defenses.centered_clip.

The reference is the authors' ``Clipping`` aggregator (epfml/byzantine-robust-optimizer,
``codes/aggregator/clipping.py``): ``momentum`` starts at zeros, every iteration adds the mean of
the ``x_i - momentum`` clipped to norm ``tau``, and the result is kept for the next round.
``_naive_centered_clip`` below follows it row by row.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from fedbackdoor.defenses.base import NotEnoughClients
from fedbackdoor.defenses.centered_clip import centered_clip
from tests.defenses.rounds import random_updates


def _clipped_step(updates: Tensor, point: Tensor, tau: float) -> Tensor:
    """``mean_i (x_i - v) min(1, tau / ||x_i - v||)``, row by row."""
    steps = []
    for row in updates.double():
        offset = row - point
        norm = float(torch.linalg.vector_norm(offset))
        steps.append(offset * (min(1.0, tau / norm) if norm > 0 else 1.0))
    return torch.stack(steps).mean(dim=0)


def _naive_centered_clip(
    updates: Tensor, *, tau: float, iters: int, center: Tensor | None = None
) -> Tensor:
    point = torch.quantile(updates.double(), 0.5, dim=0) if center is None else center.double()
    for _ in range(iters):
        point = point + _clipped_step(updates, point, tau)
    return point


def _starting_at(center: Tensor | None) -> dict[str, Any]:
    """The keywords that start centered_clip at ``center`` (``None``: the round's median)."""
    if center is None:
        return {"start": "median"}
    return {"start": "previous", "state": {"previous": center}}


def test_centered_clip_by_hand_from_the_median() -> None:
    # Prepare
    updates = torch.tensor([[0.0], [1.0], [2.0], [2.5], [10.0]])
    weights = torch.tensor([1.0, 1.0, 1.0, 1.0, 50.0])

    # Execute
    result = centered_clip(updates, weights, tau=1.0, iters=2, start="median")

    # Assert: start at the median 2 (weights unused)
    # iter 1: x - v = -2, -1, 0, 0.5, 8 -> clipped to |.| <= 1: -1, -1, 0, 0.5, 1 -> sum -0.5
    #         -> v = 2 - 0.5 / 5 = 1.9
    # iter 2: x - v = -1.9, -0.9, 0.1, 0.6, 8.1 -> -1, -0.9, 0.1, 0.6, 1 -> sum -0.2
    #         -> v = 1.9 - 0.2 / 5 = 1.86
    torch.testing.assert_close(result.update, torch.tensor([1.86]))
    assert result.flagged is None


def test_centered_clip_by_hand_clips_the_l2_norm() -> None:
    # Prepare
    updates = torch.tensor([[3.0, 4.0], [0.0, 1.0], [0.0, -0.5]])

    # Execute
    result = centered_clip(updates, torch.ones(3), tau=1.0)

    # Assert: from zero (no previous aggregate): norms 5, 1, 0.5 -> (3, 4) scaled by 1/5 to
    # (0.6, 0.8), the others kept ; mean ((0.6, 0.8) + (0, 1) + (0, -0.5)) / 3 = (0.2, 0.4333)
    torch.testing.assert_close(result.update, torch.tensor([0.2, 1.3 / 3]))


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(1, 12),
    d=st.integers(1, 16),
    tau=st.floats(0.05, 10.0),
    iters=st.integers(1, 5),
    from_zero=st.booleans(),
)
def test_centered_clip_matches_a_naive_loop(
    seed: int, n: int, d: int, tau: float, iters: int, from_zero: bool
) -> None:
    # Prepare
    updates, weights = random_updates(seed, n, d)
    center = torch.zeros(d) if from_zero else None

    # Execute
    fast = centered_clip(updates, weights, tau=tau, iters=iters, **_starting_at(center)).update
    naive = _naive_centered_clip(updates, tau=tau, iters=iters, center=center)

    # Assert
    torch.testing.assert_close(fast, naive.float(), rtol=1e-5, atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(1, 12),
    d=st.integers(1, 16),
    tau=st.floats(1e-3, 10.0),
)
def test_one_iteration_moves_the_center_by_at_most_tau(
    seed: int, n: int, d: int, tau: float
) -> None:
    # Prepare: whatever the updates, each pulls by at most tau / n
    updates, weights = random_updates(seed, n, d)
    updates[0] *= 1e6
    center = torch.randn(d, generator=torch.Generator().manual_seed(seed))

    # Execute
    result = centered_clip(updates, weights, tau=tau, iters=1, **_starting_at(center))

    # Assert: up to rounding the result to float32 near the center
    moved = float(torch.linalg.vector_norm(result.update.double() - center.double()))
    assert moved <= tau * (1 + 1e-5) + 1e-6 * float(torch.linalg.vector_norm(center))


def test_many_iterations_reach_a_point_where_the_clipped_pulls_cancel() -> None:
    # Prepare
    updates, weights = random_updates(seed=4, n=9, d=6)

    # Execute
    result = centered_clip(updates, weights, tau=0.5, iters=500, start="median")

    # Assert: the fixed point of the iteration: mean_i (x_i - v) min(1, tau / ||x_i - v||) = 0
    step = _clipped_step(updates, result.update.double(), 0.5)
    assert float(torch.linalg.vector_norm(step)) < 1e-5


def test_infinite_tau_gives_the_unweighted_mean_from_any_center() -> None:
    # Prepare
    updates, weights = random_updates(seed=1, n=6, d=4)

    # Execute
    results = [
        centered_clip(updates, weights, tau=math.inf, **_starting_at(center)).update
        for center in (None, torch.full((4,), 100.0))
    ]

    # Assert: from the far center, float32 steps round at the scale of ulp(100) ~ 7.6e-6
    expected = updates.mean(dim=0)
    torch.testing.assert_close(results[0], expected)
    far = 4 * torch.finfo(torch.float32).eps * 100.0
    torch.testing.assert_close(results[1], expected, rtol=1.3e-6, atol=far)


@pytest.mark.parametrize("f", [1, 2, 4])
def test_f_huge_outliers_with_a_small_tau_keep_the_result_in_the_benign_range(f: int) -> None:
    # Prepare: n = 2f + 3 clients, f of them at 1e6 (or 1e9) in every coordinate
    n = 2 * f + 3
    benign = torch.randn(n - f, 10, generator=torch.Generator().manual_seed(f))

    # Execute
    results = [
        centered_clip(
            torch.cat([torch.full((1, 10), size), benign, torch.full((f - 1, 10), size)]),
            torch.ones(n),
            tau=0.01,
            start="median",
        ).update
        for size in (1e6, 1e9)
    ]

    # Assert: the outliers' pull is clipped, so their size does not matter either
    low, high = benign.min(dim=0).values, benign.max(dim=0).values
    assert torch.all((results[0] >= low) & (results[0] <= high))
    torch.testing.assert_close(results[0], results[1])


def test_centered_clip_raises_not_enough_clients_on_zero_updates() -> None:
    # Execute / Assert
    with pytest.raises(NotEnoughClients):
        centered_clip(torch.empty(0, 3), torch.empty(0))


@pytest.mark.parametrize(
    ("setting", "pattern"),
    [
        ({"tau": 0.0}, r"tau=0\.0"),
        ({"tau": -1.0}, r"tau=-1\.0"),
        ({"tau": float("nan")}, r"tau=nan"),
        ({"iters": 0}, r"iters=0"),
        ({"iters": 1.5}, r"iters=1\.5"),
        ({"start": "mean"}, r"start='mean'"),
        ({"state": [1.0]}, r"state must be a dict or None, got list"),
        ({"state": {"previous": torch.zeros(4)}}, r"state\['previous'\] .*shape \(4,\)"),
        ({"state": {"previous": torch.tensor([0.0, float("inf"), 0.0])}}, r"state\['previous'\]"),
        ({"state": {"previous": torch.zeros(3, dtype=torch.int64)}}, r"previous.*int64"),
        ({"state": {"previous": [0.0, 0.0, 0.0]}}, r"state\['previous'\] .*list"),
    ],
    ids=[
        "tau-0",
        "tau-negative",
        "tau-nan",
        "iters-0",
        "iters-float",
        "start-unknown",
        "state-not-a-dict",
        "previous-shape",
        "previous-inf",
        "previous-int",
        "previous-list",
    ],
)
def test_centered_clip_rejects_bad_settings(setting: dict[str, object], pattern: str) -> None:
    # Prepare
    updates, weights = random_updates(0, 5, 3)

    # Execute / Assert
    with pytest.raises(ValueError, match=pattern) as raised:
        centered_clip(updates, weights, **setting)  # type: ignore[arg-type]
    assert not isinstance(raised.value, NotEnoughClients)


# --------------------------------------------------------------------------------------------
# The previous aggregate as the start (the authors' server momentum), across rounds
# --------------------------------------------------------------------------------------------


def test_the_second_round_starts_from_the_first_rounds_aggregate() -> None:
    # Prepare: the same three 1-D updates two rounds in a row, tau = 1
    updates = torch.tensor([[1.0], [2.0], [4.0]])
    weights = torch.ones(3)
    state: dict[str, Any] = {}

    # Execute
    first = centered_clip(updates, weights, tau=1.0, state=state)
    stored = state["previous"].clone()
    second = centered_clip(updates, weights, tau=1.0, state=state)

    # Assert: round 1 from 0: x - v = 1, 2, 4 -> clipped 1, 1, 1 -> v = 0 + 3/3 = 1
    torch.testing.assert_close(first.update, torch.tensor([1.0]))
    torch.testing.assert_close(stored, torch.tensor([1.0]))
    # round 2 from 1: x - v = 0, 1, 3 -> clipped 0, 1, 1 -> v = 1 + 2/3 = 5/3 (from 0 again
    # it would be 1)
    torch.testing.assert_close(second.update, torch.tensor([5.0 / 3]))
    torch.testing.assert_close(state["previous"], torch.tensor([5.0 / 3]))
    # influence: pull factors min(1, tau / |x_i - v|) / 3 normalised:
    # round 1: 1/3, 1/6, 1/12 -> 4/7, 2/7, 1/7 ; round 2: 1/3, 1/3, 1/9 -> 3/7, 3/7, 1/7
    assert first.influence is not None and second.influence is not None
    expected_first = torch.tensor([4.0, 2.0, 1.0], dtype=torch.float64) / 7
    expected_second = torch.tensor([3.0, 3.0, 1.0], dtype=torch.float64) / 7
    torch.testing.assert_close(first.influence, expected_first)
    torch.testing.assert_close(second.influence, expected_second)


def test_the_stored_aggregate_is_a_detached_copy() -> None:
    # Prepare
    updates = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]], requires_grad=True)
    state: dict[str, Any] = {}

    # Execute
    result = centered_clip(updates, torch.ones(3), tau=10.0, state=state)
    kept = state["previous"].clone()
    result.update.detach().add_(100.0)  # the caller changes its aggregate in place

    # Assert
    assert not state["previous"].requires_grad
    torch.testing.assert_close(state["previous"], kept)


def test_without_a_state_every_round_starts_from_zero() -> None:
    # Prepare
    updates = torch.tensor([[1.0], [2.0], [4.0]])

    # Execute
    rounds = [centered_clip(updates, torch.ones(3), tau=1.0).update for _ in range(2)]

    # Assert: see test_the_second_round_starts_from_the_first_rounds_aggregate
    torch.testing.assert_close(rounds[0], torch.tensor([1.0]))
    torch.testing.assert_close(rounds[1], torch.tensor([1.0]))


def test_the_median_start_neither_reads_nor_writes_the_state() -> None:
    # Prepare: a stored aggregate far away, which the median start must ignore
    updates = torch.tensor([[0.0], [1.0], [2.0], [2.5], [10.0]])
    state: dict[str, Any] = {"previous": torch.tensor([1000.0])}

    # Execute
    result = centered_clip(updates, torch.ones(5), tau=1.0, iters=2, start="median", state=state)

    # Assert: as test_centered_clip_by_hand_from_the_median
    torch.testing.assert_close(result.update, torch.tensor([1.86]))
    torch.testing.assert_close(state["previous"], torch.tensor([1000.0]))


def test_a_stored_aggregate_of_another_size_is_rejected() -> None:
    # Prepare: the model changed size between rounds
    state: dict[str, Any] = {"previous": torch.zeros(3)}

    # Execute / Assert
    with pytest.raises(ValueError, match=r"state\['previous'\] .*shape \(2,\)"):
        centered_clip(torch.ones(4, 2), torch.ones(4), state=state)

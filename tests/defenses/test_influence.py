"""Tests for ``Aggregate.influence``: every rule's share of the aggregate per client.

The definitions are in each rule's docstring. Compared with: cases worked out by hand (3-5
clients), naive per-column loops over a stable sort for the coordinate-wise rules, and the
combination the rules that average whole updates return (``update = influence @ updates``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from fedbackdoor.defenses._linalg import BLOCK_COLUMNS, pairwise_squared_distances
from fedbackdoor.defenses.averaging import mean
from fedbackdoor.defenses.base import Aggregate
from fedbackdoor.defenses.centered_clip import centered_clip
from fedbackdoor.defenses.clustering import dnc, flame
from fedbackdoor.defenses.coordinatewise import median, trimmed_mean
from fedbackdoor.defenses.distance import _bulyan_selection, bulyan, krum, krum_scores
from fedbackdoor.defenses.dp import dp_adaptive_clipping, dp_fixed_clipping
from fedbackdoor.defenses.geometric_median import geometric_median
from fedbackdoor.defenses.pipeline import Defense
from fedbackdoor.defenses.robust_lr import rlr
from fedbackdoor.defenses.transforms import clip_to_norm
from fedbackdoor.defenses.trust import fltrust, foolsgold
from tests.defenses.rounds import f64, random_updates

SQRT3 = math.sqrt(3.0)


# Every rule with its settings, called as rule(updates, weights, generator=..., **context).
RULES: dict[str, Callable[..., Aggregate]] = {
    "mean": mean,
    "median": median,
    "trimmed_mean": functools.partial(trimmed_mean, beta=0.2),
    "krum": functools.partial(krum, f=1),
    "multi_krum": functools.partial(krum, f=1, m=3),
    "bulyan": functools.partial(bulyan, f=1),
    "geometric_median": geometric_median,
    "centered_clip": functools.partial(centered_clip, tau=0.5, iters=3),
    "centered_clip_median": functools.partial(centered_clip, tau=0.5, iters=3, start="median"),
    "foolsgold": foolsgold,
    "flame": flame,
    "rlr": functools.partial(rlr, theta=2),
    "dnc": functools.partial(dnc, f=1, b=4, niters=3),
    "fltrust": fltrust,
    "dp_fixed": functools.partial(
        dp_fixed_clipping, noise_multiplier=0.1, clipping_norm=1.0, num_sampled_clients=10
    ),
    "dp_adaptive": functools.partial(
        dp_adaptive_clipping, noise_multiplier=0.1, num_sampled_clients=10
    ),
}


def _run(name: str, updates: Tensor, weights: Tensor) -> Aggregate:
    context: dict[str, Any] = {}
    if name == "fltrust":
        noise = torch.randn(updates.shape[1], generator=torch.Generator().manual_seed(99))
        # Averaged in float64, so that the reference does not depend on the clients' order.
        context["reference"] = updates.double().mean(dim=0).float() + 0.1 * noise
    if name == "dp_adaptive":
        context["state"] = {}
    return RULES[name](updates, weights, generator=torch.Generator().manual_seed(0), **context)


# --------------------------------------------------------------------------------------------
# Properties of every rule
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(RULES))
@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(7, 12), d=st.integers(2, 12))
def test_influence_is_a_float64_share_per_client_summing_to_one(
    name: str, seed: int, n: int, d: int
) -> None:
    # Prepare
    updates, weights = random_updates(seed, n, d)

    # Execute
    influence = _run(name, updates, weights).influence

    # Assert: all zero only where a rule trusted nobody (not with random updates in d >= 2;
    # in d = 1 every update is parallel and FoolsGold trusts nobody)
    assert influence is not None
    assert influence.dtype == torch.float64
    assert influence.shape == (n,)
    assert bool(torch.all(influence >= 0))
    assert float(influence.sum()) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("name", list(RULES))
@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(7, 12),
    d=st.integers(2, 12),
    data=st.data(),
)
def test_influence_is_permutation_equivariant(
    name: str, seed: int, n: int, d: int, data: st.DataObject
) -> None:
    # Prepare: random updates have no ties, so stable order never decides
    updates, weights = random_updates(seed, n, d)
    permutation = torch.tensor(data.draw(st.permutations(range(n))))

    # Execute
    original = _run(name, updates, weights).influence
    permuted = _run(name, updates[permutation], weights[permutation]).influence

    # Assert
    assert original is not None and permuted is not None
    torch.testing.assert_close(permuted, original[permutation], rtol=1e-6, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), f=st.integers(0, 3), extra=st.integers(1, 5))
def test_krums_selected_client_gets_influence_one(seed: int, f: int, extra: int) -> None:
    # Prepare
    updates, weights = random_updates(seed, 2 * f + 2 + extra, 6)

    # Execute
    result = krum(updates, weights, f=f)

    # Assert: Krum selects the lowest score (ties: the lower index, as argmin); 1 for it, 0
    # for the others, and no verdict
    selected = int(torch.argmin(krum_scores(updates, f=f)))
    assert result.flagged is None and result.influence is not None
    assert float(result.influence[selected]) == 1.0
    assert (result.influence == 0).tolist() == [i != selected for i in range(len(updates))]
    assert float(result.influence.sum()) == 1.0
    torch.testing.assert_close(result.update, updates[selected])


@pytest.mark.parametrize(
    "name", ["mean", "krum", "multi_krum", "geometric_median", "foolsgold", "dnc"]
)
def test_rules_averaging_whole_updates_return_the_influence_combination(name: str) -> None:
    # Prepare
    updates, weights = random_updates(3, 9, 7)

    # Execute
    result = _run(name, updates, weights)

    # Assert: update = sum_i influence_i x_i
    assert result.influence is not None
    expected = result.influence @ updates.double()
    torch.testing.assert_close(result.update, expected.float(), rtol=1e-5, atol=1e-6)


def test_a_transform_before_the_mean_keeps_the_means_influence() -> None:
    # Prepare: clip + FedAvg, the "clip" defense
    defense = Defense(rule=mean, pre=[functools.partial(clip_to_norm, max_norm=0.5)])
    updates, weights = random_updates(4, 5, 3)

    # Execute
    result = defense(updates, weights, generator=torch.Generator())

    # Assert
    assert result.influence is not None
    torch.testing.assert_close(result.influence, weights.double() / weights.double().sum())


# --------------------------------------------------------------------------------------------
# Worked by hand
# --------------------------------------------------------------------------------------------


def test_mean_influence_by_hand() -> None:
    # Execute
    result = mean(torch.tensor([[1.0], [3.0], [5.0]]), torch.tensor([1.0, 1.0, 2.0]))

    # Assert: the sample shares 1/4, 1/4, 2/4
    assert result.influence is not None
    torch.testing.assert_close(result.influence, f64(0.25, 0.25, 0.5))


def test_median_influence_by_hand_odd_n() -> None:
    # Prepare
    updates = torch.tensor([[1.0, 5.0], [7.0, 2.0], [3.0, 9.0]])

    # Execute
    result = median(updates, torch.ones(3))

    # Assert: column 0 sorted 1, 3, 7 -> 3 from row 2 ; column 1 sorted 2, 5, 9 -> 5 from row 0
    # -> each of rows 0 and 2 gave one of the 2 coordinates
    assert result.influence is not None
    torch.testing.assert_close(result.influence, f64(0.5, 0.0, 0.5))


def test_median_influence_by_hand_even_n() -> None:
    # Prepare
    updates = torch.tensor([[1.0, 25.0], [2.0, 10.0], [4.0, 20.0], [100.0, 30.0]])

    # Execute
    result = median(updates, torch.ones(4))

    # Assert: column 0 middle pair 2 (row 1), 4 (row 2) ; column 1 sorted 10 (1), 20 (2),
    # 25 (0), 30 (3) -> middle pair rows 2 and 0 ; 1/2 each per coordinate, averaged:
    # row 0 (0 + 1/2) / 2, row 1 (1/2 + 0) / 2, row 2 (1/2 + 1/2) / 2, row 3 0
    assert result.influence is not None
    torch.testing.assert_close(result.influence, f64(0.25, 0.25, 0.5, 0.0))


def test_median_influence_credits_equal_values_by_stable_sort_position() -> None:
    # Prepare: column 0 all equal ; column 1 sorted stably 1 (row 1), 2 (row 0), 2 (row 2)
    updates = torch.tensor([[4.0, 2.0], [4.0, 1.0], [4.0, 2.0]])

    # Execute
    result = median(updates, torch.ones(3))

    # Assert: the middle position 1 holds row 1 in column 0 and row 0 in column 1
    assert result.influence is not None
    torch.testing.assert_close(result.influence, f64(0.5, 0.5, 0.0))


def test_trimmed_mean_influence_by_hand() -> None:
    # Prepare
    updates = torch.tensor([[1.0, 3.0], [2.0, 4.0], [3.0, 50.0], [4.0, 2.0], [100.0, -50.0]])

    # Execute
    result = trimmed_mean(updates, torch.ones(5), beta=0.2)

    # Assert: k = 1 ; column 0 keeps rows 1, 2, 3 ; column 1 sorted -50 (4), 2 (3), 3 (0),
    # 4 (1), 50 (2) keeps rows 3, 0, 1 ; 1/3 per kept value, averaged over 2 coordinates:
    # row 0 1/6, row 1 1/3, row 2 1/6, row 3 1/3, row 4 0
    assert result.influence is not None
    torch.testing.assert_close(result.influence, f64(1 / 6, 1 / 3, 1 / 6, 1 / 3, 0.0))


def test_krum_influence_by_hand() -> None:
    # Prepare: the case of test_distance.test_krum_by_hand
    updates = torch.tensor([[0.0], [1.0], [2.5], [3.0], [100.0]])

    # Execute
    single = krum(updates, torch.ones(5), f=1)
    multi = krum(updates, torch.ones(5), f=1, m=3)

    # Assert: Krum selects 2.5 ; Multi-Krum 2.5, 1 and 3
    assert single.influence is not None and multi.influence is not None
    torch.testing.assert_close(single.influence, f64(0, 0, 1, 0, 0))
    torch.testing.assert_close(multi.influence, f64(0, 1 / 3, 1 / 3, 1 / 3, 0))


def test_bulyan_influence_by_hand() -> None:
    # Prepare: the case of test_distance.test_bulyan_by_hand (f = 1, n = 7)
    updates = torch.tensor([[5.0], [20.0], [0.0], [8.0], [1.0], [-10.0], [2.0]])

    # Execute
    result = bulyan(updates, torch.ones(7), f=1)

    # Assert: selected 5, 0, 8, 1, 2 (20 and -10 left out) ; beta = 5 - 2 = 3 values closest to
    # the median 2: 2, 1, 0 (rows 6, 4, 2), 1/3 each
    assert result.influence is not None
    torch.testing.assert_close(result.influence, f64(0, 0, 1 / 3, 0, 1 / 3, 0, 1 / 3))


def test_geometric_median_influence_by_hand_for_two_weighted_points() -> None:
    # Prepare: 0 and 1 with weights 1 and 3, a_i = 1/4, 3/4
    updates = torch.tensor([[0.0], [1.0]])
    weights = torch.tensor([1.0, 3.0])

    # Execute
    one = geometric_median(updates, weights, max_iter=1)
    two = geometric_median(updates, weights, max_iter=2)
    converged = geometric_median(updates, weights)

    # Assert: start at the median 0.5, distances 0.5, 0.5 -> b = (1/4, 3/4) / 0.5 -> shares
    # (1/4, 3/4), v = 0.75 ; distances 0.75, 0.25 -> b = (1/3, 3) -> (1/10, 9/10), v = 0.9 ;
    # the weighted geometric median is 1, the point holding more than half the weight
    for result, expected in ((one, f64(0.25, 0.75)), (two, f64(0.1, 0.9))):
        assert result.influence is not None
        torch.testing.assert_close(result.influence, expected)
        torch.testing.assert_close(result.update.double(), expected[1:], rtol=1e-6, atol=0)
    assert converged.influence is not None
    torch.testing.assert_close(converged.influence, f64(0.0, 1.0), rtol=0, atol=1e-4)


def test_geometric_median_influence_of_an_equilateral_triangle_is_a_third_each() -> None:
    # Prepare: the Fermat point of an equilateral triangle is its centroid
    updates = torch.tensor([[0.0, 0.0], [2.0, 0.0], [1.0, SQRT3]])

    # Execute
    result = geometric_median(updates, torch.ones(3))

    # Assert
    assert result.influence is not None
    torch.testing.assert_close(result.influence, torch.full((3,), 1 / 3, dtype=torch.float64))


def test_geometric_median_that_stops_at_the_median_has_the_medians_influence() -> None:
    # Prepare: 1-D 0, 1, 10: the coordinate median 1 is already the geometric median
    updates = torch.tensor([[0.0], [1.0], [10.0]])

    # Execute
    result = geometric_median(updates, torch.ones(3))

    # Assert: from v = 1 the unit vectors -1, 0 (smoothed), +1 with weights 1/3 cancel: the
    # loop stops before the first step, and the median came from row 1
    torch.testing.assert_close(result.update, torch.tensor([1.0]))
    assert result.influence is not None
    torch.testing.assert_close(result.influence, f64(0, 1, 0))


def test_centered_clip_influence_by_hand_from_the_median() -> None:
    # Prepare
    updates = torch.tensor([[0.0], [1.0], [2.0], [2.5], [10.0]])

    # Execute
    result = centered_clip(updates, torch.ones(5), tau=1.0, iters=1, start="median")

    # Assert: start at the median 2 (row 2) ; distances 2, 1, 0, 0.5, 8 -> pull factors
    # min(1, 1/d) / 5 = 1/10, 1/5, 1/5, 1/5, 1/40, sum 0.725 ; v = 2 + sum c_i (x_i - 2)
    # = 2 - 0.2 - 0.2 + 0.1 + 0.2 = 1.9 ; influence (1 - 0.725) mu + c with mu = e_2
    torch.testing.assert_close(result.update, torch.tensor([1.9]))
    assert result.influence is not None
    torch.testing.assert_close(result.influence, f64(0.1, 0.2, 0.475, 0.2, 0.025))


def test_centered_clip_influence_after_several_iterations_counts_every_pull() -> None:
    # Prepare: 1-D 0, 1, 4 from zero, tau = 1, two iterations
    updates = torch.tensor([[0.0], [1.0], [4.0]])

    # Execute
    result = centered_clip(updates, torch.ones(3), tau=1.0, iters=2)

    # Assert: iteration 1 from 0: distances 0, 1, 4 -> s = (1, 1, 1/4) / 3, c = s,
    # v = 1/3 + 1/3 = 2/3 ; iteration 2: distances 2/3, 1/3, 10/3 -> s = (1, 1, 3/10) / 3,
    # sum 23/30 ; c <- c + s - (sum s) c = (7/30) c + s
    #   = (7/90 + 1/3, 7/90 + 1/3, 7/360 + 1/10) = (37/90, 37/90, 43/360)
    # influence c / sum c, sum = 148/360 + 148/360 + 43/360 = 339/360
    c = f64(148 / 360, 148 / 360, 43 / 360)
    assert result.influence is not None
    torch.testing.assert_close(result.influence, c / c.sum())
    torch.testing.assert_close(result.update.double(), c @ updates.double(), rtol=1e-6, atol=0)


def test_foolsgold_influence_by_hand() -> None:
    # Prepare: the case of test_trust.test_foolsgold_by_hand, alpha = (0.5, 0.5, 1)
    updates = torch.tensor([[2.0, 0.0], [1.0, SQRT3], [-2 * SQRT3, 2.0]])

    # Execute
    result = foolsgold(updates, torch.tensor([1.0, 1.0, 50.0]))

    # Assert: alpha / sum alpha (sample counts unused)
    assert result.influence is not None
    torch.testing.assert_close(result.influence, f64(0.25, 0.25, 0.5))


def test_a_rule_that_trusts_nobody_gives_nobody_influence() -> None:
    # Prepare: every update parallel: FoolsGold gives every client alpha = 0
    updates = torch.tensor([[1.0, 2.0], [2.0, 4.0], [0.5, 1.0]])

    # Execute
    result = foolsgold(updates, torch.ones(3))

    # Assert
    assert result.influence is not None
    torch.testing.assert_close(result.influence, torch.zeros(3, dtype=torch.float64))


def test_flame_influence_by_hand() -> None:
    # Prepare: the case of test_clustering.test_flame_by_hand: {x1, x2, x3} admitted
    updates = torch.tensor(
        [
            [3.0, 3.0, 0.0, 0.0, 0.0],
            [1.0, 0.0, 1.0, 0.0, 0.0],
            [2.0, 0.0, 0.0, 2.0, 0.0],
            [-0.5, 0.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0, 20.0],
        ]
    )

    # Execute
    result = flame(updates, torch.arange(1.0, 6.0), noise_lambda=0.0, generator=torch.Generator())

    # Assert: the unweighted mean of the clipped admitted updates, 1/3 each (x1 was clipped)
    assert result.influence is not None
    torch.testing.assert_close(result.influence, f64(1 / 3, 1 / 3, 1 / 3, 0, 0))


def test_rlr_influence_is_the_sample_shares() -> None:
    # Prepare: column 1's vote +1 < theta = 3 reverses it; the shares stay the mean's
    updates = torch.tensor([[1.0, 1.0], [2.0, -1.0], [3.0, 1.0], [1.0, -1.0], [1.0, 2.0]])

    # Execute
    result = rlr(updates, torch.tensor([1.0, 1.0, 1.0, 1.0, 2.0]), theta=3)

    # Assert
    assert result.influence is not None
    torch.testing.assert_close(result.influence, f64(1, 1, 1, 1, 2) / 6)


def test_dnc_influence_by_hand() -> None:
    # Prepare: the case of test_clustering.test_dnc_by_hand: client 3 removed
    updates = torch.tensor([[1.0, 0.0], [3.0, 0.0], [-1.0, 0.0], [1.0, 10.0]])

    # Execute
    result = dnc(updates, torch.tensor([1.0, 1.0, 1.0, 9.0]), f=1, generator=torch.Generator())

    # Assert: the unweighted mean of the good set
    assert result.influence is not None
    torch.testing.assert_close(result.influence, f64(1 / 3, 1 / 3, 1 / 3, 0))


def test_fltrust_influence_by_hand() -> None:
    # Prepare: the case of test_trust.test_fltrust_by_hand: trust 1, 0.8, 0, 0
    updates = torch.tensor([[6.0, 8.0], [0.0, 2.0], [-3.0, -4.0], [4.0, -3.0]])

    # Execute
    result = fltrust(updates, torch.ones(4), reference=torch.tensor([3.0, 4.0]))

    # Assert: the trust shares, not the rescaling factors ||g0|| / ||x_i|| (1/2 and 5/2)
    assert result.influence is not None
    torch.testing.assert_close(result.influence, f64(1 / 1.8, 0.8 / 1.8, 0, 0))


# --------------------------------------------------------------------------------------------
# Coordinate-wise rules against naive per-column loops, ties and several column blocks
# --------------------------------------------------------------------------------------------


def _stable_order(column: list[float]) -> list[int]:
    return sorted(range(len(column)), key=lambda i: (column[i], i))


def _naive_window_influence(updates: Tensor, low: int, high: int) -> Tensor:
    n, d = updates.shape
    influence = torch.zeros(n, dtype=torch.float64)
    for j in range(d):
        order = _stable_order(updates[:, j].tolist())
        for position in range(low, high):
            influence[order[position]] += 1 / ((high - low) * d)
    return influence


def _naive_bulyan_influence(updates: Tensor, selected: list[int], beta: int) -> Tensor:
    n, d = updates.shape
    influence = torch.zeros(n, dtype=torch.float64)
    for j in range(d):
        column = [float(updates[i, j]) for i in selected]
        order = _stable_order(column)
        ordered = [column[i] for i in order]
        count = len(ordered)
        centre = (
            ordered[count // 2]
            if count % 2
            else (ordered[count // 2 - 1] + ordered[count // 2]) / 2
        )
        start = 0
        while start < count - beta and ordered[start] + ordered[start + beta] < 2 * centre:
            start += 1
        for position in range(start, start + beta):
            influence[selected[order[position]]] += 1 / (beta * d)
    return influence


def _tied_updates(seed: int, n: int, d: int) -> Tensor:
    """Small integers: most columns hold equal values, across the windows' ends too."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(-2, 3, (n, d), generator=generator).to(torch.float32)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 9), d=st.integers(1, 12))
def test_median_influence_matches_a_naive_loop_with_ties(seed: int, n: int, d: int) -> None:
    # Prepare
    updates = _tied_updates(seed, n, d)
    middle = n // 2

    # Execute
    result = median(updates, torch.ones(n))

    # Assert
    assert result.influence is not None
    expected = _naive_window_influence(updates, middle if n % 2 else middle - 1, middle + 1)
    torch.testing.assert_close(result.influence, expected)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(1, 9),
    d=st.integers(1, 12),
    beta=st.sampled_from([0.0, 0.1, 0.2, 0.3, 0.45]),
)
def test_trimmed_mean_influence_matches_a_naive_loop_with_ties(
    seed: int, n: int, d: int, beta: float
) -> None:
    # Prepare
    updates = _tied_updates(seed, n, d)
    k = math.floor(beta * n + 1e-9)

    # Execute
    result = trimmed_mean(updates, torch.ones(n), beta=beta)

    # Assert
    assert result.influence is not None
    torch.testing.assert_close(result.influence, _naive_window_influence(updates, k, n - k))


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    f=st.integers(0, 2),
    extra=st.integers(0, 3),
    d=st.integers(1, 10),
)
def test_bulyan_influence_matches_a_naive_loop_with_ties(
    seed: int, f: int, extra: int, d: int
) -> None:
    # Prepare
    n = 4 * f + 3 + extra
    updates = _tied_updates(seed, n, d)

    # Execute
    result = bulyan(updates, torch.ones(n), f=f)

    # Assert: the selection is bulyan's own (tested in test_distance.py); the clients left out
    # get 0 (in the naive loop too)
    assert result.influence is not None and result.flagged is None
    selected = _bulyan_selection(pairwise_squared_distances(updates), f).tolist()
    beta = n - 4 * f
    expected = _naive_bulyan_influence(updates, selected, beta)
    torch.testing.assert_close(result.influence, expected)


@pytest.mark.parametrize("name", ["median", "trimmed_mean", "bulyan"])
def test_coordinatewise_influence_over_several_column_blocks(name: str) -> None:
    # Prepare: 2 full blocks and a partial one, ties in some columns
    d = 2 * BLOCK_COLUMNS + 5
    updates = torch.randn(7, d, generator=torch.Generator().manual_seed(0))
    updates[:, ::7] = torch.round(updates[:, ::7])

    # Execute
    result = RULES[name](updates, torch.ones(7))

    # Assert
    assert result.influence is not None
    if name == "median":
        expected = _naive_window_influence(updates, 3, 4)
    elif name == "trimmed_mean":
        expected = _naive_window_influence(updates, 1, 6)  # k = floor(0.2 * 7) = 1
    else:
        assert result.flagged is None
        selected = _bulyan_selection(pairwise_squared_distances(updates), 1).tolist()
        expected = _naive_bulyan_influence(updates, selected, 7 - 4)
    torch.testing.assert_close(result.influence, expected)

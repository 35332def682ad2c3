"""Tests for fedbackdoor.defenses.distance: Krum, Multi-Krum and Bulyan."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from fedbackdoor.defenses._linalg import pairwise_squared_distances
from fedbackdoor.defenses.base import NotEnoughClients
from fedbackdoor.defenses.distance import _bulyan_selection, bulyan, krum, krum_scores
from tests.defenses.rounds import f64, random_updates

# --------------------------------------------------------------------------------------------
# Krum and Multi-Krum
# --------------------------------------------------------------------------------------------


def test_krum_by_hand() -> None:
    # Prepare: 1-D points 0, 1, 2.5, 3, 100 ; n = 5, f = 1 -> n - f - 2 = 2 neighbours
    updates = torch.tensor([[0.0], [1.0], [2.5], [3.0], [100.0]])
    weights = torch.ones(5)

    # Execute
    single = krum(updates, weights, f=1)
    multi = krum(updates, weights, f=1, m=3)

    # Assert: squared distances to the two nearest others:
    #   x=0:   1 (to 1),      6.25 (to 2.5)  -> 7.25
    #   x=1:   1 (to 0),      2.25 (to 2.5)  -> 3.25
    #   x=2.5: 0.25 (to 3),   2.25 (to 1)    -> 2.5
    #   x=3:   0.25 (to 2.5), 4 (to 1)       -> 4.25
    #   x=100: 94^2 + 97.5^2 = 9409 + 9506.25 -> 18915.25
    expected_scores = torch.tensor([7.25, 3.25, 2.5, 4.25, 18915.25], dtype=torch.float64)
    torch.testing.assert_close(krum_scores(updates, f=1), expected_scores)
    # Krum picks x=2.5 ; Multi-Krum (m=3) picks 2.5, 1, 3 -> mean 6.5 / 3 ; the clients not
    # selected get no influence (and no verdict: flagged is None)
    torch.testing.assert_close(single.update, torch.tensor([2.5]))
    assert single.flagged is None and single.influence is not None
    assert (single.influence == 0).tolist() == [True, True, False, True, True]
    torch.testing.assert_close(multi.update, torch.tensor([6.5 / 3]))
    assert multi.flagged is None and multi.influence is not None
    assert (multi.influence == 0).tolist() == [True, False, False, False, True]


def test_krum_breaks_ties_by_lower_index() -> None:
    # Prepare: points 0, 1, 2, 3, 100 ; scores 0: 1+4=5, 1: 1+1=2, 2: 1+1=2, 3: 1+4=5
    updates = torch.tensor([[0.0], [1.0], [2.0], [3.0], [100.0]])
    weights = torch.ones(5)

    # Execute
    single = krum(updates, weights, f=1)
    multi = krum(updates, weights, f=1, m=3)

    # Assert: the tie 1/2 goes to index 1 ; the tie 0/3 for the third place goes to index 0
    torch.testing.assert_close(single.update, torch.tensor([1.0]))
    assert single.flagged is None and single.influence is not None
    assert (single.influence == 0).tolist() == [True, False, True, True, True]
    assert multi.flagged is None and multi.influence is not None
    assert (multi.influence == 0).tolist() == [False, False, False, True, True]
    torch.testing.assert_close(multi.update, torch.tensor([1.0]))  # (0 + 1 + 2) / 3


def test_multi_krum_with_m_equal_n_is_the_unweighted_mean() -> None:
    # Prepare
    updates, weights = random_updates(seed=3, n=6, d=4)

    # Execute
    result = krum(updates, weights, f=1, m=6)

    # Assert: everybody selected, 1/6 each
    torch.testing.assert_close(result.update, updates.mean(dim=0))
    assert result.flagged is None and result.influence is not None
    assert not (result.influence == 0).any()
    torch.testing.assert_close(result.influence, torch.full((6,), 1 / 6, dtype=torch.float64))


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    f=st.integers(0, 3),
    extra=st.integers(1, 5),
    d=st.integers(1, 16),
)
def test_krum_scores_match_a_naive_loop(seed: int, f: int, extra: int, d: int) -> None:
    # Prepare
    n = 2 * f + 2 + extra
    updates, _ = random_updates(seed, n, d)
    naive = torch.empty(n, dtype=torch.float64)
    for i in range(n):
        to_others = sorted(
            float((updates[i].double() - updates[j].double()).square().sum())
            for j in range(n)
            if j != i
        )
        naive[i] = sum(to_others[: n - f - 2])

    # Execute
    fast = krum_scores(updates, f=f)

    # Assert
    torch.testing.assert_close(fast, naive, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("f", "n"), [(f, n) for f in range(4) for n in range(2 * f + 3)])
def test_krum_raises_not_enough_clients_when_n_at_most_2f_plus_2(f: int, n: int) -> None:
    # Prepare
    updates, weights = random_updates(0, n, 3)

    # Execute / Assert
    with pytest.raises(NotEnoughClients, match=rf"n >= 2f \+ 3 = {2 * f + 3} .*got n={n} \(f={f}"):
        krum(updates, weights, f=f)


def test_krum_raises_not_enough_clients_when_m_exceeds_n() -> None:
    # Prepare
    updates, weights = random_updates(0, 5, 3)

    # Execute / Assert
    with pytest.raises(NotEnoughClients, match=r"n >= m = 6 .*got n=5 \(f=1, m=6\)"):
        krum(updates, weights, f=1, m=6)


# --------------------------------------------------------------------------------------------
# Bulyan
# --------------------------------------------------------------------------------------------


def _selection(updates: Tensor, f: int) -> list[int]:
    """Bulyan's step 1, the ``n - 2f`` clients its recursive Krum selects (ascending).

    ``bulyan`` reports no verdict (``flagged`` is ``None``) and its ``influence`` is 0 for the
    ``2f`` clients left out, but also for a selected client none of whose values was averaged:
    the selection itself is read from the helper ``bulyan`` calls.
    """
    return _bulyan_selection(pairwise_squared_distances(updates), f).tolist()


def _naive_bulyan(updates: Tensor, f: int) -> tuple[list[int], Tensor]:
    """Bulyan by loops: Krum recomputed from scratch on the remaining updates every round."""
    n, d = updates.shape
    points = updates.double()

    def squared(i: int, j: int) -> float:
        return float((points[i] - points[j]).square().sum())

    remaining = list(range(n))
    selected: list[int] = []
    while len(selected) < n - 2 * f:
        neighbours = max(len(remaining) - f - 2, 1)
        keys = {}
        for i in remaining:
            to_others = sorted(squared(i, j) for j in remaining if j != i) or [float("inf")]
            keys[i] = (sum(to_others[:neighbours]), sum(to_others), i)
        best = min(remaining, key=keys.__getitem__)
        remaining.remove(best)
        selected.append(best)
    kept = n - 4 * f
    update = torch.empty(d, dtype=torch.float64)
    for column in range(d):
        values = sorted(float(points[i, column]) for i in selected)
        half = len(values) // 2
        median = values[half] if len(values) % 2 else (values[half - 1] + values[half]) / 2
        closest = sorted(values, key=lambda value: (abs(value - median), value))[:kept]
        update[column] = sum(closest) / kept
    return sorted(selected), update


def test_bulyan_by_hand() -> None:
    # Prepare: 1-D, n = 7, f = 1 -> theta = n - 2f = 5 rounds of Krum, beta = theta - 2f = 3
    updates = torch.tensor([[5.0], [20.0], [0.0], [8.0], [1.0], [-10.0], [2.0]])
    weights = torch.tensor([1.0, 9.0, 1.0, 1.0, 1.0, 9.0, 1.0])

    # Execute
    result = bulyan(updates, weights, f=1)

    # Assert: Krum scores (sum of squared distances to the r - f - 2 nearest remaining ones):
    #   r=7, 4 neighbours: 2: 1+4+9+36=50  5: 9+9+16+25=59  1: 1+1+16+49=67  0: 1+4+25+64=94
    #                      8: 9+36+49+64=158  -10: 100+121+144+225=590  20: 144+225+324+361=1054
    #                      -> select 2
    #   r=6, 3 neighbours: 5: 9+16+25=50  1: 1+16+49=66  0: 1+25+64=90  8: 9+49+64=122
    #                      -10: 100+121+225=446  20: 144+225+361=730 -> select 5
    #   r=5, 2 neighbours: 1: 1+49=50  0: 1+64=65  8: 49+64=113  -10: 100+121=221
    #                      20: 144+361=505 -> select 1
    #   r=4, 1 neighbour:  0: 64  8: 64  -10: 100  20: 144 -> tie 0/8, sums to all remaining:
    #                      0: 64+100+400=564, 8: 64+324+144=532 -> select 8
    #   r=3, max(0, 1)=1:  0: 100  -10: 100  20: 400 -> tie 0/-10, sums: 0: 100+400=500,
    #                      -10: 100+900=1000 -> select 0
    # selected {0, 1, 2, 5, 8}: median 2, the 3 closest are 2, 1, 0 -> (2 + 1 + 0) / 3 = 1
    # (weights unused) ; 20 and -10 (clients 1 and 5) left out: no influence, no verdict
    torch.testing.assert_close(result.update, torch.tensor([1.0]))
    assert _selection(updates, 1) == [0, 2, 3, 4, 6]
    assert result.flagged is None and result.influence is not None
    assert float(result.influence[1]) == 0.0 and float(result.influence[5]) == 0.0
    torch.testing.assert_close(result.influence, f64(0, 0, 1 / 3, 0, 1 / 3, 0, 1 / 3))


def test_bulyan_with_f_zero_is_the_unweighted_mean() -> None:
    # Prepare
    updates, weights = random_updates(seed=2, n=5, d=3)

    # Execute
    result = bulyan(updates, weights, f=0)

    # Assert: theta = n selected, beta = n kept in every coordinate
    torch.testing.assert_close(result.update, updates.mean(dim=0))
    assert _selection(updates, 0) == list(range(5))
    assert result.flagged is None and result.influence is not None
    assert not (result.influence == 0).any()
    torch.testing.assert_close(result.influence, torch.full((5,), 0.2, dtype=torch.float64))


def test_bulyan_keeps_the_values_closest_to_the_median_in_each_coordinate() -> None:
    # Prepare: f = 1, n = 7 -> the 2 far clients are dropped, then beta = 3 of the 5 selected
    # values are kept per coordinate
    updates = torch.tensor(
        [
            [0.0, 0.4],
            [0.1, 0.0],
            [0.2, 0.1],
            [0.3, 0.2],
            [0.4, 0.3],
            [90.0, 90.0],
            [-90.0, -90.0],
        ]
    )

    # Execute
    result = bulyan(updates, torch.ones(7), f=1)

    # Assert: column 0: 0, .1, .2, .3, .4 -> median .2, keep .1 .2 .3 -> .2 ;
    # column 1: .4, 0, .1, .2, .3 -> median .2, keep .1 .2 .3 -> .2 ; so rows 1-4 have 1, 2,
    # 2, 1 of the 3 * 2 values averaged, row 0 none, the two far rows (left out) none
    torch.testing.assert_close(result.update, torch.tensor([0.2, 0.2]))
    assert _selection(updates, 1) == [0, 1, 2, 3, 4]
    assert result.flagged is None and result.influence is not None
    assert (result.influence[5:] == 0).all()
    torch.testing.assert_close(result.influence, f64(0, 1 / 6, 1 / 3, 1 / 3, 1 / 6, 0, 0))


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    f=st.integers(0, 3),
    extra=st.integers(0, 5),
    d=st.integers(1, 8),
)
def test_bulyan_matches_a_naive_loop(seed: int, f: int, extra: int, d: int) -> None:
    # Prepare
    n = 4 * f + 3 + extra
    updates, weights = random_updates(seed, n, d)

    # Execute
    result = bulyan(updates, weights, f=f)
    selected, update = _naive_bulyan(updates, f)

    # Assert: the same selection, and the clients left out have no influence
    assert _selection(updates, f) == selected
    assert result.flagged is None and result.influence is not None
    left_out = [i for i in range(n) if i not in selected]
    assert (result.influence[left_out] == 0).all()
    torch.testing.assert_close(result.update, update.float(), rtol=1e-5, atol=1e-6)


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    f=st.integers(0, 3),
    extra=st.integers(0, 5),
    d=st.integers(1, 16),
    data=st.data(),
)
def test_bulyan_permutation_invariance(
    seed: int, f: int, extra: int, d: int, data: st.DataObject
) -> None:
    # Prepare
    n = 4 * f + 3 + extra
    updates, weights = random_updates(seed, n, d)
    permutation = torch.tensor(data.draw(st.permutations(range(n))))

    # Execute
    original = bulyan(updates, weights, f=f)
    permuted = bulyan(updates[permutation], weights[permutation], f=f)

    # Assert
    torch.testing.assert_close(permuted.update, original.update, rtol=1e-5, atol=1e-6)
    assert original.flagged is None and permuted.flagged is None
    assert original.influence is not None and permuted.influence is not None
    assert torch.equal(permuted.influence, original.influence[permutation])
    selected = _selection(updates, f)
    assert sorted(int(permutation[i]) for i in _selection(updates[permutation], f)) == selected
    left_out = [i for i in range(n) if i not in selected]
    assert len(left_out) == 2 * f
    assert (original.influence[left_out] == 0).all()


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), f=st.integers(0, 3), d=st.integers(1, 16))
def test_bulyan_of_identical_updates_is_that_update(seed: int, f: int, d: int) -> None:
    # Prepare
    row, _ = random_updates(seed, 1, d)
    n = 4 * f + 3
    updates = row.expand(n, d).clone()

    # Execute
    result = bulyan(updates, torch.ones(n), f=f)

    # Assert
    torch.testing.assert_close(result.update, row[0])


@pytest.mark.parametrize("f", [1, 2, 3])
def test_bulyan_ignores_f_huge_outliers(f: int) -> None:
    # Prepare: n = 4f + 3 clients, f of them send 1e6 (or -1e6) in every coordinate
    n = 4 * f + 3
    generator = torch.Generator().manual_seed(f)
    benign = torch.randn(n - f, 10, generator=generator)
    signs = torch.tensor([1.0, -1.0, 1.0])[:f].unsqueeze(1)
    outliers = 1e6 * signs * torch.ones(f, 10)
    updates = torch.cat([outliers[:1], benign, outliers[1:]])  # attackers not all at the end

    # Execute
    result = bulyan(updates, torch.ones(n), f=f)

    # Assert
    low, high = benign.min(dim=0).values, benign.max(dim=0).values
    assert torch.all((result.update >= low) & (result.update <= high))
    attackers = [0, *range(n - f + 1, n)]  # not selected, so no influence (and no verdict)
    assert not set(attackers) & set(_selection(updates, f))
    assert result.flagged is None and result.influence is not None
    assert (result.influence[attackers] == 0).all()


@pytest.mark.parametrize(("f", "n"), [(f, n) for f in range(4) for n in range(4 * f + 3)])
def test_bulyan_raises_not_enough_clients_below_4f_plus_3(f: int, n: int) -> None:
    # Prepare
    updates, weights = random_updates(0, n, 3)

    # Execute / Assert
    with pytest.raises(
        NotEnoughClients, match=rf"n >= 4f \+ 3 = {4 * f + 3} clients, got n={n} \(f={f}\)"
    ):
        bulyan(updates, weights, f=f)


@pytest.mark.parametrize(("f", "pattern"), [(-1, r"f=-1"), (1.5, r"f=1\.5"), (True, r"f=True")])
def test_bulyan_rejects_bad_f(f: float, pattern: str) -> None:
    # Prepare
    updates, weights = random_updates(0, 11, 3)

    # Execute / Assert
    with pytest.raises(ValueError, match=pattern) as raised:
        bulyan(updates, weights, f=f)  # type: ignore[arg-type]
    assert not isinstance(raised.value, NotEnoughClients)

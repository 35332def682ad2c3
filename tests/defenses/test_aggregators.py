"""Tests for fedbackdoor.defenses.aggregators."""

from __future__ import annotations

import functools
from collections.abc import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from fedbackdoor.defenses.aggregators import (
    Aggregate,
    NotEnoughClients,
    bulyan,
    centered_clip,
    geometric_median,
    krum,
    krum_scores,
    mean,
    median,
    pairwise_squared_distances,
    trimmed_mean,
)

RULES: dict[str, Callable[[Tensor, Tensor], Aggregate]] = {
    "mean": mean,
    "median": median,
    "trimmed_mean": functools.partial(trimmed_mean, beta=0.2),
    "krum": functools.partial(krum, f=1),
    "multi_krum": functools.partial(krum, f=1, m=3),
    "geometric_median": geometric_median,
    # From the round's median: from the previous aggregate (zero here) one step of tau = 1
    # cannot reach identical updates, and the previous aggregate is tested in
    # test_centered_clip.py.
    "centered_clip": functools.partial(centered_clip, start="median"),
}
# Bulyan needs n >= 4f + 3, more clients than these shared tests use: see test_bulyan.py.
ROBUST_RULES = ["median", "trimmed_mean", "krum", "multi_krum", "geometric_median", "centered_clip"]


def _random_updates(seed: int, n: int, d: int) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    updates = torch.randn(n, d, generator=generator)
    weights = torch.randint(1, 100, (n,), generator=generator).to(torch.float32)
    return updates, weights


# --------------------------------------------------------------------------------------------
# Worked by hand
# --------------------------------------------------------------------------------------------


def test_mean_by_hand() -> None:
    # Prepare
    updates = torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 4.0]])
    weights = torch.tensor([1.0, 1.0, 2.0])

    # Execute
    result = mean(updates, weights)

    # Assert: (1*1 + 1*3 + 2*5) / 4 = 14/4 = 3.5 ; (1*0 + 1*2 + 2*4) / 4 = 10/4 = 2.5
    torch.testing.assert_close(result.update, torch.tensor([3.5, 2.5]))
    assert result.flagged is None


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
    updates, weights = _random_updates(seed=3, n=6, d=4)

    # Execute
    result = krum(updates, weights, f=1, m=6)

    # Assert: everybody selected, 1/6 each
    torch.testing.assert_close(result.update, updates.mean(dim=0))
    assert result.flagged is None and result.influence is not None
    assert not (result.influence == 0).any()
    torch.testing.assert_close(result.influence, torch.full((6,), 1 / 6, dtype=torch.float64))


# --------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(RULES))
@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(5, 12), d=st.integers(1, 16), data=st.data())
def test_permutation_invariance(name: str, seed: int, n: int, d: int, data: st.DataObject) -> None:
    # Prepare
    rule = RULES[name]
    updates, weights = _random_updates(seed, n, d)
    permutation = torch.tensor(data.draw(st.permutations(range(n))))

    # Execute
    original = rule(updates, weights)
    permuted = rule(updates[permutation], weights[permutation])

    # Assert
    torch.testing.assert_close(permuted.update, original.update, rtol=1e-5, atol=1e-6)
    if original.flagged is None:
        assert permuted.flagged is None
    else:
        assert permuted.flagged is not None
        assert torch.equal(permuted.flagged, original.flagged[permutation])
    if name in ("krum", "multi_krum"):  # who is selected (influence 1/m) follows the clients
        assert original.influence is not None and permuted.influence is not None
        assert torch.equal(permuted.influence, original.influence[permutation])


@pytest.mark.parametrize("name", list(RULES))
@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(5, 12), d=st.integers(1, 16))
def test_identical_updates_aggregate_to_themselves(name: str, seed: int, n: int, d: int) -> None:
    # Prepare
    row, weights = _random_updates(seed, 1, d)
    updates = row.expand(n, d).clone()
    weights = weights.expand(n).clone()

    # Execute
    result = RULES[name](updates, weights)

    # Assert
    torch.testing.assert_close(result.update, row[0])


@pytest.mark.parametrize("name", ["median", "trimmed_mean"])
@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 12), d=st.integers(1, 16))
def test_coordinatewise_rules_stay_within_each_coordinate_range(
    name: str, seed: int, n: int, d: int
) -> None:
    # Prepare
    updates, weights = _random_updates(seed, n, d)

    # Execute
    result = RULES[name](updates, weights)

    # Assert
    assert torch.all(result.update >= updates.min(dim=0).values)
    assert torch.all(result.update <= updates.max(dim=0).values)


@pytest.mark.parametrize("name", ROBUST_RULES)
def test_huge_outliers_do_not_move_robust_rules_beyond_the_benign_range(name: str) -> None:
    # Prepare: 7 benign clients, f = 2 attackers sending 1e6 in every coordinate
    generator = torch.Generator().manual_seed(0)
    benign = torch.randn(7, 10, generator=generator)
    outliers = torch.full((2, 10), 1e6)
    updates = torch.cat([outliers[:1], benign, outliers[1:]])  # attackers not at the end
    weights = torch.ones(9)
    rules: dict[str, Callable[[Tensor, Tensor], Aggregate]] = {
        "median": median,
        "trimmed_mean": functools.partial(trimmed_mean, beta=0.25),  # k = floor(2.25) = 2
        "krum": functools.partial(krum, f=2),
        "multi_krum": functools.partial(krum, f=2, m=5),
        "geometric_median": geometric_median,
        "centered_clip": functools.partial(centered_clip, tau=0.01, start="median"),
    }

    # Execute
    robust = rules[name](updates, weights)
    averaged = mean(updates, weights)

    # Assert
    low, high = benign.min(dim=0).values, benign.max(dim=0).values
    assert torch.all((robust.update >= low) & (robust.update <= high))
    assert torch.all(averaged.update > 1e5)
    if name in ("krum", "multi_krum"):  # the outliers are not selected: no influence
        assert robust.flagged is None and robust.influence is not None
        assert float(robust.influence[0]) == 0.0 and float(robust.influence[-1]) == 0.0


# --------------------------------------------------------------------------------------------
# Krum: fast version against a naive loop, preconditions
# --------------------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 10), d=st.integers(1, 32))
def test_pairwise_squared_distances_match_a_naive_double_loop(seed: int, n: int, d: int) -> None:
    # Prepare
    updates, _ = _random_updates(seed, n, d)
    naive = torch.empty(n, n, dtype=torch.float64)
    for i in range(n):
        for j in range(n):
            naive[i, j] = (updates[i].double() - updates[j].double()).square().sum()

    # Execute
    fast = pairwise_squared_distances(updates)

    # Assert
    torch.testing.assert_close(fast, naive, rtol=1e-5, atol=1e-6)


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
    updates, _ = _random_updates(seed, n, d)
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


@pytest.mark.parametrize(("f", "n"), [(f, n) for f in range(4) for n in range(2 * f + 3)])
def test_krum_raises_not_enough_clients_when_n_at_most_2f_plus_2(f: int, n: int) -> None:
    # Prepare
    updates, weights = _random_updates(0, n, 3)

    # Execute / Assert
    with pytest.raises(NotEnoughClients, match=rf"n >= 2f \+ 3 = {2 * f + 3} .*got n={n} \(f={f}"):
        krum(updates, weights, f=f)


def test_krum_raises_not_enough_clients_when_m_exceeds_n() -> None:
    # Prepare
    updates, weights = _random_updates(0, 5, 3)

    # Execute / Assert
    with pytest.raises(NotEnoughClients, match=r"n >= m = 6 .*got n=5 \(f=1, m=6\)"):
        krum(updates, weights, f=1, m=6)


@pytest.mark.parametrize(
    "rule",
    [
        mean,
        median,
        functools.partial(trimmed_mean, beta=0.1),
        functools.partial(bulyan, f=0),
        geometric_median,
        centered_clip,
    ],
    ids=["mean", "median", "tm", "bulyan", "geomed", "cclip"],
)
def test_rules_raise_not_enough_clients_on_zero_updates(rule: Callable[..., Aggregate]) -> None:
    # Prepare
    updates, weights = torch.empty(0, 4), torch.empty(0)

    # Execute / Assert
    with pytest.raises(NotEnoughClients):
        rule(updates, weights)


def test_not_enough_clients_is_a_value_error() -> None:
    # Assert
    assert issubclass(NotEnoughClients, ValueError)


# --------------------------------------------------------------------------------------------
# Bad settings and bad inputs
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "setting", "pattern"),
    [
        (trimmed_mean, {"beta": 0.6}, r"beta=0\.6"),
        (trimmed_mean, {"beta": 0.5}, r"beta=0\.5"),
        (trimmed_mean, {"beta": -0.1}, r"beta=-0\.1"),
        (trimmed_mean, {"beta": float("nan")}, r"beta=nan"),
        (krum, {"f": -1}, r"f=-1"),
        (krum, {"f": 1.5}, r"f=1\.5"),
        (krum, {"f": 1, "m": 0}, r"m=0"),
        (bulyan, {"f": -1}, r"f=-1"),
        (geometric_median, {"max_iter": 0}, r"max_iter=0"),
        (geometric_median, {"eps": 0.0}, r"eps=0\.0"),
        (geometric_median, {"tol": -1.0}, r"tol=-1\.0"),
        (centered_clip, {"tau": 0.0}, r"tau=0\.0"),
        (centered_clip, {"iters": 0}, r"iters=0"),
        (centered_clip, {"start": "mean"}, r"start='mean'"),
        (centered_clip, {"state": {"previous": torch.zeros(2)}}, r"state\['previous'\]"),
    ],
)
def test_bad_settings_raise_value_error_naming_the_setting(
    rule: Callable[..., Aggregate], setting: dict[str, float], pattern: str
) -> None:
    # Prepare
    updates, weights = _random_updates(0, 9, 3)

    # Execute / Assert
    with pytest.raises(ValueError, match=pattern) as raised:
        rule(updates, weights, **setting)
    assert not isinstance(raised.value, NotEnoughClients)


@pytest.mark.parametrize("name", [*RULES, "bulyan"])
@pytest.mark.parametrize(
    ("updates", "weights"),
    [
        (torch.ones(5, 3), torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0])),  # a zero weight
        (torch.ones(5, 3), torch.tensor([1.0, 1.0, -2.0, 1.0, 1.0])),  # a negative weight
        (torch.ones(5, 3), torch.ones(4)),  # one weight short
        (torch.ones(5), torch.ones(5)),  # not stacked
        (torch.ones(5, 3, dtype=torch.int64), torch.ones(5)),  # integer updates
    ],
    ids=["zero-weight", "negative-weight", "length-mismatch", "1-d", "int-updates"],
)
def test_bad_inputs_raise_value_error(name: str, updates: Tensor, weights: Tensor) -> None:
    # Prepare
    rule = functools.partial(bulyan, f=0) if name == "bulyan" else RULES[name]

    # Execute / Assert
    with pytest.raises(ValueError) as raised:
        rule(updates, weights)
    assert not isinstance(raised.value, NotEnoughClients)

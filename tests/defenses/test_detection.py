"""Tests for fedbackdoor.defenses.detection: FoolsGold, FLAME, RLR, DnC and FLTrust."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.cluster import HDBSCAN
from torch import Tensor

from fedbackdoor.defenses.aggregators import _BLOCK_COLUMNS, Aggregate, NotEnoughClients
from fedbackdoor.defenses.detection import (
    cosine_similarities,
    dnc,
    flame,
    fltrust,
    foolsgold,
    foolsgold_weights,
    rlr,
)

SQRT2 = math.sqrt(2.0)
SQRT3 = math.sqrt(3.0)


def _random_updates(seed: int, n: int, d: int) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    updates = torch.randn(n, d, generator=generator)
    weights = torch.randint(1, 100, (n,), generator=generator).to(torch.float32)
    return updates, weights


def _seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _reference_for(updates: Tensor) -> Tensor:
    """A server update loosely aligned with the clients', for FLTrust's shared tests."""
    return updates.mean(dim=0) + 0.1 * torch.randn(updates.shape[1], generator=_seeded(99))


# Every rule with settings bound, called as rule(updates, weights, generator=...).
RULES: dict[str, Callable[..., Aggregate]] = {
    "foolsgold": foolsgold,
    "flame": flame,
    "rlr": functools.partial(rlr, theta=2),
    "dnc": functools.partial(dnc, f=1, b=4, niters=3),
}


def _run(name: str, updates: Tensor, weights: Tensor, seed: int = 0) -> Aggregate:
    if name == "fltrust":
        return fltrust(updates, weights, reference=_reference_for(updates))
    return RULES[name](updates, weights, generator=_seeded(seed))


ALL_RULES = [*RULES, "fltrust"]


# --------------------------------------------------------------------------------------------
# Shared properties
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_RULES)
@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(3, 10), d=st.integers(2, 12), data=st.data())
def test_permutation_invariance(name: str, seed: int, n: int, d: int, data: st.DataObject) -> None:
    # Prepare
    updates, weights = _random_updates(seed, n, d)
    permutation = torch.tensor(data.draw(st.permutations(range(n))))

    # Execute: the same generator seed, so DnC draws the same coordinates and FLAME the same noise
    original = _run(name, updates, weights)
    permuted = _run(name, updates[permutation], weights[permutation])

    # Assert
    torch.testing.assert_close(permuted.update, original.update, rtol=1e-5, atol=1e-6)
    if original.flagged is None:
        assert permuted.flagged is None
    else:
        assert permuted.flagged is not None
        assert torch.equal(permuted.flagged, original.flagged[permutation])


@pytest.mark.parametrize("name", ALL_RULES)
def test_rules_return_the_input_dtype_and_a_bool_mask(name: str) -> None:
    # Prepare
    updates, weights = _random_updates(1, 7, 5)

    # Execute
    result = _run(name, updates.double(), weights)

    # Assert
    assert result.update.shape == (5,)
    assert result.update.dtype == torch.float64
    if name == "rlr":
        assert result.flagged is None
    else:
        assert result.flagged is not None
        assert result.flagged.dtype == torch.bool
        assert result.flagged.shape == (7,)


@pytest.mark.parametrize("name", ALL_RULES)
def test_rules_raise_not_enough_clients_on_zero_updates(name: str) -> None:
    # Prepare
    updates, weights = torch.empty(0, 4), torch.empty(0)

    # Execute / Assert
    with pytest.raises(NotEnoughClients):
        if name == "fltrust":
            fltrust(updates, weights, reference=torch.ones(4))
        else:
            RULES[name](updates, weights, generator=_seeded())


@pytest.mark.parametrize("name", ALL_RULES)
@pytest.mark.parametrize(
    ("updates", "weights"),
    [
        (torch.ones(5, 3), torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0])),  # a zero weight
        (torch.ones(5, 3), torch.ones(4)),  # one weight short
        (torch.ones(5), torch.ones(5)),  # not stacked
        (torch.ones(5, 3, dtype=torch.int64), torch.ones(5)),  # integer updates
    ],
    ids=["zero-weight", "length-mismatch", "1-d", "int-updates"],
)
def test_bad_inputs_raise_value_error(name: str, updates: Tensor, weights: Tensor) -> None:
    # Execute / Assert
    with pytest.raises(ValueError) as raised:
        if name == "fltrust":
            fltrust(updates, weights, reference=torch.ones(3))
        else:
            RULES[name](updates, weights, generator=_seeded())
    assert not isinstance(raised.value, NotEnoughClients)


@pytest.mark.parametrize(
    ("rule", "setting", "pattern"),
    [
        (foolsgold, {"kappa": 0.0}, r"kappa=0\.0"),
        (foolsgold, {"kappa": float("inf")}, r"kappa=inf"),
        (foolsgold, {"kappa": True}, r"kappa=True"),
        (foolsgold, {"history": torch.zeros(9, 2)}, r"history"),
        (foolsgold, {"history": torch.full((9, 3), math.nan)}, r"history"),
        (flame, {"noise_lambda": -0.1}, r"noise_lambda=-0\.1"),
        (flame, {"noise_lambda": math.nan}, r"noise_lambda=nan"),
        (flame, {"generator": None}, r"generator=None"),
        (rlr, {"theta": 0}, r"theta=0"),
        (rlr, {"theta": 2.5}, r"theta=2\.5"),
        (dnc, {"f": -1}, r"f=-1"),
        (dnc, {"f": 1.5}, r"f=1\.5"),
        (dnc, {"f": 1, "c": 0.0}, r"c=0\.0"),
        (dnc, {"f": 1, "niters": 0}, r"niters=0"),
        (dnc, {"f": 1, "b": 0}, r"b=0"),
        (dnc, {"f": 1, "generator": None}, r"generator=None"),
        (fltrust, {"reference": torch.ones(2)}, r"reference"),
        (fltrust, {"reference": torch.tensor([1.0, math.inf, 0.0])}, r"reference"),
        (fltrust, {"reference": torch.ones(3, dtype=torch.int64)}, r"reference"),
    ],
)
def test_bad_settings_raise_value_error_naming_the_setting(
    rule: Callable[..., Aggregate], setting: dict[str, object], pattern: str
) -> None:
    # Prepare
    updates, weights = _random_updates(0, 9, 3)
    keywords: dict[str, object] = {"generator": _seeded()}
    if rule is rlr:
        keywords["theta"] = 1
    keywords.update(setting)

    # Execute / Assert
    with pytest.raises(ValueError, match=pattern) as raised:
        rule(updates, weights, **keywords)
    assert not isinstance(raised.value, NotEnoughClients)


def test_cosine_similarities_match_a_naive_double_loop() -> None:
    # Prepare
    updates, _ = _random_updates(4, 6, 9)
    updates[2] = 0  # a zero row: similarity 0 with everything
    naive = torch.zeros(6, 6, dtype=torch.float64)
    for i in range(6):
        for j in range(6):
            a, b = updates[i].double(), updates[j].double()
            if a.norm() > 0 and b.norm() > 0:
                naive[i, j] = a @ b / (a.norm() * b.norm())

    # Execute
    fast = cosine_similarities(updates)

    # Assert
    torch.testing.assert_close(fast, naive)
    assert torch.equal(fast, fast.T)


# --------------------------------------------------------------------------------------------
# FoolsGold
# --------------------------------------------------------------------------------------------


def _naive_foolsgold_weights(rows: Tensor, kappa: float) -> list[float]:
    """The authors' algorithm, loop by loop (own similarity counted as 0)."""
    n = rows.shape[0]
    points = rows.double()
    cs = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(n):
            if i != j:
                a, b = points[i], points[j]
                cs[i][j] = float(a @ b / (a.norm() * b.norm()))
    top = [max(row) for row in cs]
    for i in range(n):
        for j in range(n):
            if i != j and top[i] < top[j]:
                cs[i][j] = cs[i][j] * top[i] / top[j]
    alpha = [min(1.0, max(0.0, 1 - max(cs[i]))) for i in range(n)]
    largest = max(alpha)
    alpha = [a / largest for a in alpha]
    alpha = [0.99 if a == 1 else a for a in alpha]
    return [
        0.0 if a == 0 else min(1.0, max(0.0, kappa * (math.log(a / (1 - a)) + 0.5))) for a in alpha
    ]


def test_foolsgold_by_hand() -> None:
    # Prepare: 2-D, x1 at 0 deg (norm 2), x2 at 60 deg (norm 2), x3 at 150 deg (norm 4)
    updates = torch.tensor([[2.0, 0.0], [1.0, SQRT3], [-2 * SQRT3, 2.0]])
    weights = torch.tensor([1.0, 1.0, 50.0])

    # Execute
    result = foolsgold(updates, weights)

    # Assert: cos12 = 2 / 4 = 0.5, cos13 = -4 sqrt3 / 8 = -sqrt3/2, cos23 = (-2 sqrt3 + 2 sqrt3)/8
    # = 0 ; own entries 0 -> v = (0.5, 0.5, 0). Pardoning only where v_i < v_j: row 3 times
    # 0 / 0.5 -> (0, 0). alpha = 1 - row max = (0.5, 0.5, 1) ; rescaled by 1 ; 1 -> 0.99.
    # logit: ln(0.5 / 0.5) + 0.5 = 0.5 ; ln(99) + 0.5 = 5.1 -> clipped to 1.
    # update = (0.5 x1 + 0.5 x2 + x3) / 2 = ((1 + 0.5 - 2 sqrt3) / 2, (sqrt3/2 + 2) / 2)
    # (the sample counts are not used)
    torch.testing.assert_close(
        foolsgold_weights(updates), torch.tensor([0.5, 0.5, 1.0], dtype=torch.float64)
    )
    expected = torch.tensor([(1.5 - 2 * SQRT3) / 2, (SQRT3 / 2 + 2) / 2])
    torch.testing.assert_close(result.update, expected)
    assert result.flagged is not None
    assert result.flagged.tolist() == [False, False, False]


def test_foolsgold_kappa_sharpens_the_logit() -> None:
    # Prepare: the by-hand case
    updates = torch.tensor([[2.0, 0.0], [1.0, SQRT3], [-2 * SQRT3, 2.0]])

    # Execute
    weights = foolsgold_weights(updates, kappa=2.0)

    # Assert: 2 * (ln 1 + 0.5) = 1 for the first two ; 2 * 5.1 -> 1
    torch.testing.assert_close(weights, torch.ones(3, dtype=torch.float64))


def test_foolsgold_by_hand_gives_parallel_sybils_weight_zero() -> None:
    # Prepare: x1, x2 parallel (cos 1, different norms), x3, x4 orthogonal to everyone
    updates = torch.tensor([[3.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 5.0]])

    # Execute
    result = foolsgold(updates, torch.ones(4))

    # Assert: v = (1, 1, 0, 0) ; alpha = (0, 0, 1, 1) -> (0, 0, 0.99, 0.99) -> logit
    # (-inf -> 0, 0, 5.1 -> 1, 1) ; update = (x3 + x4) / 2 = (0, 1, 2.5)
    torch.testing.assert_close(result.update, torch.tensor([0.0, 1.0, 2.5]))
    assert result.flagged is not None
    assert result.flagged.tolist() == [True, True, False, False]


def test_foolsgold_two_identical_sybils_get_weight_zero_and_honest_clients_keep_weight() -> None:
    # Prepare: 6 distinct honest updates in 50-D, two sybils sending the same update
    honest, _ = _random_updates(5, 6, 50)
    sybil = torch.randn(1, 50, generator=_seeded(6))
    updates = torch.cat([sybil, honest[:3], sybil, honest[3:]])

    # Execute
    alpha = foolsgold_weights(updates)
    result = foolsgold(updates, torch.ones(8))

    # Assert
    assert alpha[0] == 0 and alpha[4] == 0
    assert torch.all(alpha[[1, 2, 3, 5, 6, 7]] > 0)
    assert result.flagged is not None
    assert result.flagged.tolist() == [True, False, False, False, True, False, False, False]


def test_foolsgold_colluding_group_does_not_move_the_aggregate() -> None:
    # Prepare: 7 honest clients, 3 colluders sending copies of a huge boosted update
    honest, weights = _random_updates(7, 7, 30)
    poison = 1e4 * torch.randn(30, generator=_seeded(8))
    updates = torch.cat([poison.expand(3, 30), honest])

    # Execute
    result = foolsgold(updates, torch.cat([weights[:3], weights]))

    # Assert: the colluders get weight 0, so the aggregate is a combination of honest updates
    assert result.flagged is not None
    assert result.flagged[:3].all()
    low, high = honest.min(dim=0).values, honest.max(dim=0).values
    assert torch.all((result.update >= low - 1e-5) & (result.update <= high + 1e-5))


def test_foolsgold_with_every_update_parallel_trusts_nobody() -> None:
    # Prepare: every client is some other client's perfect twin
    direction = torch.randn(20, generator=_seeded(9))
    updates = torch.stack([direction, 2 * direction, 0.5 * direction, 3 * direction])

    # Execute
    result = foolsgold(updates, torch.ones(4))

    # Assert
    assert torch.equal(result.update, torch.zeros(20))
    assert result.flagged is not None
    assert result.flagged.all()


def test_foolsgold_compares_the_history_when_given() -> None:
    # Prepare: this round's updates are distinct, but clients 0 and 3 have the same history
    updates, weights = _random_updates(10, 5, 12)
    history, _ = _random_updates(11, 5, 12)
    history[3] = 4 * history[0]

    # Execute
    with_history = foolsgold(updates, weights, history=history)
    single_round = foolsgold(updates, weights)
    history_is_updates = foolsgold(updates, weights, history=updates.clone())

    # Assert
    assert with_history.flagged is not None and single_round.flagged is not None
    assert with_history.flagged.tolist() == [True, False, False, True, False]
    assert not single_round.flagged[[0, 3]].any()
    torch.testing.assert_close(history_is_updates.update, single_round.update)
    # the weights come from the history, the aggregate from this round's updates
    alpha = foolsgold_weights(history)
    torch.testing.assert_close(with_history.update, (alpha.float() @ updates) / alpha.float().sum())


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(2, 10),
    d=st.integers(2, 16),
    kappa=st.sampled_from([0.5, 1.0, 2.0]),
)
def test_foolsgold_weights_match_the_authors_loops(seed: int, n: int, d: int, kappa: float) -> None:
    # Prepare
    updates, _ = _random_updates(seed, n, d)

    # Execute
    fast = foolsgold_weights(updates, kappa=kappa)

    # Assert
    naive = torch.tensor(_naive_foolsgold_weights(updates, kappa), dtype=torch.float64)
    torch.testing.assert_close(fast, naive, rtol=1e-6, atol=1e-9)


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
    result = flame(updates, weights, noise_lambda=0.0, generator=_seeded())

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
    noiseless = flame(updates, weights, noise_lambda=0.0, generator=_seeded())
    noised = flame(updates, weights, noise_lambda=0.01, generator=_seeded(3))
    again = flame(updates, weights, noise_lambda=0.01, generator=_seeded(3))

    # Assert: sigma = 0.01 * S = 0.01 * 2 sqrt2, drawn from the generator alone
    expected_noise = 0.01 * 2 * SQRT2 * torch.randn(5, generator=_seeded(3))
    torch.testing.assert_close(noised.update - noiseless.update, expected_noise)
    assert torch.equal(noised.update, again.update)


def test_flame_clipped_norms_never_exceed_the_median_norm() -> None:
    # Prepare: similar directions, norms spread over four orders of magnitude
    generator = _seeded(12)
    direction = torch.randn(40, generator=generator)
    rows = direction + 0.3 * torch.randn(9, 40, generator=generator)
    scales = torch.tensor([1e-2, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 100.0, 1e3])
    updates = rows * scales.unsqueeze(1)
    median_norm = float(torch.linalg.vector_norm(updates, dim=1).median())

    # Execute
    result = flame(updates, torch.ones(9), noise_lambda=0.0, generator=_seeded())

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
    updates, weights = _random_updates(seed, n, d)

    # Execute
    result = flame(updates, weights, noise_lambda=0.0, generator=_seeded())

    # Assert
    assert result.flagged is not None
    assert int((~result.flagged).sum()) >= n // 2 + 1


def test_flame_rejects_a_colluding_minority_and_bounds_its_boost() -> None:
    # Prepare: 7 benign updates around a common direction, 3 colluders around the opposite one,
    # boosted 1000x (model replacement)
    generator = _seeded(13)
    direction = torch.randn(60, generator=generator)
    benign = direction + 0.5 * torch.randn(7, 60, generator=generator)
    attackers = 1000 * (-direction + 0.05 * torch.randn(3, 60, generator=generator))
    updates = torch.cat([attackers[:1], benign, attackers[1:]])

    # Execute
    result = flame(updates, torch.ones(10), noise_lambda=0.0, generator=_seeded())

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
    updates, weights = _random_updates(seed, n, d)
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
    noise = torch.randn(d, generator=_seeded(1)).double()  # drawn in the updates' dtype
    expected = torch.stack(clipped).mean(dim=0) + 0.001 * median_norm * noise

    # Execute
    result = flame(updates, weights, generator=_seeded(1))

    # Assert
    assert result.flagged is not None
    assert [i for i in range(n) if not result.flagged[i]] == admitted
    torch.testing.assert_close(result.update, expected.float(), rtol=1e-5, atol=1e-6)


def test_flame_with_one_client_admits_it() -> None:
    # Prepare
    updates = torch.tensor([[3.0, -4.0]])

    # Execute
    result = flame(updates, torch.ones(1), noise_lambda=0.0, generator=_seeded())

    # Assert: S = 5, nothing clipped
    torch.testing.assert_close(result.update, torch.tensor([3.0, -4.0]))
    assert result.flagged is not None
    assert result.flagged.tolist() == [False]


# --------------------------------------------------------------------------------------------
# RLR
# --------------------------------------------------------------------------------------------


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
    generator = _seeded(14)
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
    updates, weights = _random_updates(15, 4, 6)

    # Execute
    result = rlr(updates, weights, theta=1)

    # Assert: with 4 clients a vote of 0 needs a tie 2/2; elsewhere every coordinate is kept
    votes = torch.sign(updates).sum(dim=0)
    mean = (weights / weights.sum()) @ updates
    torch.testing.assert_close(result.update, torch.where(votes == 0, -mean, mean))


def test_rlr_raises_not_enough_clients_when_n_below_theta() -> None:
    # Prepare
    updates, weights = _random_updates(0, 3, 2)

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
    updates, weights = _random_updates(seed, n, d)
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
    updates, weights = _random_updates(16, 7, 2 * _BLOCK_COLUMNS + 11)
    votes = torch.sign(updates).sum(dim=0)
    mean = (weights / weights.sum()) @ updates

    # Execute
    result = rlr(updates, weights, theta=3)

    # Assert
    torch.testing.assert_close(result.update, torch.where(votes.abs() >= 3, mean, -mean))


# --------------------------------------------------------------------------------------------
# DnC
# --------------------------------------------------------------------------------------------


def _naive_dnc(
    updates: Tensor, *, f: int, c: float, niters: int, b: int, seed: int
) -> tuple[list[int], Tensor]:
    """DnC client by client: the same coordinate draws, an SVD, one projection per client."""
    n, d = updates.shape
    generator = _seeded(seed)
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
    result = dnc(updates, weights, f=1, generator=_seeded())

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
    result = dnc(updates, torch.ones(5), f=1, c=2.0, generator=_seeded())

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
    updates, weights = _random_updates(seed, n, d)
    kept, expected = _naive_dnc(updates, f=f, c=1.0, niters=niters, b=b, seed=seed)

    # Execute
    result = dnc(updates, weights, f=f, niters=niters, b=b, generator=_seeded(seed))

    # Assert
    assert result.flagged is not None
    assert [i for i in range(n) if not result.flagged[i]] == kept
    if kept:
        torch.testing.assert_close(result.update, expected.float(), rtol=1e-5, atol=1e-6)
    else:
        assert torch.equal(result.update, torch.zeros(d))


def test_dnc_removes_colluding_outliers_along_their_shared_direction() -> None:
    # Prepare: 10 benign updates, 3 colluders sending the benign mean shifted by +3 everywhere
    benign, _ = _random_updates(17, 10, 200)
    poison = benign.mean(dim=0) + 3.0
    updates = torch.cat([poison.expand(2, 200), benign, poison.expand(1, 200)])

    # Execute
    result = dnc(updates, torch.ones(13), f=3, b=50, niters=5, generator=_seeded(18))

    # Assert: the shift dominates the top singular direction in every sub-sample
    assert result.flagged is not None
    assert result.flagged[:2].all() and result.flagged[-1]
    low, high = benign.min(dim=0).values, benign.max(dim=0).values
    assert torch.all((result.update >= low - 1e-5) & (result.update <= high + 1e-5))


def test_dnc_is_reproducible_from_the_generator() -> None:
    # Prepare
    updates, weights = _random_updates(19, 8, 100)

    # Execute
    first = dnc(updates, weights, f=2, b=10, generator=_seeded(4))
    second = dnc(updates, weights, f=2, b=10, generator=_seeded(4))

    # Assert
    assert torch.equal(first.update, second.update)
    assert first.flagged is not None and second.flagged is not None
    assert torch.equal(first.flagged, second.flagged)


@pytest.mark.parametrize(("n", "f", "c"), [(1, 1, 1.0), (3, 1, 3.0), (4, 2, 2.0)])
def test_dnc_raises_not_enough_clients_when_it_would_remove_everybody(
    n: int, f: int, c: float
) -> None:
    # Prepare
    updates, weights = _random_updates(0, n, 3)

    # Execute / Assert
    removed = math.floor(c * f)
    with pytest.raises(
        NotEnoughClients,
        match=rf"n >= floor\(c \* f\) \+ 1 = {removed + 1} .*got n={n} \(f={f}, c={c}\)",
    ):
        dnc(updates, weights, f=f, c=c, generator=_seeded())


# --------------------------------------------------------------------------------------------
# FLTrust
# --------------------------------------------------------------------------------------------


def test_fltrust_by_hand() -> None:
    # Prepare: reference g0 = (3, 4), norm 5
    updates = torch.tensor([[6.0, 8.0], [0.0, 2.0], [-3.0, -4.0], [4.0, -3.0]])
    weights = torch.tensor([1.0, 1.0, 1.0, 1.0])
    reference = torch.tensor([3.0, 4.0])

    # Execute
    result = fltrust(updates, weights, reference=reference)

    # Assert: cos = 50/50 = 1, 8/10 = 0.8, -1, 0 -> trust 1, 0.8, 0, 0 ;
    # rescaled to norm 5: (3, 4), (0, 5) ; (1 (3, 4) + 0.8 (0, 5)) / 1.8 = (3, 8) / 1.8
    torch.testing.assert_close(result.update, torch.tensor([3 / 1.8, 8 / 1.8]))
    assert result.flagged is not None
    assert result.flagged.tolist() == [False, False, True, True]


def test_fltrust_an_update_opposite_to_the_reference_has_no_influence() -> None:
    # Prepare
    updates, weights = _random_updates(20, 6, 15)
    reference = _reference_for(updates)
    attacked = torch.cat([updates, -1e6 * reference.unsqueeze(0)])

    # Execute
    clean = fltrust(updates, weights, reference=reference)
    result = fltrust(attacked, torch.cat([weights, torch.tensor([1e6])]), reference=reference)

    # Assert
    assert result.flagged is not None
    assert result.flagged[-1]
    torch.testing.assert_close(result.update, clean.update)


def test_fltrust_boosting_an_update_does_not_change_the_aggregate() -> None:
    # Prepare
    updates, weights = _random_updates(21, 6, 15)
    reference = _reference_for(updates)
    boosted = updates.clone()
    boosted[2] *= 1e4

    # Execute
    plain = fltrust(updates, weights, reference=reference)
    result = fltrust(boosted, weights, reference=reference)

    # Assert: every update is rescaled to the reference's norm first
    torch.testing.assert_close(result.update, plain.update, rtol=1e-4, atol=1e-6)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 10), attackers=st.integers(0, 5))
def test_fltrust_aggregate_norm_is_bounded_by_the_reference_norm(
    seed: int, n: int, attackers: int
) -> None:
    # Prepare: f huge updates in arbitrary directions
    updates, weights = _random_updates(seed, n + attackers, 12)
    updates[n:] *= 1e6
    reference = torch.randn(12, generator=_seeded(seed + 1))

    # Execute
    result = fltrust(updates, weights, reference=reference)

    # Assert: a convex combination of vectors of norm ||g0||
    bound = float(torch.linalg.vector_norm(reference))
    assert float(torch.linalg.vector_norm(result.update)) <= bound * (1 + 1e-5)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 10), d=st.integers(1, 16))
def test_fltrust_matches_a_per_client_loop(seed: int, n: int, d: int) -> None:
    # Prepare
    updates, weights = _random_updates(seed, n, d)
    reference = torch.randn(d, generator=_seeded(seed + 1))
    g0 = reference.double()
    total = 0.0
    weighted = torch.zeros(d, dtype=torch.float64)
    trusted = []
    for row in updates.double():
        trust = max(0.0, float(row @ g0) / (float(row.norm()) * float(g0.norm())))
        trusted.append(trust > 0)
        total += trust
        weighted += trust * row * (g0.norm() / row.norm())

    # Execute
    result = fltrust(updates, weights, reference=reference)

    # Assert
    assert result.flagged is not None
    assert result.flagged.tolist() == [not t for t in trusted]
    expected = weighted / total if total > 0 else torch.zeros(d, dtype=torch.float64)
    torch.testing.assert_close(result.update, expected.float(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "reference", [torch.zeros(3), torch.tensor([-1.0, -1.0, -1.0])], ids=["zero", "opposite"]
)
def test_fltrust_with_no_trusted_client_returns_a_zero_update(reference: Tensor) -> None:
    # Prepare
    updates = torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.0, 0.1], [0.0, 0.0, 0.0]])

    # Execute
    result = fltrust(updates, torch.ones(3), reference=reference)

    # Assert
    assert torch.equal(result.update, torch.zeros(3))
    assert result.flagged is not None
    assert result.flagged.all()

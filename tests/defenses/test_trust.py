"""Tests for fedbackdoor.defenses.trust: FoolsGold and FLTrust."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from fedbackdoor.defenses.trust import (
    cosine_similarities,
    fltrust,
    fltrust_with_root_data,
    foolsgold,
    foolsgold_weights,
    foolsgold_with_history,
)
from tests.defenses.rounds import random_updates, reference_for, seeded

SQRT3 = math.sqrt(3.0)


def test_cosine_similarities_match_a_naive_double_loop() -> None:
    # Prepare
    updates, _ = random_updates(4, 6, 9)
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
    honest, _ = random_updates(5, 6, 50)
    sybil = torch.randn(1, 50, generator=seeded(6))
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
    honest, weights = random_updates(7, 7, 30)
    poison = 1e4 * torch.randn(30, generator=seeded(8))
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
    direction = torch.randn(20, generator=seeded(9))
    updates = torch.stack([direction, 2 * direction, 0.5 * direction, 3 * direction])

    # Execute
    result = foolsgold(updates, torch.ones(4))

    # Assert
    assert torch.equal(result.update, torch.zeros(20))
    assert result.flagged is not None
    assert result.flagged.all()


def test_foolsgold_compares_the_history_when_given() -> None:
    # Prepare: this round's updates are distinct, but clients 0 and 3 have the same history
    updates, weights = random_updates(10, 5, 12)
    history, _ = random_updates(11, 5, 12)
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
    updates, _ = random_updates(seed, n, d)

    # Execute
    fast = foolsgold_weights(updates, kappa=kappa)

    # Assert
    naive = torch.tensor(_naive_foolsgold_weights(updates, kappa), dtype=torch.float64)
    torch.testing.assert_close(fast, naive, rtol=1e-6, atol=1e-9)


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
    updates, weights = random_updates(20, 6, 15)
    reference = reference_for(updates)
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
    updates, weights = random_updates(21, 6, 15)
    reference = reference_for(updates)
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
    updates, weights = random_updates(seed, n + attackers, 12)
    updates[n:] *= 1e6
    reference = torch.randn(12, generator=seeded(seed + 1))

    # Execute
    result = fltrust(updates, weights, reference=reference)

    # Assert: a convex combination of vectors of norm ||g0||
    bound = float(torch.linalg.vector_norm(reference))
    assert float(torch.linalg.vector_norm(result.update)) <= bound * (1 + 1e-5)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 10), d=st.integers(1, 16))
def test_fltrust_matches_a_per_client_loop(seed: int, n: int, d: int) -> None:
    # Prepare
    updates, weights = random_updates(seed, n, d)
    reference = torch.randn(d, generator=seeded(seed + 1))
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


# --- as their papers run them in a federation: history across rounds, the server's root update


class _Context:
    """A round's context stand-in: the clients' ids, fixed server data and server update."""

    def __init__(self, clients: tuple[int, ...], reference: torch.Tensor | None = None) -> None:
        self.clients = clients
        self.reference = reference
        self.asked: list[int] = []

    def server_data(self, size: int, *, tag: str = "root") -> tuple[torch.Tensor, torch.Tensor]:
        self.asked.append(size)
        return torch.zeros(size, 1, 2, 2), torch.zeros(size, dtype=torch.long)

    def server_update(self, x: torch.Tensor, y: torch.Tensor, *, tag: str = "") -> torch.Tensor:
        assert self.reference is not None
        return self.reference


def test_foolsgold_with_history_compares_each_clients_sum_of_updates() -> None:
    # Prepare: round 1 sees clients 0, 1, 2; round 2 sees clients 2, 0, 3 (3 is new)
    state: dict = {}
    first = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    second = torch.tensor([[0.5, 0.0], [0.0, 2.0], [3.0, 3.0]])
    weights = torch.ones(3)

    # Execute
    foolsgold_with_history(first, weights, context=_Context((0, 1, 2)), state=state)
    got = foolsgold_with_history(second, weights, context=_Context((2, 0, 3)), state=state)

    # Assert: round 2's history is each client's sum so far: 2 -> (1.5, 1), 0 -> (1, 2), 3 -> (3, 3)
    history = torch.tensor([[1.5, 1.0], [1.0, 2.0], [3.0, 3.0]])
    expected = foolsgold(second, weights, history=history)
    torch.testing.assert_close(got.update, expected.update)
    assert torch.equal(got.flagged, expected.flagged)
    assert sorted(state["sums"]) == [0, 1, 2, 3]


def test_foolsgold_without_history_keeps_no_state() -> None:
    state: dict = {}
    updates = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1]])

    got = foolsgold_with_history(
        updates, torch.ones(3), history=False, context=_Context((0, 1, 2)), state=state
    )

    torch.testing.assert_close(got.update, foolsgold(updates, torch.ones(3)).update)
    assert state == {}


def test_fltrust_with_root_data_uses_the_servers_update_as_reference() -> None:
    # The server's update (1, 1); client 0 along it, client 1 against it (trust 0)
    context = _Context((0, 1), reference=torch.tensor([1.0, 1.0]))
    updates = torch.tensor([[2.0, 2.0], [-3.0, -1.0]])

    got = fltrust_with_root_data(updates, torch.ones(2), root_size=7, context=context)

    assert context.asked == [7]
    expected = fltrust(updates, torch.ones(2), reference=torch.tensor([1.0, 1.0]))
    torch.testing.assert_close(got.update, expected.update)
    torch.testing.assert_close(got.update, torch.tensor([1.0, 1.0]))
    assert got.flagged.tolist() == [False, True]


def test_fltrust_refuses_a_root_size_below_one() -> None:
    with pytest.raises(ValueError, match="root_size=0"):
        fltrust_with_root_data(
            torch.ones(2, 2), torch.ones(2), root_size=0, context=_Context((0, 1))
        )

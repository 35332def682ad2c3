"""Tests for fedbackdoor.defenses.dp: central DP with Flower's settings, Andrew et al.'s maths.

Compared with Flower 1.42's own code on the same inputs: ``compute_clip_model_update`` and
``adaptive_clip_inputs_inplace`` (clipping), ``compute_stdv`` (noise of the aggregate),
``compute_adaptive_noise_params`` (the noise split), and the norm update of
``DifferentialPrivacyServerSideAdaptiveClipping`` (``_noisy_fraction``, ``_geometric_update``, and
one whole ``aggregate_train``). Where the numbers differ, the tests document Flower's:

- one round with 8 of 10 updates clipped (norm 2 > C = 1, the norms' median is 2): Flower's
  norm moves down to exp(-0.2 (0.8 - 0.5)) = 0.9418, ours up to exp(-0.2 (0.2 - 0.5)) = 1.0618;
- 200 rounds of 20 updates with log-normal norms (median 0.995, 0.8-quantile 1.530), from
  C = 0.1: ours ends at 1.038 (target 0.5) and 1.533 (target 0.8), Flower's at 2.1e-10 and
  3.4e-5 (it falls by exp(-0.2 (1 - target)) every round); from C = 10 Flower's grows without
  bound instead;
- Flower's wrapper adds noise with the norm it has just updated: all 10 updates clipped by
  C = 1, clip_norm_lr = 1, numpy seed 0: its norm falls to 0.555 and its noise std is 0.0320
  (z_delta x 0.555 / 10 = 0.0321), where the round's norm gives z_delta x 1 / 10 = 0.0577
  (ours: 0.0578, and our norm grows to 1.437).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import DifferentialPrivacyServerSideAdaptiveClipping, FedAvg
from flwr.supercore.differential_privacy import (
    adaptive_clip_inputs_inplace,
    compute_adaptive_noise_params,
    compute_clip_model_update,
    compute_stdv,
)
from flwr.supercore.task_identity import TaskIdentity
from torch import Tensor

from fedbackdoor.defenses.averaging import mean
from fedbackdoor.defenses.base import NotEnoughClients
from fedbackdoor.defenses.dp import (
    adaptive_noise_parameters,
    dp_adaptive_clipping,
    dp_fixed_clipping,
)
from fedbackdoor.defenses.transforms import clip_to_norm
from tests.defenses.rounds import seeded


def _random_updates(seed: int, n: int, d: int) -> tuple[Tensor, Tensor]:
    generator = seeded(seed)
    updates = torch.randn(n, d, generator=generator) * torch.rand(n, 1, generator=generator) * 3
    weights = torch.randint(1, 100, (n,), generator=generator).to(torch.float32)
    return updates, weights


def _flower_wrapper(**settings: Any) -> DifferentialPrivacyServerSideAdaptiveClipping:
    return DifferentialPrivacyServerSideAdaptiveClipping(FedAvg(), **settings)


@pytest.fixture
def numpy_seeded() -> Iterator[None]:
    """Flower draws its noise from numpy's global RNG: seed it, and restore it after."""
    saved = np.random.get_state()  # noqa: NPY002 (Flower's noise source)
    np.random.seed(0)  # noqa: NPY002
    yield
    np.random.set_state(saved)  # noqa: NPY002


# --------------------------------------------------------------------------------------------
# Fixed clipping
# --------------------------------------------------------------------------------------------


def test_fixed_clipping_without_noise_is_clipping_then_the_weighted_mean() -> None:
    # Prepare
    updates, weights = _random_updates(0, 9, 40)

    # Execute
    result = dp_fixed_clipping(
        updates,
        weights,
        noise_multiplier=0.0,
        clipping_norm=1.0,
        num_sampled_clients=9,
        generator=seeded(),
    )

    # Assert: clipping is folded into the mean's coefficients, equal up to float32 rounding
    expected = mean(clip_to_norm(updates, max_norm=1.0), weights).update
    torch.testing.assert_close(result.update, expected, rtol=2e-6, atol=1e-7)
    assert result.flagged is None


def test_fixed_clipping_by_hand() -> None:
    # Prepare: norms 5, 0.5, 1 ; C = 1
    updates = torch.tensor([[3.0, 4.0], [0.0, 0.5], [-1.0, 0.0]])
    weights = torch.tensor([1.0, 2.0, 1.0])

    # Execute
    result = dp_fixed_clipping(
        updates,
        weights,
        noise_multiplier=0.0,
        clipping_norm=1.0,
        num_sampled_clients=3,
        generator=seeded(),
    )

    # Assert: (0.6, 0.8), (0, 0.5), (-1, 0) weighted 1, 2, 1: (-0.4, 1.8) / 4 ; influence the
    # sample shares
    torch.testing.assert_close(result.update, torch.tensor([-0.1, 0.45]))
    assert result.influence is not None
    torch.testing.assert_close(result.influence, torch.tensor([0.25, 0.5, 0.25]).double())


def test_fixed_clipping_noise_std_is_z_times_c_over_m_as_flowers() -> None:
    # Prepare: 200k coordinates, so the sample std is within ~0.2% of the true one
    updates, weights = _random_updates(1, 5, 200_000)
    settings: dict[str, Any] = {
        "noise_multiplier": 0.8,
        "clipping_norm": 2.0,
        "num_sampled_clients": 10,
    }
    clean = dp_fixed_clipping(
        updates, weights, **settings | {"noise_multiplier": 0.0}, generator=seeded()
    )

    # Execute
    noised = dp_fixed_clipping(updates, weights, **settings, generator=seeded(3))

    # Assert: 0.8 x 2 / 10 = 0.16, Flower's compute_stdv
    expected = compute_stdv(0.8, 2.0, 10)
    assert expected == pytest.approx(0.16)
    measured = float((noised.update - clean.update).double().std())
    assert measured == pytest.approx(expected, rel=0.03)


@pytest.mark.parametrize("rule", ["fixed", "adaptive"])
def test_the_same_generator_seed_gives_the_same_result(rule: str) -> None:
    # Prepare
    updates, weights = _random_updates(2, 6, 30)

    def run(generator: torch.Generator) -> Tensor:
        if rule == "fixed":
            return dp_fixed_clipping(
                updates,
                weights,
                noise_multiplier=1.0,
                clipping_norm=1.0,
                num_sampled_clients=6,
                generator=generator,
            ).update
        return dp_adaptive_clipping(
            updates,
            weights,
            noise_multiplier=0.1,
            num_sampled_clients=6,
            generator=generator,
            state={},
        ).update

    generator = seeded(5)
    before = generator.get_state()

    # Execute
    first, second, other = run(generator), run(seeded(5)), run(seeded(6))

    # Assert
    assert not torch.equal(generator.get_state(), before)
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


def test_flowers_clipping_gives_the_same_clipped_updates() -> None:
    # Prepare: numpy inputs as Flower gets them: the new model and the current one
    updates, weights = _random_updates(4, 8, 25)
    current = np.linspace(-1, 1, 25, dtype=np.float32)
    flower_clipped = []
    for row in updates.numpy():
        new_model = [current + row]
        compute_clip_model_update(new_model, [current], clipping_norm=1.5)
        flower_clipped.append(new_model[0] - current)
    flower = torch.from_numpy(np.stack(flower_clipped))

    # Execute
    ours = clip_to_norm(updates, max_norm=1.5)
    aggregate = dp_fixed_clipping(
        updates,
        weights,
        noise_multiplier=0.0,
        clipping_norm=1.5,
        num_sampled_clients=8,
        generator=seeded(),
    )

    # Assert: Flower subtracts and adds the current model back in float32, a few ulps of 1
    torch.testing.assert_close(ours, flower, rtol=1e-5, atol=1e-6)
    flower_mean = (weights.double() / weights.double().sum()) @ flower.double()
    torch.testing.assert_close(aggregate.update, flower_mean.float(), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Adaptive clipping: against Flower's helpers
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("noise_multiplier", "num_sampled_clients", "clipped_count_stddev"),
    [
        (0.0, 10, None),
        (0.0, 10, 2.0),
        (0.1, 10, None),
        (0.5, 100, None),
        (1.0, 10, 1.0),
        (0.3, 7, 0.2),
    ],
)
def test_noise_split_matches_flowers_compute_adaptive_noise_params(
    noise_multiplier: float, num_sampled_clients: int, clipped_count_stddev: float | None
) -> None:
    # Execute
    ours = adaptive_noise_parameters(noise_multiplier, num_sampled_clients, clipped_count_stddev)
    flowers = compute_adaptive_noise_params(
        noise_multiplier, num_sampled_clients, clipped_count_stddev
    )

    # Assert
    assert ours == pytest.approx(flowers, rel=1e-12)


@pytest.mark.parametrize(
    ("noise_multiplier", "num_sampled_clients", "clipped_count_stddev"),
    [(1.0, 10, None), (0.2, 2, None), (0.5, 10, 0.25), (0.1, 10, 0.0)],
)
def test_a_noise_multiplier_the_count_cannot_afford_is_refused_as_by_flower(
    noise_multiplier: float, num_sampled_clients: int, clipped_count_stddev: float | None
) -> None:
    # Execute / Assert: z >= 2 sigma_b (sigma_b = m / 20 by default)
    with pytest.raises(ValueError, match="Consider increasing `clipped_count_stddev`"):
        compute_adaptive_noise_params(noise_multiplier, num_sampled_clients, clipped_count_stddev)
    with pytest.raises(ValueError, match=rf"noise_multiplier={noise_multiplier} must be below"):
        dp_adaptive_clipping(
            torch.ones(3, 2),
            torch.ones(3),
            noise_multiplier=noise_multiplier,
            num_sampled_clients=num_sampled_clients,
            clipped_count_stddev=clipped_count_stddev,
            generator=seeded(),
            state={},
        )


def test_flowers_norm_bit_is_true_for_the_clipped_updates() -> None:
    # Prepare: norms 2 and 0.5 against C = 1
    long, short = [np.array([2.0, 0.0], dtype=np.float32)], [np.array([0.5], dtype=np.float32)]

    # Execute / Assert: the bit Flower counts marks the *clipped* update; Andrew et al.'s
    # b_i = 1[||x_i|| <= C] marks the unclipped one
    assert adaptive_clip_inputs_inplace(long, 1.0) is True
    assert adaptive_clip_inputs_inplace(short, 1.0) is False


def test_one_round_with_most_updates_clipped_moves_the_norm_up_where_flower_moves_it_down() -> None:
    # Prepare: 8 updates of norm 2 and 2 of norm 0.5, C = 1, target 0.5, lr 0.2, no noise; the
    # median norm is 2, so the norm should grow
    updates = torch.cat([torch.full((8, 4), 1.0), torch.full((2, 4), 0.25)])
    settings: dict[str, Any] = {
        "noise_multiplier": 0.0,
        "num_sampled_clients": 10,
        "initial_clipping_norm": 1.0,
        "target_clipped_quantile": 0.5,
        "clip_norm_lr": 0.2,
    }
    flower = _flower_wrapper(**settings)
    clipped = sum(
        int(adaptive_clip_inputs_inplace([row.numpy().copy()], flower.clipping_norm))
        for row in updates
    )
    state: dict[str, Any] = {}

    # Execute
    flower._geometric_update(flower._noisy_fraction(clipped, len(updates)))
    dp_adaptive_clipping(updates, torch.ones(10), **settings, generator=seeded(), state=state)

    # Assert: Flower: clipped fraction 0.8 -> exp(-0.2 (0.8 - 0.5)) = 0.9418 ; ours: unclipped
    # fraction 0.2 -> exp(-0.2 (0.2 - 0.5)) = 1.0618
    assert clipped == 8
    assert flower.clipping_norm == pytest.approx(math.exp(-0.06))
    assert state["clipping_norm"] == pytest.approx(math.exp(0.06))
    assert flower.clipping_norm < 1.0 < state["clipping_norm"]


def test_flowers_wrapper_noises_with_the_norm_it_has_just_updated(
    monkeypatch: pytest.MonkeyPatch, numpy_seeded: None
) -> None:
    # Prepare: 10 updates of norm 10 in 100k coordinates, all clipped by C = 1 ; z = 0.5 and
    # sigma_b = 0.5 -> z_delta = (4 - 1)^(-1/2) = 0.5774 ; clip_norm_lr = 1
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)  # Flower stamps messages with a task
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    n, d = 10, 100_000
    generator = seeded(7)
    updates = torch.randn(n, d, generator=generator)
    updates = 10 * updates / updates.norm(dim=1, keepdim=True)
    settings: dict[str, Any] = {
        "noise_multiplier": 0.5,
        "num_sampled_clients": n,
        "initial_clipping_norm": 1.0,
        "target_clipped_quantile": 0.5,
        "clip_norm_lr": 1.0,
        "clipped_count_stddev": 0.5,
    }
    z_delta = compute_adaptive_noise_params(0.5, n, 0.5)[1]
    current = np.zeros(d, dtype=np.float32)
    wrapper = _flower_wrapper(**settings)
    wrapper.current_arrays = ArrayRecord({"w": Array(current)})
    replies = []
    for i, row in enumerate(updates.numpy()):
        instruction = Message(
            content=RecordDict({"config": ConfigRecord({})}),
            dst_node_id=i + 1,
            message_type="train",
        )
        content = RecordDict(
            {
                "arrays": ArrayRecord({"w": Array(current + row)}),
                "metrics": MetricRecord({"num-examples": 10}),
            }
        )
        replies.append(Message(content=content, reply_to=instruction))
    clean = (0.1 * updates).mean(dim=0).double()  # every update clipped to norm 1
    state: dict[str, Any] = {}

    # Execute
    arrays, _ = wrapper.aggregate_train(1, replies)
    ours = dp_adaptive_clipping(updates, torch.ones(n), **settings, generator=seeded(), state=state)

    # Assert: Flower's noise has the std of its *new* norm (~exp(-0.5) = 0.61), ours of the
    # round's norm 1, the one the updates were clipped to
    assert arrays is not None
    flower_std = float((torch.from_numpy(arrays["w"].numpy()).double() - clean).std())
    our_std = float((ours.update.double() - clean).std())
    assert wrapper.clipping_norm < 0.75
    assert flower_std == pytest.approx(z_delta * wrapper.clipping_norm / n, rel=0.02)
    assert our_std == pytest.approx(z_delta * 1.0 / n, rel=0.02)
    assert state["clipping_norm"] > 1.0  # nothing unclipped: the norm grows


# --------------------------------------------------------------------------------------------
# Adaptive clipping: one round by hand, the state, convergence over rounds
# --------------------------------------------------------------------------------------------


def test_adaptive_clipping_by_hand() -> None:
    # Prepare: norms 3, 0.5, 2, 0.2, 4 against the initial C = 1 ; no noise
    updates = torch.tensor([[3.0], [0.5], [-2.0], [0.2], [4.0]])
    weights = torch.tensor([1.0, 2.0, 1.0, 1.0, 1.0])
    state: dict[str, Any] = {}

    # Execute
    result = dp_adaptive_clipping(
        updates,
        weights,
        noise_multiplier=0.0,
        num_sampled_clients=5,
        initial_clipping_norm=1.0,
        target_clipped_quantile=0.5,
        clip_norm_lr=0.2,
        generator=seeded(),
        state=state,
    )

    # Assert: clipped 1, 0.5, -1, 0.2, 1 weighted 1, 2, 1, 1, 1: (1 + 1 - 1 + 0.2 + 1) / 6 ;
    # unclipped 0.5 and 0.2 -> b = 2/5 -> C = exp(-0.2 (0.4 - 0.5)) = exp(0.02)
    torch.testing.assert_close(result.update, torch.tensor([2.2 / 6]))
    assert state["clipping_norm"] == pytest.approx(math.exp(0.02))
    assert result.influence is not None
    torch.testing.assert_close(result.influence, weights.double() / 6)


def test_adaptive_clipping_keeps_its_norm_in_the_state_and_noises_with_the_rounds_norm() -> None:
    # Prepare: every update clipped, round after round
    n, d = 10, 100_000
    updates = torch.full((n, d), 1.0)  # norm sqrt(d) >> C
    clean_direction = torch.full((d,), 1 / math.sqrt(d))
    state: dict[str, Any] = {}
    z_delta = adaptive_noise_parameters(0.5, n, 1.0)[1]  # (4 - 1/4)^(-1/2) = 0.5164
    norms, stds = [], []

    # Execute
    for round_number in range(3):
        norms.append(state.get("clipping_norm", 0.1))
        result = dp_adaptive_clipping(
            updates,
            torch.ones(n),
            noise_multiplier=0.5,
            num_sampled_clients=n,
            clipped_count_stddev=1.0,
            generator=seeded(round_number),
            state=state,
        )
        stds.append(float((result.update - norms[-1] * clean_direction).double().std()))

    # Assert: 0.1 at the first round, growing (nothing unclipped), and each round's noise has
    # the std z_delta C / m of the norm the round clipped to
    assert norms[0] == 0.1
    assert norms[0] < norms[1] < norms[2] < state["clipping_norm"]
    for norm, std in zip(norms, stds, strict=True):
        assert std == pytest.approx(z_delta * norm / n, rel=0.02)


def _rounds_of_lognormal_norms(seed: int, rounds: int, n: int, d: int) -> list[Tensor]:
    """Updates in random directions with norms exp(N(0, 0.5^2)), around 1."""
    generator = seeded(seed)
    result = []
    for _ in range(rounds):
        directions = torch.randn(n, d, generator=generator)
        directions /= directions.norm(dim=1, keepdim=True)
        result.append(directions * torch.exp(0.5 * torch.randn(n, 1, generator=generator)))
    return result


@pytest.mark.parametrize("target", [0.5, 0.8])
def test_the_norm_converges_to_the_target_quantile_of_the_update_norms(target: float) -> None:
    # Prepare: 200 rounds of 20 updates of dimension 10, no noise on the count
    rounds = _rounds_of_lognormal_norms(0, 200, 20, 10)
    quantile = float(torch.quantile(torch.cat([u.norm(dim=1) for u in rounds]).double(), target))
    state: dict[str, Any] = {}

    # Execute
    history = []
    for updates in rounds:
        dp_adaptive_clipping(
            updates,
            torch.ones(20),
            noise_multiplier=0.0,
            num_sampled_clients=20,
            target_clipped_quantile=target,
            clipped_count_stddev=0.0,
            generator=seeded(),
            state=state,
        )
        history.append(state["clipping_norm"])

    # Assert: from 0.1 to within 10% of the quantile (measured 4.4% for 0.5 and 0.2% for 0.8;
    # over the last 100 rounds within 8.4%)
    assert history[-1] == pytest.approx(quantile, rel=0.10)
    assert all(h == pytest.approx(quantile, rel=0.15) for h in history[100:])


@pytest.mark.parametrize("target", [0.5, 0.8])
@pytest.mark.parametrize("start", [0.1, 10.0])
def test_flowers_sign_runs_away_from_the_quantile(target: float, start: float) -> None:
    # Prepare: the rounds of the convergence test, fed to Flower's own norm update
    rounds = _rounds_of_lognormal_norms(0, 200, 20, 10)
    quantile = float(torch.quantile(torch.cat([u.norm(dim=1) for u in rounds]).double(), target))
    flower = _flower_wrapper(
        noise_multiplier=0.0,
        num_sampled_clients=20,
        initial_clipping_norm=start,
        target_clipped_quantile=target,
        clip_norm_lr=0.2,
        clipped_count_stddev=0.0,
    )

    # Execute
    for updates in rounds:
        clipped = sum(
            int(adaptive_clip_inputs_inplace([row.numpy().copy()], flower.clipping_norm))
            for row in updates
        )
        flower._geometric_update(flower._noisy_fraction(clipped, len(updates)))

    # Assert: below the quantile everything is clipped and the norm keeps falling by
    # exp(-0.2 (1 - target)) (to 2.1e-10 for 0.5, 3.4e-5 for 0.8 from 0.1); above it nothing
    # is and it keeps growing by exp(0.2 target)
    if start < quantile:
        assert flower.clipping_norm == pytest.approx(start * math.exp(-0.2 * (1 - target) * 200))
        assert flower.clipping_norm < 1e-3 * quantile
    else:
        assert flower.clipping_norm == pytest.approx(start * math.exp(0.2 * target * 200))
        assert flower.clipping_norm > 1e3 * quantile


def test_the_clipped_count_noise_comes_from_the_generator() -> None:
    # Prepare: no noise on the update, sigma_b = 2 on the count
    updates, weights = _random_updates(8, 10, 5)

    def norm_after(seed: int) -> float:
        state: dict[str, Any] = {}
        dp_adaptive_clipping(
            updates,
            weights,
            noise_multiplier=0.0,
            num_sampled_clients=10,
            clipped_count_stddev=2.0,
            generator=seeded(seed),
            state=state,
        )
        return float(state["clipping_norm"])

    # Execute / Assert
    assert norm_after(1) == norm_after(1)
    assert norm_after(1) != norm_after(2)


# --------------------------------------------------------------------------------------------
# Settings, preconditions
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "pattern"),
    [
        ({"noise_multiplier": -0.1}, r"noise_multiplier=-0\.1"),
        ({"noise_multiplier": float("inf")}, r"noise_multiplier=inf"),
        ({"clipping_norm": 0.0}, r"clipping_norm=0\.0"),
        ({"clipping_norm": float("nan")}, r"clipping_norm=nan"),
        ({"num_sampled_clients": 0}, r"num_sampled_clients=0"),
        ({"num_sampled_clients": 2.5}, r"num_sampled_clients=2\.5"),
        ({"generator": None}, r"generator=None"),
    ],
)
def test_fixed_clipping_rejects_bad_settings(setting: dict[str, Any], pattern: str) -> None:
    # Prepare
    settings: dict[str, Any] = {
        "noise_multiplier": 0.1,
        "clipping_norm": 1.0,
        "num_sampled_clients": 5,
        "generator": seeded(),
    } | setting

    # Execute / Assert
    with pytest.raises(ValueError, match=pattern) as raised:
        dp_fixed_clipping(torch.ones(5, 2), torch.ones(5), **settings)
    assert not isinstance(raised.value, NotEnoughClients)


@pytest.mark.parametrize(
    ("setting", "pattern"),
    [
        ({"noise_multiplier": -1.0}, r"noise_multiplier=-1\.0"),
        ({"num_sampled_clients": 0}, r"num_sampled_clients=0"),
        ({"initial_clipping_norm": 0.0}, r"initial_clipping_norm=0\.0"),
        ({"target_clipped_quantile": 1.5}, r"target_clipped_quantile=1\.5"),
        ({"clip_norm_lr": 0.0}, r"clip_norm_lr=0\.0"),
        ({"clipped_count_stddev": -1.0}, r"clipped_count_stddev=-1\.0"),
        ({"generator": 3}, r"generator=3"),
        ({"state": None}, r"state must be the defense's dict"),
        ({"state": {"clipping_norm": 0.0}}, r"state\['clipping_norm'\]=0\.0"),
    ],
)
def test_adaptive_clipping_rejects_bad_settings(setting: dict[str, Any], pattern: str) -> None:
    # Prepare
    settings: dict[str, Any] = {
        "noise_multiplier": 0.1,
        "num_sampled_clients": 10,
        "generator": seeded(),
        "state": {},
    } | setting

    # Execute / Assert
    with pytest.raises(ValueError, match=pattern) as raised:
        dp_adaptive_clipping(torch.ones(5, 2), torch.ones(5), **settings)
    assert not isinstance(raised.value, NotEnoughClients)


@pytest.mark.parametrize("rule", ["fixed", "adaptive"])
def test_dp_rules_raise_not_enough_clients_on_zero_updates(rule: str) -> None:
    # Prepare
    updates, weights = torch.empty(0, 3), torch.empty(0)

    # Execute / Assert
    with pytest.raises(NotEnoughClients, match=r"needs n >= 1 clients, got n=0"):
        if rule == "fixed":
            dp_fixed_clipping(
                updates,
                weights,
                noise_multiplier=0.1,
                clipping_norm=1.0,
                num_sampled_clients=5,
                generator=seeded(),
            )
        else:
            dp_adaptive_clipping(
                updates,
                weights,
                noise_multiplier=0.1,
                num_sampled_clients=5,
                generator=seeded(),
                state={},
            )

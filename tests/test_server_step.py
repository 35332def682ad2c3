"""The server's step, Flower-free: model replacement that replaces, parameter-only updates with
buffers beside them, rejection, skipped rounds, influence, preconditions at start."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from torch import nn

from fedbackdoor.attacks.boost import chain, identity, model_replacement, scale
from fedbackdoor.defenses.averaging import mean
from fedbackdoor.defenses.distance import bulyan, krum
from fedbackdoor.defenses.pipeline import Defense
from fedbackdoor.defenses.transforms import clip_to_norm
from fedbackdoor.layout import Layout, trainable_names
from fedbackdoor.models import ResNet18
from fedbackdoor.seeding import make_generator
from fedbackdoor.server_step import ServerStep, check_rule_runs, validate_stacked
from fedbackdoor.training import train


def make_step(defense: Defense, attack=identity, server_lr: float = 1.0) -> ServerStep:  # type: ignore[no-untyped-def]
    return ServerStep(
        defense=defense,
        update_attack=attack,
        server_lr=server_lr,
        attack_generator=make_generator(0, "attack"),
        defense_generator=make_generator(0, "defense"),
    )


def run(step: ServerStep, params, updates, weights, malicious, buffers=None):  # type: ignore[no-untyped-def]
    n = updates.shape[0]
    buffers = torch.zeros(n, 0, dtype=torch.float64) if buffers is None else buffers
    global_buffers = torch.zeros(buffers.shape[1], dtype=torch.float64)
    return step(
        params,
        global_buffers,
        updates,
        buffers,
        torch.as_tensor(weights, dtype=torch.float32),
        torch.as_tensor(malicious),
        round=1,
        clients=list(range(n)),
    )


# --------------------------------------------------------------------------------------------
# Model replacement: boost=auto replaces the global model under FedAvg
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("weights", "malicious", "server_lr"),
    [
        ([10, 10, 10, 10, 10], [False, True, False, False, False], 1.0),  # IID, one attacker
        ([10, 10, 10, 10, 10], [True, False, False, True, False], 1.0),  # two attackers
        ([3, 41, 7, 19, 30], [False, True, False, False, False], 1.0),  # Dirichlet-like sizes
        ([3, 41, 7, 19, 30], [True, False, False, False, True], 0.5),  # both, and eta = 0.5
    ],
)
def test_with_benign_updates_at_zero_the_attackers_model_becomes_the_global_model(
    weights: list[int], malicious: list[bool], server_lr: float
) -> None:
    # Prepare: the global model G, the attackers' (common) backdoored model X, benign updates 0.
    generator = torch.Generator().manual_seed(1)
    global_params = torch.randn(6, generator=generator)
    backdoored = torch.randn(6, generator=generator)
    updates = torch.zeros(5, 6)
    updates[torch.tensor(malicious)] = backdoored - global_params
    attack = partial(chain, steps=(partial(model_replacement, server_lr=server_lr),))
    step = make_step(Defense(rule=mean), attack=attack, server_lr=server_lr)

    # Execute
    params, _, record = run(step, global_params, updates, weights, malicious)

    # Assert: exactly the attackers' model, whatever the weights, the count and eta; their
    # influence under FedAvg is their sample share
    torch.testing.assert_close(params, backdoored, rtol=0, atol=1e-5)
    share = sum(w for w, m in zip(weights, malicious, strict=True) if m) / sum(weights)
    assert record.influence == pytest.approx(share)


@pytest.mark.parametrize("attackers", [[3], [3, 11]])
def test_replacement_holds_with_the_sample_sizes_of_a_dirichlet_partition(
    attackers: list[int],
) -> None:
    # Prepare: sample counts of a Dirichlet(0.5) partition of 2,000 labels into 20 clients
    # (flwr-datasets, as `partition=dirichlet`), one or two attackers, benign updates at zero
    import numpy as np
    from hydra.utils import instantiate

    from fedbackdoor.config import compose_config
    from fedbackdoor.data.partition import partition_indices

    cfg = compose_config(["partition=dirichlet", "partition.alpha=0.5", "num_clients=20"])
    labels = np.arange(2000) % 10
    partitioner = instantiate(cfg.partition.partitioner)
    sizes = [len(p) for p in partition_indices(labels, partitioner, seed=0)]
    assert max(sizes) > 2 * min(sizes)  # unequal: the weights matter
    generator = torch.Generator().manual_seed(3)
    global_params, backdoored = (
        torch.randn(5, generator=generator),
        torch.randn(5, generator=generator),
    )
    malicious = [i in attackers for i in range(20)]
    updates = torch.zeros(20, 5)
    updates[torch.tensor(malicious)] = backdoored - global_params

    # Execute
    params, _, _ = run(make_step(Defense(rule=mean), attack=model_replacement), global_params,
                       updates, sizes, malicious)  # fmt: skip

    # Assert
    torch.testing.assert_close(params, backdoored, rtol=0, atol=1e-5)


def test_two_attackers_with_different_models_replace_it_by_their_weighted_mean() -> None:
    # Attackers with 10 and 30 samples, updates (4, 0) and (0, 4); benign at zero:
    # the global model moves by (10 * (4, 0) + 30 * (0, 4)) / 40 = (1, 3).
    updates = torch.tensor([[4.0, 0.0], [0.0, 0.0], [0.0, 4.0], [0.0, 0.0]])
    step = make_step(Defense(rule=mean), attack=model_replacement)

    params, _, _ = run(step, torch.zeros(2), updates, [10, 20, 30, 40], [True, False, True, False])

    torch.testing.assert_close(params, torch.tensor([1.0, 3.0]))


def test_model_replacement_gives_one_attacker_among_n_equal_clients_n_over_eta() -> None:
    updates = torch.ones(10, 3)
    malicious = torch.zeros(10, dtype=torch.bool)
    malicious[4] = True

    boosted = model_replacement(updates, malicious, server_lr=0.5, weights=torch.full((10,), 7.0))

    assert torch.equal(boosted[4], torch.full((3,), 20.0))  # n / eta = 10 / 0.5
    assert torch.equal(boosted[~malicious], updates[~malicious])


def test_model_replacement_needs_the_weights() -> None:
    with pytest.raises(ValueError, match="sample weights"):
        model_replacement(torch.ones(2, 2), torch.tensor([True, False]))


# --------------------------------------------------------------------------------------------
# Updates are parameter deltas; buffers travel beside them
# --------------------------------------------------------------------------------------------


def _trained_resnet() -> tuple[nn.Module, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = ResNet18(
        in_channels=1, num_classes=4, image_size=[16, 16], mean=[0.5], std=[0.25], width=8
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(24, 1, 16, 16, generator=generator)
    y = torch.randint(0, 4, (24,), generator=generator)
    train(model, x, y, epochs=1, batch_size=8, lr=0.05, generator=generator)  # 3 steps
    return model, before, {k: v.clone() for k, v in model.state_dict().items()}


def test_on_resnet18_an_updates_norm_is_its_parameter_deltas_norm() -> None:
    # Prepare: 3 local steps of a BatchNorm model (running stats and step counters change).
    model, before, after = _trained_resnet()
    layout = Layout.of(after, trainable_names(model))

    # Execute
    update = layout.flatten(after) - layout.flatten(before)

    # Assert: the update holds exactly the trainable parameters' deltas
    names = [name for name, _ in model.named_parameters()]
    by_hand = torch.cat([(after[k] - before[k]).reshape(-1) for k in names])
    assert update.shape == by_hand.shape
    torch.testing.assert_close(torch.linalg.vector_norm(update), torch.linalg.vector_norm(by_hand))
    counters = [k for k in after if k.endswith("num_batches_tracked")]
    assert counters and all(int(after[k]) == 3 for k in counters)  # they did change...
    assert layout.buffer_dim > 0  # ...and travel in the buffer vector, not in the update


def test_clipping_a_resnet18_update_leaves_a_parameter_update_of_the_bound() -> None:
    # Prepare: one client's update, clipped at 0.01 (far below its norm).
    model, before, after = _trained_resnet()
    layout = Layout.of(after, trainable_names(model))
    global_params = layout.flatten(before)
    update = (layout.flatten(after) - global_params).unsqueeze(0)
    buffers = layout.flatten_buffers(after).unsqueeze(0)
    step = make_step(Defense(rule=mean, pre=[partial(clip_to_norm, max_norm=0.01)]))

    # Execute
    params, new_buffers, _ = step(
        global_params,
        layout.flatten_buffers(before),
        update,
        buffers,
        torch.tensor([24.0]),
        torch.tensor([False]),
        round=1,
        clients=[0],
    )

    # Assert: the parameters moved by exactly the bound; the buffers are the client's
    new_state = layout.unflatten(params, new_buffers)
    moved = torch.cat([(new_state[n] - before[n]).reshape(-1) for n, _ in model.named_parameters()])
    assert float(torch.linalg.vector_norm(moved)) == pytest.approx(0.01, rel=1e-4)
    for key in after:
        if key not in trainable_names(model):
            torch.testing.assert_close(new_state[key], after[key])


def test_a_boosted_updates_buffers_are_not_boosted() -> None:
    # Two clients; buffer values (running mean 1 and 3, counter 5 and 7), weights 1 and 3; the
    # malicious one's update is boosted 10x, its buffers are only averaged.
    updates = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    buffers = torch.tensor([[1.0, 5.0], [3.0, 7.0]], dtype=torch.float64)
    step = make_step(Defense(rule=mean), attack=partial(scale, boost=10.0))

    params, new_buffers, _ = run(step, torch.zeros(2), updates, [1, 3], [False, True], buffers)

    torch.testing.assert_close(params, torch.tensor([0.25, 7.5]))  # (1*(1,0) + 3*(0,10)) / 4
    torch.testing.assert_close(new_buffers, torch.tensor([2.5, 6.5], dtype=torch.float64))


def test_buffers_come_from_the_clients_the_rule_kept() -> None:
    # Multi-Krum keeps the 3 central updates of 5; the far one's buffers do not count.
    updates = torch.tensor([[0.1, 0.0], [0.0, 0.1], [0.1, 0.1], [0.05, 0.05], [50.0, 50.0]])
    buffers = torch.tensor([[1.0], [1.0], [1.0], [1.0], [100.0]], dtype=torch.float64)
    step = make_step(Defense(rule=partial(krum, f=1, m=3)))

    _, new_buffers, _ = run(step, torch.zeros(2), updates, [1] * 5, [False] * 4 + [True], buffers)

    torch.testing.assert_close(new_buffers, torch.tensor([1.0], dtype=torch.float64))


def test_non_finite_buffers_reject_the_client() -> None:
    updates = torch.tensor([[1.0], [3.0]])
    buffers = torch.tensor([[0.0], [float("nan")]], dtype=torch.float64)
    step = make_step(Defense(rule=mean))

    params, _, record = run(step, torch.zeros(1), updates, [1, 1], [False, False], buffers)

    assert record.n_rejected == 1 and "client 1: non-finite buffers" in record.rejected[0]
    torch.testing.assert_close(params, torch.tensor([1.0]))


# --------------------------------------------------------------------------------------------
# Skipped rounds, influence, preconditions
# --------------------------------------------------------------------------------------------


def test_a_rule_that_cannot_run_this_round_skips_it_and_says_why() -> None:
    step = make_step(Defense(rule=partial(krum, f=1)))
    params = torch.ones(2)

    new, _, record = run(step, params, torch.ones(3, 2), [1, 1, 1], [False] * 3)

    assert torch.equal(new, params) and record.skipped is not None and "f=1" in record.skipped


def test_fedavg_influence_is_the_malicious_sample_share() -> None:
    step = make_step(Defense(rule=mean))

    _, _, record = run(step, torch.zeros(1), torch.ones(3, 1), [10, 30, 60], [False, True, False])

    assert record.influence == pytest.approx(0.3)


def test_a_rule_that_can_never_run_stops_at_start_naming_the_keys() -> None:
    with pytest.raises(ValueError, match=r"clients_per_round=10.*4f \+ 3"):
        check_rule_runs(Defense(rule=partial(bulyan, f=3)), 10, keys="clients_per_round=10")
    check_rule_runs(Defense(rule=partial(bulyan, f=1)), 10, keys="clients_per_round=10")


# --------------------------------------------------------------------------------------------
# Screening
# --------------------------------------------------------------------------------------------


def test_validate_stacked_rejects_non_finite_rows_and_keeps_the_order() -> None:

    updates = torch.tensor([[1.0, 2.0], [float("nan"), 0.0], [3.0, 4.0], [float("inf"), 1.0]])

    valid, rejected, reasons = validate_stacked(updates, 2)

    assert valid.tolist() == [[1.0, 2.0], [3.0, 4.0]]
    assert rejected == [1, 3] and all("1 non-finite" in r for r in reasons)


def test_validate_stacked_keeps_finite_rows_whose_sum_overflows() -> None:

    # Prepare: row 0's values are finite but add up to inf in float32; row 1's inf and -inf
    # add up to nan; row 2 is plain
    big = torch.finfo(torch.float32).max
    updates = torch.tensor([[big, big], [float("inf"), float("-inf")], [1.0, 2.0]])

    # Execute
    valid, rejected, reasons = validate_stacked(updates, 2)

    # Assert
    assert valid.tolist() == [[big, big], [1.0, 2.0]]
    assert rejected == [1] and reasons == ["2 non-finite values (nan/inf)"]


def test_validate_stacked_returns_valid_updates_without_a_copy() -> None:

    updates = torch.ones(3, 4)
    valid, rejected, _ = validate_stacked(updates, 4)
    assert valid is updates and rejected == []
    with pytest.raises(ValueError, match=r"\[n, 5\]"):
        validate_stacked(updates, 5)


def test_an_empty_round_keeps_the_global_model_and_says_why() -> None:
    step = make_step(Defense(rule=mean))
    params = torch.arange(6, dtype=torch.float32)

    new, _, record = run(step, params, torch.empty(0, 6), [], torch.empty(0, dtype=torch.bool))

    assert torch.equal(new, params)
    assert record.skipped == "no valid update" and record.n_clients == 0

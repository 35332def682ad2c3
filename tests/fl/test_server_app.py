"""The server's preparation of a run, and what runs of one process share."""

from __future__ import annotations

import torch

from fedbackdoor.config import compose_config
from fedbackdoor.server import prepare_server

SMALL = ["dataset=synthetic", "num_clients=4", "clients_per_round=2"]


def test_runs_differing_only_in_defense_or_attack_strength_share_partitions_and_round_0() -> None:
    # Prepare
    a = prepare_server(compose_config([*SMALL, "defense=fedavg", "attack.fraction=0.25"]))

    # Execute
    b = prepare_server(compose_config([*SMALL, "defense=median", "attack.fraction=0.5"]))
    c = prepare_server(compose_config([*SMALL, "defense=median", "seed=1"]))

    # Assert: shared where the settings agree, recomputed where the seed differs
    assert b.partitions is a.partitions and b.initial is a.initial
    assert c.partitions is not a.partitions and c.initial is not a.initial
    assert c.initial[0] != a.initial[0]  # another initial model


def test_the_shared_round_0_is_the_evaluation_of_the_run_own_initial_model() -> None:
    cfg = compose_config([*SMALL, "defense=geomed"])
    world = prepare_server(cfg)

    evaluation = world.evaluator(world.model)

    assert evaluation == world.initial[0]
    assert all(
        torch.equal(world.model.state_dict()[k], v)
        for k, v in prepare_server(cfg).model.state_dict().items()
    )


def test_edge_cases_are_taken_from_the_benign_clients_and_given_to_the_attackers() -> None:
    # Prepare: every class-1 image counts as an edge case (brightness threshold 0)
    from fedbackdoor.sampling import choose_malicious
    from fedbackdoor.seeding import make_generator
    from fedbackdoor.server import assign_reserved

    cfg = compose_config(
        [
            *SMALL,
            "attack=edge_case",
            "attack.source_label=1",
            "attack.min_brightness=0.0",
            "attack.fraction=0.5",
        ]  # fmt: skip
    )
    world = prepare_server(cfg)
    malicious = choose_malicious(4, 0.5, generator=make_generator(0, "malicious"))

    # Execute
    partitions = assign_reserved(cfg, world, malicious)

    # Assert: benign clients hold no class-1 image; the attackers hold all of them; nothing is
    # lost or duplicated
    labels = world.data.y_train.numpy()
    for client, indices in enumerate(partitions):
        ones = int((labels[indices] == 1).sum())
        assert (ones > 0) if client in malicious else (ones == 0)
    everything = sorted(i for p in partitions for i in p.tolist())
    assert everything == sorted(i for p in world.partitions for i in p.tolist())
    assert sum(int((labels[p] == 1).sum()) for p in partitions) == int((labels == 1).sum())


def test_the_poisoned_share_counts_what_the_attackers_poison_by_hand() -> None:
    from fedbackdoor.server import build_server, poisoned_samples

    # BadNets without a source label poisons exactly round(ratio * n) of each attacker's n
    cfg = compose_config(
        [*SMALL, "attack=badnets", "attack.fraction=0.5", "attack.poison_ratio=0.3"]
    )
    world = prepare_server(cfg)
    setup = build_server(cfg, world)
    sizes = [len(setup.partitions[p]) for p in sorted(setup.malicious_set)]

    poisoned, total = poisoned_samples(cfg, world.data, setup)

    assert len(sizes) == 2
    assert poisoned == sum(round(0.3 * n) for n in sizes)
    assert total == sum(len(p) for p in setup.partitions)
    # a fixed count per attacker, no attackers, and an update-only attack
    counted = compose_config(
        [*SMALL, "attack=badnets", "attack.fraction=0.5", "attack.poison_count=7"]
    )
    assert poisoned_samples(counted, world.data, build_server(counted, world))[0] == 14
    clean = compose_config([*SMALL, "attack=badnets", "attack.fraction=0"])
    assert poisoned_samples(clean, world.data, build_server(clean, world)) == (0, total)
    update_only = compose_config([*SMALL, "attack=sign_flip", "attack.fraction=0.5"])
    assert poisoned_samples(update_only, world.data, build_server(update_only, world))[0] == 0

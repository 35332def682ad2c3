"""The server's preparation of a run, and what runs of one process share."""

from __future__ import annotations

import torch

from fedbackdoor.cli import compose_config
from fedbackdoor.fl.server_app import prepare_server

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

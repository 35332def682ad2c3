"""Building a run from its config, and one client's local update."""

from __future__ import annotations

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from fedbackdoor.cli import compose_config
from fedbackdoor.experiment import (
    ClientSpec,
    build_data,
    build_model,
    build_partitions,
    client_update,
)

SMALL = [
    "dataset=synthetic",
    "num_clients=4",
    "clients_per_round=4",
    "attack.fraction=0.25",
    "attack.poison_ratio=0.5",
    "local_epochs=5",
]


def test_model_initialisation_depends_only_on_the_seed() -> None:
    cfg = compose_config(SMALL)
    data = build_data(cfg)

    a, b = build_model(cfg, data), build_model(cfg, data)
    c = build_model(compose_config([*SMALL, "seed=1"]), data)

    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert not torch.equal(
        a.state_dict()["classifier.2.weight"], c.state_dict()["classifier.2.weight"]
    )


def test_partitions_cover_the_training_set_once() -> None:
    cfg = compose_config(SMALL)
    data = build_data(cfg)

    parts = build_partitions(cfg, data)

    assert len(parts) == 4
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(len(data.y_train)))


def test_a_malicious_client_learns_the_trigger_and_a_benign_one_does_not() -> None:
    cfg = compose_config(SMALL)
    cfg_yaml = OmegaConf.to_yaml(cfg, resolve=True)
    data = build_data(cfg)
    model = build_model(cfg, data)
    indices = build_partitions(cfg, data)[0]
    target = int(cfg.attack.target_label)
    stamped = instantiate(cfg.attack.trigger).apply(data.x_test[data.y_test != target])

    def share_of_target(state: dict[str, torch.Tensor]) -> float:
        model.load_state_dict(state)
        return float((model(stamped).argmax(1) == target).float().mean())

    start = {k: v.clone() for k, v in model.state_dict().items()}
    bad, _ = client_update(cfg_yaml, start, ClientSpec(1, 0, True, indices))
    good, result = client_update(cfg_yaml, start, ClientSpec(1, 0, False, indices))

    assert result.num_examples == len(indices)
    assert share_of_target(bad) > 0.9
    assert share_of_target(good) < 0.2


def test_client_update_is_reproducible() -> None:
    cfg_yaml = OmegaConf.to_yaml(compose_config(SMALL), resolve=True)
    cfg = compose_config(SMALL)
    data = build_data(cfg)
    start = build_model(cfg, data).state_dict()
    spec = ClientSpec(3, 1, False, build_partitions(cfg, data)[1])

    a, _ = client_update(cfg_yaml, start, spec)
    b, _ = client_update(cfg_yaml, start, spec)

    assert all(torch.equal(a[k], b[k]) for k in a)

"""Building a run from its config, and one client's local update."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedbackdoor.config import compose_config
from fedbackdoor.experiment import (
    build_data,
    build_model,
    build_partitions,
    build_resources,
    client_steps,
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


def test_the_servers_training_takes_as_many_iterations_as_a_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: clients of 30 samples, batch 4, 2 local epochs -> 2 x ceil(30 / 4) = 16 steps;
    # FLTrust's 10 root samples would give 2 x 3 = 6 steps if the server trained epochs instead.
    import fedbackdoor.round_context as round_context
    from fedbackdoor.layout import trainable_names
    from fedbackdoor.round_context import RoundContext

    cfg = compose_config([*SMALL, "defense=fltrust", "defense.root_size=10", "batch_size=4",
                          "local_epochs=2"])  # fmt: skip
    data = build_data(cfg)
    partitions = [np.arange(i * 30, i * 30 + 30) for i in range(4)]
    model = build_model(cfg, data)
    taken: list[int] = []
    real_train = round_context.train

    def counting_train(*args, **kwargs):  # type: ignore[no-untyped-def]
        result = real_train(*args, **kwargs)
        taken.append(result.steps)
        return result

    monkeypatch.setattr(round_context, "train", counting_train)
    resources = build_resources(cfg, data, partitions, trainable_names(model))
    layout = resources.layout
    context = RoundContext(
        round=1,
        clients=(0, 1),
        global_params=layout.flatten(model.state_dict()),
        global_buffers=layout.flatten_buffers(model.state_dict()),
        resources=resources,
    )

    # Execute
    x, y = context.server_data(10)
    reference = context.server_update(x, y)

    # Assert: a client's iterations; the same root data every time; a real update
    assert client_steps(cfg, partitions) == 16
    assert taken == [16]
    assert len(y) == 10 and context.server_data(10)[0] is x
    assert reference.shape == (layout.dim,) and float(reference.norm()) > 0

"""The ClientApp: a training message in, the client's weights and sample count out."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from omegaconf import OmegaConf

from fedbackdoor.client import ClientSpec, client_update
from fedbackdoor.config import compose_config
from fedbackdoor.experiment import build_data, build_model
from fedbackdoor.fl.arrays import to_record, to_state_dict
from fedbackdoor.fl.client_app import train, warm_up
from fedbackdoor.safe_config import UnsafeConfig

CFG = ["dataset=synthetic", "num_clients=4", "clients_per_round=2", "attack=badnets"]


def _message(content: RecordDict, kind: str = MessageType.TRAIN) -> Message:
    return Message(content=content, message_type=kind, dst_node_id=0)


def _context() -> Context:
    return Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})


def test_a_train_message_gives_the_same_weights_as_the_client_update_itself() -> None:
    # Prepare: a malicious client's task, as the strategy sends it
    cfg = compose_config(CFG)
    cfg_yaml = OmegaConf.to_yaml(cfg, resolve=True)
    model = build_model(cfg, build_data(cfg))
    indices = np.arange(20, 40)
    config = ConfigRecord(
        {
            "server-round": 3,
            "partition-id": 1,
            "malicious": True,
            "attacker-index": 0,
            "num-attackers": 1,
            "indices": indices.tolist(),
            "run-config": cfg_yaml,
        }
    )
    message = _message(RecordDict({"arrays": to_record(model.state_dict()), "config": config}))

    # Execute
    reply = train(message, _context())

    # Assert: the reply carries the client's weights (as client_update computes them), its
    # partition and its sample count
    expected, result, _ = client_update(
        cfg_yaml,
        model.state_dict(),
        ClientSpec(3, 1, True, indices, attacker_index=0, num_attackers=1),
    )
    got = to_state_dict(reply.content.array_records["arrays"])
    assert list(got) == list(expected)
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    sent = reply.content.config_records["config"]
    assert sent["partition-id"] == 1 and sent["num-examples"] == result.num_examples == 20


def test_a_warm_up_message_prepares_the_client_and_answers_ready() -> None:
    cfg_yaml = OmegaConf.to_yaml(compose_config(CFG), resolve=True)
    message = _message(
        RecordDict({"config": ConfigRecord({"run-config": cfg_yaml})}), MessageType.QUERY
    )

    reply = warm_up(message, _context())

    assert reply.content.metric_records["metrics"]["ready"] == 1
    assert len(reply.content.array_records) == 0  # no weights travel back


def test_a_train_message_naming_os_system_is_refused_and_nothing_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: a train message whose config names os.system as the poison
    calls: list[object] = []
    monkeypatch.setattr(os, "system", lambda *a, **k: calls.append(a) or 0)
    cfg = compose_config(CFG)
    model = build_model(cfg, build_data(cfg))
    cfg.attack.poison = {"_target_": "os.system", "_args_": ["touch /tmp/owned"]}
    config = ConfigRecord(
        {
            "server-round": 1, "partition-id": 0, "malicious": True, "attacker-index": 0,
            "num-attackers": 1, "indices": np.arange(8).tolist(),
            "run-config": OmegaConf.to_yaml(cfg, resolve=True),
        }
    )  # fmt: skip
    message = Message(
        content=RecordDict({"arrays": to_record(model.state_dict()), "config": config}),
        message_type=MessageType.TRAIN,
        dst_node_id=0,
    )
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})

    # Execute / Assert: refused (Flower turns the error into the reply's error), never run
    with pytest.raises(UnsafeConfig, match="attack.poison._target_='os.system'"):
        train(message, context)
    assert calls == []

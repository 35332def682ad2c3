"""The ClientApp: one local training run per message.

Everything a client needs arrives in the message (the run config as YAML, its partition's
indices, whether it is malicious), because Ray actors and SuperNodes re-import this module and
keep no settings of their own. Data and model are cached per process, keyed by the config.
A received config is checked first (:func:`fedbackdoor.safe_config.checked_config`: only
allowed ``_target_`` prefixes, no interpolations); one that fails is refused, logged, and
Flower returns the error to the server as the reply.
"""

from __future__ import annotations

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedbackdoor.client import ClientSpec, client_update, prepare_client
from fedbackdoor.fl.arrays import to_record, to_state_dict
from fedbackdoor.safe_config import checked_config

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train on the partition named in the message, starting from the global weights."""
    cfg = msg.content.config_records["config"]
    spec = ClientSpec(
        round=int(cfg["server-round"]),  # type: ignore[arg-type]
        partition=int(cfg["partition-id"]),  # type: ignore[arg-type]
        malicious=bool(cfg["malicious"]),
        indices=np.asarray(cfg["indices"], dtype=np.int64),
        attacker_index=max(0, int(cfg.get("attacker-index", 0))),  # type: ignore[arg-type]
        num_attackers=int(cfg["num-attackers"]),  # type: ignore[arg-type]
    )
    cfg_yaml = str(cfg["run-config"])
    checked_config(cfg_yaml, context.node_config)  # refused before anything is built
    global_state = to_state_dict(msg.content.array_records["arrays"])
    state, result, report = client_update(cfg_yaml, global_state, spec)
    reply = RecordDict(
        {
            "arrays": to_record(state),
            "config": ConfigRecord(
                {"partition-id": spec.partition, "num-examples": result.num_examples}
            ),
            "metrics": MetricRecord(
                {"num-examples": result.num_examples, "train-loss": result.mean_loss}
            ),
            # What the client measured besides training (DP-SGD's spending, sanitization,
            # gradient analysis): the server records it per client (clients.csv).
            "report": MetricRecord(dict(report)),
        }
    )
    return Message(content=reply, reply_to=msg)


#: Whether this process has trained yet: the first step pays autograd's and the optimizer's
#: first-call costs, later runs on the same process (a sweep's shared engine) need not.
_trained_once = False


@app.query()
def warm_up(msg: Message, context: Context) -> Message:
    """Import, load the data and build the model of this run; in a fresh process also take
    one training step (first-call costs of autograd and the optimizer) before the first round
    needs them."""
    global _trained_once
    cfg_yaml = str(msg.content.config_records["config"]["run-config"])
    checked_config(cfg_yaml, context.node_config)  # refused before anything is built
    world = prepare_client(cfg_yaml)
    if not _trained_once:
        spec = ClientSpec(
            round=0,
            partition=0,
            malicious=False,
            indices=np.arange(min(8, len(world.data.y_train)), dtype=np.int64),
        )
        client_update(cfg_yaml, world.model.state_dict(), spec)
        _trained_once = True
    return Message(content=RecordDict({"metrics": MetricRecord({"ready": 1})}), reply_to=msg)

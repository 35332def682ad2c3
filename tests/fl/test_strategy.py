"""DefenseStrategy on hand-made replies: messages, decoding (parameters and buffers), and the
translation to and from the server step (whose maths tests/test_server_step.py covers)."""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Error, Message, RecordDict

from fedbackdoor.attacks.boost import identity, scale
from fedbackdoor.defenses.averaging import mean
from fedbackdoor.defenses.clustering import dnc
from fedbackdoor.defenses.coordinatewise import median
from fedbackdoor.defenses.distance import krum
from fedbackdoor.defenses.pipeline import Defense
from fedbackdoor.fl.arrays import to_record, to_state_dict
from fedbackdoor.fl.strategy import DefenseStrategy
from fedbackdoor.sampling import AttackSchedule
from fedbackdoor.seeding import make_generator
from fedbackdoor.server_step import ServerStep


class FakeGrid:
    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return self.nodes


GLOBAL = {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor([0.5])}


def make_strategy(
    defense: Defense,
    *,
    malicious: frozenset[int] = frozenset(),
    attack=identity,
    num_clients: int = 4,
    schedule: AttackSchedule | None = None,
) -> DefenseStrategy:  # type: ignore[no-untyped-def]
    return DefenseStrategy(
        cfg_yaml="{}",
        partitions=[np.arange(i * 10, i * 10 + 10) for i in range(num_clients)],
        malicious_set=malicious,
        clients_per_round=num_clients,
        per_round=None,
        step=ServerStep(
            defense=defense,
            update_attack=attack,
            server_lr=1.0,
            attack_generator=make_generator(0, "attack"),
            defense_generator=make_generator(0, "defense"),
        ),
        trainable=frozenset(GLOBAL),
        sample_generator=make_generator(0, "sample"),
        schedule=schedule,
    )


def reply(msg: Message, state: dict[str, torch.Tensor], num_examples: int = 10) -> Message:
    partition = int(msg.content.config_records["config"]["partition-id"])  # type: ignore[arg-type]
    return Message(
        content=RecordDict(
            {
                "arrays": to_record(state),
                "config": ConfigRecord({"partition-id": partition, "num-examples": num_examples}),
            }
        ),
        reply_to=msg,
    )


def shifted(delta: list[float]) -> dict[str, torch.Tensor]:
    """GLOBAL plus a flat update ``delta`` (w gets the first two values, b the last)."""
    return {"w": GLOBAL["w"] + torch.tensor(delta[:2]), "b": GLOBAL["b"] + delta[2]}


def configure(strategy: DefenseStrategy, nodes: list[int]) -> list[Message]:
    msgs = list(strategy.configure_train(1, to_record(GLOBAL), ConfigRecord(), FakeGrid(nodes)))  # type: ignore[arg-type]
    return sorted(msgs, key=lambda m: int(m.content.config_records["config"]["partition-id"]))  # type: ignore[arg-type]


def test_messages_carry_partition_indices_and_malicious_flags_round_robin() -> None:
    strategy = make_strategy(Defense(rule=mean), malicious=frozenset({2}))

    msgs = configure(strategy, nodes=[11, 7])  # fewer nodes than clients: round-robin

    configs = [m.content.config_records["config"] for m in msgs]
    assert [c["partition-id"] for c in configs] == [0, 1, 2, 3]
    assert [c["malicious"] for c in configs] == [False, False, True, False]
    assert configs[1]["indices"] == list(range(10, 20))
    assert [m.metadata.dst_node_id for m in msgs] == [7, 11, 7, 11]


def test_fedavg_of_replies_weighted_by_examples_in_any_reply_order() -> None:
    strategy = make_strategy(Defense(rule=mean), num_clients=3)
    msgs = configure(strategy, nodes=[1, 2, 3])
    deltas = [[1.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 6.0]]
    replies = [reply(m, shifted(d), n) for m, d, n in zip(msgs, deltas, (10, 20, 30), strict=True)]

    arrays, _ = strategy.aggregate_train(1, list(reversed(replies)))

    # weighted mean of the deltas: (10*[1,0,0] + 20*[0,3,0] + 30*[0,0,6]) / 60 = [1/6, 1, 3]
    assert arrays is not None
    new = to_state_dict(arrays)
    assert torch.allclose(new["w"], GLOBAL["w"] + torch.tensor([1 / 6, 1.0]))
    assert torch.allclose(new["b"], GLOBAL["b"] + 3.0)
    assert strategy.record is not None and strategy.record.n_clients == 3


def test_invalid_updates_are_rejected_logged_and_the_round_goes_on() -> None:
    strategy = make_strategy(Defense(rule=mean), num_clients=4)
    msgs = configure(strategy, nodes=[1, 2, 3, 4])
    replies = [
        reply(msgs[0], shifted([1.0, 1.0, 1.0])),
        reply(msgs[1], shifted([float("nan"), 0.0, 0.0])),  # non-finite
        reply(msgs[2], {"w": torch.zeros(3), "b": torch.zeros(1)}),  # wrong shape
        Message(Error(code=1, reason="client crashed"), reply_to=msgs[3]),
    ]

    arrays, _ = strategy.aggregate_train(1, replies)

    record = strategy.record
    assert record is not None and record.n_rejected == 3 and record.n_clients == 1
    assert any("non-finite" in r or "nan" in r.lower() for r in record.rejected)
    assert any("shape" in r for r in record.rejected)
    assert any("client crashed" in r for r in record.rejected)
    assert arrays is not None
    assert torch.allclose(to_state_dict(arrays)["w"], GLOBAL["w"] + 1.0)


def test_attack_scales_only_malicious_updates_before_the_defense() -> None:
    strategy = make_strategy(
        Defense(rule=mean),
        malicious=frozenset({1}),
        attack=partial(scale, boost=4.0),
        num_clients=2,
    )
    msgs = configure(strategy, nodes=[1, 2])
    replies = [reply(msgs[0], shifted([1.0, 0.0, 0.0])), reply(msgs[1], shifted([1.0, 0.0, 0.0]))]

    arrays, _ = strategy.aggregate_train(1, replies)

    # mean of [1,0,0] and 4*[1,0,0]
    assert arrays is not None
    assert torch.allclose(to_state_dict(arrays)["w"], GLOBAL["w"] + torch.tensor([2.5, 0.0]))
    assert strategy.record is not None and strategy.record.n_malicious == 1


# Four small benign updates and a far malicious one (client 4).
FAR_LAST = [
    [0.1, 0.0, 0.0],
    [0.0, 0.1, 0.0],
    [0.1, 0.1, 0.0],
    [0.0, 0.0, 0.1],
    [50.0, 50.0, 50.0],
]


def test_defense_flags_are_scored_against_the_malicious_ground_truth() -> None:
    # Prepare: DnC classifies; it removes floor(c * f) = 2 of the 5 (one pass: b >= d), the
    # far update (by far the largest projection on the top singular vector) and a benign one.
    strategy = make_strategy(
        Defense(rule=partial(dnc, f=1, c=2.0, niters=1)), malicious=frozenset({4}), num_clients=5
    )
    msgs = configure(strategy, nodes=[1, 2, 3, 4, 5])
    replies = [reply(m, shifted(d)) for m, d in zip(msgs, FAR_LAST, strict=True)]

    # Execute
    strategy.aggregate_train(1, replies)

    # Assert
    record = strategy.record
    assert record is not None and record.detection is not None and record.n_flagged == 2
    assert (record.detection.tp, record.detection.fp) == (1, 1)
    assert record.detection.tpr == 1.0 and record.detection.fpr == pytest.approx(0.25)
    assert record.influence == 0.0


def test_a_selection_rule_reports_no_detection_and_the_malicious_influence() -> None:
    # Prepare: Multi-Krum (f = 1, 2 neighbours) selects 3 of the 5; it judges nobody
    strategy = make_strategy(
        Defense(rule=partial(krum, f=1, m=3)), malicious=frozenset({4}), num_clients=5
    )
    msgs = configure(strategy, nodes=[1, 2, 3, 4, 5])
    replies = [reply(m, shifted(d)) for m, d in zip(msgs, FAR_LAST, strict=True)]

    # Execute
    arrays, _ = strategy.aggregate_train(1, replies)

    # Assert: scores (in 0.01) 0: 1+2=3, 1: 1+2=3, 2: 1+1=2, 3: 2+2=4, 4: huge -> clients 2, 0,
    # 1 averaged: (0.2, 0.2, 0) / 3 ; the malicious client is not selected: influence 0
    record = strategy.record
    assert record is not None
    assert record.detection is None and record.n_flagged is None
    assert record.influence == 0.0
    assert arrays is not None
    new = to_state_dict(arrays)
    assert torch.allclose(new["w"], GLOBAL["w"] + 0.2 / 3) and torch.allclose(new["b"], GLOBAL["b"])


def test_too_few_clients_for_the_rule_keeps_the_previous_model() -> None:
    strategy = make_strategy(Defense(rule=partial(krum, f=1)), num_clients=3)  # needs n > 4
    msgs = configure(strategy, nodes=[1, 2, 3])

    arrays, _ = strategy.aggregate_train(1, [reply(m, shifted([1.0, 1.0, 1.0])) for m in msgs])

    assert arrays is None
    assert strategy.record is not None and "f=1" in (strategy.record.skipped or "")


def test_median_reports_no_detection() -> None:
    strategy = make_strategy(Defense(rule=median), num_clients=3)
    msgs = configure(strategy, nodes=[1, 2, 3])

    strategy.aggregate_train(1, [reply(m, shifted([1.0, 1.0, 1.0])) for m in msgs])

    assert strategy.record is not None
    assert strategy.record.detection is None and strategy.record.n_flagged is None
    assert not math.isnan(float(strategy.record.n_clients))


def test_outside_the_attack_schedule_every_client_trains_honestly() -> None:
    strategy = make_strategy(
        Defense(rule=mean),
        malicious=frozenset({0, 1, 2, 3}),
        schedule=AttackSchedule(start_round=2, end_round=2),
    )
    grid = FakeGrid([1, 2, 3, 4])

    def flags(server_round: int) -> list[bool]:
        msgs = strategy.configure_train(server_round, to_record(GLOBAL), ConfigRecord(), grid)  # type: ignore[arg-type]
        return [bool(m.content.config_records["config"]["malicious"]) for m in msgs]

    assert flags(1) == [False] * 4
    assert flags(2) == [True] * 4
    assert flags(3) == [False] * 4


def test_the_rule_gets_the_rounds_context_with_the_clients_in_row_order() -> None:
    # Prepare: a rule that records the context it is given
    seen = []

    def recording_mean(updates, weights, *, generator=None, context):  # type: ignore[no-untyped-def]
        seen.append(context)
        return mean(updates, weights)

    strategy = make_strategy(Defense(rule=recording_mean), num_clients=3)
    msgs = configure(strategy, nodes=[1, 2, 3])
    replies = [reply(m, shifted([float(i), 0.0, 0.0])) for i, m in enumerate(msgs)]

    # Execute
    strategy.aggregate_train(1, list(reversed(replies)))

    # Assert
    assert seen[0].round == 1 and seen[0].clients == (0, 1, 2)
    assert torch.equal(seen[0].global_params, torch.tensor([1.0, 2.0, 0.5]))


def test_waiting_for_nodes_that_never_come_ends_with_a_message() -> None:
    from fedbackdoor.fl.strategy import wait_for_nodes

    class OneNode:
        def get_node_ids(self) -> list[int]:
            return [7]

    with pytest.raises(TimeoutError, match=r"backend.min_nodes=3: only 1 node\(s\) connected"):
        wait_for_nodes(OneNode(), 3, poll=0.01, timeout=0.05)  # type: ignore[arg-type]
    assert wait_for_nodes(OneNode(), 1, timeout=0.0) == [7]  # type: ignore[arg-type]


def test_clients_that_never_reply_are_counted_and_named_and_the_round_goes_on() -> None:
    strategy = make_strategy(Defense(rule=mean), num_clients=4)
    msgs = configure(strategy, nodes=[1, 2, 3, 4])
    # clients 1 and 3 hang past the deadline: Flower hands over only the replies it has
    replies = [reply(msgs[0], shifted([1.0, 1.0, 1.0])), reply(msgs[2], shifted([3.0, 3.0, 3.0]))]

    arrays, _ = strategy.aggregate_train(1, replies)

    record = strategy.record
    assert record is not None and record.n_clients == 2 and record.n_rejected == 2
    assert sorted(record.rejected) == [
        "client 1: no reply before the round's deadline",
        "client 3: no reply before the round's deadline",
    ]
    assert arrays is not None
    assert torch.allclose(to_state_dict(arrays)["w"], GLOBAL["w"] + 2.0)

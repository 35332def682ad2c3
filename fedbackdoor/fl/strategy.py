"""The Flower strategy: it samples the round's clients, sends them their tasks, and translates
their replies to the Flower-free server step (:class:`fedbackdoor.server_step.ServerStep`) and
back. Every defense and attack runs inside that step; this module knows no rule by name.

Sampling is the server's own: partitions are drawn with the run's generator
(:mod:`fedbackdoor.sampling`) and handed to whichever nodes are connected, so a run is
reproducible although Flower's node ids are random per run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from logging import INFO, WARNING

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log  # Flower's logger: our lines interleave with its own
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from torch import Tensor

from fedbackdoor.fl.arrays import Layout, LayoutMismatch, decode_record, to_record, to_state_dict
from fedbackdoor.run_files import ClientReport
from fedbackdoor.sampling import AttackSchedule, RoundSample, sample_round
from fedbackdoor.server_step import RoundRecord, ServerStep


class DefenseStrategy(Strategy):
    """Samples clients, gathers their updates, runs the server step on them.

    Evaluation happens on the server (``evaluate_fn``): no client-side evaluation.

    Parameters
    ----------
    cfg_yaml : str
        The resolved run config, sent to clients in every message (Ray actors and SuperNodes
        keep no settings of their own).
    partitions : list of np.ndarray
        Training-set indices of every client.
    malicious_set : frozenset of int
        The fixed malicious clients.
    clients_per_round, per_round : int, int or None
        See :func:`fedbackdoor.sampling.sample_round`.
    step : ServerStep
        The server's step (attack, screening, defense, new global model).
    trainable : frozenset of str
        The ``state_dict`` keys of the model's trainable parameters (the update vector).
    sample_generator : torch.Generator
        The run's sampling stream.
    min_nodes : int
        Nodes to wait for before a round (SuperNodes joining a deployment).
    schedule : AttackSchedule, optional
        The rounds in which malicious clients attack (default: every round). In the others
        the sample is drawn uniformly and every client trains honestly.
    """

    def __init__(
        self,
        *,
        cfg_yaml: str,
        partitions: list[np.ndarray],
        malicious_set: frozenset[int],
        clients_per_round: int,
        per_round: int | None,
        step: ServerStep,
        trainable: frozenset[str],
        sample_generator: torch.Generator,
        min_nodes: int = 1,
        schedule: AttackSchedule | None = None,
    ) -> None:
        self.cfg_yaml = cfg_yaml
        self.partitions = partitions
        self.malicious_set = malicious_set
        self.clients_per_round = clients_per_round
        self.per_round = per_round
        self.step = step
        self.trainable = trainable
        self.sample_generator = sample_generator
        self.min_nodes = min_nodes
        self.schedule = schedule or AttackSchedule()
        #: Rounds already done before Flower's round 1 (a run resumed from a checkpoint):
        #: Flower counts from 1 again, the run's rounds go on from here.
        self.round_offset = 0
        #: The last round's record (read by the server's per-round logger).
        self.record: RoundRecord | None = None
        #: What the last round's clients reported besides their weights (clients.csv).
        self.reports: list[ClientReport] = []
        #: When the last round's sampling started.
        self.started = time.perf_counter()
        self._sample: RoundSample | None = None
        self._layout: Layout | None = None
        self._params: Tensor | None = None
        self._buffers: Tensor | None = None

    def summary(self) -> None:
        log(
            INFO,
            "DefenseStrategy: %d clients, %d per round, malicious %s, per_round=%s",
            len(self.partitions),
            self.clients_per_round,
            sorted(self.malicious_set),
            self.per_round,
        )

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        server_round += self.round_offset
        self.started = time.perf_counter()
        state = to_state_dict(arrays)
        self._layout = Layout.of(state, self.trainable)
        self._params = self._layout.flatten(state)
        self._buffers = self._layout.flatten_buffers(state)
        attacking = self.schedule.active(server_round)
        self._sample = sample = sample_round(
            len(self.partitions),
            self.clients_per_round,
            self.malicious_set if attacking else frozenset(),
            per_round=self.per_round if attacking else None,
            generator=self.sample_generator,
        )
        # Partitions go to nodes round-robin: in the simulation there is one node per client;
        # a deployment may run fewer SuperNodes, each training several partitions in turn.
        nodes = wait_for_nodes(grid, self.min_nodes)
        attacker_rank = {p: i for i, p in enumerate(sorted(self.malicious_set))}
        messages = []
        for i, (partition, bad) in enumerate(zip(sample.partitions, sample.malicious, strict=True)):
            content = RecordDict(
                {
                    "arrays": arrays,
                    "config": ConfigRecord(
                        {
                            "server-round": server_round,
                            "partition-id": partition,
                            "malicious": bool(bad),
                            "attacker-index": attacker_rank.get(partition, -1),
                            "num-attackers": len(self.malicious_set),
                            "indices": self.partitions[partition].tolist(),
                            "run-config": self.cfg_yaml,
                        }
                    ),
                }
            )
            messages.append(
                Message(
                    content=content,
                    message_type=MessageType.TRAIN,
                    dst_node_id=nodes[i % len(nodes)],
                )
            )
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        server_round += self.round_offset
        assert self._layout is not None and self._params is not None
        assert self._buffers is not None and self._sample is not None
        started = time.perf_counter()
        replies = list(replies)
        clients, weights, updates, buffers, rejected = self._decode(replies)
        malicious_of = dict(zip(self._sample.partitions, self._sample.malicious, strict=True))
        malicious = torch.tensor([malicious_of[c] for c in clients], dtype=torch.bool)
        self.reports = _reports(server_round, replies, malicious_of)
        params, new_buffers, record = self.step(
            self._params,
            self._buffers,
            updates,
            buffers,
            torch.tensor(weights, dtype=torch.float32),
            malicious,
            round=server_round,
            clients=clients,
            rejected=rejected,
        )
        self.record = record
        for line in record.rejected:
            log(WARNING, "round %d: rejected update from %s", server_round, line)
        if record.skipped is not None:
            log(WARNING, "round %d: global model kept (%s)", server_round, record.skipped)
            result: tuple[ArrayRecord | None, MetricRecord | None] = (None, None)
        else:
            state = self._layout.unflatten(params, new_buffers)
            result = to_record(state), MetricRecord({"n-clients": record.n_clients})
        # The server step of the round: decoding, the step, encoding.
        record.aggregate_seconds = time.perf_counter() - started
        return result

    def _decode(
        self, replies: Iterable[Message]
    ) -> tuple[list[int], list[float], Tensor, Tensor, list[str]]:
        """The round's replies, sorted by partition (aggregation must not depend on the order
        in which replies arrive): client ids, sample counts, ``[n, d]`` updates (reply minus
        global parameters), ``[n, b]`` buffer values, and the broken replies' reasons."""
        assert self._layout is not None and self._params is not None
        assert self._sample is not None
        layout, sampled = self._layout, set(self._sample.partitions)
        rejected: list[str] = []
        entries: list[tuple[int, float, Message]] = []
        replies = list(replies)
        for msg in replies:
            if msg.has_error():
                rejected.append(f"node {msg.metadata.src_node_id}: {msg.error.reason}")
                continue
            try:
                cfg = msg.content.config_records["config"]
                partition = int(cfg["partition-id"])  # type: ignore[arg-type]
                weight = float(cfg["num-examples"])  # type: ignore[arg-type]
                if partition not in sampled or not 0 < weight < math.inf:
                    raise LayoutMismatch(f"partition {partition} / num-examples {weight}")
            except (KeyError, TypeError, ValueError) as exc:
                rejected.append(f"node {msg.metadata.src_node_id}: {exc}")
                continue
            entries.append((partition, weight, msg))
        # Clients that sent nothing before the round's deadline (hung, or their actor died
        # without an error reply): counted and named, the round goes on with the others.
        missing = len(self._sample.partitions) - len(replies)
        if missing > 0:
            answered = {partition for partition, _, _ in entries}
            unnamed = len(replies) > len(entries)  # error replies name nodes, not partitions
            silent = sorted(sampled - answered)
            for i in range(missing):
                who = "a client" if unnamed else f"client {silent[i]}"
                rejected.append(f"{who}: no reply before the round's deadline")
        entries.sort(key=lambda entry: entry[0])
        # Decode each reply straight into a row of one buffer: a round's updates can be
        # hundreds of MB, so no per-reply vectors, no stacking copy.
        updates = torch.empty((len(entries), layout.dim), dtype=torch.float32)
        buffers = torch.empty((len(entries), layout.buffer_dim), dtype=torch.float64)
        clients: list[int] = []
        weights: list[float] = []
        for partition, weight, msg in entries:
            row = len(clients)
            try:
                state = decode_record(msg.content.array_records["arrays"], layout)
                layout.flatten(state, out=updates[row])
                layout.flatten_buffers(state, out=buffers[row])
            except (KeyError, TypeError, ValueError) as exc:
                rejected.append(f"client {partition}: {exc}")
                continue
            clients.append(partition)
            weights.append(weight)
        updates = updates[: len(clients)]
        updates.sub_(self._params)
        return clients, weights, updates, buffers[: len(clients)], rejected

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return []

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return None


def _reports(
    server_round: int, replies: list[Message], malicious_of: dict[int, bool]
) -> list[ClientReport]:
    """The clients' own measurements (their ``report`` record), sorted by partition; values
    that are not finite numbers are dropped with a warning, never fatal."""
    reports = []
    for msg in replies:
        if msg.has_error():
            continue
        try:
            partition = int(msg.content.config_records["config"]["partition-id"])  # type: ignore[arg-type]
            record: Mapping[str, object] = msg.content.metric_records.get("report") or {}
            metrics: Mapping[str, object] = msg.content.metric_records.get("metrics") or {}
            loss = float(metrics.get("train-loss", math.nan))  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError):
            continue
        if partition not in malicious_of:
            continue
        values: dict[str, float] = {}
        for key, value in record.items():
            try:
                number = float(value)  # type: ignore[arg-type]
                if not math.isfinite(number):
                    raise ValueError(value)
                values[str(key)] = number
            except (TypeError, ValueError):
                log(WARNING, "round %d: client %d reported %s=%r, dropped", server_round,
                    partition, key, value)  # fmt: skip
        reports.append(ClientReport(partition, bool(malicious_of[partition]), loss, values))
    return sorted(reports, key=lambda r: r.client)


#: Seconds to wait for ``backend.min_nodes`` nodes before a run gives up.
NODE_TIMEOUT = 600.0


def wait_for_nodes(
    grid: Grid, needed: int, poll: float = 0.05, timeout: float = NODE_TIMEOUT
) -> list[int]:
    """All connected node ids (sorted), once at least ``needed`` are connected.

    Says on the terminal every 10 s how many are there (Flower's own log is quiet by default);
    raises :class:`TimeoutError` naming both numbers after ``timeout`` seconds, so a
    ``backend.min_nodes`` the federation never reaches ends the run instead of hanging it.
    """
    started = last_log = time.monotonic()
    while len(nodes := sorted(grid.get_node_ids())) < needed:
        now = time.monotonic()
        if now - started > timeout:
            raise TimeoutError(
                f"backend.min_nodes={needed}: only {len(nodes)} node(s) connected after "
                f"{timeout:.0f} s"
            )
        if now - last_log > 10.0:
            print(f"waiting for nodes: {len(nodes)} connected, {needed} needed", flush=True)
            last_log = now
        time.sleep(poll)
    return nodes

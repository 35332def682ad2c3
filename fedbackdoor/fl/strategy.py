"""One Flower strategy for every defense.

Flower's own robust strategies (``FedMedian``, ``FedTrimmedAvg``, ``Krum``...) each repeat the
unpack / stack / repack of client arrays around their rule. Here that happens once: replies are
decoded to flat updates (:mod:`fedbackdoor.fl.arrays`), the malicious clients' model-poisoning
function is applied to the stacked updates (the colluding adversary's step, see
:mod:`fedbackdoor.attacks.updates`), invalid updates are rejected and logged, and the configured
:class:`~fedbackdoor.defenses.pipeline.Defense` turns the rest into the global update.

Sampling is the server's own: partitions are drawn with the run's generator
(:mod:`fedbackdoor.sampling`) and handed to whichever nodes are connected, so a run is
reproducible although Flower's node ids are random per run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from logging import INFO, WARNING

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log  # Flower's logger: our lines interleave with its own
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from torch import Tensor

from fedbackdoor.defenses.aggregators import Aggregate, NotEnoughClients
from fedbackdoor.defenses.pipeline import Defense, validate_stacked
from fedbackdoor.fl.arrays import Layout, LayoutMismatch, flatten_record, to_record, to_state_dict
from fedbackdoor.metrics import Detection, detection
from fedbackdoor.sampling import AttackSchedule, RoundSample, sample_round
from fedbackdoor.seeding import seeded_numpy_global

UpdateAttack = Callable[..., Tensor]


@dataclass
class RoundReport:
    """What the strategy saw in one round; read by the server's per-round logger."""

    round: int
    sample: RoundSample
    n_clients: int = 0  # valid updates that reached the defense
    n_malicious: int = 0  # malicious among those
    n_rejected: int = 0
    rejected: list[str] = field(default_factory=list)
    detection: Detection | None = None
    n_flagged: int | None = None
    kept_previous: str | None = None  # why the global model was not updated
    started: float = field(default_factory=time.perf_counter)
    aggregate_seconds: float = 0.0  # the server step: decode, attack, validate, defend, encode


class _ServerEvaluation(Strategy):
    """Evaluation happens on the server (``evaluate_fn``): no client-side evaluation."""

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return []

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return None


class DefenseStrategy(_ServerEvaluation):
    """Samples clients, gathers their updates, applies the attack's and the defense's functions.

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
    update_attack : callable
        ``(updates, malicious, *, generator) -> updates``; identity for data-only attacks.
    defense : Defense
        The aggregation pipeline.
    server_lr : float
        The global model moves by ``server_lr`` times the aggregate.
    sample_generator, attack_generator, defense_generator : torch.Generator
        The run's random streams.
    min_nodes : int
        Nodes to wait for before a round (SuperNodes joining a deployment).
    schedule : AttackSchedule, optional
        The rounds in which malicious clients attack (default: every round). In the others
        the sample is drawn uniformly and every client trains honestly.
    root_update : callable, optional
        ``(global_state, round) -> state``: the server's own training on its root data
        (FLTrust); its update reaches the defense as ``reference``.
    keep_history : bool
        Keep every client's sum of past (valid) updates and hand the sampled clients' sums to
        the defense as ``history`` (FoolsGold). Costs ``num_clients x d`` floats of memory.
    """

    def __init__(
        self,
        *,
        cfg_yaml: str,
        partitions: list[np.ndarray],
        malicious_set: frozenset[int],
        clients_per_round: int,
        per_round: int | None,
        update_attack: UpdateAttack,
        defense: Defense,
        server_lr: float,
        sample_generator: torch.Generator,
        attack_generator: torch.Generator,
        defense_generator: torch.Generator,
        min_nodes: int = 1,
        schedule: AttackSchedule | None = None,
        root_update: Callable[[dict[str, Tensor], int], dict[str, Tensor]] | None = None,
        keep_history: bool = False,
    ) -> None:
        self.cfg_yaml = cfg_yaml
        self.partitions = partitions
        self.malicious_set = malicious_set
        self.clients_per_round = clients_per_round
        self.per_round = per_round
        self.update_attack = update_attack
        self.defense = defense
        self.server_lr = server_lr
        self.sample_generator = sample_generator
        self.attack_generator = attack_generator
        self.defense_generator = defense_generator
        self.min_nodes = min_nodes
        self.schedule = schedule or AttackSchedule()
        self.root_update = root_update
        self.keep_history = keep_history
        self._history: dict[int, Tensor] = {}
        self.report: RoundReport | None = None
        self._global: Tensor | None = None
        self._layout: Layout | None = None

    def summary(self) -> None:
        log(
            INFO,
            "DefenseStrategy: %d clients, %d per round, malicious %s, per_round=%s",
            len(self.partitions),
            self.clients_per_round,
            sorted(self.malicious_set),
            self.per_round,
        )

    # -- training ------------------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        state = to_state_dict(arrays)
        self._layout = Layout.of(state)
        self._global = self._layout.flatten(state)
        attacking = self.schedule.active(server_round)
        sample = sample_round(
            len(self.partitions),
            self.clients_per_round,
            self.malicious_set if attacking else frozenset(),
            per_round=self.per_round if attacking else None,
            generator=self.sample_generator,
        )
        self.report = RoundReport(round=server_round, sample=sample)
        # Partitions go to nodes round-robin: in the simulation there is one node per client;
        # a deployment may run fewer SuperNodes, each training several partitions in turn.
        nodes = wait_for_nodes(grid, self.min_nodes)
        attacker_rank = {p: i for i, p in enumerate(sorted(self.malicious_set))}
        messages = []
        for i, (partition, bad) in enumerate(zip(sample.partitions, sample.malicious, strict=True)):
            node = nodes[i % len(nodes)]
            content = RecordDict(
                {
                    "arrays": arrays,
                    "config": ConfigRecord(
                        {
                            "server-round": server_round,
                            "partition-id": partition,
                            "malicious": bool(bad),
                            "attacker-index": attacker_rank.get(partition, -1),
                            "indices": self.partitions[partition].tolist(),
                            "run-config": self.cfg_yaml,
                        }
                    ),
                }
            )
            messages.append(
                Message(content=content, message_type=MessageType.TRAIN, dst_node_id=node)
            )
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        assert self.report is not None
        started = time.perf_counter()
        try:
            return self._aggregate(server_round, replies)
        finally:
            self.report.aggregate_seconds = time.perf_counter() - started

    def _aggregate(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        assert self.report is not None and self._global is not None and self._layout is not None
        report, layout, global_flat = self.report, self._layout, self._global
        decoded, updates = self._decode(replies)
        partitions = [p for p, _ in decoded]
        updates, malicious, valid, bad_rows = self._attack_and_screen(
            partitions, updates, self.update_attack
        )
        bad = set(bad_rows)
        keep = [i for i in range(len(decoded)) if i not in bad]
        weights = torch.tensor([decoded[i][1] for i in keep], dtype=torch.float32)
        kept_malicious = malicious[keep]
        report.n_rejected = len(report.rejected)
        report.n_clients = len(keep)
        report.n_malicious = int(kept_malicious.sum())
        for line in report.rejected:
            log(WARNING, "round %d: rejected update from %s", server_round, line)

        if not keep:
            report.kept_previous = "no valid update"
        else:
            context = {}
            if self.keep_history:
                kept = [partitions[i] for i in keep]
                for partition, update in zip(kept, valid, strict=True):
                    if partition in self._history:
                        self._history[partition] += update
                    else:
                        self._history[partition] = update.clone()
                context["history"] = torch.stack([self._history[p] for p in kept])
            if self.root_update is not None:
                trained = self.root_update(layout.unflatten(global_flat), server_round)
                context["reference"] = layout.flatten(trained) - global_flat
            try:
                agg: Aggregate = self.defense(
                    valid, weights, generator=self.defense_generator, **context
                )
            except NotEnoughClients as exc:  # e.g. Krum with n <= 2f + 2
                report.kept_previous = str(exc)
            else:
                if agg.flagged is not None:
                    flags = agg.flagged.tolist()
                    report.detection = detection(flags, kept_malicious.tolist())
                    report.n_flagged = sum(flags)
                new_global = global_flat + self.server_lr * agg.update
                if not torch.isfinite(new_global).all():
                    report.kept_previous = "aggregate is not finite"
                else:
                    return to_record(layout.unflatten(new_global)), MetricRecord(
                        {"n-clients": report.n_clients}
                    )
        log(WARNING, "round %d: global model kept (%s)", server_round, report.kept_previous)
        return None, None

    def _decode(self, replies: Iterable[Message]) -> tuple[list[tuple[int, float]], Tensor]:
        """The round's replies as ``(partition, weight)`` pairs, sorted by partition, and the
        matching ``[n, d]`` updates (reply minus global model); broken replies are rejected
        into the round's report."""
        assert self.report is not None and self._global is not None and self._layout is not None
        report, layout = self.report, self._layout
        sample_malicious = dict(zip(report.sample.partitions, report.sample.malicious, strict=True))
        # Replies arrive in any order; aggregation must not depend on it: sort by partition.
        entries: list[tuple[int, float, Message]] = []
        for msg in replies:
            if msg.has_error():
                report.rejected.append(f"node {msg.metadata.src_node_id}: {msg.error.reason}")
                continue
            try:
                cfg = msg.content.config_records["config"]
                partition = int(cfg["partition-id"])  # type: ignore[arg-type]
                weight = float(cfg["num-examples"])  # type: ignore[arg-type]
                if partition not in sample_malicious or not weight > 0:
                    raise LayoutMismatch(f"partition {partition} / num-examples {weight}")
            except (KeyError, TypeError, ValueError) as exc:
                report.rejected.append(f"node {msg.metadata.src_node_id}: {exc}")
                continue
            entries.append((partition, weight, msg))
        entries.sort(key=lambda entry: entry[0])
        # Decode each reply straight into a row of one buffer: a round's updates can be
        # hundreds of MB, so no per-reply vectors, no stacking copy.
        buffer = torch.empty((len(entries), layout.dim), dtype=torch.float32)
        decoded: list[tuple[int, float]] = []  # (partition, weight) of buffer row i
        for partition, weight, msg in entries:
            try:
                record = msg.content.array_records["arrays"]
                flatten_record(record, layout, out=buffer[len(decoded)])
            except (KeyError, TypeError, ValueError) as exc:
                report.rejected.append(f"partition {partition}: {exc}")
                continue
            decoded.append((partition, weight))
        updates = buffer[: len(decoded)]
        updates.sub_(self._global)
        return decoded, updates

    def _attack_and_screen(
        self, partitions: list[int], updates: Tensor, update_attack: UpdateAttack
    ) -> tuple[Tensor, Tensor, Tensor, list[int]]:
        """Apply ``update_attack`` to the malicious rows of ``updates`` (one per partition),
        then reject non-finite rows into the round's report. Returns the attacked updates, the
        malicious mask, the valid rows and the indices of the rejected ones."""
        assert self.report is not None and self._layout is not None
        report = self.report
        sample_malicious = dict(zip(report.sample.partitions, report.sample.malicious, strict=True))
        malicious = torch.tensor([sample_malicious[p] for p in partitions], dtype=torch.bool)
        if malicious.any():
            updates = update_attack(updates, malicious, generator=self.attack_generator)
        valid, bad_rows, reasons = validate_stacked(updates, self._layout.dim)
        for i, reason in zip(bad_rows, reasons, strict=True):
            report.rejected.append(f"partition {partitions[i]}: {reason}")
        return updates, malicious, valid, bad_rows

    def attack_replies(
        self, replies: Iterable[Message], update_attack: UpdateAttack
    ) -> list[Message]:
        """The round's replies with the model-poisoning function ``update_attack`` applied.

        For a Flower strategy wrapper around this strategy (:class:`AttackFirst`): the wrapper
        clips the replies it receives, so the colluding attackers' step has to come before it,
        as it comes before the defense without a wrapper. Broken or non-finite replies are
        rejected here into the round's report (the wrapper would fail on them); the malicious
        clients' replies are replaced by their attacked updates; the others pass unchanged.
        """
        assert self.report is not None and self._global is not None and self._layout is not None
        report, layout = self.report, self._layout
        by_partition: dict[int, Message] = {}
        good: list[Message] = []
        for msg in replies:
            if msg.has_error():
                report.rejected.append(f"node {msg.metadata.src_node_id}: {msg.error.reason}")
                continue
            good.append(msg)
            try:
                partition = int(msg.content.config_records["config"]["partition-id"])  # type: ignore[arg-type]
            except (KeyError, TypeError, ValueError):
                continue  # _decode rejects it with the reason
            by_partition[partition] = msg
        decoded, updates = self._decode(good)
        partitions = [p for p, _ in decoded]
        updates, malicious, _, bad_rows = self._attack_and_screen(
            partitions, updates, update_attack
        )
        out = []
        for i, partition in enumerate(partitions):
            if i in bad_rows:
                continue
            msg = by_partition[partition]
            if bool(malicious[i]):
                msg.content["arrays"] = to_record(layout.unflatten(self._global + updates[i]))
            out.append(msg)
        return out


class AttackFirst(_ServerEvaluation):
    """A Flower strategy wrapper (e.g. central DP) around :class:`DefenseStrategy`, with the
    colluding attackers' step before the wrapper.

    Flower's ``DifferentialPrivacyServerSideFixedClipping`` and
    ``DifferentialPrivacyServerSideAdaptiveClipping`` clip every reply, hand the replies to the
    strategy they wrap and add noise to its result. Wrapped as such around
    :class:`DefenseStrategy`, the server-side model poisoning (model replacement's boost, ALIE,
    ...) would run after the clipping and slip past it. This outermost stage applies it to the
    replies first (:meth:`DefenseStrategy.attack_replies`), then calls the wrapper, with numpy's
    global RNG (the wrappers' noise source) seeded from the run's seed for the call and
    restored afterwards, so that a run stays reproducible.

    Parameters
    ----------
    wrapped : Strategy
        The Flower wrapper, built around ``core``.
    core : DefenseStrategy
        The strategy inside, built with ``update_attack`` = identity.
    update_attack : callable
        The attack's model-poisoning function (see :class:`DefenseStrategy`).
    seed : int
        The run's seed; round ``r`` draws numpy's global RNG from ``(seed, "flower-noise", r)``.
    """

    def __init__(
        self, wrapped: Strategy, core: DefenseStrategy, update_attack: UpdateAttack, seed: int
    ) -> None:
        self.wrapped = wrapped
        self.core = core
        self.update_attack = update_attack
        self.seed = seed

    def summary(self) -> None:
        log(INFO, "AttackFirst: server-side attack before %r", self.wrapped)
        self.wrapped.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.wrapped.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        started = time.perf_counter()
        attacked = self.core.attack_replies(replies, self.update_attack)
        try:
            if not attacked:  # Flower's wrappers cannot aggregate nothing
                assert self.core.report is not None
                self.core.report.n_rejected = len(self.core.report.rejected)
                self.core.report.kept_previous = "no valid update"
                log(WARNING, "round %d: global model kept (no valid update)", server_round)
                return None, None
            with seeded_numpy_global(self.seed, "flower-noise", server_round):
                return self.wrapped.aggregate_train(server_round, attacked)
        finally:
            if self.core.report is not None:
                self.core.report.aggregate_seconds = time.perf_counter() - started


def wait_for_nodes(grid: Grid, needed: int, poll: float = 0.05) -> list[int]:
    """All connected node ids (sorted), once at least ``needed`` are connected."""
    last_log = -math.inf
    while len(nodes := sorted(grid.get_node_ids())) < needed:
        if time.monotonic() - last_log > 10.0:
            log(INFO, "waiting for nodes: %d connected, %d needed", len(nodes), needed)
            last_log = time.monotonic()
        time.sleep(poll)
    return nodes

"""The server's step of one round, Flower-free: the global model and the round's client updates
in, the new global model and the round's record out.

Order of the step (the threat model the harness simulates):

1. the colluding attackers' server-side model poisoning (:mod:`fedbackdoor.attacks._contract`:
   model replacement's boost, ALIE, ...) replaces the malicious rows of the stacked updates;
2. updates (or buffers) holding NaN or infinities are rejected and named in the record;
3. the defense (:class:`~fedbackdoor.defenses.pipeline.Defense`) aggregates the rest; a rule whose
   precondition fails this round (:class:`~fedbackdoor.defenses.base.NotEnoughClients`)
   skips the round: the global model stays, and the record says why;
4. the global parameters move by ``server_lr`` times the aggregate; a non-finite result is not
   applied (the round is skipped, and said so).

**Updates are parameter deltas** (:mod:`fedbackdoor.fl.arrays`); attacks and defenses never see
buffers. **Buffers** (BatchNorm's running mean and variance, ``num_batches_tracked``) are set to
the sample-weighted mean of the values reported by the clients the rule kept: those with a
non-zero influence (Krum's selection, FLAME's admitted cluster, ...), else the unflagged ones,
else every valid client. Integer buffers are rounded. The boost of model replacement does not
touch them. ``server_lr`` does not apply to buffers: they are statistics, not a descent
direction.

**Malicious influence** of a round is the share of the aggregate's weight that came from
malicious updates, ``Aggregate.influence[malicious].sum()`` (each rule defines its influence
vector: sample shares for FedAvg, selection shares for Krum, the share of coordinates taken from
a row for the coordinate-wise rules, trust weights for FoolsGold/FLTrust).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from fedbackdoor.defenses.base import Aggregate, NotEnoughClients
from fedbackdoor.defenses.pipeline import Defense
from fedbackdoor.metrics import Detection, detection
from fedbackdoor.round_context import RoundContext, ServerResources, StandInContext

__all__ = [
    "RoundRecord",
    "ServerStep",
    "check_rule_runs",
    "validate_stacked",
    "weighted_buffers",
]

UpdateAttack = Callable[..., Tensor]


@dataclass
class RoundRecord:
    """What happened on the server in one round (one row of ``metrics.csv`` with the
    evaluation)."""

    round: int
    n_clients: int = 0  # valid updates that reached the defense
    n_malicious: int = 0  # malicious among those
    rejected: list[str] = field(default_factory=list)
    detection: Detection | None = None  # for rules that classify clients
    n_flagged: int | None = None
    #: Share of the aggregate's weight that came from malicious updates (None: no aggregate).
    influence: float | None = None
    #: Why the global model was not updated this round (None: it was).
    skipped: str | None = None
    aggregate_seconds: float = 0.0

    @property
    def n_rejected(self) -> int:
        return len(self.rejected)


def weighted_buffers(buffers: Tensor, weights: Tensor) -> Tensor:
    """The sample-weighted mean of the clients' buffer vectors ``[n, b]`` (float64)."""
    share = weights.to(torch.float64) / weights.to(torch.float64).sum()
    return share @ buffers.to(torch.float64)


@dataclass
class ServerStep:
    """The server's round: attack, screen, defend, apply (see the module notes).

    Attributes
    ----------
    defense : Defense
        The aggregation pipeline (it keeps its own state across rounds).
    update_attack : callable
        ``(updates, malicious, *, weights, generator) -> updates``; the identity for data-only
        attacks.
    server_lr : float
        The global parameters move by ``server_lr`` times the aggregate.
    attack_generator, defense_generator : torch.Generator
        The run's random streams of the attack and of the defense.
    resources : ServerResources, optional
        What the server lends defenses that ask for a ``context``
        (:class:`~fedbackdoor.round_context.RoundContext`: the global model, server data, a
        server training step); ``None``: contexts without them.
    """

    defense: Defense
    update_attack: UpdateAttack
    server_lr: float
    attack_generator: torch.Generator
    defense_generator: torch.Generator
    resources: ServerResources | None = None
    #: The context built every round (benchmarks pass :class:`StandInContext`).
    context_class: type[RoundContext] = RoundContext

    def __call__(
        self,
        global_params: Tensor,
        global_buffers: Tensor,
        updates: Tensor,
        buffers: Tensor,
        weights: Tensor,
        malicious: Tensor,
        *,
        round: int,
        clients: Sequence[int],
        rejected: Sequence[str] = (),
    ) -> tuple[Tensor, Tensor, RoundRecord]:
        """Run the server's step of round ``round``.

        Parameters
        ----------
        global_params : Tensor
            ``[d]`` float32, the global model's trainable parameters.
        global_buffers : Tensor
            ``[b]`` float64, its buffers (``b`` may be 0).
        updates : Tensor
            ``[n, d]`` float32 client updates (parameter deltas), in ``clients`` order. May be
            modified in place by the attack step's callers; not kept.
        buffers : Tensor
            ``[n, b]`` the clients' buffer values (not deltas).
        weights : Tensor
            ``[n]`` sample counts, ``> 0``.
        malicious : Tensor
            ``[n]`` bool: which rows come from malicious clients that attack this round.
        round : int
            The round number (``>= 1``).
        clients : sequence of int
            The clients' ids (partition ids), for the record and the history.
        rejected : sequence of str
            Replies already rejected while decoding (named in the record).

        Returns
        -------
        (params, buffers, record)
            The new global parameters ``[d]`` and buffers ``[b]`` (the old ones if the round
            was skipped) and the round's :class:`RoundRecord`.
        """
        started = time.perf_counter()
        record = RoundRecord(round=round, rejected=list(rejected))
        try:
            return self._step(
                record,
                global_params,
                global_buffers,
                updates,
                buffers,
                weights,
                malicious,
                clients,
            )
        finally:
            record.aggregate_seconds = time.perf_counter() - started

    def _step(
        self,
        record: RoundRecord,
        global_params: Tensor,
        global_buffers: Tensor,
        updates: Tensor,
        buffers: Tensor,
        weights: Tensor,
        malicious: Tensor,
        clients: Sequence[int],
    ) -> tuple[Tensor, Tensor, RoundRecord]:
        n = updates.shape[0]
        if not (len(clients) == n == buffers.shape[0] == weights.shape[0] == malicious.shape[0]):
            raise ValueError(
                f"{n} updates, {buffers.shape[0]} buffer rows, {weights.shape[0]} weights, "
                f"{malicious.shape[0]} flags and {len(clients)} clients must agree"
            )
        if bool(malicious.any()):
            updates = self.update_attack(
                updates, malicious, weights=weights, generator=self.attack_generator
            )
        valid, bad_rows, reasons = validate_stacked(updates, global_params.shape[0])
        bad = dict(zip(bad_rows, reasons, strict=True))
        if buffers.shape[1]:
            for i in torch.nonzero(~torch.isfinite(buffers).all(dim=1)).flatten().tolist():
                bad.setdefault(i, "non-finite buffers (nan/inf)")
        if len(bad) > len(bad_rows):  # rows rejected for their buffers only
            keep_mask = torch.ones(n, dtype=torch.bool)
            keep_mask[list(bad)] = False
            valid = updates[keep_mask]
        for i in sorted(bad):
            record.rejected.append(f"client {clients[i]}: {bad[i]}")
        keep = [i for i in range(n) if i not in bad]
        kept_clients = [clients[i] for i in keep]
        weights, malicious, buffers = weights[keep], malicious[keep], buffers[keep]
        record.n_clients = len(keep)
        record.n_malicious = int(malicious.sum())
        if not keep:
            record.skipped = "no valid update"
            return global_params, global_buffers, record

        context = self.context_class(
            round=record.round,
            clients=tuple(kept_clients),
            global_params=global_params,
            global_buffers=global_buffers,
            resources=self.resources,
        )
        try:
            agg: Aggregate = self.defense(
                valid, weights, generator=self.defense_generator, context=context
            )
        except NotEnoughClients as exc:  # e.g. Krum with n <= 2f + 2 after rejections
            record.skipped = str(exc)
            return global_params, global_buffers, record
        if agg.flagged is not None:
            flags = agg.flagged.tolist()
            record.detection = detection(flags, malicious.tolist())
            record.n_flagged = sum(flags)
        if agg.influence is not None:
            record.influence = float(agg.influence.to(torch.float64)[malicious].sum())
        new_params = global_params + self.server_lr * agg.update
        if not bool(torch.isfinite(new_params).all()):
            record.skipped = "aggregate is not finite"
            return global_params, global_buffers, record
        new_buffers = global_buffers
        if buffers.shape[1]:
            new_buffers = weighted_buffers(*_kept(agg, buffers, weights))
        return new_params, new_buffers, record


def _kept(agg: Aggregate, buffers: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
    """The buffers and weights of the clients the rule kept: those with a non-zero influence
    (selection and filtering rules), else the unflagged ones, else everybody."""
    kept = torch.ones(len(weights), dtype=torch.bool)
    if agg.influence is not None and bool((agg.influence > 0).any()):
        kept = (agg.influence > 0).cpu()
    elif agg.flagged is not None and not bool(agg.flagged.all()):
        kept = ~agg.flagged.cpu()
    return buffers[kept], weights[kept]


def validate_stacked(updates: Tensor, expected_dim: int) -> tuple[Tensor, list[int], list[str]]:
    """Screen the round's updates, stacked in one float32 ``[n, d]`` tensor (shapes and dtypes
    were checked while decoding): rejects the rows holding NaN or infinite
    values. Returns ``updates`` itself when every row is valid (no copy).
    """
    if updates.dim() != 2 or updates.shape[1] != expected_dim:
        raise ValueError(f"updates must be [n, {expected_dim}], got {tuple(updates.shape)}")
    if updates.dtype != torch.float32:
        raise ValueError(f"updates must be float32, got {updates.dtype}")
    # A row sum is NaN or infinite if the row holds a NaN or an inf (or if finite values
    # overflow when added up): a cheap screen (20x faster than isfinite over all of [n, d]),
    # then the exact test on the rows it catches.
    finite = torch.isfinite(updates.sum(dim=1))
    if bool(finite.all()):
        return updates, [], []
    for i in torch.nonzero(~finite).flatten().tolist():
        finite[i] = bool(torch.isfinite(updates[i]).all())
    if bool(finite.all()):
        return updates, [], []
    rejected = torch.nonzero(~finite).flatten().tolist()
    reasons = [
        f"{int((~torch.isfinite(updates[i])).sum())} non-finite values (nan/inf)" for i in rejected
    ]
    return updates[finite], rejected, reasons


def check_rule_runs(defense: Defense, n: int, *, keys: str) -> None:
    """Stop at start, with one line, if ``defense`` can never aggregate ``n`` updates.

    Runs the pipeline once on ``n`` random 64-dimensional updates (with a stand-in context
    whose server data and server update are random) and turns :class:`NotEnoughClients` into a
    ``ValueError`` that names ``keys`` (e.g. ``clients_per_round=10``) beside the rule's own
    requirement. ``defense`` should be a fresh pipeline: a rule that keeps state would keep the
    trial's.
    """
    generator = torch.Generator().manual_seed(0)
    updates = torch.randn(n, 64, generator=generator)
    context = StandInContext.for_round(n, 64)
    try:
        defense(updates, torch.ones(n), generator=generator, context=context)
    except NotEnoughClients as exc:
        raise ValueError(f"the defense cannot run with {keys}: {exc}") from None

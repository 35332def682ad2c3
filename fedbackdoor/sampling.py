"""Who takes part in a round, and who among them is malicious.

Two threat models from the literature:

* a **fixed malicious set**: ``fraction * num_clients`` clients (rounded half up), drawn from the
  seed, are malicious for the whole run and are sampled like everyone else (FLPoison, BackFed);
* an **exact number per round**: every round's sample holds exactly ``per_round`` malicious
  clients drawn from that set, as in the model-replacement experiments of Bagdasaryan et al.,
  "How To Backdoor Federated Learning", AISTATS 2020.

Flower samples nodes with the global ``random`` module and node ids change per run, so the
server samples *partitions* here with its own generator and then hands them to nodes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import torch


@dataclass(frozen=True)
class RoundSample:
    """The partitions that train in a round (sorted) and which of them are malicious."""

    partitions: tuple[int, ...]
    malicious: tuple[bool, ...]

    @property
    def num_malicious(self) -> int:
        return sum(self.malicious)


@dataclass(frozen=True)
class AttackSchedule:
    """The rounds in which the malicious clients attack; in the others they train honestly.

    ``start_round <= round <= end_round`` (``end_round=None``: to the end) and every ``every``-th
    round from ``start_round``. ``start_round == end_round`` is a single-shot attack, as in the
    durability studies of Bagdasaryan et al. 2020 (does the backdoor survive once the attack
    stops?).
    """

    start_round: int = 1
    end_round: int | None = None
    every: int = 1

    def __post_init__(self) -> None:
        if self.start_round < 1:
            raise ValueError(f"attack.start_round={self.start_round} must be >= 1")
        if self.end_round is not None and self.end_round < self.start_round:
            raise ValueError(
                f"attack.end_round={self.end_round} must be >= attack.start_round="
                f"{self.start_round} (or null)"
            )
        if self.every < 1:
            raise ValueError(f"attack.every={self.every} must be >= 1")

    def active(self, server_round: int) -> bool:
        """Whether the attack runs in ``server_round``."""
        if server_round < self.start_round:
            return False
        if self.end_round is not None and server_round > self.end_round:
            return False
        return (server_round - self.start_round) % self.every == 0


def malicious_count(num_clients: int, fraction: float) -> int:
    """The number of malicious clients: ``fraction * num_clients`` rounded half up, exactly.

    The product is taken on the decimal the user wrote, not on its binary approximation:
    ``fraction`` is read back through ``repr`` (the shortest decimal that round-trips, e.g.
    ``0.29``) into a :class:`fractions.Fraction`. In floating point ``0.29 * 50`` is
    ``14.499999999999998`` and ``floor(x + 0.5)`` gives 14; the exact product is 14.5, which
    rounds half up to 15. Halves always go up (0.5 client -> 1, 1.5 -> 2), unlike Python's
    ``round``, which sends them to the even integer (0.5 -> 0, 1.5 -> 2).

    Parameters
    ----------
    num_clients : int
        Size of the federation, ``>= 0``.
    fraction : float
        Share of malicious clients (``attack.fraction``), in ``[0, 1]``.

    Returns
    -------
    int
        ``floor(F * num_clients + 1/2)`` in exact rational arithmetic, ``F`` the decimal value
        of ``fraction``; between 0 and ``num_clients``.

    Raises
    ------
    ValueError
        If ``num_clients`` is not an integer ``>= 0`` or ``fraction`` not a number in ``[0, 1]``.
    """
    if isinstance(num_clients, bool) or not isinstance(num_clients, int) or num_clients < 0:
        raise ValueError(f"num_clients={num_clients!r} must be an integer >= 0")
    if isinstance(fraction, bool) or not isinstance(fraction, int | float):
        raise ValueError(f"attack.fraction={fraction!r} must be a number in [0, 1]")
    if not 0.0 <= fraction <= 1.0:  # also rejects nan
        raise ValueError(f"attack.fraction={fraction!r} must be in [0, 1]")
    exact = Fraction(repr(float(fraction))) * num_clients
    return math.floor(exact + Fraction(1, 2))


def choose_malicious(
    num_clients: int, fraction: float, *, generator: torch.Generator
) -> frozenset[int]:
    """The fixed malicious set: :func:`malicious_count` distinct client ids."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"attack.fraction={fraction} must be in [0, 1]")
    count = malicious_count(num_clients, fraction)
    return frozenset(torch.randperm(num_clients, generator=generator)[:count].tolist())


def sample_round(
    num_clients: int,
    clients_per_round: int,
    malicious_set: frozenset[int],
    *,
    per_round: int | None,
    generator: torch.Generator,
) -> RoundSample:
    """Draw one round's participants.

    Parameters
    ----------
    num_clients, clients_per_round : int
        Population and sample size (``1 <= clients_per_round <= num_clients``).
    malicious_set : frozenset of int
        The fixed malicious clients.
    per_round : int or None
        ``None``: sample uniformly from everyone. An int ``m``: exactly ``m`` of the sample are
        drawn from ``malicious_set`` and the rest from the benign clients.
    generator : torch.Generator
        The run's sampling stream.
    """
    if not 1 <= clients_per_round <= num_clients:
        raise ValueError(
            f"clients_per_round={clients_per_round} must be in [1, num_clients={num_clients}]"
        )
    if per_round is None:
        chosen = torch.randperm(num_clients, generator=generator)[:clients_per_round].tolist()
    else:
        bad = sorted(malicious_set)
        good = [c for c in range(num_clients) if c not in malicious_set]
        if not 0 <= per_round <= min(len(bad), clients_per_round):
            raise ValueError(
                f"attack.per_round={per_round} must be in [0, min(malicious clients={len(bad)}, "
                f"clients_per_round={clients_per_round})]"
            )
        if clients_per_round - per_round > len(good):
            raise ValueError(
                f"clients_per_round={clients_per_round} needs {clients_per_round - per_round} "
                f"benign clients but only {len(good)} exist"
            )
        pick_bad = torch.randperm(len(bad), generator=generator)[:per_round].tolist()
        pick_good = torch.randperm(len(good), generator=generator)[
            : clients_per_round - per_round
        ].tolist()
        chosen = [bad[i] for i in pick_bad] + [good[i] for i in pick_good]
    partitions = tuple(sorted(int(c) for c in chosen))
    return RoundSample(partitions, tuple(p in malicious_set for p in partitions))

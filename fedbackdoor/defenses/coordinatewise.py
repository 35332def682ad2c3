"""Coordinate-wise rules: each coordinate of the aggregate from that coordinate's values alone.

- :func:`median` and :func:`trimmed_mean` -- Yin, Chen, Ramchandran & Bartlett (2018),
  "Byzantine-Robust Distributed Learning: Towards Optimal Statistical Rates", ICML.

The rules follow the contract of :mod:`fedbackdoor.defenses.base`. Sorting the ``[n, d]``
updates column by column is their one pass over ``d`` (see
:func:`fedbackdoor.defenses._linalg.sorted_columns`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fedbackdoor.defenses._linalg import median_and_influence, sorted_columns, window_influence
from fedbackdoor.defenses.base import (
    Aggregate,
    NotEnoughClients,
    _check_inputs,
    _is_real,
    _require_clients,
)

__all__ = ["median", "trimmed_mean"]


def median(
    updates: Tensor, weights: Tensor, *, generator: torch.Generator | None = None
) -> Aggregate:
    """Coordinate-wise median of the updates (Yin et al. 2018).

    For an even number of clients each coordinate is the average of the two middle values
    (``torch.quantile(..., 0.5)`` semantics), not the lower one returned by ``torch.median``,
    so the result does not depend on an arbitrary side. Weights are validated but not used.

    Influence: per coordinate, the row giving the median gets 1 (odd ``n``), or the two rows
    giving the middle pair 1/2 each (even ``n``); averaged over the coordinates, so
    ``influence_i`` is the share of the coordinates whose median came from row ``i``. Equal
    values are told apart by their position in a stable sort (the lower client index first):
    a tie moves credit between clients, never the aggregate.

    Parameters
    ----------
    updates : Tensor
        Client updates, shape ``[n, d]``, floating point.
    weights : Tensor
        Sample counts, shape ``[n]``, all ``> 0`` (unused by the rule).

    Returns
    -------
    Aggregate
        The coordinate-wise median; ``flagged`` is ``None``; ``influence`` as above.

    Raises
    ------
    NotEnoughClients
        If ``n == 0``.
    """
    n = _check_inputs("median", updates, weights)
    _require_clients("median", n)
    # Sort-based rather than torch.quantile, which refuses inputs above 2**24 elements.
    update, influence = median_and_influence(updates)
    return Aggregate(update=update, flagged=None, influence=influence)


def trimmed_mean(
    updates: Tensor, weights: Tensor, *, beta: float, generator: torch.Generator | None = None
) -> Aggregate:
    """Coordinate-wise beta-trimmed mean of the updates (Yin et al. 2018).

    In every coordinate the ``k = floor(beta * n)`` largest and ``k`` smallest values are
    dropped and the remaining ``n - 2k`` are averaged without weights.

    Influence: per coordinate each of the ``n - 2k`` kept values counts ``1 / (n - 2k)``,
    averaged over the coordinates: ``influence_i`` is the share of the coordinates in which
    row ``i`` was kept, divided by ``n - 2k``. Equal values are told apart by their position
    in a stable sort (the lower client index first).

    Parameters
    ----------
    updates : Tensor
        Client updates, shape ``[n, d]``, floating point.
    weights : Tensor
        Sample counts, shape ``[n]``, all ``> 0`` (unused by the rule).
    beta : float
        Fraction trimmed from each end, ``0 <= beta < 0.5``.

    Returns
    -------
    Aggregate
        The trimmed mean; ``flagged`` is ``None`` (each coordinate trims different clients);
        ``influence`` as above.

    Raises
    ------
    ValueError
        If ``beta`` is outside ``[0, 0.5)``.
    NotEnoughClients
        If no value remains after trimming, ``n - 2 floor(beta n) < 1`` (for ``beta < 0.5``
        only possible for ``n == 0``).
    """
    if not _is_real(beta) or not 0 <= beta < 0.5:
        raise ValueError(f"trimmed_mean: beta must be a number in [0, 0.5), got beta={beta!r}")
    n = _check_inputs("trimmed_mean", updates, weights)
    # The small tolerance keeps e.g. beta=0.29, n=100 at k=29 although 0.29*100 < 29 in floats.
    k = math.floor(beta * n + 1e-9)
    kept = n - 2 * k
    if kept <= 0:
        raise NotEnoughClients(
            f"trimmed_mean needs n - 2 floor(beta * n) >= 1 clients left after trimming "
            f"k={k} from each end, got n={n} (beta={beta})"
        )
    ordered = sorted_columns(updates)
    return Aggregate(
        update=ordered[k : n - k].mean(dim=0),
        flagged=None,
        influence=window_influence(updates, ordered, k, n - k),
    )

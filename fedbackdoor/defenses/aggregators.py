"""Server-side aggregation rules: pure functions over a stacked tensor of client updates.

Every rule has the signature ``rule(updates, weights, **settings) -> Aggregate`` where
``updates`` is ``Tensor[n, d]`` (one flattened model update per row) and ``weights`` is
``Tensor[n]`` (the clients' sample counts, all ``> 0``). Settings are keyword-only and validated
before any computation; a precondition on the number of clients ``n`` raises
:class:`NotEnoughClients`, so a caller can keep the previous model for that round while still
letting a mis-configured setting (a plain ``ValueError``) fail loudly.

Implemented rules
-----------------
- :func:`mean` -- FedAvg: McMahan, Moore, Ramage, Hampson & Agüera y Arcas (2017),
  "Communication-Efficient Learning of Deep Networks from Decentralized Data", AISTATS.
- :func:`median` and :func:`trimmed_mean` -- Yin, Chen, Ramchandran & Bartlett (2018),
  "Byzantine-Robust Distributed Learning: Towards Optimal Statistical Rates", ICML.
- :func:`krum` (Krum and Multi-Krum) -- Blanchard, El Mhamdi, Guerraoui & Stainer (2017),
  "Machine Learning with Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS; and
  El Mhamdi, Guerraoui & Rouault (2018), "The Hidden Vulnerability of Distributed Learning in
  Byzantium", ICML.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real

import torch
from torch import Tensor

__all__ = [
    "Aggregate",
    "NotEnoughClients",
    "krum",
    "krum_scores",
    "mean",
    "median",
    "pairwise_squared_distances",
    "trimmed_mean",
]


class NotEnoughClients(ValueError):
    """A rule's precondition on the number of clients ``n`` does not hold this round.

    Subclasses ``ValueError``; callers that want to skip the round (keep the previous model)
    should catch this class specifically, so that invalid settings still propagate.
    """


@dataclass(frozen=True)
class Aggregate:
    """The result of an aggregation rule.

    Attributes
    ----------
    update : Tensor
        The aggregated update, shape ``[d]``.
    flagged : Tensor or None
        Boolean mask of shape ``[n]``: ``True`` for clients the rule excluded or distrusted.
        ``None`` for rules that flag nobody by design (mean, median, trimmed mean), which is
        different from "flagged nobody this round" (an all-``False`` mask).
    """

    update: Tensor
    flagged: Tensor | None


# --------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------


def _is_int(value: object) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _check_inputs(rule: str, updates: Tensor, weights: Tensor) -> int:
    """Validate the common ``(updates, weights)`` contract and return ``n``."""
    if not isinstance(updates, Tensor) or updates.dim() != 2:
        shape = tuple(updates.shape) if isinstance(updates, Tensor) else type(updates).__name__
        raise ValueError(f"{rule}: updates must be a 2-D tensor [n, d], got {shape}")
    if not updates.is_floating_point():
        raise ValueError(f"{rule}: updates must be floating point, got {updates.dtype}")
    n = updates.shape[0]
    if not isinstance(weights, Tensor) or tuple(weights.shape) != (n,):
        shape = tuple(weights.shape) if isinstance(weights, Tensor) else type(weights).__name__
        raise ValueError(f"{rule}: weights must have shape ({n},) to match updates, got {shape}")
    if n > 0 and not bool(torch.all(torch.isfinite(weights) & (weights > 0))):
        raise ValueError(f"{rule}: weights must be finite and > 0, got {weights.tolist()}")
    return n


def _require_clients(rule: str, n: int) -> None:
    if n == 0:
        raise NotEnoughClients(f"{rule} needs at least one client update, got n=0")


# --------------------------------------------------------------------------------------------
# Rules
# --------------------------------------------------------------------------------------------


def mean(updates: Tensor, weights: Tensor) -> Aggregate:
    """Sample-weighted mean of the updates (FedAvg, McMahan et al. 2017).

    Parameters
    ----------
    updates : Tensor
        Client updates, shape ``[n, d]``, floating point.
    weights : Tensor
        Sample counts, shape ``[n]``, all ``> 0``.

    Returns
    -------
    Aggregate
        ``update = sum_i w_i x_i / sum_i w_i``; ``flagged`` is ``None``.

    Raises
    ------
    NotEnoughClients
        If ``n == 0``.
    """
    n = _check_inputs("mean", updates, weights)
    _require_clients("mean", n)
    # Normalise in float64 so that large sample counts do not lose precision.
    share = (weights.to(torch.float64) / weights.to(torch.float64).sum()).to(updates.dtype)
    return Aggregate(update=share @ updates, flagged=None)


def _sorted_columns(updates: Tensor) -> Tensor:
    return torch.sort(updates, dim=0).values


def median(updates: Tensor, weights: Tensor) -> Aggregate:
    """Coordinate-wise median of the updates (Yin et al. 2018).

    For an even number of clients each coordinate is the average of the two middle values
    (``torch.quantile(..., 0.5)`` semantics), not the lower one returned by ``torch.median``,
    so the result does not depend on an arbitrary side. Weights are validated but not used.

    Parameters
    ----------
    updates : Tensor
        Client updates, shape ``[n, d]``, floating point.
    weights : Tensor
        Sample counts, shape ``[n]``, all ``> 0`` (unused by the rule).

    Returns
    -------
    Aggregate
        The coordinate-wise median; ``flagged`` is ``None``.

    Raises
    ------
    NotEnoughClients
        If ``n == 0``.
    """
    n = _check_inputs("median", updates, weights)
    _require_clients("median", n)
    # Sort-based rather than torch.quantile, which refuses inputs above 2**24 elements.
    ordered = _sorted_columns(updates)
    middle = n // 2
    if n % 2 == 1:
        return Aggregate(update=ordered[middle], flagged=None)
    return Aggregate(update=(ordered[middle - 1] + ordered[middle]) / 2, flagged=None)


def trimmed_mean(updates: Tensor, weights: Tensor, *, beta: float) -> Aggregate:
    """Coordinate-wise beta-trimmed mean of the updates (Yin et al. 2018).

    In every coordinate the ``k = floor(beta * n)`` largest and ``k`` smallest values are
    dropped and the remaining ``n - 2k`` are averaged without weights.

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
        The trimmed mean; ``flagged`` is ``None`` (each coordinate trims different clients).

    Raises
    ------
    ValueError
        If ``beta`` is outside ``[0, 0.5)``.
    NotEnoughClients
        If no value remains after trimming (only possible for ``n == 0``).
    """
    if not _is_real(beta) or not 0 <= beta < 0.5:
        raise ValueError(f"trimmed_mean: beta must be a number in [0, 0.5), got beta={beta!r}")
    n = _check_inputs("trimmed_mean", updates, weights)
    # The small tolerance keeps e.g. beta=0.29, n=100 at k=29 although 0.29*100 < 29 in floats.
    k = math.floor(beta * n + 1e-9)
    kept = n - 2 * k
    if kept <= 0:
        raise NotEnoughClients(
            f"trimmed_mean: nothing remains after trimming k={k} from each end of n={n} "
            f"updates (beta={beta})"
        )
    return Aggregate(update=_sorted_columns(updates)[k : n - k].mean(dim=0), flagged=None)


def pairwise_squared_distances(updates: Tensor) -> Tensor:
    """Squared Euclidean distances between all pairs of updates.

    Parameters
    ----------
    updates : Tensor
        Client updates, shape ``[n, d]``, floating point.

    Returns
    -------
    Tensor
        Float64 matrix ``D`` of shape ``[n, n]`` with ``D[i, j] = ||x_i - x_j||^2``.
    """
    # cdist without the matrix-product shortcut: the ||x||^2 + ||y||^2 - 2xy form cancels to
    # zero when two updates are close relative to their norms (e.g. a shared large offset),
    # which is exactly where Krum has to tell clients apart. The direct form is also faster
    # on CPU for the small n of federated rounds.
    distances = torch.cdist(updates, updates, p=2.0, compute_mode="donot_use_mm_for_euclid_dist")
    return distances.to(torch.float64).square()


def krum_scores(updates: Tensor, *, f: int) -> Tensor:
    """Krum score of every update (Blanchard et al. 2017).

    ``score_i`` is the sum of squared distances from ``x_i`` to its ``n - f - 2`` nearest
    neighbours among the other updates.

    Parameters
    ----------
    updates : Tensor
        Client updates, shape ``[n, d]``, with ``n > 2f + 2``.
    f : int
        Assumed number of Byzantine clients, ``>= 0``.

    Returns
    -------
    Tensor
        Float64 scores, shape ``[n]``; lower means more central.
    """
    n = updates.shape[0]
    neighbours = n - f - 2
    distances = pairwise_squared_distances(updates)
    distances.fill_diagonal_(math.inf)  # a client is not its own neighbour
    nearest = torch.topk(distances, k=neighbours, dim=1, largest=False).values
    return nearest.sum(dim=1)


def krum(updates: Tensor, weights: Tensor, *, f: int, m: int = 1) -> Aggregate:
    """Krum / Multi-Krum (Blanchard et al. 2017; El Mhamdi et al. 2018).

    Scores every update with :func:`krum_scores`, selects the ``m`` lowest scores (ties broken
    by the lower client index) and returns the unweighted mean of the selected updates.
    ``m = 1`` is Krum; ``m > 1`` is Multi-Krum.

    Parameters
    ----------
    updates : Tensor
        Client updates, shape ``[n, d]``, floating point.
    weights : Tensor
        Sample counts, shape ``[n]``, all ``> 0`` (unused by the rule).
    f : int
        Assumed number of Byzantine clients, ``>= 0``.
    m : int, default 1
        Number of updates selected and averaged, ``>= 1``.

    Returns
    -------
    Aggregate
        The mean of the selected updates; ``flagged`` marks the clients *not* selected.

    Raises
    ------
    ValueError
        If ``f`` is not an integer ``>= 0`` or ``m`` is not an integer ``>= 1``.
    NotEnoughClients
        If ``n <= 2f + 2`` (Krum's guarantee needs ``n > 2f + 2``) or ``n < m``.
    """
    if not _is_int(f) or f < 0:
        raise ValueError(f"krum: f must be an integer >= 0, got f={f!r}")
    if not _is_int(m) or m < 1:
        raise ValueError(f"krum: m must be an integer >= 1, got m={m!r}")
    n = _check_inputs("krum", updates, weights)
    if n <= 2 * f + 2:
        raise NotEnoughClients(f"krum needs n > 2f + 2 clients, got n={n}, f={f}")
    if n < m:
        raise NotEnoughClients(f"krum cannot select m={m} of n={n} updates (f={f})")
    scores = krum_scores(updates, f=int(f))
    order = torch.sort(scores, stable=True).indices
    selected = order[:m]
    flagged = torch.ones(n, dtype=torch.bool, device=updates.device)
    flagged[selected] = False
    return Aggregate(update=updates[selected].mean(dim=0), flagged=flagged)

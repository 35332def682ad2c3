"""FedAvg's sample-weighted mean: the undefended baseline.

McMahan, Moore, Ramage, Hampson & Agüera y Arcas (2017), "Communication-Efficient Learning of
Deep Networks from Decentralized Data", AISTATS. The rule follows the contract of
:mod:`fedbackdoor.defenses.base`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fedbackdoor.defenses._linalg import combine
from fedbackdoor.defenses.base import Aggregate, _check_inputs, _require_clients, _sample_shares

__all__ = ["mean"]


def mean(
    updates: Tensor, weights: Tensor, *, generator: torch.Generator | None = None
) -> Aggregate:
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
        ``update = sum_i w_i x_i / sum_i w_i``; ``flagged`` is ``None``; ``influence`` the
        sample shares ``w_i / sum_j w_j``.

    Raises
    ------
    NotEnoughClients
        If ``n == 0``.
    """
    n = _check_inputs("mean", updates, weights)
    _require_clients("mean", n)
    # Normalise in float64 so that large sample counts do not lose precision.
    share = _sample_shares(weights)
    return Aggregate(update=combine(updates, share), flagged=None, influence=share)

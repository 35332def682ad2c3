"""The geometric median of the updates (RFA).

Pillutla, Kakade & Harchaoui (2022), "Robust Aggregation for Federated Learning", IEEE
Transactions on Signal Processing. The rule follows the contract of
:mod:`fedbackdoor.defenses.base`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fedbackdoor.defenses._linalg import (
    centred_gram,
    combine,
    coordinate_median,
    median_and_influence,
    squared_distances_to,
)
from fedbackdoor.defenses.base import (
    Aggregate,
    _check_inputs,
    _is_int,
    _is_real,
    _require_clients,
    _sample_shares,
)

__all__ = ["geometric_median"]


def geometric_median(
    updates: Tensor,
    weights: Tensor,
    *,
    max_iter: int = 100,
    eps: float = 1e-6,
    tol: float = 1e-7,
    generator: torch.Generator | None = None,
) -> Aggregate:
    """Weighted geometric median by the smoothed Weiszfeld algorithm (RFA, Pillutla et al. 2022).

    Approximately minimises ``g(v) = sum_i a_i ||v - x_i||`` with ``a_i = w_i / sum_j w_j``.
    Every iteration sets ``v <- sum_i b_i x_i / sum_i b_i`` with
    ``b_i = a_i / max(eps, ||v - x_i||)``, and the loop stops once the (smoothed) gradient
    ``||sum_i b_i (x_i - v)||`` -- the norm of the weighted mean of the unit vectors from ``v``
    to the updates -- is at most ``tol``, or after ``max_iter`` iterations.

    Two choices differ from the paper's pseudo-code, not from its fixed point. The iterations
    start from the coordinate-wise median (see
    :func:`~fedbackdoor.defenses.coordinatewise.median`) rather than from the weighted mean,
    which ``f < n/2`` huge outliers drag far away and from where Weiszfeld needs dozens of
    iterations to crawl back. And the stopping rule is the gradient above rather than a
    relative decrease of ``g``, which huge outliers dominate so that it would stop early.

    Since ``v`` stays a combination of the updates, the iterations run on ``n`` coefficients and
    the ``[n, n]`` Gram matrix of the updates; ``d`` only enters twice, to build the Gram matrix
    and to form the result.

    Influence: the final Weiszfeld coefficients ``b_i / sum_j b_j``, of which the result is
    the convex combination ``sum_i (b_i / sum_j b_j) x_i``. Should the loop stop before the
    first step (the coordinate-wise median already meets ``tol``), the result is that median
    and the influence the median's (see
    :func:`~fedbackdoor.defenses.coordinatewise.median`).

    Parameters
    ----------
    updates : Tensor
        Client updates, shape ``[n, d]``, floating point.
    weights : Tensor
        Sample counts, shape ``[n]``, all ``> 0``: the weights ``a_i`` of the objective.
    max_iter : int, default 100
        Maximum number of Weiszfeld iterations, ``>= 1``.
    eps : float, default 1e-6
        Smoothing ``nu > 0`` of the paper, in the units of the update norm: distances below it
        count as ``eps``, so that an iterate on top of an update cannot divide by zero.
    tol : float, default 1e-7
        Gradient norm at which the loop stops, ``>= 0`` (scale-free: it lies in ``[0, 1]``).

    Returns
    -------
    Aggregate
        The geometric median; ``flagged`` is ``None`` (every update keeps a weight);
        ``influence`` as above.

    Raises
    ------
    ValueError
        If ``max_iter`` is not an integer ``>= 1``, ``eps`` not a finite number ``> 0`` or
        ``tol`` not a finite number ``>= 0``.
    NotEnoughClients
        If ``n == 0``.
    """
    if not _is_int(max_iter) or max_iter < 1:
        raise ValueError(
            f"geometric_median: max_iter must be an integer >= 1, got max_iter={max_iter!r}"
        )
    if not _is_real(eps) or not 0 < eps < math.inf:
        raise ValueError(f"geometric_median: eps must be a finite number > 0, got eps={eps!r}")
    if not _is_real(tol) or not 0 <= tol < math.inf:
        raise ValueError(f"geometric_median: tol must be a finite number >= 0, got tol={tol!r}")
    n = _check_inputs("geometric_median", updates, weights)
    _require_clients("geometric_median", n)
    origin = coordinate_median(updates)
    gram = centred_gram(updates, origin, precision="float64")
    share = _sample_shares(weights)
    coefficients = torch.zeros(n, dtype=torch.float64, device=updates.device)  # v = origin
    stepped = False
    for _ in range(max_iter):
        distances = squared_distances_to(gram, coefficients).sqrt()
        pull = share / distances.clamp_min(eps)
        # sum_i b_i (x_i - v) has coefficients b - (sum_i b_i) c on the x_j - origin.
        gradient = pull - pull.sum() * coefficients
        if float(gradient @ gram @ gradient) <= tol**2:
            break
        coefficients = pull / pull.sum()
        stepped = True
    # Before the first step v is the median origin itself, whose influence is the median's.
    influence = coefficients if stepped else median_and_influence(updates)[1]
    return Aggregate(
        update=combine(updates, coefficients, origin=origin), flagged=None, influence=influence
    )

"""Centered clipping: move a point towards the updates by clipped steps.

Karimireddy, He & Jaggi (2021), "Learning from History for Byzantine Robust Optimization",
ICML. The rule follows the contract of :mod:`fedbackdoor.defenses.base`; it keeps the previous
round's aggregate in its state (see :class:`fedbackdoor.defenses.pipeline.Defense`).
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import torch
from torch import Tensor

from fedbackdoor.defenses._linalg import (
    centred_gram,
    combine,
    median_and_influence,
    squared_distances_to,
)
from fedbackdoor.defenses.base import (
    Aggregate,
    _check_inputs,
    _check_tensor_setting,
    _is_int,
    _is_real,
    _require_clients,
)

__all__ = ["centered_clip"]


def centered_clip(
    updates: Tensor,
    weights: Tensor,
    *,
    tau: float = 1.0,
    iters: int = 1,
    start: str = "previous",
    state: dict[str, Any] | None = None,
    generator: torch.Generator | None = None,
) -> Aggregate:
    """Centered clipping (Karimireddy, He & Jaggi 2021).

    Starting from ``v``, repeats ``iters`` times
    ``v <- v + (1/n) sum_i (x_i - v) * min(1, tau / ||x_i - v||)``: every update pulls ``v``
    towards itself by at most ``tau / n``, so ``f`` attackers move each step by at most
    ``f tau / n`` however large their updates.

    Where ``v`` starts (``start``):

    - ``"previous"``: the previous round's aggregate, zero at the first round, as the paper
      (its server momentum) and the authors' code (epfml/byzantine-robust-optimizer,
      ``codes/aggregator/clipping.py``, ``Clipping``: ``momentum`` starts at zeros and keeps
      the last result) do. It is kept in ``state["previous"]``; with ``state=None`` (no store
      across rounds) every round starts from zero. One difference with the paper's setting:
      the updates here are local-training deltas, not the workers' momentum vectors (worker
      momentum is not implemented), so the previous aggregate is the previous round's model
      step.
    - ``"median"``: the coordinate-wise median of this round's updates (see
      :func:`~fedbackdoor.defenses.coordinatewise.median`), a robust point that clipping then
      moves towards the mass; no state is read or written.

    Compared with the authors' ``Clipping.__call__`` (same update, uniform mean, clipping
    factor ``min(1, tau / ||x_i - v||)``, ``n_iter = 1`` by default) on small cases by hand.

    Influence. With ``c`` the coefficients of the result on the updates,
    ``v = (1 - sum_i c_i) v_start + sum_i c_i x_i`` (``c_i >= 0``, ``sum_i c_i <= 1``):

    - from ``"previous"`` (or zero) the start is no client of this round, and
      ``influence_i = c_i / sum_j c_j``, the client's share of the combination. After one
      iteration ``c_i = s_i``, the pull factors ``s_i = min(1, tau / ||x_i - v||) / n``, so
      this is ``s_i / sum_j s_j``; after more it also counts the earlier iterations' pulls;
    - from ``"median"`` the start's share goes to the clients by the median's influence
      ``mu`` (see :func:`~fedbackdoor.defenses.coordinatewise.median`):
      ``influence_i = (1 - sum_j c_j) mu_i + c_i``.

    Parameters
    ----------
    updates : Tensor
        Client updates, shape ``[n, d]``, floating point.
    weights : Tensor
        Sample counts, shape ``[n]``, all ``> 0`` (unused: the paper's average is uniform).
    tau : float, default 1.0
        Clipping radius ``> 0``, in the units of the update norm (``inf``: plain mean).
    iters : int, default 1
        Number of clipping iterations, ``>= 1``.
    start : {"previous", "median"}, default "previous"
        Where ``v`` starts, see above.
    state : dict, optional
        The defense's store across rounds (empty at the first round, the same dict every
        round): ``state["previous"]`` holds the last aggregate, a detached copy, written after
        every round with ``start="previous"``.
    generator : torch.Generator, optional
        Unused; accepted so all rules share one signature.

    Returns
    -------
    Aggregate
        The final ``v``; ``flagged`` is ``None`` (clipping only bounds each update's pull);
        ``influence`` as above.

    Raises
    ------
    ValueError
        If ``tau`` is not a number ``> 0``, ``iters`` not an integer ``>= 1``, ``start`` not
        one of the two, ``state`` not a dict, or ``state["previous"]`` not a finite floating
        tensor of shape ``[d]``.
    NotEnoughClients
        If ``n == 0``.
    """
    if not _is_real(tau) or not tau > 0:
        raise ValueError(f"centered_clip: tau must be a number > 0, got tau={tau!r}")
    if not _is_int(iters) or iters < 1:
        raise ValueError(f"centered_clip: iters must be an integer >= 1, got iters={iters!r}")
    if start not in ("previous", "median"):
        raise ValueError(
            f"centered_clip: start must be 'previous' or 'median', got start={start!r}"
        )
    if state is not None and not isinstance(state, MutableMapping):
        raise ValueError(f"centered_clip: state must be a dict or None, got {type(state).__name__}")
    n = _check_inputs("centered_clip", updates, weights)
    d = updates.shape[1]
    previous = state.get("previous") if state is not None and start == "previous" else None
    if previous is not None:
        _check_tensor_setting("centered_clip", "state['previous']", previous, (d,))
    _require_clients("centered_clip", n)
    median_influence = None
    if start == "median":
        origin, median_influence = median_and_influence(updates)
    elif previous is None:
        origin = torch.zeros(d, dtype=updates.dtype, device=updates.device)
    else:
        origin = previous.to(updates.device)
    gram = centred_gram(updates, origin, precision="float64")
    # v = origin + sum_j c_j (x_j - origin), so x_i - v has coefficients e_i - c and the step
    # sum_i s_i (x_i - v) has coefficients s - (sum_i s_i) c.
    coefficients = torch.zeros(n, dtype=torch.float64, device=updates.device)
    for _ in range(iters):
        distances = squared_distances_to(gram, coefficients).sqrt()
        pull = torch.where(distances > tau, tau / distances, 1.0) / n
        coefficients = coefficients + pull - pull.sum() * coefficients
    update = combine(updates, coefficients, origin=origin)
    total = coefficients.sum()
    if median_influence is not None:
        influence = (1 - total).clamp_min(0) * median_influence + coefficients
    else:
        influence = coefficients / total if total > 0 else coefficients
    if state is not None and start == "previous":
        state["previous"] = update.detach().clone()
    return Aggregate(update=update, flagged=None, influence=influence)

"""Trust-based rules: weight every client by how much its update can be trusted.

- :func:`foolsgold` -- Fung, Yoon & Beschastnikh (2020), "The Limitations of Federated Learning
  in Sybil Settings", RAID: distrust clients whose updates are too alike (sybils).
- :func:`fltrust` -- Cao, Fang, Liu & Gong (2021), "FLTrust: Byzantine-robust Federated
  Learning via Trust Bootstrapping", NDSS: trust clients by their agreement with the server's
  own update on a clean root dataset.
- :func:`foolsgold_with_history` and :func:`fltrust_with_root_data`: the two as their papers run
  them in a federation (history kept across rounds; the server's root training), through the
  round's context and the defense's state (:mod:`fedbackdoor.round_context`).

The rules follow the contract of :mod:`fedbackdoor.defenses.base`; ``flagged`` marks the
clients given weight 0. FoolsGold works on the ``[n, n]`` float64 Gram matrix of the updates
(or of their histories), FLTrust on ``[n]`` inner products with the reference, each streamed
over ``d`` once; every aggregate is a single combination ``coefficients @ updates``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from fedbackdoor.defenses._linalg import column_blocks, combine, cosine_from_gram, gram_matrix

if TYPE_CHECKING:  # the server's context; this module needs no more than its type
    from fedbackdoor.round_context import RoundContext
from fedbackdoor.defenses.base import (
    Aggregate,
    _check_inputs,
    _check_tensor_setting,
    _is_real,
    _nobody_trusted,
    _require_clients,
)

__all__ = ["cosine_similarities", "fltrust", "foolsgold", "foolsgold_weights"]

# 1 - cos of two parallel updates comes out ~1e-13 rather than 0 after rounding; FoolsGold
# treats anything closer than this as an exact copy, so that a round of identical updates is
# not weighted by rounding noise.
_PARALLEL_TOLERANCE = 1e-9


def cosine_similarities(rows: Tensor) -> Tensor:
    """Cosine similarity of every pair of rows.

    Parameters
    ----------
    rows : Tensor
        Shape ``[n, d]``, floating point.

    Returns
    -------
    Tensor
        Float64 ``[n, n]``, exactly symmetric, in ``[-1, 1]``; a zero row has similarity 0 with
        every row (itself included).
    """
    return cosine_from_gram(gram_matrix(rows))


# --------------------------------------------------------------------------------------------
# FoolsGold
# --------------------------------------------------------------------------------------------


def foolsgold_weights(history: Tensor, *, kappa: float = 1.0) -> Tensor:
    """FoolsGold's weight of every client (Fung et al. 2020, Algorithm 1).

    With ``cs`` the cosine similarities of the rows of ``history`` and a client's own entry
    counted as 0 (as in the authors' code, so ``v_i = max_j cs_ij >= 0``):

    1. pardoning: ``cs_ij <- cs_ij * v_i / v_j`` wherever ``v_i < v_j``, so that an honest
       client that happens to resemble a sybil is not punished as much as the sybil;
    2. ``a_i = clip(1 - max_j cs_ij, 0, 1)``, rescaled so that the largest is 1;
    3. logit: ``a_i <- clip(kappa * (ln(a_i / (1 - a_i)) + 0.5), 0, 1)`` with the largest
       ``a_i = 1`` first set to 0.99 (the authors' code).

    A client within ``1e-9`` of an exact copy of another (``1 - max_j cs_ij <= 1e-9``) gets
    ``a_i = 0``: rounding must not decide the weights of identical updates.

    Parameters
    ----------
    history : Tensor
        Shape ``[n, d]``, floating point: each client's sum of updates, or this round's updates.
    kappa : float, default 1.0
        Confidence of the logit, a finite number ``> 0``: larger pushes weights towards 0 or 1.

    Returns
    -------
    Tensor
        Float64 weights in ``[0, 1]``, shape ``[n]``; all 0 when every client has a perfect twin.
    """
    return _foolsgold_weights_from_gram(gram_matrix(history), kappa)


def _foolsgold_weights_from_gram(gram: Tensor, kappa: float) -> Tensor:
    similarity = cosine_from_gram(gram).fill_diagonal_(0)
    top = similarity.max(dim=1).values
    pardoned = top.unsqueeze(1) < top.unsqueeze(0)  # v_i < v_j, hence v_j > 0
    ratio = top.unsqueeze(1) / torch.where(pardoned, top.unsqueeze(0), 1.0)
    similarity = torch.where(pardoned, similarity * ratio, similarity)
    alpha = (1 - similarity.max(dim=1).values).clamp(0, 1)
    alpha = torch.where(alpha > _PARALLEL_TOLERANCE, alpha, 0.0)
    largest = alpha.max()
    if largest == 0:
        return alpha
    alpha = alpha / largest
    alpha = torch.where(alpha == 1, 0.99, alpha)
    # ln(0) = -inf, clipped to 0 like every negative logit.
    return (kappa * (torch.log(alpha / (1 - alpha)) + 0.5)).clamp(0, 1)


def foolsgold(
    updates: Tensor,
    weights: Tensor,
    *,
    kappa: float = 1.0,
    history: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Aggregate:
    """FoolsGold (Fung, Yoon & Beschastnikh 2020).

    Sybils pushing the same poisoned objective send updates that are more alike than honest
    clients' (whose data differ), so every client is weighted by how unlike its most similar
    peer it is (:func:`foolsgold_weights`), and the aggregate is ``sum_i a_i x_i / sum_i a_i``.

    The paper compares each client's *history*, the sum of all its updates so far, and adds
    ``sum_i a_i Delta_i`` (SGD gradients) to the model. Two deviations follow from this harness:
    the server keeps no state across rounds, so ``history=None`` compares this round's updates
    only (the single-round variant; a caller that keeps histories passes them); and the updates
    are local-training deltas, so their weighted *mean* is returned, which keeps the scale of
    FedAvg. The paper's optional feature-importance weighting is not implemented.

    Influence: ``a_i / sum_j a_j``, the coefficients of the weighted mean.

    Parameters
    ----------
    updates : Tensor
        Client updates, shape ``[n, d]``, floating point.
    weights : Tensor
        Sample counts, shape ``[n]``, all ``> 0`` (unused: they would let sybils claim weight).
    kappa : float, default 1.0
        Confidence of the logit, a finite number ``> 0`` (the paper's ``kappa``).
    history : Tensor, optional
        Each client's sum of updates over the rounds it took part in, *including this round's*,
        shape ``[n, d]``, finite. ``None`` compares the current updates.
    generator : torch.Generator, optional
        Unused; accepted so all rules share one signature.

    Returns
    -------
    Aggregate
        The ``a``-weighted mean of the updates; ``flagged`` marks the clients with ``a_i = 0``;
        ``influence`` as above. If every client has a perfect twin (e.g. all updates parallel)
        all get ``a_i = 0``: the update is zero, every client is flagged and nobody has
        influence.

    Raises
    ------
    ValueError
        If ``kappa`` is not a finite number ``> 0`` or ``history`` is not a finite floating
        tensor of the shape of ``updates``.
    NotEnoughClients
        If ``n == 0``.
    """
    if not _is_real(kappa) or not 0 < kappa < math.inf:
        raise ValueError(f"foolsgold: kappa must be a finite number > 0, got kappa={kappa!r}")
    n = _check_inputs("foolsgold", updates, weights)
    if history is not None:
        _check_tensor_setting("foolsgold", "history", history, tuple(updates.shape), finite=False)
    _require_clients("foolsgold", n)
    gram = gram_matrix(updates if history is None else history)
    # A NaN or inf in a row makes its squared norm non-finite (float32 values cannot overflow
    # it in float64): a free check, where torch.isfinite would be another pass over [n, d].
    if history is not None and not bool(torch.all(torch.isfinite(gram.diagonal()))):
        raise ValueError("foolsgold: history must be finite, got history with nan or inf values")
    alpha = _foolsgold_weights_from_gram(gram, float(kappa))
    total = alpha.sum()
    if total == 0:
        return _nobody_trusted(updates)
    share = (alpha / total).to(updates.device)
    return Aggregate(
        update=combine(updates, share),
        flagged=(alpha == 0).to(updates.device),
        influence=share,
    )


# --------------------------------------------------------------------------------------------
# FLTrust
# --------------------------------------------------------------------------------------------


def fltrust(
    updates: Tensor,
    weights: Tensor,
    *,
    reference: Tensor,
    generator: torch.Generator | None = None,
) -> Aggregate:
    """FLTrust (Cao, Fang, Liu & Gong 2021).

    The server trains on a small clean root dataset of its own; its update ``g0`` (the
    ``reference``) bootstraps trust. Client ``i`` gets the trust score
    ``ts_i = ReLU(cos(x_i, g0))``, its update is rescaled to the norm of ``g0``, and the
    aggregate is ``sum_i ts_i (||g0|| / ||x_i||) x_i / sum_i ts_i``. An update pointing away
    from the reference (or orthogonal to it, or zero) has no influence, and rescaling stops a
    boosted update from dominating.

    Influence: the trust shares ``ts_i / sum_j ts_j``, each client's weight in the mean of the
    rescaled updates (rescaling to ``||g0||`` leaves an update its client's, so the factor
    ``||g0|| / ||x_i||`` is not part of the share).

    Parameters
    ----------
    updates : Tensor
        Client updates, shape ``[n, d]``, floating point.
    weights : Tensor
        Sample counts, shape ``[n]``, all ``> 0`` (unused, as in the paper).
    reference : Tensor
        The server's update on its root dataset, shape ``[d]``, finite, floating point.
    generator : torch.Generator, optional
        Unused; accepted so all rules share one signature.

    Returns
    -------
    Aggregate
        The trust-weighted mean of the rescaled updates; ``flagged`` marks the clients with
        trust 0; ``influence`` as above. If nobody has positive trust (or ``reference`` is
        zero) the update is zero, every client is flagged and nobody has influence.

    Raises
    ------
    ValueError
        If ``reference`` is not a finite floating tensor of shape ``[d]``.
    NotEnoughClients
        If ``n == 0``.
    """
    n = _check_inputs("fltrust", updates, weights)
    _check_tensor_setting("fltrust", "reference", reference, (updates.shape[1],))
    _require_clients("fltrust", n)
    reference = reference.to(updates.device)
    dots = torch.zeros(n, dtype=torch.float64, device=updates.device)
    squares = torch.zeros(n, dtype=torch.float64, device=updates.device)
    for columns in column_blocks(updates.shape[1]):
        block = updates[:, columns].to(torch.float64)
        dots += block @ reference[columns].to(torch.float64)
        squares += block.square().sum(dim=1)
    norms = squares.sqrt()
    reference_norm = torch.linalg.vector_norm(reference, dtype=torch.float64)
    safe = torch.where(norms > 0, norms, 1.0)
    cosine = torch.where(norms > 0, dots / (safe * reference_norm), 0.0).nan_to_num(0.0)
    trust = cosine.clamp(0, 1)
    total = trust.sum()
    if total == 0:
        return _nobody_trusted(updates)
    coefficients = trust * (reference_norm / safe) / total
    return Aggregate(
        update=combine(updates, coefficients), flagged=trust == 0, influence=trust / total
    )


def foolsgold_with_history(
    updates: Tensor,
    weights: Tensor,
    *,
    kappa: float = 1.0,
    history: bool = True,
    context: RoundContext,
    state: dict[str, Any],
    generator: torch.Generator | None = None,
) -> Aggregate:
    """FoolsGold as the paper runs it: on each client's sum of all its past updates.

    Keeps, in the defense's ``state``, each client's sum of the (valid) updates it sent so far
    (``num_clients x d`` floats at most), adds this round's, and calls :func:`foolsgold` with
    the round's clients' sums as ``history`` (the clients' ids come from the round's
    ``context``).

    Parameters
    ----------
    updates, weights, kappa, generator
        As for :func:`foolsgold`.
    history : bool, default True
        ``False``: compare this round's updates only (no state kept).
    context : RoundContext
        The round's context (the clients' ids, in row order).
    state : dict
        The defense's store, kept across rounds.
    """
    if not history:
        return foolsgold(updates, weights, kappa=kappa, generator=generator)
    sums: dict[int, Tensor] = state.setdefault("sums", {})
    for client, update in zip(context.clients, updates, strict=True):
        if client in sums:
            sums[client] += update
        else:
            sums[client] = update.clone()
    summed = torch.stack([sums[c] for c in context.clients]) if context.clients else updates
    return foolsgold(updates, weights, kappa=kappa, history=summed, generator=generator)


def fltrust_with_root_data(
    updates: Tensor,
    weights: Tensor,
    *,
    root_size: int = 100,
    context: RoundContext,
    generator: torch.Generator | None = None,
) -> Aggregate:
    """FLTrust with the server's own root update, as the paper runs it.

    The server draws ``root_size`` clean samples once (from the seed, :meth:`RoundContext.
    server_data`) and, every round, trains the global model on them for as many SGD
    iterations as a client takes (:meth:`RoundContext.server_update`; the paper's server uses
    the clients' local iterations, so its update has a client's magnitude), then calls
    :func:`fltrust` with that update as ``reference``.

    Parameters
    ----------
    updates, weights, generator
        As for :func:`fltrust`.
    root_size : int, default 100
        Root samples, ``>= 1`` (the paper uses 100).
    context : RoundContext
        The round's context (server data and the server's training step).
    """
    if isinstance(root_size, bool) or not isinstance(root_size, int) or root_size < 1:
        raise ValueError(f"fltrust: root_size must be an integer >= 1, got root_size={root_size!r}")
    x, y = context.server_data(root_size)
    reference = context.server_update(x, y)
    return fltrust(updates, weights, reference=reference, generator=generator)

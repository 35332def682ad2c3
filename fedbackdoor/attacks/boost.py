"""Boosting the malicious updates, and the attacks that chain several update attacks.

- :func:`model_replacement` -- the boost that replaces the global model [1]_; :func:`scale` --
  a fixed boost; :func:`identity` -- none (data-only attacks);
  :func:`chain` -- several in order (an attack's ``apply``, then its ``attack.boost``).

Every attack follows the contract of :mod:`fedbackdoor.attacks._contract`: ``(updates,
malicious, *, weights=None, generator=None, **settings) -> updates``, a new tensor in which
only the malicious rows changed.

References
----------
.. [1] E. Bagdasaryan, A. Veit, Y. Hua, D. Estrin and V. Shmatikov, "How To Backdoor Federated
   Learning", AISTATS 2020.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from fedbackdoor.attacks._contract import check_updates_and_mask, require_number, scale_rows

__all__ = ["chain", "identity", "model_replacement", "scale"]


def scale(
    updates: Tensor,
    malicious: Tensor,
    *,
    boost: float,
    weights: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Multiply the malicious updates by ``boost``: model replacement [1]_.

    An attacker who expects its update to be averaged with ``n`` others under server learning rate
    ``eta`` scales it by about ``n / eta`` so that, after averaging, the global model is (nearly)
    replaced by its backdoored one.

    Parameters
    ----------
    updates : Tensor
        ``[n, d]`` client updates (model deltas), one per row. Not modified.
    malicious : Tensor
        ``[n]`` bool mask of the rows the attacker controls.
    boost : float
        Scale factor, finite and positive; ``1`` leaves the updates unchanged.
    generator : torch.Generator, optional
        Unused; accepted so every attack shares one signature.

    Returns
    -------
    Tensor
        New ``[n, d]`` tensor: malicious rows times ``boost``, the others bit-identical.

    Raises
    ------
    ValueError
        If ``boost`` is not a finite positive number or the shapes are malformed.
    """
    check_updates_and_mask(updates, malicious)
    require_number("boost", boost, minimum=0.0)
    return scale_rows(updates, malicious.to(updates.device), boost)


def model_replacement(
    updates: Tensor,
    malicious: Tensor,
    *,
    server_lr: float = 1.0,
    weights: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Boost the malicious updates so that, under FedAvg, they *replace* the global model [1]_.

    With sample weights ``w`` (total ``W``, malicious total ``W_m``) FedAvg moves the global
    model by ``server_lr * sum_i w_i x_i / W``. Every malicious row is multiplied by

        ``gamma = W / (server_lr * W_m)``

    so the attackers' joint contribution is exactly their own sample-weighted mean update
    ``sum_{i malicious} w_i x_i / W_m``: with the benign updates at zero, the next global model
    is the attackers' (weighted mean) model, whatever the weights, however many attackers are
    in the round, whatever ``server_lr``. One attacker among ``n`` equally weighted clients
    gets the paper's ``n / eta`` (eq. 3 of [1]_); two get ``n / (2 eta)`` each, not ``n / eta``.

    The attackers are assumed to know the round's total sample count ``W`` (the paper's
    attacker knows ``n`` and ``eta``); ``gamma`` is computed for FedAvg whatever defense runs.

    Parameters
    ----------
    updates : Tensor
        ``[n, d]`` client updates (parameter deltas). Not modified.
    malicious : Tensor
        ``[n]`` bool mask of the rows the attacker controls.
    server_lr : float, default 1.0
        The server's learning rate ``eta``, finite and positive.
    weights : Tensor
        ``[n]`` sample counts, all ``> 0`` (required).
    generator : torch.Generator, optional
        Unused; accepted so every attack shares one signature.

    Returns
    -------
    Tensor
        New ``[n, d]`` tensor: malicious rows times ``gamma``, the others bit-identical.

    Raises
    ------
    ValueError
        If ``weights`` is missing or malformed, ``server_lr`` is not a finite positive number,
        or the shapes are malformed.
    """
    check_updates_and_mask(updates, malicious)
    require_number("server_lr", server_lr, minimum=0.0)
    if weights is None or tuple(weights.shape) != tuple(malicious.shape):
        raise ValueError(
            f"model_replacement needs the [n] sample weights, got "
            f"{None if weights is None else tuple(weights.shape)}"
        )
    weights = weights.to(torch.float64)
    if not bool(torch.all(torch.isfinite(weights) & (weights > 0))):
        raise ValueError(f"weights must be finite and > 0, got {weights.tolist()}")
    rows = malicious.to(updates.device)
    if not bool(rows.any()):
        return updates.clone()
    gamma = float(weights.sum() / (server_lr * weights[malicious.cpu()].sum()))
    return scale_rows(updates, rows, gamma)


def identity(
    updates: Tensor,
    malicious: Tensor,
    *,
    weights: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Leave the updates unchanged: the model-poisoning step of a data-only attack.

    Parameters
    ----------
    updates : Tensor
        ``[n, d]`` client updates. Not modified.
    malicious : Tensor
        ``[n]`` bool mask of the attacker's rows (validated, otherwise ignored).
    generator : torch.Generator, optional
        Unused; accepted so every attack shares one signature.

    Returns
    -------
    Tensor
        A copy of ``updates``.

    Raises
    ------
    ValueError
        If the shapes are malformed.
    """
    check_updates_and_mask(updates, malicious)
    return updates.clone()


def chain(
    updates: Tensor,
    malicious: Tensor,
    *,
    steps: Sequence[Callable[..., Tensor]],
    weights: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Apply several attacks in order, e.g. ALIE then the ``attack.boost`` :func:`scale`.

    Parameters
    ----------
    updates, malicious : Tensor
        As for every attack. ``updates`` is not modified.
    steps : sequence of callables
        Attacks with their settings bound; each gets the previous one's output. Empty: a copy.
    generator : torch.Generator, optional
        Passed to every step.

    Returns
    -------
    Tensor
        New ``[n, d]`` tensor.
    """
    result = identity(updates, malicious)
    for step in steps:
        result = step(result, malicious, weights=weights, generator=generator)
    return result

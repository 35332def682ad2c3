"""Model-poisoning attacks: pure functions over the stacked updates of one round.

Every attack has the signature ``(updates, malicious, *, generator=None, **settings) -> updates``
where ``updates`` is ``[n, d]`` (one flattened client update per row) and ``malicious`` is an
``[n]`` bool mask. An attack returns a new tensor, changes only the malicious rows and never looks
at which defense is running. Settings are keyword-only and validated up front; Hydra binds them
with ``_partial_: true`` so the caller supplies only ``updates``, ``malicious`` and ``generator``.

References
----------
.. [1] E. Bagdasaryan, A. Veit, Y. Hua, D. Estrin and V. Shmatikov, "How To Backdoor Federated
   Learning", AISTATS 2020.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["identity", "scale"]


def scale(
    updates: Tensor,
    malicious: Tensor,
    *,
    boost: float,
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
    _check(updates, malicious)
    if isinstance(boost, bool) or not isinstance(boost, int | float):
        raise ValueError(f"boost must be a positive number, got {boost!r}")
    if not (math.isfinite(boost) and boost > 0):
        raise ValueError(f"boost must be finite and > 0, got {boost}")
    poisoned = updates.clone()
    rows = malicious.to(updates.device)
    poisoned[rows] = updates[rows] * boost
    return poisoned


def identity(
    updates: Tensor,
    malicious: Tensor,
    *,
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
    _check(updates, malicious)
    return updates.clone()


def _check(updates: Tensor, malicious: Tensor) -> None:
    if updates.dim() != 2:
        raise ValueError(f"updates must have shape [n, d], got {tuple(updates.shape)}")
    if malicious.dtype != torch.bool:
        # An integer tensor would index rows by position instead of masking them, silently.
        raise ValueError(f"malicious must be a bool mask, got dtype {malicious.dtype}")
    if malicious.shape != updates.shape[:1]:
        raise ValueError(
            f"malicious must have shape [n] = ({updates.shape[0]},), got {tuple(malicious.shape)}"
        )

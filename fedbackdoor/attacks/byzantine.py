"""Byzantine clients that need no knowledge of the others: reversed updates and noise.

- :func:`sign_flip` -- reversed updates [1]_ (Blades' "signflipping").
- :func:`gaussian` -- the Gaussian Byzantine worker of [2]_.

Both are untargeted: they degrade the global model rather than implant a backdoor. Every attack
follows the contract of :mod:`fedbackdoor.attacks._contract`: ``(updates, malicious, *,
weights=None, generator=None, **settings) -> updates``, a new tensor in which only the
malicious rows changed.

References
----------
.. [1] G. Damaskinos, E. M. El Mhamdi, R. Guerraoui, R. Patra and M. Taziki, "Asynchronous
   Byzantine Machine Learning (the case of SGD)", ICML 2018.
.. [2] P. Blanchard, E. M. El Mhamdi, R. Guerraoui and J. Stainer, "Machine Learning with
   Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS 2017.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fedbackdoor.attacks._contract import check_updates_and_mask, require_number, scale_rows

__all__ = ["gaussian", "sign_flip"]


def sign_flip(
    updates: Tensor,
    malicious: Tensor,
    *,
    scale: float = 1.0,
    weights: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Replace each malicious update by ``-scale`` times itself: the sign-flipping attack [1]_.

    Each attacker trains honestly and then submits its update reversed, pushing the global model
    up the loss instead of down. It needs no knowledge of the other clients.

    Parameters
    ----------
    updates : Tensor
        ``[n, d]`` client updates, one per row. Not modified.
    malicious : Tensor
        ``[n]`` bool mask of the rows the attacker controls.
    scale : float, default 1.0
        Magnitude of the reversed update, finite and positive; ``1`` is a plain sign flip.
    generator : torch.Generator, optional
        Unused; accepted so every attack shares one signature.

    Returns
    -------
    Tensor
        New ``[n, d]`` tensor: malicious rows ``-scale * row``, the others bit-identical.

    Raises
    ------
    ValueError
        If ``scale`` is not a finite positive number or the shapes are malformed.
    """
    check_updates_and_mask(updates, malicious)
    require_number("scale", scale, minimum=0.0)
    return scale_rows(updates, malicious.to(updates.device), -scale)


def gaussian(
    updates: Tensor,
    malicious: Tensor,
    *,
    std: float = 1.0,
    weights: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Replace each malicious update by independent ``N(0, std^2)`` noise: the Gaussian
    Byzantine worker of [2]_.

    The attackers need no knowledge of the other clients; each malicious row gets its own draw.

    Parameters
    ----------
    updates : Tensor
        ``[n, d]`` client updates, one per row. Not modified.
    malicious : Tensor
        ``[n]`` bool mask of the rows the attacker controls.
    std : float, default 1.0
        Standard deviation of every coordinate of the noise, finite and positive.
    generator : torch.Generator, optional
        Source of the noise; the same generator state gives the same noise. ``None`` draws from
        torch's global generator (not reproducible from the run's seed). The noise is drawn on
        the generator's device and then moved to that of ``updates``.

    Returns
    -------
    Tensor
        New ``[n, d]`` tensor: malicious rows replaced by noise, the others bit-identical.

    Raises
    ------
    ValueError
        If ``std`` is not a finite positive number or the shapes are malformed.
    """
    check_updates_and_mask(updates, malicious)
    require_number("std", std, minimum=0.0)
    rows = malicious.to(updates.device)
    poisoned = updates.clone()
    count = int(rows.sum())
    if count == 0:
        return poisoned
    device = generator.device if generator is not None else updates.device
    noise = torch.randn(
        (count, updates.shape[1]), generator=generator, dtype=updates.dtype, device=device
    )
    poisoned[rows] = (noise * std).to(updates.device)
    return poisoned

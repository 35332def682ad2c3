"""Pure transforms applied around an aggregation rule: norm clipping and Gaussian noise.

Both defenses are from Sun, Kairouz, Suresh & McMahan (2019), "Can You Really Backdoor
Federated Learning?", arXiv:1911.07963: clipping every client update to a fixed L2 norm bounds
how far a (boosted) malicious update can pull the model, and adding a little Gaussian noise to
the aggregate ("weak differential privacy") further dampens what survives clipping.

Signature convention (so :class:`fedbackdoor.defenses.pipeline.Defense` can chain them):

- pre-aggregation transforms: ``t(updates: Tensor[n, d], *, generator, **settings) ->
  Tensor[n, d]``;
- post-aggregation transforms: ``t(update: Tensor[d], *, generator, **settings) ->
  Tensor[d]``.

Transforms never modify their input in place.
"""

from __future__ import annotations

import math
from numbers import Real

import torch
from torch import Tensor

__all__ = ["add_gaussian_noise", "clip_to_norm"]


def _is_real(value: object) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def clip_to_norm(
    updates: Tensor, *, max_norm: float, generator: torch.Generator | None = None
) -> Tensor:
    """Scale each update down to an L2 norm of at most ``max_norm`` (Sun et al. 2019).

    ``x_i <- x_i / max(1, ||x_i||_2 / max_norm)``. Rows whose norm is already ``<= max_norm``
    are returned bit-for-bit unchanged; larger rows keep their direction and end up with norm
    ``max_norm`` (up to floating-point rounding).

    Parameters
    ----------
    updates : Tensor
        Client updates, shape ``[n, d]``, floating point and finite.
    max_norm : float
        The norm bound, ``> 0`` (``inf`` disables clipping).
    generator : torch.Generator, optional
        Unused (clipping is deterministic); accepted for the pre-transform signature.

    Returns
    -------
    Tensor
        The clipped updates, shape ``[n, d]``, same dtype as the input.

    Raises
    ------
    ValueError
        If ``max_norm`` is not a number ``> 0`` or ``updates`` is not a 2-D floating tensor.
    """
    del generator
    if not _is_real(max_norm) or not max_norm > 0:
        raise ValueError(f"clip_to_norm: max_norm must be a number > 0, got max_norm={max_norm!r}")
    if updates.dim() != 2 or not updates.is_floating_point():
        raise ValueError(
            "clip_to_norm: updates must be a 2-D floating tensor [n, d], "
            f"got shape {tuple(updates.shape)} and dtype {updates.dtype}"
        )
    # float64 norms: squaring large float32 entries would overflow to inf.
    norms = torch.linalg.vector_norm(updates, dim=1, dtype=torch.float64)
    # A factor of exactly 1.0 leaves short rows bit-for-bit unchanged (x * 1.0 == x in IEEE).
    factors = torch.where(norms > max_norm, max_norm / norms, 1.0).to(updates.dtype)
    return updates * factors.unsqueeze(1)


def add_gaussian_noise(update: Tensor, *, sigma: float, generator: torch.Generator) -> Tensor:
    """Add i.i.d. ``N(0, sigma^2)`` noise to every coordinate (weak DP, Sun et al. 2019).

    ``sigma`` is in the absolute units of the update (not relative to a clipping bound).

    Parameters
    ----------
    update : Tensor
        The aggregated update, shape ``[d]`` (any shape works), floating point.
    sigma : float
        Noise standard deviation, ``>= 0``. With ``sigma == 0`` the input is returned
        unchanged and the generator is not advanced.
    generator : torch.Generator
        Source of the noise, on the same device as ``update``.

    Returns
    -------
    Tensor
        ``update + sigma * z`` with ``z ~ N(0, I)`` drawn from ``generator``.

    Raises
    ------
    ValueError
        If ``sigma`` is not a finite number ``>= 0``.
    """
    if not _is_real(sigma) or not 0 <= sigma < math.inf:
        raise ValueError(
            f"add_gaussian_noise: sigma must be a finite number >= 0, got sigma={sigma!r}"
        )
    if sigma == 0:
        return update
    noise = torch.randn(update.shape, generator=generator, dtype=update.dtype, device=update.device)
    return update + sigma * noise

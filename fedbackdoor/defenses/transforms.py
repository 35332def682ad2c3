"""Pure transforms applied around an aggregation rule: norm clipping and Gaussian noise.

Fixed-norm clipping and noise are from Sun, Kairouz, Suresh & McMahan (2019), "Can You Really
Backdoor Federated Learning?", arXiv:1911.07963: clipping every client update to a fixed L2 norm
bounds how far a (boosted) malicious update can pull the model, and adding a little Gaussian
noise to the aggregate ("weak differential privacy") further dampens what survives clipping.

Adaptive clipping to the round's median norm is from Nguyen et al. (2022), "FLAME: Taming
Backdoors in Federated Learning", USENIX Security: the bound follows the benign majority as
update norms shrink over training, with no norm to tune per model and dataset.

Signature convention (so :class:`fedbackdoor.defenses.pipeline.Defense` can chain them):

- pre-aggregation transforms: ``t(updates: Tensor[n, d], *, generator, **settings) ->
  Tensor[n, d]``;
- post-aggregation transforms: ``t(update: Tensor[d], *, generator, **settings) ->
  Tensor[d]``.

Transforms never modify their input in place.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fedbackdoor.defenses._linalg import median_of_sorted, row_norms
from fedbackdoor.defenses.base import _is_real

__all__ = ["add_gaussian_noise", "clip_to_median_norm", "clip_to_norm"]


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
    _check_stacked("clip_to_norm", updates)
    return _scale_down_to(updates, row_norms(updates), max_norm)


def clip_to_median_norm(
    updates: Tensor, *, multiplier: float = 1.0, generator: torch.Generator | None = None
) -> Tensor:
    """Clip every update to ``multiplier`` times the round's median norm (Nguyen et al. 2022).

    With ``S`` the median of the row norms (the mean of the middle two for an even ``n``),
    ``x_i <- x_i / max(1, ||x_i||_2 / (multiplier * S))``: at least half of the updates are left
    unchanged for ``multiplier >= 1``, and the bound is set by the majority, so a minority of
    boosted updates cannot raise it. Rows within the bound are returned bit-for-bit unchanged.

    Parameters
    ----------
    updates : Tensor
        Client updates, shape ``[n, d]``, floating point and finite.
    multiplier : float, default 1.0
        Factor applied to the median norm, a finite number ``> 0`` (FLAME uses 1).
    generator : torch.Generator, optional
        Unused (clipping is deterministic); accepted for the pre-transform signature.

    Returns
    -------
    Tensor
        The clipped updates, shape ``[n, d]``, same dtype as the input (``n = 0``: a copy).

    Raises
    ------
    ValueError
        If ``multiplier`` is not a finite number ``> 0`` or ``updates`` is not a 2-D floating
        tensor.
    """
    del generator
    if not _is_real(multiplier) or not 0 < multiplier < math.inf:
        raise ValueError(
            "clip_to_median_norm: multiplier must be a finite number > 0, "
            f"got multiplier={multiplier!r}"
        )
    _check_stacked("clip_to_median_norm", updates)
    if updates.shape[0] == 0:
        return updates.clone()
    norms = row_norms(updates)
    median_norm = median_of_sorted(torch.sort(norms).values)
    return _scale_down_to(updates, norms, multiplier * float(median_norm))


def _check_stacked(transform: str, updates: Tensor) -> None:
    if updates.dim() != 2 or not updates.is_floating_point():
        raise ValueError(
            f"{transform}: updates must be a 2-D floating tensor [n, d], "
            f"got shape {tuple(updates.shape)} and dtype {updates.dtype}"
        )


def _scale_down_to(updates: Tensor, norms: Tensor, bound: float) -> Tensor:
    """Scale the rows whose norm exceeds ``bound`` down to norm ``bound`` (``0`` zeroes them)."""
    # A factor of exactly 1.0 leaves short rows bit-for-bit unchanged (x * 1.0 == x in IEEE).
    factors = torch.where(norms > bound, bound / norms, 1.0).to(updates.dtype)
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

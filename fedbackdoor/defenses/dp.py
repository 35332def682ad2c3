"""Central differential privacy on the server: clip every update, average, add Gaussian noise.

The settings are Flower's (flwr 1.42: ``DifferentialPrivacyServerSideFixedClipping`` and
``DifferentialPrivacyServerSideAdaptiveClipping`` in ``flwr/serverapp/strategy/``, their helpers
in ``flwr/supercore/differential_privacy.py``), so a configuration means the same here as there;
the maths are the papers':

- :func:`dp_fixed_clipping` -- McMahan, Ramage, Talwar & Zhang (2018), "Learning Differentially
  Private Recurrent Language Models", ICLR (DP-FedAvg with a fixed clipping norm).
- :func:`dp_adaptive_clipping` -- Andrew, Thakkar, McMahan & Ramaswamy (2021), "Differentially
  Private Learning with Adaptive Clipping", NeurIPS (Algorithm 1: the clipping norm follows a
  quantile of the update norms, estimated privately).

Same as Flower: each update is clipped to L2 norm ``<= C`` (factor ``min(1, C / ||x_i||)``),
the clipped updates are averaged with sample weights (Flower wraps FedAvg, which weights by
examples), and ``N(0, (z C / m)^2)`` noise is added to every coordinate of the average, with
``z`` the noise multiplier and ``m = num_sampled_clients``. Adaptive clipping splits ``z``
between the update and the count as Flower's ``compute_adaptive_noise_params`` does, noises the
count with ``clipped_count_stddev`` (``m / 20`` by default when ``z > 0``, else 0), divides it by
the number of updates ``n`` of the round, and moves the norm geometrically,
``C <- C exp(-clip_norm_lr (b_hat - target_clipped_quantile))``.

Where this module deviates from Flower, on purpose:

- **The sign of the norm update.** Flower counts the updates that *were clipped*
  (``adaptive_clip_inputs_inplace`` returns ``scaling_factor < 1``) and plugs that fraction into
  the update above, so the more updates are clipped, the more the norm shrinks, clipping even
  more: the norm runs away from the quantile instead of tracking it. Andrew et al.'s
  Algorithm 1 (and TF Privacy's ``QuantileEstimatorQuery``, ``record <= estimate``) count the
  *unclipped* updates, ``||x_i|| <= C``; so does this module. ``target_clipped_quantile`` is
  therefore Andrew et al.'s ``gamma``: the quantile of the update norms that ``C`` tracks, i.e.
  the fraction of updates left unclipped at equilibrium (Flower's name notwithstanding).
- **The norm the noise is calibrated to.** Flower's server-side wrapper updates the norm
  before it noises the aggregate, so this round's noise uses next round's norm. The
  sensitivity of this round's average is this round's ``C``, and Algorithm 1 noises with it:
  the order here is clip with ``C``, average, noise with ``C``, then update ``C``.
- **Parameters only.** An update is a parameter delta; Flower clips and noises every array of
  a reply, buffers included.

Privacy caveat, as in Flower: the noise ``z C / m`` makes the *unweighted* average of ``m``
clipped updates private. Under unequal sample counts a client's weight in the weighted mean can
exceed ``1 / m``, and the guarantee does not hold as stated (Flower's privacy accountant refuses
unequal weights for this reason). The rules keep Flower's weighting so that results compare.
"""

from __future__ import annotations

import math
from collections.abc import MutableMapping
from typing import Any

import torch
from torch import Tensor

from fedbackdoor.defenses._linalg import combine, row_norms
from fedbackdoor.defenses.base import (
    Aggregate,
    _check_generator,
    _check_inputs,
    _is_int,
    _is_real,
    _require_clients,
    _sample_shares,
)
from fedbackdoor.defenses.transforms import add_gaussian_noise

__all__ = ["adaptive_noise_parameters", "dp_adaptive_clipping", "dp_fixed_clipping"]


def _check_number(rule: str, name: str, value: object, *, low: float, strict: bool) -> None:
    """``value`` must be a finite number ``> low`` (``strict``) or ``>= low``."""
    if _is_real(value):
        number = float(value)  # type: ignore[arg-type]
        if math.isfinite(number) and (number > low if strict else number >= low):
            return
    bound = f"> {low:g}" if strict else f">= {low:g}"
    raise ValueError(f"{rule}: {name} must be a finite number {bound}, got {name}={value!r}")


def _check_shared(rule: str, noise_multiplier: float, num_sampled_clients: int) -> None:
    _check_number(rule, "noise_multiplier", noise_multiplier, low=0, strict=False)
    if not _is_int(num_sampled_clients) or num_sampled_clients < 1:
        raise ValueError(
            f"{rule}: num_sampled_clients must be an integer >= 1, "
            f"got num_sampled_clients={num_sampled_clients!r}"
        )


def _clipped_mean(updates: Tensor, weights: Tensor, clipping_norm: float) -> tuple[Tensor, Tensor]:
    """The sample-weighted mean of the updates clipped to ``clipping_norm``, and the float64
    norms of the updates before clipping.

    Clipping is folded into the mean's coefficients, ``sum_i (s_i min(1, C / ||x_i||)) x_i``:
    the same as clipping then averaging (up to float32 rounding), without an ``[n, d]`` copy.
    """
    norms = row_norms(updates)
    factors = torch.where(norms > clipping_norm, clipping_norm / norms, 1.0)
    coefficients = _sample_shares(weights).to(norms.device) * factors
    return combine(updates, coefficients), norms


def dp_fixed_clipping(
    updates: Tensor,
    weights: Tensor,
    *,
    noise_multiplier: float,
    clipping_norm: float,
    num_sampled_clients: int,
    generator: torch.Generator,
) -> Aggregate:
    """Central DP with a fixed clipping norm (McMahan et al. 2018), in Flower's terms.

    Every update is clipped to L2 norm ``<= clipping_norm`` (``x_i min(1, C / ||x_i||)``),
    the clipped updates are averaged with sample weights, and ``N(0, sigma^2)`` noise with
    ``sigma = noise_multiplier * clipping_norm / num_sampled_clients`` is added to every
    coordinate, drawn from ``generator``. Compared with Flower's
    ``DifferentialPrivacyServerSideFixedClipping`` around ``FedAvg`` (``compute_clip_model_update``
    clips the same way, ``compute_stdv`` gives the same ``sigma``): see the module docstring for
    the differences (parameters only; the privacy caveat of sample weights).

    Parameters
    ----------
    updates : Tensor
        Client updates, shape ``[n, d]``, floating point.
    weights : Tensor
        Sample counts, shape ``[n]``, all ``> 0``: the weights of the mean, as FedAvg's.
    noise_multiplier : float
        ``z``, a finite number ``>= 0`` (0: no noise, nothing drawn).
    clipping_norm : float
        ``C``, a finite number ``> 0``, in the units of the update norm.
    num_sampled_clients : int
        ``m``, the number of clients sampled per round (``clients_per_round``), ``>= 1``.
    generator : torch.Generator
        Source of the noise, on the device of ``updates``.

    Returns
    -------
    Aggregate
        The noised mean; ``flagged`` is ``None`` (nobody is excluded); ``influence`` the sample
        shares ``w_i / sum_j w_j`` (the noise is nobody's).

    Raises
    ------
    ValueError
        If a setting is out of range or ``generator`` is not a ``torch.Generator``.
    NotEnoughClients
        If ``n == 0``.
    """
    rule = "dp_fixed_clipping"
    _check_shared(rule, noise_multiplier, num_sampled_clients)
    _check_number(rule, "clipping_norm", clipping_norm, low=0, strict=True)
    _check_generator(rule, generator)
    n = _check_inputs(rule, updates, weights)
    _require_clients(rule, n)
    update, _ = _clipped_mean(updates, weights, float(clipping_norm))
    sigma = float(noise_multiplier) * float(clipping_norm) / int(num_sampled_clients)
    update = add_gaussian_noise(update, sigma=sigma, generator=generator)
    return Aggregate(update=update, flagged=None, influence=_sample_shares(weights))


def adaptive_noise_parameters(
    noise_multiplier: float, num_sampled_clients: int, clipped_count_stddev: float | None
) -> tuple[float, float]:
    """Split the noise multiplier between the clipped count and the update (Andrew et al. 2021).

    Publishing the count of unclipped updates spends privacy too, so the update's noise
    multiplier grows to ``z_delta = (z^-2 - (2 sigma_b)^-2)^(-1/2)`` (Andrew et al., Section 3;
    the ``2`` because a centred bit has sensitivity 1/2), which keeps the pair as private as one
    Gaussian mechanism of multiplier ``z``. That needs ``z < 2 sigma_b``. As Flower's
    ``compute_adaptive_noise_params``: with ``z > 0`` an unset ``sigma_b`` is ``m / 20``
    (Andrew et al.'s recommendation); with ``z = 0`` it is 0 and ``z_delta = 0``.

    Parameters
    ----------
    noise_multiplier : float
        ``z``, the target noise multiplier, ``>= 0``.
    num_sampled_clients : int
        ``m``, clients sampled per round.
    clipped_count_stddev : float or None
        ``sigma_b``, the standard deviation of the noise on the count (in counts), or ``None``.

    Returns
    -------
    tuple of float
        ``(sigma_b, z_delta)``, in the order Flower returns them.

    Raises
    ------
    ValueError
        If ``z > 0`` and ``z >= 2 sigma_b``, naming both settings.
    """
    if noise_multiplier > 0:
        stddev = num_sampled_clients / 20 if clipped_count_stddev is None else clipped_count_stddev
        if noise_multiplier >= 2 * stddev:
            origin = (
                f"num_sampled_clients / 20 = {num_sampled_clients} / 20 by default"
                if clipped_count_stddev is None
                else "as set"
            )
            raise ValueError(
                f"dp_adaptive_clipping: noise_multiplier={noise_multiplier} must be below "
                f"2 * clipped_count_stddev = {2 * stddev:g} (clipped_count_stddev={stddev:g}, "
                f"{origin}): the count of unclipped updates takes its share of the privacy "
                "budget, z_delta = (z^-2 - (2 clipped_count_stddev)^-2)^(-1/2) (Andrew et al. "
                "2021). Raise clipped_count_stddev or lower noise_multiplier"
            )
        return float(stddev), float((noise_multiplier**-2 - (2 * stddev) ** -2) ** -0.5)
    stddev = 0.0 if clipped_count_stddev is None else clipped_count_stddev
    return float(stddev), 0.0


def dp_adaptive_clipping(
    updates: Tensor,
    weights: Tensor,
    *,
    noise_multiplier: float,
    num_sampled_clients: int,
    initial_clipping_norm: float = 0.1,
    target_clipped_quantile: float = 0.5,
    clip_norm_lr: float = 0.2,
    clipped_count_stddev: float | None = None,
    generator: torch.Generator,
    state: dict[str, Any],
) -> Aggregate:
    """Central DP with adaptive clipping (Andrew et al. 2021, Algorithm 1), in Flower's terms.

    One round, with ``C = state["clipping_norm"]`` (``initial_clipping_norm`` at the first
    round), ``(sigma_b, z_delta) =`` :func:`adaptive_noise_parameters` and
    ``m = num_sampled_clients``:

    1. clip every update to L2 norm ``<= C`` and take the sample-weighted mean;
    2. add ``N(0, (z_delta C / m)^2)`` noise to every coordinate (drawn from ``generator``);
    3. ``b_hat = (#{i : ||x_i|| <= C} + N(0, sigma_b^2)) / n``, the noised fraction of
       *unclipped* updates (nothing drawn when ``sigma_b = 0``);
    4. ``state["clipping_norm"] = C exp(-clip_norm_lr (b_hat - target_clipped_quantile))``.

    With more than the target fraction unclipped the norm shrinks, with fewer it grows, so it
    settles at the ``target_clipped_quantile`` quantile of the update norms. Compared with
    Flower's ``DifferentialPrivacyServerSideAdaptiveClipping`` (same settings, defaults,
    validation, clipping, noise and geometric update): Flower counts the clipped updates
    instead, which turns the update's sign around, and noises with the already updated norm;
    see the module docstring. ``b_hat`` is not clamped to ``[0, 1]`` (neither Flower nor
    Algorithm 1 does; TF Privacy does). Flower's warning when ``z_delta >= 2 z`` is not
    repeated.

    Parameters
    ----------
    updates : Tensor
        Client updates, shape ``[n, d]``, floating point.
    weights : Tensor
        Sample counts, shape ``[n]``, all ``> 0``: the weights of the mean, as FedAvg's.
    noise_multiplier : float
        ``z``, a finite number ``>= 0``, split between the count and the update.
    num_sampled_clients : int
        ``m``, clients sampled per round (``clients_per_round``), ``>= 1``.
    initial_clipping_norm : float, default 0.1
        ``C`` at the first round, a finite number ``> 0`` (Andrew et al.'s 0.1).
    target_clipped_quantile : float, default 0.5
        ``gamma`` in ``[0, 1]``: the quantile of the update norms the clipping norm tracks,
        i.e. the fraction of updates left unclipped at equilibrium.
    clip_norm_lr : float, default 0.2
        ``eta_C``, a finite number ``> 0`` (Andrew et al.'s 0.2).
    clipped_count_stddev : float or None, default None
        ``sigma_b``, a finite number ``>= 0``, in counts; ``None``: ``m / 20`` if ``z > 0``,
        else 0.
    generator : torch.Generator
        Source of both noises, on the device of ``updates``.
    state : dict
        The defense's store across rounds (empty at the first round, the same dict every
        round); holds ``"clipping_norm"``, the norm of the next round.

    Returns
    -------
    Aggregate
        The noised mean; ``flagged`` is ``None``; ``influence`` the sample shares.

    Raises
    ------
    ValueError
        If a setting is out of range, ``z > 0`` with ``z >= 2 sigma_b``, ``generator`` is not
        a ``torch.Generator``, ``state`` is not a dict, or ``state["clipping_norm"]`` is not a
        finite number ``> 0``.
    NotEnoughClients
        If ``n == 0``.
    """
    rule = "dp_adaptive_clipping"
    _check_shared(rule, noise_multiplier, num_sampled_clients)
    _check_number(rule, "initial_clipping_norm", initial_clipping_norm, low=0, strict=True)
    if not _is_real(target_clipped_quantile) or not 0 <= target_clipped_quantile <= 1:
        raise ValueError(
            f"{rule}: target_clipped_quantile must be a number in [0, 1], "
            f"got target_clipped_quantile={target_clipped_quantile!r}"
        )
    _check_number(rule, "clip_norm_lr", clip_norm_lr, low=0, strict=True)
    if clipped_count_stddev is not None:
        _check_number(rule, "clipped_count_stddev", clipped_count_stddev, low=0, strict=False)
    count_stddev, update_multiplier = adaptive_noise_parameters(
        float(noise_multiplier), int(num_sampled_clients), clipped_count_stddev
    )
    _check_generator(rule, generator)
    if not isinstance(state, MutableMapping):
        raise ValueError(
            f"{rule}: state must be the defense's dict (kept across rounds), "
            f"got {type(state).__name__}"
        )
    n = _check_inputs(rule, updates, weights)
    _require_clients(rule, n)
    norm = state.get("clipping_norm", initial_clipping_norm)
    _check_number(rule, "state['clipping_norm']", norm, low=0, strict=True)
    norm = float(norm)

    update, norms = _clipped_mean(updates, weights, norm)
    update = add_gaussian_noise(
        update, sigma=update_multiplier * norm / int(num_sampled_clients), generator=generator
    )
    unclipped = float((norms <= norm).sum())
    if count_stddev > 0:
        noise = torch.randn((), generator=generator, dtype=torch.float64, device=generator.device)
        unclipped += count_stddev * float(noise)
    fraction = unclipped / n
    state["clipping_norm"] = norm * math.exp(
        -float(clip_norm_lr) * (fraction - float(target_clipped_quantile))
    )
    return Aggregate(update=update, flagged=None, influence=_sample_shares(weights))

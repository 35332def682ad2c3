"""Omniscient attacks: colluding clients that see the round's benign updates and craft one
update that defenses keep.

- :func:`alie` -- "A Little Is Enough" [1]_ (and its shift :func:`alie_z_max`).
- :func:`minmax` and :func:`minsum` -- the AGR-agnostic attacks of [2]_.
- :func:`ipm` -- inner-product manipulation [3]_.

All are untargeted: they degrade the global model rather than implant a backdoor. Every attack
follows the contract of :mod:`fedbackdoor.attacks._contract`: ``(updates, malicious, *,
weights=None, generator=None, **settings) -> updates``, a new tensor in which only the
malicious rows changed.

The server applies the attack where a round's updates are gathered, before validation and the
defense (:mod:`fedbackdoor.server_step`), so these attacks see the benign updates of the same
round, as a group of colluding clients that can observe them would; all their malicious rows
receive one and the same update. Two conventions they share:

- benign rows holding a NaN or an infinity are left out of the statistics: the server rejects
  them right after the attack, and one broken client must not also wipe out the attackers' rows;
- if a round has no (finite) benign row, the attackers fall back on their own rows, i.e. the
  honest updates their clients computed before the attack replaced them (the "partial
  knowledge" setting of [1]_ and [2]_).

References
----------
.. [1] M. Baruch, G. Baruch and Y. Goldberg, "A Little Is Enough: Circumventing Defenses For
   Distributed Learning", NeurIPS 2019.
.. [2] V. Shejwalkar and A. Houmansadr, "Manipulating the Byzantine: Optimizing Model Poisoning
   Attacks and Defenses for Federated Learning", NDSS 2021.
.. [3] C. Xie, O. Koyejo and I. Gupta, "Fall of Empires: Breaking Byzantine-tolerant SGD by
   Inner Product Manipulation", UAI 2019.
"""

from __future__ import annotations

from collections.abc import Callable
from statistics import NormalDist

import torch
from torch import Tensor

from fedbackdoor.attacks._contract import check_updates_and_mask, require_number

__all__ = ["alie", "alie_z_max", "ipm", "minmax", "minsum"]


def alie_z_max(num_clients: int, num_malicious: int) -> float:
    """The largest ``z`` that keeps ALIE's update inside the crowd, from [1]_ (Section 4).

    With ``n = num_clients`` and ``m = num_malicious``, the attackers need ``s = floor(n / 2 + 1)
    - m`` benign clients on their side to form a majority; ``z_max = Phi^{-1}((n - s) / n)``
    where ``Phi`` is the standard normal CDF. For example ``n = 10, m = 2``: ``s = 6 - 2 = 4``,
    ``z_max = Phi^{-1}(0.6) ~= 0.2533``.

    When the attackers already hold a majority (``s <= 0``) the formula gives ``z = inf``; ``s``
    is then taken as 1, the largest finite ``z`` the formula yields, so that a round which happens
    to sample a malicious majority still produces finite updates. A lone client (``n = 1``) gets
    ``z = 0``.

    Parameters
    ----------
    num_clients : int
        Number of updates in the round, ``n >= 1``.
    num_malicious : int
        Number of malicious updates among them, ``1 <= m <= n``.

    Returns
    -------
    float
        ``z_max >= 0``.

    Raises
    ------
    ValueError
        If the counts are not integers in range.
    """
    for name, value in (("num_clients", num_clients), ("num_malicious", num_malicious)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    if not 1 <= num_malicious <= num_clients:
        raise ValueError(f"num_malicious={num_malicious} must be in [1, num_clients={num_clients}]")
    s = max(num_clients // 2 + 1 - num_malicious, 1)
    quantile = (num_clients - s) / num_clients
    return NormalDist().inv_cdf(quantile) if quantile > 0 else 0.0


def alie(
    updates: Tensor,
    malicious: Tensor,
    *,
    z: float | None = None,
    weights: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """ALIE, "A Little Is Enough" [1]_: every malicious row becomes ``mu - z * sigma``.

    ``mu`` and ``sigma`` are the coordinate-wise mean and standard deviation of the benign rows.
    Shifting every coordinate by a small multiple of its spread keeps the malicious update close
    to the crowd, so median- and distance-based defenses keep (or even select) it, while the
    shifts add up over millions of coordinates.

    Omniscient: the attackers see the benign updates of the same round (see the module notes for
    non-finite benign rows and rounds with no benign row).

    Parameters
    ----------
    updates : Tensor
        ``[n, d]`` client updates, one per row. Not modified.
    malicious : Tensor
        ``[n]`` bool mask of the rows the attacker controls.
    z : float or None, default None
        Number of standard deviations to shift by, finite and ``>= 0``. ``None`` uses the
        paper's :func:`alie_z_max` for this round's ``n`` rows and ``m`` malicious rows.
    generator : torch.Generator, optional
        Unused; accepted so every attack shares one signature.

    Returns
    -------
    Tensor
        New ``[n, d]`` tensor: malicious rows ``mu - z * sigma``, the others bit-identical.

    Raises
    ------
    ValueError
        If ``z`` is not ``None`` or a finite number ``>= 0``, or the shapes are malformed.

    Notes
    -----
    ``sigma`` is the population standard deviation (``correction=0``): the attackers describe
    the benign updates they observe rather than estimate a wider population, and a single
    benign row gives ``sigma = 0`` instead of NaN. The unbiased estimate would only enlarge
    ``sigma`` by ``sqrt(k / (k - 1))`` for ``k`` benign rows.
    """
    check_updates_and_mask(updates, malicious)
    if z is not None:
        require_number("z", z, minimum=0.0, inclusive=True)
    rows = malicious.to(updates.device)
    count = int(rows.sum())
    if count == 0:
        return updates.clone()
    shift = alie_z_max(updates.shape[0], count) if z is None else float(z)
    reference = _reference(updates, rows)
    mu = reference.mean(dim=0)
    sigma = reference.std(dim=0, correction=0)
    return _replace(updates, rows, mu - shift * sigma)


def ipm(
    updates: Tensor,
    malicious: Tensor,
    *,
    epsilon: float = 0.5,
    weights: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Inner-product manipulation [3]_: every malicious row becomes ``-epsilon * mean(benign)``.

    A small ``epsilon`` hides the attackers among the benign updates yet, once aggregated, can
    make the inner product of the aggregate with the true gradient negative; a large one
    (``epsilon > n_benign / n_malicious``) turns the mean of all updates against the benign one.

    Omniscient: the attackers see the benign updates of the same round (see the module notes for
    non-finite benign rows and rounds with no benign row).

    Parameters
    ----------
    updates : Tensor
        ``[n, d]`` client updates, one per row. Not modified.
    malicious : Tensor
        ``[n]`` bool mask of the rows the attacker controls.
    epsilon : float, default 0.5
        How far to reverse the benign mean, finite and positive.
    generator : torch.Generator, optional
        Unused; accepted so every attack shares one signature.

    Returns
    -------
    Tensor
        New ``[n, d]`` tensor: malicious rows ``-epsilon * mean(benign)``, the others
        bit-identical.

    Raises
    ------
    ValueError
        If ``epsilon`` is not a finite positive number or the shapes are malformed.
    """
    check_updates_and_mask(updates, malicious)
    require_number("epsilon", epsilon, minimum=0.0)
    rows = malicious.to(updates.device)
    if not rows.any():
        return updates.clone()
    return _replace(updates, rows, -epsilon * _reference(updates, rows).mean(dim=0))


def minmax(
    updates: Tensor,
    malicious: Tensor,
    *,
    perturbation: str = "std",
    gamma_init: float = 10.0,
    tol: float = 1e-5,
    weights: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Min-Max [2]_: the update furthest along ``p`` that is no further from any benign update
    than the benign updates are from each other.

    Every malicious row becomes ``mu + gamma * p`` where ``mu`` is the mean of the benign rows,
    ``p`` a direction opposite to it (see ``perturbation``) and ``gamma`` the largest value with

        ``max_i ||mu + gamma * p - g_i|| <= max_{i, j} ||g_i - g_j||``

    over the benign rows ``g``, found by the paper's halving search.
    Distance-based defenses cannot tell such an update from a benign outlier.

    Omniscient: the attackers see the benign updates of the same round (see the module notes for
    non-finite benign rows and rounds with no benign row).

    Parameters
    ----------
    updates : Tensor
        ``[n, d]`` client updates, one per row. Not modified.
    malicious : Tensor
        ``[n]`` bool mask of the rows the attacker controls.
    perturbation : {"std", "unit_vec", "sign"}, default "std"
        ``p``: minus the coordinate-wise (population) standard deviation of the benign rows,
        minus ``mu / ||mu||``, or minus ``sign(mu)``. The scale of ``p`` only rescales ``gamma``.
        A zero direction (e.g. ``mu = 0`` with ``"unit_vec"``) leaves the update at ``mu``.
    gamma_init : float, default 10.0
        First ``gamma`` tried and first step, finite and positive. The search only reaches
        ``gamma < 2 * gamma_init``: raise it if the result sits at that cap.
    tol : float, default 1e-5
        The search stops once its step falls to ``tol`` (absolute), finite, in
        ``(0, gamma_init)``.
    generator : torch.Generator, optional
        Unused; accepted so every attack shares one signature.

    Returns
    -------
    Tensor
        New ``[n, d]`` tensor: malicious rows ``mu + gamma * p``, the others bit-identical.

    Raises
    ------
    ValueError
        If a setting is out of range or the shapes are malformed.
    """
    return _shejwalkar(
        updates, malicious, perturbation=perturbation, gamma_init=gamma_init, tol=tol, total=False
    )


def minsum(
    updates: Tensor,
    malicious: Tensor,
    *,
    perturbation: str = "std",
    gamma_init: float = 10.0,
    tol: float = 1e-5,
    weights: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Min-Sum [2]_: the update furthest along ``p`` whose sum of squared distances to the benign
    updates is no larger than that of any benign update.

    As :func:`minmax`, with the constraint

        ``sum_i ||mu + gamma * p - g_i||^2 <= max_i sum_j ||g_i - g_j||^2``

    which defeats score-based defenses such as Krum. Omniscient: the attackers see the benign
    updates of the same round (see the module notes for non-finite benign rows and rounds with
    no benign row).

    Parameters
    ----------
    updates : Tensor
        ``[n, d]`` client updates, one per row. Not modified.
    malicious : Tensor
        ``[n]`` bool mask of the rows the attacker controls.
    perturbation : {"std", "unit_vec", "sign"}, default "std"
        ``p``, as in :func:`minmax`.
    gamma_init : float, default 10.0
        First ``gamma`` tried and first step, as in :func:`minmax`.
    tol : float, default 1e-5
        Step at which the search stops, as in :func:`minmax`.
    generator : torch.Generator, optional
        Unused; accepted so every attack shares one signature.

    Returns
    -------
    Tensor
        New ``[n, d]`` tensor: malicious rows ``mu + gamma * p``, the others bit-identical.

    Raises
    ------
    ValueError
        If a setting is out of range or the shapes are malformed.

    Notes
    -----
    The bound is the paper's equation (the *largest* benign sum of squared distances); the
    authors' published code compares with the smallest one, a stricter and stealthier variant.
    """
    return _shejwalkar(
        updates, malicious, perturbation=perturbation, gamma_init=gamma_init, tol=tol, total=True
    )


def _std_direction(reference: Tensor, mu: Tensor) -> Tensor:
    return -reference.std(dim=0, correction=0)


def _unit_direction(reference: Tensor, mu: Tensor) -> Tensor:
    norm = torch.linalg.vector_norm(mu)
    return -mu / norm if norm > 0 else torch.zeros_like(mu)


def _sign_direction(reference: Tensor, mu: Tensor) -> Tensor:
    return -torch.sign(mu)


_PERTURBATIONS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "std": _std_direction,
    "unit_vec": _unit_direction,
    "sign": _sign_direction,
}


def _shejwalkar(
    updates: Tensor,
    malicious: Tensor,
    *,
    perturbation: str,
    gamma_init: float,
    tol: float,
    total: bool,
) -> Tensor:
    """Min-Max (``total=False``) or Min-Sum (``total=True``) of [2]_."""
    check_updates_and_mask(updates, malicious)
    if not isinstance(perturbation, str) or perturbation not in _PERTURBATIONS:
        raise ValueError(
            f"perturbation must be one of {sorted(_PERTURBATIONS)}, got {perturbation!r}"
        )
    require_number("gamma_init", gamma_init, minimum=0.0)
    require_number("tol", tol, minimum=0.0)
    if tol >= gamma_init:
        raise ValueError(f"tol={tol} must be < gamma_init={gamma_init}, or no gamma is searched")
    rows = malicious.to(updates.device)
    if not rows.any():
        return updates.clone()

    reference = _reference(updates, rows)
    mu = reference.mean(dim=0)
    direction = _PERTURBATIONS[perturbation](reference, mu)
    # The direct form, not ||x||^2 + ||y||^2 - 2xy: that one cancels when updates are close
    # relative to their norms, which is where the bound is decided.
    pairwise = torch.cdist(reference, reference, compute_mode="donot_use_mm_for_euclid_dist")
    if total:
        bound = pairwise.square().sum(dim=1).max()
    else:
        bound = pairwise.max()

    def fits(gamma: float) -> bool:
        candidate = (mu + gamma * direction).unsqueeze(0)
        distances = torch.cdist(
            candidate, reference, compute_mode="donot_use_mm_for_euclid_dist"
        ).squeeze(0)
        spread = distances.square().sum() if total else distances.max()
        return bool(spread <= bound)

    gamma = _largest_gamma(fits, gamma_init=gamma_init, tol=tol)
    return _replace(updates, rows, mu + gamma * direction)


def _largest_gamma(fits: Callable[[float], bool], *, gamma_init: float, tol: float) -> float:
    """The halving search of [2]_ (Algorithm 1): the largest ``gamma`` with ``fits(gamma)``.

    Starts at ``gamma_init`` with step ``gamma_init``; after each trial it moves half the step up
    (success) or down (failure) and halves the step, until the step is ``<= tol``. The tried
    value always exceeds the last success by exactly the current step, so this is the paper's
    ``|gamma_succ - gamma| > tol`` loop. Assumes the feasible set is an interval ``[0, g*]``
    (true for both constraints: convex in ``gamma`` and satisfied at 0); returns the last
    success, ``0`` if none, and never more than ``2 * gamma_init``.
    """
    gamma, step, good = gamma_init, gamma_init, 0.0
    while step > tol:
        if fits(gamma):
            good = gamma
            gamma += step / 2
        else:
            gamma -= step / 2
        step /= 2
    return good


def _reference(updates: Tensor, rows: Tensor) -> Tensor:
    """The rows an omniscient attacker computes its statistics from: the finite benign rows,
    or its own rows if there are none."""
    benign = ~rows & torch.isfinite(updates).all(dim=1)
    return updates[benign] if benign.any() else updates[rows]


def _replace(updates: Tensor, rows: Tensor, malicious_update: Tensor) -> Tensor:
    """A copy of ``updates`` with every row in ``rows`` set to ``malicious_update`` ``[d]``."""
    poisoned = updates.clone()
    poisoned[rows] = malicious_update.to(updates.dtype)
    return poisoned

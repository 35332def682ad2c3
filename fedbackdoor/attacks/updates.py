"""Model-poisoning attacks: pure functions over the stacked updates of one round.

Every attack has the signature ``(updates, malicious, *, weights=None, generator=None, **settings)
-> updates`` where ``updates`` is ``[n, d]`` (one client's parameter delta per row),
``malicious`` is an ``[n]`` bool mask and ``weights`` the clients' sample counts ``[n]`` (the
weights FedAvg would give them; only :func:`model_replacement` uses them). An attack returns a
new tensor, changes only the malicious rows and never looks at which defense is running.
Settings are keyword-only and validated up front; Hydra binds them with ``_partial_: true`` so
the caller supplies only ``updates``, ``malicious``, ``weights`` and ``generator``.
With no malicious row every attack returns an unchanged copy.

The server applies the attack where a round's updates are gathered, before validation and the
defense (:mod:`fedbackdoor.server_step`). The *omniscient* attacks (:func:`alie`, :func:`ipm`,
:func:`minmax`, :func:`minsum`) therefore see the benign updates of the same round, as a group of
colluding clients that can observe them would; all their malicious rows receive one and the same
update. Two conventions shared by these four:

- benign rows holding a NaN or an infinity are left out of the statistics: the server rejects
  them right after the attack, and one broken client must not also wipe out the attackers' rows;
- if a round has no (finite) benign row, the attackers fall back on their own rows, i.e. the
  honest updates their clients computed before the attack replaced them (the "partial
  knowledge" setting of [4]_ and [5]_).

Implemented attacks
-------------------
- :func:`model_replacement` -- the boost that replaces the global model [1]_; :func:`scale` --
  a fixed boost; :func:`identity` -- none (data-only attacks);
  :func:`chain` -- several in order (an attack's ``apply``, then its ``attack.boost``).
- :func:`sign_flip` -- reversed updates [2]_ (Blades' "signflipping").
- :func:`gaussian` -- the Gaussian Byzantine worker of [3]_.
- :func:`alie` -- "A Little Is Enough" [4]_.
- :func:`ipm` -- inner-product manipulation [6]_.
- :func:`minmax` and :func:`minsum` -- the AGR-agnostic attacks of [5]_.

All but :func:`scale` and :func:`identity` are untargeted: they degrade the global model rather
than implant a backdoor.

References
----------
.. [1] E. Bagdasaryan, A. Veit, Y. Hua, D. Estrin and V. Shmatikov, "How To Backdoor Federated
   Learning", AISTATS 2020.
.. [2] G. Damaskinos, E. M. El Mhamdi, R. Guerraoui, R. Patra and M. Taziki, "Asynchronous
   Byzantine Machine Learning (the case of SGD)", ICML 2018.
.. [3] P. Blanchard, E. M. El Mhamdi, R. Guerraoui and J. Stainer, "Machine Learning with
   Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS 2017.
.. [4] M. Baruch, G. Baruch and Y. Goldberg, "A Little Is Enough: Circumventing Defenses For
   Distributed Learning", NeurIPS 2019.
.. [5] V. Shejwalkar and A. Houmansadr, "Manipulating the Byzantine: Optimizing Model Poisoning
   Attacks and Defenses for Federated Learning", NDSS 2021.
.. [6] C. Xie, O. Koyejo and I. Gupta, "Fall of Empires: Breaking Byzantine-tolerant SGD by
   Inner Product Manipulation", UAI 2019.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from statistics import NormalDist

import torch
from torch import Tensor

__all__ = [
    "model_replacement",
    "alie",
    "chain",
    "alie_z_max",
    "gaussian",
    "identity",
    "ipm",
    "minmax",
    "minsum",
    "scale",
    "sign_flip",
]


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
    _check(updates, malicious)
    _require_number("boost", boost, minimum=0.0)
    poisoned = updates.clone()
    rows = malicious.to(updates.device)
    poisoned[rows] = updates[rows] * boost
    return poisoned


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
    _check(updates, malicious)
    _require_number("server_lr", server_lr, minimum=0.0)
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
    poisoned = updates.clone()
    poisoned[rows] = updates[rows] * gamma
    return poisoned


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
    _check(updates, malicious)
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


def sign_flip(
    updates: Tensor,
    malicious: Tensor,
    *,
    scale: float = 1.0,
    weights: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Replace each malicious update by ``-scale`` times itself: the sign-flipping attack [2]_.

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
    _check(updates, malicious)
    _require_number("scale", scale, minimum=0.0)
    rows = malicious.to(updates.device)
    poisoned = updates.clone()
    poisoned[rows] = updates[rows] * -scale
    return poisoned


def gaussian(
    updates: Tensor,
    malicious: Tensor,
    *,
    std: float = 1.0,
    weights: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Replace each malicious update by independent ``N(0, std^2)`` noise: the Gaussian
    Byzantine worker of [3]_.

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
    _check(updates, malicious)
    _require_number("std", std, minimum=0.0)
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


def alie_z_max(num_clients: int, num_malicious: int) -> float:
    """The largest ``z`` that keeps ALIE's update inside the crowd, from [4]_ (Section 4).

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
    """ALIE, "A Little Is Enough" [4]_: every malicious row becomes ``mu - z * sigma``.

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
    _check(updates, malicious)
    if z is not None:
        _require_number("z", z, minimum=0.0, inclusive=True)
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
    """Inner-product manipulation [6]_: every malicious row becomes ``-epsilon * mean(benign)``.

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
    _check(updates, malicious)
    _require_number("epsilon", epsilon, minimum=0.0)
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
    """Min-Max [5]_: the update furthest along ``p`` that is no further from any benign update
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
    """Min-Sum [5]_: the update furthest along ``p`` whose sum of squared distances to the benign
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
    """Min-Max (``total=False``) or Min-Sum (``total=True``) of [5]_."""
    _check(updates, malicious)
    if not isinstance(perturbation, str) or perturbation not in _PERTURBATIONS:
        raise ValueError(
            f"perturbation must be one of {sorted(_PERTURBATIONS)}, got {perturbation!r}"
        )
    _require_number("gamma_init", gamma_init, minimum=0.0)
    _require_number("tol", tol, minimum=0.0)
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
    """The halving search of [5]_ (Algorithm 1): the largest ``gamma`` with ``fits(gamma)``.

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


def _require_number(name: str, value: object, *, minimum: float, inclusive: bool = False) -> None:
    """Raise unless ``value`` is a finite real number above ``minimum`` (or equal to it, if
    ``inclusive``). Booleans and strings from a mistyped config are rejected, not coerced."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {value!r}")
    above = value >= minimum if inclusive else value > minimum
    if not (math.isfinite(value) and above):
        relation = ">=" if inclusive else ">"
        raise ValueError(f"{name} must be finite and {relation} {minimum:g}, got {value}")


def _check(updates: Tensor, malicious: Tensor) -> None:
    if updates.dim() != 2:
        raise ValueError(f"updates must have shape [n, d], got {tuple(updates.shape)}")
    if not updates.is_floating_point():
        raise ValueError(f"updates must be floating point, got dtype {updates.dtype}")
    if malicious.dtype != torch.bool:
        # An integer tensor would index rows by position instead of masking them, silently.
        raise ValueError(f"malicious must be a bool mask, got dtype {malicious.dtype}")
    if malicious.shape != updates.shape[:1]:
        raise ValueError(
            f"malicious must have shape [n] = ({updates.shape[0]},), got {tuple(malicious.shape)}"
        )

"""Clustering and outlier-filtering rules: find the benign majority, average only it.

- :func:`flame` -- Nguyen, Rieger, Chen, Yalame, Möllering, Fereidooni, Marchal, Miettinen,
  Mirhoseini, Zeitouni, Koushanfar, Sadeghi & Schulz (2022), "FLAME: Taming Backdoors in
  Federated Learning", USENIX Security.
- :func:`dnc` (Divide-and-Conquer) -- Shejwalkar & Houmansadr (2021), "Manipulating the
  Byzantine: Optimizing Model Poisoning Attacks and Defenses for Federated Learning", NDSS.

The rules follow the contract of :mod:`fedbackdoor.defenses.base`; both draw, from
``generator`` only, and ``flagged`` marks the clients they exclude. FLAME clusters on the
``[n, n]`` float64 Gram matrix of the updates, DnC on sub-sampled coordinates; every aggregate
is a single combination ``coefficients @ updates``.
"""

from __future__ import annotations

import math

import torch
from sklearn.cluster import HDBSCAN
from torch import Tensor

from fedbackdoor.defenses._linalg import combine, cosine_from_gram, gram_matrix, median_of_sorted
from fedbackdoor.defenses.base import (
    Aggregate,
    NotEnoughClients,
    _check_generator,
    _check_inputs,
    _is_int,
    _is_real,
    _nobody_trusted,
    _require_clients,
    _selection_shares,
)
from fedbackdoor.defenses.transforms import add_gaussian_noise

__all__ = ["dnc", "flame"]


# --------------------------------------------------------------------------------------------
# FLAME
# --------------------------------------------------------------------------------------------


def _flame_admitted(cosine: Tensor) -> Tensor:
    """Bool mask of the clients in FLAME's HDBSCAN cluster, from their cosine similarities."""
    n = cosine.shape[0]
    if n == 1:
        return torch.ones(1, dtype=torch.bool)  # HDBSCAN needs two points; one is a majority
    distances = (1 - cosine).clamp(0, 2).fill_diagonal_(0)
    # min_samples=1 makes the core distances 0, so the clustering is single linkage on the
    # cosine distances (the paper does not set it). With more than n / 2 points per cluster at
    # most one cluster exists, and allow_single_cluster lets HDBSCAN return it.
    labels = (
        HDBSCAN(
            min_cluster_size=n // 2 + 1,
            min_samples=1,
            metric="precomputed",
            allow_single_cluster=True,
            copy=True,
        )
        .fit(distances.cpu().numpy())
        .labels_
    )
    return torch.from_numpy(labels >= 0)


def flame(
    updates: Tensor,
    weights: Tensor,
    *,
    noise_lambda: float = 0.001,
    generator: torch.Generator,
) -> Aggregate:
    """FLAME (Nguyen et al. 2022): cluster, clip to the median norm, average, add noise.

    1. Filtering: HDBSCAN on the pairwise cosine distances ``1 - cos(x_i, x_j)`` with
       ``min_cluster_size = n // 2 + 1`` (and ``min_samples = 1``, ``allow_single_cluster``):
       the one cluster it can find holds a majority of the clients and is admitted; the clients
       HDBSCAN labels noise are rejected. (For a single cluster HDBSCAN labels as members the
       points still in it when it dissolves, at least ``n // 2 + 1``: a benign update looser
       than the rest can be rejected, as in the paper's false-positive rates.)
    2. Clipping: with ``S`` the median L2 norm of *all* ``n`` updates (the mean of the middle
       two for even ``n``), every admitted update is scaled by ``min(1, S / ||x_i||)``.
    3. Aggregation: the unweighted mean of the clipped admitted updates (as in the paper).
    4. Noise: ``N(0, sigma^2)`` on every coordinate, ``sigma = noise_lambda * S``, drawn from
       ``generator`` (see :func:`~fedbackdoor.defenses.transforms.add_gaussian_noise`).

    Influence: the admitted clients' equal shares ``1 / |admitted|`` in the unweighted mean of
    the clipped admitted updates (clipping shrinks an update but leaves it its client's), 0
    for the rejected; the noise is nobody's.

    Parameters
    ----------
    updates : Tensor
        Client updates, shape ``[n, d]``, floating point.
    weights : Tensor
        Sample counts, shape ``[n]``, all ``> 0`` (unused: the paper's mean is uniform).
    noise_lambda : float, default 0.001
        The paper's ``lambda``, a finite number ``>= 0``: the noise level relative to ``S``
        (0.001 for image classification in the paper; 0 disables the noise).
    generator : torch.Generator
        Source of the noise, on the device of ``updates``; the only randomness.

    Returns
    -------
    Aggregate
        The noised mean of the clipped admitted updates; ``flagged`` marks the rejected clients;
        ``influence`` as above. Should HDBSCAN admit nobody, the update is zero (no noise),
        every client is flagged and nobody has influence.

    Raises
    ------
    ValueError
        If ``noise_lambda`` is not a finite number ``>= 0`` or ``generator`` is not a
        ``torch.Generator``.
    NotEnoughClients
        If ``n == 0``.
    """
    if not _is_real(noise_lambda) or not 0 <= noise_lambda < math.inf:
        raise ValueError(
            f"flame: noise_lambda must be a finite number >= 0, got noise_lambda={noise_lambda!r}"
        )
    _check_generator("flame", generator)
    n = _check_inputs("flame", updates, weights)
    _require_clients("flame", n)
    gram = gram_matrix(updates)
    admitted = _flame_admitted(cosine_from_gram(gram).cpu()).to(gram.device)
    if not bool(admitted.any()):
        return _nobody_trusted(updates)
    norms = gram.diagonal().clamp_min(0).sqrt()
    bound = median_of_sorted(torch.sort(norms).values)
    shrink = torch.where(norms > bound, bound / torch.where(norms > 0, norms, 1.0), 1.0)
    coefficients = torch.where(admitted, shrink, 0.0) / admitted.sum()
    update = combine(updates, coefficients)
    update = add_gaussian_noise(
        update, sigma=float(noise_lambda) * float(bound), generator=generator
    )
    return Aggregate(
        update=update,
        flagged=~admitted.to(updates.device),
        influence=_selection_shares(admitted).to(updates.device),
    )


# --------------------------------------------------------------------------------------------
# Divide-and-Conquer
# --------------------------------------------------------------------------------------------


def dnc(
    updates: Tensor,
    weights: Tensor,
    *,
    f: int,
    c: float = 1.0,
    niters: int = 5,
    b: int = 10000,
    generator: torch.Generator,
) -> Aggregate:
    """Divide-and-Conquer (Shejwalkar & Houmansadr 2021, Algorithm 2).

    ``niters`` times: draw ``min(b, d)`` of the ``d`` coordinates uniformly without replacement
    (from ``generator``), centre the sub-sampled updates at their mean, take the top right
    singular vector ``v`` of the centred matrix, score every client by ``<x_i - mu, v>^2`` and
    keep the ``n - floor(c * f)`` lowest scores (equal scores keep the lower client index). The
    good set is the intersection of the kept sets; the aggregate is its unweighted mean.

    With ``b >= d`` every iteration would see the same coordinates, so the filter runs once and
    nothing is drawn.

    Influence: ``1 / |good|`` for the clients of the good set, the coefficients of its
    unweighted mean; 0 for the others.

    Parameters
    ----------
    updates : Tensor
        Client updates, shape ``[n, d]``, floating point.
    weights : Tensor
        Sample counts, shape ``[n]``, all ``> 0`` (unused: the paper's mean is uniform).
    f : int
        Assumed number of malicious clients, an integer ``>= 0``.
    c : float, default 1.0
        Filtering fraction, a finite number ``> 0``: each iteration removes ``floor(c * f)``.
    niters : int, default 5
        Number of iterations, an integer ``>= 1``.
    b : int, default 10000
        Number of coordinates sub-sampled per iteration, an integer ``>= 1``.
    generator : torch.Generator
        Source of the coordinate samples (a CPU generator for CPU updates).

    Returns
    -------
    Aggregate
        The mean of the good set; ``flagged`` marks the clients outside it; ``influence`` as
        above. Should the intersection be empty (possible when ``niters * floor(c * f) >= n``),
        the update is zero, every client is flagged and nobody has influence.

    Raises
    ------
    ValueError
        If ``f``, ``niters`` or ``b`` is not an integer in range, ``c`` not a finite number
        ``> 0`` or ``generator`` not a ``torch.Generator``.
    NotEnoughClients
        If ``n <= floor(c * f)``: an iteration would remove everybody.
    """
    if not _is_int(f) or f < 0:
        raise ValueError(f"dnc: f must be an integer >= 0, got f={f!r}")
    if not _is_real(c) or not 0 < c < math.inf:
        raise ValueError(f"dnc: c must be a finite number > 0, got c={c!r}")
    if not _is_int(niters) or niters < 1:
        raise ValueError(f"dnc: niters must be an integer >= 1, got niters={niters!r}")
    if not _is_int(b) or b < 1:
        raise ValueError(f"dnc: b must be an integer >= 1, got b={b!r}")
    _check_generator("dnc", generator)
    n = _check_inputs("dnc", updates, weights)
    # The tolerance keeps e.g. c=0.3, f=10 at 3 although 0.3 * 10 < 3 in floats.
    removed = math.floor(c * f + 1e-9)
    if n <= removed:
        raise NotEnoughClients(
            f"dnc needs n >= floor(c * f) + 1 = {removed + 1} clients (it removes "
            f"floor(c * f) = {removed} per iteration), got n={n} (f={f}, c={c})"
        )
    d = updates.shape[1]
    size = min(int(b), d)
    good = torch.ones(n, dtype=torch.bool, device=updates.device)
    for _ in range(niters if size < d else 1):
        if size < d:
            drawn = torch.randperm(d, generator=generator, device=generator.device)[:size]
            columns = torch.sort(drawn).values.to(updates.device)
            sample = updates.index_select(1, columns).to(torch.float64)
        else:
            sample = updates.to(torch.float64)
        centred = sample - sample.mean(dim=0)
        # With C = U S V^T, the projections C v_1 on the top right singular vector are
        # s_1 u_1, the top eigenpair of the [n, n] matrix C C^T: the same scores as an SVD of
        # the [n, b] matrix (2 s at n=100, b=10^4), in milliseconds.
        eigenvalues, eigenvectors = torch.linalg.eigh(centred @ centred.T)
        scores = eigenvalues[-1].clamp_min(0) * eigenvectors[:, -1].square()
        kept = torch.sort(scores, stable=True).indices[: n - removed]
        good &= torch.zeros_like(good).index_fill_(0, kept, True)
    if not bool(good.any()):
        return _nobody_trusted(updates)
    share = _selection_shares(good)
    return Aggregate(update=combine(updates, share), flagged=~good, influence=share)

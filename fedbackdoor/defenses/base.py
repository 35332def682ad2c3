"""What every aggregation rule shares: its result, its precondition error and its input checks.

Every rule has the signature ``rule(updates, weights, *, generator, **settings) -> Aggregate``
where ``updates`` is ``Tensor[n, d]`` (one flattened model update per row) and ``weights`` is
``Tensor[n]`` (the clients' sample counts, all ``> 0``). Settings are keyword-only and validated
before any computation; a precondition on the number of clients ``n`` raises
:class:`NotEnoughClients`, so a caller can keep the previous model for that round while still
letting a mis-configured setting (a plain ``ValueError``) fail loudly. The rules that draw
(:func:`~fedbackdoor.defenses.clustering.flame`, :func:`~fedbackdoor.defenses.clustering.dnc`,
the DP rules of :mod:`fedbackdoor.defenses.dp`) take their randomness only from ``generator``;
the others accept the keyword ``generator: torch.Generator | None = None`` and ignore it, so
that all rules share one signature.

Every rule also reports each client's *influence* (:attr:`Aggregate.influence`), the share of
the aggregate attributable to it; each rule's docstring defines it. The caller's malicious
influence of a round is ``influence[malicious].sum()``.

The rules, one module per family:

- :mod:`~fedbackdoor.defenses.averaging` -- FedAvg's weighted mean;
- :mod:`~fedbackdoor.defenses.coordinatewise` -- median and trimmed mean;
- :mod:`~fedbackdoor.defenses.distance` -- Krum, Multi-Krum and Bulyan;
- :mod:`~fedbackdoor.defenses.geometric_median` -- RFA;
- :mod:`~fedbackdoor.defenses.centered_clip` -- centered clipping;
- :mod:`~fedbackdoor.defenses.clustering` -- FLAME and Divide-and-Conquer;
- :mod:`~fedbackdoor.defenses.trust` -- FoolsGold and FLTrust;
- :mod:`~fedbackdoor.defenses.robust_lr` -- the robust learning rate;
- :mod:`~fedbackdoor.defenses.dp` -- central differential privacy.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral, Real

import torch
from torch import Tensor

__all__ = ["Aggregate", "NotEnoughClients"]


class NotEnoughClients(ValueError):
    """A rule's precondition on the number of clients ``n`` does not hold this round.

    Subclasses ``ValueError``; callers that want to skip the round (keep the previous model)
    should catch this class specifically, so that invalid settings still propagate.
    """


@dataclass(frozen=True)
class Aggregate:
    """The result of an aggregation rule.

    Attributes
    ----------
    update : Tensor
        The aggregated update, shape ``[d]``.
    flagged : Tensor or None
        Boolean mask of shape ``[n]``: ``True`` for clients the rule *classified* as malicious
        (rejected as outliers, distrusted); detection rates are scored on it. ``None`` for rules
        that classify nobody by design: the coordinate-wise and averaging rules, and the
        selection rules (Krum, Multi-Krum, Bulyan), whose "not selected" is no verdict on a
        client (Krum leaves out ``n - 1`` clients every round); who they selected is in
        ``influence``. ``None`` differs from "flagged nobody this round" (all ``False``).
    influence : Tensor or None
        Float64 ``[n]``: the share of the aggregate attributable to each client, entries
        ``>= 0`` summing to 1 -- or all 0 when the rule trusted nobody and returned a zero
        update. Each rule's docstring defines it (the combination coefficients of a rule that
        combines whole updates, the share of coordinates taken from each client for a
        coordinate-wise rule). Noise a rule adds is nobody's. ``None`` only for a rule
        written outside this package that does not report it.
    """

    update: Tensor
    flagged: Tensor | None
    influence: Tensor | None = None


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------


def _is_int(value: object) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _check_inputs(rule: str, updates: Tensor, weights: Tensor) -> int:
    """Validate the common ``(updates, weights)`` contract and return ``n``."""
    if not isinstance(updates, Tensor) or updates.dim() != 2:
        shape = tuple(updates.shape) if isinstance(updates, Tensor) else type(updates).__name__
        raise ValueError(f"{rule}: updates must be a 2-D tensor [n, d], got {shape}")
    if not updates.is_floating_point():
        raise ValueError(f"{rule}: updates must be floating point, got {updates.dtype}")
    n = updates.shape[0]
    if not isinstance(weights, Tensor) or tuple(weights.shape) != (n,):
        shape = tuple(weights.shape) if isinstance(weights, Tensor) else type(weights).__name__
        raise ValueError(f"{rule}: weights must have shape ({n},) to match updates, got {shape}")
    if n > 0 and not bool(torch.all(torch.isfinite(weights) & (weights > 0))):
        raise ValueError(f"{rule}: weights must be finite and > 0, got {weights.tolist()}")
    return n


def _require_clients(rule: str, n: int) -> None:
    if n == 0:
        raise NotEnoughClients(f"{rule} needs n >= 1 clients, got n=0")


def _check_generator(rule: str, generator: object) -> None:
    if not isinstance(generator, torch.Generator):
        raise ValueError(
            f"{rule}: generator must be a torch.Generator, got generator={generator!r}"
        )


def _check_tensor_setting(
    rule: str, name: str, value: object, shape: tuple[int, ...], *, finite: bool = True
) -> None:
    """A tensor setting (or a tensor kept in a rule's state) must be floating, of the given
    shape and (if ``finite``) finite."""
    if (
        isinstance(value, Tensor)
        and value.is_floating_point()
        and tuple(value.shape) == shape
        and (not finite or bool(torch.all(torch.isfinite(value))))
    ):
        return
    described = (
        f"shape {tuple(value.shape)}, dtype {value.dtype}"
        if isinstance(value, Tensor)
        else type(value).__name__
    )
    raise ValueError(
        f"{rule}: {name} must be a finite floating tensor of shape {shape}, "
        f"got {name} with {described}"
    )


# --------------------------------------------------------------------------------------------
# Shares and results every family uses
# --------------------------------------------------------------------------------------------


def _sample_shares(weights: Tensor) -> Tensor:
    """``w_i / sum_j w_j`` in float64 (large sample counts keep their precision)."""
    weights = weights.to(torch.float64)
    return weights / weights.sum()


def _selection_shares(chosen: Tensor) -> Tensor:
    """Equal float64 shares ``1 / |chosen|`` for the ``True`` entries of a bool mask (all 0 if
    none is chosen)."""
    chosen = chosen.to(torch.float64)
    total = chosen.sum()
    return chosen / total if total > 0 else chosen


def _nobody_trusted(updates: Tensor) -> Aggregate:
    """Zero update (the global model stays as it is), every client flagged, nobody's influence."""
    n, d = updates.shape
    return Aggregate(
        update=torch.zeros(d, dtype=updates.dtype, device=updates.device),
        flagged=torch.ones(n, dtype=torch.bool, device=updates.device),
        influence=torch.zeros(n, dtype=torch.float64, device=updates.device),
    )

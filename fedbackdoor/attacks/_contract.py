"""The contract every model-poisoning attack on a round's stacked updates keeps (private).

Every attack (:mod:`~fedbackdoor.attacks.boost`, :mod:`~fedbackdoor.attacks.byzantine`,
:mod:`~fedbackdoor.attacks.omniscient`) has the signature ``(updates, malicious, *,
weights=None, generator=None, **settings) -> updates`` where ``updates`` is ``[n, d]`` (one
client's parameter delta per row), ``malicious`` is an ``[n]`` bool mask and ``weights`` the
clients' sample counts ``[n]`` (the weights FedAvg would give them; only
:func:`~fedbackdoor.attacks.boost.model_replacement` uses them). An attack returns a new tensor,
changes only the malicious rows and never looks at which defense is running. Settings are
keyword-only and validated up front; Hydra binds them with ``_partial_: true`` so the caller
supplies only ``updates``, ``malicious``, ``weights`` and ``generator``. With no malicious row
every attack returns an unchanged copy.

The server applies the attack where a round's updates are gathered, before validation and the
defense (:mod:`fedbackdoor.server_step`).

This module holds the checks the attacks share and the copy that rescales the malicious rows.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def check_updates_and_mask(updates: Tensor, malicious: Tensor) -> None:
    """Raise unless ``updates`` is a floating ``[n, d]`` tensor and ``malicious`` an ``[n]``
    bool mask."""
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


def require_number(name: str, value: object, *, minimum: float, inclusive: bool = False) -> None:
    """Raise unless ``value`` is a finite real number above ``minimum`` (or equal to it, if
    ``inclusive``). Booleans and strings from a mistyped config are rejected, not coerced."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {value!r}")
    above = value >= minimum if inclusive else value > minimum
    if not (math.isfinite(value) and above):
        relation = ">=" if inclusive else ">"
        raise ValueError(f"{name} must be finite and {relation} {minimum:g}, got {value}")


def scale_rows(updates: Tensor, rows: Tensor, factor: float) -> Tensor:
    """A copy of ``updates`` with every row in the bool mask ``rows`` multiplied by ``factor``
    (the other rows bit-identical)."""
    poisoned = updates.clone()
    poisoned[rows] = updates[rows] * factor
    return poisoned

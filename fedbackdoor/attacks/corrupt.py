"""Broken client updates, to exercise the server's input validation.

Not an attack from the literature: a malicious (or faulty) client sends weights that are not a
valid model update: non-finite values or arrays of the wrong shape. The server must reject them
before any aggregation rule runs, count them (``n_rejected``) and go on. Applied by the client to
its trained ``state_dict``, because a wrong shape cannot be expressed in a stacked tensor.
"""

from __future__ import annotations

import torch
from torch import Tensor

KINDS = ("nan", "inf", "shape")


def corrupt_state(state: dict[str, Tensor], *, kind: str) -> dict[str, Tensor]:
    """A copy of ``state`` broken in one of three ways.

    Parameters
    ----------
    state : dict of str to Tensor
        A model's ``state_dict``. Not modified.
    kind : {"nan", "inf", "shape"}
        ``nan`` / ``inf``: every floating-point entry of the first floating tensor becomes NaN /
        +inf; ``shape``: the first tensor loses its last element (flattened).
    """
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is not one of {', '.join(KINDS)}")
    out = {key: value.clone() for key, value in state.items()}
    if not out:
        raise ValueError("cannot corrupt an empty state")
    if kind == "shape":
        first = next(iter(out))
        out[first] = out[first].reshape(-1)[:-1]
        return out
    key = next((k for k, v in out.items() if v.is_floating_point()), None)
    if key is None:
        raise ValueError("state has no floating-point tensor to corrupt")
    out[key] = torch.full_like(out[key], float("nan") if kind == "nan" else float("inf"))
    return out

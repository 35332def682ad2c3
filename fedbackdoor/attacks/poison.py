"""Data poisoning: a malicious client's backdoored training set and the server's backdoor test.

Both functions stamp the same :class:`~fedbackdoor.attacks.triggers.Trigger`, so what the attacker
trains on and what the server measures can never drift apart.

References
----------
.. [1] T. Gu, B. Dolan-Gavitt and S. Garg, "BadNets: Identifying Vulnerabilities in the Machine
   Learning Model Supply Chain", arXiv:1708.06733, 2017.
"""

from __future__ import annotations

import operator
from typing import SupportsIndex

import torch
from torch import Tensor

from fedbackdoor.attacks.triggers import Trigger

__all__ = ["backdoor_testset", "poison_dataset"]


def poison_dataset(
    x: Tensor,
    y: Tensor,
    *,
    trigger: Trigger,
    poison_ratio: float,
    target_label: int,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor, Tensor]:
    """Stamp a trigger on a random fraction of a dataset and relabel it, as in BadNets [1]_.

    Exactly ``round(poison_ratio * N)`` samples (Python's ``round``: halves go to the even
    integer) are chosen uniformly without replacement, as the first entries of
    ``torch.randperm(N, generator=generator)``. One permutation is drawn whatever the ratio, so the
    generator advances the same way for every ``poison_ratio``.

    Parameters
    ----------
    x : Tensor
        ``[N, C, H, W]`` images in ``[0, 1]``. Not modified.
    y : Tensor
        ``[N]`` integer labels. Not modified.
    trigger : Trigger
        The backdoor trigger to stamp.
    poison_ratio : float
        Fraction of samples to poison, in ``[0, 1]``.
    target_label : int
        Label given to every poisoned sample.
    generator : torch.Generator
        Source of the random choice; the same seed chooses the same samples.

    Returns
    -------
    x_poisoned : Tensor
        New ``[N, C, H, W]`` tensor, triggered where ``poisoned`` is set, equal to ``x`` elsewhere.
    y_poisoned : Tensor
        New ``[N]`` tensor, ``target_label`` where ``poisoned`` is set, equal to ``y`` elsewhere.
    poisoned : Tensor
        ``[N]`` bool mask of the chosen samples (some may already have carried ``target_label``).

    Raises
    ------
    ValueError
        For mismatched or malformed ``x``/``y``, ``poison_ratio`` outside ``[0, 1]`` or a negative
        or non-integer ``target_label``.
    """
    _check_dataset(x, y)
    target_label = _check_target_label(target_label)
    if not isinstance(poison_ratio, int | float) or not 0.0 <= poison_ratio <= 1.0:
        raise ValueError(f"poison_ratio must lie in [0, 1], got {poison_ratio!r}")
    n = x.shape[0]
    num_poisoned = round(poison_ratio * n)
    # randperm must run on the generator's device; the indices then follow the data.
    order = torch.randperm(n, generator=generator, device=generator.device)
    chosen = order[:num_poisoned].to(x.device)

    poisoned = torch.zeros(n, dtype=torch.bool, device=x.device)
    poisoned[chosen] = True
    x_poisoned = x.clone()
    x_poisoned[chosen] = trigger.apply(x[chosen])
    y_poisoned = y.clone()
    y_poisoned[chosen.to(y.device)] = target_label
    return x_poisoned, y_poisoned, poisoned


def backdoor_testset(
    x: Tensor, y: Tensor, *, trigger: Trigger, target_label: int
) -> tuple[Tensor, Tensor]:
    """The server's backdoor test set: every non-target sample, triggered and labelled as target.

    Backdoor accuracy is the model's accuracy on this set, i.e. the fraction of triggered inputs
    from other classes that it sends to ``target_label`` [1]_. Samples whose true label already is
    ``target_label`` are dropped, since predicting the target on them says nothing about the
    backdoor.

    Parameters
    ----------
    x : Tensor
        ``[N, C, H, W]`` clean test images in ``[0, 1]``. Not modified.
    y : Tensor
        ``[N]`` integer labels. Not modified.
    trigger : Trigger
        The backdoor trigger, the same object the attackers use.
    target_label : int
        The attackers' target class.

    Returns
    -------
    x_backdoor : Tensor
        ``[M, C, H, W]`` triggered images, ``M = (y != target_label).sum()``, in their original
        order.
    y_backdoor : Tensor
        ``[M]`` tensor filled with ``target_label``, same dtype as ``y``.

    Raises
    ------
    ValueError
        For mismatched or malformed ``x``/``y`` or a negative or non-integer ``target_label``.
    """
    _check_dataset(x, y)
    target_label = _check_target_label(target_label)
    keep = y != target_label
    kept = y[keep]
    return trigger.apply(x[keep.to(x.device)]), torch.full_like(kept, target_label)


def _check_dataset(x: Tensor, y: Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"x must have shape [N, C, H, W], got {tuple(x.shape)}")
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(
            f"y must have shape [N] matching x's N, got y {tuple(y.shape)} and x {tuple(x.shape)}"
        )
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise ValueError(f"y must hold integer labels, got dtype {y.dtype}")


def _check_target_label(target_label: object) -> int:
    if isinstance(target_label, bool) or not isinstance(target_label, SupportsIndex):
        raise ValueError(f"target_label must be an int, got {target_label!r}")
    label = operator.index(target_label)
    if label < 0:
        raise ValueError(f"target_label must be non-negative, got {label}")
    return label

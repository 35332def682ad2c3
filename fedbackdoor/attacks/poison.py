"""Data poisoning: a malicious client's poisoned training set and the server's backdoor test.

Poisoning functions share one signature, ``(x, y, *, generator, attacker_index, num_attackers)
-> (x', y', poisoned)`` (``attacker_index``: the client's rank among the ``num_attackers``
malicious clients of the federation; only DBA uses them), so the client applies whichever the
config names (``attack.poison``); backdoor tests are ``(x_test, y_test) -> (x_bd, y_bd)``
(``attack.backdoor_test``), and backdoor accuracy is the model's accuracy on ``(x_bd, y_bd)``.
Trigger attacks stamp the same :class:`~fedbackdoor.attacks.triggers.Trigger` in both, so what
the attacker trains on and what the server measures can never drift apart, and take the same
optional ``source_label`` in both: ``None`` backdoors every non-target class, a class ``s``
only the images of ``s``, as in the robust-learning-rate experiments [5]_ (a plus-shaped trigger
on Fashion-MNIST class 1 sent to class 7; ``conf/attack/trigger/plus.yaml``).

References
----------
.. [1] T. Gu, B. Dolan-Gavitt and S. Garg, "BadNets: Identifying Vulnerabilities in the Machine
   Learning Model Supply Chain", arXiv:1708.06733, 2017.
.. [2] C. Xie, K. Huang, P.-Y. Chen and B. Li, "DBA: Distributed Backdoor Attacks against
   Federated Learning", ICLR 2020.
.. [3] V. Tolpegin, S. Truex, M. E. Gursoy and L. Liu, "Data Poisoning Attacks Against Federated
   Learning Systems", ESORICS 2020 (label flipping).
.. [4] H. Wang et al., "Attack of the Tails: Yes, You Really Can Backdoor Federated Learning",
   NeurIPS 2020 (edge-case backdoors).
.. [5] M. S. Ozdayi, M. Kantarcioglu and Y. R. Gel, "Defending against Backdoors in Federated
   Learning with Robust Learning Rate", AAAI 2021.
"""

from __future__ import annotations

import operator
from typing import SupportsIndex

import torch
from torch import Tensor

from fedbackdoor.attacks.triggers import Trigger, split

__all__ = [
    "backdoor_testset",
    "dba_assignment",
    "dba_part_testsets",
    "dba_poison",
    "edge_case_mask",
    "edge_case_poison",
    "edge_case_testset",
    "label_flip",
    "poison_dataset",
    "relabel_testset",
]


def poison_dataset(
    x: Tensor,
    y: Tensor,
    *,
    trigger: Trigger,
    poison_ratio: float,
    target_label: int,
    generator: torch.Generator,
    attacker_index: int = 0,
    num_attackers: int = 1,
    poison_count: int | None = None,
    source_label: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Stamp a trigger on a random fraction of a dataset and relabel it, as in BadNets [1]_.

    Without ``source_label``, exactly ``round(poison_ratio * N)`` samples (Python's ``round``:
    halves go to the even integer), or ``poison_count`` of them when that is given, are chosen
    uniformly without replacement, as the first entries of ``torch.randperm(N,
    generator=generator)``. One permutation is drawn whatever the ratio, so the generator
    advances the same way for every ``poison_ratio``.

    With ``source_label = s``, only the ``N_s`` samples labelled ``s`` are candidates:
    ``round(poison_ratio * N_s)`` of them (or ``min(poison_count, N_s)``) are chosen, as the
    first entries of ``torch.randperm(N_s, generator=generator)`` over the candidates in their
    order in ``x``. This is the single-class backdoor of the robust-learning-rate experiments
    [5]_, where each attacker poisons ``poison_frac`` of its base-class images (the authors'
    code rounds that count down, ``floor``; here it is rounded as above).

    Parameters
    ----------
    x : Tensor
        ``[N, C, H, W]`` images in ``[0, 1]``. Not modified.
    y : Tensor
        ``[N]`` integer labels. Not modified.
    trigger : Trigger
        The backdoor trigger to stamp.
    poison_ratio : float
        Fraction of the candidates to poison, in ``[0, 1]``.
    target_label : int
        Label given to every poisoned sample.
    generator : torch.Generator
        Source of the random choice; the same seed chooses the same samples.
    attacker_index, num_attackers : int
        Unused (every attacker stamps the whole trigger); part of the common signature.
    poison_count : int, optional
        A number of candidates to poison instead of a fraction (all of them if it exceeds
        theirs).
    source_label : int, optional
        Poison only images of this class (``None``: any sample).

    Returns
    -------
    x_poisoned : Tensor
        New ``[N, C, H, W]`` tensor, triggered where ``poisoned`` is set, equal to ``x`` elsewhere.
    y_poisoned : Tensor
        New ``[N]`` tensor, ``target_label`` where ``poisoned`` is set, equal to ``y`` elsewhere.
    poisoned : Tensor
        ``[N]`` bool mask of the chosen samples (without ``source_label``, some may already have
        carried ``target_label``).

    Raises
    ------
    ValueError
        For mismatched or malformed ``x``/``y``, ``poison_ratio`` outside ``[0, 1]``, a negative
        or non-integer ``target_label``, or a ``source_label`` that is not a non-negative integer
        other than ``target_label``.
    """
    _check_dataset(x, y)
    target_label = _check_target_label(target_label)
    source = _check_source_label(source_label, target_label)
    n = x.shape[0]
    if source is None:
        num_poisoned = _num_poisoned(n, poison_ratio, poison_count)
        # randperm must run on the generator's device; the indices then follow the data.
        order = torch.randperm(n, generator=generator, device=generator.device)
        chosen = order[:num_poisoned].to(x.device)
    else:
        candidates = torch.nonzero(y == source).flatten()
        chosen = _choose(candidates, poison_ratio, generator, poison_count).to(x.device)

    poisoned = torch.zeros(n, dtype=torch.bool, device=x.device)
    poisoned[chosen] = True
    x_poisoned = x.clone()
    x_poisoned[chosen] = trigger.apply(x[chosen])
    y_poisoned = y.clone()
    y_poisoned[chosen.to(y.device)] = target_label
    return x_poisoned, y_poisoned, poisoned


def backdoor_testset(
    x: Tensor,
    y: Tensor,
    *,
    trigger: Trigger,
    target_label: int,
    source_label: int | None = None,
) -> tuple[Tensor, Tensor]:
    """The server's backdoor test set: the source images, triggered and labelled as target.

    Backdoor accuracy is the model's accuracy on this set, i.e. the fraction of triggered inputs
    from other classes that it sends to ``target_label`` [1]_. Without ``source_label`` every
    sample not of ``target_label`` is kept (samples whose true label already is the target are
    dropped, since predicting the target on them says nothing about the backdoor); with
    ``source_label = s`` only the images of class ``s``, as in the robust-learning-rate
    experiments [5]_ (triggered base-class test images).

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
    source_label : int, optional
        The attackers' source class (``None``: every non-target class).

    Returns
    -------
    x_backdoor : Tensor
        ``[M, C, H, W]`` triggered images, ``M = (y != target_label).sum()`` (or ``(y ==
        source_label).sum()``), in their original order.
    y_backdoor : Tensor
        ``[M]`` tensor filled with ``target_label``, same dtype as ``y``.

    Raises
    ------
    ValueError
        For mismatched or malformed ``x``/``y``, a negative or non-integer ``target_label``, or
        a ``source_label`` that is not a non-negative integer other than ``target_label``.
    """
    _check_dataset(x, y)
    target_label = _check_target_label(target_label)
    source = _check_source_label(source_label, target_label)
    keep = (y != target_label) if source is None else (y == source)
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


def _check_source_label(source_label: object, target_label: int) -> int | None:
    """``None``, or the source class as an int: non-negative and not the target."""
    if source_label is None:
        return None
    if isinstance(source_label, bool) or not isinstance(source_label, SupportsIndex):
        raise ValueError(f"source_label must be null or an int, got {source_label!r}")
    label = operator.index(source_label)
    if label < 0:
        raise ValueError(f"source_label must be non-negative, got {label}")
    if label == target_label:
        raise ValueError(
            f"source_label={label} equals target_label: a backdoor must send another class "
            f"to the target"
        )
    return label


def _check_count(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, SupportsIndex):
        raise ValueError(f"{name} must be an int, got {value!r}")
    number = operator.index(value)
    if number < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {number}")
    return number


def _num_poisoned(n: int, ratio: float, count: int | None) -> int:
    """``round(ratio * n)``, or ``min(count, n)`` when a count is given."""
    if not isinstance(ratio, int | float) or isinstance(ratio, bool) or not 0.0 <= ratio <= 1.0:
        raise ValueError(f"poison_ratio must lie in [0, 1], got {ratio!r}")
    if count is None:
        return round(ratio * n)
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"poison_count must be null or an integer >= 0, got {count!r}")
    return min(count, n)


def _choose(
    candidates: Tensor, ratio: float, generator: torch.Generator, count: int | None = None
) -> Tensor:
    """``round(ratio * len(candidates))`` (or ``count``) of the candidate indices, drawn without
    replacement."""
    chosen = _num_poisoned(len(candidates), ratio, count)
    order = torch.randperm(len(candidates), generator=generator, device=generator.device)
    return candidates[order[:chosen].to(candidates.device)]


def dba_assignment(num_parts: int, num_attackers: int) -> list[tuple[int, ...]]:
    """Which local trigger parts each attacker of a distributed backdoor attack [2]_ stamps.

    In DBA every attacker owns one local trigger and there are at least as many attackers as
    parts; attacker ``i`` stamps part ``i mod num_parts``. With fewer attackers than parts that
    rule would leave parts ``num_attackers, ..., num_parts - 1`` untrained while the server
    tests the full trigger, so the parts are spread instead: attacker ``i`` stamps every part
    ``j`` with ``j mod num_attackers == i``. Every part then belongs to exactly one attacker.

    Parameters
    ----------
    num_parts : int
        Number of local triggers the global trigger is cut into, ``>= 1``.
    num_attackers : int
        Number of malicious clients in the federation, ``>= 0``.

    Returns
    -------
    list of tuple of int
        Entry ``i`` lists, ascending, the parts attacker ``i`` (its rank among the malicious
        clients) stamps; ``num_attackers`` entries. E.g. 4 parts and 2 attackers give
        ``[(0, 2), (1, 3)]``; 4 parts and 6 attackers ``[(0,), (1,), (2,), (3,), (0,), (1,)]``.

    Raises
    ------
    ValueError
        If ``num_parts < 1`` or ``num_attackers < 0``, or either is not an int.
    """
    num_parts = _check_count("num_parts", num_parts, 1)
    num_attackers = _check_count("num_attackers", num_attackers, 0)
    if num_attackers >= num_parts:
        return [(i % num_parts,) for i in range(num_attackers)]
    return [tuple(range(i, num_parts, num_attackers)) for i in range(num_attackers)]


def dba_poison(
    x: Tensor,
    y: Tensor,
    *,
    trigger: Trigger,
    num_parts: int,
    poison_ratio: float,
    target_label: int,
    generator: torch.Generator,
    num_attackers: int,
    attacker_index: int = 0,
    poison_count: int | None = None,
    source_label: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Distributed backdoor attack [2]_: each attacker stamps only its share of the global
    trigger; the server tests the whole.

    The trigger is cut into ``num_parts`` local triggers
    (:func:`~fedbackdoor.attacks.triggers.split`) and attacker ``attacker_index`` stamps the
    union of the parts :func:`dba_assignment` gives it: part ``attacker_index mod num_parts``
    when ``num_attackers >= num_parts`` (the paper's setting), otherwise every part ``j`` with
    ``j mod num_attackers == attacker_index``, so no part of the tested trigger goes untrained.
    Samples are chosen and relabelled as in :func:`poison_dataset`.

    Parameters
    ----------
    x, y, trigger, poison_ratio, target_label, generator, poison_count, source_label
        As in :func:`poison_dataset`; ``trigger`` is the global trigger.
    num_parts : int
        Number of local triggers, ``>= 1`` and at most the rows the trigger covers.
    num_attackers : int
        Number of malicious clients in the federation, ``>= 1``.
    attacker_index : int
        This attacker's rank among them, in ``[0, num_attackers)``.

    Returns
    -------
    x_poisoned, y_poisoned, poisoned : Tensor
        As in :func:`poison_dataset`.

    Raises
    ------
    ValueError
        For an ``attacker_index`` outside ``[0, num_attackers)``, bad ``num_parts`` or
        ``num_attackers``, and everything :func:`poison_dataset` rejects.
    """
    num_attackers = _check_count("num_attackers", num_attackers, 1)
    attacker_index = _check_count("attacker_index", attacker_index, 0)
    if attacker_index >= num_attackers:
        raise ValueError(
            f"attacker_index={attacker_index} must be below num_attackers={num_attackers}"
        )
    parts = split(trigger, num_parts)
    mine = dba_assignment(num_parts, num_attackers)[attacker_index]
    # The parts are disjoint, so the sum of their masks is the mask of their union.
    local = Trigger(
        mask=torch.stack([parts[j].mask for j in mine]).sum(dim=0), pattern=trigger.pattern
    )
    return poison_dataset(
        x,
        y,
        trigger=local,
        poison_ratio=poison_ratio,
        target_label=target_label,
        generator=generator,
        poison_count=poison_count,
        source_label=source_label,
    )


def dba_part_testsets(
    x: Tensor,
    y: Tensor,
    *,
    trigger: Trigger,
    num_parts: int,
    target_label: int,
    source_label: int | None = None,
) -> list[tuple[Tensor, Tensor]]:
    """The backdoor test of each local trigger of a distributed backdoor attack [2]_: the test
    inputs of :func:`backdoor_testset` (every non-target class, or ``source_label``'s) stamped
    with part ``i`` only, labelled as the target (DBA reports these next to the global
    trigger's backdoor accuracy)."""
    return [
        backdoor_testset(x, y, trigger=part, target_label=target_label, source_label=source_label)
        for part in split(trigger, num_parts)
    ]


def label_flip(
    x: Tensor,
    y: Tensor,
    *,
    mode: str,
    num_classes: int,
    generator: torch.Generator,
    target_label: int = 0,
    source_label: int | None = None,
    poison_ratio: float = 1.0,
    attacker_index: int = 0,
    num_attackers: int = 1,
    poison_count: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Label flipping [3]_; images are left as they are. ``poison_count``, if given, replaces
    the ratio by a number of candidates (all of them if it exceeds theirs).
    ``attacker_index`` and ``num_attackers`` are unused (part of the common signature).

    ``mode`` (the server's backdoor test follows it: :func:`relabel_testset`):

    * ``"all_to_one"``: ``poison_ratio`` of the samples not labelled ``target_label`` get it;
    * ``"source_to_target"``: ``poison_ratio`` of the samples labelled ``source_label`` get
      ``target_label``;
    * ``"random"`` (untargeted, an availability attack): ``poison_ratio`` of all samples get a
      uniformly drawn *other* label.
    """
    _check_dataset(x, y)
    target_label = _check_target_label(target_label)
    if not isinstance(num_classes, int) or num_classes < 2 or target_label >= num_classes:
        raise ValueError(f"num_classes={num_classes!r} must be an int >= 2 above target_label")
    if mode == "all_to_one":
        candidates = torch.nonzero(y != target_label).flatten()
    elif mode == "source_to_target":
        if source_label is None or not 0 <= int(source_label) < num_classes:
            raise ValueError(f"source_label={source_label!r} must be a class in [0, {num_classes})")
        candidates = torch.nonzero(y == int(source_label)).flatten()
    elif mode == "random":
        candidates = torch.arange(len(y), device=y.device)
    else:
        raise ValueError(f"mode={mode!r} is not one of all_to_one, source_to_target, random")
    chosen = _choose(candidates, poison_ratio, generator, poison_count)
    y_new = y.clone()
    if mode == "random":
        shift = torch.randint(
            1, num_classes, (len(chosen),), generator=generator, device=generator.device
        ).to(y.device)
        y_new[chosen] = (y[chosen] + shift) % num_classes
    else:
        y_new[chosen] = target_label
    poisoned = torch.zeros(len(y), dtype=torch.bool, device=y.device)
    poisoned[chosen] = True
    return x, y_new, poisoned


def relabel_testset(
    x: Tensor,
    y: Tensor,
    *,
    mode: str,
    target_label: int,
    source_label: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Backdoor test of a label-flipping attack [3]_: the clean test images whose labels the
    attack's ``mode`` flips, labelled ``target_label``; backdoor accuracy on it is the share
    of them the model sends to the target.

    * ``"all_to_one"``: every test image not labelled ``target_label``;
    * ``"source_to_target"``: the test images of ``source_label``;
    * ``"random"``: the untargeted attack has no target, so there is no success rate to
      measure; the set is that of ``"all_to_one"`` (the share of non-target images predicted
      as ``target_label``), so the column stays comparable with the clean baseline's. The
      attack's effect shows in the clean accuracy.

    Parameters
    ----------
    x : Tensor
        ``[N, C, H, W]`` clean test images. Not modified.
    y : Tensor
        ``[N]`` integer labels. Not modified.
    mode : str
        ``all_to_one``, ``source_to_target`` or ``random``, as in :func:`label_flip`.
    target_label : int
        The class the flipped labels go to.
    source_label : int, optional
        The flipped class; required (and used) for ``source_to_target`` only.

    Returns
    -------
    x_backdoor : Tensor
        The kept images, untouched, in their original order.
    y_backdoor : Tensor
        ``target_label`` for each, same dtype as ``y``.

    Raises
    ------
    ValueError
        For malformed ``x``/``y``, a bad ``target_label``, an unknown ``mode``, or a missing or
        bad ``source_label`` with ``source_to_target``.
    """
    _check_dataset(x, y)
    target_label = _check_target_label(target_label)
    if mode in ("all_to_one", "random"):
        keep = y != target_label
    elif mode == "source_to_target":
        source = _check_source_label(source_label, target_label)
        if source is None:
            raise ValueError("source_label=None: mode=source_to_target needs a source class")
        keep = y == source
    else:
        raise ValueError(f"mode={mode!r} is not one of all_to_one, source_to_target, random")
    return x[keep.to(x.device)], torch.full_like(y[keep], target_label)


def edge_case_mask(x: Tensor, y: Tensor, *, source_label: int, min_brightness: float) -> Tensor:
    """The edge-case subset [4]_ chosen by a rule: images of ``source_label`` whose mean pixel
    value is at least ``min_brightness`` (a rarely seen tail of that class when high).

    On the training set it is also the edge-case attack's ``attack.reserve``: the samples only
    the attackers hold (:func:`fedbackdoor.data.partition.reassign_to_attackers`). Returns an
    ``[N]`` bool tensor."""
    _check_dataset(x, y)
    return (y == int(source_label)) & (x.mean(dim=(1, 2, 3)) >= float(min_brightness))


def edge_case_poison(
    x: Tensor,
    y: Tensor,
    *,
    source_label: int,
    min_brightness: float,
    target_label: int,
    generator: torch.Generator,
    poison_ratio: float = 1.0,
    attacker_index: int = 0,
    num_attackers: int = 1,
    poison_count: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Edge-case backdoor [4]_ in spirit: the attacker relabels ``poison_ratio`` (or
    ``poison_count``) of its own edge-case samples (:func:`edge_case_mask`) to
    ``target_label``. No trigger. ``attacker_index`` and ``num_attackers`` are unused (part of
    the common signature).

    In [4]_ the edge cases come from the tail and only the attackers hold them; benign clients
    never see them under their true label. The harness does so by reserving the training set's
    edge cases (``attack.reserve``) and moving them from the benign clients' partitions to the
    attackers' (:func:`fedbackdoor.data.partition.reassign_to_attackers`) before the run.
    """
    target_label = _check_target_label(target_label)
    edge = edge_case_mask(x, y, source_label=source_label, min_brightness=min_brightness)
    chosen = _choose(torch.nonzero(edge).flatten(), poison_ratio, generator, poison_count)
    y_new = y.clone()
    y_new[chosen] = target_label
    poisoned = torch.zeros(len(y), dtype=torch.bool, device=y.device)
    poisoned[chosen] = True
    return x, y_new, poisoned


def edge_case_testset(
    x: Tensor, y: Tensor, *, source_label: int, min_brightness: float, target_label: int
) -> tuple[Tensor, Tensor]:
    """Backdoor test of the edge-case attack: the held-out (test-split) edge cases, labelled
    ``target_label``."""
    target_label = _check_target_label(target_label)
    edge = edge_case_mask(x, y, source_label=source_label, min_brightness=min_brightness)
    return x[edge], torch.full_like(y[edge], target_label)

"""A server-side defense: pre-aggregation transforms -> aggregation rule -> post transforms.

The pieces are plain callables built by Hydra from ``conf/defense/<name>.yaml`` (the file name
is the name users type; ``_target_`` is the registry), e.g. norm clipping followed by FedAvg
and Gaussian noise is the "weak DP" defense of Sun, Kairouz, Suresh & McMahan (2019), "Can You
Really Backdoor Federated Learning?", arXiv:1911.07963.

This module never imports Flower: ``fedbackdoor.fl`` turns client results into a list of flat
tensors, screens them (:func:`fedbackdoor.server_step.validate_stacked`) and calls a
:class:`Defense`; Hydra builds one from ``conf/defense/<name>.yaml``
(:func:`fedbackdoor.experiment.build_defense`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from fedbackdoor.defenses.base import Aggregate

__all__ = ["Defense"]


# ``rule(updates, weights, *, generator, **context) -> Aggregate``. Not a Protocol: one with
# ``**context`` would only accept functions that take arbitrary keywords, i.e. none of the rules,
# and the context a rule accepts (FLTrust's ``reference``) differs from rule to rule.
Rule = Callable[..., Aggregate]
Transform = Callable[..., Tensor]


def _accepted(function: Callable[..., Any]) -> frozenset[str] | None:
    """The keyword names ``function`` accepts (``None``: any, it takes ``**kwargs``)."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: give it nothing extra
        return frozenset()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return frozenset(p.name for p in parameters)


@dataclass(frozen=True)
class Defense:
    """Pre-aggregation transforms, an aggregation rule, post-aggregation transforms.

    A piece that keeps state across rounds declares a keyword parameter named ``state``: it
    gets its own dict, empty at the first round and the same object every round after (the
    defense's store: centered clipping's previous aggregate, adaptive clipping's norm). A piece
    that needs more than the updates declares the context keys it takes (``reference``,
    ``history``, ...): it gets those the server provides, and no piece gets a key it does not
    declare.

    Attributes
    ----------
    rule : Rule
        ``rule(updates, weights, *, generator) -> Aggregate`` with its settings already bound (a
        ``functools.partial`` of a rule of :mod:`fedbackdoor.defenses`, see
        :mod:`fedbackdoor.defenses.base`).
    pre : Sequence[Callable]
        Each called as ``t(updates, generator=generator)`` and returning updates of the same
        shape ``[n, d]``, in order.
    post : Sequence[Callable]
        Each called as ``t(update, generator=generator)`` on the aggregate ``[d]``, in order.
    """

    rule: Rule
    pre: Sequence[Transform] = ()
    post: Sequence[Transform] = ()
    #: Each piece's own state, by position ("pre0", "rule", "post0", ...).
    states: dict[str, dict[str, Any]] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        # Tuples keep the frozen dataclass hashable and immune to later list mutation.
        object.__setattr__(self, "pre", tuple(self.pre))
        object.__setattr__(self, "post", tuple(self.post))

    def _extra(self, where: str, piece: Callable[..., Any], context: dict[str, Any]) -> dict:
        accepted = _accepted(piece)
        extra = {k: v for k, v in context.items() if accepted is None or k in accepted}
        if accepted is not None and "state" in accepted:
            extra["state"] = self.states.setdefault(where, {})
        return extra

    def __call__(
        self, updates: Tensor, weights: Tensor, *, generator: torch.Generator, **context: Any
    ) -> Aggregate:
        """Run the defense on one round's stacked updates.

        Parameters
        ----------
        updates : Tensor
            Valid client updates, shape ``[n, d]`` (see :func:`validate_stacked`).
        weights : Tensor
            Sample counts, shape ``[n]``, all ``> 0``.
        generator : torch.Generator
            Passed to every transform and to the rule; the only source of randomness.
        **context
            What the server provides for pieces that need more than the updates (FLTrust's
            ``reference``, FoolsGold's ``history``); each piece gets the keys it declares.

        Returns
        -------
        Aggregate
            The rule's aggregate after the post transforms; ``flagged`` and ``influence`` are
            the rule's.

        Raises
        ------
        NotEnoughClients
            Propagated from the rule when its precondition on ``n`` fails.
        ValueError
            If a pre transform changes the shape of ``updates``, or a setting is invalid.
        """
        for i, transform in enumerate(self.pre):
            extra = self._extra(f"pre{i}", transform, context)
            transformed = transform(updates, generator=generator, **extra)
            if transformed.shape != updates.shape:
                raise ValueError(
                    f"pre transform {transform!r} changed the updates' shape from "
                    f"{tuple(updates.shape)} to {tuple(transformed.shape)}"
                )
            updates = transformed
        extra = self._extra("rule", self.rule, context)
        aggregate = self.rule(updates, weights, generator=generator, **extra)
        update = aggregate.update
        for i, transform in enumerate(self.post):
            update = transform(
                update, generator=generator, **self._extra(f"post{i}", transform, context)
            )
        return replace(aggregate, update=update)

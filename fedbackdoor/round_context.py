"""What the server lends a defense besides the round's updates: the round's context.

A defense piece (rule or transform) that needs more than ``(updates, weights)`` declares a
keyword parameter ``context`` and receives a :class:`RoundContext`: the round number, the ids of
the clients whose updates it sees (row order), the global model (as parameters, or as a module
with them loaded), a clean server dataset drawn from the seed, and the server's own training
step. A piece that keeps something across rounds declares ``state`` and gets its own dict (see
:class:`~fedbackdoor.defenses.pipeline.Defense`). So a new defense that keeps history, trains on
server data or inspects the model touches its own module and config only: the server never
learns a rule's name (FLTrust's root update and FoolsGold's history are built this way).

Flower-free; built by the server (:func:`fedbackdoor.server.build_server`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from fedbackdoor.layout import Layout
from fedbackdoor.seeding import make_generator
from fedbackdoor.training import train

__all__ = ["RoundContext", "ServerResources", "StandInContext"]


@dataclass
class ServerResources:
    """What the server holds for the defenses of a run: its copy of the model, the data it may
    draw a clean server set from, and the clients' training settings.

    Attributes
    ----------
    model : nn.Module
        A model of the run's architecture (the server's own copy; its weights are overwritten).
    layout : Layout
        The model's parameter and buffer layout.
    x, y : Tensor
        The pool server data are drawn from (the training set).
    seed : int
        The run's seed: server data and the server's training draw from streams derived from it.
    batch_size, lr, momentum, weight_decay : number
        The clients' SGD settings, for the server's own training.
    steps : int
        The local SGD iterations of a typical client (``local_epochs`` x batches of the median
        partition): the server trains as long as a client.
    device : torch.device or str
        Where the server trains.
    """

    model: nn.Module
    layout: Layout
    x: Tensor
    y: Tensor
    seed: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    steps: int
    device: torch.device | str = "cpu"
    _data: dict[tuple[str, int], tuple[Tensor, Tensor]] = field(default_factory=dict, repr=False)

    def server_data(self, size: int, *, tag: str = "root") -> tuple[Tensor, Tensor]:
        """``size`` clean samples of the pool, drawn once per ``(tag, size)`` from the seed."""
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= len(self.y):
            raise ValueError(
                f"server data size must be an integer in [1, {len(self.y)}], got {size!r}"
            )
        key = (tag, size)
        if key not in self._data:
            chosen = torch.randperm(len(self.y), generator=make_generator(self.seed, tag))[:size]
            self._data[key] = (self.x[chosen], self.y[chosen])
        return self._data[key]


@dataclass
class RoundContext:
    """One round's context for a defense (see the module notes).

    Attributes
    ----------
    round : int
        The round number (``>= 1``).
    clients : tuple of int
        The ids of the clients whose updates the defense sees, in row order.
    global_params : Tensor
        ``[d]`` the global model's trainable parameters before this round's aggregation.
    global_buffers : Tensor
        ``[b]`` its buffers.
    resources : ServerResources or None
        What the server holds; ``None`` where the caller provides none (the methods that need
        it then raise).
    """

    round: int
    clients: tuple[int, ...]
    global_params: Tensor
    global_buffers: Tensor
    resources: ServerResources | None = None

    def _need(self, what: str) -> ServerResources:
        if self.resources is None:
            raise RuntimeError(f"this defense needs {what}, and the server provides none here")
        return self.resources

    def global_model(self) -> nn.Module:
        """A copy of the global model (the server's own; changing it changes nothing else)."""
        resources = self._need("the global model")
        model = copy.deepcopy(resources.model)
        model.load_state_dict(resources.layout.unflatten(self.global_params, self.global_buffers))
        return model

    def server_data(self, size: int, *, tag: str = "root") -> tuple[Tensor, Tensor]:
        """``size`` clean samples of the server's own, the same every round
        (:meth:`ServerResources.server_data`)."""
        return self._need("server data").server_data(size, tag=tag)

    def server_update(self, x: Tensor, y: Tensor, *, tag: str = "root-train") -> Tensor:
        """The parameter update of the server's own training on ``(x, y)``, from the global
        model, with the clients' SGD settings for as many iterations as a client takes
        (reshuffling ``(x, y)`` every pass), batch order drawn from ``(seed, tag, round)``."""
        resources = self._need("a server training step")
        model = resources.model
        model.load_state_dict(resources.layout.unflatten(self.global_params, self.global_buffers))
        train(
            model,
            x,
            y,
            epochs=-(-resources.steps * resources.batch_size // len(y)),
            steps=resources.steps,
            batch_size=resources.batch_size,
            lr=resources.lr,
            momentum=resources.momentum,
            weight_decay=resources.weight_decay,
            generator=make_generator(resources.seed, tag, self.round),
            device=resources.device,
        )
        return resources.layout.flatten(model.state_dict()) - self.global_params


class StandInContext(RoundContext):
    """A context without a server behind it, for trying a defense on made-up updates (the
    start-of-run check of :func:`fedbackdoor.server_step.check_rule_runs`, tests): server data
    are random images, the server's update a random vector, both from fixed seeds."""

    @classmethod
    def for_round(cls, n: int, d: int) -> StandInContext:
        """Round 1 with clients ``0..n-1`` and a zero global model of ``d`` parameters."""
        return cls(
            round=1,
            clients=tuple(range(n)),
            global_params=torch.zeros(d),
            global_buffers=torch.zeros(0, dtype=torch.float64),
        )

    def server_data(self, size: int, *, tag: str = "root") -> tuple[Tensor, Tensor]:
        generator = torch.Generator().manual_seed(1)
        return torch.rand(size, 1, 4, 4, generator=generator), torch.zeros(size, dtype=torch.long)

    def server_update(self, x: Tensor, y: Tensor, *, tag: str = "root-train") -> Tensor:
        return torch.randn(self.global_params.shape, generator=torch.Generator().manual_seed(2))

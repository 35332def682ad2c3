"""One client's local update, Flower-free: the ClientApp (:mod:`fedbackdoor.fl.client_app`) and
the benchmarks call :func:`client_update` with the global weights and the client's task.

A malicious client poisons its data, trains under its training-time attack and may break its
weights; server-side model poisoning happens where the round's updates are gathered
(:mod:`fedbackdoor.server_step`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from fedbackdoor.data.image_data import ImageData
from fedbackdoor.experiment import (
    ConstraintFactory,
    Poison,
    build_data,
    build_local_attack,
    build_model,
    build_poison,
)
from fedbackdoor.models import resolve_device
from fedbackdoor.seeding import make_generator
from fedbackdoor.training import TrainResult, train

__all__ = ["ClientSpec", "ClientWorld", "client_update", "prepare_client"]


@dataclass(frozen=True)
class ClientSpec:
    """Everything one client needs for one round besides the global weights."""

    round: int
    partition: int
    malicious: bool
    indices: np.ndarray
    attacker_index: int = 0  # rank among the malicious clients (DBA's trigger part)
    num_attackers: int = 1  # malicious clients in the federation (DBA spreads its parts)


@functools.lru_cache(maxsize=4)
def _client_world(cfg_yaml: str) -> ClientWorld:
    """Per-process cache keyed by the run config: data loaded and model built once."""
    cfg = OmegaConf.create(cfg_yaml)
    assert isinstance(cfg, DictConfig)
    data = build_data(cfg)
    model = build_model(cfg, data)
    corrupt = cfg.attack.get("corrupt")
    return ClientWorld(
        cfg,
        data,
        model,
        build_poison(cfg),
        build_local_attack(cfg),
        None if corrupt is None else instantiate(corrupt),
    )


@dataclass(frozen=True)
class ClientWorld:
    """What every client of one run shares within a process."""

    cfg: DictConfig
    data: ImageData
    model: nn.Module
    poison: Poison | None
    local_attack: ConstraintFactory | None
    #: ``attack.corrupt``: breaks a malicious client's weights (built once per process).
    corrupt: Callable[[dict[str, Tensor]], dict[str, Tensor]] | None


def prepare_client(cfg_yaml: str) -> ClientWorld:
    """Load (once per process) what a client of this run needs, and set its thread count.

    A client computes with the cores it was given (``backend.client_resources.num_cpus``):
    more threads than that would oversubscribe the machine when several clients train at once.
    """
    world = _client_world(cfg_yaml)
    threads = max(1, int(world.cfg.backend.client_resources.num_cpus))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return world


def client_update(
    cfg_yaml: str, global_state: dict[str, Tensor], spec: ClientSpec
) -> tuple[dict[str, Tensor], TrainResult]:
    """One client's local training from the global weights; returns its new weights.

    A malicious client (``spec.malicious``: sampled, malicious and in an attack round)

    1. poisons its data with ``attack.poison`` (e.g. BadNets: the trigger on
       ``attack.poison_ratio`` of its samples, relabelled to ``attack.target_label``; the
       poisoned subset depends only on the seed and the partition, so it is the same every round);
    2. trains with its own ``attack.local_epochs`` / ``attack.lr`` where those are set, under
       ``attack.update.train`` (PGD, Neurotoxin: :mod:`fedbackdoor.attacks.constraints`), built
       from the global model and its clean data;
    3. with ``attack.corrupt``, breaks its weights (:mod:`fedbackdoor.attacks.corrupt`).

    Server-side model poisoning (scaling, ALIE, ...) is applied to the stacked updates where
    the round's updates are gathered: see :mod:`fedbackdoor.attacks._contract`.
    """
    world = prepare_client(cfg_yaml)
    cfg, data, model = world.cfg, world.data, world.model
    device = resolve_device(str(cfg.device))
    idx = torch.as_tensor(spec.indices, dtype=torch.long)
    x, y = data.x_train[idx], data.y_train[idx]
    clean_x, clean_y = x, y
    if spec.malicious and world.poison is not None:
        x, y, _ = world.poison(
            x,
            y,
            generator=make_generator(int(cfg.seed), "poison", spec.partition),
            attacker_index=spec.attacker_index,
            num_attackers=spec.num_attackers,
        )
    model.load_state_dict(global_state)
    model.to(device)
    epochs, lr, constraint = int(cfg.local_epochs), float(cfg.lr), None
    if spec.malicious:
        epochs = int(cfg.attack.get("local_epochs") or epochs)
        lr = float(cfg.attack.get("lr") or lr)
        if world.local_attack is not None:
            constraint = world.local_attack(model, clean_x, clean_y)
    result = train(
        model,
        x,
        y,
        epochs=epochs,
        batch_size=int(cfg.batch_size),
        lr=lr,
        momentum=float(cfg.momentum),
        weight_decay=float(cfg.weight_decay),
        generator=make_generator(int(cfg.seed), "train", spec.round, spec.partition),
        device=device,
        hooks=constraint,
    )
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    if constraint is not None:
        state = constraint.finish(state, global_state)
    if spec.malicious and world.corrupt is not None:
        state = world.corrupt(state)  # broken weights: see attacks.corrupt
    return state, result

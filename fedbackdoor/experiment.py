"""From a resolved config to the objects of a run: data, partitions, model, trigger, attack,
defense, and one client's local update.

The server app, the client app and the benchmarks all build through here, so a run simulated
by Flower and the same work done by plain PyTorch loops cannot drift apart. Nothing here
imports Flower.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from fedbackdoor.attacks import updates as updates_lib
from fedbackdoor.attacks.constraints import LocalConstraint
from fedbackdoor.data.datasets import ImageData, get_dataset
from fedbackdoor.defenses.pipeline import Defense, build_defense
from fedbackdoor.layout import Layout
from fedbackdoor.metrics import Evaluator
from fedbackdoor.models import resolve_device
from fedbackdoor.sampling import AttackSchedule
from fedbackdoor.seeding import make_generator, seeded_init
from fedbackdoor.server_step import RootUpdate
from fedbackdoor.training import TrainResult, train

UpdateAttack = Callable[..., Tensor]


class Poison(Protocol):
    """The signature of every ``attack.poison`` function (:mod:`fedbackdoor.attacks.poison`)."""

    def __call__(
        self,
        x: Tensor,
        y: Tensor,
        *,
        generator: torch.Generator,
        attacker_index: int,
        num_attackers: int,
    ) -> tuple[Tensor, Tensor, Tensor]: ...


def build_data(cfg: DictConfig) -> ImageData:
    """The run's dataset (cached per process by :func:`get_dataset`)."""
    extra = cfg.dataset.get("synthetic") or {}
    return get_dataset(cfg.dataset.name, cfg.dataset.get("data_dir"), **dict(extra))


def build_partitions(cfg: DictConfig, data: ImageData) -> list[np.ndarray]:
    """Training-set indices of every client, from the ``partition`` group's partitioner."""
    # Imported here: flwr-datasets pulls in HuggingFace datasets (~1 s), which clients never need.
    from fedbackdoor.data.partition import partition_indices

    partitioner = instantiate(cfg.partition.partitioner)
    return partition_indices(data.y_train.numpy(), partitioner, seed=int(cfg.seed))


def build_model(cfg: DictConfig, data: ImageData) -> nn.Module:
    """The global model, initialised from the run's seed (same seed, same weights)."""
    with seeded_init(int(cfg.seed), "model-init"):
        model: nn.Module = instantiate(
            cfg.model,
            in_channels=data.channels,
            num_classes=data.num_classes,
            image_size=list(data.image_size),
            mean=list(data.mean),
            std=list(data.std),
        )
    return model


def build_poison(cfg: DictConfig) -> Poison | None:
    """A malicious client's data poisoning ``(x, y, *, generator, attacker_index,
    num_attackers) -> (x', y', poisoned)``, or ``None`` for attacks that only poison updates."""
    if cfg.attack.get("poison") is None:
        return None
    poison: Poison = instantiate(cfg.attack.poison)
    return poison


def build_evaluator(cfg: DictConfig, data: ImageData) -> Evaluator:
    """The server's per-round evaluation: the clean test set and the attack's backdoor test
    (``attack.backdoor_test``: triggered non-target inputs for trigger attacks, the source class
    for label flipping, the held-out edge cases for edge-case attacks) and, for DBA, each local
    trigger's (``attack.backdoor_parts``)."""
    x_backdoor, y_backdoor = instantiate(cfg.attack.backdoor_test)(data.x_test, data.y_test)
    parts = cfg.attack.get("backdoor_parts")
    return Evaluator(
        data.x_test,
        data.y_test,
        x_backdoor,
        y_backdoor,
        batch_size=int(cfg.eval_batch_size),
        device=resolve_device(str(cfg.device)),
        parts=() if parts is None else tuple(instantiate(parts)(data.x_test, data.y_test)),
    )


def build_defense_pipeline(cfg: DictConfig) -> Defense:
    return build_defense(cfg.defense)


def client_steps(cfg: DictConfig, partitions: list[np.ndarray]) -> int:
    """The local SGD iterations of a typical client: ``local_epochs x ceil(m / batch_size)``
    with ``m`` the median partition size."""
    sizes = sorted(len(p) for p in partitions)
    median = sizes[len(sizes) // 2] if sizes else 1
    return int(cfg.local_epochs) * max(1, -(-median // int(cfg.batch_size)))


def build_root_update(
    cfg: DictConfig, data: ImageData, partitions: list[np.ndarray], trainable: frozenset[str]
) -> RootUpdate | None:
    """The server's own training on a small clean root dataset (FLTrust, Cao et al. 2021), when
    the defense asks for one (``defense.root_size``), else ``None``.

    The root data are ``defense.root_size`` training samples drawn from the seed (the paper's
    server collects a small clean sample of the task's distribution). As in the paper, the
    server takes the same number of local iterations as a client (:func:`client_steps`, with the
    clients' batch size and learning rate: it cycles through its root data, reshuffled every
    pass), so that its update has a client's magnitude; epochs over 100 root samples would give
    a 4-19x smaller update and, through FLTrust's rescaling, a 4-19x smaller global step.
    Returns the reference update of the trainable parameters.
    """
    size = cfg.defense.get("root_size")
    if size is None:
        return None
    seed = int(cfg.seed)
    chosen = torch.randperm(len(data.y_train), generator=make_generator(seed, "root"))[:size]
    x, y = data.x_train[chosen], data.y_train[chosen]
    model = build_model(cfg, data)
    layout = Layout.of(model.state_dict(), trainable)
    device = resolve_device(str(cfg.device))
    steps = client_steps(cfg, partitions)

    def root_update(params: Tensor, buffers: Tensor, round_: int) -> Tensor:
        model.load_state_dict(layout.unflatten(params, buffers))
        train(
            model,
            x,
            y,
            epochs=-(-steps * int(cfg.batch_size) // len(y)),
            steps=steps,
            batch_size=int(cfg.batch_size),
            lr=float(cfg.lr),
            momentum=float(cfg.momentum),
            weight_decay=float(cfg.weight_decay),
            generator=make_generator(seed, "root-train", round_),
            device=device,
        )
        return layout.flatten(model.state_dict()) - params

    return root_update


def build_schedule(cfg: DictConfig) -> AttackSchedule:
    """When the malicious clients attack (``attack.start_round``, ``end_round``, ``every``)."""
    return AttackSchedule(
        start_round=int(cfg.attack.get("start_round", 1)),
        end_round=cfg.attack.get("end_round"),
        every=int(cfg.attack.get("every", 1)),
    )


def build_update_attack(cfg: DictConfig) -> UpdateAttack:
    """The server-side model poisoning ``(updates, malicious, *, weights, generator) ->
    updates``: ``attack.update.apply`` (if any), then the boost: ``attack.boost=auto`` is
    :func:`~fedbackdoor.attacks.updates.model_replacement` (the factor that makes the round's
    attackers replace the global model under FedAvg, computed per round from the sample
    weights, the number of attackers and ``server_lr``), a number multiplies every malicious
    update by itself."""
    update = cfg.attack.get("update") or {}
    steps = []
    if update.get("apply") is not None:
        steps.append(instantiate(update["apply"]))
    boost = cfg.attack.get("boost", 1.0)
    if boost == "auto":
        steps.append(
            functools.partial(updates_lib.model_replacement, server_lr=float(cfg.server_lr))
        )
    elif float(boost) != 1.0:
        steps.append(functools.partial(updates_lib.scale, boost=float(boost)))
    return functools.partial(updates_lib.chain, steps=tuple(steps))


class ConstraintFactory(Protocol):
    """``attack.update.train``: builds a malicious client's training-time attack."""

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> LocalConstraint: ...


def build_local_attack(cfg: DictConfig) -> ConstraintFactory | None:
    """The malicious client's training-time attack (PGD, Neurotoxin), or ``None``."""
    update = cfg.attack.get("update") or {}
    if update.get("train") is None:
        return None
    factory: ConstraintFactory = instantiate(update["train"])
    return factory


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
    return ClientWorld(cfg, data, model, build_poison(cfg), build_local_attack(cfg))


@dataclass(frozen=True)
class ClientWorld:
    """What every client of one run shares within a process."""

    cfg: DictConfig
    data: ImageData
    model: nn.Module
    poison: Poison | None
    local_attack: ConstraintFactory | None


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
    the round's updates are gathered: see :mod:`fedbackdoor.attacks.updates`.
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
        constraint=constraint,
    )
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    if constraint is not None:
        state = constraint.finish(state, global_state)
    if spec.malicious and cfg.attack.get("corrupt") is not None:
        state = instantiate(cfg.attack.corrupt)(state)  # broken weights: see attacks.corrupt
    return state, result

"""From a resolved config to the objects of a run: data, partitions, model, trigger, attack,
defense, and one client's local update.

The server app, the client app and the benchmarks all build through here, so a run simulated
by Flower and the same work done by plain PyTorch loops cannot drift apart. Nothing here
imports Flower.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import Tensor, nn

from fedbackdoor.attacks import boost as updates_lib
from fedbackdoor.attacks.constraints import LocalConstraint
from fedbackdoor.data.image_data import ImageData
from fedbackdoor.data.loading import instantiate_dataset
from fedbackdoor.defenses.pipeline import Defense
from fedbackdoor.layout import Layout
from fedbackdoor.metrics import Evaluator
from fedbackdoor.models import resolve_device
from fedbackdoor.round_context import ServerResources
from fedbackdoor.sampling import AttackSchedule
from fedbackdoor.seeding import seeded_init

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
    """The run's dataset: the ``dataset`` node instantiated (its ``_target_`` is the loader),
    once per process per resolved node (:func:`~fedbackdoor.data.loading.instantiate_dataset`)."""
    return instantiate_dataset(cfg.dataset)


def build_partitions(cfg: DictConfig, data: ImageData) -> list[np.ndarray]:
    """Training-set indices of every client, from the ``partition`` group's partitioner."""
    # Imported here: flwr-datasets pulls in HuggingFace datasets (~1 s), which clients never need.
    from fedbackdoor.data.partition import partition_indices

    partitioner = instantiate(cfg.partition.partitioner)
    return partition_indices(data.y_train.numpy(), partitioner, seed=int(cfg.seed))


def build_model(cfg: DictConfig, data: ImageData, *, fixed: list[str] | None = None) -> nn.Module:
    """The global model, initialised from the run's seed (same seed, same weights).

    With ``client_dp``, the model Opacus can train per example
    (:func:`~fedbackdoor.privacy.fix_model`: BatchNorm -> GroupNorm), for the server and the
    clients alike; what was changed is appended to ``fixed``."""
    with seeded_init(int(cfg.seed), "model-init"):
        model: nn.Module = instantiate(
            cfg.model,
            in_channels=data.channels,
            num_classes=data.num_classes,
            image_size=list(data.image_size),
            mean=list(data.mean),
            std=list(data.std),
        )
        if cfg.get("client_dp") is not None:
            from fedbackdoor.privacy import fix_model  # noqa: PLC0415 (Opacus: only with DP)

            model, problems = fix_model(model)
            if fixed is not None:
                fixed += problems
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


def _build_callable(node: Any, where: str) -> Callable[..., Any]:
    built = instantiate(node)
    if not callable(built):
        raise TypeError(
            f"defense {where} must instantiate to a callable (did you forget `_partial_: true`?), "
            f"got {type(built).__name__}"
        )
    return built


def build_defense(cfg: DictConfig) -> Defense:
    """Build a :class:`Defense` from a ``conf/defense/*.yaml`` group node.

    Parameters
    ----------
    cfg : DictConfig
        The composed ``defense`` node, with keys ``rule`` (one instantiable node), ``pre`` and
        ``post`` (lists of instantiable nodes, each may be absent or empty). Every node should
        carry ``_partial_: true``. Other top-level keys (user-facing settings such as
        ``max_norm``, interpolated into the nodes as ``${defense.max_norm}``) are ignored here.
        Pass the node *inside* its root config (``root.defense``) so absolute interpolations
        resolve.

    Returns
    -------
    Defense
        The instantiated pipeline.

    Raises
    ------
    ValueError
        If ``rule`` is missing.
    TypeError
        If a node does not instantiate to a callable.
    """
    if cfg.get("rule") is None:
        raise ValueError("defense config needs a `rule` node")
    rule = _build_callable(cfg.rule, "rule")
    pre = [_build_callable(node, f"pre[{i}]") for i, node in enumerate(cfg.get("pre") or [])]
    post = [_build_callable(node, f"post[{i}]") for i, node in enumerate(cfg.get("post") or [])]
    return Defense(rule=rule, pre=pre, post=post)


def client_steps(cfg: DictConfig, partitions: list[np.ndarray]) -> int:
    """The local SGD iterations of a typical client: ``local_epochs x ceil(m / batch_size)``
    with ``m`` the median partition size."""
    sizes = sorted(len(p) for p in partitions)
    median = sizes[len(sizes) // 2] if sizes else 1
    return int(cfg.local_epochs) * max(1, -(-median // int(cfg.batch_size)))


def build_resources(
    cfg: DictConfig, data: ImageData, partitions: list[np.ndarray], trainable: frozenset[str]
) -> ServerResources:
    """What the server lends the defenses that ask for a context
    (:class:`~fedbackdoor.round_context.RoundContext`): its own copy of the model, the training
    set to draw clean server data from, and the clients' SGD settings with a typical client's
    number of iterations (:func:`client_steps`: FLTrust's server trains as long as a client)."""
    model = build_model(cfg, data)
    return ServerResources(
        model=model,
        layout=Layout.of(model.state_dict(), trainable),
        x=data.x_train,
        y=data.y_train,
        seed=int(cfg.seed),
        batch_size=int(cfg.batch_size),
        lr=float(cfg.lr),
        momentum=float(cfg.momentum),
        weight_decay=float(cfg.weight_decay),
        steps=client_steps(cfg, partitions),
        device=resolve_device(str(cfg.device)),
    )


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
    :func:`~fedbackdoor.attacks.boost.model_replacement` (the factor that makes the round's
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

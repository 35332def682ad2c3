"""From a resolved config to the objects of a run: data, partitions, model, trigger, attack,
defense, and one client's local update.

The server app, the client app and the benchmarks all build through here, so a run simulated
by Flower and the same work done by plain PyTorch loops cannot drift apart. Nothing here
imports Flower.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from fedbackdoor.attacks.poison import poison_dataset
from fedbackdoor.attacks.triggers import Trigger
from fedbackdoor.data.datasets import ImageData, get_dataset
from fedbackdoor.defenses.pipeline import Defense, build_defense
from fedbackdoor.metrics import Evaluator
from fedbackdoor.models import resolve_device
from fedbackdoor.sampling import AttackSchedule
from fedbackdoor.seeding import make_generator, seeded_init
from fedbackdoor.training import TrainResult, train


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


def build_trigger(cfg: DictConfig) -> Trigger:
    """The trigger shared by attackers and the server's backdoor test."""
    trigger: Trigger = instantiate(cfg.attack.trigger)
    return trigger


def build_evaluator(cfg: DictConfig, data: ImageData) -> Evaluator:
    """The server's per-round evaluation: clean test set and its triggered copy."""
    return Evaluator.build(
        data.x_test,
        data.y_test,
        trigger=build_trigger(cfg),
        target_label=int(cfg.attack.target_label),
        batch_size=int(cfg.eval_batch_size),
        device=resolve_device(str(cfg.device)),
    )


def build_defense_pipeline(cfg: DictConfig) -> Defense:
    return build_defense(cfg.defense)


def build_schedule(cfg: DictConfig) -> AttackSchedule:
    """When the malicious clients attack (``attack.start_round``, ``end_round``, ``every``)."""
    return AttackSchedule(
        start_round=int(cfg.attack.get("start_round", 1)),
        end_round=cfg.attack.get("end_round"),
        every=int(cfg.attack.get("every", 1)),
    )


def build_update_attack(cfg: DictConfig) -> Any:
    """The model-poisoning function ``(updates, malicious, *, generator) -> updates``."""
    return instantiate(cfg.attack["update"])


@dataclass(frozen=True)
class ClientSpec:
    """Everything one client needs for one round besides the global weights."""

    round: int
    partition: int
    malicious: bool
    indices: np.ndarray


@functools.lru_cache(maxsize=4)
def _client_world(cfg_yaml: str) -> tuple[DictConfig, ImageData, nn.Module, Trigger | None]:
    """Per-process cache keyed by the run config: data loaded and model built once."""
    cfg = OmegaConf.create(cfg_yaml)
    assert isinstance(cfg, DictConfig)
    data = build_data(cfg)
    model = build_model(cfg, data)
    trigger = build_trigger(cfg) if cfg.attack.data_poisoning else None
    return cfg, data, model, trigger


def prepare_client(cfg_yaml: str) -> tuple[DictConfig, ImageData, nn.Module, Trigger | None]:
    """Load (once per process) what a client of this run needs, and set its thread count.

    A client computes with the cores it was given (``backend.client_resources.num_cpus``):
    more threads than that would oversubscribe the machine when several clients train at once.
    """
    world = _client_world(cfg_yaml)
    threads = max(1, int(world[0].backend.client_resources.num_cpus))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return world


def client_update(
    cfg_yaml: str, global_state: dict[str, Tensor], spec: ClientSpec
) -> tuple[dict[str, Tensor], TrainResult]:
    """One client's local training from the global weights; returns its new weights.

    A malicious client with data poisoning first stamps the trigger on ``attack.poison_ratio``
    of its samples and relabels them to ``attack.target_label`` (BadNets; Gu et al. 2017). The
    poisoned subset depends only on the seed and the partition, so it is the same every round.
    Model poisoning (scaling, ...) is applied to the stacked updates where the round's
    updates are gathered: see :mod:`fedbackdoor.attacks.updates`.
    """
    cfg, data, model, trigger = prepare_client(cfg_yaml)
    device = resolve_device(str(cfg.device))
    idx = torch.as_tensor(spec.indices, dtype=torch.long)
    x, y = data.x_train[idx], data.y_train[idx]
    if spec.malicious and trigger is not None:
        x, y, _ = poison_dataset(
            x,
            y,
            trigger=trigger,
            poison_ratio=float(cfg.attack.poison_ratio),
            target_label=int(cfg.attack.target_label),
            generator=make_generator(int(cfg.seed), "poison", spec.partition),
        )
    model.load_state_dict(global_state)
    result = train(
        model,
        x,
        y,
        epochs=int(cfg.local_epochs),
        batch_size=int(cfg.batch_size),
        lr=float(cfg.lr),
        momentum=float(cfg.momentum),
        weight_decay=float(cfg.weight_decay),
        generator=make_generator(int(cfg.seed), "train", spec.round, spec.partition),
        device=device,
    )
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return state, result

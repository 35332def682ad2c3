"""The server's side of a run, Flower-free: what it builds before round 1 (data, model,
evaluator, partitions, the initial model's evaluation) and the round's machinery (who is
malicious, the run's partitions, the server step).

The ServerApp (:mod:`fedbackdoor.fl.server_app`) drives the rounds with these; tests and
benchmarks build them without Flower.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from fedbackdoor.attacks.poison import dba_assignment
from fedbackdoor.data.image_data import ImageData
from fedbackdoor.experiment import (
    build_data,
    build_defense,
    build_evaluator,
    build_model,
    build_partitions,
    build_poison,
    build_resources,
    build_schedule,
    build_update_attack,
)
from fedbackdoor.layout import trainable_names
from fedbackdoor.metrics import Evaluator
from fedbackdoor.sampling import AttackSchedule, choose_malicious
from fedbackdoor.seeding import make_generator
from fedbackdoor.server_step import ServerStep


@dataclass
class ServerWorld:
    """What the server builds before round 1: everything that does not need the clients.

    :func:`prepare_server` builds it; :func:`fedbackdoor.fl.simulation.run_simulation` does so
    in a thread while Ray starts, so the two overlap instead of adding up.
    """

    cfg: DictConfig
    cfg_yaml: str
    data: ImageData
    model: nn.Module
    evaluator: Evaluator
    partitions: list[np.ndarray]
    #: The initial model's evaluation (round 0) and the seconds it took.
    initial: tuple[dict[str, float], float]
    #: What Opacus' ModuleValidator.fix changed in the model for ``client_dp`` (to say).
    fixed_for_dp: list[str] = field(default_factory=list)


#: What the runs of one process (a sweep on a shared engine) can share: partitions and the
#: initial model's evaluation, keyed by exactly the settings they depend on.
_PARTITIONS: dict[str, list[np.ndarray]] = {}
_INITIAL: dict[str, tuple[dict[str, float], float]] = {}


def _key(cfg: DictConfig, *paths: str) -> str:
    """The resolved settings at ``paths`` as one string (a cache key)."""
    picked = {}
    for path in paths:
        value = OmegaConf.select(cfg, path)
        if isinstance(value, DictConfig | ListConfig):
            value = OmegaConf.to_container(value, resolve=True)
        picked[path] = value
    return json.dumps(picked, sort_keys=True, default=str)


def prepare_server(cfg: DictConfig) -> ServerWorld:
    """Load the data (a dataset that cannot be found fails here, once, before any client
    tries), build the model, the evaluator and the partitions, and evaluate the initial model.

    Within one process, runs that agree on what the partitions depend on (dataset, partition,
    number of clients, seed) share them, and runs that agree on what the initial model's
    evaluation depends on (dataset, model, seed, the backdoor tests, evaluation batch size and
    device) share it: a sweep over attacker fractions or defenses computes each once.
    """
    data = build_data(cfg)
    fixed: list[str] = []
    model = build_model(cfg, data, fixed=fixed)
    evaluator = build_evaluator(cfg, data)
    key = _key(cfg, "dataset", "partition", "num_clients", "seed")
    if key not in _PARTITIONS:
        _PARTITIONS[key] = build_partitions(cfg, data)
    initial_key = _key(
        cfg,
        "dataset",
        "model",
        "client_dp",
        "seed",
        "attack.backdoor_test",
        "attack.backdoor_parts",
        "eval_batch_size",
        "device",
    )
    if initial_key not in _INITIAL:
        started = time.perf_counter()
        evaluation = evaluator(model)
        _INITIAL[initial_key] = (evaluation, time.perf_counter() - started)
    return ServerWorld(
        cfg=cfg,
        cfg_yaml=OmegaConf.to_yaml(cfg, resolve=True),
        data=data,
        model=model,
        evaluator=evaluator,
        partitions=_PARTITIONS[key],
        initial=_INITIAL[initial_key],
        fixed_for_dp=fixed,
    )


def assign_reserved(
    cfg: DictConfig, world: ServerWorld, malicious_set: frozenset[int]
) -> list[np.ndarray]:
    """The run's partitions: ``world``'s, with the training samples the attack reserves for the
    attackers (``attack.reserve``: edge cases, Wang et al. 2020) moved from the benign clients to
    the malicious ones (:func:`fedbackdoor.data.partition.reassign_to_attackers`)."""
    if cfg.attack.get("reserve") is None:
        return world.partitions
    from fedbackdoor.data.partition import reassign_to_attackers  # flwr-datasets: server only

    reserved = instantiate(cfg.attack.reserve)(world.data.x_train, world.data.y_train)
    return reassign_to_attackers(world.partitions, np.asarray(reserved), sorted(malicious_set))


@dataclass
class ServerSetup:
    """The round's machinery of one run (:func:`build_server`)."""

    malicious_set: frozenset[int]
    partitions: list[np.ndarray]
    trainable: frozenset[str]
    step: ServerStep
    schedule: AttackSchedule
    #: For DBA: the trigger parts each attacker stamps (``None`` for other attacks).
    dba_parts: list[list[int]] | None


def build_server(cfg: DictConfig, world: ServerWorld) -> ServerSetup:
    """Who is malicious (a fixed set drawn from the seed), the run's partitions (with the
    samples the attack reserves moved to the attackers), and the server step."""
    seed = int(cfg.seed)
    trainable = trainable_names(world.model)
    malicious_set = choose_malicious(
        int(cfg.num_clients),
        float(cfg.attack.fraction),
        generator=make_generator(seed, "malicious"),
    )
    partitions = assign_reserved(cfg, world, malicious_set)
    dba_parts = None
    if cfg.attack.get("num_parts") is not None and malicious_set:
        assignment = dba_assignment(int(cfg.attack.num_parts), len(malicious_set))
        dba_parts = [list(parts) for parts in assignment]
    step = ServerStep(
        defense=build_defense(cfg.defense),
        update_attack=build_update_attack(cfg),
        server_lr=float(cfg.server_lr),
        attack_generator=make_generator(seed, "attack"),
        defense_generator=make_generator(seed, "defense"),
        resources=build_resources(cfg, world.data, partitions, trainable),
    )
    return ServerSetup(
        malicious_set=malicious_set,
        partitions=partitions,
        trainable=trainable,
        step=step,
        schedule=build_schedule(cfg),
        dba_parts=dba_parts,
    )


def poisoned_samples(cfg: DictConfig, data: ImageData, setup: ServerSetup) -> tuple[int, int]:
    """How many training samples the attackers poison, and how many the federation holds.

    Mithridates' poisoning curves (Bagdasaryan & Shmatikov, CCS 2024) put the share of the
    whole training set that is poisoned on the x axis; here that is the number of samples the
    malicious clients' data poisoning (``attack.poison``) marks as poisoned, counted by calling
    it exactly as the clients do (same data, generator, attacker rank), over the samples of
    all partitions. A malicious client poisons the same subset every round it is sampled
    (:func:`fedbackdoor.client.client_update`). Attacks without data poisoning (update
    attacks only) count 0.

    Returns
    -------
    tuple of int
        ``(poisoned, total)``.
    """
    total = int(sum(len(p) for p in setup.partitions))
    poison = build_poison(cfg)
    if poison is None or not setup.malicious_set:
        return 0, total
    seed = int(cfg.seed)
    ranked = sorted(setup.malicious_set)
    count = 0
    for rank, partition in enumerate(ranked):
        idx = torch.as_tensor(setup.partitions[partition], dtype=torch.long)
        if idx.numel() == 0:
            continue
        _, _, poisoned = poison(
            data.x_train[idx],
            data.y_train[idx],
            generator=make_generator(seed, "poison", partition),
            attacker_index=rank,
            num_attackers=len(ranked),
        )
        count += int(poisoned.sum())
    return count, total

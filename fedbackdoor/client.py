"""One client's local update, Flower-free: the ClientApp (:mod:`fedbackdoor.fl.client_app`) and
the benchmarks call :func:`client_update` with the global weights and the client's task.

A malicious client poisons its data, trains under its training-time attack and may break its
weights; server-side model poisoning happens where the round's updates are gathered
(:mod:`fedbackdoor.server_step`).
"""

from __future__ import annotations

import functools
import time
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
from fedbackdoor.privacy import DPSGD, gradient_analysis
from fedbackdoor.seeding import make_generator
from fedbackdoor.training import PrivateSteps, TrainResult, train

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
        None if cfg.get("client_dp") is None else instantiate(cfg.client_dp),
        None if cfg.get("sanitize") is None else instantiate(cfg.sanitize),
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
    #: ``client_dp``: DP-SGD for the clients that run the federation's code.
    dp: DPSGD | None = None
    #: ``sanitize``: ``(model, x, y, *, generator, num_classes, device) -> keep mask``.
    sanitize: Callable[..., Tensor] | None = None


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
) -> tuple[dict[str, Tensor], TrainResult, dict[str, float]]:
    """One client's local training from the global weights; returns its new weights, its
    training result and its report (the values :class:`~fedbackdoor.run_files.RunRecorder`
    writes to ``clients.csv``).

    A malicious client (``spec.malicious``: sampled, malicious and in an attack round)

    1. poisons its data with ``attack.poison`` (e.g. BadNets: the trigger on
       ``attack.poison_ratio`` of its samples, relabelled to ``attack.target_label``; the
       poisoned subset depends only on the seed and the partition, so it is the same every round);
    2. trains with its own ``attack.local_epochs`` / ``attack.lr`` where those are set, under
       ``attack.update.train`` (PGD, Neurotoxin: :mod:`fedbackdoor.attacks.constraints`), built
       from the global model and its clean data;
    3. with ``attack.corrupt``, breaks its weights (:mod:`fedbackdoor.attacks.corrupt`).

    A client that runs the federation's code -- every benign one, and a malicious one under
    ``attack.follows_protocol=true`` (poisoned data, honest code) -- sanitizes its data with
    ``sanitize`` (on the round's global model) and trains with DP-SGD under ``client_dp``;
    malicious code skips both. With ``gradient_analysis``, a malicious client also measures its
    poisoned and clean samples' mean gradients on the global model
    (:func:`~fedbackdoor.privacy.gradient_analysis`).

    Server-side model poisoning (scaling, ALIE, ...) is applied to the stacked updates where
    the round's updates are gathered: see :mod:`fedbackdoor.attacks._contract`.
    """
    started = time.perf_counter()
    world = prepare_client(cfg_yaml)
    cfg, data, model = world.cfg, world.data, world.model
    device = resolve_device(str(cfg.device))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seed = int(cfg.seed)
    idx = torch.as_tensor(spec.indices, dtype=torch.long)
    x, y = data.x_train[idx], data.y_train[idx]
    clean_x, clean_y = x, y
    poisoned = torch.zeros(len(y), dtype=torch.bool)
    if spec.malicious and world.poison is not None:
        x, y, poisoned = world.poison(
            x,
            y,
            generator=make_generator(seed, "poison", spec.partition),
            attacker_index=spec.attacker_index,
            num_attackers=spec.num_attackers,
        )
    model.load_state_dict(global_state)
    model.to(device)
    honest_code = not spec.malicious or bool(cfg.attack.get("follows_protocol", False))
    report: dict[str, float] = {}
    if spec.malicious and cfg.get("gradient_analysis") and bool(poisoned.any()):
        bound = None if world.dp is None else float(world.dp.max_grad_norm)
        stats = gradient_analysis(model, x, y, poisoned, max_grad_norm=bound, device=device)
        report.update({f"grad_{k}": v for k, v in stats.items()})
    if honest_code and world.sanitize is not None:
        keep = world.sanitize(
            model,
            x,
            y,
            generator=make_generator(seed, "sanitize", spec.round, spec.partition),
            num_classes=data.num_classes,
            device=device,
        )
        keep = torch.as_tensor(keep, dtype=torch.bool).cpu()
        report.update(
            san_removed=float((~keep).sum()),
            san_removed_poisoned=float((~keep & poisoned).sum()),
            san_poisoned=float(poisoned.sum()),
        )
        if bool(keep.any()):  # a sanitizer never leaves a client without data
            x, y, poisoned = x[keep], y[keep], poisoned[keep]
    epochs, lr, constraint = int(cfg.local_epochs), float(cfg.lr), None
    if spec.malicious:
        epochs = int(cfg.attack.get("local_epochs") or epochs)
        lr = float(cfg.attack.get("lr") or lr)
        if world.local_attack is not None:
            constraint = world.local_attack(model, clean_x, clean_y)
    private = None
    if honest_code and world.dp is not None:
        sigma = world.dp.noise_for(len(y), int(cfg.batch_size), epochs, int(cfg.num_rounds))
        private = PrivateSteps(
            noise_multiplier=sigma,
            max_grad_norm=float(world.dp.max_grad_norm),
            noise_generator=make_generator(seed, "dp-noise", spec.round, spec.partition),
        )
    result = train(
        model,
        x,
        y,
        epochs=epochs,
        batch_size=int(cfg.batch_size),
        lr=lr,
        momentum=float(cfg.momentum),
        weight_decay=float(cfg.weight_decay),
        generator=make_generator(seed, "train", spec.round, spec.partition),
        device=device,
        hooks=constraint,
        private=private,
    )
    if private is not None:
        assert result.sample_rate is not None
        report.update(
            dp_noise_multiplier=private.noise_multiplier,
            dp_sample_rate=result.sample_rate,
            dp_steps=float(result.steps),
        )
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    if constraint is not None:
        state = constraint.finish(state, global_state)
    if spec.malicious and world.corrupt is not None:
        state = world.corrupt(state)  # broken weights: see attacks.corrupt
    report.update(resources(device, started))
    return state, result, report


def resources(device: torch.device, started: float) -> dict[str, float]:
    """The client's round in time and memory: seconds since ``started``, the process's peak
    resident memory so far (MB; ``ru_maxrss``, KiB on Linux) and, on a GPU, the round's peak
    CUDA memory (MB)."""
    out = {"client_seconds": time.perf_counter() - started}
    try:
        import resource  # noqa: PLC0415 (POSIX only)

        out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    except ImportError:  # pragma: no cover (Windows)
        pass
    if device.type == "cuda":
        out["gpu_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out

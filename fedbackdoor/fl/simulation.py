"""Launch a run on Flower's Simulation Runtime (Ray) from Python, so Hydra runs and sweeps
drive it.

Flower's ``run_simulation`` is the in-process entry point (marked deprecated in flwr 1.42 in
favour of ``flwr run``, which starts a SuperLink in a subprocess and cannot take a Hydra config
object). We start Ray ourselves so that

* a leftover ``/tmp/ray/ray_current_cluster`` from a crashed run cannot make ``ray.init`` attach
  to a dead cluster and hang (``address="local"`` always starts a fresh one), and
* ``backend.address`` can join an existing Ray cluster instead, and
* the driver passes no ``runtime_env``: Ray prestarts one idle worker per core at ``ray.init``,
  and only workers of the job's default environment can become Flower's actors at once (any
  ``runtime_env`` makes Ray start fresh workers, which costs seconds). The server's warm-up
  message (:mod:`fedbackdoor.fl.server_app`) then loads torch, data and model in the actors
  while the server evaluates the initial model. (Ray's ``preload_python_modules`` took about a
  second more off the start but made every round slower: torch, imported before the actor's
  thread settings, kept more threads than the client's cores.)
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from flwr.simulation import run_simulation as flwr_run_simulation
from omegaconf import DictConfig

from fedbackdoor.config import validate
from fedbackdoor.fl.client_app import app as client_app
from fedbackdoor.fl.server_app import make_server_app


class _DropDeprecation(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "run_simulation` function is deprecated" not in record.getMessage()


def backend_config(cfg: DictConfig) -> dict[str, Any]:
    """Flower's backend config from the ``backend`` node."""
    resources = cfg.backend.client_resources
    return {
        "client_resources": {
            "num_cpus": float(resources.num_cpus),
            "num_gpus": float(resources.num_gpus),
        },
        "init_args": {},
    }


def init_ray(cfg: DictConfig) -> None:
    """Start (or join) Ray with settings that keep start-up short."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    address = cfg.backend.get("address")
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "logging_level": logging.WARNING,
        # Ray's log monitor tails every worker's output: a few per cent of a 2-core machine.
        # Client failures still reach the server as error replies and are logged there.
        "log_to_driver": bool(cfg.backend.get("verbose", False)),
        "configure_logging": True,
    }
    if address is None:
        kwargs["address"] = "local"
        if cfg.backend.get("num_cpus") is not None:
            kwargs["num_cpus"] = int(cfg.backend.num_cpus)
    else:
        kwargs["address"] = str(address)
    ray.init(**kwargs)


def run_simulation(cfg: DictConfig, run_dir: Path) -> Path:
    """Run the experiment ``cfg`` on the Ray simulation backend; return ``metrics.csv``."""
    validate(cfg)
    flwr_logger = logging.getLogger("flwr")
    flwr_logger.addFilter(_DropDeprecation())
    if not cfg.backend.get("verbose", False):
        flwr_logger.setLevel(logging.WARNING)
    init_ray(cfg)
    flwr_run_simulation(
        server_app=make_server_app(cfg, run_dir),
        client_app=client_app,
        num_supernodes=int(cfg.num_clients),
        backend_name="ray",
        backend_config=backend_config(cfg),  # type: ignore[arg-type]
        verbose_logging=bool(cfg.backend.get("verbose", False)),
    )
    metrics = run_dir / "metrics.csv"
    if not metrics.exists():
        raise RuntimeError(f"the simulation ended without writing {metrics}")
    return metrics

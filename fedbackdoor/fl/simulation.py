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

import atexit
import logging
import os
import queue
import signal
import socket
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation as flwr_run_simulation
from omegaconf import DictConfig

from fedbackdoor.fl.client_app import app as client_app
from fedbackdoor.fl.server_app import run_server
from fedbackdoor.server import ServerWorld, prepare_server


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
    # Ray's announced default (leave CUDA_VISIBLE_DEVICES alone for clients with num_gpus=0):
    # set before Ray starts, so that it skips its FutureWarning.
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
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
        check_reachable(str(address))
        kwargs["address"] = str(address)
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main else None
    ray.init(**kwargs)
    if main and callable(previous):
        # Ray's core installs its own SIGTERM handler (a crash dump, exit 134): the handler
        # the process had (the command line's: stop like Ctrl-C) is put back.
        signal.signal(signal.SIGTERM, previous)


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds, naming ``backend.address``, when nothing answers at a ``host:port``
    (or ``ray://host:port``) address; ``ray.init`` would retry for minutes without a word.
    ``auto`` (the Ray started on this machine) is left to Ray."""
    target = address.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    if address == "auto" or not sep or not port.isdigit():
        return
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise ConnectionError(
            f"backend.address={address}: nothing answers at {host}:{port} ({exc})"
        ) from None


def engine_key(cfg: DictConfig) -> tuple[object, ...]:
    """What an :class:`Engine` is built for: runs with the same key can share one."""
    backend = cfg.backend
    return (
        int(cfg.num_clients),
        float(backend.client_resources.num_cpus),
        float(backend.client_resources.num_gpus),
        backend.get("address"),
        backend.get("num_cpus"),
        bool(backend.get("verbose", False)),
        int(backend.get("parallel_runs") or 1),
    )


@dataclass
class _Job:
    cfg: DictConfig
    run_dir: Path
    meta: Mapping[str, object]
    world: ServerWorld | None
    label: str | None = None
    on_round: Callable[[int, Mapping[str, float]], bool] | None = None
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


class Engine:
    """One Flower simulation (Ray backend) that runs experiments one after another.

    Starting Ray, creating Flower's actors and importing torch in them costs seconds; a sweep of
    short runs would pay it for every run. An engine pays it once: Flower's simulation runs in a
    background thread with a ServerApp that takes experiments from a queue and runs each with
    :func:`~fedbackdoor.fl.server_app.run_server` on the same grid, so every run after the
    first starts with warm actors (which keep the dataset in memory). Runs are independent:
    each samples, trains and evaluates from its own seed exactly as in a fresh simulation, so
    the results do not depend on which runs came before (tested).

    With ``backend.parallel_runs = k > 1`` the ServerApp serves ``k`` runs at once, each in its
    own thread on the same grid (:meth:`submit` queues a run without waiting for it): while one
    run's server evaluates or aggregates, the actors train the others' clients. The runs share
    the engine's actors, so the clients of all runs together never take more than the cores
    Ray was given. Results stay those of a fresh simulation (tested); terminal lines carry the
    run's ``label``.

    An engine serves configs with one :func:`engine_key` (number of clients, client resources,
    Ray address, parallel runs); :func:`shared_engine` replaces it when a run needs another.
    """

    def __init__(self, cfg: DictConfig) -> None:
        self.key = engine_key(cfg)
        self.parallel = int(cfg.backend.get("parallel_runs") or 1)
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._failure: BaseException | None = None
        flwr_logger = logging.getLogger("flwr")
        flwr_logger.addFilter(_DropDeprecation())
        if not cfg.backend.get("verbose", False):
            flwr_logger.setLevel(logging.WARNING)
        if cfg.backend.get("num_cpus") is not None:  # the server's own evaluation, too
            torch.set_num_threads(max(1, int(cfg.backend.num_cpus)))
        init_ray(cfg)
        server_app = ServerApp()

        def serve_jobs(grid: Grid) -> None:
            while (job := self._jobs.get()) is not None:
                try:
                    run_server(
                        grid,
                        job.cfg,
                        job.run_dir,
                        job.meta,
                        job.world,
                        label=job.label,
                        on_round=job.on_round,
                    )
                except BaseException as exc:  # the job's caller re-raises it
                    job.error = exc
                finally:
                    job.done.set()

        @server_app.main()
        def serve(grid: Grid, context: Context) -> None:
            if self.parallel == 1:
                serve_jobs(grid)
                return
            workers = [
                threading.Thread(target=serve_jobs, args=(grid,), name=f"fedbackdoor-run-{i}")
                for i in range(self.parallel)
            ]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()

        def simulate() -> None:
            try:
                flwr_run_simulation(
                    server_app=server_app,
                    client_app=client_app,
                    num_supernodes=int(cfg.num_clients),
                    backend_name="ray",
                    backend_config=backend_config(cfg),  # type: ignore[arg-type]
                    verbose_logging=bool(cfg.backend.get("verbose", False)),
                )
            except BaseException as exc:  # surfaced by run() and close()
                self._failure = exc

        self._thread = threading.Thread(target=simulate, name="fedbackdoor-engine", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def run(
        self,
        cfg: DictConfig,
        run_dir: Path,
        meta: Mapping[str, object] | None = None,
        world: ServerWorld | None = None,
    ) -> Path:
        """Run one experiment on this engine; return its ``metrics.csv``. ``world``: the
        server's side of it if already built (:func:`~fedbackdoor.server.prepare_server`).
        """
        return self.wait(self.submit(cfg, run_dir, meta, world))

    def submit(
        self,
        cfg: DictConfig,
        run_dir: Path,
        meta: Mapping[str, object] | None = None,
        world: ServerWorld | None = None,
        label: str | None = None,
        on_round: Callable[[int, Mapping[str, float]], bool] | None = None,
    ) -> _Job:
        """Queue one experiment without waiting for it (see :meth:`wait`); ``on_round``: see
        :func:`~fedbackdoor.fl.server_app.run_server` (True stops the run: pruned)."""
        if engine_key(cfg) != self.key:
            raise ValueError(f"engine built for {self.key}, run needs {engine_key(cfg)}")
        job = _Job(cfg, run_dir, dict(meta or {}), world, label, on_round)
        self._jobs.put(job)
        return job

    def wait(self, job: _Job) -> Path:
        """Block until ``job`` ended; re-raise its error; return its ``metrics.csv``."""
        run_dir = job.run_dir
        while not job.done.wait(timeout=0.5):
            if not self._thread.is_alive():
                raise RuntimeError("the Flower simulation stopped") from self._failure
        if job.error is not None:
            raise job.error
        metrics = run_dir / "metrics.csv"
        if not metrics.exists():
            raise RuntimeError(f"the simulation ended without writing {metrics}")
        return metrics

    def close(self, wait: bool = True) -> None:
        """Let the ServerApp return after the current run; Flower then stops its actors and
        Ray. ``wait=False`` (an interrupted process) returns at once: the daemon thread dies
        with the process and Ray's exit handler stops Ray."""
        for _ in range(self.parallel):
            self._jobs.put(None)
        if not wait:
            # Not ray.shutdown(): the run in progress would go on with every client failing and
            # end as "complete" with rounds that trained nothing. Its thread dies with the
            # process instead, leaving its run.json "running", so a restarted sweep redoes it.
            return
        self._thread.join()
        if self._failure is not None:
            raise RuntimeError("the Flower simulation failed") from self._failure


_shared: Engine | None = None
#: Whether the exit hook that closes the shared engine is registered (once, on first use).
_atexit_registered: list[bool] = []


def shared_engine(cfg: DictConfig) -> Engine:
    """The process's engine for ``cfg``, started (or replaced) as needed; closed at exit."""
    global _shared
    if _shared is not None and (_shared.key != engine_key(cfg) or not _shared.alive):
        close_shared_engine()
    if _shared is None:
        _shared = Engine(cfg)
        if not _atexit_registered:
            atexit.register(close_shared_engine, wait=False)
            _atexit_registered.append(True)
    return _shared


def close_shared_engine(wait: bool = True) -> None:
    """Close the shared engine, if any (see :meth:`Engine.close`; also run at exit, without
    waiting for an interrupted run)."""
    global _shared
    engine, _shared = _shared, None
    if engine is not None and engine.alive:
        engine.close(wait=wait)


def run_simulation(
    cfg: DictConfig, run_dir: Path, meta: Mapping[str, object] | None = None
) -> Path:
    """Run the experiment ``cfg`` on a fresh Flower simulation (Ray backend), then stop it;
    return ``metrics.csv``. (Sweeps share one: :func:`shared_engine`.)

    The server's own preparation (data, model, partitions, the initial model's evaluation) runs
    in a thread while Ray starts: ``ray.init`` mostly waits for Ray's processes to come up.
    ``cfg`` must be valid (:func:`fedbackdoor.config.validate`: the command line checks it
    before Ray starts).
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prepare-server") as pool:
        world = pool.submit(prepare_server, cfg)
        engine = Engine(cfg)
        try:
            metrics = engine.run(cfg, run_dir, meta, world.result())
        except BaseException:  # Ctrl-C, SIGTERM, a failure: do not wait for the rounds left
            engine.close(wait=False)
            raise
        engine.close()
        return metrics

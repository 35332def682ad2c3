"""What does Flower's simulation cost on top of the training it runs?

Runs, in one process and one sitting, the same rounds of the same experiment twice:

(a) the ideal: every round's local training done by plain PyTorch, one single-thread trainer
    process per core working in parallel (started and warmed up before timing), then the same
    aggregation and the same server-side evaluation;
(b) the same rounds through the Flower simulation (Ray backend), end to end.

It prints the steady per-round time of both and their ratio (b)/(a) (rounds after the first),
and the start-up + shutdown seconds of (b): the wall time of one simulation call
(:func:`fedbackdoor.fl.simulation.run_simulation`: Ray start, actors, their warm-up, the
server's set-up and initial evaluation, shutdown) minus its rounds at the steady per-round
time. Python's one-time imports of the process (torch, flwr) are done before and not counted:
a sweep pays them once.

With ``--joined-ray`` it then starts a Ray head outside the process (``ray start --head``, as a
user who runs many simulations keeps one), runs the same simulation again with
``backend.address=auto`` and prints its start-up + shutdown too: Ray's own start and stop are
then paid once per machine, not per simulation. The head is stopped at the end.

    .venv/bin/python simulations/bench_overhead.py [--joined-ray] [HYDRA_OVERRIDES ...]

Defaults: the default study (Fashion-MNIST, 20 clients, 10 per round), 6 rounds.
Targets (issue 2): per-round ratio <= 1.05; start-up + shutdown <= 8 s.
"""

from __future__ import annotations

import copy
import multiprocessing as mp
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from fedbackdoor.client import ClientSpec, client_update
from fedbackdoor.config import compose_config
from fedbackdoor.experiment import (
    build_data,
    build_defense,
    build_evaluator,
    build_model,
    build_partitions,
)
from fedbackdoor.layout import Layout, trainable_names
from fedbackdoor.sampling import choose_malicious, sample_round
from fedbackdoor.seeding import make_generator
from fedbackdoor.server_step import weighted_buffers


def _worker_init() -> None:
    torch.set_num_threads(1)


def _train(args: tuple[str, dict[str, torch.Tensor], ClientSpec]) -> dict[str, torch.Tensor]:
    cfg_yaml, state, spec = args
    new_state, _, _ = client_update(cfg_yaml, state, spec)
    return new_state


def ideal_rounds(cfg, workers: int) -> list[float]:  # type: ignore[no-untyped-def]
    """Seconds of each round done by plain PyTorch processes (one per core)."""
    from omegaconf import OmegaConf

    cfg_yaml = OmegaConf.to_yaml(cfg, resolve=True)
    data = build_data(cfg)
    model = build_model(cfg, data)
    partitions = build_partitions(cfg, data)
    evaluator = build_evaluator(cfg, data)
    defense = build_defense(cfg.defense)
    seed = int(cfg.seed)
    malicious = choose_malicious(
        int(cfg.num_clients),
        float(cfg.attack.fraction),
        generator=make_generator(seed, "malicious"),
    )
    sampler = make_generator(seed, "sample")
    ctx = mp.get_context("spawn")
    times = []
    with ctx.Pool(workers, initializer=_worker_init) as pool:
        # Warm-up: every worker imports, loads the data and builds the model before timing.
        warm = ClientSpec(round=0, partition=0, malicious=False, indices=partitions[0][:64])
        pool.map(_train, [(cfg_yaml, model.state_dict(), warm)] * workers, chunksize=1)
        for rnd in range(1, int(cfg.num_rounds) + 1):
            start = time.perf_counter()
            sample = sample_round(
                int(cfg.num_clients),
                int(cfg.clients_per_round),
                malicious,
                per_round=cfg.attack.get("per_round"),
                generator=sampler,
            )
            state = model.state_dict()
            jobs = [
                (cfg_yaml, state, ClientSpec(rnd, p, m, partitions[p]))
                for p, m in zip(sample.partitions, sample.malicious, strict=True)
            ]
            states = pool.map(_train, jobs, chunksize=1)
            layout = Layout.of(state, trainable_names(model))
            glob = layout.flatten(state)
            updates = torch.stack([layout.flatten(s) - glob for s in states])
            weights = torch.tensor([float(len(partitions[p])) for p in sample.partitions])
            agg = defense(updates, weights, generator=make_generator(seed, "defense"))
            buffers = torch.stack([layout.flatten_buffers(s) for s in states])
            model.load_state_dict(
                layout.unflatten(glob + agg.update, weighted_buffers(buffers, weights))
            )
            evaluator(model)
            times.append(time.perf_counter() - start)
    return times


def flower_rounds(cfg) -> tuple[list[float], float, dict[str, float]]:  # type: ignore[no-untyped-def]
    """Seconds of each round through Flower, the wall time of the whole call, and when its
    phases ended (seconds since the call)."""
    from fedbackdoor.fl import server_app, simulation  # imports flwr, Ray, the apps
    from fedbackdoor.run_files import load_metrics

    marks: dict[str, float] = {}
    start = time.perf_counter()

    def timed(name: str, fn):  # type: ignore[no-untyped-def]
        def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
            marks[f"{name} begins"] = time.perf_counter() - start
            try:
                return fn(*args, **kwargs)
            finally:
                marks[f"{name} ends"] = time.perf_counter() - start

        return wrapper

    simulation.init_ray = timed("ray.init", simulation.init_ray)
    simulation.run_server = timed("server", simulation.run_server)
    simulation.prepare_server = timed("prepare", simulation.prepare_server)
    server_app.WarmUp.wait = timed("warm-up wait", server_app.WarmUp.wait)  # type: ignore[method-assign]
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        simulation.run_simulation(cfg, Path(tmp))
        wall = time.perf_counter() - start
        metrics = load_metrics(Path(tmp) / "metrics.csv")
    return metrics["seconds"].tolist(), wall, marks


def joined_ray_overhead(cfg, steady: float) -> tuple[float, float, dict[str, float]]:  # type: ignore[no-untyped-def]
    """Start-up + shutdown of the same simulation joining a Ray head started beforehand."""
    ray_cli = str(Path(sys.executable).with_name("ray"))
    cores = str(int(cfg.backend.num_cpus or os.cpu_count() or 1))
    # A head of our own (its own port and temp dir), stopped by ending its processes only:
    # `ray stop` would stop every Ray this user runs on the machine, other jobs' included.
    temp_dir = tempfile.mkdtemp(prefix="ray-bench-")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    subprocess.run(
        [ray_cli, "start", "--head", "--num-cpus", cores, "--include-dashboard=false",
         "--disable-usage-stats", "--port", str(port), "--temp-dir", temp_dir],
        check=True, capture_output=True,
    )  # fmt: skip
    try:
        joined = copy.deepcopy(cfg)
        joined.backend.address = f"127.0.0.1:{port}"
        joined.backend.num_cpus = None
        rounds, wall, marks = flower_rounds(joined)
        return wall - steady * (len(rounds) - 1), wall, marks
    finally:
        _stop_own_ray(temp_dir)


def _stop_own_ray(temp_dir: str) -> None:
    """SIGTERM the processes whose command line names ``temp_dir`` (the head we started)."""
    for entry in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if temp_dir.encode() in entry.read_bytes():
                os.kill(int(entry.parent.name), signal.SIGTERM)
        except (OSError, ValueError):
            continue


def main(argv: list[str]) -> None:
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    joined = "--joined-ray" in argv
    argv = [a for a in argv if a != "--joined-ray"]
    cfg = compose_config(["num_rounds=6", *argv])
    cores = int(cfg.backend.num_cpus or os.cpu_count() or 1)
    workers = max(1, int(cores // float(cfg.backend.client_resources.num_cpus)))

    ideal = ideal_rounds(cfg, workers)
    flower, wall, marks = flower_rounds(cfg)
    # flower[0] is round 0 (evaluation of the initial model); flower[1] includes warm-up.
    ideal_steady = statistics.median(ideal[1:])
    flower_steady = statistics.median(flower[2:])
    # Everything but the rounds at their steady time counts, the initial evaluation included
    # (it overlaps Ray's start, so subtracting it would flatter the figure).
    overhead = wall - flower_steady * (len(flower) - 1)
    print(
        f"config: {cfg.dataset.name}, {cfg.num_clients} clients, {cfg.clients_per_round} per "
        f"round, {cfg.num_rounds} rounds, {workers} trainers x "
        f"{cfg.backend.client_resources.num_cpus} CPU"
    )
    print(
        f"(a) ideal per-round seconds:  median {ideal_steady:.3f}  all "
        f"{[round(t, 2) for t in ideal]}"
    )
    print(
        f"(b) flower per-round seconds: median {flower_steady:.3f}  all "
        f"{[round(t, 2) for t in flower[1:]]}"
    )
    print(f"per-round ratio (b)/(a): {flower_steady / ideal_steady:.3f}   (target <= 1.05)")
    print(f"start-up + shutdown: {overhead:.1f} s of {wall:.1f} s wall   (target <= 8 s)")
    print(
        "  phases (s since the call): "
        + ", ".join(f"{k} {v:.1f}" for k, v in sorted(marks.items(), key=lambda kv: kv[1]))
        + f", returned {wall:.1f}; round 1 took {flower[1]:.2f}"
    )
    if joined:
        overhead_joined, wall_joined, marks_joined = joined_ray_overhead(cfg, flower_steady)
        print(
            f"start-up + shutdown joining a running Ray (backend.address=auto): "
            f"{overhead_joined:.1f} s of {wall_joined:.1f} s wall   (target <= 8 s); "
            f"fresh / joined: {overhead / overhead_joined:.2f}"
        )
        print(
            "  phases (s since the call): "
            + ", ".join(
                f"{k} {v:.1f}" for k, v in sorted(marks_joined.items(), key=lambda kv: kv[1])
            )
        )


if __name__ == "__main__":
    main(sys.argv[1:])

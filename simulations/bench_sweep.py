"""What does each run of a sweep cost on top of its rounds?

Runs, in one process and one sitting, the same short runs of a typical 20-run grid (attacker
fraction 0, 0.05, 0.1, 0.2, 0.3 x FedAvg and median x seeds 0 and 1; ``--distinct-seeds``: 20
runs of 20 seeds instead, so that no two runs share partitions or the initial evaluation)

(a) naively: each in a fresh Flower simulation (:func:`fedbackdoor.fl.simulation.run_simulation`:
    Ray start, actors, warm-up, shutdown every time), and
(b) as ``fedbackdoor run -m`` does: one after another on one shared engine
    (:func:`fedbackdoor.fl.simulation.shared_engine`, started once, closed at the end),

and prints the overhead per run of each: wall time minus the run's rounds (the seconds of
rounds >= 1 in its metrics.csv), so the set-up, the initial evaluation, Ray and Flower's start
and shutdown, amortized over the runs. Then

(c) ``--parallel K`` (default 2; 1 skips it): the same runs on one shared engine with
    ``backend.parallel_runs=K``, ``K`` runs in flight at once, and prints the wall time of
    (b) over (c): how much sooner the sweep ends (rounds overlap, so no per-run overhead).

    .venv/bin/python simulations/bench_sweep.py [--naive 3] [--parallel 2] [--distinct-seeds]
        [OVERRIDES ...]

Defaults: Fashion-MNIST, 60 clients, 10 per round, 2 rounds. Target (issue 5): <= 2 s of
overhead per run amortized over a 20-run sweep (a naive sweep pays ~10-20 s per run).
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from pathlib import Path

from fedbackdoor.config import compose_config
from fedbackdoor.run_files import load_metrics


def _rounds_seconds(run_dir: Path) -> float:
    metrics = load_metrics(run_dir)
    return float(metrics.loc[metrics["round"] > 0, "seconds"].sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--naive", type=int, default=3, help="runs in fresh simulations")
    parser.add_argument("--distinct-seeds", action="store_true", help="20 runs, 20 seeds")
    parser.add_argument("--parallel", type=int, default=2, help="runs in flight in (c)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    base = ["num_clients=60", "clients_per_round=10", "num_rounds=2", *args.overrides]
    if args.distinct_seeds:
        grid = [[f"seed={seed}"] for seed in range(20)]
    else:
        grid = [
            [f"attack.fraction={fraction}", f"defense={defense}", f"seed={seed}"]
            for fraction in (0, 0.05, 0.1, 0.2, 0.3)
            for defense in ("fedavg", "median")
            for seed in (0, 1)
        ]
    configs = [compose_config([*base, *point]) for point in grid]
    args.shared = len(configs)

    from fedbackdoor.fl.simulation import close_shared_engine, run_simulation, shared_engine

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        for i, cfg in enumerate(configs[: args.naive]):
            run_simulation(cfg, root / f"naive{i}")
        naive_wall = time.perf_counter() - start
        naive_rounds = sum(_rounds_seconds(root / f"naive{i}") for i in range(args.naive))

        start = time.perf_counter()
        for i, cfg in enumerate(configs[: args.shared]):
            shared_engine(cfg).run(cfg, root / f"shared{i}")
        close_shared_engine()
        shared_wall = time.perf_counter() - start
        shared_rounds = sum(_rounds_seconds(root / f"shared{i}") for i in range(args.shared))

        parallel_wall = math.nan
        if args.parallel > 1:
            start = time.perf_counter()
            jobs = []
            for i, cfg in enumerate(configs[: args.shared]):
                cfg.backend.parallel_runs = args.parallel
                engine = shared_engine(cfg)
                jobs.append((engine, engine.submit(cfg, root / f"parallel{i}", label=f"[{i}]")))
            for engine, job in jobs:
                engine.wait(job)
            close_shared_engine()
            parallel_wall = time.perf_counter() - start

    naive = (naive_wall - naive_rounds) / args.naive
    shared = (shared_wall - shared_rounds) / args.shared
    shape = "20 seeds" if args.distinct_seeds else "5 fractions x fedavg, median x 2 seeds"
    print(f"config: {' '.join(base)}; grid: {shape}")
    print(
        f"(a) naive:  {args.naive} runs, {naive_wall:.1f} s wall, {naive_rounds:.1f} s of rounds:"
        f" overhead {naive:.2f} s per run"
    )
    print(
        f"(b) shared: {args.shared} runs, {shared_wall:.1f} s wall, {shared_rounds:.1f} s of "
        f"rounds: overhead {shared:.2f} s per run   (target <= 2 s)"
    )
    print(f"overhead per run (b)/(a): {shared / naive:.3f}")
    if args.parallel > 1:
        print(
            f"(c) parallel_runs={args.parallel}: {args.shared} runs, {parallel_wall:.1f} s wall,"
            f" {parallel_wall / args.shared:.2f} s per run; wall (b)/(c): "
            f"{shared_wall / parallel_wall:.3f}"
        )


if __name__ == "__main__":
    main()

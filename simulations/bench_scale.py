"""Federations of thousands of clients on one machine: does the server's cost per round grow
with the number of clients it holds, or only with the clients it samples?

    .venv/bin/python simulations/bench_scale.py [--clients 100,1000,10000] [--per-round 100]
        [--rounds 4] [--dataset synthetic|fashion_mnist]

For each federation size N (same clients per round, same data: the training set split IID into
N partitions, so each client holds 1/N of it), one `fedbackdoor run` of a few rounds; printed
side by side:

* seconds per round (rounds >= 2: round 1 includes the actors' first-call costs), and its
  ratio to the smallest federation's;
* the server's part of a round (``aggregate_seconds``: decode the replies, the server step,
  encode) and the clients' own seconds (mean over the round's clients, from ``clients.csv``);
* the peak resident memory of the driver process (server, Flower's simulation, Ray's client
  side; ``ru_maxrss`` of the finished child) and of the client processes (``peak_rss_mb``).

Target (issue 14): the server's cost per round grows at most linearly in the sampled clients
and not with N; memory does not grow with N. A figure ``scale.png`` is written beside the runs
(``outputs/bench/scale``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def one(n: int, args: argparse.Namespace, out: Path) -> dict[str, float]:
    run_dir = out / f"clients{n}"
    command = [
        sys.executable, "-m", "fedbackdoor", "run",
        f"dataset={args.dataset}", f"num_clients={n}", f"clients_per_round={args.per_round}",
        f"num_rounds={args.rounds}", "attack=badnets", "attack.fraction=0.1",
        "checkpoint.every=null", f"hydra.run.dir={run_dir}",
    ]  # fmt: skip
    # A fresh wrapper per run: its RUSAGE_CHILDREN peak is this run's driver alone.
    wrapper = (
        "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
        "print('RSS', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
        "sys.exit(r.returncode)"
    )
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", wrapper, *command], capture_output=True, text=True, cwd=ROOT
    )
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"N={n} failed:\n{result.stderr[-3000:]}")
    driver = int(result.stdout.strip().splitlines()[-1].split()[1])
    metrics = pd.read_csv(run_dir / "metrics.csv")
    clients = pd.read_csv(run_dir / "clients.csv")
    steady = metrics[metrics["round"] >= 2]
    return {
        "clients": n,
        "wall_s": wall,
        "round_s": float(steady["seconds"].mean()),
        "server_step_s": float(steady["aggregate_seconds"].mean()),
        "client_s": float(clients.loc[clients["round"] >= 2, "client_seconds"].mean()),
        "driver_rss_mb": driver / 1024,
        "client_rss_mb": float(clients["peak_rss_mb"].max()),
    }


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", default="100,1000,10000")
    parser.add_argument("--per-round", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench" / "scale")
    args = parser.parse_args(argv)
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    sizes = [int(v) for v in args.clients.split(",")]
    rows = []
    for n in sizes:
        rows.append(one(n, args, args.out))
        print(f"N={n}: {rows[-1]}", flush=True)
    table = pd.DataFrame(rows)
    base = table.iloc[0]
    table["round_x"] = table["round_s"] / base["round_s"]
    table["server_step_x"] = table["server_step_s"] / base["server_step_s"]
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 2.5))
    panels = (
        ("seconds", {"round_s": "round", "server_step_s": "server step"}),
        ("peak RSS (MB)", {"driver_rss_mb": "driver", "client_rss_mb": "client process"}),
    )
    for ax, (ylabel, lines) in zip(fig.subplots(1, 2), panels, strict=True):
        for column, label in lines.items():
            ax.plot(table["clients"], table[column], marker="o", label=label)
        ax.set_xscale("log")
        ax.set_xlabel("clients in the federation")
        ax.set_ylabel(ylabel)
        ax.legend()
    fig.tight_layout()
    fig.savefig(args.out / "scale.png", dpi=150)
    print(args.out / "scale.png")


if __name__ == "__main__":
    main(sys.argv[1:])

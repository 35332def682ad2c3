"""Which training configuration resists BadNets best? Mithridates' boosting search in a
federation (``fedbackdoor tune``), then the best configuration's poisoning curve beside the
default's.

    .venv/bin/python simulations/resistance_search.py [--trials 40] [--out DIR] [OVERRIDES]

1. **Search** (:mod:`fedbackdoor.tune`): Fashion-MNIST, BadNets with 10 % attackers, norm
   clipping as the aggregation rule; Optuna's multi-objective TPE over the client learning
   rate, local epochs, batch size, the clipping norm and the server learning rate; objectives
   final main accuracy (up) and final backdoor accuracy (down); the median pruner on main
   accuracy. Output in ``DIR/search``: ``trials.csv``, ``importance.csv``, ``pareto.png``.
2. **Curves**: the default configuration and the front's best trade-off (the Pareto trial with
   the highest ``main_acc - backdoor_acc``) each at attacker fractions 0, 0.1, 0.2, 0.3, 0.5
   (a sweep in ``DIR/curves``, its report with both poisoning curves and their resistance
   points in one figure).

Sized for this 2-core machine (one hour at most, ``backend.parallel_runs=2``): 20 clients, 5
per round, 10 rounds. Resumable: the same command skips finished trials and runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]

SETTING = [
    "dataset=fashion_mnist",
    "num_clients=20",
    "clients_per_round=5",
    "num_rounds=10",
    "attack=badnets",
    "defense=clip",
    "seed=0",
    "backend.parallel_runs=2",
]
SPACE = [
    "lr=tag(log,interval(0.01,0.2))",
    "local_epochs=range(1,3)",
    "batch_size=choice(16,32,64)",
    "defense.max_norm=tag(log,interval(0.1,5))",
    "server_lr=interval(0.5,1.5)",
]
FRACTIONS = "attack.fraction=0,0.1,0.2,0.3,0.5"


def best_tradeoff(trials: pd.DataFrame) -> pd.Series:
    """The Pareto trial with the largest ``main_acc - backdoor_acc``."""
    front = trials[trials["pareto"].astype(bool) & (trials["state"] == "COMPLETE")]
    if front.empty:
        raise SystemExit("resistance_search: no finished trial on the front")
    return front.loc[(front["main_acc"] - front["backdoor_acc"]).idxmax()]


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "studies" / "resistance")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides")
    args = parser.parse_args(argv)
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

    from fedbackdoor.cli import main as cli
    from fedbackdoor.report import describe, write_report
    from fedbackdoor.tune import Objectives, tune

    started = time.perf_counter()
    trials = tune(
        [*SETTING, "attack.fraction=0.1", *SPACE, *args.overrides],
        out=args.out / "search",
        trials=args.trials,
        objectives=Objectives(),
        pruner="median",
    )
    searched = time.perf_counter() - started
    best = best_tradeoff(trials)
    # trials.csv holds the default's row without parameters: integer settings read as floats
    whole = ("local_epochs", "batch_size")
    params = [
        f"{k}={int(best[k])}" if k in whole else f"{k}={float(best[k])!r}"
        for k in ("lr", "local_epochs", "batch_size", "defense.max_norm", "server_lr")
    ]
    print(
        f"resistance_search: best trade-off trial {best['trial']}: {' '.join(params)} "
        f"(main {best['main_acc']:.4f}, backdoor {best['backdoor_acc']:.4f})",
        flush=True,
    )
    # The default and the best configuration, one sweep: +tuned marks the searched settings.
    curves = args.out / "curves"
    for name, extra in (("default", []), ("tuned", params)):
        try:
            cli(
                [
                    "run",
                    "-m",
                    *SETTING,
                    FRACTIONS,
                    *extra,
                    *args.overrides,
                    f"hydra.sweep.dir={(curves / name).resolve()}",
                ]
            )
        except SystemExit as exc:
            if exc.code not in (None, 0):
                print(f"resistance_search: the {name} curve exited with {exc.code}", flush=True)
    report = write_report(curves)
    for line in describe(report):
        print(line)
    summary = pd.read_csv(report / "summary.csv")
    columns = [
        c
        for c in ("run", "attack.fraction", "final_main_acc", "final_backdoor_acc")
        if c in summary
    ]
    print(summary[columns].to_string(index=False))
    print(
        f"resistance_search: search {searched:.0f} s, all {time.perf_counter() - started:.0f} s"
        " wall"
    )
    print(report)


if __name__ == "__main__":
    main(sys.argv[1:])

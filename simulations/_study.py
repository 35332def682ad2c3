"""What every study in simulations/ does: one Hydra sweep (resumable), then its report.

A study is a grid of ``fedbackdoor run -m`` overrides written to a fixed sweep directory
(``outputs/studies/<name>`` unless ``--out`` says otherwise), so running the same command again
after an interruption skips the finished runs and redoes the rest. ``--scale paper`` switches
to the paper-size grid (CIFAR-10, ResNet-18, 100 clients: for machines with GPUs).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: The paper-size setting every study's ``--scale paper`` grid starts from.
PAPER = [
    "dataset=cifar10",
    "model=resnet18",
    "num_clients=100",
    "clients_per_round=10",
    "num_rounds=100",
    "local_epochs=2",
    "lr=0.02",
    "momentum=0.9",
]


def run_study(
    name: str,
    grids: Mapping[str, Sequence[str] | Sequence[Sequence[str]]],
    argv: Sequence[str],
    *,
    description: str,
) -> Path:
    """Parse ``--scale``/``--out``/extra overrides, run the sweep, write the report.

    Parameters
    ----------
    name : str
        The study's name (its default output folder).
    grids : mapping
        ``{"small": overrides, "paper": overrides}``; each a list of Hydra overrides, sweeps
        with commas (``attack.fraction=0,0.1``), or a list of such lists: several sweeps, each
        in its own folder ``part<i>`` of the study, reported together.
    argv : sequence of str
        The command line: ``[--scale small|paper] [--out DIR] [OVERRIDES ...]``; extra
        overrides are appended (e.g. ``device=cuda``).
    description : str
        For ``--help``.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--scale", choices=sorted(grids), default="small")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "studies" / name)
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides")
    args = parser.parse_args(list(argv))
    out = args.out if args.scale == "small" else args.out.with_name(f"{name}-{args.scale}")
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

    from fedbackdoor.cli import main as cli
    from fedbackdoor.report import describe, write_report

    started = time.perf_counter()
    grid = grids[args.scale]
    parts: list[list[str]] = (
        [[str(o) for o in grid]] if isinstance(grid[0], str) else [list(g) for g in grid]
    )
    for i, part in enumerate(parts):
        folder = out if len(parts) == 1 else out / f"part{i}"
        overrides = [*part, *args.overrides, f"hydra.sweep.dir={folder.resolve()}"]
        try:
            cli(["run", "-m", *overrides])
        except SystemExit as exc:  # a sweep with failed runs: go on, the report says which
            if exc.code not in (None, 0):
                print(f"{name}: sweep {i} exited with {exc.code}", flush=True)
    report = write_report(out)
    for line in describe(report):
        print(line)
    print(f"{name}: {time.perf_counter() - started:.0f} s wall")
    print(report)
    return report

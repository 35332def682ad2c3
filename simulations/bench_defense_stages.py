"""What do the client-side and post-training defenses cost? Measured side by side, in one run.

1. One client of the default study (3,000 Fashion-MNIST images, the CNN, batch 32, one epoch,
   one thread, as a Ray client trains): plain SGD (:func:`fedbackdoor.training.train`), our
   DP-SGD (the same loop with ``private=``: Opacus' ``GradSampleModule`` + ``DPOptimizer``), and
   Opacus' own recipe (``PrivacyEngine.make_private`` with its Poisson ``DataLoader``) on the same
   data -- the DP/plain ratio is DP-SGD's price, ours/Opacus' says our loop adds nothing to it.
   Then activation clustering and the gradient analysis on the same client, as ratios to its
   plain training.
2. The default study (``fedbackdoor run``) with ``posttrain=[neural_cleanse,fine_pruning,strip]``:
   each post-training defense's seconds against the run's own wall time (its rounds and the
   initial evaluation, without the post-training).

    .venv/bin/python simulations/bench_defense_stages.py [--repeats 3] [--skip-run]

Targets (issue 12): Opacus' overhead no more than its own recipe's; Neural Cleanse on the CNN
within ~10 % of a default run's wall time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from fedbackdoor.config import compose_config
from fedbackdoor.experiment import build_data, build_model, build_partitions
from fedbackdoor.privacy import gradient_analysis
from fedbackdoor.sanitization import activation_clustering
from fedbackdoor.seeding import make_generator
from fedbackdoor.training import PrivateSteps, train


def _best_of(repeats: int, work: Callable[[], object]) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def client_costs(repeats: int) -> dict[str, float]:
    cfg = compose_config([])
    data = build_data(cfg)
    indices = torch.as_tensor(build_partitions(cfg, data)[0])
    x, y = data.x_train[indices], data.y_train[indices]
    start = build_model(cfg, data).state_dict()

    def model() -> torch.nn.Module:
        m = build_model(cfg, data)
        m.load_state_dict(start)
        return m

    def plain() -> None:
        train(model(), x, y, epochs=1, batch_size=32, lr=0.05, generator=make_generator(0, "t"))

    def ours() -> None:
        private = PrivateSteps(1.0, 1.0, make_generator(0, "noise"))
        train(
            model(), x, y, epochs=1, batch_size=32, lr=0.05, generator=make_generator(0, "t"),
            private=private,
        )  # fmt: skip

    def opacus_recipe() -> None:
        from opacus import PrivacyEngine

        m = model()
        loader = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(x, y), batch_size=32, generator=make_generator(0, "t")
        )
        engine = PrivacyEngine()
        m, optimizer, loader = engine.make_private(
            module=m,
            optimizer=torch.optim.SGD(m.parameters(), lr=0.05),
            data_loader=loader,
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            noise_generator=make_generator(0, "noise"),
        )
        loss_fn = torch.nn.CrossEntropyLoss()
        for xb, yb in loader:
            optimizer.zero_grad()
            if len(yb):
                loss_fn(m(xb), yb).backward()
            optimizer.step()

    poisoned = torch.zeros(len(y), dtype=torch.bool)
    poisoned[: len(y) // 10] = True

    def clustering() -> None:
        activation_clustering(
            model(), x, y, generator=make_generator(0, "s"), num_classes=10, device="cpu"
        )

    def gradients() -> None:
        gradient_analysis(model(), x, y, poisoned, max_grad_norm=1.0)

    plain()  # first-call costs
    ours()
    times = {
        "plain SGD": _best_of(repeats, plain),
        "DP-SGD (ours)": _best_of(repeats, ours),
        "DP-SGD (Opacus make_private)": _best_of(repeats, opacus_recipe),
        "activation clustering": _best_of(repeats, clustering),
        "gradient analysis": _best_of(repeats, gradients),
    }
    return times


def posttrain_costs() -> tuple[float, dict[str, float]]:
    import pandas as pd

    from fedbackdoor.cli import main as cli
    from fedbackdoor.run_files import load_metrics

    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        cli(["run", "posttrain=[neural_cleanse,fine_pruning,strip]", f"hydra.run.dir={run}"])
        metrics = load_metrics(run)
        rounds = float(metrics["seconds"].sum())
        post = pd.read_csv(run / "posttrain.csv")
        return rounds, dict(zip(post["posttrain"], post["seconds"], strict=True))


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-run", action="store_true", help="only the client costs")
    args = parser.parse_args(argv)
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    torch.set_num_threads(1)
    times = client_costs(args.repeats)
    base = times["plain SGD"]
    print("one client of the default study (3,000 images, 1 epoch, 1 thread), median seconds:")
    for name, seconds in times.items():
        print(f"  {name:<30} {seconds:7.2f} s   x{seconds / base:5.2f} of plain SGD")
    ratio = times["DP-SGD (ours)"] / times["DP-SGD (Opacus make_private)"]
    print(f"  ours / Opacus' own recipe: {ratio:.2f}")
    if not args.skip_run:
        torch.set_num_threads(max(1, os.cpu_count() or 1))
        rounds, post = posttrain_costs()
        print(f"default study: {rounds:.1f} s of rounds (round 0 included)")
        for name, seconds in post.items():
            print(f"  {name:<15} {seconds:6.1f} s = {100 * seconds / rounds:5.1f} % of the run")


if __name__ == "__main__":
    main(sys.argv[1:])

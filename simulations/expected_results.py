"""Expected results: published effects, reproduced by the harness on Fashion-MNIST.

Each effect is a handful of runs and one or more checks; every check prints the measured figure
beside its expected range, and the command exits 1 if any figure falls outside (2 if a run
failed). Resumable: runs whose ``run.json`` says complete with the same config are not redone.

    .venv/bin/python simulations/expected_results.py [--out DIR] [--only NAME ...] [--fast]

``--fast`` runs only the exact checks (no federated training beyond one client update: a few
seconds; the test suite runs it). Results: ``<out>/<effect>/<run>/`` (ordinary run folders,
``fedbackdoor report`` reads them) and ``<out>/expected_results.{csv,md}``.

Effects (the README's "Expected results" table gives the measured figures and wall time):

* **exact** -- with every benign update at zero, the model-replacement attacker's boosted update
  makes the global model equal to the attacker's model (Bagdasaryan et al. 2020, eq. 3), for
  equal and unequal sample weights and one or two attackers.
* **replacement** -- one boosted attacker in one round, after 7 clean rounds, takes backdoor
  accuracy from near 0 to >= 0.9 under FedAvg, and it decays over the 12 clean rounds after
  (Bagdasaryan et al. 2020, Fig. 4: single-shot attack).
* **clipping** -- norm clipping and weak DP (Sun et al. 2019) keep backdoor accuracy clearly
  below FedAvg's under a boosted (model-replacement) attacker in every round of 8, with main
  accuracy within about a point of the clean run's: clipping takes the boost away, so the
  attacker weighs as one client (its data poisoning still accumulates over longer runs).
* **rlr** -- the robust learning rate (Ozdayi et al. 2021, Fashion-MNIST: 10 agents, 1 corrupt
  poisoning half of its base-class samples with a plus trigger, the authors' local training;
  20 of the paper's 200 rounds): the backdoor succeeds under FedAvg and RLR nearly removes it.
  Base class 5 (sandal) -> 7 (sneaker), as the authors' code runs it (``src/options.py``,
  ``src/runner.sh``); with base class 1 (trouser), which the issue names, FedAvg's backdoor
  accuracy stayed at 0.000 for the first 9 rounds here (measured), although the attacker's own
  model reaches 0.994: one unboosted attacker among ten does not carry that harder backdoor
  into the global model within 20 rounds.
* **gaussian** -- Gaussian Byzantine updates from 20 % of the clients (Blanchard et al. 2017)
  break FedAvg, while the median and Multi-Krum hold main accuracy.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: The base setting of the federated effects: Fashion-MNIST, 60 clients of 1,000 images, 10 per
#: round, the 171k-parameter CNN, one local epoch of SGD (lr 0.05, batch 32), seed 0.
BASE = ["num_clients=60", "clients_per_round=10", "seed=0"]


@dataclass(frozen=True)
class Check:
    """One measured figure against its expected range."""

    effect: str
    paper: str
    quantity: str
    low: float
    high: float
    measured: float

    @property
    def ok(self) -> bool:
        return self.low <= self.measured <= self.high and not math.isnan(self.measured)

    @property
    def expected(self) -> str:
        if self.low == -math.inf:
            return f"<= {self.high:g}"
        if self.high == math.inf:
            return f">= {self.low:g}"
        return f"[{self.low:g}, {self.high:g}]"


@dataclass(frozen=True)
class Effect:
    name: str
    paper: str
    runs: Mapping[str, list[str]]
    checks: Callable[[Mapping[str, object]], list[tuple[str, float, float, float]]]


def _final(metrics: object, column: str = "backdoor_acc", last: int = 1) -> float:
    """Mean of ``column`` over the last ``last`` rounds."""
    return float(metrics[column].iloc[-last:].mean())  # type: ignore[index]


def _at(metrics: object, round_: int, column: str = "backdoor_acc") -> float:
    rows = metrics[metrics["round"] == round_]  # type: ignore[index]
    return float(rows[column].iloc[0])


INF = math.inf

REPLACEMENT = 8  # the single-shot round
EFFECTS = [
    Effect(
        "replacement",
        "Bagdasaryan et al. 2020 (model replacement, single shot)",
        {
            "fedavg": [
                *BASE,
                "num_rounds=20",
                "attack=scaling",
                "attack.per_round=1",
                f"attack.start_round={REPLACEMENT}",
                f"attack.end_round={REPLACEMENT}",
                "defense=fedavg",
            ]
        },
        lambda m: [
            ("backdoor acc. before the attack round", -INF, 0.1, _at(m["fedavg"], REPLACEMENT - 1)),
            ("backdoor acc. in the attack round", 0.9, INF, _at(m["fedavg"], REPLACEMENT)),
            (
                "backdoor acc. decay over the 12 rounds after",
                0.05,
                INF,
                _at(m["fedavg"], REPLACEMENT) - _final(m["fedavg"]),
            ),
        ],
    ),
    Effect(
        "clipping",
        "Sun et al. 2019 (norm clipping, weak DP)",
        {
            label: [*BASE, "num_rounds=8", "attack=scaling", "attack.per_round=1", *extra]
            for label, extra in {
                "clean": ["attack=none", "attack.per_round=null", "defense=fedavg"],
                "fedavg": ["defense=fedavg"],
                # about a benign update's norm after the first rounds (0.35-0.5 measured)
                "clip": ["defense=clip", "defense.max_norm=0.5"],
                "dp": ["defense=dp", "defense.max_norm=0.5", "defense.sigma=0.001"],
            }.items()
        },
        lambda m: [
            ("FedAvg backdoor acc. (last 3 rounds)", 0.9, INF, _final(m["fedavg"], last=3)),
            (
                "clipping: FedAvg's backdoor acc. minus clipping's (last 3)",
                0.3,
                INF,
                _final(m["fedavg"], last=3) - _final(m["clip"], last=3),
            ),
            (
                "weak DP: FedAvg's backdoor acc. minus weak DP's (last 3)",
                0.3,
                INF,
                _final(m["fedavg"], last=3) - _final(m["dp"], last=3),
            ),
            (
                "clipping: clean main acc. minus clipping's (last 3)",
                -INF,
                0.015,
                _final(m["clean"], "main_acc", 3) - _final(m["clip"], "main_acc", 3),
            ),
            (
                "weak DP: clean main acc. minus weak DP's (last 3)",
                -INF,
                0.015,
                _final(m["clean"], "main_acc", 3) - _final(m["dp"], "main_acc", 3),
            ),
        ],
    ),
    Effect(
        "rlr",
        "Ozdayi et al. 2021 (robust learning rate, Fashion-MNIST 5 -> 7)",
        {
            label: [
                "num_clients=10",
                "clients_per_round=10",
                "seed=0",
                "num_rounds=20",
                # the authors' training (src/options.py): 2 local epochs, batch 256, lr 0.1,
                # momentum 0.9; the paper runs 200 rounds, this 20
                "local_epochs=2",
                "batch_size=256",
                "lr=0.1",
                "momentum=0.9",
                "attack=badnets",
                "attack.trigger=plus",
                "attack.source_label=5",
                "attack.target_label=7",
                "attack.poison_ratio=0.5",
                "attack.fraction=0.1",
                "attack.per_round=1",
                f"defense={label}",
            ]
            for label in ("fedavg", "rlr")
        },
        lambda m: [
            ("FedAvg backdoor acc. (last 3 rounds)", 0.5, INF, _final(m["fedavg"], last=3)),
            ("RLR backdoor acc. (last 3 rounds)", -INF, 0.1, _final(m["rlr"], last=3)),
        ],
    ),
    Effect(
        "gaussian",
        "Blanchard et al. 2017 (Gaussian Byzantine clients, 20 %)",
        {
            label: [
                *BASE,
                "num_rounds=10",
                "attack=gaussian",
                "attack.fraction=0.2",
                "attack.per_round=2",
                *extra,
            ]
            for label, extra in {
                "clean": [
                    "attack=none",
                    "attack.fraction=0",
                    "attack.per_round=null",
                    "defense=fedavg",
                ],
                "fedavg": ["defense=fedavg"],
                "median": ["defense=median"],
                "multikrum": ["defense=multikrum", "defense.f=2"],
            }.items()
        },
        lambda m: [
            ("FedAvg main acc.", -INF, 0.3, _final(m["fedavg"], "main_acc")),
            (
                "median: clean main acc. minus median's",
                -INF,
                0.05,
                _final(m["clean"], "main_acc") - _final(m["median"], "main_acc"),
            ),
            (
                "Multi-Krum: clean main acc. minus Multi-Krum's",
                -INF,
                0.05,
                _final(m["clean"], "main_acc") - _final(m["multikrum"], "main_acc"),
            ),
        ],
    ),
]


def exact_checks() -> list[Check]:
    """With the benign updates at zero, the boosted attackers' update replaces the global model.

    One real local update of a BadNets attacker on Fashion-MNIST (the run's own client code)
    goes through the server step (:class:`~fedbackdoor.server_step.ServerStep`) with
    ``attack.boost=auto`` under FedAvg, beside benign clients whose updates are zero; the largest
    absolute difference between the new global model and the attacker's is the figure.
    """
    import torch  # noqa: PLC0415 (the script's --help stays fast)
    from omegaconf import OmegaConf  # noqa: PLC0415

    from fedbackdoor.client import ClientSpec, client_update  # noqa: PLC0415
    from fedbackdoor.config import compose_config  # noqa: PLC0415
    from fedbackdoor.experiment import (  # noqa: PLC0415
        build_data,
        build_defense,  # noqa: PLC0415
        build_model,
        build_update_attack,
    )
    from fedbackdoor.layout import Layout, trainable_names  # noqa: PLC0415
    from fedbackdoor.seeding import make_generator  # noqa: PLC0415
    from fedbackdoor.server_step import ServerStep  # noqa: PLC0415

    checks = []
    for weights, attackers, server_lr in (
        ([1000.0] * 10, [3], 1.0),
        ([312.0, 1000.0, 57.0, 800.0, 431.0, 1500.0, 90.0, 640.0, 205.0, 999.0], [3], 1.0),
        ([312.0, 1000.0, 57.0, 800.0, 431.0, 1500.0, 90.0, 640.0, 205.0, 999.0], [2, 7], 0.5),
    ):
        cfg = compose_config(["attack=scaling", f"server_lr={server_lr}", "local_epochs=1"])
        data = build_data(cfg)
        model = build_model(cfg, data)
        layout = Layout.of(model.state_dict(), trainable_names(model))
        global_params = layout.flatten(model.state_dict())
        global_buffers = layout.flatten_buffers(model.state_dict())
        spec = ClientSpec(round=1, partition=0, malicious=True, indices=torch.arange(600).numpy())
        state, _, _ = client_update(OmegaConf.to_yaml(cfg, resolve=True), model.state_dict(), spec)
        attacker = layout.flatten(state)
        n = len(weights)
        malicious = torch.zeros(n, dtype=torch.bool)
        malicious[attackers] = True
        updates = torch.zeros(n, layout.dim)
        updates[malicious] = attacker - global_params
        step = ServerStep(
            defense=build_defense(cfg.defense),
            update_attack=build_update_attack(cfg),
            server_lr=server_lr,
            attack_generator=make_generator(0, "attack"),
            defense_generator=make_generator(0, "defense"),
        )
        params, _, _ = step(
            global_params,
            global_buffers,
            updates,
            torch.zeros(n, layout.buffer_dim, dtype=torch.float64),
            torch.tensor(weights),
            malicious,
            round=1,
            clients=list(range(n)),
        )
        error = float((params - attacker).abs().max())
        scale = float(attacker.abs().max())
        setting = (
            f"{len(attackers)} attacker(s), {'equal' if len(set(weights)) == 1 else 'unequal'}"
            f" weights, server_lr {server_lr}"
        )
        checks.append(
            Check(
                "exact",
                "Bagdasaryan et al. 2020 (eq. 3, replacement)",
                f"relative max abs difference, global vs attacker's model ({setting})",
                -INF,
                1e-6,
                error / scale,
            )
        )
    return checks


def run_effect(effect: Effect, out: Path) -> tuple[list[Check], float]:
    """Run (or resume) an effect's runs on one shared engine; its checks and the seconds its
    runs took (their ``run.json``: the same figure when a later call finds them complete)."""
    from fedbackdoor.config import (
        compose_config,  # noqa: PLC0415
        validate,  # noqa: PLC0415
    )
    from fedbackdoor.fl.simulation import Engine  # noqa: PLC0415
    from fedbackdoor.run_files import (  # noqa: PLC0415
        is_complete,
        load_metrics,
        read_run_status,  # noqa: PLC0415
    )

    configs = {label: compose_config(overrides) for label, overrides in effect.runs.items()}
    engine: Engine | None = None
    try:
        for label, cfg in configs.items():
            validate(cfg)
            run_dir = out / effect.name / label
            if is_complete(run_dir, cfg):
                print(f"{effect.name}/{label}: complete, skipped", flush=True)
                continue
            if engine is None:
                engine = Engine(cfg)
            print(f"{effect.name}/{label}: {' '.join(effect.runs[label])}", flush=True)
            engine.run(cfg, run_dir, {"overrides": effect.runs[label]})
    finally:
        if engine is not None:
            engine.close()
    metrics = {label: load_metrics(out / effect.name / label) for label in configs}
    checks = [
        Check(effect.name, effect.paper, quantity, low, high, measured)
        for quantity, low, high, measured in effect.checks(metrics)
    ]
    # The runs' own wall time (from their run.json), whether run now or by an earlier call.
    seconds = sum(
        float((read_run_status(out / effect.name / label) or {}).get("seconds", math.nan))  # type: ignore[arg-type,misc]
        for label in configs
    )
    return checks, seconds


def write_table(checks: list[Check], walls: Mapping[str, float], out: Path) -> None:
    import pandas as pd  # noqa: PLC0415

    rows = [
        {
            "effect": c.effect,
            "paper": c.paper,
            "quantity": c.quantity,
            "expected": c.expected,
            "measured": round(c.measured, 4) if c.measured > 1e-3 else f"{c.measured:.2e}",
            "ok": c.ok,
            "effect_runs_s": round(walls.get(c.effect, math.nan), 1),
        }
        for c in checks
    ]
    table = pd.DataFrame(rows)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "expected_results.csv", index=False)
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(False)]
    (out / "expected_results.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "studies" / "expected")
    parser.add_argument("--only", nargs="+", help="only these effects (exact is always run)")
    parser.add_argument("--fast", action="store_true", help="only the exact checks")
    args = parser.parse_args(argv)
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    started = time.perf_counter()
    checks = exact_checks()
    walls = {"exact": time.perf_counter() - started}
    effects = [] if args.fast else [e for e in EFFECTS if not args.only or e.name in args.only]
    failed_runs = []
    for effect in effects:
        try:
            effect_checks, walls[effect.name] = run_effect(effect, args.out)
        except Exception as exc:  # noqa: BLE001 (one broken effect must not hide the others)
            print(f"{effect.name}: FAILED: {exc}", file=sys.stderr, flush=True)
            failed_runs.append(effect.name)
            continue
        checks.extend(effect_checks)
    print()
    for c in checks:
        mark = "ok " if c.ok else "OUT"
        print(
            f"{mark} {c.effect:<12} {c.quantity}: measured {c.measured:.4g}, expected {c.expected}"
        )
    write_table(checks, walls, args.out)
    print(f"expected results: {time.perf_counter() - started:.0f} s wall; table in {args.out}")
    if failed_runs:
        return 2
    return 0 if all(c.ok for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

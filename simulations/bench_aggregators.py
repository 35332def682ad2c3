"""How fast is each aggregation rule, and how does it compare with Flower's own strategies?

For n = 10, 50, 100 clients and a model of about 1.2M parameters, in one process, every
``conf/defense`` option built from its config:

* ``rule``: the pure function on the stacked updates (``fedbackdoor.defenses``);
* ``step``: the Flower-free server step (:class:`~fedbackdoor.server_step.ServerStep`:
  screening, the defense, the new global parameters; FLTrust's server data and root update
  are stand-ins here, the server's training is not timed);
* ``ours``: the same through :class:`~fedbackdoor.fl.strategy.DefenseStrategy`, from Flower's
  reply messages to the new global model's ``ArrayRecord`` (decoding and encoding included);
* ``flower``: the same replies through Flower's strategy with the same rule
  (``FedMedian``, ``FedTrimmedAvg``, ``Krum``, ``MultiKrum``, ``Bulyan``), where there is one;

and prints seconds (best of ``--repeat``) and the ratio flower / ours.

    .venv/bin/python simulations/bench_aggregators.py [--sizes 10 50 100] [--repeat 3]
        [--rules krum median ...]
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import Bulyan, FedMedian, FedTrimmedAvg, Krum, MultiKrum
from flwr.supercore.task_identity import TaskIdentity

from fedbackdoor.attacks.boost import identity
from fedbackdoor.config import CONF_DIR, compose_config
from fedbackdoor.defenses.pipeline import Defense
from fedbackdoor.experiment import build_defense
from fedbackdoor.fl.arrays import to_record
from fedbackdoor.fl.strategy import DefenseStrategy
from fedbackdoor.round_context import StandInContext
from fedbackdoor.seeding import make_generator
from fedbackdoor.server_step import ServerStep

# 12 tensors of 100k floats: a 1.2M-parameter model.
SHAPES = [(100, 1000)] * 12


def rules(
    n: int, only: list[str] | None = None
) -> dict[str, tuple[Defense, Callable[[], Any] | None]]:
    """Every ``conf/defense`` option (or those in ``only``), built from its config, with
    Flower's equivalent."""
    f = max(1, (n - 3) // 4)  # Bulyan's largest f for n (n >= 4f + 3)
    settings = {  # n-dependent settings; everything else is the config's default
        "krum": [f"defense.f={f}"],
        "multikrum": [f"defense.f={f}", f"defense.m={n - f}"],
        "bulyan": [f"defense.f={f}"],
        "dnc": [f"defense.f={f}"],
        "trimmed_mean": ["defense.beta=0.1"],
    }
    flower: dict[str, Callable[[], Any]] = {
        "median": FedMedian,
        "trimmed_mean": partial(FedTrimmedAvg, beta=0.1),
        "krum": partial(Krum, num_malicious_nodes=f),
        "multikrum": partial(MultiKrum, num_malicious_nodes=f, num_nodes_to_select=n - f),
        "bulyan": partial(Bulyan, num_malicious_nodes=f),
    }
    names = sorted(p.stem for p in (CONF_DIR / "defense").glob("*.yaml"))
    if only:
        unknown = sorted(set(only) - set(names))
        if unknown:
            raise SystemExit(f"unknown --rules {unknown}; conf/defense has {names}")
        names = [name for name in names if name in only]
    built = {}
    for name in names:
        cfg = compose_config([f"defense={name}", f"clients_per_round={n}", f"num_clients={n}",
                              *settings.get(name, [])])  # fmt: skip
        built[name] = (build_defense(cfg.defense), flower.get(name))
    return built


def best_of(repeat: int, fn: Callable[..., Any], setup: Callable[[], Any] = lambda: ()) -> float:
    """Best time of ``fn(*setup())``; ``setup`` runs untimed before every call (Flower's
    strategies consume the arrays of the replies they aggregate, so each call needs fresh ones)."""
    times = []
    for _ in range(repeat):
        args = setup()
        start = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 50, 100])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rules", nargs="+", help="only these conf/defense options")
    args = parser.parse_args()
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    logging.getLogger("flwr").setLevel(logging.WARNING)  # Flower's per-call INFO lines
    torch.set_num_threads(2)
    gen = torch.Generator().manual_seed(0)
    global_state = {f"layer{i}": torch.randn(s, generator=gen) for i, s in enumerate(SHAPES)}
    dim = sum(int(np.prod(s)) for s in SHAPES)
    print(f"model: {dim / 1e6:.2f}M parameters; seconds are the best of {args.repeat}")
    header = f"{'rule':<20}{'n':>4}{'rule s':>9}{'step s':>9}{'ours s':>9}{'flower s':>10}"
    print(f"{header}{'flower/ours':>13}")
    for n in args.sizes:
        updates = 0.01 * torch.randn(n, dim, generator=gen)
        weights = torch.full((n,), 100.0)
        strategy_args = dict(
            cfg_yaml="{}",
            partitions=[np.arange(1)] * n,
            malicious_set=frozenset(),
            clients_per_round=n,
            per_round=None,
            trainable=frozenset(global_state),
            sample_generator=make_generator(0, "s"),
        )
        nodes = list(range(1, n + 1))
        grid = type("Grid", (), {"get_node_ids": staticmethod(lambda nodes=nodes: nodes)})()
        global_params = torch.cat([v.flatten() for v in global_state.values()])
        no_buffers = torch.zeros(n, 0, dtype=torch.float64)
        for name, (defense, flower_cls) in rules(n, args.rules).items():
            # Server data and the server's update (FLTrust) are stand-ins: not timed.
            context = StandInContext.for_round(n, dim)
            rule_s = best_of(
                args.repeat,
                lambda d=defense, u=updates, w=weights, c=context: d(
                    u, w, generator=gen, context=c
                ),  # type: ignore[misc]
            )
            step = ServerStep(
                defense=defense,
                update_attack=identity,
                server_lr=1.0,
                attack_generator=make_generator(0, "a"),
                defense_generator=make_generator(0, "d"),
                context_class=StandInContext,
            )
            step_args = (
                global_params,
                torch.zeros(0, dtype=torch.float64),
                updates,
                no_buffers,
                weights,
                torch.zeros(n, dtype=torch.bool),
            )
            step_s = best_of(
                args.repeat,
                lambda s=step, a=step_args, c=list(range(n)): s(*a, round=1, clients=c),  # type: ignore[misc]
            )
            outer = DefenseStrategy(step=step, **strategy_args)  # type: ignore[arg-type]
            msgs = list(outer.configure_train(1, to_record(global_state), ConfigRecord(), grid))

            def make_replies(msgs: list[Message] = msgs, u: torch.Tensor = updates) -> tuple:
                replies = []
                for msg in msgs:
                    cfg = msg.content.config_records["config"]
                    part = int(cfg["partition-id"])  # type: ignore[arg-type]
                    flat = u[part]
                    state, offset = {}, 0
                    for key, value in global_state.items():
                        size = value.numel()
                        state[key] = value + flat[offset : offset + size].view(value.shape)
                        offset += size
                    content = RecordDict(
                        {
                            "arrays": to_record(state),
                            "config": ConfigRecord({"partition-id": part, "num-examples": 100}),
                            "metrics": MetricRecord({"num-examples": 100}),
                        }
                    )
                    replies.append(Message(content, reply_to=msg))
                return (replies,)

            ours_s = best_of(args.repeat, lambda r, s=outer: s.aggregate_train(1, r), make_replies)
            flower = ""
            if flower_cls is not None:
                theirs = flower_cls()
                flower_s = best_of(
                    args.repeat, lambda r, t=theirs: t.aggregate_train(1, r), make_replies
                )
                flower = f"{flower_s:>10.2f}{flower_s / ours_s:>13.2f}"
            print(f"{name:<20}{n:>4}{rule_s:>9.2f}{step_s:>9.2f}{ours_s:>9.2f}{flower}", flush=True)


if __name__ == "__main__":
    main()

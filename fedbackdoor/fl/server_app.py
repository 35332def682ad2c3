"""The ServerApp: builds the run from its config, drives the rounds, logs every round.

Two ways in:

* :func:`run_server` — called by ``fedbackdoor run`` (Hydra, Python launcher) through the
  simulation engine of :mod:`fedbackdoor.fl.simulation`, in the launcher's process, with the
  config object and the run directory.
* :data:`app` — the component named in ``pyproject.toml`` for ``flwr run``; it composes the
  config from ``conf/`` with the Hydra overrides in the run config key ``overrides``.
"""

from __future__ import annotations

import json
import math
import shlex
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid, ServerApp
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from fedbackdoor.attacks.poison import dba_assignment
from fedbackdoor.config import validate
from fedbackdoor.data.datasets import ImageData
from fedbackdoor.experiment import (
    build_data,
    build_defense_pipeline,
    build_evaluator,
    build_model,
    build_partitions,
    build_root_update,
    build_schedule,
    build_update_attack,
)
from fedbackdoor.fl.arrays import to_record, to_state_dict, trainable_names
from fedbackdoor.fl.strategy import DefenseStrategy, wait_for_nodes
from fedbackdoor.metrics import Evaluator
from fedbackdoor.plots import plot_run
from fedbackdoor.results import MetricsWriter, detection_totals, load_metrics, write_run_status
from fedbackdoor.sampling import choose_malicious
from fedbackdoor.seeding import make_generator
from fedbackdoor.server_step import RoundRecord, ServerStep


def round_row(
    round_: int, evaluation: dict[str, float], record: RoundRecord | None, seconds: float
) -> dict[str, object]:
    """One row of ``metrics.csv``."""
    row: dict[str, object] = {"round": round_, **evaluation, "seconds": round(seconds, 3)}
    if record is None:  # round 0: the initial model, nobody trained
        row.update(n_clients=0, n_malicious=0, n_rejected=0, skipped=0)
        return row
    row.update(
        aggregate_seconds=round(record.aggregate_seconds, 4),
        n_clients=record.n_clients,
        n_malicious=record.n_malicious,
        n_rejected=record.n_rejected,
        n_flagged=record.n_flagged,
        mal_influence=record.influence,
        skipped=int(record.skipped is not None),
    )
    if record.detection is not None:
        d = record.detection
        row.update(det_tp=d.tp, det_fp=d.fp, det_tpr=d.tpr, det_fpr=d.fpr)
    return row


class WarmUp:
    """Warm-up messages: clients import torch, load the data and build the model while the
    server sets up and evaluates the initial model, instead of during round 1."""

    def __init__(self, grid: Grid, cfg_yaml: str, count: int, min_nodes: int = 1) -> None:
        self.grid = grid
        content = RecordDict({"config": ConfigRecord({"run-config": cfg_yaml})})
        messages = [
            Message(content=content, message_type=MessageType.QUERY, dst_node_id=node)
            for node in wait_for_nodes(grid, min_nodes)[:count]
        ]
        self.pending = set(grid.push_messages(messages))
        self.count = len(messages)

    def wait(self, timeout: float = 1800.0, poll: float = 0.02) -> None:
        """Block until every client answered; raise if none of them could start."""
        errors: list[str] = []
        deadline = time.monotonic() + timeout
        while self.pending and time.monotonic() < deadline:
            for reply in self.grid.pull_messages(list(self.pending)):
                self.pending.discard(reply.metadata.reply_to_message_id)
                if reply.has_error():
                    errors.append(reply.error.reason or f"error code {reply.error.code}")
            if self.pending:
                time.sleep(poll)
        if errors and len(errors) == self.count:
            raise RuntimeError(f"no client could start; the first said: {errors[0]}")


class Interrupted(RuntimeError):
    """The process is stopping (Ctrl-C) while a run is in progress."""


#: Set when the process is interrupted: runs in progress stop at their next round and never
#: report themselves complete (their ``run.json`` stays "running", so a resumed sweep redoes
#: them), even if Ray stopping under them lets a round end without clients.
STOP = threading.Event()


def describe(cfg: DictConfig) -> str:
    """A one-line summary of a run for figure titles."""

    def name(node: DictConfig) -> str:
        return str(node._target_).rsplit(".", 1)[-1]

    steps = [name(t) for t in cfg.defense.get("pre") or []]
    steps += [name(cfg.defense.rule)] + [name(t) for t in cfg.defense.get("post") or []]
    attack = "no attack"
    if cfg.attack.fraction > 0:
        attack = f"{cfg.attack.fraction:.0%} malicious, boost {cfg.attack.get('boost', 1)}"
        update = cfg.attack.get("update") or {}
        if update.get("train") is not None:
            attack += f", trained with {name(update['train'])}"
        if update.get("apply") is not None:
            attack += f", update {name(update['apply'])}"
    return f"{cfg.dataset.name}, {cfg.num_clients} clients: {attack}; defense {'+'.join(steps)}"


@dataclass
class ServerWorld:
    """What the server builds before round 1: everything that does not need the clients.

    :func:`prepare_server` builds it; :func:`fedbackdoor.fl.simulation.run_simulation` does so
    in a thread while Ray starts, so the two overlap instead of adding up.
    """

    cfg: DictConfig
    cfg_yaml: str
    data: ImageData
    model: nn.Module
    evaluator: Evaluator
    partitions: list[np.ndarray]
    #: The initial model's evaluation (round 0) and the seconds it took.
    initial: tuple[dict[str, float], float]


#: What the runs of one process (a sweep on a shared engine) can share: partitions and the
#: initial model's evaluation, keyed by exactly the settings they depend on.
_PARTITIONS: dict[str, list[np.ndarray]] = {}
_INITIAL: dict[str, tuple[dict[str, float], float]] = {}


def _key(cfg: DictConfig, *paths: str) -> str:
    """The resolved settings at ``paths`` as one string (a cache key)."""
    picked = {}
    for path in paths:
        value = OmegaConf.select(cfg, path)
        if isinstance(value, DictConfig | ListConfig):
            value = OmegaConf.to_container(value, resolve=True)
        picked[path] = value
    return json.dumps(picked, sort_keys=True, default=str)


def prepare_server(cfg: DictConfig) -> ServerWorld:
    """Load the data (a dataset that cannot be found fails here, once, before any client
    tries), build the model, the evaluator and the partitions, and evaluate the initial model.

    Within one process, runs that agree on what the partitions depend on (dataset, partition,
    number of clients, seed) share them, and runs that agree on what the initial model's
    evaluation depends on (dataset, model, seed, the backdoor tests, evaluation batch size and
    device) share it: a sweep over attacker fractions or defenses computes each once.
    """
    validate(cfg)
    data = build_data(cfg)
    model = build_model(cfg, data)
    evaluator = build_evaluator(cfg, data)
    key = _key(cfg, "dataset", "partition", "num_clients", "seed")
    if key not in _PARTITIONS:
        _PARTITIONS[key] = build_partitions(cfg, data)
    initial_key = _key(
        cfg,
        "dataset",
        "model",
        "seed",
        "attack.backdoor_test",
        "attack.backdoor_parts",
        "eval_batch_size",
        "device",
    )
    if initial_key not in _INITIAL:
        started = time.perf_counter()
        evaluation = evaluator(model)
        _INITIAL[initial_key] = (evaluation, time.perf_counter() - started)
    return ServerWorld(
        cfg=cfg,
        cfg_yaml=OmegaConf.to_yaml(cfg, resolve=True),
        data=data,
        model=model,
        evaluator=evaluator,
        partitions=_PARTITIONS[key],
        initial=_INITIAL[initial_key],
    )


def assign_reserved(
    cfg: DictConfig, world: ServerWorld, malicious_set: frozenset[int]
) -> list[np.ndarray]:
    """The run's partitions: ``world``'s, with the training samples the attack reserves for the
    attackers (``attack.reserve``: edge cases, Wang et al. 2020) moved from the benign clients to
    the malicious ones (:func:`fedbackdoor.data.partition.reassign_to_attackers`)."""
    if cfg.attack.get("reserve") is None:
        return world.partitions
    from fedbackdoor.data.partition import reassign_to_attackers  # flwr-datasets: server only

    reserved = instantiate(cfg.attack.reserve)(world.data.x_train, world.data.y_train)
    return reassign_to_attackers(world.partitions, np.asarray(reserved), sorted(malicious_set))


def run_server(
    grid: Grid,
    cfg: DictConfig,
    run_dir: Path,
    meta: Mapping[str, object] | None = None,
    world: ServerWorld | None = None,
    label: str | None = None,
) -> Path:
    """Run all rounds of the experiment ``cfg`` on ``grid``; write results to ``run_dir``.

    Writes ``config.yaml`` (resolved), ``run.json`` (``status`` running, then complete with the
    run's ``seconds``; plus ``meta``: the Hydra group ``choices`` and ``overrides``),
    ``metrics.csv`` (a row per round, as it ends), ``accuracy.png`` and ``model.pt`` (the final
    global ``state_dict``). ``world`` is :func:`prepare_server`'s result for ``cfg`` if it was
    built ahead; ``label`` starts its terminal lines (runs in parallel). Returns the path of
    ``metrics.csv``.
    """
    started = time.perf_counter()
    validate(cfg)
    lead = f"{label} " if label else ""
    cfg_yaml = OmegaConf.to_yaml(cfg, resolve=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(cfg_yaml)
    num_rounds = int(cfg.num_rounds)
    write_run_status(run_dir, status="running", num_rounds=num_rounds, **dict(meta or {}))
    seed = int(cfg.seed)
    min_nodes = int(cfg.backend.get("min_nodes") or 1)
    if world is None:
        build_data(cfg)  # a missing dataset fails here, before any client is asked to load it
        warm_up = WarmUp(grid, cfg_yaml, int(cfg.clients_per_round), min_nodes)
        world = prepare_server(cfg)
    else:
        if world.cfg_yaml != cfg_yaml:
            raise ValueError("the prepared server world was built for another config")
        warm_up = WarmUp(grid, cfg_yaml, int(cfg.clients_per_round), min_nodes)
    model, evaluator = world.model, world.evaluator
    trainable = trainable_names(model)
    malicious_set = choose_malicious(
        int(cfg.num_clients),
        float(cfg.attack.fraction),
        generator=make_generator(seed, "malicious"),
    )
    partitions = assign_reserved(cfg, world, malicious_set)
    if cfg.attack.get("num_parts") is not None and malicious_set:  # DBA: who stamps what
        assignment = dba_assignment(int(cfg.attack.num_parts), len(malicious_set))
        spread = "; ".join(f"attacker {i}: parts {list(p)}" for i, p in enumerate(assignment))
        print(f"{lead}DBA trigger parts by attacker: {spread}", flush=True)
        write_run_status(run_dir, dba_parts=[list(p) for p in assignment])
    step = ServerStep(
        defense=build_defense_pipeline(cfg),
        update_attack=build_update_attack(cfg),
        server_lr=float(cfg.server_lr),
        attack_generator=make_generator(seed, "attack"),
        defense_generator=make_generator(seed, "defense"),
        root_update=build_root_update(cfg, world.data, partitions, trainable),
        keep_history=bool(cfg.defense.get("history", False)),
    )
    strategy = DefenseStrategy(
        cfg_yaml=cfg_yaml,
        partitions=partitions,
        malicious_set=malicious_set,
        clients_per_round=int(cfg.clients_per_round),
        per_round=cfg.attack.get("per_round"),
        step=step,
        trainable=trainable,
        sample_generator=make_generator(seed, "sample"),
        min_nodes=min_nodes,
        schedule=build_schedule(cfg),
    )
    diverged: list[int] = []
    skipped: list[int] = []
    writer = MetricsWriter(run_dir / "metrics.csv", extra_columns=evaluator.columns)

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        if STOP.is_set():  # the process is being interrupted: no more rounds
            raise Interrupted(f"{run_dir}: interrupted before round {server_round} was logged")
        extra = ""
        if server_round == 0:  # the initial model: evaluated while preparing
            evaluation, seconds = world.initial
            row = round_row(0, evaluation, None, seconds)
        else:
            model.load_state_dict(to_state_dict(arrays))
            evaluation = evaluator(model)
            record = strategy.record
            assert record is not None  # aggregate_train ran for this round
            seconds = time.perf_counter() - strategy.started
            row = round_row(server_round, evaluation, record, seconds)
            extra = f"  clients {record.n_clients} ({record.n_malicious} malicious)"
            if record.n_rejected:
                extra += f"  rejected {record.n_rejected}"
            if record.skipped is not None:
                extra += f"  SKIPPED, global model kept: {record.skipped}"
                skipped.append(server_round)
            if evaluation.get("diverged"):
                extra += "  DIVERGED: the global model computes non-finite outputs"
                diverged.append(server_round)
        writer.write(row)
        print(
            f"{lead}round {server_round:>3}/{num_rounds}  main_acc {evaluation['main_acc']:.4f}  "
            f"backdoor_acc {evaluation['backdoor_acc']:.4f}{extra}  {row['seconds']:.2f}s",
            flush=True,
        )
        if server_round == 0:
            warm_up.wait()
        return MetricRecord({k: float(v) for k, v in evaluation.items()})

    initial = to_record(model.state_dict())
    try:
        result = strategy.start(
            grid=grid, initial_arrays=initial, num_rounds=num_rounds, evaluate_fn=evaluate_fn
        )
        # The final global model, for model-level defenses and inspection.
        torch.save(to_state_dict(result.arrays or initial), run_dir / "model.pt")
        writer.close()
        totals = detection_totals(load_metrics(writer.path))
        seconds = round(time.perf_counter() - started, 3)
        detection = None if math.isnan(totals["det_tp"]) else totals  # rule flags nobody
        if STOP.is_set():  # rounds may have run while Ray was stopping: not a complete run
            raise Interrupted(f"{run_dir}: interrupted")
        write_run_status(
            run_dir,
            status="complete",
            seconds=seconds,
            detection=detection,
            diverged_rounds=diverged,
            skipped_rounds=skipped,
        )
        if diverged:
            print(
                f"{lead}WARNING: the global model diverged (non-finite outputs) in "
                f"{len(diverged)} round(s), first {diverged[0]}: accuracies of those rounds "
                "count non-finite outputs as wrong",
                flush=True,
            )
        if skipped:
            print(
                f"{lead}WARNING: the global model was not updated in {len(skipped)} round(s): "
                f"{skipped}",
                flush=True,
            )
        if detection is not None:
            print(
                f"{lead}detection over the run: {detection['det_tp']:.0f} of "
                f"{detection['malicious']:.0f} malicious updates flagged "
                f"(TPR {detection['det_tpr']:.3f}), {detection['det_fp']:.0f} of "
                f"{detection['benign']:.0f} benign (FPR {detection['det_fpr']:.3f})",
                flush=True,
            )
    finally:
        writer.close()
        metrics = load_metrics(writer.path)
        if len(metrics):
            plot_run(metrics, run_dir / "accuracy.png", title=describe(cfg))
    return writer.path


app = ServerApp()


@app.main()
def flwr_main(grid: Grid, context: Context) -> None:
    """Entry point for ``flwr run``: Hydra overrides come from the run config."""
    from fedbackdoor.cli import compose_run  # the CLI owns config composition

    overrides = shlex.split(str(context.run_config.get("overrides", "")))
    cfg, meta = compose_run(overrides)
    output_dir = Path(str(context.run_config.get("output-dir", "")) or "outputs/flwr")
    run_dir = output_dir.expanduser() / time.strftime("%Y-%m-%d_%H-%M-%S")
    run_server(grid, cfg, run_dir, meta)
    print(run_dir.resolve(), flush=True)

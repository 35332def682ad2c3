"""The ServerApp: drives a run's rounds through Flower and hands each round's evaluation and
server record to the run's recorder (the work itself is Flower-free: :mod:`fedbackdoor.server`,
:mod:`fedbackdoor.server_step`, :mod:`fedbackdoor.run_files`).

Two ways in:

* :func:`run_server` — called by ``fedbackdoor run`` (Hydra, Python launcher) through the
  simulation engine of :mod:`fedbackdoor.fl.simulation`, in the launcher's process, with the
  config object and the run directory.
* :data:`app` — the component named in ``pyproject.toml`` for ``flwr run``; it composes the
  config from ``conf/`` with the Hydra overrides in the run config key ``overrides``.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable, Mapping
from pathlib import Path

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
from omegaconf import DictConfig, OmegaConf

from fedbackdoor.checkpoint import (
    CHECKPOINT,
    PREVIOUS,
    Checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from fedbackdoor.config import compose_run, validate
from fedbackdoor.experiment import build_data
from fedbackdoor.fl.arrays import to_record, to_state_dict
from fedbackdoor.fl.strategy import DefenseStrategy, wait_for_nodes
from fedbackdoor.posttrain.runner import PostTrainer
from fedbackdoor.privacy import PrivacyLedger
from fedbackdoor.run_files import RunRecorder, load_metrics, read_run_status
from fedbackdoor.seeding import make_generator
from fedbackdoor.server import ServerWorld, build_server, poisoned_samples, prepare_server
from fedbackdoor.stopping import STOP, Interrupted, Pruned, in_progress


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


def run_server(
    grid: Grid,
    cfg: DictConfig,
    run_dir: Path,
    meta: Mapping[str, object] | None = None,
    world: ServerWorld | None = None,
    label: str | None = None,
    on_round: Callable[[int, Mapping[str, float]], bool] | None = None,
) -> Path:
    """Run all rounds of the (validated) experiment ``cfg`` on ``grid``; record them in
    ``run_dir`` (:class:`~fedbackdoor.run_files.RunRecorder`: ``config.yaml``, ``run.json``,
    ``metrics.csv``, ``model.pt``).

    ``world`` is :func:`~fedbackdoor.server.prepare_server`'s result for ``cfg`` if it was built
    ahead; ``label`` starts its terminal lines (runs in parallel). ``on_round(round,
    evaluation)`` is called after each round's row is written (rounds >= 1); when it returns
    True the run stops there (a search pruned it): its rows are kept, no model is saved and
    ``run.json`` says ``status: pruned`` with ``pruned_round``. Returns the path of
    ``metrics.csv``.
    """
    cfg_yaml = OmegaConf.to_yaml(cfg, resolve=True)
    min_nodes = int(cfg.backend.get("min_nodes") or 1)
    if world is None:
        build_data(cfg)  # a missing dataset fails here, before any client is asked to load it
        warm_up = WarmUp(grid, cfg_yaml, int(cfg.clients_per_round), min_nodes)
        world = prepare_server(cfg)
    else:
        if world.cfg_yaml != cfg_yaml:
            raise ValueError("the prepared server world was built for another config")
        warm_up = WarmUp(grid, cfg_yaml, int(cfg.clients_per_round), min_nodes)
    setup = build_server(cfg, world)
    ledger = None
    if cfg.get("client_dp") is not None:
        dp = instantiate(cfg.client_dp)
        dp.check_delta(min(len(p) for p in setup.partitions))
        ledger = PrivacyLedger(float(dp.delta), str(dp.accountant))
    num_rounds = int(cfg.num_rounds)
    every = cfg.get("checkpoint", {}).get("every")
    resumed = _resumable(run_dir, cfg_yaml) if every else None
    if resumed is not None and ledger is not None and resumed.ledger is not None:
        ledger.load_state_dict(resumed.ledger)
    recorder = RunRecorder(
        run_dir,
        cfg_yaml,
        num_rounds=num_rounds,
        columns=world.evaluator.columns,
        meta=meta,
        label=label,
        privacy=ledger,
        resume_after=None if resumed is None else resumed.round,
        diverged=() if resumed is None else resumed.diverged,
        skipped=() if resumed is None else resumed.skipped,
    )
    if world.fixed_for_dp:
        recorder.say(
            "client_dp: Opacus' ModuleValidator.fix changed the model for per-example "
            f"gradients (server and clients alike): {'; '.join(world.fixed_for_dp)}"
        )
        recorder.note(fixed_for_dp=world.fixed_for_dp)
    poisoned, total = poisoned_samples(cfg, world.data, setup)
    recorder.note(
        poisoned_samples=poisoned,
        train_samples=total,
        poisoned_share=poisoned / total if total else 0.0,
    )
    posttrainer = PostTrainer(cfg, world.data, world.model, run_dir, recorder.say)
    if setup.dba_parts is not None:  # DBA: who stamps which trigger parts
        spread = "; ".join(f"attacker {i}: parts {p}" for i, p in enumerate(setup.dba_parts))
        recorder.say(f"DBA trigger parts by attacker: {spread}")
        recorder.note(dba_parts=setup.dba_parts)
    strategy = DefenseStrategy(
        cfg_yaml=cfg_yaml,
        partitions=setup.partitions,
        malicious_set=setup.malicious_set,
        clients_per_round=int(cfg.clients_per_round),
        per_round=cfg.attack.get("per_round"),
        step=setup.step,
        trainable=setup.trainable,
        sample_generator=make_generator(int(cfg.seed), "sample"),
        min_nodes=min_nodes,
        schedule=setup.schedule,
    )
    model, evaluator = world.model, world.evaluator
    pruned: list[int] = []  # the round after which on_round stopped the run
    offset = 0
    initial_state = model.state_dict()
    if resumed is not None:  # continue after the checkpoint's round, exactly
        offset = strategy.round_offset = resumed.round
        strategy.sample_generator.set_state(resumed.generators["sample"])
        setup.step.attack_generator.set_state(resumed.generators["attack"])
        setup.step.defense_generator.set_state(resumed.generators["defense"])
        setup.step.defense.states.clear()
        setup.step.defense.states.update(resumed.defense_states)
        posttrainer.keep_through(resumed.round)
        initial_state = resumed.model
        recorder.say(f"resumed after round {resumed.round} from {run_dir / CHECKPOINT}")

    def checkpoint(server_round: int, arrays: ArrayRecord) -> None:
        save_checkpoint(
            run_dir,
            Checkpoint(
                round=server_round,
                model=to_state_dict(arrays),
                generators={
                    "sample": strategy.sample_generator.get_state(),
                    "attack": setup.step.attack_generator.get_state(),
                    "defense": setup.step.defense_generator.get_state(),
                },
                defense_states=setup.step.defense.states,
                ledger=None if ledger is None else ledger.state_dict(),
                config=cfg_yaml,
                diverged=recorder.diverged,
                skipped=recorder.skipped,
            ),
        )

    def evaluate_fn(flower_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        server_round = flower_round + offset
        if STOP.is_set():  # the process is being interrupted: no more rounds
            raise Interrupted(f"{run_dir}: interrupted before round {server_round} was logged")
        if flower_round == 0 and offset:  # resumed: the checkpoint's round is logged already
            warm_up.wait()
            return None
        if server_round == 0:  # the initial model: evaluated while preparing
            evaluation, seconds = world.initial
            recorder.round(0, evaluation, None, seconds)
            warm_up.wait()
        else:
            model.load_state_dict(to_state_dict(arrays))
            evaluation = evaluator(model)
            assert strategy.record is not None  # aggregate_train ran for this round
            seconds = time.perf_counter() - strategy.started
            recorder.round(
                server_round, evaluation, strategy.record, seconds, clients=strategy.reports
            )
            if posttrainer.due(server_round):
                posttrainer.run(server_round, to_state_dict(arrays))
            if every and server_round % int(every) == 0 and server_round < num_rounds:
                checkpoint(server_round, arrays)
            if on_round is not None and on_round(server_round, evaluation):
                pruned.append(server_round)
                raise Pruned(f"{run_dir}: pruned after round {server_round}")
        return MetricRecord({k: float(v) for k, v in evaluation.items()})

    initial = to_record(initial_state)
    try:
        with in_progress(run_dir):
            result = strategy.start(
                grid=grid,
                initial_arrays=initial,
                num_rounds=num_rounds - offset,
                timeout=float(cfg.get("round_timeout") or 3600.0),
                evaluate_fn=evaluate_fn,
            )
            if STOP.is_set():  # rounds may have run while Ray was stopping: not a complete run
                raise Interrupted(f"{run_dir}: interrupted")
            recorder.finish(to_state_dict(result.arrays or initial))
            for name in (CHECKPOINT, PREVIOUS):  # model.pt is the final state now
                (run_dir / name).unlink(missing_ok=True)
    except Pruned:
        if not pruned:  # raised by something else than this run's on_round
            raise
        recorder.note(status="pruned", pruned_round=pruned[-1])
        recorder.say(f"pruned after round {pruned[-1]}")
    except Interrupted:
        recorder.note(status="stopped")
        raise
    except Exception as exc:  # the run's own failure: said in run.json, then raised
        recorder.note(status="failed", error=f"{type(exc).__name__}: {exc}"[:2000])
        raise
    finally:
        recorder.close()
    return recorder.writer.path


def _resumable(run_dir: Path, cfg_yaml: str) -> Checkpoint | None:
    """The checkpoint to continue ``run_dir`` from, if it holds an unfinished run of these
    settings with one (:mod:`fedbackdoor.checkpoint`)."""
    status = read_run_status(run_dir)
    if status is None or status.get("status") == "complete":
        return None
    if not (run_dir / CHECKPOINT).exists() and not (run_dir / PREVIOUS).exists():
        return None
    try:
        rows_through = int(load_metrics(run_dir / "metrics.csv")["round"].max())
    except Exception:  # noqa: BLE001 (no readable rows: nothing to continue)
        return None
    return load_checkpoint(run_dir, cfg_yaml, rows_through)


app = ServerApp()


@app.main()
def flwr_main(grid: Grid, context: Context) -> None:
    """Entry point for ``flwr run``: Hydra overrides come from the run config."""
    overrides = shlex.split(str(context.run_config.get("overrides", "")))
    cfg, meta = compose_run(overrides)
    validate(cfg)
    output_dir = Path(str(context.run_config.get("output-dir", "")) or "outputs/flwr")
    run_dir = output_dir.expanduser() / time.strftime("%Y-%m-%d_%H-%M-%S")
    run_server(grid, cfg, run_dir, meta)
    print(run_dir.resolve(), flush=True)

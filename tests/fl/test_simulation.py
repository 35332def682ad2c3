"""End to end through Flower's Simulation Runtime on Ray (slow: each run starts Ray)."""

from __future__ import annotations

import copy
from pathlib import Path

import pandas as pd
import pytest
import torch

from fedbackdoor.config import compose_config
from fedbackdoor.experiment import build_data, build_model, build_partitions
from fedbackdoor.fl.simulation import Engine, run_simulation
from fedbackdoor.layout import Layout, trainable_names
from fedbackdoor.run_files import TIMING_COLUMNS, read_run_status
from fedbackdoor.training import train

pytestmark = pytest.mark.slow

# Two of every five sampled clients poison half their data and double their update.
ATTACKED = [
    "dataset=synthetic",
    "num_clients=10",
    "clients_per_round=5",
    "num_rounds=10",
    "attack=badnets",
    "attack.fraction=0.2",
    "attack.per_round=2",
    "attack.boost=2",
    "defense=fedavg",
    "lr=0.02",
    "local_epochs=3",
]


@pytest.fixture(scope="module")
def attacked_run(tmp_path_factory: pytest.TempPathFactory, data_cache: str) -> Path:
    run_dir = tmp_path_factory.mktemp("attacked")
    run_simulation(compose_config(ATTACKED), run_dir)
    return run_dir


def test_two_clients_fedavg_equals_one_full_batch_step_on_the_union(
    tmp_path: Path, data_cache: str
) -> None:
    cfg = compose_config(
        [
            "dataset=synthetic",
            "num_clients=2",
            "clients_per_round=2",
            "num_rounds=1",
            "attack=none",
            "defense=fedavg",
            "local_epochs=1",
            "batch_size=100000",
            "lr=0.5",
            "partition=dirichlet",
            "partition.alpha=1.0",  # unequal sizes: weighting matters
        ]
    )

    run_simulation(cfg, tmp_path)

    data = build_data(cfg)
    sizes = [len(p) for p in build_partitions(cfg, data)]
    assert sizes[0] != sizes[1]
    central = build_model(cfg, data)
    start = copy.deepcopy(central)
    train(
        central,
        data.x_train,
        data.y_train,
        epochs=1,
        batch_size=len(data.y_train),
        lr=0.5,
        generator=torch.Generator(),
    )
    federated = torch.load(tmp_path / "model.pt", weights_only=True)
    layout = Layout.of(central.state_dict(), trainable_names(central))
    moved = layout.flatten(central.state_dict()) - layout.flatten(start.state_dict())
    assert moved.abs().max() > 1e-3  # the step is not trivially zero
    assert torch.allclose(
        layout.flatten(federated), layout.flatten(central.state_dict()), atol=1e-5
    )


def test_attacked_run_plants_the_backdoor_under_fedavg(attacked_run: Path) -> None:
    metrics = pd.read_csv(attacked_run / "metrics.csv")

    assert metrics["round"].tolist() == list(range(11))  # round 0 is the initial model
    assert (metrics["n_malicious"][1:] == 2).all() and (metrics["n_clients"][1:] == 5).all()
    assert metrics["backdoor_acc"].iloc[0] < 0.1
    assert metrics["backdoor_acc"].iloc[-1] > 0.9
    assert metrics["main_acc"].iloc[-1] > 0.9
    for name in ("config.yaml", "metrics.csv", "run.json", "model.pt"):
        assert (attacked_run / name).is_file()
    assert not (attacked_run / "accuracy.png").exists()  # the CLI draws it (tests/test_cli.py)


def test_same_config_and_seed_give_the_same_metrics(attacked_run: Path, tmp_path: Path) -> None:
    run_simulation(compose_config(ATTACKED), tmp_path)

    first = pd.read_csv(attacked_run / "metrics.csv").drop(columns=list(TIMING_COLUMNS))
    again = pd.read_csv(tmp_path / "metrics.csv").drop(columns=list(TIMING_COLUMNS))
    pd.testing.assert_frame_equal(first, again)


def test_median_resists_the_minority_attack(attacked_run: Path, tmp_path: Path) -> None:
    # 2 of 5 malicious updates cannot move a coordinate-wise median (Yin et al. 2018).
    run_simulation(compose_config([*ATTACKED, "defense=median"]), tmp_path)

    fedavg = pd.read_csv(attacked_run / "metrics.csv")["backdoor_acc"].iloc[-1]
    median = pd.read_csv(tmp_path / "metrics.csv")
    assert median["backdoor_acc"].iloc[-1] < 0.2 < fedavg
    assert median["main_acc"].iloc[-1] > 0.9


def test_a_stateful_defense_runs_end_to_end(tmp_path: Path, data_cache: str) -> None:
    # Prepare: adaptive-clipping DP keeps its clipping norm across rounds in the defense's store
    cfg = compose_config(
        [
            *ATTACKED,
            "num_rounds=4",
            "defense=flower_dp_adaptive",
            "defense.noise_multiplier=0.01",
            "defense.initial_clipping_norm=5.0",  # the norm adapts from there
        ]
    )

    # Execute
    run_simulation(cfg, tmp_path)

    # Assert
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    rounds = metrics[metrics["round"] > 0]
    assert len(rounds) == 4 and (rounds["n_malicious"] == 2).all()
    assert (rounds["n_rejected"] == 0).all()
    assert metrics["main_acc"].iloc[-1] > metrics["main_acc"].iloc[0] + 0.2
    assert read_run_status(tmp_path)["status"] == "complete"


def test_fashion_mnist_from_the_debian_package_trains(tmp_path: Path, data_cache: str) -> None:
    cfg = compose_config(
        [
            "num_clients=30",
            "clients_per_round=4",
            "num_rounds=2",
            "attack=none",
        ]
    )

    run_simulation(cfg, tmp_path)

    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert metrics["main_acc"].iloc[0] < 0.2  # an untrained 10-class model
    assert metrics["main_acc"].iloc[-1] > 0.6


@pytest.mark.parametrize("kind", ["nan", "shape"])
def test_corrupt_updates_are_rejected_and_the_run_goes_on(
    kind: str, tmp_path: Path, data_cache: str
) -> None:
    cfg = compose_config(
        [
            "dataset=synthetic",
            "num_clients=6",
            "clients_per_round=3",
            "num_rounds=3",
            "attack=corrupt",
            f"attack.corruption={kind}",
            "attack.fraction=0.34",
            "attack.per_round=1",
        ]
    )

    run_simulation(cfg, tmp_path)

    metrics = pd.read_csv(tmp_path / "metrics.csv")
    rounds = metrics[metrics["round"] > 0]
    assert (rounds["n_rejected"] == 1).all()
    assert (rounds["n_clients"] == 2).all() and (rounds["n_malicious"] == 0).all()
    assert metrics["main_acc"].iloc[-1] > metrics["main_acc"].iloc[0]


def test_runs_sharing_an_engine_match_fresh_runs(attacked_run: Path, tmp_path: Path) -> None:
    # Prepare: a DBA run first (other data poisoning, other evaluation), then the attacked run
    # again on the same engine: what ran before must not change its metrics.
    dba = compose_config(
        [*(o for o in ATTACKED if not o.startswith("attack=")), "attack=dba", "num_rounds=2"]
    )
    dba.attack.num_parts = 2
    engine = Engine(dba)

    # Execute
    try:
        engine.run(dba, tmp_path / "dba", {"choices": {"attack": "dba"}})
        engine.run(compose_config(ATTACKED), tmp_path / "again")
    finally:
        engine.close()

    # Assert
    first = pd.read_csv(attacked_run / "metrics.csv").drop(columns=list(TIMING_COLUMNS))
    again = pd.read_csv(tmp_path / "again" / "metrics.csv").drop(columns=list(TIMING_COLUMNS))
    pd.testing.assert_frame_equal(first, again)
    parts = pd.read_csv(tmp_path / "dba" / "metrics.csv")
    columns = list(parts.columns)
    assert columns[3:6] == ["backdoor_acc", "backdoor_acc_part0", "backdoor_acc_part1"]
    assert parts[["backdoor_acc_part0", "backdoor_acc_part1"]].stack().between(0, 1).all()
    status = read_run_status(tmp_path / "dba")
    assert status is not None and status["status"] == "complete"
    assert status["choices"] == {"attack": "dba"} and status["num_rounds"] == 2
    assert float(status["seconds"]) > 0  # type: ignore[arg-type]


def test_parallel_runs_on_one_engine_match_fresh_runs(attacked_run: Path, tmp_path: Path) -> None:
    # Prepare: the attacked run and a median run in flight at once on one engine
    attacked = compose_config([*ATTACKED, "backend.parallel_runs=2"])
    median = compose_config([*ATTACKED, "defense=median", "backend.parallel_runs=2"])
    engine = Engine(attacked)

    # Execute
    try:
        jobs = [
            engine.submit(attacked, tmp_path / "attacked", label="[a]"),
            engine.submit(median, tmp_path / "median", label="[m]"),
        ]
        for job in jobs:
            engine.wait(job)
    finally:
        engine.close()

    # Assert: the same rows as the fresh simulation; the other run is whole too
    fresh = pd.read_csv(attacked_run / "metrics.csv").drop(columns=list(TIMING_COLUMNS))
    parallel = pd.read_csv(tmp_path / "attacked" / "metrics.csv").drop(columns=list(TIMING_COLUMNS))
    pd.testing.assert_frame_equal(fresh, parallel)
    assert read_run_status(tmp_path / "median")["status"] == "complete"
    assert len(pd.read_csv(tmp_path / "median" / "metrics.csv")) == 11


def test_a_run_pruned_by_its_callback_keeps_its_rows_and_the_other_run_goes_on(
    attacked_run: Path, tmp_path: Path
) -> None:
    # Prepare: two runs in flight; one is told to stop after round 2 (a search pruned it)
    attacked = compose_config([*ATTACKED, "backend.parallel_runs=2"])
    other = compose_config([*ATTACKED, "defense=median", "backend.parallel_runs=2"])
    seen: list[tuple[int, float]] = []

    def on_round(round_: int, evaluation: dict[str, float]) -> bool:
        seen.append((round_, evaluation["main_acc"]))
        return round_ >= 2

    engine = Engine(attacked)

    # Execute
    try:
        pruned = engine.submit(attacked, tmp_path / "pruned", label="[p]", on_round=on_round)
        whole = engine.submit(other, tmp_path / "whole", label="[w]")
        engine.wait(pruned)
        engine.wait(whole)
    finally:
        engine.close()

    # Assert: rounds 0-2 exactly as the fresh run's, then nothing; the run says it was pruned
    fresh = pd.read_csv(attacked_run / "metrics.csv").drop(columns=list(TIMING_COLUMNS))
    rows = pd.read_csv(tmp_path / "pruned" / "metrics.csv").drop(columns=list(TIMING_COLUMNS))
    pd.testing.assert_frame_equal(rows, fresh.iloc[:3])
    assert [r for r, _ in seen] == [1, 2]
    assert seen[-1][1] == pytest.approx(float(fresh["main_acc"].iloc[2]))
    status = read_run_status(tmp_path / "pruned")
    assert status is not None and status["status"] == "pruned" and status["pruned_round"] == 2
    assert not (tmp_path / "pruned" / "model.pt").exists()
    assert read_run_status(tmp_path / "whole")["status"] == "complete"
    assert len(pd.read_csv(tmp_path / "whole" / "metrics.csv")) == 11


def test_an_address_where_nothing_answers_fails_in_seconds_naming_it() -> None:
    import socket

    from fedbackdoor.fl.simulation import check_reachable

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(
        ConnectionError, match=rf"backend.address=127.0.0.1:{port}: nothing answers"
    ):
        check_reachable(f"127.0.0.1:{port}", timeout=2.0)
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        check_reachable(f"ray://127.0.0.1:{listening.getsockname()[1]}")  # answers: no error
    check_reachable("auto")  # Ray's own lookup: not ours to check

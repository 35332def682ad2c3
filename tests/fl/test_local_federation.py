"""The same apps under Flower's own CLI (`flwr run`): Simulation and Deployment Runtimes."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from fedbackdoor.config import compose_config
from fedbackdoor.fl.local_federation import run_local_federation
from fedbackdoor.fl.simulation import run_simulation
from fedbackdoor.run_files import TIMING_COLUMNS

pytestmark = pytest.mark.slow

TINY = [
    "dataset=synthetic",
    "num_clients=4",
    "clients_per_round=4",
    "num_rounds=2",
    "attack.fraction=0.25",
]


@pytest.fixture(scope="module")
def python_launcher_metrics(
    tmp_path_factory: pytest.TempPathFactory, data_cache: str
) -> pd.DataFrame:
    run_dir = tmp_path_factory.mktemp("launcher")
    run_simulation(compose_config(TINY), run_dir)
    return pd.read_csv(run_dir / "metrics.csv").drop(columns=list(TIMING_COLUMNS))


@pytest.mark.parametrize(
    ("supernodes", "tls"),
    [(None, False), (2, False), (3, True)],
    ids=["simulation-runtime", "deployment-2-nodes", "deployment-3-nodes-tls"],
)
def test_flwr_run_gives_the_same_rounds_as_the_python_launcher(
    supernodes: int | None, tls: bool, tmp_path: Path, python_launcher_metrics: pd.DataFrame
) -> None:
    run_dir = run_local_federation(
        TINY, supernodes=supernodes, workdir=tmp_path, timeout=600, tls=tls, node_auth=tls
    )

    metrics = pd.read_csv(run_dir / "metrics.csv").drop(columns=list(TIMING_COLUMNS))
    pd.testing.assert_frame_equal(metrics, python_launcher_metrics)
    if tls:  # the SuperLink served HTTPS and admitted only the registered SuperNodes
        log = (tmp_path / "superlink.log").read_text()
        assert "running on https://" in log and "authentication is disabled" not in log
        assert log.count("Activated node_id") == supernodes

"""The `fedbackdoor` command as a user runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

TINY = ["dataset=synthetic", "num_clients=4", "clients_per_round=2", "num_rounds=2"]


def fedbackdoor(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedbackdoor", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ},
        timeout=600,
    )


@pytest.mark.slow
def test_run_writes_its_directory_and_prints_it_last(tmp_path: Path, data_cache: str) -> None:
    run_dir = tmp_path / "my-run"

    result = fedbackdoor("run", *TINY, f"hydra.run.dir={run_dir}", cwd=tmp_path)

    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert lines[-1] == str(run_dir.resolve())
    assert sum(line.startswith("round ") for line in lines) == 3  # a progress line per round
    metrics = pd.read_csv(run_dir / "metrics.csv")
    assert {
        "round",
        "main_acc",
        "main_loss",
        "backdoor_acc",
        "n_clients",
        "n_malicious",
        "seconds",
    } <= set(metrics.columns)
    assert metrics["main_acc"].between(0, 1).all() and metrics["backdoor_acc"].between(0, 1).all()
    assert (run_dir / "config.yaml").read_text().count("num_clients: 4") == 1
    assert (run_dir / "accuracy.png").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("parallel", [1, 2])
def test_multirun_sweeps_and_prints_the_sweep_dir(
    parallel: int, tmp_path: Path, data_cache: str
) -> None:
    sweep = tmp_path / "sweep"

    result = fedbackdoor(
        "run",
        "-m",
        *TINY,
        "num_rounds=1",
        "defense=fedavg,median",
        f"backend.parallel_runs={parallel}",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )

    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert lines[-1] == str(sweep.resolve())
    assert sorted(p.parent.name for p in sweep.glob("*/metrics.csv")) == ["0", "1"]
    for job in ("0", "1"):
        assert _complete(sweep / job)
        if parallel > 1:  # runs in flight together: each line says which run it is
            assert sum(line.startswith(f"[{job}] round ") for line in lines) == 2


@pytest.mark.slow
def test_invalid_value_stops_with_one_line_naming_the_key(tmp_path: Path) -> None:
    result = fedbackdoor("run", "attack.fraction=1.5", cwd=tmp_path)

    assert result.returncode == 2
    assert "attack.fraction=1.5" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "outputs").exists() or not list((tmp_path / "outputs").rglob("*.csv"))


@pytest.mark.slow
def test_unknown_option_is_named(tmp_path: Path) -> None:
    result = fedbackdoor("run", "defense=bogus", cwd=tmp_path)

    assert result.returncode != 0
    assert "defense" in result.stderr and "bogus" in result.stderr


@pytest.mark.slow
def test_help_and_unknown_command() -> None:
    assert "fedbackdoor run" in fedbackdoor("--help", cwd=Path.cwd()).stdout
    bad = fedbackdoor("frobnicate", cwd=Path.cwd())
    assert bad.returncode == 2 and "unknown command" in bad.stderr


@pytest.mark.slow
def test_a_killed_sweep_resumes_without_losing_or_repeating_runs(
    tmp_path: Path, data_cache: str
) -> None:
    # Prepare: three runs; the sweep is killed (SIGKILL) once the first is complete.
    sweep = tmp_path / "sweep"
    args = [
        "run",
        "-m",
        *TINY,
        "num_rounds=8",  # long enough that the interrupt lands before the last run ends
        "seed=0,1,2",
        f"hydra.sweep.dir={sweep}",
    ]
    process = subprocess.Popen(
        [sys.executable, "-m", "fedbackdoor", *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not _complete(sweep / "0"):
        time.sleep(0.2)
    assert _complete(sweep / "0"), "the first run never completed"
    process.send_signal(signal.SIGKILL)  # killed outright: nothing gets to clean up
    process.communicate(timeout=120)
    first = (sweep / "0" / "metrics.csv").read_text()
    done_before = [job for job in ("0", "1", "2") if _complete(sweep / job)]

    # Execute: the same command again
    result = fedbackdoor(*args, cwd=tmp_path)

    # Assert: finished runs skipped and untouched, the others run; every run complete, once
    assert result.returncode == 0, result.stderr[-2000:]
    assert done_before != ["0", "1", "2"], "the interrupt came too late to test resuming"
    for job in done_before:
        assert f"{sweep / job} is complete, skipped" in result.stdout
    assert (sweep / "0" / "metrics.csv").read_text() == first
    for job in ("0", "1", "2"):
        assert _complete(sweep / job)
        metrics = pd.read_csv(sweep / job / "metrics.csv")
        assert metrics["round"].tolist() == list(range(9))
        assert (metrics["n_clients"][1:] == 2).all()  # every round trained: no aborted run kept
        assert f"\nseed: {job}\n" in (sweep / job / "config.yaml").read_text()


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_stops_a_sweep_at_once_leaving_the_run_in_progress_unfinished(
    sig: signal.Signals, code: int, tmp_path: Path, data_cache: str
) -> None:
    # Prepare: runs long enough that waiting for the one in progress would end it complete
    sweep = tmp_path / "sweep"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fedbackdoor",
            "run",
            "-m",
            *TINY,
            "num_rounds=60",
            "seed=0,1",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # As from a terminal: a job started in the background by a non-interactive shell (as
        # CI may start the suite) inherits SIGINT ignored, and Python then keeps ignoring it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    metrics = sweep / "0" / "metrics.csv"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and (
        not metrics.exists() or len(metrics.read_text().splitlines()) < 4
    ):
        time.sleep(0.2)
    assert metrics.exists(), "the first run never started its rounds"

    # Execute: Ctrl-C, or SIGTERM as a scheduler sends it
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=120)

    # Assert: exit 130 (143) with one line saying so; the run in progress is marked "stopped"
    # with the rows it had written, and the next run never started
    assert process.returncode == code, stderr[-2000:]
    assert "interrupted" in stderr if sig == signal.SIGINT else "terminated" in stderr
    assert json.loads((sweep / "0" / "run.json").read_text())["status"] == "stopped"
    assert 3 <= len(pd.read_csv(metrics)) < 61  # rounds 0-2 at least, not all 60
    assert not (sweep / "1" / "run.json").exists()


def _complete(run_dir: Path) -> bool:
    try:
        return json.loads((run_dir / "run.json").read_text())["status"] == "complete"
    except (OSError, ValueError, KeyError):
        return False


def test_is_complete_compares_settings_not_text(tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    from fedbackdoor.config import compose_config
    from fedbackdoor.run_files import is_complete, write_run_status

    cfg = compose_config(TINY)
    data = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(data, dict)
    reordered = dict(reversed(list(data.items())))  # same settings, other key order
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(reordered)))

    write_run_status(tmp_path, status="running")
    assert not is_complete(tmp_path, cfg)  # a half-finished run is redone
    write_run_status(tmp_path, status="complete")
    assert is_complete(tmp_path, cfg)
    assert not is_complete(tmp_path, compose_config([*TINY, "seed=5"]))  # another run
    # How the engine runs is not a setting of the run: a sweep resumed with two runs in flight
    # (or on a Ray cluster) keeps the runs it finished with one.
    assert is_complete(tmp_path, compose_config([*TINY, "backend.parallel_runs=2"]))
    assert is_complete(tmp_path, compose_config([*TINY, "backend.address=auto"]))


@pytest.mark.slow
def test_ctrl_c_stops_a_single_run_at_once(tmp_path: Path, data_cache: str) -> None:
    run_dir = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "fedbackdoor", "run", *TINY, "num_rounds=200",
         f"hydra.run.dir={run_dir}"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    metrics = run_dir / "metrics.csv"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and (
        not metrics.exists() or len(metrics.read_text().splitlines()) < 4
    ):
        time.sleep(0.2)

    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)

    assert process.returncode == 130, stderr[-2000:]
    assert json.loads((run_dir / "run.json").read_text())["status"] == "stopped"
    assert 3 <= len(pd.read_csv(metrics)) < 201


#: Files in a run folder that are not its results: Hydra's log (appended to) and the lock.
NOT_RESULTS = {"cli.log", ".lock"}


def _fake_run(run_dir: Path, overrides: list[str], status: str = "complete") -> dict[str, str]:
    """A finished run's files, as `fedbackdoor run` leaves them."""
    from omegaconf import OmegaConf

    from fedbackdoor.config import compose_config

    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(compose_config(overrides), resolve=True))
    (run_dir / "run.json").write_text(json.dumps({"status": status}))
    (run_dir / "metrics.csv").write_text("round,main_acc,backdoor_acc\n0,0.1,0.0\n1,0.5,0.2\n")
    return {p.name: p.read_text() for p in run_dir.iterdir()}


@pytest.mark.parametrize("status", ["complete", "running"])
def test_a_run_of_other_settings_is_never_overwritten(tmp_path: Path, status: str) -> None:
    run_dir = tmp_path / "run"
    before = _fake_run(run_dir, [*TINY, "seed=1"], status)

    result = fedbackdoor("run", *TINY, "seed=2", f"hydra.run.dir={run_dir}", cwd=tmp_path)

    assert result.returncode == 2
    assert f"{run_dir} holds a run of other settings (status {status})" in result.stderr
    after = {p.name: p.read_text() for p in run_dir.iterdir() if p.name not in NOT_RESULTS}
    assert after == before


def test_a_run_folder_another_process_runs_is_left_to_it(tmp_path: Path) -> None:
    from fedbackdoor.run_guard import RunLock

    run_dir = tmp_path / "run"
    with RunLock(run_dir):
        result = fedbackdoor("run", *TINY, f"hydra.run.dir={run_dir}", cwd=tmp_path)

    assert result.returncode == 1
    assert f"{run_dir} is being run by another process (pid {os.getpid()})" in result.stderr
    assert not (run_dir / "metrics.csv").exists()


def test_a_sweep_whose_points_are_all_invalid_fails(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"

    result = fedbackdoor("run", "-m", *TINY, "seed=-1,-2", f"hydra.sweep.dir={sweep}", cwd=tmp_path)

    assert result.returncode == 1
    assert result.stderr.count("invalid config: seed=") == 2
    assert "2 sweep point(s) not run" in result.stderr


def test_a_complete_single_run_is_not_run_again(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    before = _fake_run(run_dir, TINY, "complete")

    result = fedbackdoor("run", *TINY, f"hydra.run.dir={run_dir}", cwd=tmp_path)

    assert result.returncode == 0, result.stderr[-2000:]
    assert f"{run_dir} is complete, skipped" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == str(run_dir.resolve())
    after = {p.name: p.read_text() for p in run_dir.iterdir() if p.name not in NOT_RESULTS}
    assert after == before  # its rows are not truncated


RESUMABLE = [
    *[o for o in TINY if not o.startswith("num_rounds")],
    "num_rounds=10",
    "attack=badnets",
    "attack.fraction=0.5",
    "defense=adaptive_clip",  # keeps state across rounds and draws noise from its stream
    "client_dp=dpsgd",  # the clients' privacy accounts live on the server
    "checkpoint.every=2",
]


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", [3, 6])
def test_a_run_killed_mid_way_resumes_exactly(
    kill_at: int, tmp_path: Path, data_cache: str
) -> None:
    from fedbackdoor.run_files import CLIENT_MACHINE_COLUMNS, TIMING_COLUMNS

    # Prepare: the run uninterrupted, for reference
    reference = tmp_path / "reference"
    first = fedbackdoor("run", *RESUMABLE, f"hydra.run.dir={reference}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]

    # Execute: the same run killed with SIGKILL (no handler runs) once it logged round
    # kill_at, then the same command again
    run_dir = tmp_path / "killed"
    command = [sys.executable, "-m", "fedbackdoor", "run", *RESUMABLE, f"hydra.run.dir={run_dir}"]
    process = subprocess.Popen(
        command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    metrics = run_dir / "metrics.csv"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and (
        not metrics.exists() or len(metrics.read_text().splitlines()) < kill_at + 2
    ):
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(30)
    rows_at_kill = len(pd.read_csv(metrics))
    again = fedbackdoor("run", *RESUMABLE, f"hydra.run.dir={run_dir}", cwd=tmp_path)

    # Assert: resumed from a checkpoint, and every row (timing aside) equals the reference's
    assert again.returncode == 0, again.stderr[-2000:]
    assert 1 <= rows_at_kill - 1 < 10, "the kill came too late to test a resume"
    assert "resumed after round" in again.stdout
    status = json.loads((run_dir / "run.json").read_text())
    assert status["status"] == "complete" and status["resumed_after"] % 2 == 0
    for name in ("metrics.csv", "clients.csv"):
        measured = [*TIMING_COLUMNS, *CLIENT_MACHINE_COLUMNS]
        want = pd.read_csv(reference / name).drop(columns=measured, errors="ignore")
        got = pd.read_csv(run_dir / name).drop(columns=measured, errors="ignore")
        pd.testing.assert_frame_equal(got, want)
    assert not (run_dir / "checkpoint.pt").exists()  # the final model.pt replaces it

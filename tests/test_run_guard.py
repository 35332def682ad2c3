"""A run folder's results are safe from the next command: no overwrite, no two writers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from fedbackdoor.config import compose_config
from fedbackdoor.run_guard import RunLock, RunLocked, other_settings

TINY = ["dataset=synthetic", "num_clients=4", "clients_per_round=2", "num_rounds=2"]


def _saved(run_dir: Path, overrides: list[str], status: str | None = "complete") -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(compose_config(overrides), resolve=True))
    if status is not None:
        (run_dir / "run.json").write_text(json.dumps({"status": status}))


def test_other_settings_by_case(tmp_path: Path) -> None:
    cfg = compose_config(TINY)

    assert other_settings(tmp_path / "empty", cfg) is None  # nothing there
    _saved(tmp_path / "same", TINY, "stopped")
    assert other_settings(tmp_path / "same", cfg) is None  # ours: run again
    _saved(tmp_path / "engine", [*TINY, "backend.parallel_runs=2"])
    assert other_settings(tmp_path / "engine", cfg) is None  # how it ran is not what it is
    _saved(tmp_path / "other", [*TINY, "seed=3"], "failed")
    assert other_settings(tmp_path / "other", cfg) == "failed"
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "run.json").write_text('{"status": "complete"}')
    (tmp_path / "broken" / "config.yaml").write_text("{ not: yaml: [")
    assert other_settings(tmp_path / "broken", cfg) == "unreadable"


def test_a_held_lock_names_its_holder_and_is_free_after_release(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from pathlib import Path; from fedbackdoor.run_guard import RunLock;"
         "lock = RunLock(Path(sys.argv[1])); print('held', flush=True); time.sleep(60)",
         str(tmp_path / "run")],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"

        with pytest.raises(RunLocked, match=rf"being run by another process \(pid {holder.pid}\)"):
            RunLock(tmp_path / "run")

        # A killed holder frees it (the lock dies with its process)
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(10)
        deadline = time.monotonic() + 10
        while True:
            try:
                lock = RunLock(tmp_path / "run")
                break
            except RunLocked:
                assert time.monotonic() < deadline
                time.sleep(0.05)
    finally:
        holder.kill()
    assert (tmp_path / "run" / ".lock").read_text().strip() == str(os.getpid())
    lock.release()
    with RunLock(tmp_path / "run"):  # released: ours again
        pass

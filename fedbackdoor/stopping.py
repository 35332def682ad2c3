"""The process-wide stop flag: set when the process is interrupted (Ctrl-C, SIGTERM), read by
runs in progress so that they stop at their next round and never report themselves complete;
the runs in progress are marked ``stopped`` in their ``run.json`` (a resumed sweep redoes them)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["STOP", "Interrupted", "Pruned", "in_progress", "mark_stopped"]

#: Set when the process is interrupted: runs in progress stop at their next round.
STOP = threading.Event()

_ACTIVE: set[Path] = set()
_ACTIVE_LOCK = threading.Lock()


class Interrupted(RuntimeError):
    """The process is stopping (Ctrl-C) while a run is in progress."""


class Pruned(RuntimeError):
    """A run's ``on_round`` callback asked it to stop (a search pruned its trial): the rows
    written so far are kept and ``run.json`` says ``status: pruned``."""


@contextmanager
def in_progress(run_dir: Path) -> Iterator[None]:
    """Register ``run_dir`` as a run in progress of this process while the block runs."""
    with _ACTIVE_LOCK:
        _ACTIVE.add(Path(run_dir))
    try:
        yield
    finally:
        with _ACTIVE_LOCK:
            _ACTIVE.discard(Path(run_dir))


def mark_stopped() -> list[Path]:
    """Write ``status: stopped`` into the ``run.json`` of every run in progress (the process is
    being interrupted); return them. Never raises: the process is on its way out."""
    from fedbackdoor.run_files import write_run_status  # noqa: PLC0415 (pandas only here)

    with _ACTIVE_LOCK:
        active = sorted(_ACTIVE)
    for run_dir in active:
        try:
            write_run_status(run_dir, status="stopped")
        except Exception:  # noqa: BLE001, S110 (an interrupted process must still exit)
            pass
    return active

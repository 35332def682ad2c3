"""What keeps a run folder's results safe from the next command: a complete (or any) run of other
settings is never overwritten, and two processes never run the same folder at once.

* :func:`other_settings` -- the folder already holds a run whose ``config.yaml`` differs from the
  new run's (the ``backend`` node aside, as :func:`fedbackdoor.run_files.is_complete` compares):
  the command stops (a single run) or skips that point (a sweep), naming the folder; nothing is
  truncated. A run of the *same* settings that did not finish is run again from round 1, as
  before.
* :class:`RunLock` -- an exclusive ``fcntl`` lock on ``<run>/.lock`` held while the run is in
  progress; a second process that reaches the same folder (two sweeps started on one
  ``hydra.sweep.dir``) is told which process holds it and skips it. The lock dies with its
  process (a ``kill -9`` frees it). Where ``fcntl`` does not exist (Windows) there is no lock.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType

from omegaconf import DictConfig, OmegaConf

from fedbackdoor.run_files import experiment_settings, read_run_status

try:
    import fcntl
except ImportError:  # pragma: no cover (Windows)
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_FILE", "RunLock", "RunLocked", "other_settings"]

LOCK_FILE = ".lock"


def other_settings(run_dir: Path, cfg: DictConfig) -> str | None:
    """The status of the run ``run_dir`` holds if its settings differ from ``cfg``'s, else
    ``None`` (no run there, or one of the same settings). A folder with a ``run.json`` but no
    readable ``config.yaml`` counts as another run (``"unreadable"``): it is not ours to
    overwrite."""
    status = read_run_status(run_dir)
    saved = run_dir / "config.yaml"
    if status is None and not saved.exists():
        return None
    try:
        old = experiment_settings(OmegaConf.load(saved))
    except Exception:  # noqa: BLE001 (any unreadable file: keep it, say so)
        return "unreadable"
    if old == experiment_settings(cfg):
        return None
    return str((status or {}).get("status", "unknown"))


class RunLocked(RuntimeError):
    """Another process holds the run folder's lock."""


class RunLock:
    """An exclusive lock on ``run_dir/.lock`` (the folder is created), released by
    :meth:`release` or at the end of a ``with`` block.

    Raises
    ------
    RunLocked
        If another process holds it; the message names that process.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self._file = None
        if fcntl is None:  # pragma: no cover (Windows)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = self.path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise RunLocked(
                f"{self.path.parent} is being run by another process (pid {holder}); skipped"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._file = handle

    def release(self) -> None:
        if self._file is not None and fcntl is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()

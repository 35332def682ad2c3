"""The process-wide stop flag: set when the process is interrupted (Ctrl-C), read by runs in
progress so that they stop at their next round and never report themselves complete (their
``run.json`` stays "running", so a resumed sweep redoes them)."""

from __future__ import annotations

import threading

__all__ = ["STOP", "Interrupted", "Pruned"]

#: Set when the process is interrupted: runs in progress stop at their next round.
STOP = threading.Event()


class Interrupted(RuntimeError):
    """The process is stopping (Ctrl-C) while a run is in progress."""


class Pruned(RuntimeError):
    """A run's ``on_round`` callback asked it to stop (a search pruned its trial): the rows
    written so far are kept and ``run.json`` says ``status: pruned``."""

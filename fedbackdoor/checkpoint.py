"""A run's checkpoint: everything the server needs to continue it from a round, exactly.

Every ``checkpoint.every`` rounds (and after the last) the server writes ``checkpoint.pt`` in the
run folder: the round, the global model, the run's three persistent random streams (client
sampling, the update attack's, the defense's: every other stream is derived from the seed, the
round and the client, so it needs no saving), the defense pieces' own state (FoolsGold's
history, centered clipping's last aggregate, ...), the clients' privacy accounts, and the
rounds that were skipped or diverged. The rows of ``metrics.csv``, ``clients.csv`` and
``posttrain.csv`` are already on disk (flushed per round).

Re-running the same command on the folder (a single run, or a sweep whose run did not finish)
loads the checkpoint, keeps the rows through its round (rows of later rounds, written after it,
are dropped: they are recomputed) and continues with the next round; the resumed run's
``metrics.csv`` equals an uninterrupted run's but for the timing columns (tested on CPU with
kills at several rounds).

The file is written atomically; the one before it is kept as ``checkpoint.prev.pt``. A
checkpoint that cannot be read (corrupt, cut short, of other settings, ahead of the rows on
disk) is named on the terminal and the previous one is tried, then none: the run starts over.
Loaded with ``torch.load(weights_only=True)``: tensors and plain containers only, never a
pickle's code.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import Tensor

from fedbackdoor.files import atomic_path
from fedbackdoor.run_files import experiment_settings

__all__ = ["CHECKPOINT", "PREVIOUS", "Checkpoint", "load_checkpoint", "save_checkpoint"]

CHECKPOINT = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"
_VERSION = 1


@dataclass
class Checkpoint:
    """The server's state after ``round`` (see the module docstring)."""

    round: int
    model: dict[str, Tensor]
    generators: dict[str, Tensor]
    defense_states: dict[str, Any]
    ledger: dict[str, list[list[float]]] | None
    config: str
    diverged: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)


def save_checkpoint(run_dir: Path, checkpoint: Checkpoint) -> Path:
    """Write ``run_dir/checkpoint.pt`` atomically, keeping the one before as
    ``checkpoint.prev.pt``."""
    path = Path(run_dir) / CHECKPOINT
    payload = {
        "version": _VERSION,
        "round": int(checkpoint.round),
        "model": {k: v.detach().cpu().clone() for k, v in checkpoint.model.items()},
        "generators": dict(checkpoint.generators),
        "defense_states": checkpoint.defense_states,
        "ledger": checkpoint.ledger,
        "config": checkpoint.config,
        "diverged": list(checkpoint.diverged),
        "skipped": list(checkpoint.skipped),
    }
    if path.exists():
        os.replace(path, path.with_name(PREVIOUS))
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def _read(path: Path, cfg_yaml: str, rows_through: int) -> Checkpoint:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, Mapping) or payload.get("version") != _VERSION:
        raise ValueError("not a checkpoint of this version")
    saved, wanted = OmegaConf.create(str(payload["config"])), OmegaConf.create(cfg_yaml)
    if experiment_settings(saved) != experiment_settings(wanted):
        raise ValueError("written for other settings")
    round_ = int(payload["round"])
    if round_ > rows_through:
        raise ValueError(f"it is at round {round_} but metrics.csv ends at round {rows_through}")
    return Checkpoint(
        round=round_,
        model=dict(payload["model"]),
        generators=dict(payload["generators"]),
        defense_states=dict(payload["defense_states"]),
        ledger=payload["ledger"],
        config=str(payload["config"]),
        diverged=[int(r) for r in payload["diverged"]],
        skipped=[int(r) for r in payload["skipped"]],
    )


def load_checkpoint(
    run_dir: Path, cfg_yaml: str, rows_through: int, say: Callable[[str], None] = print
) -> Checkpoint | None:
    """The latest readable checkpoint of ``run_dir`` for these settings, or ``None``.

    ``rows_through`` is the last round ``metrics.csv`` holds: a checkpoint beyond it does not
    match the rows on disk. Each one that cannot be used is named with the reason.
    """
    for name in (CHECKPOINT, PREVIOUS):
        path = Path(run_dir) / name
        if not path.exists():
            continue
        try:
            return _read(path, cfg_yaml, rows_through)
        except Exception as exc:  # noqa: BLE001 (any unreadable checkpoint: say, fall back)
            say(f"checkpoint {path} not used: {type(exc).__name__}: {exc}")
    return None

"""Per-round rows on disk, and loading them back as tidy tables.

A run writes ``metrics.csv`` one row per round as soon as the round is evaluated (flushed), so
a run that dies keeps every round it finished. Results are plain CSV plus the resolved config,
never pickles.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from pathlib import Path
from typing import IO

import pandas as pd

#: Columns of ``metrics.csv``, in order. Accuracies are fractions in [0, 1].
COLUMNS: tuple[str, ...] = (
    "round",
    "main_acc",
    "main_loss",
    "backdoor_acc",
    "n_clients",
    "n_malicious",
    "n_rejected",
    "n_flagged",
    "det_tp",
    "det_fp",
    "det_tpr",
    "det_fpr",
    "seconds",
)


def _cell(value: object) -> object:
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    return "" if value is None else value


class MetricsWriter:
    """Appends one row per round to a CSV file, flushing after each row."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] = self.path.open("w", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=COLUMNS)
        self._writer.writeheader()
        self._file.flush()

    def write(self, row: Mapping[str, object]) -> None:
        unknown = set(row) - set(COLUMNS)
        if unknown:
            raise KeyError(f"unknown metrics columns {sorted(unknown)}")
        self._writer.writerow({k: _cell(row.get(k)) for k in COLUMNS})
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def load_metrics(path: str | Path) -> pd.DataFrame:
    """A run's ``metrics.csv`` (or the run directory holding it) as a DataFrame."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.csv"
    if not path.exists():
        raise FileNotFoundError(f"no metrics file at {path}")
    return pd.read_csv(path)

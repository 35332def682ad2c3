from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from fedbackdoor.plots import plot_run
from fedbackdoor.results import COLUMNS, MetricsWriter, load_metrics


def test_each_row_is_on_disk_as_soon_as_it_is_written(tmp_path: Path) -> None:
    writer = MetricsWriter(tmp_path / "metrics.csv")

    writer.write({"round": 0, "main_acc": 0.1, "backdoor_acc": 0.0, "n_clients": 0})
    first = load_metrics(tmp_path)  # the writer is still open: a crash now keeps round 0
    writer.write({"round": 1, "main_acc": 0.5, "backdoor_acc": 0.2, "det_tpr": math.nan})
    writer.close()
    both = load_metrics(tmp_path / "metrics.csv")

    assert list(first.columns) == list(COLUMNS) and len(first) == 1
    assert both["main_acc"].tolist() == [0.1, 0.5]
    assert both["det_tpr"].isna().all()  # nan and missing are empty cells


def test_unknown_columns_are_refused(tmp_path: Path) -> None:
    writer = MetricsWriter(tmp_path / "m.csv")
    with pytest.raises(KeyError, match="accuracy"):
        writer.write({"round": 0, "accuracy": 1.0})
    writer.close()


def test_missing_metrics_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="metrics.csv"):
        load_metrics(tmp_path)


def test_plot_run_writes_a_png(tmp_path: Path) -> None:
    table = pd.DataFrame(
        {"round": [0, 1, 2], "main_acc": [0.1, 0.6, 0.8], "backdoor_acc": [0.0, 0.4, 0.9]}
    )

    out = plot_run(table, tmp_path / "acc.png", title="t")

    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

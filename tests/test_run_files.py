"""One run's files: metrics.csv rows, run.json, detection totals (fedbackdoor.run_files)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from fedbackdoor.run_figure import plot_run
from fedbackdoor.run_files import COLUMNS, MetricsWriter, detection_totals, load_metrics


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


def test_detection_totals_by_hand() -> None:
    # Round 1: 2 of 5 malicious, 1 flagged, 1 benign flagged; round 2: 1 of 4, flagged, none
    # benign; round 3: not scored (detection columns empty).
    metrics = pd.DataFrame(
        {
            "round": [0, 1, 2, 3],
            "n_clients": [0, 5, 4, 5],
            "n_malicious": [0, 2, 1, 1],
            "det_tp": [None, 1, 1, None],
            "det_fp": [None, 1, 0, None],
        }
    )

    totals = detection_totals(metrics)

    assert totals == {
        "det_tp": 2.0,
        "det_fp": 1.0,
        "malicious": 3.0,
        "benign": 6.0,
        "det_tpr": 2 / 3,
        "det_fpr": 1 / 6,
    }


def test_detection_totals_of_a_rule_that_flags_nobody_are_nan() -> None:
    metrics = pd.DataFrame({"round": [0, 1], "n_clients": [0, 5], "n_malicious": [0, 1]})
    assert all(math.isnan(v) for v in detection_totals(metrics).values())
